"""Acting: the executor carries out the planner's moves and journals each one in the witness.

Contract:
- Intent before action: a step's `intent` (with its resolved arguments) is appended to the journal before the step
  acts, and its outcome (`acted` with the result, then `done` after verify, or `failed`) after. The executor never
  keeps state of its own between moves: each move is decided afresh from the journal by `plan.next_move`, so a
  process killed at any point is continued by `resume` (a new Executor on the same run) from the right step.
- Preconditions are run before the first step (a failure refuses the run, nothing changed) and again after the
  operator answers a confirmation (the world may have moved while they read); `assume_yes` skips only the asking.
- Each attempt is bounded by the step's `timeout_s`; attempts and waits come from its `retries` (tenacity).
- An abort is a journal entry (`request_abort`); a live executor sees it before its next move and unwinds.
- Every run, step, rollback, confirmation and abort is audited in the witness: who, when, arguments, outcome,
  duration and the step's result (the business outcome).
- One process drives a run at a time: `owner_alive` tells the CLI whether the last process that started or resumed
  it is still alive on this host, and the CLI refuses a second driver.
"""
from __future__ import annotations

import os
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable

from tenacity import Retrying, stop_after_attempt, wait_fixed

from cutover.runbook.actions import ActionContext, ActionRegistry
from cutover.runbook.loader import LoadedRunbook
from cutover.runbook.metrics import RunbookMetrics
from cutover.runbook.operations import call_action, call_http, run_command
from cutover.runbook.plan import (RUN_EVENT, Move, MoveKind, RunEvent, RunStatus, StepPhase, fold, next_move,
                                  next_status)
from cutover.runbook.refs import RefError, resolve
from cutover.runbook.spec import Operation, Step
from cutover.witness.contract import AuditRecord, JournalEntry, RunRecord, Witness
from standby.processes import pid_alive



class RunObserver:
    """Live output of a run (the CLI draws it with rich); every method is optional."""

    def run_started(self, run_id: str, runbook: str, resumed: bool) -> None: ...

    def preconditions(self, failures: list[str]) -> None: ...

    def step_started(self, index: int, step: Step, kind: str) -> None: ...

    def step_finished(self, index: int, step: Step, kind: str, ok: bool, duration_s: float, detail: dict) -> None: ...

    def progress(self, message: str) -> None: ...

    def finished(self, outcome: "RunOutcome") -> None: ...


@dataclass(frozen=True)
class RunOutcome:
    run_id: str
    status: RunStatus
    reason: str = ""


