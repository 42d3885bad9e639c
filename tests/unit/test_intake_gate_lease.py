"""The intake gate's lease check, pure: a primary past its self-fencing deadline refuses writes (lease_expired)."""
from functools import partial

import pytest

from standby.domain.states import IntakeState as I, SiteRole
from standby.intake_gate import LEASE_EXPIRED, REFUSAL_CODES, Admission, decide
from tests.unit.test_intake_gate import Row as PlainRow

Row = partial(PlainRow, lease_until=1000.0)  # a primary (epoch 3) whose self-fencing deadline is t = 1000


def test_a_primary_before_its_deadline_admits():
    assert decide("A", Row(), now=999.999).admitted


@pytest.mark.parametrize("now", [1000.0, 1000.001, 5000.0])
def test_a_primary_at_or_past_its_deadline_refuses_lease_expired(now):
    decision = decide("A", Row(), now=now)
    assert (decision.admission, decision.code, decision.status, decision.retry_after_s) == \
        (Admission.REFUSE, LEASE_EXPIRED, 503, 1)
    assert "could not renew its lease in the witness by 1970-01-01 00:16:40.000Z" in decision.message
    assert "refuses writes until it does" in decision.message and LEASE_EXPIRED in REFUSAL_CODES


def test_a_row_without_a_lease_keeps_no_lease_discipline():
    assert decide("A", Row(lease_until=None), now=1e12).admitted


def test_without_a_clock_the_lease_is_not_checked():
    assert decide("A", Row(), now=None).admitted


def test_a_frozen_primary_past_its_deadline_is_refused_not_held():
    # a hold promises a release; a site that cannot renew cannot promise one
    assert decide("A", Row(intake_state=I.FROZEN), now=1000.0).code == LEASE_EXPIRED
    assert decide("A", Row(intake_state=I.FROZEN), now=999.0).held


def test_fenced_not_primary_and_stale_epoch_come_before_the_lease():
    assert decide("A", Row(intake_state=I.FENCED, primary_site="B"), now=2000.0).code == "fenced"
    assert decide("B", Row(role=SiteRole.STANDBY), now=2000.0).code == "not_primary"
    stale = decide("A", Row(), now=2000.0, authority_epoch=4, authority_primary="B")
    assert (stale.code, stale.primary_site) == ("stale_epoch", "B")


def test_a_lease_left_on_a_standby_row_does_not_change_its_answer():
    assert decide("B", Row(role=SiteRole.STANDBY, lease_until=1.0), now=2.0).code == "not_primary"
