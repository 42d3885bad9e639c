"""The drill's pure parts: the plan, the step status table, the correctness checks, the SLO table and the verdict."""
from __future__ import annotations

import pytest

from loadtests.slo import Slos
from standbyctl.drill.judge import disturbed_spans, steady, steady_percentile
from standbyctl.drill.plan import (StepKind, StepStatus, correctness_problems, drill_plan, slo_verdicts, step_misses,
                                   verdict)

SLOS = Slos(green_decision_p99_ms=100, error_rate_max=0.01, replication_lag_p99_ms=500, freeze_max_s=10)


def record(n: int, kind: StepKind, **fields) -> dict:
    base = {"n": n, "id": kind.value, "kind": kind.value, "status": "done", "freeze_s": None, "rto_s": None,
            "client_errors": 0, "verify": "clean", "ledger": "10 acknowledged: 0 lost, 0 doubled, 0 mismatched",
            "ledger_lost": 0, "ledger_doubled": 0, "ledger_mismatched": 0, "conflicts": None,
            "rpo_lost_after_reconcile": None, "rpo_listed_exactly": None, "targets": {}}
    return {**base, **fields}


def good_drill() -> list[dict]:
    return [record(1, StepKind.SWITCHOVER, freeze_s=0.4, targets={"freeze_s": 1.0}),
            record(2, StepKind.ORG_VIA_SWITCHOVER, freeze_s=0.9, targets={"freeze_s": 2.0}),
            record(3, StepKind.FAILOVER, rto_s=3.1, ledger_lost=4, rpo_listed_exactly=True, verify="not run: A down",
                   targets={"rto_s": 5.0}),
            record(4, StepKind.FAILBACK, conflicts=0, rpo_lost_after_reconcile=0),
            record(5, StepKind.SWITCHOVER, freeze_s=0.5, targets={"freeze_s": 1.0})]


FINAL_OK = {"describe": "50 acknowledged: 0 lost, 0 doubled, 0 mismatched", "lost": [], "doubled": [],
            "mismatched": []}


def test_the_plan_runs_the_five_steps_of_the_issue_and_ends_where_it_started():
    plan = drill_plan()
    assert [s.kind for s in plan] == [StepKind.SWITCHOVER, StepKind.ORG_VIA_SWITCHOVER, StepKind.FAILOVER,
                                      StepKind.FAILBACK, StepKind.SWITCHOVER]
    assert [(s.source, s.target) for s in plan] == [("A", "B"), ("B", "A"), ("A", "B"), ("B", "B"), ("B", "A")]
    # each step starts from the primary the step before left
    assert all(plan[i].source == plan[i - 1].target for i in range(1, len(plan)))
    assert plan[1].params["changeset"].endswith("vn-2025-two-tier/changeset.yaml")
    assert plan[3].params == {"site": "A", "primary": "B"}


def test_step_status_follows_its_table():
    assert StepStatus.PENDING.to(StepStatus.RUNNING) is StepStatus.RUNNING
    assert StepStatus.RUNNING.to(StepStatus.INTERRUPTED) is StepStatus.INTERRUPTED
    with pytest.raises(ValueError, match="from done to running"):
        StepStatus.DONE.to(StepStatus.RUNNING)
    with pytest.raises(ValueError, match="from pending to done"):
        StepStatus.PENDING.to(StepStatus.DONE)


def test_a_clean_drill_has_no_problems_and_passes():
    steps = good_drill()
    assert correctness_problems(steps, FINAL_OK, "clean") == []
    table = slo_verdicts(steps, green_p99_ms=42, lag_samples_s=[0.1, 0.2, 0.3] * 100, requests=1000, failures=2,
                         slos=SLOS, green_samples=400)
    assert all(s.passed for s in table), [s for s in table if not s.passed]
    v = verdict([], table, interrupted=False)
    assert v["exit_code"] == 0 and v["passed"] and v["line"].startswith("PASS")


