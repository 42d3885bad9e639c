"""standbyctl serve: run one site's HTTP API and its Ray workers in the foreground."""
from __future__ import annotations

import logging
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

import click

from cutover.witness import open_witness
from cutover.witness.lease import renewer
from standbyctl.commands.witness import open_settings_witness, witness_url
from standbyctl.sync_positions import sync_positions
from standbyctl.context import CliContext, fail, open_site_database, pass_cli, site_option
from standby.domain.states import SiteRole
from standby.api.auth import ReloadingTokenRegistry
from standby.api.metrics import SiteMetrics, forget_process, share_between_processes
from standby.http_processes import CrashLoop, HttpProcesses, bind_listener, die_with_parent
from standby.ray_runtime import cluster_address, database_out_of_reach, ensure_ray, shutdown_ray
from standby.settings import Settings
from standby.site_process import build_site, lease_keeper, run_forever, serve_on_sockets, worker_pool
from standby.store.site import read_control


@click.command()
@site_option
@click.option("--role", type=click.Choice([r.value for r in SiteRole]), default=None,
              help="the role you expect this site to hold; serving stops with an error if its database says otherwise")
@click.option("--host", default=None, help="listen address (default: from the settings)")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="listen port (default: from the settings)")
@click.option("--processes", type=click.IntRange(1, 32), default=None,
              help="HTTP processes serving the site on its one port, sharing its Ray workers, so reads and intake "
                   "do not queue behind one Python interpreter (default: the site's http.processes setting, whose "
                   "default `auto` is one per CPU, at most 4)")
@click.option("--in-process", is_flag=True,
              help="run the clearance pipelines in threads of this process instead of Ray workers (benchmarks, "
                   "diagnosis; not for production; one HTTP process)")
@pass_cli
def serve(cli: CliContext, site_id: str, role: str | None, host: str | None, port: int | None,
          processes: int | None, in_process: bool) -> None:
    """Serve SITE's HTTP API (OpenAPI at /docs, metrics at /metrics) until Ctrl-C or SIGTERM.

    A primary accepts intake; a standby answers reads and refuses writes naming the primary. The site follows the
    witness (settings: witness_url): once the witness names a newer epoch than the site's own, the site refuses
    writes (`stale_epoch`), so a primary that was replaced never takes another write. While the site is primary it
    keeps a lease in the witness (settings: lease) and refuses writes (`lease_expired`) once it could not renew it
    in time; a renewal refused under a newer epoch fences the site.

    With several HTTP processes (--processes, or http.processes), this process starts the site's Ray workers,
    keeps its lease and supervises the HTTP processes: one that dies is replaced, and all stop with this one.
    Freezes, idempotency, number blocks and token reloads are the site's, whatever process answers; one scrape
    of /metrics shows the whole site."""
    settings = cli.settings
    engine = open_site_database(cli, site_id)
    control = read_control(engine, site_id)
    if role and control.role.value != role:
        fail(f"site {site_id} is {control.role.value} in its database, not {role}; roles change through a runbook")
    witness = open_settings_witness(settings, create=False)
    if witness is None:
        click.secho(f"warning: no witness at {settings.witness_url}; this site cannot tell a newer epoch. Create it "
                    f"with `standbyctl db upgrade --site {site_id} --role primary` on the first site.",
                    fg="yellow", err=True)
    http = settings.site(site_id).http
    host, port = host or http.host, port or http.port
    count = processes or (1 if in_process else http.process_count(os.cpu_count()))
    if in_process and count > 1:
        fail(f"--in-process runs the site in one process; drop --processes {count} (or http.processes) to use it", 2)
    listener = _listen(host, port) if count > 1 else None  # before Ray starts: a port taken fails at once
    started_ray = False if in_process else ensure_ray(settings.ray.address, settings.ray.num_cpus)
    if not in_process and (reason := database_out_of_reach(site_id, settings.database_url(site_id))):
        fail(reason, 2)
    # The lease keeper's own witness connection, its retries bounded by the lease's retry timeout (not the
    # witness's default budget of seconds), so a primary cut off from the witness notices within its timing rule.
    lease_witness = open_witness(witness_url(settings), root=settings.root, migrate=False, attempts=2,
                                 retry_budget_s=settings.lease.retry_timeout_s) if witness else None
    renew = renewer(lease_witness) if lease_witness else None
    try:
        if count == 1:
            _serve_one_process(settings, site_id, control, witness, renew, host, port, in_process)
        else:
            _serve_processes(settings, site_id, control, renew, listener, host, port, count)
    finally:
        if witness is not None:
            witness.close()
        if lease_witness is not None:
            lease_witness.close()
        if started_ray:
            shutdown_ray()


