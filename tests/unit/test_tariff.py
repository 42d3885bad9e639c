"""Goods-line validation, the tariff loader and tax arithmetic, on plain values."""
from __future__ import annotations

import copy
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from standby.domain.errors import DomainError
from standby.domain.states import Kind
from standby.domain.tariff import (
    MAX_GOODS_LINES,
    VAT_RATES,
    GoodsLine,
    Tariff,
    assess,
    load_tariff,
    validate_line,
    validate_lines,
)

CONFIG = Path(__file__).resolve().parents[2] / "config" / "tariffs.yaml"
TARIFF = load_tariff(CONFIG)

# A tiny tariff with round numbers, so expected amounts can be worked out by hand.
SMALL = {
    "rates_date": "2025-06-30",
    "exchange_rates": {"VND": 1, "USD": 25000, "KRW": "19.3"},
    "chapters": {
        "30": {"import_duty": 0, "vat": 5},
        "44": {"import_duty": 5, "vat": 10, "export_duty": 5},
        "84": {"import_duty": 10, "vat": 10},
    },
    "headings": {"4401": {"export_duty": 2}, "8471": {"import_duty": 0}},
}


def good_line(**changes) -> dict:
    line = {"hs_code": "84713020", "description": "Máy tính xách tay, mới 100%", "quantity": "10", "unit": "PCE",
            "unit_price": "450.50", "currency": "USD", "origin": "CN"}
    line.update(changes)
    return line


def refusal(raw, index: int = 0):
    with pytest.raises(DomainError) as caught:
        validate_line(raw, index, TARIFF)
    assert caught.value.refusal.status == 422
    return caught.value.refusal


# --- the shipped tariff ------------------------------------------------------------------------------------------


def test_shipped_tariff_has_every_chapter_but_the_reserved_one():
    expected = {f"{n:02d}" for n in range(1, 98)} - {"77"}
    assert TARIFF.valid_chapters == expected
    assert TARIFF.exchange_rates["VND"] == 1
    assert {"USD", "EUR", "CNY", "JPY", "KRW", "THB"} <= set(TARIFF.exchange_rates)


def test_shipped_rates_look_like_an_mfn_schedule():
    rates = TARIFF.rates_for
    assert rates("87032399").import_duty >= 50  # cars: high
    assert rates("84818099").import_duty <= 5 and rates("85044090").import_duty <= 5  # machinery: low
    assert rates("22042100").import_duty >= 40  # wine: high
    assert (rates("30049099").import_duty, rates("30049099").vat) == (0, 5)  # medicines
    assert rates("26011100").export_duty > 0 and rates("44039900").export_duty > 0
    assert rates("84713020").export_duty == 0
    assert all(r.vat in VAT_RATES for r in [*TARIFF.chapters.values(), *TARIFF.headings.values()])


def test_tariff_mappings_are_read_only():
    with pytest.raises(TypeError):
        TARIFF.exchange_rates["USD"] = Decimal(1)  # type: ignore[index]


def test_heading_override_falls_back_to_chapter_for_missing_keys():
    tariff = Tariff.from_dict(SMALL)
    assert tariff.rates_for("44012200").import_duty == 5  # from chapter 44
    assert tariff.rates_for("44012200").export_duty == 2  # heading 4401 override
    assert tariff.rates_for("44071100").export_duty == 5  # chapter


# --- tax arithmetic on hand-computed examples ----------------------------------------------------------------------


def test_import_car_duty_and_vat_on_value_plus_duty():
    line = validate_line(good_line(hs_code="87032399", quantity="2", unit_price="20000.50"), 0, TARIFF)
    a = assess([line], Kind.IMPORT, TARIFF)
    # 2 x 20,000.50 USD x 26,100 = 1,044,026,100; duty 70% = 730,818,270; VAT 10% x 1,774,844,370 = 177,484,437
    assert (a.customs_value_vnd, a.duty_vnd, a.vat_vnd) == (1_044_026_100, 730_818_270, 177_484_437)
    assert a.total_vnd == 908_302_707
    assert a.lines[0].duty_rate == 70 and a.lines[0].vat_rate == 10


