"""The synthetic population: reproducible, realistic shares, and always valid input for the engine."""
from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from standby import synthetic
from standby.domain.states import Kind
from standby.domain.tariff import MAX_GOODS_LINES, assess, load_tariff, validate_lines
from standby.synthetic import EnterpriseProfile, registration_block

TARIFF = load_tariff(Path(__file__).resolve().parents[2] / "config" / "tariffs.yaml")
POPULATION = synthetic.make_population(random.Random(7), 20_000)


def mst_check_digit(first9: str) -> str:
    """Written out independently of the module: weights of the General Department of Taxation, mod 11."""
    total = sum(w * int(d) for w, d in zip((31, 29, 23, 19, 17, 13, 7, 5, 3), first9))
    return str(10 - total % 11)


def share(predicate, items) -> float:
    return sum(1 for x in items if predicate(x)) / len(items)


# --- enterprises ----------------------------------------------------------------------------------------------


def test_same_seed_same_population():
    assert synthetic.make_population(random.Random(1), 200) == synthetic.make_population(random.Random(1), 200)
    assert synthetic.make_population(random.Random(1), 200) != synthetic.make_population(random.Random(2), 200)


def test_check_digit_matches_real_tax_codes():
    # Published head-office codes: check digit agrees with the independent implementation above.
    assert mst_check_digit("010023348") == "8" and mst_check_digit("031440905") == "8"


def test_tax_codes_are_unique_well_formed_and_carry_the_province():
    codes = [p.tax_code for p in POPULATION]
    assert len(set(codes)) == len(codes)
    for code in codes:
        assert code.isascii() and code.isdigit() and len(code) in (10, 13)
        assert code[:2] in synthetic.TAX_PROVINCE_CODES
        assert code[9] == mst_check_digit(code[:9])
        assert code[2:9] != "0000000"
        assert len(code) == 10 or code[10:] != "000"
    assert 0.04 <= share(lambda c: len(c) == 13, codes) <= 0.06


def test_tax_code_is_unique_by_index_and_keeps_the_given_prefix():
    codes = {synthetic.tax_code_for("79", i) for i in range(5_000)}
    assert len(codes) == 5_000 and all(c.startswith("79") and len(c) == 10 for c in codes)
    assert synthetic.make_enterprise(random.Random(0), 42, "01").tax_code[:10] == synthetic.tax_code_for("01", 42)


@pytest.mark.parametrize("province, index", [("1", 0), ("0a", 0), ("01", -1), ("01", 1_000_000)])
def test_tax_code_rejects_bad_arguments(province, index):
    with pytest.raises(ValueError):
        synthetic.tax_code_for(province, index)


def test_status_and_debt_shares():
    assert 0.007 <= share(lambda p: p.status == "suspended", POPULATION) <= 0.013
    assert 0.003 <= share(lambda p: p.status == "dissolved", POPULATION) <= 0.007
    assert 0.011 <= share(lambda p: p.tax_debt_days > 90, POPULATION) <= 0.019
    assert all(p.status in synthetic.STATUSES for p in POPULATION)
    ordinary = [p.tax_debt_days for p in POPULATION if p.tax_debt_days <= 90]
    assert max(ordinary) <= 60 and share(lambda d: d == 0, ordinary) > 0.8


def test_risk_class_shares_and_ages():
    counts = Counter(p.risk_class for p in POPULATION)
    for risk_class, expected in synthetic.ENTERPRISE_CLASSES.items():
        assert abs(counts[risk_class] / len(POPULATION) - expected) < 0.015, (risk_class, counts)
    assert abs(sum(synthetic.ENTERPRISE_CLASSES.values()) - 1) < 1e-9
    assert all((p.age_days < 365) == (p.risk_class == "new") for p in POPULATION)


def test_names_are_vietnamese_company_names():
    assert all(p.name.startswith(("Công ty TNHH ", "Công ty Cổ phần ")) for p in POPULATION)
    assert len({p.name for p in POPULATION}) > 5_000


# --- registration blocks --------------------------------------------------------------------------------------


def profile(**changes) -> EnterpriseProfile:
    base = dict(tax_code="0100233488", name="Công ty TNHH Thương mại An Phú", risk_class="good", status="active",
                tax_debt_days=0, age_days=4000)
    return EnterpriseProfile(**{**base, **changes})


@pytest.mark.parametrize("changes, words", [
    ({"status": "suspended"}, "suspended"),
    ({"status": "dissolved", "tax_debt_days": 200}, "dissolved"),
    ({"tax_debt_days": 91}, "91 days"),
])
def test_registration_block_says_why(changes, words):
    reason = registration_block(profile(**changes))
    assert reason is not None and words in reason and "0100233488" in reason and reason.endswith(".")