def test_the_failovers_expected_loss_is_not_a_problem_but_a_loss_after_reconcile_is():
    steps = good_drill()
    steps[3]["rpo_lost_after_reconcile"] = 2
    problems = correctness_problems(steps, FINAL_OK, "clean")
    assert problems == ["step 4 (failback): 2 acknowledged numbers missing after reconcile (0 conflicts listed)"]


def test_a_loss_after_reconcile_listed_as_conflicts_is_not_a_problem():
    steps = good_drill()
    steps[3].update(rpo_lost_after_reconcile=2, conflicts=2, ledger_lost=2)
    steps[4].update(ledger_lost=2)
    final = {**FINAL_OK, "lost": ["100000000011", "100000000021"]}
    assert correctness_problems(steps, final, "clean") == []


def test_doubles_verify_differences_unnamed_losses_and_failed_steps_are_problems():
    steps = good_drill()
    steps[0].update(ledger_doubled=1, ledger="10 acknowledged: 0 lost, 1 doubled, 0 mismatched")
    steps[1]["verify"] = "differences"
    steps[2]["rpo_listed_exactly"] = False
    steps[4].update(status="failed", error="catch_up: timed out")
    problems = correctness_problems(steps, {**FINAL_OK, "doubled": ["x"], "describe": "1 doubled"}, "differences")
    assert any("after step 1" in p and "1 doubled" in p for p in problems)
    assert any("verify found differences after step 2" in p for p in problems)
    assert any("did not name every number" in p for p in problems)
    assert any("step 5 (switchover) failed: catch_up: timed out" in p for p in problems)
    assert "final ledger: 1 doubled" in problems and "the final verify found differences" in problems
    assert verdict(problems, [], interrupted=False)["exit_code"] == 1


def test_a_lost_number_after_a_planned_switchover_is_a_problem():
    steps = good_drill()
    steps[0].update(ledger_lost=1, ledger="10 acknowledged: 1 lost, 0 doubled, 0 mismatched")
    assert correctness_problems(steps, FINAL_OK, "clean") == [
        "after step 1 (switchover): 10 acknowledged: 1 lost, 0 doubled, 0 mismatched"]


def test_slow_freezes_and_rto_and_switchover_errors_miss_their_slos_and_exit_3():
    steps = good_drill()
    steps[0]["freeze_s"], steps[1]["freeze_s"], steps[2]["rto_s"] = 1.4, 2.5, 6.0
    steps[4]["client_errors"] = 3
    table = {s.name: s for s in slo_verdicts(steps, green_p99_ms=250, lag_samples_s=[0.9] * 300, requests=100,
                                             failures=5, slos=SLOS, green_samples=500)}
    assert table["planned switchover freeze (max)"].measured == "1.40 s" and not table[
        "planned switchover freeze (max)"].passed
    assert table["client errors during planned switchovers"].measured == "3"
    assert not table["org restructure freeze through a switchover"].passed
    assert not table["failover RTO (kill -9 → new primary accepts)"].passed
    assert table["green-lane decision p99 (steady seconds)"].measured == "250 ms"
    assert table["replication lag p99 (steady seconds)"].measured == "900 ms"
    assert table["client error rate (whole drill)"].measured == "5.00 %"
    assert not any(s.passed for s in table.values())
    v = verdict([], list(table.values()), interrupted=False)
    assert v["exit_code"] == 3 and v["line"].startswith("FAIL (SLO)") and len(v["reasons"]) == 7
    assert step_misses(steps[0]) == ["step 1 (switchover) freeze 1.40 s > 1 s"]
    assert step_misses(steps[4]) == ["step 5 (switchover) 3 client errors (target 0)"]


def test_what_was_not_measured_is_said_not_passed():
    steps = [record(1, StepKind.SWITCHOVER, status="skipped")]
    table = slo_verdicts(steps, green_p99_ms=None, lag_samples_s=[], requests=0, failures=0, slos=SLOS)
    assert {s.passed for s in table} == {None} and {s.measured for s in table} == {"not measured"}


