"""A primary and a standby on real databases, a replicator between them, and intake running on the primary."""
from __future__ import annotations

import threading
import uuid
import time
from dataclasses import dataclass, field

from replication.apply import Applier, apply_engine
from replication.heartbeat import write_heartbeat
from replication.metrics import ReplicationMetrics
from replication.progress import wait_until_applied
from replication.ray_runtime import ApplyPool
from replication.replicator import Replicator, ReplicatorOptions
from replication.sources import open_source, stream_name
from replication.verify import verify
from standby.clearance.commands import Command, Op
from standby.clearance.pipeline import ClearancePipeline
from standby.domain.states import SiteRole
from standby.store.engine import make_engine
from standby.store.migrate import upgrade
from standby.store.site import init_site
from tests.integration.desk import OPERATOR, Desk


def make_standby(url: str, site_id: str = "B") -> None:
    upgrade(url)
    engine = make_engine(url)
    init_site(engine, site_id, SiteRole.STANDBY, primary_site="A")
    engine.dispose()


def pg_site_pair(pg_cluster, tmp_path, org, prefix: str, enterprises_count: int):
    """Two fresh databases on `pg_cluster` (named `<prefix>_<random>_a|b`): site A primary, seeded (its SiteDb), and
    site B its empty standby (its URL)."""
    from tests.conftest import make_site_db

    names = [f"{prefix}_{uuid.uuid4().hex[:8]}_{side}" for side in ("a", "b")]
    for name in names:
        pg_cluster.create_database(name)
    primary = make_site_db(tmp_path, org, enterprises_count=enterprises_count, url=pg_cluster.url(names[0]))
    standby_url = pg_cluster.url(names[1])
    make_standby(standby_url)
    return primary, standby_url


@dataclass
class Stream:
    primary_url: str
    standby_url: str
    partitions: int = 2
    window: int = 2000
    source_site: str = "A"
    target_site: str = "B"
    replicator: Replicator | None = None
    pool: ApplyPool | None = None
    source = None
    primary = None
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def stream(self) -> str:
        return stream_name(self.source_site, self.target_site)

    def open(self) -> Replicator:
        self.source = open_source(self.primary_url, self.source_site, self.target_site)
        self.pool = ApplyPool(self.standby_url, self.partitions)
        self.pool.start()
        self.primary = make_engine(self.primary_url)
        self.replicator = Replicator(self.source, self.pool, Applier(apply_engine(self.standby_url)),
                                     ReplicatorOptions(self.stream, self.partitions, self.window),
                                     ReplicationMetrics(self.stream),
                                     heartbeat=lambda now: write_heartbeat(self.primary, self.source_site, now))
        return self.replicator

    def run_in_background(self) -> None:
        self._stop.clear()
        self.result = None

        def run() -> None:
            self.result = self.replicator.run(self._stop)
        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=60)

    def catch_up(self, timeout_s: float = 60.0) -> int:
        """Wait until the standby has applied everything the primary had committed when this was called (the
        replicator's thread does the work, or, without one, each wait steps the replicator here)."""
        def between_looks(pause: float) -> None:
            if self._thread is None:
                self.replicator.step()
            elif not self._thread.is_alive():
                raise AssertionError("the replicator stopped")
            else:
                time.sleep(pause)
        standby = make_engine(self.standby_url, writer=False)
        try:
            return wait_until_applied(self.source, standby, self.stream, timeout_s=timeout_s, sleep=between_looks)
        finally:
            standby.dispose()

    def verify(self, chunk_rows: int = 2000):
        primary, standby = make_engine(self.primary_url, writer=False), make_engine(self.standby_url, writer=False)
        try:
            return verify(primary, standby, chunk_rows=chunk_rows, settle=self.catch_up)
        finally:
            primary.dispose()
            standby.dispose()

    def close(self) -> None:
        self.stop()
        if self.replicator:
            self.replicator.close()
        if self.pool:
            self.pool.stop()
        if self.source is not None:
            self.source.close()
        if self.primary is not None:
            self.primary.dispose()


class Intake:
    """Declarations flowing into the primary from a thread: pre-declare, register, then pay the green ones."""

    def __init__(self, url: str, tax_codes: list[str], tariff, rules, batch: int = 50, *, site_id: str = "A",
                 site_digit: int = 1, key_prefix: str = ""):
        self.engine = make_engine(url)
        self.desk = Desk(ClearancePipeline(self.engine, site_id, site_digit, tariff, rules), tariff)
        self.tax_codes, self.batch, self.done, self.prefix = tax_codes, batch, 0, key_prefix
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_batches(self, count: int, pause_s: float = 0.0) -> None:
        offices = ["01CA", "79CA", "31CA", "48CA"]
        for _ in range(count):
            if self._stop.is_set():
                return
            n = self.done
            made = self.desk.pipeline.process([
                Command(Op.PRE_DECLARE, OPERATOR, f"{self.prefix}p-{n + i}", self.desk.payload(
                    self.tax_codes[(n + i) % len(self.tax_codes)], offices[i % 4]), offices[i % 4])
                for i in range(self.batch)])
            registered = self.desk.pipeline.process([
                Command(Op.REGISTER, OPERATOR, f"{self.prefix}r-{n + i}", {"number": m.body["number"]}, "")
                for i, m in enumerate(made) if m.ok])
            self.desk.pipeline.process([
                Command(Op.PAY, OPERATOR, f"{self.prefix}$-{n + i}", {"number": r.body["number"],
                                                          "amount_vnd": r.body["total_vnd"]}, "")
                for i, r in enumerate(registered) if r.ok and r.body["state"] == "awaiting_payment"])
            self.done += self.batch
            if pause_s:
                time.sleep(pause_s)

    def start(self, count: int, pause_s: float = 0.0) -> None:
        self._thread = threading.Thread(target=self.run_batches, args=(count, pause_s), daemon=True)
        self._thread.start()

    def join(self) -> None:
        if self._thread:
            self._thread.join(timeout=300)
        self.engine.dispose()
