import pytest
from hypothesis import given, strategies as st

from standby.domain.errors import DomainError
from standby.domain.numbers import MAX_AMENDMENTS, DeclarationNumber


def test_layout_site_digit_sequence_amendment():
    n = DeclarationNumber(2, 1234)
    assert str(n) == "200000012340" and n.base == "20000001234" and len(str(n)) == 12


def test_amendment_increments_the_twelfth_digit_only():
    n = DeclarationNumber(1, 42)
    a1 = n.amended()
    assert str(a1) == "100000000421" and a1.base == n.base
    assert str(a1.amended()) == "100000000422"


def test_amendment_limit_is_a_clear_refusal():
    n = DeclarationNumber(1, 7, MAX_AMENDMENTS)
    with pytest.raises(DomainError) as err:
        n.amended()
    assert err.value.refusal.code == "amendment_limit" and err.value.refusal.status == 409


@given(st.integers(1, 9), st.integers(0, 10**10 - 1), st.integers(0, 9))
def test_parse_round_trips(digit, seq, amendment):
    n = DeclarationNumber(digit, seq, amendment)
    assert DeclarationNumber.parse(str(n)) == n


@given(st.integers(1, 9), st.integers(1, 9), st.integers(0, 10**10 - 1), st.integers(0, 10**10 - 1))
def test_two_sites_never_share_a_number(d1, d2, s1, s2):
    if d1 != d2:
        assert DeclarationNumber(d1, s1).base != DeclarationNumber(d2, s2).base


@pytest.mark.parametrize("bad", ["", "12345", "0000000000001", "012345678901", "12345678901a", "1234567890123", None])
def test_parse_refuses_malformed(bad):
    with pytest.raises(DomainError) as err:
        DeclarationNumber.parse(bad)
    assert err.value.refusal.code == "number_invalid" and err.value.refusal.status == 400
