"""The lease keeper and the lease gate on a real SQLite site: the deadline written from a renewal's start, a renewal
refused under a newer epoch fencing the site, a hung renewal never doubled, a standby never renewing, and a batch
whose deadline passes while it runs rolled back whole (not even its idempotency records written)."""
from __future__ import annotations

import random
import threading

import pytest
from sqlalchemy import event, func, select

from standby.api.metrics import SiteMetrics
from standby.clearance.commands import Command, Op, Principal, Role
from standby.clearance.pipeline import ClearancePipeline
from standby.domain.states import IntakeState, Kind, SiteRole
from standby.lease import LeaseKeeper, LeaseMove, Renewal, RenewalOutcome
from standby.settings import LeaseSettings
from standby.store.schema import declarations, idempotency_keys
from standby.store.site import fence, promote, read_control, resume, set_lease
from standby.synthetic import make_declaration_payload
from tests.conftest import make_site_db
from tests.integration.http_helpers import OFFICE

LEASE = LeaseSettings(ttl_s=1.0, renew_interval_s=0.2, retry_timeout_s=0.1, fence_margin_s=0.3)  # self-fence 0.7 s


class Clock:
    """Wall-clock time the test sets by hand."""

    def __init__(self, at: float = 1000.0):
        self.at = at

    def __call__(self) -> float:
        return self.at


class Witness:
    """A renew function with a fixed answer that remembers its calls: (site, epoch, ttl_s, now)."""

    def __init__(self, answer: Renewal, gate: threading.Event | None = None):
        self.answer, self.gate, self.calls = answer, gate, []

    def __call__(self, site_id: str, epoch: int, ttl_s: float, now: float) -> Renewal:
        self.calls.append((site_id, epoch, ttl_s, now))
        if self.gate is not None:
            self.gate.wait(30)
        return self.answer


@pytest.fixture(scope="module")
def site(tmp_path_factory, org):
    return make_site_db(tmp_path_factory.mktemp("lease"), org, enterprises_count=200, officers_per_section=1)


@pytest.fixture
def engine(site):
    engine = site.engine()
    control = read_control(engine, "A")
    if control.role is not SiteRole.PRIMARY:  # a previous test fenced it: make it primary again, newer epoch
        control = promote(engine, "A", epoch=(control.fenced_epoch or control.epoch) + 1)
    if control.intake_state is IntakeState.FROZEN:
        resume(engine, "A", epoch=control.epoch)
    yield engine
    engine.dispose()


def keeper(engine, renew, clock, metrics=None) -> LeaseKeeper:
    return LeaseKeeper("A", engine, renew, LEASE, clock=clock, sleep=lambda s: None, metrics=metrics)


def test_a_renewal_writes_the_deadline_from_its_start_and_shows_it(engine):
    clock, metrics = Clock(), SiteMetrics("A")
    renew = Witness(Renewal(RenewalOutcome.RENEWED))
    epoch = read_control(engine, "A").epoch
    step = keeper(engine, renew, clock, metrics).tick()
    assert (step.move, step.until) == (LeaseMove.WRITE_DEADLINE, 1000.7)
    assert renew.calls == [("A", epoch, 1.0, 1000.0)]
    assert read_control(engine, "A").lease_until == pytest.approx(1000.7)
    clock.at = 1000.2
    keeper(engine, renew, clock, metrics).tick()  # a fresh keeper renews at once; the gauge read the row first
    assert metrics.registry.get_sample_value("standby_lease_remaining_seconds", {"site": "A"}) == pytest.approx(0.5)


def test_a_failed_renewal_leaves_the_deadline_and_is_counted(engine):
    clock, metrics = Clock(2000.0), SiteMetrics("A")
    keeper(engine, Witness(Renewal(RenewalOutcome.RENEWED)), clock).tick()
    down = keeper(engine, Witness(Renewal(RenewalOutcome.UNAVAILABLE, reason="connection refused")), clock, metrics)
    clock.at = 2000.5
    assert down.tick().move is LeaseMove.NOTHING
    assert read_control(engine, "A").lease_until == pytest.approx(2000.7)
    assert metrics.registry.get_sample_value("standby_lease_renewal_failures_total",
                                             {"site": "A", "reason": "unavailable"}) == 1


def test_a_renewal_refused_under_a_newer_epoch_fences_the_site(engine):
    control = read_control(engine, "A")
    set_lease(engine, "A", epoch=control.epoch, until=5000.0)
    newer = control.epoch + 1
    step = keeper(engine, Witness(Renewal(RenewalOutcome.SUPERSEDED, epoch=newer, primary="B")), Clock()).tick()
    assert step.move is LeaseMove.FENCE
    fenced = read_control(engine, "A")
    assert (fenced.role, fenced.intake_state, fenced.primary_site, fenced.fenced_epoch, fenced.lease_until) == \
        (SiteRole.STANDBY, IntakeState.FENCED, "B", newer, None)


