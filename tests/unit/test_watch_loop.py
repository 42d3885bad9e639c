"""The watch's loop against a real SQLite witness with a stepped clock: each change of decision audited once, the
failover's decision audited before the runbook runs, one failover and then the flap guard (also for a new watch
process and after a failed run), manual mode never acting. The health check and the runbook are injected
callables here; tests/integration/test_watch.py runs the real ones."""
from __future__ import annotations

import pytest

from cutover.watch.decide import Decision
from cutover.watch.loop import DECIDE_ACTION, FAILOVER_ACTION, FailoverResult, WatchLoop
from cutover.witness import open_witness
from standby.domain.states import IntakeState, SiteRole
from standby.settings import Settings, SiteSettings, WatchSettings
from standby.store.site import SiteControl

T0 = 1_700_000_000.0
SETTINGS = Settings(sites={"A": SiteSettings(site_digit=1, database_url="sqlite:///a.db"),
                           "B": SiteSettings(site_digit=2, database_url="sqlite:///b.db")},
                    watch=WatchSettings(interval_s=0.1, health_timeout_s=0.1, failures_before_failover=2,
                                        flap_guard_s=600))


class World:
    """The witness, a stepped clock, the primary's health and site B's control row as the loop sees them."""

    def __init__(self, path):
        self.now = T0
        self.witness = open_witness(f"sqlite:///{path / 'witness.db'}", clock=lambda: self.now)
        self.witness.initialise("A")
        self.healthy = True
        self.b_follows: str | None = "A"  # None: B is the primary
        self.failover_calls: list[tuple[str, str, list[str]]] = []
        self.failover_status = "done"

    def control_b(self) -> SiteControl:
        role = SiteRole.PRIMARY if self.b_follows is None else SiteRole.STANDBY
        return SiteControl("B", role, self.witness.state().epoch, IntakeState.OPEN, self.b_follows or "B", self.now)

    def run_failover(self, old: str, new: str) -> FailoverResult:
        # What the audit held when the runbook was asked to run: the decision must be there already.
        self.failover_calls.append((old, new, [r.outcome for r in self.decisions()]))
        if self.failover_status == "done":
            self.witness.promote(new, self.witness.state().epoch)
            self.b_follows = None
        return FailoverResult(f"failover-{len(self.failover_calls)}", self.failover_status)

    def loop(self, auto: bool = True) -> WatchLoop:
        return WatchLoop("B", SETTINGS, self.witness, site_urls={"A": "http://a", "B": "http://b"},
                         read_local=self.control_b, operator="watch@B", auto=auto, run_failover=self.run_failover,
                         check=lambda url: (self.healthy, "" if self.healthy else f"ConnectError at {url}"),
                         clock=lambda: self.now, sleep=self.advance)

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def decisions(self) -> list:
        return [r for r in reversed(self.witness.audit_records(1000)) if r.action == DECIDE_ACTION]

    def outcomes(self) -> list[str]:
        return [r.outcome for r in self.decisions()]


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    yield w
    w.witness.close()


def ticks(loop: WatchLoop, world: World, n: int) -> list[Decision]:
    out = []
    for _ in range(n):
        out.append(loop.tick().decision)
        world.advance(SETTINGS.watch.interval_s)
    return out


def test_each_change_of_decision_is_audited_once_and_the_failover_runs_once(world):
    loop = world.loop()
    assert set(ticks(loop, world, 5)) == {Decision.NOTHING}
    died = world.now
    world.witness.renew_lease("A", 1, 0.5, died)
    world.healthy = False  # A dies with 0.5 s of lease left
    seen = ticks(loop, world, 10)
    assert seen[:2] == [Decision.WAIT, Decision.WAIT] and seen.count(Decision.FAIL_OVER) == 1
    assert world.outcomes() == ["nothing", "wait", "wait", "fail_over", "nothing"]
    rules = [r.detail["rule"] for r in world.decisions()]
    assert rules == ["primary_healthy", "health_failing", "lease_valid", "failover_due", "self_primary"]
    assert world.failover_calls == [("A", "B", ["nothing", "wait", "wait", "fail_over"])]
    decided = world.decisions()[3]
    assert decided.operator == "watch@B" and decided.target == "B" and "A -> B" in decided.detail["reason"]
    assert decided.at >= died + 0.5  # never while the lease ran
    runs = [r for r in world.witness.audit_records(100) if r.action == FAILOVER_ACTION]
    assert [(r.outcome, r.args["run_id"]) for r in runs] == [("done", "failover-1")]
    assert world.witness.state().primary_site == "B"


def test_the_flap_guard_holds_for_a_new_watch_process_and_ends_after_its_period(world):
    world.healthy = False
    ticks(world.loop(), world, 3)
    assert len(world.failover_calls) == 1
    # A is named primary again (by hand) and dies at once; B follows it again. A new watch process starts.
    world.witness.promote("A", world.witness.state().epoch)
    world.b_follows = "A"
    loop = world.loop()
    assert ticks(loop, world, 5)[-1] is Decision.BLOCKED_BY_FLAP_GUARD
    assert len(world.failover_calls) == 1
    blocked = world.decisions()[-1]
    assert blocked.outcome == "blocked_by_flap_guard" and "flap guard" in blocked.detail["reason"]
    assert world.outcomes().count("blocked_by_flap_guard") == 1  # audited once, not every round
    world.advance(600)
    assert loop.tick().decision is Decision.FAIL_OVER and len(world.failover_calls) == 2


def test_a_failed_failover_is_not_tried_again_within_the_guard(world):
    world.failover_status = "failed"
    world.healthy = False
    seen = ticks(world.loop(), world, 6)
    assert seen.count(Decision.FAIL_OVER) == 1 and seen[-1] is Decision.BLOCKED_BY_FLAP_GUARD
    runs = [r for r in world.witness.audit_records(100) if r.action == FAILOVER_ACTION]
    assert [r.outcome for r in runs] == ["failed"]


def test_manual_mode_reports_what_it_would_do_and_never_runs_the_failover(world):
    world.healthy = False
    assert ticks(world.loop(auto=False), world, 6)[-1] is Decision.OBSERVE_ONLY
    assert world.failover_calls == []
    observed = world.decisions()[-1]
    assert observed.outcome == "observe_only" and observed.detail["would"] == "fail_over"
    assert world.witness.state().primary_site == "A"
