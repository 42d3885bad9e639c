"""Wires one site's process: database, Ray workers, micro-batcher and the HTTP app."""
from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

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
from standby.heap import freeze_startup_heap
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
               sync_positions: SyncPositions | None = None, renew: Renew | None = None,
               workers_namespace: str | None = None, metrics_folder: Path | None = None) -> Site:
    """Start the site's workers (blocking until they are up) and build its app. The caller serves the app.

    `in_process=True` runs the same pipelines in threads of this process instead of Ray actors: for measuring what
    Ray costs, and for diagnosis. Production runs the Ray workers. `authority` (the witness's current epoch and
    primary, called in a worker thread) lets the site refuse writes under a stale epoch; see SiteServices.
    `sync_positions` (this site's stream to its partner in settings.sync) puts the site in synchronous mode: while
    it is primary, a write is answered once the partner has applied it (standby.api.sync). `renew` (the witness's
    renew_lease, see standby.lease) makes the site keep a lease while it is primary: a LeaseKeeper runs from the
    app's start to its stop. One of several HTTP processes of a site (standby.http_processes) passes
    `workers_namespace`, the namespace of the workers its supervisor started (they are shared, not started here),
    and `metrics_folder`, where the site's processes share their metrics; its supervisor keeps the lease."""
    url = settings.database_url(site_id)
    metrics = SiteMetrics(site_id, metrics_folder)
    pool = worker_pool(settings, site_id, metrics, in_process=in_process)
    if workers_namespace is None:
        pool.start()
    else:
        pool.attach(workers_namespace)
    partitions = settings.clearance_workers(site_id)
    batcher = MicroBatcher(pool.submit, partitions, settings.intake.batch_max_items,
                           settings.intake.batch_max_wait_ms / 1000, on_batch=metrics.batch_size.observe)

    async def submit(command: Command) -> Outcome:
        return await batcher.submit(partition_for(command.office_code, partitions), command)

    keeper = lease_keeper(settings, site_id, renew, metrics) if renew is not None else None

    tokens = ReloadingTokenRegistry(settings.path(settings.auth.tokens_file))

    async def start() -> None:
        batcher.start()
        tokens.watch()
        if keeper is not None:
            keeper.start()

    partner = settings.sync.standby_of(site_id)
    sync = (SyncGate(partner, settings.sync, sync_positions.committed, sync_positions.applied, metrics=metrics.sync)
            if partner and sync_positions is not None else None)

    async def stop() -> None:
        tokens.stop_watching()
        if keeper is not None:
            await asyncio.to_thread(keeper.close)
        if sync is not None:
            await sync.stop()
        await batcher.stop()

    services = SiteServices(
        site_id=site_id, read_engine=make_engine(url, pool_size=8, writer=False), submit=submit,
        tokens=tokens, metrics=metrics,
        max_body_bytes=settings.limits.max_body_bytes, start=start, stop=stop, sync=sync,
        primary_urls=site_urls(settings), authority=authority,
    )
    return Site(site_id, create_app(services), pool, services)


def worker_pool(settings: Settings, site_id: str, metrics: SiteMetrics, *,
                in_process: bool = False) -> "WorkerPool | InProcessPool":
    """The site's pool of clearance workers, not started: `start()` starts them, `attach(namespace)` (Ray only) uses
    those another process of the site started."""
    spec = WorkerSpec(site_id=site_id, site_digit=settings.site(site_id).site_digit,
                      database_url=settings.database_url(site_id), tariffs=settings.path(settings.reference.tariffs),
                      risk_rules=settings.path(settings.reference.risk_rules),
                      number_block_size=settings.intake.number_block_size)
    pool_type = InProcessPool if in_process else WorkerPool
    return pool_type(spec, settings.clearance_workers(site_id), attempts=settings.intake.call_attempts,
                     call_timeout_s=settings.intake.call_timeout_s,
                     on_restart=lambda p: metrics.worker_restarts.labels(str(p)).inc())


def lease_keeper(settings: Settings, site_id: str, renew: Renew, metrics: SiteMetrics) -> LeaseKeeper:
    """The site's lease keeper (not started), with engines of its own."""
    url = settings.database_url(site_id)
    return LeaseKeeper(site_id, make_engine(url, pool_size=1), renew, settings.lease, metrics=metrics,
                       read_engine=make_engine(url, pool_size=1, writer=False))


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


def serve_on_sockets(app: FastAPI, sockets: list) -> None:
    """Serve on sockets already listening (one of a site's HTTP processes) until SIGINT/SIGTERM, draining in-flight
    requests as run_forever does."""
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                           timeout_keep_alive=KEEP_ALIVE_S))
    # uvicorn handles SIGINT/SIGTERM while it serves, then raises the signal again for the handler it found: Ray's
    # (sys.exit inside the event loop, which cancels the app's shutdown with a traceback) or Python's. Ignored
    # instead, the process returns from here and closes the site; its supervisor sends the SIGTERM.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    freeze_startup_heap()
    server.run(sockets=sockets)


def run_forever(app: FastAPI, host: str, port: int) -> None:
    """Serve in the foreground until SIGINT/SIGTERM (uvicorn handles both and drains in-flight requests)."""
    freeze_startup_heap()
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False, lifespan="on",
                timeout_keep_alive=KEEP_ALIVE_S)



