"""The rule that gives a new site database its role and epoch from the witness (plain values, nothing opened)."""
from __future__ import annotations

import pytest

from cutover.witness import WitnessState
from cutover.witness.roles import InitialRole, KeepExisting, Refusal, disagreement, initial_role
from standby.domain.states import SiteRole

P, S = SiteRole.PRIMARY, SiteRole.STANDBY
EMPTY = WitnessState(epoch=0, primary_site=None)
A_AT_1 = WitnessState(epoch=1, primary_site="A")
B_AT_3 = WitnessState(epoch=3, primary_site="B")


def test_the_first_primary_initialises_an_empty_witness():
    assert initial_role("A", P, EMPTY, False) == InitialRole(P, 1, "A", initialise_witness=True)


@pytest.mark.parametrize("requested", [None, S])
def test_no_primary_on_an_empty_witness_is_refused_with_what_to_say(requested):
    refusal = initial_role("B", requested, EMPTY, False)
    assert isinstance(refusal, Refusal)
    assert "no primary yet" in refusal.reason and "standbyctl db upgrade --site B --role primary" in refusal.reason


def test_a_second_primary_is_refused_naming_the_primary_and_its_epoch():
    refusal = initial_role("A", P, B_AT_3, False)
    assert isinstance(refusal, Refusal)
    assert "site B primary at epoch 3" in refusal.reason and "roles change through a runbook" in refusal.reason


@pytest.mark.parametrize("requested", [None, S])
def test_other_sites_become_standbys_of_the_witness_primary_at_its_epoch(requested):
    assert initial_role("A", requested, B_AT_3, False) == InitialRole(S, 3, "B")
    assert initial_role("C", requested, A_AT_1, False) == InitialRole(S, 1, "A")


def test_the_yaml_order_plays_no_part():
    # Site "A" is first in every settings file; the witness says B is primary: A is a standby.
    assert initial_role("A", None, WitnessState(epoch=2, primary_site="B"), False).role is S


@pytest.mark.parametrize("requested", [None, P, S])
def test_rebuilding_the_primary_after_a_promotion_is_refused(requested):
    refusal = initial_role("B", requested, B_AT_3, False)
    assert isinstance(refusal, Refusal)
    assert "primary with no data" in refusal.reason and "Restore" in refusal.reason and "fail over" in refusal.reason


@pytest.mark.parametrize("requested", [None, P])
def test_an_unfinished_first_setup_is_recreated_at_epoch_1_with_a_caution(requested):
    decided = initial_role("A", requested, A_AT_1, False)
    assert isinstance(decided, InitialRole)
    assert (decided.role, decided.epoch, decided.initialise_witness) == (P, 1, False)
    assert "restore" in decided.note


def test_the_witness_primary_cannot_be_created_as_a_standby():
    refusal = initial_role("A", S, A_AT_1, False)
    assert isinstance(refusal, Refusal) and "cannot be created as a standby" in refusal.reason


def test_a_used_witness_without_a_primary_is_refused():
    assert isinstance(initial_role("A", P, WitnessState(epoch=4, primary_site=None), False), Refusal)


def test_an_existing_control_row_is_kept():
    assert initial_role("A", None, A_AT_1, True, P, 1) == KeepExisting()
    kept = initial_role("A", S, A_AT_1, True, P, 1)
    assert kept == KeepExisting(note="the existing control row says primary; roles change only through a runbook")


def test_an_old_primary_row_disagreeing_with_the_witness_is_kept_with_a_warning():
    kept = initial_role("A", None, B_AT_3, True, P, 1)
    assert isinstance(kept, KeepExisting) and not kept.adopt and "A must be fenced" in kept.note


def test_a_deployment_older_than_the_witness_is_adopted_only_when_asked_for_and_consistent():
    assert initial_role("A", P, EMPTY, True, P, 1) == KeepExisting(adopt=True)
    hint = initial_role("A", None, EMPTY, True, P, 1)
    assert not hint.adopt and "--role primary" in hint.note
    assert not initial_role("B", P, EMPTY, True, S, 1).adopt  # a standby's row is never made primary here
    lost = initial_role("A", P, EMPTY, True, P, 5)
    assert isinstance(lost, Refusal) and "epoch 5" in lost.reason and "witness was lost" in lost.reason


@pytest.mark.parametrize("site, role, epoch, state, words", [
    ("A", P, 1, A_AT_1, None),
    ("A", S, 3, B_AT_3, None),
    ("A", P, 1, B_AT_3, "names B primary at epoch 3"),
    ("B", S, 1, B_AT_3, "a promotion did not finish"),
    ("C", S, 1, B_AT_3, None),  # a standby (e.g. a fenced old primary) keeps the epoch it last served under
    ("B", P, 2, B_AT_3, "primary at epoch 2, the witness at epoch 3"),
    ("A", P, 1, EMPTY, None),
])
def test_disagreement(site, role, epoch, state, words):
    found = disagreement(site, role, epoch, state)
    assert (found is None) if words is None else (words in found)
