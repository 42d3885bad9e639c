"""standbyctl bench replication: catch-up apply rate from a backlog, and lag while intake runs at 3x design."""
from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select

from loadtests.capacity import DesignCapacity
from replication.apply import Applier, apply_engine
from replication.heartbeat import write_heartbeat
from replication.metrics import ReplicationMetrics
from replication.progress import committed_position, wait_until_applied
from replication.ray_runtime import ApplyPool
from replication.replicator import Replicator, ReplicatorOptions
from replication.sources import open_source, stream_name
from standby.clearance.commands import Command, Op, Principal, Role
from standby.clearance.pipeline import ClearancePipeline
from standby.domain.risk import RiskRules
from standby.domain.states import Kind, SiteRole
from standby.domain.tariff import Tariff
from standby.reference.orgdata import OrgData
from standby.store.engine import make_engine
from standby.store.migrate import upgrade
from standby.store.schema import declarations, enterprises, goods_lines
from standby.store.seed import seed
from standby.store.site import init_site
from standby.synthetic import make_declaration_payload

Log = Callable[[str], None]


@dataclass
class Pair:
    primary_url: str
    standby_url: str
    org: OrgData
    tariff: Tariff
    rules: RiskRules
    replicator: Replicator | None = None
    pool: ApplyPool | None = None
    extra: dict = field(default_factory=dict)


def set_up(pair: Pair, enterprises_count: int, partitions: int, window: int,
           read_ahead: bool | None = None) -> Replicator:
    """Both sites at the newest schema, the primary seeded, the standby snapshotted from it (so what follows is
    streamed, not copied)."""
    for url, site, role in ((pair.primary_url, "A", SiteRole.PRIMARY), (pair.standby_url, "B", SiteRole.STANDBY)):
        upgrade(url)
        init_site(make_engine(url), site, role, primary_site="A")
    seed(make_engine(pair.primary_url), pair.org, enterprises_count=enterprises_count)
    source = open_source(pair.primary_url, "A", "B")
    pair.pool = ApplyPool(pair.standby_url, partitions)
    pair.pool.start()
    primary = make_engine(pair.primary_url)
    stream = stream_name("A", "B")
    pair.replicator = Replicator(source, pair.pool, Applier(apply_engine(pair.standby_url)),
                                 ReplicatorOptions(stream, partitions, window, read_ahead=read_ahead),
                                 ReplicationMetrics(stream),
                                 heartbeat=lambda now: write_heartbeat(primary, "A", now))
    pair.replicator.start()
    pair.replicator.source.acknowledge(pair.replicator.applied_position)
    return pair.replicator


def make_backlog(pair: Pair, declarations: int, log: Log) -> int:
    """Historical declarations written on the primary while the stream is stopped: each is a declaration row plus its
    goods lines, every one a captured row change. Returns the row changes in the backlog."""
    before = backlog_rows(pair.primary_url)
    started = time.perf_counter()
    seed(make_engine(pair.primary_url), pair.org, declarations_count=declarations, tariff=pair.tariff,
         rules=pair.rules, rng_seed=7)
    changes = backlog_rows(pair.primary_url) - before + 1  # + the number block's one update
    log(f"  backlog: {declarations:,} declarations = {changes:,} row changes written in "
        f"{time.perf_counter() - started:.1f} s")
    return changes


def backlog_rows(url: str) -> int:
    """Rows the backlog writes: declarations and their goods lines (positions are not counts on PostgreSQL)."""
    return count_rows(url, declarations) + count_rows(url, goods_lines)


def catch_up(pair: Pair, log: Log, timeout_s: float = 3600.0) -> float:
    """Apply the whole backlog (up to the primary's committed position when called, replication.progress's
    notion); returns seconds."""
    replicator = pair.replicator
    target = committed_position(replicator.source)
    started, last = time.perf_counter(), [time.perf_counter()]
    standby = make_engine(pair.standby_url, writer=False)

    def step(_pause: float) -> None:  # between looks at the standby, apply the next window
        replicator.step()
        if time.perf_counter() - last[0] > 5:
            log(f"    applied up to {replicator.applied_position:,} of {target:,}")
            last[0] = time.perf_counter()
    try:
        wait_until_applied(replicator.source, standby, replicator.o.stream, target=target, timeout_s=timeout_s,
                           sleep=step)
    finally:
        standby.dispose()
    return time.perf_counter() - started


