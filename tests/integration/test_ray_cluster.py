"""A site on a real two-node Ray cluster (`ray start --head`, then `ray start --address` for a second node), on
PostgreSQL: `standbyctl serve` and `standbyctl replicate` A -> B join the cluster as drivers, their ClearanceWorkers
and apply workers are spread over both nodes, and kill -9 of the whole second node (its raylet, its workers, its
agents) under intake load loses nothing acknowledged and doubles nothing, on the primary and on its standby. And a
site on SQLite is refused on a cluster with a node on another machine.

The cluster is the test's own (not the session's local Ray): both nodes on this machine with their own temp folders
and ports, so another Ray on the machine (the other test worker's, a benchmark's) is never touched. `ray stop` is
not used to clean up: it stops every Ray of the machine; the test kills the processes of its two nodes by pid."""
from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select
from tenacity import AsyncRetrying, Retrying, retry_if_result, stop_after_delay, wait_fixed

from cutover.actions.sites import Sites
from loadtests.client import SiteClient
from replication.sources import stream_name
from standby.domain.states import Kind, SiteRole
from standby.processes import command_line
from standby.settings import load_settings
from standby.store.engine import make_engine
from standby.store.migrate import upgrade
from standby.store.schema import declarations, idempotency_keys
from standby.store.seed import seed
from standby.store.site import init_site
from standby.synthetic import make_declaration_payload
from standbyctl.bench_switchover_deploy import free_ports
from tests.conftest import REPO, Tokens, free_port
from tests.integration.served_processes import children
from tests.integration.switchover_rig import Rig, running_replicators, serve_process
from tests.pg_fixtures import unique_db_name

RAY = Path(sys.executable).with_name("ray")
WORKERS, APPLY_PARTITIONS = 4, 2
DECLARATIONS, KILL_AFTER = 900, 300  # the node dies with a third of the declarations acknowledged
OFFICES = ("01CA", "79CA", "31CA", "48CA", "92CA", "22CA")  # between them every one of the 4 partitions
# The head notices a dead node within about a second and a half (Ray's default is about 15 s): its actors are
# restarted on the head that much sooner, which keeps the test short; nothing else depends on it.
HEALTH_CHECKS = {"health_check_initial_delay_ms": 1000, "health_check_period_ms": 500,
                 "health_check_timeout_ms": 500, "health_check_failure_threshold": 3}


class RayNode:
    """One `ray start` node of this machine, known by its own temp folder (every process it starts names it)."""

    def __init__(self, temp_dir: Path):
        self.temp_dir = temp_dir

    def _roots(self) -> list[int]:
        mark = str(self.temp_dir)
        return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
                and any(arg == mark or f"{mark}/" in arg or arg.endswith(f"={mark}")
                        for arg in command_line(int(p.name)).split())]

    def processes(self) -> list[int]:
        """The node's processes: those naming its temp folder (GCS, raylet, agents) and all their descendants (the
        raylet's worker processes rename themselves `ray::...`)."""
        tree, found, todo = children(), set(), self._roots()
        while todo:
            pid = todo.pop()
            if pid not in found:
                found.add(pid)
                todo.extend(tree.get(pid, ()))
        return sorted(found)

    def actors(self, class_name: str) -> list[int]:
        """Pids of this node's worker processes that hold an actor of `class_name` (their title `ray::Class...`)."""
        return [pid for pid in self.processes() if command_line(pid).split(".")[0].split(" ")[0]
                == f"ray::{class_name}"]

    def kill(self) -> list[int]:
        """kill -9 every process of the node, as a machine that loses power."""
        pids = self.processes()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return pids


class RayCluster:
    """A head and a second node on this machine, each with its own temp folder and ports."""

    def __init__(self, root: Path, node2_ip: str | None = None):
        self.root, self.node2_ip = root, node2_ip
        self.head, self.node2 = RayNode(root / "head"), RayNode(root / "node2")
        self.address = ""

    def _ray_start(self, node: RayNode, *args: str) -> None:
        options = ["--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
                   "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port"]
        # distinct: Ray refuses a port two of its components would share (free_port() twice once gave the same)
        ports = [a for option, port in zip(options, free_ports(len(options))) for a in (option, str(port))]
        command = [str(RAY), "start", "--temp-dir", str(node.temp_dir), "--num-cpus", "1",
                   "--object-store-memory", str(100 * 2**20), "--include-log-monitor", "false",
                   "--disable-usage-stats", *ports, *args]
        # A loaded machine (the suite's other worker) once kept a raylet from registering within Ray's default wait
        # ("GCS cannot find the node ... Try increase the RAY_raylet_start_wait_time_s config").
        done = subprocess.run(command, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "RAY_raylet_start_wait_time_s": "60"})
        assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"

    def start(self) -> "RayCluster":
        gcs, client = free_ports(2)
        self._ray_start(self.head, "--head", "--port", str(gcs), "--include-dashboard", "false",
                        "--ray-client-server-port", str(client), "--system-config", json.dumps(HEALTH_CHECKS))
        self.address = (self.head.temp_dir / "ray_current_cluster").read_text().strip()
        self._ray_start(self.node2, "--address", self.address, "--resources", json.dumps({"node2": 1}),
                        *(("--node-ip-address", self.node2_ip) if self.node2_ip else ()))
        return self

    def stop(self) -> None:
        """kill -9 both nodes' processes (never `ray stop`: it would stop every Ray of the machine)."""
        for _ in range(3):  # a raylet dying may still be starting a worker: look again
            if not (self.node2.kill() + self.head.kill()):
                break
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def cluster(request, monkeypatch):
    """The two-node cluster, started; parametrised indirectly with an IP, the second node takes that IP."""
    # Token authentication with a token of the test's own, set for the nodes and for the drivers the test starts
    # (they inherit it): `ray start --head` turns authentication on by itself when ~/.ray/auth_token exists, and a
    # joining `ray start --address` does not, so the mode must be the same everywhere.
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # A short root: Ray's socket paths under it must stay within the 107 bytes of a Unix socket address.
    running = RayCluster(Path(tempfile.mkdtemp(prefix="rc-", dir="/tmp")), getattr(request, "param", None))
    try:
        yield running.start()
    finally:
        running.stop()


