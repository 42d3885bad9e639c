"""All of the standby package's Ray calls: the ClearanceWorker actor and the pool that calls it.

A worker owns one partition of customs offices and carries out its batches with a ClearancePipeline. Actors restart
forever (max_restarts=-1). On a cluster of several nodes the workers are spread over them (spread_over_nodes; a
worker whose node died is restarted on a node that is alive); each opens the site's database itself, so every node
must reach it (database_out_of_reach). A call whose actor died is retried by the pool a bounded number of times; the
retry is safe because every command carries its idempotency key, so a batch that committed before the actor died is
answered from the stored first answers rather than written twice.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import ray
from ray.exceptions import GetTimeoutError, ObjectLostError, RayActorError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from standby.clearance.commands import (Command, Outcome, decode_commands, decode_outcomes, encode_commands,
                                        encode_outcomes, refused)
from standby.heap import freeze_startup_heap
from standby.placement import ClusterNode, sqlite_out_of_reach

log = logging.getLogger(__name__)


# Actors are spread over the nodes of a cluster of several, so the intake uses every node's cores and a node lost
# takes only its share of the partitions down at once. By a placement group of small bundles that the GCS spreads
# with its own view of the cluster: Ray's SPREAD strategy and soft node affinities are decided by the raylet the
# driver is attached to, whose view of the other nodes can lag, and both were seen placing a whole pool on one node
# of two (a CI run: 4 of 4 clearance workers on one node, the 2 apply workers on the other). A bundle on a node that
# dies is placed again by the GCS on a node alive, and its actors restart there. On one node nothing is reserved.
SPREAD = "SPREAD"
BUNDLE_CPU = 0.01  # a bundle must reserve something; the actors themselves run with num_cpus=0 as before


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process needs to build its pipeline; plain values so it pickles."""

    site_id: str
    site_digit: int
    database_url: str
    tariffs: Path
    risk_rules: Path
    number_block_size: int = 1000


class WorkerUnavailable(Exception):
    """A worker stayed dead or unresponsive through every attempt; the caller may retry with the same key."""


@ray.remote(max_restarts=-1, max_task_retries=0)
class ClearanceWorker:
    def __init__(self, spec: WorkerSpec):
        # Imported here so the driver does not need the pipeline's dependencies loaded to create actors.
        from standby.clearance.pipeline import ClearancePipeline
        from standby.domain.risk import load_risk_rules
        from standby.domain.tariff import load_tariff
        from standby.store.engine import make_engine

        self.incarnation = uuid.uuid4().hex
        self.pipeline = ClearancePipeline(
            make_engine(spec.database_url, pool_size=2), spec.site_id, spec.site_digit, load_tariff(spec.tariffs),
            load_risk_rules(spec.risk_rules), block_size=spec.number_block_size,
        )
        freeze_startup_heap()

    def process(self, batch: bytes) -> tuple[str, bytes]:
        """The batch (encode_commands) carried out: this incarnation and one Outcome per command (encode_outcomes)."""
        from standby.clearance.pipeline import StoreUnavailable

        commands = decode_commands(batch)
        try:
            outcomes = self.pipeline.process(commands)
        except StoreUnavailable as exc:
            outcomes = [refused(503, "store_unavailable", f"{exc}; retry with the same Idempotency-Key")
                        ] * len(commands)
        return self.incarnation, encode_outcomes(outcomes)

    def identity(self) -> tuple[str, int]:
        return self.incarnation, os.getpid()


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Start a local Ray (or join `address`) unless this process already has one. Returns True if it started one."""
    if ray.is_initialized():
        return False
    # Ray starts workers at nice 15 by default; ours carry the intake's critical path, so they run at normal
    # priority (a cluster joined by address keeps its own setting).
    kwargs = {"address": address} if address else {"num_cpus": num_cpus, "include_dashboard": False,
                                                   "_system_config": {"worker_niceness": 0}}
    ray.init(ignore_reinit_error=True, logging_level=logging.WARNING, log_to_driver=False, **kwargs)
    return True


def cluster_address() -> str:
    """The address of the Ray cluster this process is a driver of, for other processes of the site to join."""
    return ray.get_runtime_context().gcs_address


def shutdown_ray() -> None:
    ray.shutdown()


def database_out_of_reach(site_id: str, database_url: str, workers: str = "clearance workers") -> str | None:
    """Why the workers this process will place on its Ray cluster could land where site `site_id`'s database cannot
    be opened (a SQLite file with an alive node on another machine; standby.placement decides), naming the site,
    the database and the remote node; None when every node can open it. Call it after ensure_ray, before starting
    the workers, and refuse to start on a reason."""
    here, nodes = _cluster_nodes()
    driver_ip = next(n.ip for n in nodes if n.node_id == here)
    return sqlite_out_of_reach(site_id, database_url, driver_ip, nodes, workers)


def spread_over_nodes(count: int, timeout_s: float = 120.0) -> tuple[list, object | None]:
    """Scheduling strategies for the `count` actors of one pool, and the placement group reserved for them (None on
    a single node; pass it to release_placement when the pool stops). On a cluster of several alive nodes actor i
    goes to bundle i of a SPREAD placement group, so the pool is on as many nodes as there are (up to `count`);
    raises GetTimeoutError if the cluster cannot place the group within `timeout_s`."""
    if sum(1 for n in ray.nodes() if n["Alive"]) < 2:
        return [SPREAD] * count, None
    group = placement_group([{"CPU": BUNDLE_CPU}] * count, strategy="SPREAD")
    ray.get(group.ready(), timeout=timeout_s)
    return [PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=i) for i in range(count)], group


def release_placement(group: object | None) -> None:
    if group is not None:
        remove_placement_group(group)


def _cluster_nodes() -> tuple[str, list[ClusterNode]]:
    """This process's node id and every node of its Ray cluster."""
    here = ray.get_runtime_context().get_node_id()
    return here, [ClusterNode(n["NodeID"], n["NodeManagerAddress"], bool(n["Alive"])) for n in ray.nodes()]


