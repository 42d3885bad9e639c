"""The planner is a pure function of the runbook and its journal: plain values in, a Move out."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from cutover.runbook.plan import (RUN_EVENT, IllegalTransition, Move, MoveKind, RunStatus, StepPhase, next_move,
                                  next_phase, next_status)
from cutover.runbook.spec import Runbook


@dataclass(frozen=True)
class E:
    step: str
    phase: str
    detail: dict = field(default_factory=dict)


def book(*steps: dict, **extra) -> Runbook:
    return Runbook.model_validate({"name": "t", "description": "test", "steps": list(steps), **extra})


def step(sid: str, rollback: bool = False, **extra) -> dict:
    out = {"id": sid, "command": ["true"], **extra}
    if rollback:
        out["rollback"] = {"command": ["true"]}
    return out


STARTED = [E(RUN_EVENT, "started"), E(RUN_EVENT, "preconditions_passed")]


def done(sid: str) -> list[E]:
    return [E(sid, "intent"), E(sid, "acted", {"result": {"n": 1}}), E(sid, "done")]


def test_a_new_run_checks_preconditions_first():
    assert next_move(book(step("a")), [E(RUN_EVENT, "started")]) == Move(MoveKind.CHECK_PRECONDITIONS)


def test_failed_preconditions_refuse_the_run():
    entries = [E(RUN_EVENT, "started"), E(RUN_EVENT, "preconditions_failed", {"reason": "lag 9 s"})]
    assert next_move(book(step("a")), entries) == Move(MoveKind.REFUSED, reason="lag 9 s")


def test_steps_run_in_order_then_done():
    rb = book(step("a"), step("b"))
    assert next_move(rb, STARTED) == Move(MoveKind.RUN, 0)
    assert next_move(rb, STARTED + done("a")) == Move(MoveKind.RUN, 1)
    assert next_move(rb, STARTED + done("a") + done("b")) == Move(MoveKind.DONE)


def test_intent_without_outcome_runs_the_step_again():
    move = next_move(book(step("a"), step("b")), STARTED + done("a") + [E("b", "intent")])
    assert move.kind is MoveKind.RUN and move.step == 1 and "again" in move.reason


def test_acted_step_is_verified_next():
    move = next_move(book(step("a")), STARTED + [E("a", "intent"), E("a", "acted", {"result": {}})])
    assert move == Move(MoveKind.VERIFY, 0)


def test_confirmation_is_awaited_before_a_confirm_step_and_not_after():
    rb = book(step("a"), step("b", confirm=True))
    assert next_move(rb, STARTED + done("a")) == Move(MoveKind.CONFIRM, 1)
    assert next_move(rb, STARTED + done("a") + [E("b", "confirmed")]) == Move(MoveKind.RUN, 1)


def test_failure_rolls_back_completed_steps_in_reverse_then_rolled_back():
    rb = book(step("a", rollback=True), step("b"), step("c", rollback=True), step("d"))
    journal = STARTED + done("a") + done("b") + done("c") + [E("d", "intent"), E("d", "failed", {"error": "x"})]
    assert next_move(rb, journal) == Move(MoveKind.ROLLBACK, 2, "step d: x")
    journal += [E("c", "rollback_intent"), E("c", "rolled_back")]
    assert next_move(rb, journal).step == 0  # b has no rollback: skipped
    journal += [E("a", "rollback_intent"), E("a", "rolled_back")]
    assert next_move(rb, journal) == Move(MoveKind.ROLLED_BACK, reason="step d: x")


def test_rollback_intent_without_outcome_is_rolled_back_again():
    rb = book(step("a", rollback=True), step("b"))
    journal = STARTED + done("a") + [E("b", "intent"), E("b", "failed"), E("a", "rollback_intent")]
    assert next_move(rb, journal) == Move(MoveKind.ROLLBACK, 0, "step b: failed")


def test_failure_past_a_point_of_no_return_rolls_back_only_later_steps_and_fails():
    rb = book(step("a", rollback=True), step("b", rollback=True, point_of_no_return=True),
              step("c", rollback=True), step("d"))
    journal = STARTED + done("a") + done("b") + done("c") + [E("d", "intent"), E("d", "failed")]
    assert next_move(rb, journal).step == 2
    journal += [E("c", "rollback_intent"), E("c", "rolled_back")]
    assert next_move(rb, journal).kind is MoveKind.FAILED  # a and b stay: b is the point of no return


def test_a_failed_rollback_fails_the_run():
    rb = book(step("a", rollback=True), step("b", rollback=True), step("c"))
    journal = STARTED + done("a") + done("b") + [E("c", "failed"), E("b", "rollback_intent"),
                                                 E("b", "rollback_failed", {"error": "no"})]
    assert next_move(rb, journal).kind is MoveKind.FAILED


def test_abort_rolls_back_the_step_in_flight_too_then_aborted():
    rb = book(step("a", rollback=True), step("b", rollback=True), step("c"))
    journal = STARTED + done("a") + [E("b", "intent"), E(RUN_EVENT, "abort_requested", {"reason": "stop"})]
    assert next_move(rb, journal) == Move(MoveKind.ROLLBACK, 1, "stop")
    journal += [E("b", "rollback_intent"), E("b", "rolled_back"), E("a", "rollback_intent"), E("a", "rolled_back")]
    assert next_move(rb, journal) == Move(MoveKind.ABORTED, reason="stop")


def test_abort_without_rollback_when_the_runbook_says_so():
    rb = book(step("a", rollback=True), step("b"), rollback_on_abort=False)
    journal = STARTED + done("a") + [E(RUN_EVENT, "abort_requested")]
    assert next_move(rb, journal).kind is MoveKind.ABORTED


def test_a_corrupt_journal_is_never_acted_on():
    rb = book(step("a"))
    with pytest.raises(IllegalTransition):
        next_move(rb, STARTED + done("a") + [E("a", "intent")])
    with pytest.raises(IllegalTransition, match="does not have"):
        next_move(rb, STARTED + [E("zz", "intent")])
    with pytest.raises(IllegalTransition, match="unknown phase"):
        next_move(rb, STARTED + [E("a", "half-done")])


def test_transition_tables_refuse_illegal_moves():
    assert next_phase(StepPhase.INTENT, StepPhase.INTENT) is StepPhase.INTENT
    with pytest.raises(IllegalTransition):
        next_phase(StepPhase.FAILED, StepPhase.ROLLBACK_INTENT)
    assert next_status(RunStatus.RUNNING, RunStatus.ROLLING_BACK) is RunStatus.ROLLING_BACK
    for terminal in (s for s in RunStatus if s.is_terminal):
        with pytest.raises(IllegalTransition):
            next_status(terminal, RunStatus.RUNNING)


def _simulate(rb: Runbook, journal: list[E], failing: str = "") -> tuple[Move, list[E]]:
    """Play the executor's part with plain values: every step succeeds but `failing`; rollbacks succeed."""
    journal = list(journal)
    for _ in range(100):
        move = next_move(rb, journal)
        if move.terminal_status is not None:
            return move, journal
        sid = rb.steps[move.step].id if move.step is not None else None
        run = [E(sid, "intent"), E(sid, "failed" if sid == failing else "acted", {"result": {}})]
        journal += {MoveKind.CHECK_PRECONDITIONS: [E(RUN_EVENT, "preconditions_passed")],
                    MoveKind.CONFIRM: [E(sid, "confirmed")],
                    MoveKind.RUN: run,
                    MoveKind.VERIFY: [E(sid, "done")],
                    MoveKind.ROLLBACK: [E(sid, "rollback_intent"), E(sid, "rolled_back")]}[move.kind]
    raise AssertionError("no end")


