"""The watch's decision, rule by rule, from plain values (cutover/watch/decide.py), and the pure helpers the loop
feeds it with (the flap guard's time from the audit, unfinished runs)."""
from __future__ import annotations

from dataclasses import replace

import pytest

from cutover.watch.decide import (RULE_DECISION, Decision, HealthHistory, Observation, Rule, configured_standby,
                                  decide)
from cutover.watch.loop import last_automatic_failover, unfinished_runs
from cutover.witness.contract import AuditRecord, RunRecord, WitnessState
from standby.domain.states import SiteRole
from standby.settings import WatchSettings

NOW = 1_000_000.0
SETTINGS = WatchSettings(interval_s=0.5, health_timeout_s=0.5, failures_before_failover=3, flap_guard_s=600)
EXPIRED = WitnessState(epoch=4, primary_site="A", lease_holder="A", lease_expires_at=NOW - 0.1)

# Everything a failover needs: A failed 3 checks, its lease expired, B is its only standby, nothing blocks.
DUE = Observation(site="B", now=NOW, witness=EXPIRED, local_role=SiteRole.STANDBY, local_primary="A", failures=3,
                  last_failure="ConnectError at http://127.0.0.1:8401", configured_standby="B",
                  standby_rule="B is the only other site")


def verdict(obs: Observation = DUE, auto: bool = True, settings: WatchSettings = SETTINGS):
    return decide(obs, settings, auto)


def test_every_rule_leads_to_one_decision():
    assert set(RULE_DECISION) == set(Rule)


def test_all_conditions_met_in_automatic_mode_fails_over_from_the_primary_to_this_site():
    v = verdict()
    assert (v.decision, v.rule, v.primary, v.epoch) == (Decision.FAIL_OVER, Rule.FAILOVER_DUE, "A", 4)
    assert "A -> B" in v.reason and "3 health checks in a row" in v.reason and "lease expired" in v.reason


def test_an_unreachable_witness_means_no_decision():
    v = verdict(replace(DUE, witness=None, witness_error="database is locked"))
    assert (v.decision, v.rule) == (Decision.CANNOT_DECIDE, Rule.WITNESS_UNREACHABLE)
    assert "database is locked" in v.reason


def test_no_primary_in_the_witness_means_nothing_to_do():
    v = verdict(replace(DUE, witness=WitnessState(epoch=0, primary_site=None)))
    assert (v.decision, v.rule) == (Decision.NOTHING, Rule.NO_PRIMARY)


def test_the_primary_own_watch_never_fails_over():
    v = verdict(replace(DUE, site="A", local_role=SiteRole.PRIMARY, local_primary="A"))
    assert (v.decision, v.rule) == (Decision.NOTHING, Rule.SELF_PRIMARY)


def test_a_healthy_primary_means_nothing_even_with_its_lease_expired():
    v = verdict(replace(DUE, failures=0, last_failure=""))
    assert (v.decision, v.rule) == (Decision.NOTHING, Rule.PRIMARY_HEALTHY)


def test_fewer_failed_checks_than_the_setting_waits():
    v = verdict(replace(DUE, failures=2))
    assert (v.decision, v.rule) == (Decision.WAIT, Rule.HEALTH_FAILING)
    assert "needs 3" in v.reason


def test_a_failing_primary_whose_lease_is_still_valid_waits_whatever_else_holds():
    v = verdict(replace(DUE, witness=replace(EXPIRED, lease_expires_at=NOW + 0.8)))
    assert (v.decision, v.rule) == (Decision.WAIT, Rule.LEASE_VALID)
    assert "0.8 s more" in v.reason


def test_a_lease_that_expires_exactly_now_has_expired():
    assert verdict(replace(DUE, witness=replace(EXPIRED, lease_expires_at=NOW))).decision is Decision.FAIL_OVER


def test_no_lease_at_all_counts_as_expired():
    v = verdict(replace(DUE, witness=replace(EXPIRED, lease_holder=None, lease_expires_at=None)))
    assert v.decision is Decision.FAIL_OVER and "holds no lease under epoch 4" in v.reason


@pytest.mark.parametrize("role, follows", [(SiteRole.PRIMARY, "B"), (SiteRole.STANDBY, "C"), (None, None)])
def test_a_site_whose_control_row_is_not_a_standby_of_the_failed_primary_is_not_eligible(role, follows):
    v = verdict(replace(DUE, local_role=role, local_primary=follows, local_error="OperationalError: no such file"))
    assert (v.decision, v.rule) == (Decision.NOT_ELIGIBLE, Rule.NOT_ITS_STANDBY)


def test_a_standby_that_is_not_the_configured_one_leaves_it_to_the_other_watch():
    v = verdict(replace(DUE, configured_standby="C", standby_rule="C is A's partner in sync.pairs"))
    assert (v.decision, v.rule) == (Decision.NOT_ELIGIBLE, Rule.OTHER_STANDBY)
    assert "C" in v.reason


def test_without_a_configured_standby_among_several_nobody_fails_over_automatically():
    v = verdict(replace(DUE, configured_standby=None, standby_rule="A has 2 possible standbys (B, C)"))
    assert (v.decision, v.rule) == (Decision.NOT_ELIGIBLE, Rule.NO_CONFIGURED_STANDBY)


