"""standbyctl drill: the disaster-recovery drill, one command (standbyctl/drill/)."""
from __future__ import annotations

import getpass
import json
import shlex
import sys
from pathlib import Path

import click

from standbyctl.context import CliContext, fail, pass_cli
from standby.settings import sqlite_file


def _fmt(value, unit: str = " s") -> str:
    return "—" if value is None else f"{value:.2f}{unit}"


def step_table(records: list[dict]) -> str:
    """The per-step table for the terminal (Markdown, so it pastes into BENCHMARKS.md as it is)."""
    lines = ["| # | step | status | took s | freeze | RTO | RPO lost → after reconcile | held front/site | "
             "client errors (503 retried) | verify | ledger |", "|" + "---|" * 11]
    for r in records:
        took = (r["ended_at"] - r["started_at"]) if r.get("ended_at") and r.get("started_at") else None
        rpo = "—" if r.get("rpo_lost") is None and r.get("rpo_lost_after_reconcile") is None else \
            f"{'—' if r.get('rpo_lost') is None else r['rpo_lost']} → " \
            f"{'—' if r.get('rpo_lost_after_reconcile') is None else r['rpo_lost_after_reconcile']}"
        lines.append(f"| {r['n']} | {r['title']} | {r['status']} | {_fmt(took, '')} | {_fmt(r.get('freeze_s'))} | "
                     f"{_fmt(r.get('rto_s'))} | {rpo} | {r['held_front']}/{r['held_site']} | "
                     f"{r['client_errors']} ({r['retried']}) | {r['verify']} | {r['ledger']} |")
    return "\n".join(lines)


def slo_table(slos: list[dict]) -> str:
    lines = ["| SLO | target | measured | verdict |", "|---|---|---|---|"]
    for s in slos:
        mark = {True: "met", False: "MISSED", None: "not judged"}[s["passed"]]
        lines.append(f"| {s['name']} | {s['target']} | {s['measured']} | {mark} |")
    return "\n".join(lines)


@click.command("drill")
@click.option("--quick/--full", default=False,
              help="--quick: a small population (2,000 enterprises) and short load phases, the same five steps in "
                   "about two minutes (the tests and `./run drill` use it); --full (the default): the design "
                   "population (106,000 enterprises, 250,000 declarations) and longer load phases")
@click.option("--backend", type=click.Choice(["sqlite", "postgresql"]), default="sqlite", show_default=True,
              help="sqlite: the embedded default, files in the work folder; postgresql: the drill starts throwaway "
                   "clusters (initdb + pg_ctl) for A, B and the witness, and removes them at the end")
@click.option("--multiplier", type=click.FloatRange(0.1, 100), default=3, show_default=True,
              help="Locust load through the front as a multiple of the design peak (config/capacity.yaml)")
@click.option("--enterprises", "enterprises_count", type=click.IntRange(100, 10_000_000), default=None,
              help="enterprises seeded on A  [quick: 2,000; full: 106,000]")
@click.option("--declarations", type=click.IntRange(0, 100_000_000), default=None,
              help="historical declarations seeded on A before B is snapshotted  [quick: 0; full: 250,000]")
@click.option("--warmup-s", type=click.FloatRange(0, 3600), default=None,
              help="seconds of load before the first step (the users start over 20 s in a quick drill, 30 s in a full "
                   "one)  [quick: 12; full: 40]")
@click.option("--gap-s", type=click.FloatRange(0, 3600), default=None,
              help="seconds of load between two steps and after the last one: the steady seconds the decision "
                   "and lag SLOs are judged on  [quick: 6; full: 20]")
@click.option("--workdir", type=click.Path(path_type=Path), default=None,
              help="the run folder: logs, databases, ledger, drill.json and the report (emptied first)  "
                   "[default: var/drill]")
@click.option("--operator", default=None, help="who runs the drill: every runbook run is recorded under this name "
                                               "in the witness  [default: your login name]")
@click.option("--failover-by", type=click.Choice(["watch", "operator"]), default="watch", show_default=True,
              help="who fails over after the kill: watch = the standby's `standbyctl watch --auto`, detection "
                   "included, as DESIGN §4's RTO is meant (the drill runs both sites' watches for that step; with "
                   "--existing, the sites' own watches must be running); operator = the failover runbook started "
                   "once the witness's lease expired, as a person would (`bench failover --trigger runbook`): "
                   "about a second slower, the new process's start")
@click.option("--existing", is_flag=True,
              help="drill the running sites, witness and front the settings file (--config) names instead of "
                   "starting its own: it starts only Locust, never seeds, and kills only with --kill-primary; "
                   "--backend, --enterprises and --declarations do not apply")
@click.option("--kill-primary", "kill_command", metavar="COMMAND", default=None,
              help="with --existing: the shell command that kills the primary for the failover step, {site} "
                   "replaced by its id (e.g. \"ssh {site}-host 'pkill -9 -f standbyctl'\"); without it the "
                   "failover and failback steps are skipped")
@click.option("--restart-site", "restart_command", metavar="COMMAND", default=None,
              help="with --existing: the shell command that starts the killed site again for the failback ({site} "
                   "replaced); without it the drill waits up to 5 minutes for the site's supervisor to restart it")