def test_rounding_is_half_up_to_whole_vnd_per_step():
    tariff = Tariff.from_dict(SMALL)
    line = validate_line(good_line(hs_code="84801000", quantity="1", unit_price="25", currency="VND"), 0, tariff)
    a = assess([line], Kind.IMPORT, tariff)
    # value 25; duty 10% = 2.5 -> 3 (half up, not to even); VAT 10% x 28 = 2.8 -> 3
    assert (a.customs_value_vnd, a.duty_vnd, a.vat_vnd, a.total_vnd) == (25, 3, 3, 6)
    line = validate_line(good_line(hs_code="84801000", quantity="3", unit_price="0.5", currency="KRW"), 0, tariff)
    a = assess([line], Kind.IMPORT, tariff)
    # value 1.5 x 19.3 = 28.95 -> 29; duty 2.9 -> 3; VAT 10% x 32 = 3.2 -> 3
    assert (a.customs_value_vnd, a.duty_vnd, a.vat_vnd) == (29, 3, 3)


def test_export_pays_export_duty_and_no_vat():
    tariff = Tariff.from_dict(SMALL)
    chips = validate_line(good_line(hs_code="44012200", quantity="100", unit="TNE", unit_price="150"), 0, tariff)
    boards = validate_line(good_line(hs_code="44101100", quantity="10", unit="MTQ", unit_price="200"), 1, tariff)
    a = assess([chips, boards], Kind.EXPORT, tariff)
    # chips: 100 x 150 x 25,000 = 375,000,000, 2% = 7,500,000; boards: 50,000,000 at chapter 44's 5% = 2,500,000
    assert [x.duty_vnd for x in a.lines] == [7_500_000, 2_500_000]
    assert a.vat_vnd == 0 and all(x.vat_rate == 0 for x in a.lines)
    assert (a.customs_value_vnd, a.duty_vnd, a.total_vnd) == (425_000_000, 10_000_000, 10_000_000)


def test_medicines_are_duty_free_with_five_percent_vat():
    tariff = Tariff.from_dict(SMALL)
    line = validate_line(good_line(hs_code="30049099", quantity="1000", unit_price="1.25"), 0, tariff)
    a = assess([line], Kind.IMPORT, tariff)
    assert (a.customs_value_vnd, a.duty_vnd, a.vat_vnd) == (31_250_000, 0, 1_562_500)


def test_totals_are_sums_of_lines_and_zero_price_is_allowed():
    raw = [good_line(), good_line(unit_price="0"), good_line(hs_code="61091010", quantity="3")]
    lines = validate_lines(raw, TARIFF)
    a = assess(lines, Kind.IMPORT, TARIFF)
    assert a.lines[1].customs_value_vnd == 0 and a.lines[1].total_vnd == 0
    assert a.customs_value_vnd == sum(x.customs_value_vnd for x in a.lines)
    assert a.total_vnd == a.duty_vnd + a.vat_vnd == sum(x.total_vnd for x in a.lines)


# --- validation: one test per refusal code ---------------------------------------------------------------------------


def test_valid_line_accepts_json_numbers_and_strings():
    line = validate_line(good_line(quantity=12, unit_price=3.1, description="  Laptop  "), 0, TARIFF)
    assert line == GoodsLine("84713020", "Laptop", Decimal(12), "PCE", Decimal("3.1"), "USD", "CN")
    assert line.chapter == "84" and line.heading == "8471"


@pytest.mark.parametrize("value", ["8471302", "847130201", "8471302a", "84.71.30.20", 84713020, None,
                                   "77000000", "98000000", "00000000", "８４７１３０２０"])
def test_hs_code_invalid(value):
    r = refusal(good_line(hs_code=value), 4)
    assert (r.code, r.field) == ("hs_code_invalid", "goods[4].hs_code")
    assert r.message.startswith("goods[4].hs_code ")


def test_hs_code_missing():
    raw = good_line()
    del raw["hs_code"]
    assert refusal(raw).code == "hs_code_invalid"


@pytest.mark.parametrize("value", ["", "   ", "x" * 201, None, 42])
def test_description_invalid(value):
    r = refusal(good_line(description=value))
    assert (r.code, r.field) == ("description_invalid", "goods[0].description")


