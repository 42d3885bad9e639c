"""standbyctl replicate and standbyctl verify."""
from __future__ import annotations

import signal
import threading
import time

import click
from prometheus_client import start_http_server

from standbyctl.context import CliContext, fail, open_site_database, pass_cli
from replication.apply import Applier, apply_engine
from replication.errors import PermanentApplyError, ReplicationError, SchemaMismatch
from replication.heartbeat import write_heartbeat
from replication.metrics import ReplicationMetrics
from replication.progress import NotCaughtUp, applied_position, wait_until_applied
from replication.ray_runtime import ApplyPool
from replication.replicator import Replicator, ReplicatorOptions
from replication.sources import check_revisions, open_source, stream_name, stream_sites
from replication.streams import retire_stream
from replication.verify import verify as verify_tables
from standby.domain.states import SiteRole
from standby.heap import freeze_startup_heap
from standby.ray_runtime import database_out_of_reach, ensure_ray, shutdown_ray
from standby.settings import writers_for
from standby.store.site import read_control


@click.command()
@click.option("--from", "source_site", required=True, metavar="ID", help="the primary site to copy from")
@click.option("--to", "target_site", required=True, metavar="ID", help="the standby site to keep equal to it")
@click.option("--partitions", type=click.IntRange(1, 32), default=None,
              help="apply workers; a declaration's rows always share one. Default: the stream's own count when it "
                   "was set up before, else replication.partitions (auto: 1 into a SQLite standby, whose one write "
                   "lock a second worker only queues for; 2 into PostgreSQL)")
@click.option("--window", type=click.IntRange(1, 100_000), default=5000, show_default=True,
              help="row changes read per step (a transaction is never split)")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=9464, show_default=True,
              help="serve /metrics here (0: do not serve)")
@click.option("--once", is_flag=True, help="catch up with what the primary has now, then exit")
@click.option("--drop-slot", is_flag=True,
              help="PostgreSQL: drop this stream's replication slot on the primary and exit (the primary stops "
                   "keeping WAL for it; the stream then needs a new standby snapshot)")
@pass_cli
def replicate(cli: CliContext, source_site: str, target_site: str, partitions: int | None, window: int,
              metrics_port: int, once: bool, drop_slot: bool) -> None:
    """Keep TARGET a copy of SOURCE: an initial snapshot, then every committed change in commit order, exactly once.

    Runs until SIGTERM or Ctrl-C (it finishes the window in hand and stops cleanly; the next start resumes from the
    positions stored with the rows), or until SOURCE is no longer primary (fenced by a switchover) and TARGET has
    everything it committed: then the stream is finished and retired (slot dropped, positions forgotten) and the
    command exits 0. A stream prepared without a snapshot (the reverse of a switchover) resumes from its positions.
    On PostgreSQL it creates a logical replication slot on the primary: while the slot is not consumed the primary
    keeps its WAL (see replication_slot_retained_wal_bytes)."""
    if source_site == target_site:
        fail("--from and --to must be different sites", 2)
    primary, standby = open_site_database(cli, source_site), open_site_database(cli, target_site)
    if drop_slot:
        _drop_slot(cli, source_site, target_site)
        return
    control = read_control(standby, target_site)
    if control is None or control.role is not SiteRole.STANDBY:
        fail(f"site {target_site} is {control.role.value if control else 'not set up'}; replication only writes "
             f"into a standby (a runbook changes roles)")
    try:
        check_revisions(primary, standby)
    except SchemaMismatch as exc:
        fail(str(exc))
    settings, stream = cli.settings, stream_name(source_site, target_site)
    metrics = ReplicationMetrics(stream)
    if metrics_port:
        try:
            start_http_server(metrics_port, addr="127.0.0.1", registry=metrics.registry)
        except OSError as exc:  # replicating matters more than its metrics: say so loudly and go on
            click.secho(f"warning: no /metrics on port {metrics_port} ({exc.strerror}; another replicator?); "
                        f"replicating without them. Restart with --metrics-port N to have them.", fg="yellow",
                        err=True)
    source = open_source(settings.database_url(source_site), source_site, target_site)
    started_ray = ensure_ray(settings.ray.address, settings.ray.num_cpus)
    if reason := database_out_of_reach(target_site, settings.database_url(target_site), "apply workers"):
        fail(reason, 2)
    applier = Applier(apply_engine(settings.database_url(target_site)))
    if partitions is None:
        partitions = (len(applier.positions(stream))
                      or writers_for(settings.replication.partitions, settings.database_url(target_site)))
    pool = ApplyPool(settings.database_url(target_site), partitions)
    pool.start()
    replicator = Replicator(source, pool, applier,
                            ReplicatorOptions(stream, partitions, window,
                                              idle_sleep_s=settings.replication.idle_sleep_ms / 1000), metrics,
                            heartbeat=lambda now: write_heartbeat(primary, source_site, now))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        _stream(cli, replicator, standby, stop, once)
    except PermanentApplyError as exc:
        fail(f"replication stopped: {exc}. Nothing after it was applied; fix the cause and restart.")
    except ReplicationError as exc:
        fail(f"replication stopped: {exc}")
    finally:
        stop.set()
        replicator.close()
        pool.stop()
        source.close()
        if started_ray:
            shutdown_ray()