@click.option("--report-from", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="draw the report again from a drill's run folder and exit (no drill is run)")
@click.option("--json", "as_json", is_flag=True, help="print drill.json at the end")
@pass_cli
def drill(cli: CliContext, quick: bool, backend: str, multiplier: float, enterprises_count: int | None,
          declarations: int | None, warmup_s: float | None, gap_s: float | None, workdir: Path | None,
          operator: str | None, failover_by: str, existing: bool, kill_command: str | None, restart_command: str | None,
          report_from: Path | None, as_json: bool) -> None:
    """The disaster-recovery drill: would the standby save us tonight? One command, with evidence.

    \b
    1. Starts site A (primary), site B (standby), the witness and the front, each its own process (SQLite files
       and a local Ray by default; --backend postgresql starts PostgreSQL clusters), seeds the reference data and
       the population, starts replication A → B and waits until B has caught up.
    2. Starts Locust at MULTIPLIER x design against the front, with a client-side ledger of every declaration
       number acknowledged to a client.
    3. Under that load, in order:
         1 a planned switchover A → B                       (target: freeze ≤ 1 s, 0 client errors)
         2 the 2025 org restructure through a switchover B → A   (target: freeze ≤ 2 s)
         3 an unplanned failover: kill -9 of every process of A, B takes over   (target: RTO ≤ 5 s)
         4 failback: A rebuilt as B's standby, its lost tail reconciled   (target: 0 lost after reconcile)
         5 a planned switchover back B → A
    4. After each step: verify between the sites and the ledger check (every acknowledged number exactly once on
       the primary, with the contents the client was told).
    5. Writes WORKDIR/report.html (timeline, a row per step, the SLO verdicts, the parameters) and drill.json.

    \b
    Exit status: 0 pass; 1 something lost, doubled, a verify difference or a step failed; 3 correct but an SLO
    missed; 130 stopped by Ctrl-C/SIGTERM (the step in hand finishes, the report so far is written; press again to
    stop at once). The last line says which.
    """
    settings = cli.settings
    root = (workdir or settings.path(settings.data_dir) / "drill").resolve()  # its processes run inside it
    if report_from is not None:
        sys.exit(_report_only(report_from))
    from standbyctl.drill.run import FULL, QUICK, DrillOptions, main_run

    preset = QUICK if quick else FULL
    options = DrillOptions(
        quick=quick, backend=backend, multiplier=multiplier,
        enterprises=enterprises_count if enterprises_count is not None else preset["enterprises"],
        declarations=declarations if declarations is not None else preset["declarations"],
        warmup_s=warmup_s if warmup_s is not None else preset["warmup_s"],
        gap_s=gap_s if gap_s is not None else preset["gap_s"], ramp_s=preset["ramp_s"], workdir=root,
        command=" ".join(["standbyctl", *map(shlex.quote, sys.argv[1:])]), operator=operator or _login(),
        failover_by=failover_by, existing=cli.config_path.resolve() if existing else None, kill_command=kill_command,
        restart_command=restart_command)
    _check_workdir(settings, root)
    if existing:
        click.echo(f"drill ({'quick' if quick else 'full'}) of the running sites of {cli.config_path} at "
                   f"{multiplier:g}x design; run folder {root}")
    else:
        if kill_command or restart_command:
            fail("--kill-primary and --restart-site are for --existing: a drill's own sites are killed and "
                 "restarted by the drill", 2)
        _check_backend(backend)
        click.echo(f"drill ({'quick' if quick else 'full'}) on {backend} at {multiplier:g}x design: "
                   f"{options.enterprises:,} enterprises, {options.declarations:,} historical declarations; "
                   f"run folder {root}")
    document = main_run(settings, options, click.echo)
    _print_outcome(document, root, as_json)


def _report_only(folder: Path) -> int:
    from standbyctl.drill.report import write_report

    try:
        path = write_report(folder)
    except (FileNotFoundError, ValueError) as exc:
        fail(f"cannot draw the report from {folder}: {exc}", 2)
    document = json.loads((folder / "drill.json").read_text())
    click.echo(f"report: {path}")
    click.echo(document.get("verdict", {}).get("line", "no verdict in drill.json: the drill did not finish"))
    return int(document.get("verdict", {}).get("exit_code", 1))


def _print_outcome(document: dict, root: Path, as_json: bool) -> None:
    click.echo("")
    click.echo(step_table(document["steps"]))
    click.echo("")
    click.echo(slo_table(document["slos"]))
    if document.get("error"):
        click.secho(f"the drill broke off: {document['error']}", fg="red")
    if document.get("final_ledger"):
        click.echo(f"final ledger on {document.get('final_primary')}: {document['final_ledger']['describe']}; "
                   f"final verify {document.get('final_verify')}")
    try:
        from standbyctl.drill.report import write_report

        click.echo(f"report: {write_report(root)}  (logs of every process: {root}/*.log)")
    except (OSError, ValueError) as exc:
        click.secho(f"the report could not be written: {exc}", fg="red")
    if as_json:
        click.echo(json.dumps(document, indent=2, default=str))
    v = document["verdict"]
    click.secho(v["line"], fg="green" if v["passed"] else "red", bold=True)
    sys.exit(v["exit_code"])


def _check_workdir(settings, root: Path) -> None:
    """The run folder is emptied first: refuse one that holds the settings' own data (databases, tokens)."""
    kept = [settings.path(settings.auth.tokens_file), settings.path(settings.data_dir)]
    urls = [settings.database_url(s) for s in settings.sites] + [settings.witness_url]
    kept += [path for path in map(sqlite_file, urls) if path is not None]
    for path in kept:
        if path.resolve() == root or root in path.resolve().parents:
            fail(f"--workdir {root} would be emptied, and it holds {path}: choose a folder of the drill's own", 2)


def _check_backend(backend: str) -> None:
    if backend != "postgresql":
        return
    from standby.store.pg_cluster import find_pg_bin

    if find_pg_bin() is None:
        fail("--backend postgresql needs PostgreSQL's server binaries (initdb, pg_ctl) and the wal2json plugin: "
             "on Debian `apt-get install postgresql postgresql-<major>-wal2json`", 2)


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "drill"
