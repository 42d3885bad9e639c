"""standbyctl runbook: list, plan (dry run), run, resume, status and abort runbooks.

Exit codes: 0 the run is done; 1 it failed, was refused by its preconditions, rolled back or aborted (or the witness
could not be reached); 2 an operator mistake (a bad runbook, an unknown or missing parameter, no operator identity).
Messages are one line; never a traceback.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from cutover.runbook.actions import ActionRegistry
from cutover.runbook.dryrun import dry_run
from cutover.runbook.executor import (Executor, RunObserver, RunOutcome, owner_alive, request_abort, run_origin)
from cutover.runbook.loader import LoadedRunbook, RunbookError, bind_params, find_runbook, load_runbook
from cutover.runbook.metrics import RunbookMetrics
from cutover.runbook.plan import IllegalTransition, RunStatus
from cutover.witness.contract import WitnessError
from standbyctl.context import CliContext, fail, pass_cli

DEFAULT_METRICS_PORT = 9465


@click.group()
def runbook() -> None:
    """Run operator runbooks (runbooks/NAME.yaml): dry-run, run with live progress, resume after a crash, abort.

    \b
    standbyctl runbook list
    standbyctl runbook plan switchover --param target=B --operator alice
    standbyctl runbook run switchover --param target=B --operator alice
    standbyctl runbook resume RUN_ID --operator alice
    """


def _dir_option(f):
    return click.option("--dir", "directory", type=click.Path(path_type=Path), default=None,
                        help="where runbooks are (default: runbooks/ under the settings' root)")(f)


def _identity_options(f):
    f = click.option("--token", default=None, help="an operator token (its subject is the operator's name)")(f)
    return click.option("--operator", default=None, metavar="NAME", help="the operator's name, for the audit")(f)


def _param_option(f):
    return click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
                        help="a runbook parameter (repeatable)")(f)


def _run_options(f):
    f = click.option("--yes", "assume_yes", is_flag=True, help="do not ask for confirmations (automation)")(f)
    return click.option("--metrics-port", type=click.IntRange(0, 65535), default=DEFAULT_METRICS_PORT,
                        show_default=True, help="serve /metrics on 127.0.0.1 while the run is in progress; 0 = off")(f)


def _operator(cli: CliContext, operator: str | None, token: str | None) -> str:
    """The operator's identity, from --operator or an operator token; refused without one."""
    from standby.api.auth import TokenRegistry
    from standby.clearance.commands import Role

    if operator and token:
        fail("give --operator or --token, not both", 2)
    if token:
        try:
            principal = TokenRegistry.load(cli.settings.path(cli.settings.auth.tokens_file)).principal(token)
        except ValueError as exc:
            fail(str(exc), 2)
        if principal is None:
            fail("that token is not known (standbyctl tokens list shows who holds tokens)", 2)
        if principal.role is not Role.OPERATOR:
            fail(f"that token is a {principal.role.value}'s; runbooks need an operator token", 2)
        return principal.subject
    if operator and operator.strip():
        return operator.strip()
    fail("who is running this? Pass --operator NAME or --token TOKEN (every run is audited with its operator)", 2)