def test_a_standby_never_renews(engine):
    control = read_control(engine, "A")
    fence(engine, "A", epoch=control.epoch + 1, primary_site="B")
    renew = Witness(Renewal(RenewalOutcome.RENEWED))
    assert keeper(engine, renew, Clock()).tick().move is LeaseMove.NOTHING and renew.calls == []


def test_a_hung_renewal_is_waited_for_never_doubled_and_its_late_answer_counts_from_its_start(engine):
    clock, gate = Clock(3000.0), threading.Event()
    renew = Witness(Renewal(RenewalOutcome.RENEWED), gate)
    lease = keeper(engine, renew, clock)
    assert read_control(engine, "A").lease_until is None  # a primary that has not held a lease yet
    first = lease.tick()  # two attempts of retry_timeout_s each, on the one call
    assert (first.move, first.until) == (LeaseMove.WRITE_DEADLINE, 3000.0), "no lease and no answer: no writes"
    assert len(renew.calls) == 1 and read_control(engine, "A").lease_until == 3000.0
    clock.at = 3000.4
    gate.set()
    step = lease.tick()
    assert len(renew.calls) == 1, "the hung call's answer was taken, no second call made"
    assert step.until == pytest.approx(3000.7)  # from when the hung call started, not from its answer


def test_set_lease_writes_only_for_the_primary_at_its_epoch(engine):
    control = read_control(engine, "A")
    assert set_lease(engine, "A", epoch=control.epoch + 1, until=9.0).lease_until == control.lease_until
    assert set_lease(engine, "A", epoch=control.epoch, until=9.0).lease_until == 9.0
    fence(engine, "A", epoch=control.epoch + 1, primary_site="B")
    assert set_lease(engine, "A", epoch=control.epoch, until=10.0).lease_until is None


def test_promote_starts_without_a_lease(engine):
    control = read_control(engine, "A")
    set_lease(engine, "A", epoch=control.epoch, until=9.0)
    fence(engine, "A", epoch=control.epoch + 1, primary_site="B")
    assert promote(engine, "A", epoch=control.epoch + 2).lease_until is None


# --- the pipeline: the gate at the start of a batch and again right before its commit -----------------------------


def commands(site, tariff, n: int, prefix: str) -> list[Command]:
    rng, codes = random.Random(prefix), site.active_enterprises(20)
    operator = Principal(Role.OPERATOR, "ops")
    return [Command(Op.PRE_DECLARE, operator, f"{prefix}-{i}",
                    make_declaration_payload(rng, Kind.IMPORT, rng.choice(codes), OFFICE, tariff), OFFICE)
            for i in range(n)]


def counts(engine) -> tuple[int, int]:
    with engine.connect() as conn:
        return (conn.execute(select(func.count()).select_from(declarations)).scalar(),
                conn.execute(select(func.count()).select_from(idempotency_keys)).scalar())


@pytest.fixture
def pipeline(site, engine, tariff, rules):
    clock = Clock(100.0)
    set_lease(engine, "A", epoch=read_control(engine, "A").epoch, until=101.0)
    return ClearancePipeline(engine, "A", 1, tariff, rules, clock=clock), clock


def test_a_batch_before_the_deadline_commits(site, engine, tariff, pipeline):
    pipe, _ = pipeline
    before = counts(engine)
    assert [o.status for o in pipe.process(commands(site, tariff, 3, "before"))] == [201] * 3
    assert counts(engine) == (before[0] + 3, before[1] + 3)


def test_a_batch_at_the_deadline_is_refused_lease_expired_writing_nothing(site, engine, tariff, pipeline):
    pipe, clock = pipeline
    clock.at, before = 101.0, counts(engine)
    outcomes = pipe.process(commands(site, tariff, 3, "at"))
    assert {(o.status, o.body["error"]["code"]) for o in outcomes} == {(503, "lease_expired")}
    assert counts(engine) == before


def test_a_batch_whose_deadline_passes_while_it_runs_rolls_back_whole(site, engine, tariff, pipeline):
    pipe, clock = pipeline
    before = counts(engine)

    def time_passes(conn, cursor, statement, *_):  # the handlers ran and the rows are being written: 2 s go by
        if statement.lstrip().upper().startswith("INSERT INTO DECLARATIONS"):
            clock.at = 102.0
    event.listen(engine, "before_cursor_execute", time_passes)
    try:
        outcomes = pipe.process(commands(site, tariff, 3, "during"))
    finally:
        event.remove(engine, "before_cursor_execute", time_passes)
    assert clock.at == 102.0, "the batch reached its writes"
    assert {(o.status, o.body["error"]["code"]) for o in outcomes} == {(503, "lease_expired")}
    assert "could not renew its lease in the witness by" in outcomes[0].body["error"]["message"]
    assert counts(engine) == before, "nothing written, not even the idempotency records"