@pytest.mark.parametrize("value", ["0", 0, "-1", -3.5, "abc", "1e3", "1_000", "1000000001", 10**30, float("nan"),
                                   float("inf"), True, None, "1.2345", [], {}])
def test_quantity_invalid(value):
    r = refusal(good_line(quantity=value), 2)
    assert (r.code, r.field) == ("quantity_invalid", "goods[2].quantity")


def test_quantity_upper_bound_is_inclusive():
    assert validate_line(good_line(quantity="1000000000"), 0, TARIFF).quantity == 10**9


def test_decimal_places_match_the_stored_columns():
    line = validate_line(good_line(quantity="0.001", unit_price="0.0001"), 0, TARIFF)
    assert (line.quantity, line.unit_price) == (Decimal("0.001"), Decimal("0.0001"))
    assert validate_line(good_line(quantity="2.500000"), 0, TARIFF).quantity == Decimal("2.5")  # trailing zeros
    assert validate_line(good_line(unit_price="0.000000"), 0, TARIFF).unit_price == 0


@pytest.mark.parametrize("value", ["kg", "", None, "XYZ", 1])
def test_unit_invalid(value):
    r = refusal(good_line(unit=value))
    assert (r.code, r.field) == ("unit_invalid", "goods[0].unit")


@pytest.mark.parametrize("value", ["-1", -0.01, "NaN", "Infinity", float("inf"), float("nan"), True, None, "ten",
                                   10**13, "1.23456"])
def test_value_invalid(value):
    r = refusal(good_line(unit_price=value))
    assert (r.code, r.field) == ("value_invalid", "goods[0].unit_price")


def test_negative_price_is_named_as_such():
    assert "negative" in refusal(good_line(unit_price="-5")).message


@pytest.mark.parametrize("value", ["usd", "GBP", "US", 840, None, ""])
def test_currency_unknown(value):
    r = refusal(good_line(currency=value))
    assert (r.code, r.field) == ("currency_unknown", "goods[0].currency")


@pytest.mark.parametrize("value", ["cn", "CHN", "C1", "", None, 86, "Ｃ Ｎ"])
def test_origin_invalid(value):
    r = refusal(good_line(origin=value))
    assert (r.code, r.field) == ("origin_invalid", "goods[0].origin")


@pytest.mark.parametrize("raw", [["84713020"], "84713020", None, 7])
def test_line_that_is_not_an_object(raw):
    r = refusal(raw, 1)
    assert (r.code, r.field) == ("goods_line_invalid", "goods[1]")


@pytest.mark.parametrize("raw", [[], None, {"0": good_line()}, "goods", 3])
def test_goods_missing(raw):
    with pytest.raises(DomainError) as caught:
        validate_lines(raw, TARIFF)
    assert (caught.value.refusal.code, caught.value.refusal.field) == ("goods_missing", "goods")


def test_too_many_lines():
    assert len(validate_lines([good_line()] * MAX_GOODS_LINES, TARIFF)) == 50
    with pytest.raises(DomainError) as caught:
        validate_lines([good_line()] * (MAX_GOODS_LINES + 1), TARIFF)
    r = caught.value.refusal
    assert (r.code, r.field, r.status) == ("too_many_lines", "goods", 422)
    assert "51" in r.message and "50" in r.message


def test_fault_in_a_later_line_names_its_index():
    with pytest.raises(DomainError) as caught:
        validate_lines([good_line(), good_line(), good_line(origin="vn")], TARIFF)
    assert caught.value.refusal.field == "goods[2].origin"


# --- loader errors ------------------------------------------------------------------------------------------------


def broken(path: str, value) -> dict:
    """SMALL with the value at a dotted path replaced (or deleted when value is ...)."""
    d = copy.deepcopy(SMALL)
    *parents, last = path.split(".")
    target = d
    for key in parents:
        target = target[key]
    if value is ...:
        del target[last]
    else:
        target[last] = value
    return d