def test_a_drill_stopped_by_the_operator_exits_130_unless_something_was_lost():
    assert verdict([], [], interrupted=True)["exit_code"] == 130
    assert verdict(["final ledger: 1 lost"], [], interrupted=True)["exit_code"] == 1


def test_steady_seconds_leave_out_every_step_and_the_checks_after_it():
    steps = [{"kind": "switchover", "frozen_at": 100.0, "resumed_at": 100.5, "started_at": 98.0, "ended_at": 103.0,
              "checked_at": 106.0},
             {"kind": "failover", "started_at": 120.0, "ended_at": 125.0, "checked_at": None},
             {"kind": "switchover", "started_at": None}]
    spans = disturbed_spans(steps, grace_s=2.0)
    assert spans == [(98.0, 108.0), (120.0, 127.0)]
    assert steady(97.0, 90, 200, spans) and not steady(101.0, 90, 200, spans) and not steady(107.0, 90, 200, spans)
    assert not steady(126.0, 90, 200, spans) and steady(127.5, 90, 200, spans)
    assert not steady(89.0, 90, 200, spans) and not steady(200.0, 90, 200, spans)


def test_the_steady_p99_ignores_the_seconds_of_a_freeze():
    from collections import Counter

    key = ("DECISION", "green")
    hist = {key: {ts: Counter({20: 99}) for ts in range(100, 130)}}
    hist[key][110] = Counter({900: 50})  # a freeze's held decisions
    spans = [(109.5, 111.0)]
    assert steady_percentile(hist, key, 99, 100, 130, spans) == 20.0
    assert steady_percentile(hist, key, 99, 100, 130, []) == 900.0


def test_a_beat_from_the_primarys_previous_term_is_no_lag_figure():
    from standbyctl.drill.sampler import credible_lag, progress_line

    assert credible_lag(0.3, at=200.0, primary_since=150.0) == 0.3
    assert credible_lag(28.0, at=200.0, primary_since=190.0) is None  # beat of 172: before this term began
    assert credible_lag(10.5, at=200.0, primary_since=190.0) == 10.5  # within the slack of the first sample
    assert credible_lag(None, at=200.0, primary_since=0.0) is None
    assert progress_line("step 2 org-restructure", 12.3, 31.2, 0.214, 3) == \
        "  … step 2 org-restructure: 12 s; 31 req/s through the front, lag 0.21 s, 3 held"
    assert progress_line(None, None, None, None, 0) == "  … between steps; load —, lag —, 0 held"
    assert progress_line(None, None, 40.0, 0.1, 0, idle="final checks") == \
        "  … final checks; 40 req/s through the front, lag 0.10 s, 0 held"


def test_a_drill_that_broke_off_says_why_on_its_last_line_and_exits_1():
    v = verdict([], [], interrupted=False, broke_off="SitesUnfit: the front does not answer")
    assert v["exit_code"] == 1 and v["line"] == "FAIL (the drill broke off): SitesUnfit: the front does not answer"


def test_labels_of_neighbouring_short_steps_go_up_a_row():
    from standbyctl.drill.timeline import label_rows

    # a 730 s drill: the failover (7 s) and its failback start 30 s apart
    assert label_rows([220, 335, 432, 480, 612], width=730) == [0, 0, 0, 1, 0]
    assert label_rows([10, 12, 14], width=100) == [0, 1, 2]
    assert label_rows([], width=100) == []


def test_a_p99_over_too_few_values_is_shown_and_not_judged():
    steps = good_drill()
    table = {s.name: s for s in slo_verdicts(steps, green_p99_ms=120, lag_samples_s=[0.2] * 80, requests=100,
                                             failures=0, slos=SLOS, green_samples=119)}
    green, lag = table["green-lane decision p99 (steady seconds)"], table["replication lag p99 (steady seconds)"]
    assert green.passed is None and green.measured.startswith("120 ms over only 119 decisions: not judged")
    assert lag.passed is None and lag.measured.startswith("200 ms over only 80 samples: not judged")
    v = verdict([], list(table.values()), interrupted=False)
    assert v["exit_code"] == 0 and v["line"].endswith("5 of 7 SLOs judged and met")