class WorkerPool:
    """One ClearanceWorker per partition for one site.

    Contract: `submit(partition, commands)` returns one Outcome per command. If the worker dies, the same batch is
    sent again to its restarted incarnation up to `attempts` times; then WorkerUnavailable is raised."""

    def __init__(self, spec: WorkerSpec, partitions: int, *, attempts: int = 3, call_timeout_s: float = 30.0,
                 on_restart: Callable[[int], None] = lambda partition: None):
        self.spec, self.partitions, self.attempts, self.call_timeout_s = spec, partitions, attempts, call_timeout_s
        self._on_restart = on_restart
        self._actors: list = []
        self._placement: object | None = None
        self._incarnations: list[str | None] = []
        self.namespace, self._owner = "", True

    def start(self) -> None:
        self.namespace = f"standby-{self.spec.site_id}-{uuid.uuid4().hex[:8]}"
        strategies, self._placement = spread_over_nodes(self.partitions)
        self._actors = [
            ClearanceWorker.options(name=self._name(i), namespace=self.namespace, num_cpus=0,
                                    max_concurrency=1, scheduling_strategy=strategy).remote(self.spec)
            for i, strategy in enumerate(strategies)
        ]
        self._await_incarnations()

    def attach(self, namespace: str) -> None:
        """Use the workers that the pool of another process of this site started (its `namespace`) instead of
        starting any: the site's HTTP processes share one set of workers. `stop` then leaves them running."""
        self.namespace, self._owner = namespace, False
        self._actors = [ray.get_actor(self._name(i), namespace=namespace) for i in range(self.partitions)]
        self._await_incarnations()

    def _name(self, partition: int) -> str:
        return f"clearance-{self.spec.site_id}-{partition}"

    def _await_incarnations(self) -> None:
        self._incarnations = [None] * self.partitions
        # Wait for every actor to be constructed, so a broken config fails at start, not on the first request.
        for i, (incarnation, _pid) in enumerate(ray.get([a.identity.remote() for a in self._actors], timeout=120)):
            self._incarnations[i] = incarnation

    async def submit(self, partition: int, commands: Sequence[Command]) -> list[Outcome]:
        actor, batch = self._actors[partition], encode_commands(commands)
        last_error: Exception | None = None
        for attempt in range(self.attempts):
            try:
                incarnation, answer = await asyncio.wait_for(actor.process.remote(batch), self.call_timeout_s)
            # ObjectLostError: the worker answered, but its answer was stored on a node that died before it was read.
            except (RayActorError, ObjectLostError, GetTimeoutError, asyncio.TimeoutError) as exc:
                last_error = exc
                log.warning("worker %s/%d failed on attempt %d: %s", self.spec.site_id, partition, attempt + 1,
                            type(exc).__name__)
                await asyncio.sleep(min(0.1 * 2**attempt, 1.0))
                continue
            self._note_incarnation(partition, incarnation)
            return decode_outcomes(answer)
        raise WorkerUnavailable(
            f"clearance worker {partition} of site {self.spec.site_id} did not answer after {self.attempts} attempts "
            f"({type(last_error).__name__})")

    def _note_incarnation(self, partition: int, incarnation: str) -> None:
        if self._incarnations[partition] not in (None, incarnation):
            self._on_restart(partition)
        self._incarnations[partition] = incarnation

    def pids(self, timeout_s: float = 60.0) -> list[int]:
        """The workers' process ids, waiting for any that is restarting (drills and fault tests kill them)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return [pid for _inc, pid in ray.get([a.identity.remote() for a in self._actors], timeout=timeout_s)]
            except RayActorError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def kill(self, partition: int) -> None:
        """Kill a worker the way a crash would; Ray restarts it (used by the fault tests and drills)."""
        ray.kill(self._actors[partition], no_restart=False)

    def stop(self) -> None:
        for actor in self._actors if self._owner else ():
            ray.kill(actor, no_restart=True)
        self._actors = []
        release_placement(self._placement)
        self._placement = None
