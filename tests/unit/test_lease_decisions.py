"""The lease keeper's decisions, pure: when to renew, and what a renewal's answer leads to."""
import pytest

from standby.domain.states import IntakeState as I, SiteRole
from standby.lease import LeaseMove, Renewal, RenewalOutcome as R, after_renewal, due, keeps_lease
from standby.settings import LeaseSettings
from standby.store.site import SiteControl

LEASE = LeaseSettings()  # ttl 3.0, renew every 0.5, retry timeout 0.75, margin 0.5: self-fence 2.5 s after a start


def row(role=SiteRole.PRIMARY, epoch=3, state=I.OPEN, lease_until=100.0, primary="A") -> SiteControl:
    return SiteControl("A", role, epoch, state, primary, updated_at=0.0, lease_until=lease_until)


@pytest.mark.parametrize("control", [row(role=SiteRole.STANDBY, primary="B"),
                                     row(role=SiteRole.STANDBY, state=I.FENCED, primary="B"),
                                     row(state=I.FENCED), None])
def test_a_standby_a_fenced_site_or_no_row_never_renews(control):
    assert not keeps_lease(control)
    assert due(control, last_started=None, now=0.0, lease=LEASE).move is LeaseMove.NOTHING


@pytest.mark.parametrize("state", [I.OPEN, I.FROZEN])
def test_a_primary_open_or_frozen_keeps_a_lease(state):
    assert keeps_lease(row(state=state))


def test_a_primary_renews_every_renew_interval_after_its_last_attempt():
    assert due(row(), last_started=10.0, now=10.49, lease=LEASE).move is LeaseMove.NOTHING
    step = due(row(), last_started=10.0, now=10.5, lease=LEASE)
    assert (step.move, step.epoch) == (LeaseMove.RENEW, 3)


def test_a_primary_without_a_deadline_or_a_first_round_renews_at_once():
    assert due(row(lease_until=None), last_started=10.0, now=10.01, lease=LEASE).move is LeaseMove.RENEW
    assert due(row(), last_started=None, now=10.01, lease=LEASE).move is LeaseMove.RENEW


def test_a_renewal_writes_the_deadline_from_its_start_not_from_its_answer():
    step = after_renewal("A", row(), 3, started_at=200.0, renewal=Renewal(R.RENEWED), lease=LEASE)
    assert (step.move, step.epoch, step.until) == (LeaseMove.WRITE_DEADLINE, 3, 202.5)
    assert step.until == 200.0 + LEASE.ttl_s - LEASE.fence_margin_s


def test_a_renewal_for_an_epoch_the_row_left_writes_nothing():
    assert after_renewal("A", row(epoch=4), 3, 200.0, Renewal(R.RENEWED), LEASE).move is LeaseMove.NOTHING
    fenced = row(role=SiteRole.STANDBY, state=I.FENCED, primary="B")
    assert after_renewal("A", fenced, 3, 200.0, Renewal(R.RENEWED), LEASE).move is LeaseMove.NOTHING


def test_superseded_by_another_site_under_a_newer_epoch_fences():
    step = after_renewal("A", row(), 3, 200.0, Renewal(R.SUPERSEDED, epoch=4, primary="B", reason="stale"), LEASE)
    assert (step.move, step.epoch, step.primary) == (LeaseMove.FENCE, 4, "B")


@pytest.mark.parametrize("epoch,primary", [(4, "A"), (3, "B"), (2, "B"), (0, None), (4, None)])
def test_superseded_without_another_primary_under_a_newer_epoch_does_not_fence(epoch, primary):
    # the witness names this site at a newer epoch (a promotion of it under way), or is behind the row, or empty
    step = after_renewal("A", row(), 3, 200.0, Renewal(R.SUPERSEDED, epoch=epoch, primary=primary), LEASE)
    assert step.move is LeaseMove.NOTHING and "names" in step.reason


def test_no_answer_does_nothing_the_deadline_written_stands():
    step = after_renewal("A", row(), 3, 200.0, Renewal(R.UNAVAILABLE, reason="connection refused"), LEASE)
    assert (step.move, step.reason) == (LeaseMove.NOTHING, "connection refused")


def test_no_answer_for_a_primary_without_a_deadline_fences_it_at_once():
    # just promoted (promote clears lease_until) and the witness out of reach: no writes without a lease
    step = after_renewal("A", row(lease_until=None), 3, 200.0, Renewal(R.UNAVAILABLE, reason="timed out"), LEASE)
    assert (step.move, step.epoch, step.until) == (LeaseMove.WRITE_DEADLINE, 3, 200.0)
    assert "timed out" in step.reason