class Executor:
    def __init__(self, loaded: LoadedRunbook, registry: ActionRegistry, witness: Witness, *, operator: str,
                 services: Any = None, confirm: Callable[[str], bool] | None = None, assume_yes: bool = False,
                 observer: RunObserver | None = None, metrics: RunbookMetrics | None = None,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, after_append: Callable[[int], None] | None = None):
        if not operator:
            raise ValueError("a run needs an operator's identity")
        self.loaded, self.runbook = loaded, loaded.runbook
        self.registry, self.witness, self.operator, self.services = registry, witness, operator, services
        self.confirm, self.assume_yes = confirm, assume_yes
        if confirm is None and not assume_yes and any(s.confirm for s in self.runbook.steps):
            raise ValueError("this runbook has steps to confirm: pass confirm= or assume_yes=True")
        self.observer = observer or RunObserver()
        self.metrics = metrics
        self.clock, self.monotonic, self.sleep = clock, monotonic, sleep
        self.after_append = after_append or (lambda seq: None)

    # -- starting and driving -----------------------------------------------------------------------------------

    def start(self, params: dict) -> str:
        """Create the run in the witness and journal `started`; returns the run id. Nothing acts yet."""
        now = self.clock()
        run_id = f"{self.runbook.name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now))}-{secrets.token_hex(3)}"
        self.witness.create_run(RunRecord(run_id, self.runbook.name, self.operator, dict(params),
                                          RunStatus.RUNNING.value, now, now))
        self._append(run_id, RUN_EVENT, RunEvent.STARTED.value, self._owner() | {
            "path": str(self.loaded.path.resolve()), "sha256": self.loaded.sha256})
        self._audit("runbook.run", run_id, dict(params), "started", detail={"runbook": self.runbook.name})
        return run_id

    def run(self, params: dict) -> RunOutcome:
        return self.drive(self.start(params))

    def resume(self, run_id: str) -> RunOutcome:
        """Continue a run from its journal (after a crash, or to finish an abort's rollback)."""
        record = self._record(run_id)
        if not RunStatus(record.status).is_terminal:
            self._append(run_id, RUN_EVENT, RunEvent.RESUMED.value, self._owner())
            self._audit("runbook.resume", run_id, {}, "started")
        return self.drive(run_id, resumed=True)

    def drive(self, run_id: str, resumed: bool = False) -> RunOutcome:
        """Carry out moves until the run reaches a terminal status; returns it."""
        record = self._record(run_id)
        params = dict(record.params)
        self.observer.run_started(run_id, self.runbook.name, resumed)
        if self.metrics:
            self.metrics.running(True)
        try:
            while True:
                entries = self.witness.entries(run_id)
                move = next_move(self.runbook, entries)
                if move.terminal_status is not None:
                    return self._finish(record, move)
                self._set_status(record, move.status_while_running)
                self._carry_out(run_id, move, params, entries)
        finally:
            if self.metrics:
                self.metrics.running(False)

    def _carry_out(self, run_id: str, move: Move, params: dict, entries: list[JournalEntry]) -> None:
        results = fold(self.runbook, entries).results
        if move.kind is MoveKind.CHECK_PRECONDITIONS:
            failures = self.check_preconditions(run_id, params)
            self.observer.preconditions(failures)
            event = RunEvent.PRECONDITIONS_FAILED if failures else RunEvent.PRECONDITIONS_PASSED
            self._append(run_id, RUN_EVENT, event.value, {"reason": "; ".join(failures)} if failures else {})
        elif move.kind is MoveKind.CONFIRM:
            self._confirm(run_id, move.step, params)
        elif move.kind is MoveKind.RUN:
            self._run_step(run_id, move.step, params, results)
        elif move.kind is MoveKind.VERIFY:
            self._verify_step(run_id, move.step, params, results, entries)
        elif move.kind is MoveKind.ROLLBACK:
            self._rollback_step(run_id, move.step, params, results)
        else:  # pragma: no cover - next_move returns no other kind
            raise AssertionError(move)

    # -- moves ------------------------------------------------------------------------------------------------

    def check_preconditions(self, run_id: str, params: dict) -> list[str]:
        """Run every precondition (read-only actions) for real; the failures, one sentence each."""
        failures = []
        for pre in self.runbook.preconditions:
            try:
                args = resolve(pre.args, params, {})
                call_action(self.registry, pre.action, args, self._context(run_id, params, None, pre.timeout_s),
                            pre.timeout_s)
            except Exception as exc:  # noqa: BLE001 - any failure of a check is a failed precondition
                failures.append(f"{pre.action}: {exc}")
        return failures

    def _confirm(self, run_id: str, i: int, params: dict) -> None:
        step, n = self.runbook.steps[i], len(self.runbook.steps)
        prompt = f"step {i + 1}/{n} {step.id}: {step.description or step.describe()}. Go ahead?"
        answer = True if self.assume_yes else bool(self.confirm(prompt))
        self._audit("runbook.confirm", f"{run_id}/{step.id}", {"assumed": self.assume_yes},
                    "yes" if answer else "no")
        if not answer:
            request_abort(self.witness, run_id, self.operator, f"the operator declined step {step.id}", self.clock)
            return
        failures = self.check_preconditions(run_id, params)  # after the answer: the world may have moved
        if failures:
            self.observer.preconditions(failures)
            self._append(run_id, step.id, StepPhase.FAILED.value,
                         {"error": "a precondition no longer holds after confirmation: " + "; ".join(failures)})
            self._audit_step(run_id, step, {}, "failed", 0.0, {"error": "precondition changed"})
            return
        self._append(run_id, step.id, StepPhase.CONFIRMED.value, {"by": self.operator, "assumed": self.assume_yes})

    def _run_step(self, run_id: str, i: int, params: dict, results: dict) -> None:
        step = self.runbook.steps[i]
        try:
            args = self._resolve_operation(step, params, results)
        except RefError as exc:
            self._append(run_id, step.id, StepPhase.FAILED.value, {"error": str(exc)})
            return
        self._append(run_id, step.id, StepPhase.INTENT.value, {"args": _recorded(step, args), "by": self.operator})
        budget = step.timeout_s * step.retries.attempts + step.retries.wait_s * (step.retries.attempts - 1)
        if self.metrics:
            self.metrics.step_begins(i, self.clock(), budget)
        self.observer.step_started(i, step, "run")
        started = self.monotonic()
        try:
            result = self._attempts(step, lambda: self._operate(step, args, run_id, params))
        except Exception as exc:  # noqa: BLE001 - any failure of the step is journaled, then unwound
            self._step_failed(run_id, i, _recorded(step, args), str(exc) or type(exc).__name__,
                              self.monotonic() - started)
            return
        took = self.monotonic() - started
        self._append(run_id, step.id, StepPhase.ACTED.value, {"result": result, "duration_s": took})
        self.observer.step_finished(i, step, "run", True, took, result)

    def _verify_step(self, run_id: str, i: int, params: dict, results: dict, entries: list[JournalEntry]) -> None:
        step = self.runbook.steps[i]
        acted = next(e for e in reversed(entries) if e.step == step.id and e.phase == StepPhase.ACTED.value)
        act_s, result = float(acted.detail.get("duration_s", 0.0)), acted.detail.get("result", {})
        intent = next(e for e in reversed(entries) if e.step == step.id and e.phase == StepPhase.INTENT.value)
        started, detail = self.monotonic(), {"result": result}
        if step.verify is not None:
            self.observer.step_started(i, step, "verify")
            try:
                args = resolve(step.verify.args, params, results)
                detail["verify"] = self._attempts(step, lambda: call_action(
                    self.registry, step.verify.action, args, self._context(run_id, params, step, step.timeout_s),
                    step.timeout_s))
            except Exception as exc:  # noqa: BLE001
                self._step_failed(run_id, i, intent.detail.get("args", {}), f"verify {step.verify.action}: {exc}",
                                  act_s + self.monotonic() - started)
                return
        took = act_s + self.monotonic() - started
        self._append(run_id, step.id, StepPhase.DONE.value, detail | {"duration_s": took})
        if self.metrics:
            self.metrics.step_ends(step.id, took)
        if step.verify is not None:
            self.observer.step_finished(i, step, "verify", True, took, detail["verify"])
        self._audit_step(run_id, step, intent.detail.get("args", {}), "ok", took, result)

    def _step_failed(self, run_id: str, i: int, args: Any, error: str, took: float) -> None:
        step = self.runbook.steps[i]
        self._append(run_id, step.id, StepPhase.FAILED.value, {"error": error, "duration_s": took})
        if self.metrics:
            self.metrics.step_ends(step.id, took)
        self.observer.step_finished(i, step, "run", False, took, {"error": error})
        self._audit_step(run_id, step, args, "failed", took, {"error": error})

    def _rollback_step(self, run_id: str, i: int, params: dict, results: dict) -> None:
        step = self.runbook.steps[i]
        try:
            args = self._resolve_operation(step.rollback, params, results)
        except RefError as exc:
            self._append(run_id, step.id, StepPhase.ROLLBACK_INTENT.value, {"args": None})
            self._append(run_id, step.id, StepPhase.ROLLBACK_FAILED.value, {"error": str(exc)})
            return
        self._append(run_id, step.id, StepPhase.ROLLBACK_INTENT.value,
                     {"args": _recorded(step.rollback, args), "by": self.operator})
        self.observer.step_started(i, step, "rollback")
        started = self.monotonic()
        try:
            result = self._attempts(step, lambda: self._operate(step.rollback, args, run_id, params, step))
        except Exception as exc:  # noqa: BLE001
            took = self.monotonic() - started
            self._append(run_id, step.id, StepPhase.ROLLBACK_FAILED.value, {"error": str(exc), "duration_s": took})
            self.observer.step_finished(i, step, "rollback", False, took, {"error": str(exc)})
            self._audit("runbook.rollback", f"{run_id}/{step.id}", _recorded(step.rollback, args), "failed", took,
                        {"error": str(exc)})
            return
        took = self.monotonic() - started
        self._append(run_id, step.id, StepPhase.ROLLED_BACK.value, {"result": result, "duration_s": took})
        self.observer.step_finished(i, step, "rollback", True, took, result)
        self._audit("runbook.rollback", f"{run_id}/{step.id}", _recorded(step.rollback, args), "ok", took, result)

    def _finish(self, record: RunRecord, move: Move) -> RunOutcome:
        status = move.terminal_status
        outcome = RunOutcome(record.run_id, status, move.reason)
        if self._set_status(record, status):
            self._audit("runbook.run", record.run_id, dict(record.params), status.value,
                        self.clock() - record.started_at, {"reason": move.reason, "runbook": self.runbook.name})
        self.observer.finished(outcome)
        return outcome

    # -- helpers ----------------------------------------------------------------------------------------------

    def _operate(self, op: Operation, args: Any, run_id: str, params: dict, step: Step | None = None) -> dict:
        step = step or op
        if op.action is not None:
            return call_action(self.registry, op.action, args, self._context(run_id, params, step, step.timeout_s),
                               step.timeout_s)
        if op.command is not None:
            return run_command(args, step.timeout_s, self.observer.progress)
        return call_http(op.http.method, args["url"], args["headers"], args["json"], op.http.expect_status,
                         step.timeout_s)

    @staticmethod
    def _resolve_operation(op: Operation, params: dict, results: dict) -> Any:
        if op.action is not None:
            return resolve(op.args, params, results)
        if op.command is not None:
            return resolve(op.command, params, results)
        return resolve({"url": op.http.url, "headers": op.http.headers, "json": op.http.json_body}, params, results)

    def _attempts(self, step: Step, attempt: Callable[[], Any]) -> Any:
        def before_sleep(state) -> None:
            self.observer.progress(f"attempt {state.attempt_number} of {step.retries.attempts} failed "
                                   f"({state.outcome.exception()}); trying again in {step.retries.wait_s:g} s")

        retrying = Retrying(stop=stop_after_attempt(step.retries.attempts), wait=wait_fixed(step.retries.wait_s),
                            sleep=self.sleep, reraise=True, before_sleep=before_sleep)
        return retrying(attempt)

    def _context(self, run_id: str, params: dict, step: Step | None, timeout_s: float) -> ActionContext:
        return ActionContext(run_id=run_id, operator=self.operator, params=params, services=self.services,
                             step_id=step.id if step else None, deadline=self.monotonic() + timeout_s,
                             progress=self.observer.progress,
                             observe_freeze=self.metrics.observe_freeze if self.metrics else (lambda s: None),
                             clock=self.clock, monotonic=self.monotonic, sleep=self.sleep)

    def _append(self, run_id: str, step: str, phase: str, detail: dict) -> int:
        seq = self.witness.append(run_id, step, phase, detail, self.clock())
        self.after_append(seq)
        return seq

    def _record(self, run_id: str) -> RunRecord:
        record = self.witness.run(run_id)
        if record is None:
            raise KeyError(f"no run {run_id!r} in the witness")
        if record.runbook != self.runbook.name:
            raise ValueError(f"run {run_id} is of runbook {record.runbook!r}, not {self.runbook.name!r}")
        return record

    def _set_status(self, record: RunRecord, status: RunStatus) -> bool:
        current = RunStatus(self.witness.run(record.run_id).status)
        if current is status:
            return False
        next_status(current, status)
        self.witness.set_run_status(record.run_id, status.value, self.clock())
        return True

    def _audit(self, action: str, target: str, args: Any, outcome: str, duration_s: float | None = None,
               detail: dict | None = None) -> None:
        self.witness.audit(AuditRecord(self.clock(), self.operator, action, target,
                                       args if isinstance(args, dict) else {"argv": args}, outcome, duration_s,
                                       detail or {}))

    def _audit_step(self, run_id: str, step: Step, args: Any, outcome: str, took: float, detail: dict) -> None:
        self._audit("runbook.step", f"{run_id}/{step.id}", args, outcome, took, detail)

    @staticmethod
    def _owner() -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname()}


