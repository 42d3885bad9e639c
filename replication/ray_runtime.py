"""All of the replication package's Ray calls: ApplyWorker actors, one per partition of keys, and their pool.

On a cluster of several nodes the apply workers are spread over them (standby.ray_runtime.spread_over_nodes);
each opens the standby's database itself, so every node must reach it (standby.ray_runtime.database_out_of_reach)."""
from __future__ import annotations

import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import ray
from ray.exceptions import GetTimeoutError, ObjectLostError, RayActorError

from replication.apply import ApplyResult
from replication.changes import Change
from replication.errors import PermanentApplyError, ReplicationError, TargetUnavailable
from replication.wire import decode_window, encode_window
from standby.heap import collection_paused, freeze_startup_heap
from standby.ray_runtime import release_placement, spread_over_nodes


@dataclass(frozen=True)
class ApplyFailure:
    """An error carried back as a value, so its class and the change it names survive the trip."""

    kind: str  # "permanent" | "transient"
    message: str
    change: Change | None


@ray.remote(max_restarts=-1, max_task_retries=0)
class ApplyWorker:
    def __init__(self, url: str):
        from replication.apply import Applier, apply_engine

        self.applier = Applier(apply_engine(url))
        freeze_startup_heap()

    def apply(self, stream: str, part: int, window: bytes, upto: int) -> ApplyResult | ApplyFailure:
        try:
            with collection_paused():  # a window's objects live until it is applied (standby.heap)
                return self.applier.apply(stream, part, decode_window(window), upto)
        except PermanentApplyError as exc:
            return ApplyFailure("permanent", str(exc), exc.change)
        except ReplicationError as exc:
            return ApplyFailure("transient", str(exc), None)

    def pid(self) -> int:
        return os.getpid()


class ApplyPool:
    """One ApplyWorker per partition. Contract: `apply(stream, windows)` sends each partition its window in parallel
    and returns their results; a worker that died raises TargetUnavailable (the replicator retries the window, which
    is safe: positions are stored with the rows), a refused change raises PermanentApplyError."""

    def __init__(self, url: str, partitions: int, call_timeout_s: float = 120.0):
        self.url, self.partitions, self.call_timeout_s = url, partitions, call_timeout_s
        self._actors: list = []
        self._placement: object | None = None

    def start(self) -> None:
        namespace = f"replication-{uuid.uuid4().hex[:8]}"
        strategies, self._placement = spread_over_nodes(self.partitions)
        self._actors = [ApplyWorker.options(name=f"apply-{i}", namespace=namespace, num_cpus=0,
                                            scheduling_strategy=strategy).remote(self.url)
                        for i, strategy in enumerate(strategies)]
        ray.get([a.pid.remote() for a in self._actors], timeout=120)

    def apply(self, stream: str, windows: dict[int, tuple[Sequence[Change], int]]) -> list[ApplyResult]:
        refs = [self._actors[p].apply.remote(stream, p, encode_window(changes), upto)
                for p, (changes, upto) in windows.items()]
        try:
            outcomes = ray.get(refs, timeout=self.call_timeout_s)
        except (RayActorError, ObjectLostError, GetTimeoutError) as exc:  # lost: stored on a node that died
            raise TargetUnavailable(f"an apply worker died or stalled ({type(exc).__name__}); retrying") from exc
        failures = [o for o in outcomes if isinstance(o, ApplyFailure)]
        permanent = [f for f in failures if f.kind == "permanent"]
        if permanent:
            raise PermanentApplyError(permanent[0].change, permanent[0].message)
        if failures:
            raise TargetUnavailable(failures[0].message)
        return outcomes

    def pids(self, timeout_s: float = 60.0) -> list[int]:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return ray.get([a.pid.remote() for a in self._actors], timeout=timeout_s)
            except RayActorError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        for actor in self._actors:
            ray.kill(actor, no_restart=True)
        self._actors = []
        release_placement(self._placement)
        self._placement = None
