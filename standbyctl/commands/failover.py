"""standbyctl failover: what a failover run lost, by declaration number.

`standbyctl failover report RUN_ID [--json] [--recompute]` prints the run's RPO report (cutover.rpo). When the run's
own `report` step journaled an exact one, that is it (the failback may since have moved the old primary's tail
aside and freed its change log, so a recomputation would no longer see it; `--recompute` forces one). Otherwise it
is recomputed from the old primary's database and the divergence point the run journaled (step stop_stream): exact
once that database can be read again, else the estimate and why. Each recomputation is audited in the witness.

Exit codes: 0 the exact list was printed; 1 the old primary's database still cannot be read (the estimate was
printed) or the witness cannot be reached; 2 an operator mistake: an unknown run, a run that is not a failover,
or one that has not recorded its divergence point yet. Messages are one line; never a traceback.
"""
from __future__ import annotations

import getpass
import json
import time
from datetime import datetime, timezone

import click
from rich.console import Console
from rich.table import Table

from cutover.actions.failover_journal import NoDivergence, divergence_of, step_result
from cutover.rpo import compute_report, describe
from cutover.witness.contract import AuditRecord, WitnessError
from standby.store.engine import make_engine
from standbyctl.context import CliContext, fail, pass_cli


@click.group()
def failover() -> None:
    """After a failover: the declarations the old primary acknowledged that the new primary never got.

    \b
    standbyctl runbook run failover --param from=A --param to=B --operator alice
    standbyctl failover report RUN_ID            the lost declarations, by number (exact once A is readable)
    standbyctl failover report RUN_ID --json
    """


@failover.command("report")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="print the report as one JSON object")
@click.option("--recompute", is_flag=True, help="recompute even when the run journaled an exact report")
@pass_cli
def report(cli: CliContext, run_id: str, as_json: bool, recompute: bool) -> None:
    """Print RUN_ID's RPO report (exit 0 exact, 1 not yet): the one the run journaled when it was exact, else
    recomputed from the old primary's database now."""
    from cutover.witness import open_witness

    settings = cli.settings
    try:
        witness = open_witness(settings.witness_url, root=settings.root)
    except (WitnessError, ValueError) as exc:
        fail(f"cannot open the witness ({settings.witness_url}): {exc}")
    try:
        try:
            divergence = divergence_of(witness, run_id)
        except NoDivergence as exc:
            fail(str(exc), 2)
        for site in (divergence.old_primary, divergence.new_primary):
            cli.check_site(site)
        entries = witness.entries(run_id)
        result = step_result(entries, "report")
        if recompute or not (result and result["exact"]):
            new_engine = make_engine(settings.database_url(divergence.new_primary), writer=False)
            try:
                result = compute_report(settings.database_url(divergence.old_primary), new_engine, divergence,
                                        step_result(entries, "stop_stream") or {})
            finally:
                new_engine.dispose()
            witness.audit(AuditRecord(time.time(), getpass.getuser(), "failover.report", run_id, {},
                                      "exact" if result["exact"] else "estimate",
                                      detail={"lost_count": result["lost_count"], "reason": result.get("reason")}))
    except WitnessError as exc:
        fail(f"the witness failed: {exc}")
    finally:
        witness.close()
    if as_json:
        click.echo(json.dumps(result, sort_keys=True))
    else:
        _print(result)
    raise SystemExit(0 if result["exact"] else 1)


def _print(result: dict) -> None:
    console = Console(width=140)
    console.print(describe(result), markup=False, highlight=False)
    if not result["lost"]:
        return
    table = Table("number", "enterprise", "office", "kind", "state", "at (UTC)", "client told",
                  f"on {result['new_primary']}")
    for lost in result["lost"]:
        told = lost["told"] or {}
        at = datetime.fromtimestamp(lost["at"], timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if lost["at"] else ""
        table.add_row(lost["number"], lost["enterprise_tax_code"], lost["office_code"], lost["kind"], lost["state"],
                      at, str(told.get("status", "")) + (f" ({told['key']})" if told.get("key") else ""),
                      lost["new_primary_state"] or "missing")
    console.print(table)