def _parse_params(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            fail(f"--param takes NAME=VALUE, not {pair!r}", 2)
        out[name.strip()] = value
    return out


@contextmanager
def _witness(cli: CliContext):
    from cutover.witness import open_witness

    try:
        witness = open_witness(cli.settings.witness_url, root=cli.settings.root)
    except (WitnessError, ValueError) as exc:
        fail(f"cannot open the witness ({cli.settings.witness_url}): {exc}", 1)
    try:
        yield witness
    except WitnessError as exc:
        fail(f"the witness failed: {exc}; the run can be resumed with `standbyctl runbook resume`", 1)
    finally:
        witness.close()


def _registry(cli: CliContext, witness) -> tuple[ActionRegistry, object]:
    from standbyctl.runbook_registry import build_registry, build_services

    return build_registry(cli.settings, witness), build_services(cli.settings, witness, cli.config_path.resolve())


def _load(path: Path, registry: ActionRegistry) -> LoadedRunbook:
    try:
        return load_runbook(path, registry)
    except RunbookError as exc:
        fail(f"runbook refused: {exc}", 2)


def _runbooks_dir(cli: CliContext, directory: Path | None) -> Path:
    return directory if directory is not None else cli.settings.root / "runbooks"


def _bind(cli: CliContext, loaded: LoadedRunbook, params: tuple[str, ...]) -> dict:
    try:
        return bind_params(loaded, _parse_params(params), cli.settings.sites)
    except RunbookError as exc:
        fail(f"runbook refused: {exc}", 2)


@runbook.command("list")
@_dir_option
@pass_cli
def list_runbooks(cli: CliContext, directory: Path | None) -> None:
    """List the runbooks with their descriptions, and the recent runs."""
    console = Console(highlight=False, soft_wrap=True)
    folder = _runbooks_dir(cli, directory)
    with _witness(cli) as witness:
        registry, _ = _registry(cli, witness)
        for path in sorted(folder.glob("*.yaml")):
            try:
                rb = load_runbook(path, registry).runbook
                console.print(f"[bold]{rb.name}[/]  {escape(rb.description)}  ({len(rb.steps)} steps)")
            except RunbookError as exc:
                console.print(f"[red]{path.stem}[/]  refused: {escape(str(exc))}")
        runs = witness.runs(10)
    if not runs:
        console.print("no runs yet")
        return
    console.print("recent runs (newest first):")
    for r in runs:  # plain lines: an operator copies the run id into resume / status / abort
        console.print(f"  {r.run_id}  {r.status:<12} by {r.operator}, started {_when(r.started_at)} UTC")


@runbook.command("plan")
@click.argument("name")
@_dir_option
@_param_option
@_identity_options
@pass_cli
def plan(cli: CliContext, name: str, directory: Path | None, params: tuple[str, ...], operator: str | None,
         token: str | None) -> None:
    """Dry run: resolve every argument, run the read-only preconditions for real, print the plan. Changes nothing.
    Exits 1 when a precondition fails or an argument cannot work."""
    who = _operator(cli, operator, token)
    console = Console(highlight=False, soft_wrap=True)
    with _witness(cli) as witness:
        registry, services = _registry(cli, witness)
        loaded = _load(find_runbook(name, _runbooks_dir(cli, directory)), registry)
        bound = _bind(cli, loaded, params)
        result = dry_run(loaded, registry, bound, operator=who, services=services)
    console.print(f"[bold]{loaded.runbook.name}[/]: {escape(loaded.runbook.description)}")
    console.print("parameters: " + (", ".join(f"{k}={v!r}" for k, v in bound.items()) or "none"))
    for (action, failure), findings in zip(result.preconditions, result.findings):
        mark = "[green]ok[/]" if failure is None else f"[red]FAILS[/]: {escape(failure)}"
        console.print(f"  precondition {action}: {mark}")
        for finding in findings:
            console.print(f"      {escape(finding)}")
    for s in result.steps:
        flags = [f for f, on in (("confirm", s.confirm), ("POINT OF NO RETURN", s.point_of_no_return)) if on]
        console.print(f"{s.index + 1:>3}. [bold]{s.id}[/]" + (f" [yellow]({', '.join(flags)})[/]" if flags else "")
                      + (f" — {escape(s.description)}" if s.description else ""))
        console.print(f"       does: {escape(s.does)}  (timeout {s.timeout_s:g} s x {s.attempts})")
        if s.verify:
            console.print(f"     verify: {escape(s.verify)}")
        if s.rollback:
            console.print(f"   rollback: {escape(s.rollback)}")
    for problem in result.problems:
        console.print(f"[red]problem[/]: {escape(problem)}")
    console.print("plan: [green]ready to run[/]" if result.ok else "plan: [red]would be refused[/]")
    if not result.ok:
        raise SystemExit(1)


@runbook.command("run")
@click.argument("name")
@_dir_option
@_param_option
@_identity_options
@_run_options
@pass_cli
def run(cli: CliContext, name: str, directory: Path | None, params: tuple[str, ...], operator: str | None,
        token: str | None, metrics_port: int, assume_yes: bool) -> None:
    """Run a runbook (NAME under --dir, or a path to its YAML), showing each step live with its duration."""
    who = _operator(cli, operator, token)
    with _witness(cli) as witness:
        registry, services = _registry(cli, witness)
        loaded = _load(find_runbook(name, _runbooks_dir(cli, directory)), registry)
        bound = _bind(cli, loaded, params)
        outcome = _drive(loaded, registry, witness, services, who, assume_yes, metrics_port,
                         lambda ex: ex.run(bound))
    _exit(outcome)


@runbook.command("resume")
@click.argument("run_id")
@_identity_options
@_run_options
@pass_cli
def resume(cli: CliContext, run_id: str, operator: str | None, token: str | None, metrics_port: int,
           assume_yes: bool) -> None:
    """Continue a run from its journal after its process died: a step whose outcome is not journaled runs again
    (actions are idempotent) and its verify decides. A finished run just prints its end state."""
    who = _operator(cli, operator, token)
    with _witness(cli) as witness:
        registry, services = _registry(cli, witness)
        loaded = _run_runbook(witness, run_id, registry)
        outcome = _drive(loaded, registry, witness, services, who, assume_yes, metrics_port,
                         lambda ex: ex.resume(run_id))
    _exit(outcome)


@runbook.command("abort")
@click.argument("run_id")
@click.option("--reason", default="aborted by the operator", show_default=True)
@_identity_options
@pass_cli
def abort(cli: CliContext, run_id: str, reason: str, operator: str | None, token: str | None) -> None:
    """Abort a run: completed steps are rolled back in reverse (never past a point of no return; not at all when
    the runbook says rollback_on_abort: false), then the run is ABORTED. If the run's process is alive it unwinds
    before its next step; otherwise this command does the rollback itself."""
    who = _operator(cli, operator, token)
    with _witness(cli) as witness:
        registry, services = _registry(cli, witness)
        loaded = _run_runbook(witness, run_id, registry, driven_elsewhere_ok=True)
        try:
            request_abort(witness, run_id, who, reason)
        except (KeyError, ValueError) as exc:
            fail(str(exc).strip("'\""), 2)
        if owner_alive(witness.entries(run_id)):
            click.echo(f"abort recorded; the process running {run_id} rolls back before its next step")
            return
        outcome = _drive(loaded, registry, witness, services, who, True, 0, lambda ex: ex.resume(run_id))
    click.echo(f"run {run_id}: {outcome.status.value}" + (f" ({outcome.reason})" if outcome.reason else ""))
    if outcome.status is not RunStatus.ABORTED:
        raise SystemExit(1)


@runbook.command("status")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@pass_cli
def status(cli: CliContext, run_id: str, as_json: bool) -> None:
    """Print a run's status and its journal."""
    with _witness(cli) as witness:
        record, entries = witness.run(run_id), witness.entries(run_id)
    if record is None:
        fail(f"no run {run_id!r} in the witness ({cli.settings.witness_url})", 2)
    if as_json:
        click.echo(json.dumps({"run": record.__dict__, "journal": [e.__dict__ for e in entries]}, default=str))
        return
    console = Console(highlight=False, soft_wrap=True)
    console.print(f"run [bold]{record.run_id}[/] of {record.runbook} by {record.operator}: [bold]{record.status}[/]"
                  f"; started {_when(record.started_at)}, updated {_when(record.updated_at)} UTC")
    console.print("parameters: " + (", ".join(f"{k}={v!r}" for k, v in record.params.items()) or "none"))
    width = max((len(e.step) for e in entries), default=4)
    for e in entries:
        console.print(f"{e.seq:>4}  {_when(e.at)}  {e.step:<{width}}  {e.phase:<20} {escape(_short(e.detail))}")


def _run_runbook(witness, run_id: str, registry: ActionRegistry, *, driven_elsewhere_ok: bool = False
                 ) -> LoadedRunbook:
    """The runbook a run was started with; refused if its file changed since (a different plan mid-run), or, unless
    `driven_elsewhere_ok`, while another live process drives the run."""
    record = witness.run(run_id)
    if record is None:
        fail(f"no run {run_id!r} in the witness", 2)
    entries = witness.entries(run_id)
    if not driven_elsewhere_ok and owner_alive(entries) and not RunStatus(record.status).is_terminal:
        pid = [e for e in entries if e.phase in ("started", "resumed")][-1].detail.get("pid")
        fail(f"run {run_id} is being driven by process {pid} on this host; stop it first or use abort", 2)
    origin = run_origin(entries)
    loaded = _load(Path(origin.get("path", "")), registry)
    if origin.get("sha256") and origin["sha256"] != loaded.sha256:
        fail(f"{loaded.path} changed since run {run_id} started; restore it (git) to resume the same plan", 2)
    return loaded


def _drive(loaded, registry, witness, services, who: str, assume_yes: bool, metrics_port: int, go) -> RunOutcome:
    console = Console(highlight=False, soft_wrap=True)
    metrics = RunbookMetrics(loaded.runbook.name, who, len(loaded.runbook.steps))
    server = _serve_metrics(console, metrics, metrics_port)
    observer = RichObserver(console, len(loaded.runbook.steps))
    executor = Executor(loaded, registry, witness, operator=who, services=services, assume_yes=assume_yes,
                        confirm=lambda prompt: click.confirm(prompt, default=False), observer=observer,
                        metrics=metrics)
    try:
        return go(executor)
    except (KeyboardInterrupt, click.Abort):  # Ctrl-C, or no terminal to answer a confirmation on
        observer.close()
        fail(f"interrupted; the journal is intact: `standbyctl runbook resume {observer.run_id}` continues "
             f"(--yes for automation), `abort {observer.run_id}` unwinds", 1)
    except WitnessError:
        raise  # _witness() says it in one line
    except IllegalTransition as exc:
        observer.close()
        fail(f"the run's journal does not fit the runbook ({exc}); nothing was done", 1)
    except Exception as exc:  # noqa: BLE001 - an operator gets one line, the journal keeps the truth
        observer.close()
        fail(f"the engine stopped: {type(exc).__name__}: {exc}; the journal is intact, "
             f"`standbyctl runbook status {observer.run_id}` shows it and `resume` continues", 1)
    finally:
        observer.close()
        if server is not None:
            server.shutdown()


def _serve_metrics(console: Console, metrics: RunbookMetrics, port: int):
    if not port:
        return None
    from prometheus_client import start_http_server

    try:
        server, _thread = start_http_server(port, addr="127.0.0.1", registry=metrics.registry)
    except OSError as exc:
        console.print(f"[yellow]warning[/]: no /metrics on port {port} ({exc.strerror}); the run goes on")
        return None
    return server


def _exit(outcome: RunOutcome) -> None:
    if outcome.status is not RunStatus.DONE:
        raise SystemExit(1)


class RichObserver(RunObserver):
    """Each step live, with a spinner and its elapsed time, then one line with its outcome and duration."""

    def __init__(self, console: Console, total: int):
        self.console, self.total, self._live = console, total, None
        self.run_id = "RUN_ID"  # until the run exists

    def run_started(self, run_id: str, runbook: str, resumed: bool) -> None:
        self.run_id = run_id
        verb = "resuming" if resumed else "running"
        self.console.print(f"{verb} [bold]{runbook}[/] as run [bold]{run_id}[/]")

    def preconditions(self, failures: list[str]) -> None:
        if not failures:
            self.console.print("[green]preconditions hold[/]")
        for failure in failures:
            self.console.print(f"[red]precondition fails[/]: {escape(failure)}")

    def step_started(self, index: int, step, kind: str) -> None:
        self.close()
        label = {"run": "", "verify": " (verify)", "rollback": " [yellow](rollback)[/]"}[kind]
        if not self.console.is_terminal:  # a log, not a screen: one line per step, no animation
            self.console.print(f"▶ {index + 1}/{self.total} {step.id}{label}")
            return
        self._live = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                              console=self.console, transient=True)
        self._live.start()
        self._live.add_task(f"{index + 1}/{self.total} {step.id}{label}", total=None)

    def step_finished(self, index: int, step, kind: str, ok: bool, duration_s: float, detail: dict) -> None:
        self.close()
        mark = "[green]✓[/]" if ok else "[red]✗[/]"
        what = {"run": "", "verify": " verified", "rollback": " rolled back" if ok else " rollback"}[kind]
        self.console.print(f"{mark} {index + 1}/{self.total} {step.id}{what}  {duration_s:.2f} s  "
                           f"{escape(_short(detail))}")

    def progress(self, message: str) -> None:
        self.console.print(f"    {escape(message)}")

    def finished(self, outcome: RunOutcome) -> None:
        self.close()
        colour = "green" if outcome.status is RunStatus.DONE else "red"
        reason = f": {escape(outcome.reason)}" if outcome.reason else ""
        self.console.print(f"run {outcome.run_id} [{colour}]{outcome.status.value}[/]{reason}")

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


def _short(detail: dict, limit: int = 160) -> str:
    """The scalar parts of a result (the business outcome), without command output."""
    if not isinstance(detail, dict):
        return str(detail)[:limit]
    parts = [f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in detail.items()
             if k not in ("stdout", "stderr") and isinstance(v, (str, int, float, bool)) and v != ""]
    nested = {k: v for k, v in detail.items() if isinstance(v, dict)}
    for k, v in nested.items():
        parts.append(f"{k}: {_short(v, limit // 2)}")
    text = ", ".join(parts)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")