@pytest.fixture
def databases(pg_cluster):
    """Two fresh PostgreSQL databases, site A's and site B's, dropped after the test."""
    names = {site: unique_db_name(f"ray_cluster_{site}") for site in ("A", "B")}
    urls = {site: pg_cluster.create_database(name) for site, name in names.items()}
    yield urls
    if pg_cluster.is_running():
        for name in names.values():
            pg_cluster.drop_database(name)


def _rig(tmp: Path, org, urls: dict[str, str], ray_address: str) -> Rig:
    """Site A primary (seeded) and B its standby on PostgreSQL, joined to the cluster by their settings."""
    config = tmp / "cluster.yaml"
    config.write_text(yaml.safe_dump({
        "root": str(REPO), "data_dir": str(tmp),
        "sites": {s: {"site_digit": d, "database_url": urls[s], "http": {"host": "127.0.0.1", "port": free_port()}}
                  for s, d in (("A", 1), ("B", 2))},
        "witness_url": f"sqlite:///{tmp / 'witness.db'}",
        "ray": {"address": ray_address, "workers": WORKERS}, "auth": {"tokens_file": str(tmp / "tokens.yaml")},
        "intake": {"call_timeout_s": 10, "call_attempts": 4},
    }))
    settings = load_settings(config)
    for site_id, role in (("A", SiteRole.PRIMARY), ("B", SiteRole.STANDBY)):
        upgrade(urls[site_id])
        engine = make_engine(urls[site_id])
        init_site(engine, site_id, role, primary_site="A")
        if role is SiteRole.PRIMARY:
            seed(engine, org, enterprises_count=600, officers_per_section=1, rng_seed=11)
        engine.dispose()
    return Rig(tmp, config, settings, Tokens())


async def _accepted(client: SiteClient, token: str, payload: dict, key: str, seen: Counter):
    """Pre-declare as a real client does: a 503 ("try again") is retried with the same Idempotency-Key until the
    site answers otherwise; any other answer is returned."""
    async for attempt in AsyncRetrying(stop=stop_after_delay(90), wait=wait_fixed(0.2),
                                       retry=retry_if_result(lambda reply: reply.status == 503)):
        with attempt:
            reply = await client.pre_declare(token, payload, key=key)
            replayed = (reply.headers or {}).get("Idempotent-Replayed") == "true"
            seen[f"{reply.status} {reply.error_code or ''}".strip() + (" replayed" if replayed else "")] += 1
        if not attempt.retry_state.outcome.failed:
            attempt.retry_state.set_result(reply)
    return reply


async def _load_while_node_dies(rig: Rig, tariff, tax_codes: list[str], node: RayNode):
    """DECLARATIONS pre-declarations, 16 at a time, each retried until accepted; the node is killed once KILL_AFTER
    are acknowledged. Returns key -> acknowledged number, what the clients saw, and the pids killed."""
    rng = random.Random(5)
    work = [(tax_codes[i % len(tax_codes)], make_declaration_payload(
        rng, Kind.IMPORT if i % 3 else Kind.EXPORT, tax_codes[i % len(tax_codes)], OFFICES[i % len(OFFICES)], tariff),
        f"rc-{i}") for i in range(DECLARATIONS)]
    client = SiteClient(rig.site_url("A"), max_connections=16, timeout_s=60)
    gate, seen, numbers, killed = asyncio.Semaphore(16), Counter(), {}, []

    async def one(tax_code: str, payload: dict, key: str) -> None:
        async with gate:
            reply = await _accepted(client, rig.tokens.declarant(tax_code), payload, key, seen)
            assert reply.status == 201, f"{key}: {reply.status} {reply.body}"
            numbers[key] = reply.body["number"]

    async def killer() -> None:
        while len(numbers) < KILL_AFTER:
            await asyncio.sleep(0.005)
        killed.extend(node.kill())

    try:
        await asyncio.gather(killer(), *(one(*w) for w in work))
    finally:
        await client.close()
    return numbers, seen, killed


