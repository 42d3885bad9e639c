"""standbyctl serve: run one site's HTTP API and its Ray workers in the foreground."""
from __future__ import annotations

import click

from cutover.witness import open_witness
from cutover.witness.lease import renewer
from standbyctl.commands.witness import open_settings_witness, witness_url
from standbyctl.sync_positions import sync_positions
from standbyctl.context import CliContext, fail, open_site_database, pass_cli, site_option
from standby.domain.states import SiteRole
from standby.ray_runtime import database_out_of_reach, ensure_ray, shutdown_ray
from standby.site_process import build_site, run_forever
from standby.store.site import read_control


@click.command()
@site_option
@click.option("--role", type=click.Choice([r.value for r in SiteRole]), default=None,
              help="the role you expect this site to hold; serving stops with an error if its database says otherwise")
@click.option("--host", default=None, help="listen address (default: from the settings)")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="listen port (default: from the settings)")
@click.option("--in-process", is_flag=True,
              help="run the clearance pipelines in threads of this process instead of Ray workers (benchmarks, "
                   "diagnosis; not for production)")
@pass_cli
def serve(cli: CliContext, site_id: str, role: str | None, host: str | None, port: int | None,
          in_process: bool) -> None:
    """Serve SITE's HTTP API (OpenAPI at /docs, metrics at /metrics) until Ctrl-C or SIGTERM.

    A primary accepts intake; a standby answers reads and refuses writes naming the primary. The site follows the
    witness (settings: witness_url): once the witness names a newer epoch than the site's own, the site refuses
    writes (`stale_epoch`), so a primary that was replaced never takes another write. While the site is primary it
    keeps a lease in the witness (settings: lease) and refuses writes (`lease_expired`) once it could not renew it
    in time; a renewal refused under a newer epoch fences the site."""
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
    started_ray = False if in_process else ensure_ray(settings.ray.address, settings.ray.num_cpus)
    if not in_process and (reason := database_out_of_reach(site_id, settings.database_url(site_id))):
        fail(reason, 2)
    positions = sync_positions(settings, site_id)
    # The lease keeper's own witness connection, its retries bounded by the lease's retry timeout (not the
    # witness's default budget of seconds), so a primary cut off from the witness notices within its timing rule.
    lease_witness = open_witness(witness_url(settings), root=settings.root, migrate=False, attempts=2,
                                 retry_budget_s=settings.lease.retry_timeout_s) if witness else None
    site = build_site(settings, site_id, in_process=in_process, authority=_authority(witness) if witness else None,
                      sync_positions=positions, renew=renewer(lease_witness) if lease_witness else None)
    if not len(site.services.tokens):
        click.secho(f"warning: no tokens in {settings.path(settings.auth.tokens_file)}; every API call will get 401. "
                    "Issue some with `standbyctl tokens issue`; the running site picks them up within a second.",
                    fg="yellow", err=True)
    click.echo(f"site {site_id}: {control.role.value}, epoch {control.epoch}, intake {control.intake_state.value}; "
               f"{settings.ray.workers} clearance workers {'in this process' if in_process else 'on Ray'}")
    click.echo(f"serving http://{host}:{port}  (API docs /docs, metrics /metrics, readiness /readyz)")
    if positions is not None:
        click.echo(f"synchronous mode with {positions.partner}: while primary, writes are answered once it has "
                   f"applied them; not applied within {settings.sync.standby_timeout_s:g} s: "
                   f"{settings.sync.on_standby_lost}")
    try:
        run_forever(site.app, host, port)
    finally:
        site.close()
        if positions is not None:
            positions.close()
        if witness is not None:
            witness.close()
        if lease_witness is not None:
            lease_witness.close()
        if started_ray:
            shutdown_ray()


def _authority(witness):
    """The witness's epoch and primary, for the site's intake gate (called off the event loop)."""
    def current() -> tuple[int, str | None]:
        state = witness.state()
        return state.epoch, state.primary_site
    return current
