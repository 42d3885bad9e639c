"""standbyctl status: every site's role, epoch, intake, schema and counts, from its database and its API, beside
what the witness says (its epoch and primary), with a warning wherever a site's control row disagrees with it."""
from __future__ import annotations

import json
import time

import click
import httpx
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from cutover.witness import WitnessError, WitnessState, open_witness
from cutover.witness.roles import disagreement
from standbyctl.commands.witness import describe_lease, witness_url
from standbyctl.context import CliContext, pass_cli
from standby.domain.states import SiteRole
from standby.store.engine import make_engine
from standby.store.migrate import current_revision
from standby.store.orgmap import active_map
from standby.store.schema import declarations, enterprises, replication_state
from standby.settings import sqlite_file
from standby.store.site import read_control


@click.command()
@click.option("--site", "site_ids", multiple=True, metavar="ID", help="only these sites (default: all)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@pass_cli
def status(cli: CliContext, site_ids: tuple[str, ...], as_json: bool) -> None:
    """Show each site's role, epoch, intake state, schema revision, row counts and whether its API answers."""
    settings = cli.settings
    for site_id in site_ids:
        cli.check_site(site_id)
    state, witness_problem = _witness_state(settings)
    rows = [_with_witness(_site_status(settings, s), state, witness_problem) for s in (site_ids or settings.sites)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if state is not None:
        click.echo(f"witness: epoch {state.epoch}, primary {state.primary_site or 'none'}; "
                   f"lease: {describe_lease(state, time.time())}")
    else:
        click.secho(f"witness: {witness_problem}", fg="yellow")
    for r in rows:
        if r.get("error"):
            click.echo(f"site {r['site']}: {r['error']}")
            continue
        states = ", ".join(f"{k} {v:,}" for k, v in sorted(r["declarations_by_state"].items())) or "none"
        beside = f" (witness: primary {r['witness_primary'] or 'none'} at epoch {r['witness_epoch']})" \
            if state is not None else ""
        click.echo(f"site {r['site']}: {r['role']}, epoch {r['epoch']}{beside}, intake {r['intake_state']}, "
                   f"schema {r['schema']}; API {r['api']}")
        if r["witness_warning"]:
            click.secho(f"  WARNING: {r['witness_warning']}", fg="red")
        click.echo(f"  enterprises {r['enterprises']:,}; declarations: {states}")
        org_map = r["org_map"]
        click.echo(f"  org map in force: {org_map['active_version']}"
                   + (f" (change set {org_map['changeset']})" if org_map["changeset"] else " (as created)"))
        for st in r["replication"]:
            lag = f"{st['heartbeat_lag_s']:.1f} s behind the primary's last heartbeat" \
                if st["heartbeat_lag_s"] is not None else "no heartbeat applied yet"
            click.echo(f"  replicating {st['stream']}: position {st['position']:,}, {st['changes']:,} changes "
                       f"applied, {lag}, last apply {st['applied_ago_s']:.1f} s ago")
    primaries = [r["site"] for r in rows if r.get("role") == "primary"]
    if len(primaries) > 1:
        click.secho(f"WARNING: more than one site claims primary: {', '.join(primaries)}", fg="red")


def _witness_state(settings) -> tuple[WitnessState | None, str | None]:
    """The witness's state, or why there is none; status reports a missing witness, it never fails on it."""
    url = witness_url(settings)
    if (path := sqlite_file(url)) is not None and not path.exists():
        return None, f"none yet at {url} (`standbyctl db upgrade --site ID --role primary` creates it)"
    try:
        witness = open_witness(url, root=settings.root, retry_budget_s=2.0)
    except (WitnessError, ValueError) as exc:
        return None, f"unavailable: {exc}"
    try:
        return witness.state(), None
    except WitnessError as exc:
        return None, f"unavailable: {exc}"
    finally:
        witness.close()


def _with_witness(row: dict, state: WitnessState | None, problem: str | None) -> dict:
    """The site's row with the witness's epoch and primary beside it, and a warning when they disagree."""
    row = {**row, "witness_epoch": state.epoch if state else None,
           "witness_primary": state.primary_site if state else None, "witness_warning": None}
    if state is not None and not row.get("error"):
        row["witness_warning"] = disagreement(row["site"], SiteRole(row["role"]), row["epoch"], state)
        if state.primary_site is None and row["role"] == SiteRole.PRIMARY.value:
            row["witness_warning"] = (f"site {row['site']} says primary but the witness names no primary; record it "
                                      f"with `standbyctl db upgrade --site {row['site']} --role primary`")
    return row


def _streams(conn) -> list[dict]:
    """The streams this site applies (as a standby), from the positions stored with the rows."""
    now = time.time()
    rows = conn.execute(select(replication_state.c.stream, func.min(replication_state.c.position),
                               func.sum(replication_state.c.changes), func.max(replication_state.c.heartbeat_at),
                               func.max(replication_state.c.applied_at))
                        .group_by(replication_state.c.stream)).all()
    return [{"stream": s, "position": p, "changes": int(c or 0),
             "heartbeat_lag_s": (now - hb) if hb else None, "applied_ago_s": now - at} for s, p, c, hb, at in rows]


def _site_status(settings, site_id: str) -> dict:
    engine = make_engine(settings.database_url(site_id), writer=False)
    try:
        if current_revision(engine) is None:
            return {"site": site_id, "error": "no schema yet (run standbyctl db upgrade)"}
        control = read_control(engine, site_id)
        if control is None:
            return {"site": site_id, "error": "no schema or control row (run standbyctl db upgrade)"}
        with engine.connect() as conn:
            by_state = dict(conn.execute(select(declarations.c.state, func.count()).group_by(declarations.c.state)).all())
            n_ent = conn.execute(select(func.count()).select_from(enterprises)).scalar()
            streams = _streams(conn)
            org_map = active_map(conn)
        schema = current_revision(engine)
    except OperationalError as exc:
        return {"site": site_id, "error": f"database unreachable: {exc.orig}"}
    finally:
        engine.dispose()
    http = settings.site(site_id).http
    try:
        ready = httpx.get(f"http://{http.host}:{http.port}/readyz", timeout=1.0)
        api = f"up at http://{http.host}:{http.port} ({'ready' if ready.status_code == 200 else 'not ready'})"
    except httpx.HTTPError:
        api = "not running"
    return {"site": site_id, "role": control.role.value, "epoch": control.epoch,
            "intake_state": control.intake_state.value, "primary_site": control.primary_site, "schema": schema,
            "enterprises": n_ent, "declarations_by_state": by_state, "api": api, "replication": streams,
            "org_map": {"active_version": org_map.active_version.isoformat(), "changeset": org_map.changeset_id}}
