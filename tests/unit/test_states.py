import pytest

from standby.domain.errors import IllegalTransition
from standby.domain.states import (
    DECLARATION_TRANSITIONS,
    DeclarationEvent as E,
    DeclarationState as S,
    IntakeState,
    Kind,
    next_declaration_state,
    next_intake_state,
)


@pytest.mark.parametrize("state, event, expected", [
    (S.PRE_DECLARED, E.LANE_GREEN, S.AWAITING_PAYMENT),
    (S.PRE_DECLARED, E.LANE_YELLOW, S.DOCUMENT_CHECK),
    (S.PRE_DECLARED, E.LANE_RED, S.INSPECTION),
    (S.DOCUMENT_CHECK, E.OFFICER_APPROVE, S.AWAITING_PAYMENT),
    (S.INSPECTION, E.OFFICER_REJECT, S.REJECTED),
    (S.AWAITING_PAYMENT, E.DUTY_PAID, S.CLEARED),
    (S.AWAITING_PAYMENT, E.AMEND, S.PRE_DECLARED),
])
def test_legal_transitions(state, event, expected):
    assert next_declaration_state(state, event) is expected


def test_every_unlisted_pair_is_illegal():
    for state in S:
        for event in E:
            if (state, event) in DECLARATION_TRANSITIONS:
                continue
            with pytest.raises(IllegalTransition) as err:
                next_declaration_state(state, event)
            assert err.value.refusal.status == 409
            assert state.value in err.value.refusal.message


def test_terminal_states_have_no_way_out():
    for state in (S.CLEARED, S.REJECTED):
        assert state.is_terminal
        assert not [k for k in DECLARATION_TRANSITIONS if k[0] is state]


def test_inspection_cannot_be_amended_but_document_check_can():
    assert next_declaration_state(S.DOCUMENT_CHECK, E.AMEND) is S.PRE_DECLARED
    with pytest.raises(IllegalTransition):
        next_declaration_state(S.INSPECTION, E.AMEND)


def test_intake_transitions():
    assert next_intake_state(IntakeState.OPEN, IntakeState.FROZEN) is IntakeState.FROZEN
    assert next_intake_state(IntakeState.FROZEN, IntakeState.OPEN) is IntakeState.OPEN
    with pytest.raises(IllegalTransition):
        next_intake_state(IntakeState.OPEN, IntakeState.OPEN)
    with pytest.raises(IllegalTransition):
        next_intake_state(IntakeState.FENCED, IntakeState.FROZEN)


def test_kind_sections_and_messages():
    assert (Kind.IMPORT.section, Kind.EXPORT.section) == ("01", "02")
    assert (Kind.IMPORT.predeclare_message, Kind.IMPORT.register_message, Kind.IMPORT.amend_message) == \
        ("IDA", "IDC", "IDE")
    assert (Kind.EXPORT.predeclare_message, Kind.EXPORT.register_message, Kind.EXPORT.amend_message) == \
        ("EDA", "EDC", "EDE")
