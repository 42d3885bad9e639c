"""standbyctl watch: one per site; watches the primary and, with --auto, runs the failover runbook.

Exit codes: 0 stopped (Ctrl-C, SIGTERM) or `--once` done; 1 a failover that `--once` started did not finish, or the
witness cannot be reached at start; 2 an operator mistake (unknown site, no failover runbook for --auto, a watch of
the site running already).
"""
from __future__ import annotations

import fcntl
import os
import signal
import threading
from datetime import datetime, timezone
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape

from cutover.runbook.plan import RunStatus
from cutover.watch.decide import Decision, Verdict
from cutover.watch.loop import FailoverResult, WatchLoop, WatchObserver
from cutover.watch.metrics import WatchMetrics
from standbyctl.context import CliContext, fail, open_site_database, pass_cli, site_option

FAILOVER_RUNBOOK = "failover"
COLOURS = {Decision.NOTHING: "green", Decision.WAIT: "yellow", Decision.OBSERVE_ONLY: "bold yellow",
           Decision.FAIL_OVER: "bold red", Decision.BLOCKED_BY_FLAP_GUARD: "bold magenta"}


@click.command()
@site_option
@click.option("--auto", is_flag=True, help="fail over by itself when the rules below say so (default: only observe "
                                           "and report what it would do)")
@click.option("--operator", default=None, metavar="NAME",
              help="identity in the audit and on the failover run  [default: watch@SITE]")
@click.option("--once", is_flag=True, help="one observation (up to failures_before_failover checks), act on it, exit")
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=None,
              help="where the failover runbook is (default: runbooks/ under the settings' root)")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="serve /metrics on 127.0.0.1 (watch_decision, watch_failovers_total, ...); 0 = off")
@pass_cli
def watch(cli: CliContext, site_id: str, auto: bool, operator: str | None, once: bool, directory: Path | None,
          metrics_port: int) -> None:
    """Watch the primary from site SITE; with --auto, fail over to SITE when the primary is gone.

    \b
    Every watch.interval_s (settings) it asks the witness which site is primary, under which epoch and until when
    its lease runs, and checks the primary's /readyz (failed: no answer within watch.health_timeout_s, or not
    ready for writes). Each change of decision is printed and audited in the witness with its reason
    (`standbyctl witness audit`); the same decision is not repeated every round.
    \b
    It fails over (decision FAIL_OVER) only when all of these hold:
      1. the primary failed watch.failures_before_failover checks in a row;
      2. its lease in the witness has expired, so it has fenced itself and takes no write (until then: WAIT);
      3. SITE is its standby: SITE's control row says so, and SITE is the primary's partner in sync.pairs or the
         only other site (else NOT_ELIGIBLE: another site's watch acts, or an operator);
      4. no runbook run is unfinished (BLOCKED_BY_RUN: resume or abort it first);
      5. the flap guard: no automatic failover in the last watch.flap_guard_s seconds, by any site's watch (read
         from the witness's audit, so it holds across restarts), or watch.refused_retry_s when that last attempt
         was refused by the runbook's preconditions and changed nothing (else BLOCKED_BY_FLAP_GUARD);
      6. --auto is given. Without it the decision is OBSERVE_ONLY: it says what automatic mode would do, and an
         operator runs `standbyctl runbook run failover --param from=OLD --param to=SITE`.
    \b
    The failover is runbooks/failover.yaml, run as `standbyctl runbook run failover ... --yes` would, under the
    operator watch@SITE. If it fails, the watch does not try again within the flap guard: read
    `standbyctl runbook status RUN_ID` and resume or abort it.
    \b
    Stop it with Ctrl-C or SIGTERM: it finishes the round it is in (a failover run in progress runs to its end;
    a second Ctrl-C interrupts that run, which `standbyctl runbook resume RUN_ID` continues).
    """
    settings = cli.settings
    cli.check_site(site_id)
    who = (operator or "").strip() or f"watch@{site_id}"
    lock = _one_watch_per_site(cli, site_id)
    engine = open_site_database(cli, site_id, writer=False)
    witness = _open_witness(cli)
    console = Console(highlight=False, soft_wrap=True)
    stop, printer = threading.Event(), ConsolePrinter(console, site_id)
    runner = _failover_runner(cli, witness, site_id, who, directory, printer) if auto else None
    metrics = WatchMetrics(site_id)
    server = _metrics_server(console, metrics, metrics_port)
    restore = _stop_on_signals(stop, printer)
    loop = _build_loop(cli, site_id, witness, engine, who, auto, runner, metrics, printer, stop)
    w = settings.watch
    console.print(f"watching the primary from site {site_id} as {who}: a check every {w.interval_s:g} s (timeout "
                  f"{w.health_timeout_s:g} s), failover after {w.failures_before_failover} failed checks with its "
                  f"lease expired, flap guard {w.flap_guard_s:g} s; automatic failover "
                  + ("[bold]ON[/]" if auto else "OFF (observe and report only; --auto to act)")
                  + ". Ctrl-C or SIGTERM stops it.")
    try:
        if once:
            loop.once()
        else:
            loop.run()
    except KeyboardInterrupt:
        console.print("interrupted" + (f"; failover run {printer.run_id} was interrupted: `standbyctl runbook "
                                       f"resume {printer.run_id} --yes` continues it" if printer.in_failover else ""))
    finally:
        restore()
        loop.close()
        witness.close()
        engine.dispose()
        if server is not None:
            server.shutdown()
        lock.close()
    console.print("watch stopped")
    if once and printer.result is not None and printer.result.status != RunStatus.DONE.value:
        raise SystemExit(1)