def test_from_every_crash_point_the_same_end_state_each_step_completed_once():
    rb = book(step("a", rollback=True), step("b", confirm=True), step("c"))
    end, full = _simulate(rb, [E(RUN_EVENT, "started")])
    assert end.kind is MoveKind.DONE
    for cut in range(1, len(full) + 1):
        end, journal = _simulate(rb, full[:cut] + [E(RUN_EVENT, "resumed")])
        assert end.kind is MoveKind.DONE, cut
        assert [e.step for e in journal if e.phase == "done"] == ["a", "b", "c"], cut


def test_next_move_is_pure():
    rb = book(step("a"), step("b"))
    journal = STARTED + done("a")
    snapshot = list(journal)
    assert next_move(rb, journal) == next_move(rb, journal) == Move(MoveKind.RUN, 1)
    assert journal == snapshot


def test_from_every_crash_point_of_a_failing_run_the_same_rollbacks_each_once():
    rb = book(step("a", rollback=True), step("b"), step("c", rollback=True), step("d"))
    end, full = _simulate(rb, [E(RUN_EVENT, "started")], failing="d")
    assert end.kind is MoveKind.ROLLED_BACK
    for cut in range(1, len(full) + 1):
        end, journal = _simulate(rb, full[:cut] + [E(RUN_EVENT, "resumed")], failing="d")
        assert end.kind is MoveKind.ROLLED_BACK, cut
        assert [e.step for e in journal if e.phase == "rolled_back"] == ["c", "a"], cut
