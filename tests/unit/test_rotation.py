import pytest

from standby.domain.errors import DomainError
from standby.domain.rotation import pick_officer


def test_rotation_goes_round_the_registered_list():
    officers, cursor, picked = ["a", "b", "c"], 0, []
    for _ in range(7):
        officer, cursor = pick_officer(officers, cursor, "01CA", "01")
        picked.append(officer)
    assert picked == ["a", "b", "c", "a", "b", "c", "a"]


def test_cursor_past_a_shrunken_list_wraps():
    assert pick_officer(["a", "b"], 5, "01CA", "02") == ("b", 2)


def test_no_officer_is_a_clear_refusal_naming_office_and_section():
    with pytest.raises(DomainError) as err:
        pick_officer([], 0, "01CA", "02")
    assert err.value.refusal.code == "no_officer"
    assert "01CA" in err.value.refusal.message and "02" in err.value.refusal.message