def _build_loop(cli, site_id, witness, engine, who, auto, runner, metrics, printer, stop) -> WatchLoop:
    from standby.site_process import site_urls
    from standby.store.site import read_control

    return WatchLoop(site_id, cli.settings, witness, site_urls=site_urls(cli.settings),
                     read_local=lambda: read_control(engine, site_id), operator=who, auto=auto, run_failover=runner,
                     metrics=metrics, observer=printer, sleep=stop.wait, should_stop=stop.is_set)


def _one_watch_per_site(cli: CliContext, site_id: str):
    """Hold data_dir/watch-SITE.lock for the life of the process: two watches of one site on this host would both
    decide to fail over before either's audit record could stop the other."""
    folder = cli.settings.path(cli.settings.data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    lock = open(folder / f"watch-{site_id}.lock", "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        fail(f"a watch of site {site_id} is running already (pid {holder}); one watch per site", 2)
    lock.truncate(0)
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


def _open_witness(cli: CliContext):
    from standbyctl.commands.witness import open_settings_witness

    witness = open_settings_witness(cli.settings, create=False)
    if witness is None:
        fail(f"no witness at {cli.settings.witness_url}: the watch reads the primary and its lease there", 1)
    return witness


def _failover_runner(cli: CliContext, witness, site_id: str, who: str, directory: Path | None,
                     printer: "ConsolePrinter"):
    """run(old, new) -> FailoverResult: the failover runbook through the runbook executor, as `standbyctl runbook
    run failover --param from=OLD --param to=NEW --yes` runs it. The runbook is loaded and its parameters checked
    now, so a watch that could not fail over refuses to start instead of failing when it matters."""
    from cutover.runbook.executor import Executor
    from cutover.runbook.loader import RunbookError, bind_params, find_runbook
    from standbyctl.commands.runbook import RichObserver, _load, _registry, _runbooks_dir

    path = find_runbook(FAILOVER_RUNBOOK, _runbooks_dir(cli, directory))
    if not path.exists():
        fail(f"--auto runs the failover runbook, and there is none at {path} (--dir names its folder)", 2)
    registry, services = _registry(cli, witness)
    services.close()
    loaded = _load(path, registry)
    other = next((s for s in sorted(cli.settings.sites) if s != site_id), site_id)
    try:
        bind_params(loaded, {"from": other, "to": site_id}, cli.settings.sites)
    except RunbookError as exc:
        fail(f"the failover runbook cannot be run with only from= and to=: {exc}", 2)

    class Observer(RichObserver):
        def run_started(self, run_id: str, runbook: str, resumed: bool) -> None:
            super().run_started(run_id, runbook, resumed)
            printer.run_id = run_id  # for the message if the run is interrupted

    def run(old: str, new: str) -> FailoverResult:
        bound = bind_params(loaded, {"from": old, "to": new}, cli.settings.sites)
        _, services = _registry(cli, witness)  # fresh engines and connections for each run
        observer = Observer(printer.console, len(loaded.runbook.steps))
        try:
            outcome = Executor(loaded, registry, witness, operator=who, services=services, assume_yes=True,
                               observer=observer).run(bound)
        except Exception as exc:  # noqa: BLE001 - the journal keeps the truth; the watch reports and goes on
            return FailoverResult(None if observer.run_id == "RUN_ID" else observer.run_id, "error",
                                  f"the engine stopped: {type(exc).__name__}: {exc}")
        finally:
            observer.close()
            services.close()
        return FailoverResult(outcome.run_id, outcome.status.value, outcome.reason)
    return run


def _metrics_server(console: Console, metrics: WatchMetrics, port: int):
    from standbyctl.commands.runbook import _serve_metrics

    return _serve_metrics(console, metrics, port)


def _stop_on_signals(stop: threading.Event, printer: "ConsolePrinter"):
    """First Ctrl-C or SIGTERM: stop after this round. A second one while a failover runs: interrupt it."""
    def handle(signum, _frame):
        if stop.is_set() and printer.in_failover:
            raise KeyboardInterrupt
        stop.set()
        printer.say("stopping" + (" after the failover run in progress (Ctrl-C again interrupts it)"
                                  if printer.in_failover else ""))
    previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    return lambda: [signal.signal(s, h) for s, h in previous.items()]


class ConsolePrinter(WatchObserver):
    """One line per change of decision, with the time, the decision and its reason; the failover run's steps."""

    def __init__(self, console: Console, site: str):
        self.console, self.site = console, site
        self.in_failover, self.run_id, self.result = False, "RUN_ID", None

    def decision(self, verdict: Verdict, at: float) -> None:
        colour = COLOURS.get(verdict.decision, "bold")
        self.console.print(f"{_when(at)} [{colour}]{verdict.decision.value.upper()}[/] {escape(verdict.reason)}")

    def failover_started(self, old_primary: str, new_primary: str) -> None:
        self.in_failover = True
        self.say(f"running the failover runbook: from={old_primary} to={new_primary}")

    def failover_finished(self, result: FailoverResult) -> None:
        self.in_failover, self.result, self.run_id = False, result, result.run_id or self.run_id
        done = result.status == RunStatus.DONE.value
        run = result.run_id or "(none)"
        then = {RunStatus.DONE.value: "",
                RunStatus.REFUSED.value: "; nothing was changed: fix the cause, then run the failover by hand"}.get(
            result.status, f"; `standbyctl runbook status {run}` shows where it stopped: resume or abort it")
        guard = ("" if done else "; no automatic failover again within watch.refused_retry_s"
                 if result.status == RunStatus.REFUSED.value else "; no automatic failover again within the flap guard")
        self.say(f"failover run {run}: [{'green' if done else 'red'}]{result.status}[/]"
                 + (f" ({escape(result.reason)})" if result.reason else "") + then + guard)

    def warning(self, message: str) -> None:
        self.console.print(f"[yellow]warning[/]: {escape(message)}")

    def say(self, message: str) -> None:
        self.console.print(f"{_when(None)} {message}")


def _when(at: float | None) -> str:
    moment = datetime.now(timezone.utc) if at is None else datetime.fromtimestamp(at, tz=timezone.utc)
    return moment.strftime("%H:%M:%S.%f")[:-3]