def _recorded(op: Operation, args: Any) -> Any:
    """The arguments as journaled and audited: an HTTP call's header values (credentials) are not kept. Nothing
    reads them back to act: a resumed step resolves its arguments again from the runbook and the parameters."""
    if op.http is not None and isinstance(args, dict) and args.get("headers"):
        return args | {"headers": {k: "(not recorded)" for k in args["headers"]}}
    return args


def request_abort(witness: Witness, run_id: str, operator: str, reason: str, clock: Callable[[], float] = time.time
                  ) -> None:
    """Journal an abort; whoever drives the run next unwinds it (plan.next_move). A finished run is refused."""
    record = witness.run(run_id)
    if record is None:
        raise KeyError(f"no run {run_id!r} in the witness")
    if RunStatus(record.status).is_terminal:
        raise ValueError(f"run {run_id} is already {record.status}; nothing to abort")
    witness.append(run_id, RUN_EVENT, RunEvent.ABORT_REQUESTED.value, {"by": operator, "reason": reason}, clock())
    witness.audit(AuditRecord(clock(), operator, "runbook.abort", run_id, {"reason": reason}, "requested"))


def run_origin(entries: list[JournalEntry]) -> dict:
    """The `started` entry's detail: the runbook file's path and hash, the first driver's pid and host."""
    for e in entries:
        if e.step == RUN_EVENT and e.phase == RunEvent.STARTED.value:
            return dict(e.detail)
    return {}


def owner_alive(entries: list[JournalEntry], host: str | None = None) -> bool:
    """Whether the last process that started or resumed the run still lives on this host (a pid that was reused
    by an unrelated process reads as alive: the cautious answer)."""
    owners = [e.detail for e in entries if e.step == RUN_EVENT
              and e.phase in (RunEvent.STARTED.value, RunEvent.RESUMED.value)]
    if not owners or owners[-1].get("host") != (host or socket.gethostname()):
        return False
    pid = int(owners[-1].get("pid", 0))
    if pid == os.getpid():
        return False  # this process: it is not driving the run while it asks
    return pid_alive(pid)