def _serve_one_process(settings: Settings, site_id: str, control, witness, renew, host: str, port: int,
                       in_process: bool) -> None:
    positions = sync_positions(settings, site_id)
    site = build_site(settings, site_id, in_process=in_process, authority=_authority(witness) if witness else None,
                      sync_positions=positions, renew=renew)
    _warn_without_tokens(settings, len(site.services.tokens))
    click.echo(f"site {site_id}: {control.role.value}, epoch {control.epoch}, intake {control.intake_state.value}; "
               f"{settings.clearance_workers(site_id)} clearance workers "
               f"{'in this process' if in_process else 'on Ray'}")
    _announce(settings, site_id, host, port, 1)
    try:
        run_forever(site.app, host, port)
    finally:
        site.close()
        if positions is not None:
            positions.close()


def _listen(host: str, port: int):
    try:
        return bind_listener(host, port)
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", 1)


def _serve_processes(settings: Settings, site_id: str, control, renew, listener, host: str, port: int,
                     count: int) -> None:
    """This process: the workers, the lease and the supervision; `count` HTTP processes serve (serve_http_process)
    on `listener`."""
    folder = settings.path(settings.data_dir) / "metrics" / f"site-{site_id}"
    shutil.rmtree(folder, ignore_errors=True)  # counters start again with the site, as in one process
    folder.mkdir(parents=True)
    share_between_processes(folder)
    metrics = SiteMetrics(site_id, folder)
    pool = worker_pool(settings, site_id, metrics)
    pool.start()
    keeper = lease_keeper(settings, site_id, renew, metrics).start() if renew is not None else None
    job = HttpJob(settings, site_id, os.getpid(), cluster_address(), pool.namespace, folder)
    supervisor = HttpProcesses(serve_http_process, (job,), [listener], count,
                               on_exit=lambda pid: forget_process(folder, pid), name=f"site-{site_id}-http")
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: supervisor.stop())
    try:
        supervisor.start()
        _warn_without_tokens(settings, len(ReloadingTokenRegistry(settings.path(settings.auth.tokens_file))))
        click.echo(f"site {site_id}: {control.role.value}, epoch {control.epoch}, intake "
                   f"{control.intake_state.value}; {settings.clearance_workers(site_id)} clearance workers on Ray, "
                   f"shared by {count} HTTP processes (pids {', '.join(map(str, supervisor.pids))})")
        _announce(settings, site_id, host, port, count)
        supervisor.run()
    except CrashLoop as exc:
        fail(str(exc), 1)
    finally:
        listener.close()
        if keeper is not None:
            keeper.close()
        pool.stop()
        shutil.rmtree(folder, ignore_errors=True)


@dataclass(frozen=True)
class HttpJob:
    """What one HTTP process of a site needs from its supervisor (plain values: it crosses a process spawn)."""

    settings: Settings
    site_id: str
    supervisor_pid: int
    ray_address: str
    workers_namespace: str
    metrics_folder: Path


def serve_http_process(job: HttpJob, sockets: list) -> None:
    """One HTTP process of a site (started by HttpProcesses): the site's app on the shared socket, its batches
    sent to the workers the supervisor started; the supervisor keeps the lease."""
    die_with_parent(job.supervisor_pid)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = job.settings
    ensure_ray(job.ray_address)
    witness = open_settings_witness(settings, create=False)
    positions = sync_positions(settings, job.site_id)
    site = build_site(settings, job.site_id, authority=_authority(witness) if witness else None,
                      sync_positions=positions, workers_namespace=job.workers_namespace,
                      metrics_folder=job.metrics_folder)
    try:
        serve_on_sockets(site.app, sockets)
    finally:
        site.close()
        if positions is not None:
            positions.close()
        if witness is not None:
            witness.close()
        shutdown_ray()


def _warn_without_tokens(settings: Settings, tokens: int) -> None:
    if not tokens:
        click.secho(f"warning: no tokens in {settings.path(settings.auth.tokens_file)}; every API call will get 401. "
                    "Issue some with `standbyctl tokens issue`; the running site picks them up within a second.",
                    fg="yellow", err=True)


def _announce(settings: Settings, site_id: str, host: str, port: int, count: int) -> None:
    click.echo(f"serving http://{host}:{port}  (API docs /docs, metrics /metrics, readiness /readyz)"
               + (f"; {count} HTTP processes" if count > 1 else ""))
    partner = settings.sync.standby_of(site_id)
    if partner:
        click.echo(f"synchronous mode with {partner}: while primary, writes are answered once it has "
                   f"applied them; not applied within {settings.sync.standby_timeout_s:g} s: "
                   f"{settings.sync.on_standby_lost}")


def _authority(witness):
    """The witness's epoch and primary, for the site's intake gate (called off the event loop)."""
    def current() -> tuple[int, str | None]:
        state = witness.state()
        return state.epoch, state.primary_site
    return current