@pytest.mark.parametrize("days", [0, 60, 90])
def test_no_block_for_active_enterprise_with_debt_up_to_90_days(days):
    assert registration_block(profile(tax_debt_days=days)) is None


def test_about_three_percent_of_the_population_is_blocked():
    assert 0.02 <= share(lambda p: registration_block(p) is not None, POPULATION) <= 0.04


# --- goods and payloads -------------------------------------------------------------------------------------


def sample_declarations(kind: Kind, count: int, seed: int = 11) -> list[list[dict]]:
    rng = random.Random(seed)
    return [synthetic.make_goods_lines(rng, kind, TARIFF) for _ in range(count)]


IMPORTS = sample_declarations(Kind.IMPORT, 3_000)
EXPORTS = sample_declarations(Kind.EXPORT, 2_000)


def test_generated_lines_always_validate_and_assess():
    for kind, declarations in ((Kind.IMPORT, IMPORTS), (Kind.EXPORT, EXPORTS)):
        for goods in declarations:
            a = assess(validate_lines(goods, TARIFF), kind, TARIFF)
            assert a.customs_value_vnd > 0


def test_line_counts_are_mostly_small_with_a_tail_to_the_limit():
    counts = [len(g) for g in IMPORTS + EXPORTS]
    assert min(counts) == 1 and max(counts) <= MAX_GOODS_LINES
    assert 0.78 <= share(lambda n: n <= 5, counts) <= 0.90
    assert any(n > 20 for n in counts)
    assert len(synthetic.make_goods_lines(random.Random(3), Kind.IMPORT, TARIFF, n=50)) == 50


def test_chapters_and_origins_look_like_real_trade():
    import_lines = [line for g in IMPORTS for line in g]
    chapters = Counter(line["hs_code"][:2] for line in import_lines)
    assert {"84", "85", "39", "72", "87", "52", "30", "94"} <= set(chapters)
    assert chapters["84"] + chapters["85"] > chapters["87"] > chapters["93"]
    assert share(lambda g: g[0]["hs_code"].startswith("93"), IMPORTS) < 0.01
    origins = Counter(line["origin"] for line in import_lines)
    assert origins.most_common(1)[0][0] == "CN" and origins["KR"] > origins["US"]
    assert share(lambda g: g[0]["origin"] == "VN", EXPORTS) > 0.85
    assert share(lambda g: g[0]["currency"] == "USD", IMPORTS) > 0.6


def test_declaration_values_average_near_the_national_figure():
    rng = random.Random(5)
    values = []
    for _ in range(4_000):
        goods = synthetic.make_goods_lines(rng, Kind.IMPORT, TARIFF)
        values.append(assess(validate_lines(goods, TARIFF), Kind.IMPORT, TARIFF).customs_value_vnd)
    mean_usd = sum(values) / len(values) / 26_100
    assert 25_000 <= mean_usd <= 90_000  # 2024: US$780 bn / 16.8 M declarations = ~US$46k


def test_payload_is_json_ready_and_reproducible():
    make = lambda: synthetic.make_declaration_payload(random.Random(9), Kind.EXPORT, "0100233488", "02CI", TARIFF)
    payload = make()
    assert payload == make() == json.loads(json.dumps(payload))
    assert (payload["kind"], payload["enterprise_tax_code"], payload["office_code"]) == ("export", "0100233488", "02CI")
    assert all(isinstance(v, str) for line in payload["goods"] for v in line.values())


def test_risk_facts_are_computed_from_profile_payload_and_assessment():
    payload = {"kind": "import", "enterprise_tax_code": "0100233488", "office_code": "01B1", "goods": [
        {"hs_code": "87032399", "description": "Ô tô con", "quantity": "1", "unit": "PCE", "unit_price": "30000",
         "currency": "USD", "origin": "JP"},
        {"hs_code": "87089999", "description": "Phụ tùng", "quantity": "10", "unit": "PCE", "unit_price": "20",
         "currency": "USD", "origin": "TH"},
    ]}
    assessment = assess(validate_lines(payload["goods"], TARIFF), Kind.IMPORT, TARIFF)
    facts = synthetic.risk_facts_for(profile(age_days=100), payload, assessment, "10000000042")
    assert facts.kind is Kind.IMPORT and facts.enterprise_risk_class == "good" and facts.enterprise_age_days == 100
    assert facts.hs_chapters == {"87"} and facts.hs_headings == {"8703", "8708"} and facts.origins == {"JP", "TH"}
    assert facts.customs_value_vnd == 30_200 * 26_100 and facts.line_count == 2
    assert (facts.office_code, facts.declaration_base) == ("01B1", "10000000042")
