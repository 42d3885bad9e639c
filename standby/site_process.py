"""Wires one site's process: database, Ray workers, micro-batcher and the HTTP app."""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI

from standby.api.app import SiteServices, create_app
from standby.api.auth import ReloadingTokenRegistry
from standby.api.batcher import MicroBatcher
from standby.api.metrics import SiteMetrics
from standby.api.serving import KEEP_ALIVE_S
from standby.api.sync import SyncGate, SyncPositions
from standby.clearance.commands import Command, Outcome, partition_for
from standby.clearance.pipeline import ClearancePipeline
from standby.domain.risk import load_risk_rules
from standby.domain.tariff import load_tariff
from standby.lease import LeaseKeeper, Renew
from standby.ray_runtime import WorkerPool, WorkerSpec
from standby.settings import Settings
from standby.store.engine import make_engine


@dataclass
class Site:
    site_id: str
    app: FastAPI
    pool: "WorkerPool | InProcessPool"
    services: SiteServices

    def close(self) -> None:
        self.pool.stop()
        self.services.read_engine.dispose()


def build_site(settings: Settings, site_id: str, *, in_process: bool = False,
               authority: Callable[[], tuple[int, str | None]] | None = None,
               sync_positions: SyncPositions | None = None, renew: Renew | None = None) -> Site:
    """Start the site's workers (blocking until they are up) and build its app. The caller serves the app.

    `in_process=True` runs the same pipelines in threads of this process instead of Ray actors: for measuring what
    Ray costs, and for diagnosis. Production runs the Ray workers. `authority` (the witness's current epoch and
    primary, called in a worker thread) lets the site refuse writes under a stale epoch; see SiteServices.
    `sync_positions` (this site's stream to its partner in settings.sync) puts the site in synchronous mode: while
    it is primary, a write is answered once the partner has applied it (standby.api.sync). `renew` (the witness's
    renew_lease, see standby.lease) makes the site keep a lease while it is primary: a LeaseKeeper runs from the
    app's start to its stop."""
    cfg, url = settings.site(site_id), settings.database_url(site_id)
    metrics = SiteMetrics(site_id)
    spec = WorkerSpec(site_id=site_id, site_digit=cfg.site_digit, database_url=url,
                      tariffs=settings.path(settings.reference.tariffs),
                      risk_rules=settings.path(settings.reference.risk_rules),
                      number_block_size=settings.intake.number_block_size)
    pool_type = InProcessPool if in_process else WorkerPool
    pool = pool_type(spec, settings.ray.workers, attempts=settings.intake.call_attempts,
                     call_timeout_s=settings.intake.call_timeout_s,
                     on_restart=lambda p: metrics.worker_restarts.labels(str(p)).inc())
    pool.start()
    batcher = MicroBatcher(pool.submit, settings.ray.workers, settings.intake.batch_max_items,
                           settings.intake.batch_max_wait_ms / 1000, on_batch=metrics.batch_size.observe)

    async def submit(command: Command) -> Outcome:
        return await batcher.submit(partition_for(command.office_code, settings.ray.workers), command)

    keeper = LeaseKeeper(site_id, make_engine(url, pool_size=1), renew, settings.lease, metrics=metrics,
                         read_engine=make_engine(url, pool_size=1, writer=False)) if renew is not None else None

    async def start() -> None:
        batcher.start()
        if keeper is not None:
            keeper.start()

    partner = settings.sync.standby_of(site_id)
    sync = (SyncGate(partner, settings.sync, sync_positions.committed, sync_positions.applied, metrics=metrics.sync)
            if partner and sync_positions is not None else None)

    async def stop() -> None:
        if keeper is not None:
            await asyncio.to_thread(keeper.close)
        if sync is not None:
            await sync.stop()
        await batcher.stop()

    services = SiteServices(
        site_id=site_id, read_engine=make_engine(url, pool_size=8, writer=False), submit=submit,
        tokens=ReloadingTokenRegistry(settings.path(settings.auth.tokens_file)), metrics=metrics,
        max_body_bytes=settings.limits.max_body_bytes, start=start, stop=stop, sync=sync,
        primary_urls=site_urls(settings), authority=authority,
    )
    return Site(site_id, create_app(services), pool, services)


def site_urls(settings: Settings) -> dict[str, str]:
    """Each configured site's base URL, from its http host and port."""
    return {site: f"http://{cfg.http.host}:{cfg.http.port}" for site, cfg in settings.sites.items()}


class InProcessPool:
    """The WorkerPool contract without Ray: one pipeline per partition, each run in a worker thread."""

    def __init__(self, spec: WorkerSpec, partitions: int, **_ignored):
        self.spec, self.partitions = spec, partitions
        self._pipelines: list[ClearancePipeline] = []

    def start(self) -> None:
        tariff, rules = load_tariff(self.spec.tariffs), load_risk_rules(self.spec.risk_rules)
        self._engine = make_engine(self.spec.database_url, pool_size=self.partitions + 1)
        self._pipelines = [ClearancePipeline(self._engine, self.spec.site_id, self.spec.site_digit, tariff, rules,
                                             block_size=self.spec.number_block_size) for _ in range(self.partitions)]

    async def submit(self, partition: int, commands: Sequence[Command]) -> list[Outcome]:
        return await asyncio.to_thread(self._pipelines[partition].process, list(commands))

    def stop(self) -> None:
        self._engine.dispose()


class BackgroundServer:
    """uvicorn in a thread of this process (the demo and the tests); `stop` shuts it down gracefully."""

    def __init__(self, app: FastAPI, host: str, port: int):
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                    access_log=False, lifespan="on", timeout_keep_alive=KEEP_ALIVE_S))
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{port}", daemon=True)
        self.url = f"http://{host}:{port}"

    def start(self, timeout_s: float = 30.0) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP server did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def run_forever(app: FastAPI, host: str, port: int) -> None:
    """Serve in the foreground until SIGINT/SIGTERM (uvicorn handles both and drains in-flight requests)."""
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False, lifespan="on",
                timeout_keep_alive=KEEP_ALIVE_S)