def _stream(cli: CliContext, replicator: Replicator, standby, stop: threading.Event, once: bool) -> None:
    """Start (snapshot or resume) and stream: until caught up with `once`, else until stopped or finished (the
    source retired and everything it committed applied: then the stream is retired)."""
    stream, workers = replicator.o.stream, replicator.o.partitions
    applying = f"{workers} apply worker{'s' if workers > 1 else ''}"
    if replicator.start(progress=_snapshot_progress()):
        click.echo(f"\nsnapshot copied; streaming from position {replicator.applied_position} with {applying}")
    else:
        click.echo(f"resuming stream {stream} from position {replicator.applied_position} with {applying}")
    if once:  # each look at the standby that finds it behind steps the stream once more
        wait_until_applied(replicator.source, standby, stream, timeout_s=replicator.o.give_up_after_s,
                           sleep=lambda _s: replicator.step())
        _stopped(replicator)
        return
    _report_while(replicator, replicator.metrics, stop)
    freeze_startup_heap()
    if replicator.run(stop) is not None:
        source_site, target_site = stream_sites(stream)
        retire_stream(cli.settings.database_url(source_site), cli.settings.database_url(target_site), stream)
        click.echo(f"{replicator.finished.describe()}; the stream is retired")
        return
    _stopped(replicator)


def _stopped(replicator: Replicator) -> None:
    changes = int(replicator.metrics.changes_applied._value.get())
    click.echo(f"stopped at position {replicator.applied_position} ({changes:,} changes applied this run)")


def _drop_slot(cli: CliContext, source_site: str, target_site: str) -> None:
    from replication.pg_source import PgChangeSource
    from replication.sources import slot_name

    url = cli.settings.database_url(source_site)
    if not url.startswith("postgresql"):
        fail(f"site {source_site} is not on PostgreSQL; only PostgreSQL streams have a slot", 2)
    source = PgChangeSource(url, slot_name(source_site, target_site))
    try:
        if not source.slot_exists():
            click.echo(f"no slot {slot_name(source_site, target_site)} on site {source_site}")
            return
        source.drop_slot()
        click.echo(f"dropped slot {slot_name(source_site, target_site)} on site {source_site}")
    finally:
        source.close()


def _snapshot_progress():
    last = {"at": 0.0}

    def show(table: str, rows: int) -> None:
        if time.monotonic() - last["at"] > 0.5:
            click.echo(f"\r  snapshot: {table} {rows:,} rows", nl=False)
            last["at"] = time.monotonic()
    return show


def _report_while(replicator: Replicator, metrics: ReplicationMetrics, stop: threading.Event) -> None:
    def loop() -> None:
        while not stop.wait(5.0):
            click.echo(f"position {replicator.applied_position:,}; lag {metrics.lag_seconds._value.get():.2f} s, "
                       f"{int(metrics.lag_positions._value.get()):,} changes; "
                       f"{int(metrics.changes_applied._value.get()):,} applied")
    threading.Thread(target=loop, name="replication-report", daemon=True).start()


@click.command()
@click.argument("primary_site", metavar="A")
@click.argument("standby_site", metavar="B")
@click.option("--chunk-rows", type=click.IntRange(1, 10_000_000), default=10_000, show_default=True)
@click.option("--table", "tables", multiple=True, help="only these tables (default: every replicated table)")
@click.option("--settle-timeout", type=click.FloatRange(0, 3600), default=30, show_default=True,
              help="while replication runs, a differing chunk is compared again once the standby has applied what "
                   "the primary had then; wait at most this long for it (0: report at once)")
@pass_cli
def verify(cli: CliContext, primary_site: str, standby_site: str, chunk_rows: int, tables: tuple[str, ...],
           settle_timeout: float) -> None:
    """Compare A and B table by table in key-range chunks (count and hash per chunk in the database, then only the
    differing chunks row by row) and name every differing key. Exit 1 if anything differs."""
    primary = open_site_database(cli, primary_site, writer=False)
    standby = open_site_database(cli, standby_site, writer=False)
    kwargs = {"tables": tables} if tables else {}
    if settle_timeout:
        kwargs["settle"] = _settle(cli, primary_site, standby_site, standby, settle_timeout)
    try:
        report = verify_tables(primary, standby, chunk_rows=chunk_rows, progress=_verify_progress(), **kwargs)
    except ValueError as exc:
        fail(str(exc), 2)
    click.echo()
    for line in report.summary():
        click.echo(line)
    raise SystemExit(0 if report.ok else 1)


def _settle(cli: CliContext, primary_site: str, standby_site: str, standby, timeout_s: float):
    """Wait until the standby's stream from the primary has applied the primary's committed position as of the
    call; if it does not in time, verify reports what still differs."""
    stream = stream_name(primary_site, standby_site)

    def settle() -> None:
        if applied_position(standby, stream) is None:
            return  # no stream into this standby: nothing to wait for
        source = open_source(cli.settings.database_url(primary_site), primary_site, standby_site)
        try:
            wait_until_applied(source, standby, stream, timeout_s=timeout_s)
        except NotCaughtUp:
            pass
        finally:
            source.close()
    return settle


def _verify_progress():
    def show(table: str, done: int, total: int) -> None:
        click.echo(f"\r  {table}: chunk {done}/{total}   ", nl=False)
    return show
