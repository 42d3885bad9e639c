"""standbyctl front: one address for clients that follows the primary the witness names."""
from __future__ import annotations

import click

from standbyctl.commands.witness import open_settings_witness, witness_url
from standbyctl.context import CliContext, fail, pass_cli


@click.command()
@click.option("--host", default=None, help="listen address (default: front.host in the settings)")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="listen port (default: front.port in the settings, 8400)")
@pass_cli
def front(cli: CliContext, host: str | None, port: int | None) -> None:
    """Serve the public API on one address that survives a role change, until Ctrl-C or SIGTERM.

    Point clients here instead of at a site. Every request (/v1/..., the site's /docs too) is forwarded, headers
    and body unchanged, to the site the witness names as primary (witness_url in the settings; asked every
    front.witness_poll_ms). The front answers /healthz, /readyz (200 while a primary is known) and /metrics
    (front_held_requests, front_refused_total, front_forward_latency_seconds, ...) itself.

    \b
    During a switchover or failover clients see latency, not errors:
      - writes (POST/PUT/PATCH/DELETE) are held while no site is primary, while the primary's intake is frozen,
        or when a site answers that it is not (or no longer) the primary; they are sent again, in arrival order,
        as soon as the witness names a primary that takes them. A broken connection to the primary is handled
        the same way. This is safe because every write carries its Idempotency-Key.
      - a write held longer than front.hold_max_s gets 503 front_held_too_long; one that finds
        front.hold_max_requests already held gets 503 front_hold_full; both carry Retry-After.
      - reads (GET) are never held: forwarded to the primary, or 503 no_primary with Retry-After.

    \b
    The front keeps no state beyond caches: run several behind an ordinary load balancer.
      standbyctl front                      listen on front.host:front.port from the settings
      standbyctl front --port 9400          another port (a second front on the same machine)
    """
    settings = cli.settings
    host, port = host or settings.front.host, port or settings.front.port
    witness = open_settings_witness(settings, create=False)
    if witness is None:
        fail(f"there is no witness at {witness_url(settings)} yet; the first `standbyctl db upgrade --site ID --role "
             "primary` creates it (or correct witness_url in the settings)")
    from cutover.front.app import build_front
    from cutover.witness import WitnessError
    from standby.site_process import run_forever

    try:
        state = witness.state()
    except WitnessError as exc:
        witness.close()
        fail(f"the witness at {_safe(settings.witness_url)} did not answer: {exc}")
    sites = ", ".join(f"{site_id} http://{s.http.host}:{s.http.port}" for site_id, s in sorted(settings.sites.items()))
    named = f"site {state.primary_site} at epoch {state.epoch}" if state.primary_site else \
        "no site yet (writes are held, reads refused, until one is named)"
    click.echo(f"front: the witness names {named}; sites: {sites}")
    click.echo(f"front: holding writes up to {settings.front.hold_max_s:g} s and {settings.front.hold_max_requests} "
               f"requests; asking the witness every {settings.front.witness_poll_ms:g} ms")
    click.echo(f"serving http://{host}:{port}  (readiness /readyz, metrics /metrics)")
    try:
        run_forever(build_front(settings, witness.state), host, port)
    finally:
        witness.close()


def _safe(url: str) -> str:
    """The URL without a password, for messages (a PostgreSQL witness URL may carry one)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url.split("@")[-1]