def test_an_unfinished_run_blocks_the_failover_and_is_named():
    v = verdict(replace(DUE, runs_in_progress=("switchover-20261129T200000Z-abc123",)))
    assert (v.decision, v.rule) == (Decision.BLOCKED_BY_RUN, Rule.RUN_IN_PROGRESS)
    assert "switchover-20261129T200000Z-abc123" in v.reason


def test_an_automatic_failover_within_the_flap_guard_blocks_another():
    v = verdict(replace(DUE, last_auto_failover_at=NOW - 599))
    assert (v.decision, v.rule) == (Decision.BLOCKED_BY_FLAP_GUARD, Rule.FLAP_GUARD)
    assert "599 s ago" in v.reason and "600 s" in v.reason


def test_the_flap_guard_ends_after_its_period():
    assert verdict(replace(DUE, last_auto_failover_at=NOW - 600)).decision is Decision.FAIL_OVER


def test_a_last_failover_stamped_in_the_future_still_holds_the_guard():
    # Clocks of watch processes may disagree; the safe side is to wait.
    assert verdict(replace(DUE, last_auto_failover_at=NOW + 5)).decision is Decision.BLOCKED_BY_FLAP_GUARD


def test_manual_mode_only_observes_and_says_what_automatic_mode_would_do():
    v = verdict(auto=False)
    assert (v.decision, v.rule, v.would) == (Decision.OBSERVE_ONLY, Rule.MANUAL_MODE, Decision.FAIL_OVER)
    assert "standbyctl runbook run failover --param from=A --param to=B" in v.reason


def test_manual_mode_reports_that_the_flap_guard_would_block():
    v = verdict(replace(DUE, last_auto_failover_at=NOW - 10), auto=False)
    assert (v.decision, v.would) == (Decision.OBSERVE_ONLY, Decision.BLOCKED_BY_FLAP_GUARD)


def test_manual_mode_does_not_hide_an_earlier_rule():
    assert verdict(replace(DUE, failures=1), auto=False).decision is Decision.WAIT


def test_the_key_ignores_the_numbers_in_the_reason_but_not_the_primary_or_epoch():
    a, b = verdict(replace(DUE, failures=1)), verdict(replace(DUE, failures=2))
    assert a.reason != b.reason and a.key == b.key
    assert verdict(replace(DUE, failures=1, witness=replace(EXPIRED, epoch=5))).key != a.key


def test_health_history_counts_consecutive_failures_and_restarts_for_a_new_primary_or_epoch():
    h = HealthHistory().after("A", 4, False, "timeout").after("A", 4, False, "refused")
    assert (h.failures, h.last_failure, h.checks) == (2, "refused", 2)
    assert h.after("A", 4, True).failures == 0
    assert h.after("A", 5, False, "x").failures == 1
    assert h.after("C", 4, False, "x").failures == 1


def test_the_configured_standby_is_the_sync_partner_else_the_only_other_site():
    assert configured_standby("A", ["A", "B", "C"], "C")[0] == "C"
    assert configured_standby("A", ["A", "B"], None)[0] == "B"
    standby, why = configured_standby("A", ["A", "B", "C"], None)
    assert standby is None and "B, C" in why


def _audit(action: str, outcome: str, at: float) -> AuditRecord:
    return AuditRecord(at=at, operator="watch@B", action=action, target="B", args={}, outcome=outcome)


def test_the_last_automatic_failover_is_the_newest_fail_over_decision_in_the_audit():
    records = [_audit("watch.decide", "blocked_by_flap_guard", 30.0), _audit("watch.failover", "done", 21.0),
               _audit("watch.decide", "fail_over", 20.0), _audit("runbook.run", "started", 20.5),
               _audit("watch.decide", "fail_over", 5.0)]
    assert last_automatic_failover(records) == (20.0, False)
    assert last_automatic_failover([_audit("watch.decide", "wait", 1.0)]) == (None, False)


def test_a_last_automatic_failover_its_runbook_refused_is_told_apart():
    refused = [_audit("watch.failover", "refused", 20.4), _audit("watch.decide", "fail_over", 20.0),
               _audit("watch.failover", "done", 5.2), _audit("watch.decide", "fail_over", 5.0)]
    assert last_automatic_failover(refused) == (20.0, True)
    assert last_automatic_failover(refused[1:]) == (20.0, False), "no outcome yet (running): the full guard"


def test_a_refused_attempt_holds_the_guard_only_for_refused_retry_s():
    assert SETTINGS.refused_retry_s == 30
    blocked = verdict(replace(DUE, last_auto_failover_at=NOW - 29, last_auto_failover_refused=True))
    assert blocked.decision is Decision.BLOCKED_BY_FLAP_GUARD and "refused by its preconditions" in blocked.reason
    again = verdict(replace(DUE, last_auto_failover_at=NOW - 30, last_auto_failover_refused=True))
    assert again.decision is Decision.FAIL_OVER


def test_unfinished_runs_are_those_not_in_a_terminal_status():
    def run(run_id: str, status: str) -> RunRecord:
        return RunRecord(run_id, "failover", "ops", {}, status, 1.0, 1.0)
    runs = [run("r1", "done"), run("r2", "running"), run("r3", "failed"), run("r4", "rolling_back")]
    assert unfinished_runs(runs) == ("r2", "r4")
