"""The intake gate is pure: plain control rows in, one decision out."""
from dataclasses import dataclass

import pytest

from standby.domain.states import IntakeState as I, SiteRole
from standby.intake_gate import HOLD_CODE, Admission, GateDecision, decide


@dataclass(frozen=True)
class Row:
    role: SiteRole = SiteRole.PRIMARY
    epoch: int = 3
    intake_state: I = I.OPEN
    primary_site: str | None = "A"
    lease_until: float | None = None


def test_an_open_primary_admits():
    decision = decide("A", Row())
    assert decision.admission is Admission.ADMIT and decision.admitted and not decision.held
    assert decision.code == "" and decision.status == 200


def test_no_control_row_refuses_site_uninitialised():
    decision = decide("A", None)
    assert (decision.admission, decision.code, decision.status) == (Admission.REFUSE, "site_uninitialised", 503)
    assert "site A" in decision.message


def test_a_standby_refuses_not_primary_naming_the_primary():
    decision = decide("B", Row(role=SiteRole.STANDBY, primary_site="A"))
    assert (decision.admission, decision.code, decision.primary_site) == (Admission.REFUSE, "not_primary", "A")
    assert "site A" in decision.message and decision.retry_after_s


@pytest.mark.parametrize("state", [I.OPEN, I.FROZEN])
def test_a_standby_is_not_primary_whatever_its_unfenced_intake_state(state):
    decision = decide("B", Row(role=SiteRole.STANDBY, intake_state=state, primary_site="A"))
    assert decision.code == "not_primary"


def test_a_fenced_old_primary_says_fenced_and_names_the_new_primary():
    decision = decide("A", Row(role=SiteRole.STANDBY, intake_state=I.FENCED, primary_site="B"))
    assert (decision.admission, decision.code, decision.primary_site) == (Admission.REFUSE, "fenced", "B")
    assert "site B" in decision.message


def test_a_fenced_primary_refuses_fenced():
    decision = decide("A", Row(intake_state=I.FENCED))
    assert (decision.admission, decision.code, decision.status) == (Admission.REFUSE, "fenced", 503)
    assert decision.primary_site is None  # the row still names itself: no new primary is known here


def test_a_fenced_row_naming_another_primary_passes_it_on():
    assert decide("A", Row(intake_state=I.FENCED, primary_site="B")).primary_site == "B"


def test_the_authority_names_the_primary_when_the_row_names_this_site():
    assert decide("A", Row(intake_state=I.FENCED), authority_primary="B").primary_site == "B"
    stale = decide("A", Row(epoch=3), authority_epoch=4, authority_primary="B")
    assert (stale.code, stale.primary_site) == ("stale_epoch", "B")


@pytest.mark.parametrize("state", [I.OPEN, I.FROZEN])
def test_a_newer_authority_epoch_refuses_stale_epoch(state):
    decision = decide("A", Row(epoch=3, intake_state=state), authority_epoch=4)
    assert (decision.admission, decision.code, decision.status) == (Admission.REFUSE, "stale_epoch", 503)
    assert "epoch 3" in decision.message and "epoch 4" in decision.message


@pytest.mark.parametrize("authority", [None, 3, 2])
def test_the_current_or_an_older_or_unknown_authority_epoch_does_not_refuse(authority):
    assert decide("A", Row(epoch=3), authority_epoch=authority).admitted


def test_a_frozen_primary_holds():
    decision = decide("A", Row(intake_state=I.FROZEN))
    assert decision.admission is Admission.HOLD and decision.held
    assert (decision.code, decision.status, decision.retry_after_s) == (HOLD_CODE, 503, 1)


def test_the_rules_apply_in_order_fenced_before_standby_before_stale_before_frozen():
    assert decide("B", Row(role=SiteRole.STANDBY, intake_state=I.FENCED), authority_epoch=9).code == "fenced"
    assert decide("B", Row(role=SiteRole.STANDBY), authority_epoch=9).code == "not_primary"
    assert decide("A", Row(intake_state=I.FROZEN), authority_epoch=9).code == "stale_epoch"


def test_the_decision_is_a_frozen_value():
    decision = decide("A", Row())
    assert decision == GateDecision(Admission.ADMIT, primary_site="A")
    with pytest.raises(AttributeError):
        decision.code = "x"  # type: ignore[misc]


def test_every_refusal_code_is_listed_as_one_and_the_hold_code_is_not():
    from standby.intake_gate import REFUSAL_CODES
    refusals = {decide("A", None).code, decide("A", Row(intake_state=I.FENCED)).code,
                decide("B", Row(role=SiteRole.STANDBY)).code, decide("A", Row(), authority_epoch=9).code,
                decide("A", Row(lease_until=5.0), now=5.0).code}
    assert refusals == REFUSAL_CODES and HOLD_CODE not in REFUSAL_CODES