def _stored(rig: Rig, site_id: str) -> tuple[list[str], int]:
    """Every declaration number in the site's database (with repeats, if any) and the test's idempotency keys."""
    engine = rig.engine(site_id)
    try:
        with engine.connect() as conn:
            numbers = list(conn.execute(select(declarations.c.number)).scalars())
            keys = conn.execute(select(func.count()).select_from(idempotency_keys)
                                .where(idempotency_keys.c.key.like("rc-%"))).scalar()
    finally:
        engine.dispose()
    return numbers, keys


def _placement(cluster: RayCluster) -> dict[str, tuple[int, int]]:
    """Actor class -> (its workers on the head, on the second node)."""
    return {name: (len(cluster.head.actors(name)), len(cluster.node2.actors(name)))
            for name in ("ClearanceWorker", "ApplyWorker")}


@pytest.mark.postgres
@pytest.mark.fault
def test_a_site_on_two_ray_nodes_loses_and_doubles_nothing_when_a_node_dies(tmp_path, org, tariff, cluster,
                                                                           databases):
    rig = _rig(tmp_path, org, databases, cluster.address)
    sites = Sites(rig.settings, None, config_path=rig.config, partitions=APPLY_PARTITIONS)
    try:
        sites.start_replicator("A", "B")
        tax_codes = rig.tax_codes(60)
        rig.publish_tokens(tax_codes)
        rig.processes["A"] = serve_process(rig, "A")
        sites.wait_replicating("A", "B", timeout_s=120)
        placed = _placement(cluster)
        # Each pool is spread evenly over the two nodes (a placement group the GCS spreads).
        assert placed == {"ClearanceWorker": (WORKERS // 2, WORKERS // 2),
                          "ApplyWorker": (APPLY_PARTITIONS // 2, APPLY_PARTITIONS // 2)}, placed

        numbers, seen, killed = asyncio.run(_load_while_node_dies(rig, tariff, tax_codes, cluster.node2))

        assert killed and not cluster.node2.processes(), "the second node is gone"
        assert rig.processes["A"].poll() is None, (tmp_path / "serve-A.log").read_text()[-3000:]
        assert stream_name("A", "B") in running_replicators(tmp_path), \
            (tmp_path / "replicate-A-to-B.log").read_text()[-3000:]
        acknowledged = set(numbers.values())
        assert len(numbers) == DECLARATIONS == len(acknowledged), "each declaration answered once, each number once"
        stored_a, keys_a = _stored(rig, "A")
        assert sorted(stored_a) == sorted(acknowledged), f"site A holds exactly the acknowledged; clients saw {seen}"
        assert keys_a == DECLARATIONS
        # The workers of the lost node were restarted on the head (the only node left) and took the later batches.
        for attempt in Retrying(stop=stop_after_delay(30), wait=wait_fixed(0.2), reraise=True):
            with attempt:
                assert _placement(cluster) == {"ClearanceWorker": (WORKERS, 0), "ApplyWorker": (APPLY_PARTITIONS, 0)}

        report = sites.verify("A", "B", settle_timeout_s=60)
        assert report.ok, report.summary()
        stored_b, _keys_b = _stored(rig, "B")
        assert sorted(stored_b) == sorted(acknowledged), "the standby holds exactly the acknowledged, once each"
    finally:
        sites.close()
        rig.close()


# 127.0.0.2 is this machine's loopback too, but Ray knows a node by its IP only: to a site it is another machine.
@pytest.mark.parametrize("cluster", ["127.0.0.2"], indirect=True)
def test_serve_refuses_a_sqlite_site_on_a_cluster_with_a_node_on_another_machine(tmp_path, cluster):
    url = f"sqlite:///{tmp_path / 'site-a.db'}"
    config = tmp_path / "sqlite.yaml"
    config.write_text(yaml.safe_dump({
        "root": str(REPO), "data_dir": str(tmp_path), "witness_url": f"sqlite:///{tmp_path / 'witness.db'}",
        "sites": {"A": {"site_digit": 1, "database_url": url, "http": {"host": "127.0.0.1", "port": free_port()}}},
        "ray": {"address": cluster.address}, "auth": {"tokens_file": str(tmp_path / "tokens.yaml")},
    }))
    upgrade(url)
    engine = make_engine(url)
    init_site(engine, "A", SiteRole.PRIMARY)
    engine.dispose()
    done = subprocess.run([sys.executable, "-m", "standbyctl.cli", "--config", str(config), "serve", "--site", "A"],
                          cwd=REPO, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith("error: site A's database ") and url in message and "127.0.0.2" in message, message