@pytest.mark.parametrize("d, named", [
    (broken("chapters.77", {"import_duty": 0, "vat": 10}), "chapters.77"),
    (broken("chapters.98", {"import_duty": 0, "vat": 10}), "chapters.98"),
    (broken("chapters.84.vat", 7), "chapters.84.vat"),
    (broken("chapters.84.import_duty", -1), "chapters.84.import_duty"),
    (broken("chapters.84.import_duty", "ten"), "chapters.84.import_duty"),
    (broken("chapters.84.vta", 10), "'vta'"),
    (broken("chapters.84.vat", ...), "chapters.84"),
    (broken("chapters.84", 5), "chapters.84"),
    (broken("headings.9999", {"import_duty": 1}), "headings.9999"),
    (broken("headings.847", {"import_duty": 1}), "headings.847"),
    (broken("headings.8471", {"export_duty": 101}), "headings.8471.export_duty"),
    (broken("exchange_rates.USD", -25000), "exchange_rates.USD"),
    (broken("exchange_rates.usd", 25000), "exchange_rates.usd"),
    (broken("exchange_rates.VND", 2), "exchange_rates.VND"),
    (broken("exchange_rates", ...), "exchange_rates"),
    (broken("chapters", {}), "chapters"),
    (broken("rates_date", ...), "rates_date"),
    (broken("surprise", 1), "'surprise'"),
    ({**SMALL, "chapters": {84: {"import_duty": 0, "vat": 10}}}, "chapters"),
])
def test_loader_names_the_bad_key(d, named):
    with pytest.raises(ValueError) as caught:
        Tariff.from_dict(d)
    assert named in str(caught.value)


@pytest.mark.parametrize("d", [None, [], "tariff"])
def test_loader_rejects_a_non_mapping(d):
    with pytest.raises(ValueError):
        Tariff.from_dict(d)


# --- property tests ------------------------------------------------------------------------------------------------

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30),
                         st.decimals().map(str))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)), max_leaves=10)
plausible = {
    "hs_code": st.one_of(st.sampled_from(["84713020", "77000000", "30049099", "8471302"]),
                         st.from_regex(r"[0-9]{8}", fullmatch=True)),
    "description": st.text(max_size=220),
    "quantity": st.one_of(st.decimals(allow_nan=True).map(str), st.integers(), st.floats(),
                          st.from_regex(r"-?[0-9]{1,12}(\.[0-9]{1,8})?", fullmatch=True)),
    "unit": st.sampled_from(["PCE", "KGM", "kg", "SET", ""]),
    "unit_price": st.one_of(st.decimals(allow_nan=True).map(str), st.integers(), st.floats(),
                            st.from_regex(r"-?[0-9]{1,14}(\.[0-9]{1,8})?", fullmatch=True)),
    "currency": st.sampled_from(["USD", "JPY", "VND", "usd", "GBP"]),
    "origin": st.one_of(st.sampled_from(["CN", "VN", "cn"]), st.text(max_size=3)),
}
lines = st.one_of(
    json_values,
    st.fixed_dictionaries({}, optional={k: st.one_of(v, json_values) for k, v in plausible.items()}),
    st.fixed_dictionaries({k: v for k, v in plausible.items()}),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=lines, index=st.integers(0, 60))
def test_validate_line_raises_only_domain_errors(raw, index):
    try:
        line = validate_line(raw, index, TARIFF)
    except DomainError as e:
        assert e.refusal.status == 422 and e.refusal.field.startswith(f"goods[{index}]")
        return
    for kind in Kind:
        a = assess([line], kind, TARIFF)
        amounts = [a.customs_value_vnd, a.duty_vnd, a.vat_vnd, a.total_vnd]
        assert all(type(x) is int and x >= 0 for x in amounts)
        assert a.total_vnd == a.duty_vnd + a.vat_vnd


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.one_of(json_values, st.lists(lines, max_size=60)))
def test_validate_lines_raises_only_domain_errors(raw):
    try:
        accepted = validate_lines(raw, TARIFF)
    except DomainError as e:
        assert e.refusal.status == 422
        return
    a = assess(accepted, Kind.IMPORT, TARIFF)
    assert len(a.lines) == len(accepted) <= MAX_GOODS_LINES
    assert all(x.customs_value_vnd >= 0 and x.duty_vnd >= 0 and x.vat_vnd >= 0 for x in a.lines)
