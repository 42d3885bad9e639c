"""standbyctl witness status | audit, and how every command opens the witness named in the settings."""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from datetime import datetime, timezone

import click

from cutover.witness import Witness, WitnessError, WitnessState, WitnessUnavailable, open_witness
from standbyctl.context import CliContext, fail, pass_cli
from standby.settings import Settings, resolve_sqlite_url, sqlite_file


def witness_url(settings: Settings) -> str:
    """The settings' witness URL, a relative SQLite path made absolute against the settings' root."""
    return resolve_sqlite_url(settings.witness_url, settings.root)


def open_settings_witness(settings: Settings, *, create: bool) -> Witness | None:
    """The witness of these settings, its schema migrated, or a one-line failure (never a traceback).

    create=False is for readers: a SQLite witness file that does not exist yet gives None instead of creating it.
    An unreachable store exits 1; a URL no backend serves exits 2 (a settings mistake)."""
    url = witness_url(settings)
    if not create and (path := sqlite_file(url)) is not None and not path.exists():
        return None
    try:
        return open_witness(url, root=settings.root)
    except WitnessUnavailable as exc:
        fail(str(exc), 1)
    except (ValueError, WitnessError) as exc:
        fail(f"witness_url in the settings: {exc}", 2)
    return None  # not reached: fail exits


def describe_lease(state: WitnessState, now: float) -> str:
    if state.lease_holder is None or state.lease_expires_at is None:
        return "no lease held"
    left = state.lease_expires_at - now
    if left >= 0:
        return f"held by {state.lease_holder}, expires in {left:.1f} s"
    return f"expired {-left:.1f} s ago (last held by {state.lease_holder})"


def _when(at: float | None) -> str:
    if at is None:
        return "-"
    return datetime.fromtimestamp(at, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


@click.group()
def witness() -> None:
    """The witness: which site is primary, under which epoch, its lease, runbook runs and the operators' audit."""


@witness.command("status")
@click.option("--runs", "run_count", type=click.IntRange(0, 1000), default=5, show_default=True,
              help="how many of the latest runbook runs to show")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@pass_cli
def witness_status(cli: CliContext, run_count: int, as_json: bool) -> None:
    """Show the epoch, the primary, its lease and the latest runbook runs."""
    w = open_settings_witness(cli.settings, create=False)
    if w is None:
        fail(f"no witness at {witness_url(cli.settings)} yet; `standbyctl db upgrade --site ID --role primary` "
             f"creates it with the first site", 1)
    try:
        state, runs = w.state(), w.runs(run_count) if run_count else []
    except WitnessUnavailable as exc:
        fail(str(exc), 1)
    finally:
        w.close()
    if as_json:
        click.echo(json.dumps({"witness": w.where, "state": asdict(state), "runs": [asdict(r) for r in runs]},
                              indent=2))
        return
    click.echo(f"witness {w.where}")
    primary = state.primary_site or "none (empty witness)"
    click.echo(f"epoch {state.epoch}, primary {primary}; lease: {describe_lease(state, time.time())}; "
               f"last change {_when(state.updated_at)}")
    if not runs:
        click.echo("no runbook runs" if run_count else "")
        return
    click.echo("latest runbook runs:")
    for r in runs:
        click.echo(f"  {r.run_id}  {r.runbook}  {r.status}  by {r.operator}  started {_when(r.started_at)}, "
                   f"updated {_when(r.updated_at)}")


@witness.command("audit")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True, help="newest records shown")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@pass_cli
def witness_audit(cli: CliContext, limit: int, as_json: bool) -> None:
    """Show the newest operator actions recorded in the witness (who, when, what, on what, outcome)."""
    w = open_settings_witness(cli.settings, create=False)
    if w is None:
        fail(f"no witness at {witness_url(cli.settings)} yet: nothing audited", 1)
    try:
        records = w.audit_records(limit)
    except WitnessUnavailable as exc:
        fail(str(exc), 1)
    finally:
        w.close()
    if as_json:
        click.echo(json.dumps([asdict(r) for r in records], indent=2))
        return
    if not records:
        click.echo("no audit records")
    for r in records:
        took = f" in {r.duration_s:.2f} s" if r.duration_s is not None else ""
        args = " ".join(f"{k}={v}" for k, v in r.args.items() if v is not None)
        detail = "; ".join(f"{k}: {v}" for k, v in r.detail.items())
        click.echo(f"{_when(r.at)}  {r.operator}  {r.action} {r.target}  {r.outcome}{took}"
                   f"{'  [' + args + ']' if args else ''}{'  ' + detail if detail else ''}")
