import pytest

from standby.domain.errors import IllegalTransition, StaleEpoch
from standby.domain.states import (
    DECLARATION_TRANSITIONS,
    INTAKE_TRANSITIONS,
    DeclarationEvent as E,
    DeclarationState as S,
    EpochRule,
    IntakeState as I,
    Kind,
    SiteRole,
    next_declaration_state,
    next_intake_state,
    next_role,
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


def test_freeze_and_resume_need_the_same_epoch():
    assert next_intake_state(I.OPEN, I.FROZEN, current_epoch=3, epoch=3) is I.FROZEN
    assert next_intake_state(I.FROZEN, I.OPEN, current_epoch=3, epoch=3) is I.OPEN
    for stale in (2, 4):  # a resume by a runbook that lost track of the epoch, in either direction
        with pytest.raises(StaleEpoch) as err:
            next_intake_state(I.FROZEN, I.OPEN, current_epoch=3, epoch=stale)
        assert err.value.refusal.code == "stale_epoch" and err.value.refusal.status == 409
        assert (err.value.current_epoch, err.value.epoch) == (3, stale)


@pytest.mark.parametrize("current", [I.OPEN, I.FROZEN])
def test_fencing_needs_a_newer_epoch(current):
    assert next_intake_state(current, I.FENCED, current_epoch=3, epoch=4) is I.FENCED
    for not_newer in (3, 2):
        with pytest.raises(StaleEpoch):
            next_intake_state(current, I.FENCED, current_epoch=3, epoch=not_newer)


@pytest.mark.parametrize("target", [I.OPEN, I.FROZEN])
def test_a_fenced_site_leaves_fenced_only_with_a_newer_epoch_a_promotion(target):
    assert next_intake_state(I.FENCED, target, current_epoch=3, epoch=5) is target
    for not_newer in (3, 1):
        with pytest.raises(StaleEpoch):
            next_intake_state(I.FENCED, target, current_epoch=3, epoch=not_newer)


def test_an_older_epoch_is_refused_for_every_listed_transition():
    for (current, target) in INTAKE_TRANSITIONS:
        with pytest.raises(StaleEpoch):
            next_intake_state(current, target, current_epoch=7, epoch=6)


def test_every_unlisted_intake_transition_is_illegal_whatever_the_epoch():
    for current in I:
        for target in I:
            if (current, target) in INTAKE_TRANSITIONS:
                continue
            for epoch in (6, 7, 8):
                with pytest.raises(IllegalTransition):
                    next_intake_state(current, target, current_epoch=7, epoch=epoch)


def test_the_table_names_an_epoch_rule_for_every_transition():
    assert all(rules and rules <= set(EpochRule) for rules in INTAKE_TRANSITIONS.values())
    assert INTAKE_TRANSITIONS[(I.FROZEN, I.OPEN)] == {EpochRule.SAME}
    assert INTAKE_TRANSITIONS[(I.FENCED, I.OPEN)] == {EpochRule.NEWER}


def test_role_changes_need_a_newer_epoch():
    assert next_role(SiteRole.STANDBY, SiteRole.PRIMARY, current_epoch=1, epoch=2) is SiteRole.PRIMARY
    assert next_role(SiteRole.PRIMARY, SiteRole.STANDBY, current_epoch=1, epoch=2) is SiteRole.STANDBY
    with pytest.raises(StaleEpoch):
        next_role(SiteRole.STANDBY, SiteRole.PRIMARY, current_epoch=2, epoch=2)
    with pytest.raises(IllegalTransition):
        next_role(SiteRole.PRIMARY, SiteRole.PRIMARY, current_epoch=2, epoch=3)


def test_kind_sections_and_messages():
    assert (Kind.IMPORT.section, Kind.EXPORT.section) == ("01", "02")
    assert (Kind.IMPORT.predeclare_message, Kind.IMPORT.register_message, Kind.IMPORT.amend_message) == \
        ("IDA", "IDC", "IDE")
    assert (Kind.EXPORT.predeclare_message, Kind.EXPORT.register_message, Kind.EXPORT.amend_message) == \
        ("EDA", "EDC", "EDE")