def lag_under_intake(pair: Pair, capacity: DesignCapacity, multiplier: float, seconds: float) -> list[float]:
    """Run intake at `multiplier` x design (pre-declare, register, pay each declaration) while the replicator
    streams; return every row change's commit-to-apply delay."""
    engine = make_engine(pair.primary_url)
    with engine.connect() as conn:
        tax_codes = list(conn.execute(select(enterprises.c.tax_code).where(
            enterprises.c.status == "active", enterprises.c.tax_debt_days <= 90).limit(2000)).scalars())
    pipeline = ClearancePipeline(engine, "A", 1, pair.tariff, pair.rules)
    operator, rng = Principal(Role.OPERATOR, "bench"), random.Random(3)
    offices = [o.code for o in pair.org.offices]
    stop = threading.Event()
    pair.replicator.delays = []
    runner = threading.Thread(target=pair.replicator.run, args=(stop,), daemon=True)
    runner.start()
    interval, t0, n = 1.0 / capacity.declarations_per_s(multiplier), time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        office = rng.choice(offices)
        payload = make_declaration_payload(rng, Kind.IMPORT, rng.choice(tax_codes), office, pair.tariff)
        made = pipeline.process([Command(Op.PRE_DECLARE, operator, f"lag-p-{n}", payload, office)])[0]
        if made.ok:
            reg = pipeline.process([Command(Op.REGISTER, operator, f"lag-r-{n}", {"number": made.body["number"]},
                                            office)])[0]
            if reg.ok and reg.body["state"] == "awaiting_payment":
                pipeline.process([Command(Op.PAY, operator, f"lag-$-{n}", {"number": reg.body["number"],
                                                                           "amount_vnd": reg.body["total_vnd"]},
                                          office)])
        n += 1
        time.sleep(max(0.0, t0 + n * interval - time.perf_counter()))
    time.sleep(1.0)
    stop.set()
    runner.join(timeout=60)
    return pair.replicator.delays


def count_rows(url: str, table) -> int:
    engine = make_engine(url, writer=False)
    try:
        with engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(table)).scalar()
    finally:
        engine.dispose()


def close(pair: Pair) -> None:
    if pair.replicator:
        pair.replicator.close()
    if pair.pool:
        pair.pool.stop()
    if pair.replicator:
        pair.replicator.source.close()


def sqlite_pair(workdir: Path, org, tariff, rules) -> Pair:
    workdir.mkdir(parents=True, exist_ok=True)
    for name in ("a.db", "b.db"):
        for suffix in ("", "-wal", "-shm"):
            (workdir / f"{name}{suffix}").unlink(missing_ok=True)
    return Pair(f"sqlite:///{workdir / 'a.db'}", f"sqlite:///{workdir / 'b.db'}", org, tariff, rules)


# --- PostgreSQL: our replicator beside PostgreSQL's native logical replication, on the same workload -----------------

def pg_clusters(log: Log, primary_commit: str = "on"):
    """Two throwaway clusters (primary with wal_level=logical, standby), the settings the tests use, but for the
    primary's synchronous_commit (`primary_commit`): with it off, a commit reaches logical decoding only once the
    WAL writer flushes it (every wal_writer_delay, 200 ms), which then sets most of the lag."""
    from standby.store.pg_cluster import PgCluster

    clusters = [PgCluster(name="bench-primary", settings={"synchronous_commit": primary_commit}).start(),
                PgCluster(name="bench-standby").start()]
    log(f"  clusters on ports {clusters[0].port} and {clusters[1].port}")
    return clusters


def native_catch_up(primary_cluster, standby_cluster, org, tariff, rules, enterprises_count: int, declarations: int,
                    log: Log) -> dict:
    """PostgreSQL's own publication/subscription: initial copy, then the same backlog as ours, timed until the
    subscription's slot has confirmed everything the backlog wrote."""
    from replication.changes import REPLICATED_TABLES

    primary_cluster.create_database("native_a")
    standby_cluster.create_database("native_b")
    a, b = primary_cluster.url("native_a"), standby_cluster.url("native_b")
    for url, site, role in ((a, "A", SiteRole.PRIMARY), (b, "B", SiteRole.STANDBY)):
        upgrade(url)
        init_site(make_engine(url), site, role, primary_site="A")
    seed(make_engine(a), org, enterprises_count=enterprises_count)
    tables = ", ".join(REPLICATED_TABLES)
    # The subscription copies every row: what init_site wrote on the standby (its org_map_state row) would collide.
    standby_cluster.execute(f"TRUNCATE {tables}", dbname="native_b")
    primary_cluster.execute(f"CREATE PUBLICATION bench_pub FOR TABLE {tables}", dbname="native_a")
    standby_cluster.execute(f"CREATE SUBSCRIPTION bench_sub CONNECTION '{primary_cluster.dsn('native_a')}' "
                            "PUBLICATION bench_pub WITH (copy_data = true)", dbname="native_b")
    _wait(lambda: not standby_cluster.execute(
        "SELECT 1 FROM pg_subscription_rel WHERE srsubstate <> 'r'", dbname="native_b"), 600, "initial copy")
    standby_cluster.execute("ALTER SUBSCRIPTION bench_sub DISABLE", dbname="native_b")
    seed(make_engine(a), org, declarations_count=declarations, tariff=tariff, rules=rules, rng_seed=7)
    target = primary_cluster.execute("SELECT pg_current_wal_lsn()", dbname="native_a")[0][0]
    started = time.perf_counter()
    standby_cluster.execute("ALTER SUBSCRIPTION bench_sub ENABLE", dbname="native_b")
    _wait(lambda: primary_cluster.execute(
        "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots WHERE slot_name = 'bench_sub'",
        (target,), dbname="native_a")[0][0], 3600, "native catch-up")
    seconds = time.perf_counter() - started
    standby_cluster.execute("DROP SUBSCRIPTION bench_sub", dbname="native_b")
    return {"catch_up_seconds": round(seconds, 2)}


def _wait(done: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not finish within {timeout_s:.0f} s")
        time.sleep(0.1)
