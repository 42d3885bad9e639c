"""Deciding is pure: the next move of a run is a function of the runbook and its journal entries, nothing else.

The journal (in the witness) holds two kinds of entries: run events (step RUN_EVENT = "@run": started, resumed,
preconditions_passed, preconditions_failed, abort_requested) and step phases, each folded through STEP_TRANSITIONS
(an illegal sequence raises IllegalTransition, so a corrupt journal is never acted on):

    (none) -> confirmed -> intent -> acted -> done -> rollback_intent -> rolled_back
                           intent -> intent            (resumed after a crash: the step is run again)
                           intent|acted -> failed      rollback_intent -> rollback_failed

Policy, decided here and documented for operators (runbooks/README.md):
- Preconditions are checked before the first step; if they fail the run is REFUSED and nothing was changed.
- A step whose intent is journaled without an outcome is run again (actions are idempotent); an `acted` step is
  verified (again); its verify decides.
- On a failed step, the completed steps are rolled back in reverse order (those that declare a rollback), but never
  a step at or before a completed point of no return. Then ROLLED_BACK, or FAILED when a point of no return was
  passed (the state is past it and an operator has to finish forward) or a rollback itself failed.
- Abort (`abort_requested`: by `standbyctl runbook abort`, or the operator declining a confirmation) rolls back the
  same way, including a step that was in flight (intent or acted: its effect is unknown, and rollbacks are
  idempotent), unless the runbook says `rollback_on_abort: false`; then ABORTED.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Iterable, Protocol

from cutover.runbook.spec import Runbook

RUN_EVENT = "@run"


class IllegalTransition(ValueError):
    """A journal or a status change that the transition tables forbid."""


class StepPhase(str, Enum):
    PENDING = "pending"  # nothing journaled yet; never written
    CONFIRMED = "confirmed"
    INTENT = "intent"
    ACTED = "acted"
    DONE = "done"
    FAILED = "failed"
    ROLLBACK_INTENT = "rollback_intent"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"


_P = StepPhase
STEP_TRANSITIONS: dict[StepPhase, frozenset[StepPhase]] = {
    _P.PENDING: frozenset({_P.CONFIRMED, _P.INTENT, _P.FAILED, _P.ROLLBACK_INTENT}),
    _P.CONFIRMED: frozenset({_P.INTENT, _P.FAILED}),
    _P.INTENT: frozenset({_P.INTENT, _P.ACTED, _P.FAILED, _P.ROLLBACK_INTENT}),
    _P.ACTED: frozenset({_P.DONE, _P.FAILED, _P.ROLLBACK_INTENT}),
    _P.DONE: frozenset({_P.ROLLBACK_INTENT}),
    _P.FAILED: frozenset(),
    _P.ROLLBACK_INTENT: frozenset({_P.ROLLBACK_INTENT, _P.ROLLED_BACK, _P.ROLLBACK_FAILED}),
    _P.ROLLED_BACK: frozenset(),
    _P.ROLLBACK_FAILED: frozenset(),
}


def next_phase(current: StepPhase, new: StepPhase) -> StepPhase:
    if new not in STEP_TRANSITIONS[current]:
        raise IllegalTransition(f"step phase {current.value} -> {new.value} is not allowed")
    return new


class RunEvent(str, Enum):
    STARTED = "started"
    RESUMED = "resumed"
    PRECONDITIONS_PASSED = "preconditions_passed"
    PRECONDITIONS_FAILED = "preconditions_failed"
    ABORT_REQUESTED = "abort_requested"


class RunStatus(str, Enum):
    RUNNING = "running"
    ROLLING_BACK = "rolling_back"
    DONE = "done"
    REFUSED = "refused"  # preconditions failed; nothing was changed
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"
    ABORTED = "aborted"

    @property
    def is_terminal(self) -> bool:
        return self in (RunStatus.DONE, RunStatus.REFUSED, RunStatus.ROLLED_BACK, RunStatus.FAILED,
                        RunStatus.ABORTED)


_R = RunStatus
RUN_TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    _R.RUNNING: frozenset({_R.RUNNING, _R.ROLLING_BACK, _R.DONE, _R.REFUSED, _R.ROLLED_BACK, _R.FAILED, _R.ABORTED}),
    _R.ROLLING_BACK: frozenset({_R.ROLLING_BACK, _R.ROLLED_BACK, _R.FAILED, _R.ABORTED}),
    _R.DONE: frozenset(),
    _R.REFUSED: frozenset(),
    _R.ROLLED_BACK: frozenset(),
    _R.FAILED: frozenset(),
    _R.ABORTED: frozenset(),
}


def next_status(current: RunStatus, new: RunStatus) -> RunStatus:
    if new not in RUN_TRANSITIONS[current]:
        raise IllegalTransition(f"run status {current.value} -> {new.value} is not allowed")
    return new


class MoveKind(str, Enum):
    CHECK_PRECONDITIONS = "check_preconditions"
    CONFIRM = "confirm"  # wait for the operator's confirmation of step i
    RUN = "run"
    VERIFY = "verify"
    ROLLBACK = "rollback"
    DONE = "done"
    REFUSED = "refused"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"


TERMINAL_MOVES = {MoveKind.DONE: RunStatus.DONE, MoveKind.REFUSED: RunStatus.REFUSED,
                  MoveKind.FAILED: RunStatus.FAILED, MoveKind.ROLLED_BACK: RunStatus.ROLLED_BACK,
                  MoveKind.ABORTED: RunStatus.ABORTED}


@dataclass(frozen=True)
class Move:
    kind: MoveKind
    step: int | None = None  # index into runbook.steps
    reason: str = ""

    @property
    def terminal_status(self) -> RunStatus | None:
        return TERMINAL_MOVES.get(self.kind)

    @property
    def status_while_running(self) -> RunStatus:
        return RunStatus.ROLLING_BACK if self.kind is MoveKind.ROLLBACK else RunStatus.RUNNING


class EntryLike(Protocol):
    step: str
    phase: str
    detail: dict


@dataclass(frozen=True)
class Folded:
    """What the journal says, folded: per-step phase, run events, results of acted steps."""

    phases: tuple[StepPhase, ...]
    events: frozenset[RunEvent]
    results: dict[str, Any]
    failure: str  # the first failure's reason ("" when none)
    abort_reason: str = ""


def fold(runbook: Runbook, entries: Iterable[EntryLike]) -> Folded:
    index = {s.id: i for i, s in enumerate(runbook.steps)}
    phases = [StepPhase.PENDING] * len(runbook.steps)
    events: set[RunEvent] = set()
    results: dict[str, Any] = {}
    failure = abort_reason = ""
    for e in entries:
        try:
            event = RunEvent(e.phase) if e.step == RUN_EVENT else None
            phase = StepPhase(e.phase) if e.step != RUN_EVENT else None
        except ValueError:
            raise IllegalTransition(f"the journal has an unknown phase {e.phase!r} (step {e.step!r})") from None
        if event is not None:
            events.add(event)
            if e.phase == RunEvent.ABORT_REQUESTED.value and not abort_reason:
                abort_reason = str(e.detail.get("reason") or "aborted by the operator")
            if e.phase == RunEvent.PRECONDITIONS_FAILED.value and not failure:
                failure = str(e.detail.get("reason", "a precondition failed"))
            continue
        if e.step not in index:
            raise IllegalTransition(f"the journal names step {e.step!r}, which this runbook does not have")
        i = index[e.step]
        phases[i] = next_phase(phases[i], phase)
        if phases[i] is StepPhase.ACTED:
            results[e.step] = e.detail.get("result", {})
        if phases[i] in (StepPhase.FAILED, StepPhase.ROLLBACK_FAILED) and not failure:
            failure = f"step {e.step}: {e.detail.get('error', phases[i].value)}"
    return Folded(tuple(phases), frozenset(events), results, failure, abort_reason)


def next_move(runbook: Runbook, entries: Iterable[EntryLike]) -> Move:
    """The one thing to do next (see the module docstring for the policy)."""
    f = fold(runbook, entries)
    if RunEvent.PRECONDITIONS_FAILED in f.events:
        return Move(MoveKind.REFUSED, reason=f.failure)
    aborted = RunEvent.ABORT_REQUESTED in f.events
    failed = any(p is StepPhase.FAILED for p in f.phases)
    if aborted or failed:
        return _unwind(runbook, f, aborted)
    if RunEvent.PRECONDITIONS_PASSED not in f.events:
        return Move(MoveKind.CHECK_PRECONDITIONS)
    for i, (step, phase) in enumerate(zip(runbook.steps, f.phases)):
        if phase is StepPhase.DONE:
            continue
        if phase is StepPhase.PENDING and step.confirm:
            return Move(MoveKind.CONFIRM, i)
        if phase is StepPhase.ACTED:
            return Move(MoveKind.VERIFY, i)
        return Move(MoveKind.RUN, i, "again: its intent was journaled without an outcome"
                    if phase is StepPhase.INTENT else "")
    return Move(MoveKind.DONE)


def _unwind(runbook: Runbook, f: Folded, aborted: bool) -> Move:
    """Roll back what can be rolled back, newest first, then the terminal status."""
    if any(p is StepPhase.ROLLBACK_FAILED for p in f.phases):
        return Move(MoveKind.FAILED, reason=f.failure)
    ponr = max((i for i, (s, p) in enumerate(zip(runbook.steps, f.phases))
                if s.point_of_no_return and p is StepPhase.DONE), default=-1)
    undo = {StepPhase.DONE, StepPhase.ROLLBACK_INTENT}
    if aborted:
        undo |= {StepPhase.INTENT, StepPhase.ACTED}  # in flight: effect unknown, rollbacks are idempotent
    if not aborted or runbook.rollback_on_abort:
        for i in range(len(runbook.steps) - 1, ponr, -1):
            if runbook.steps[i].rollback is not None and f.phases[i] in undo:
                return Move(MoveKind.ROLLBACK, i, f.abort_reason or "aborted" if aborted else f.failure)
    if aborted:
        return Move(MoveKind.ABORTED, reason=f.abort_reason or "aborted by the operator")
    return Move(MoveKind.FAILED if ponr >= 0 else MoveKind.ROLLED_BACK, reason=f.failure)
