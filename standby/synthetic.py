"""A realistic synthetic population of enterprises and declarations, for tests, load tests and calibration.

Everything here is pure: randomness comes only from the `random.Random` passed in, so a seed reproduces a
population exactly. Shares follow the figures in DESIGN §1 where there are any and are illustrative otherwise.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Mapping

from standby.domain.enterprise import TAX_DEBT_LIMIT_DAYS
from standby.domain.enterprise import registration_block as domain_registration_block
from standby.domain.risk import RiskFacts
from standby.domain.states import Kind
from standby.domain.tariff import MAX_GOODS_LINES, Assessment, Tariff

# Share of enterprises per risk class. `priority` is AEO-like (few firms, reduced checks); `new` is under a year old.
ENTERPRISE_CLASSES: Mapping[str, float] = {
    "priority": 0.04, "good": 0.34, "normal": 0.42, "watch": 0.06, "new": 0.14,
}
STATUSES = ("active", "suspended", "dissolved")
SUSPENDED_SHARE, DISSOLVED_SHARE, LONG_DEBT_SHARE = 0.01, 0.005, 0.015
TAX_DEBT_BLOCK_DAYS = TAX_DEBT_LIMIT_DAYS
BRANCH_SHARE = 0.05
IMPORT_SHARE = 0.55  # of declarations; the rest are exports
# Legacy two-digit tax-code prefixes of busy trading provinces (01 Hà Nội, 02 Hải Phòng, 03 TP. Hồ Chí Minh,
# 04 Đà Nẵng, 08 Hải Dương, 23 Bắc Ninh, 25 Vĩnh Phúc, 36 Đồng Nai, 37 Bình Dương), weighted by trade volume.
TAX_PROVINCE_CODES: Mapping[str, int] = {
    "01": 20, "02": 8, "03": 30, "04": 4, "08": 3, "23": 6, "25": 3, "36": 8, "37": 10,
}
# Illustrative four-character customs office codes in the VNACCS style (two digits + two letters/digits).
OFFICE_CODES = ("01B1", "02CI", "03CC", "34CE", "43IH")


_FORMS = ("Công ty TNHH", "Công ty TNHH MTV", "Công ty Cổ phần")
_TRADES = ("Thương mại", "Sản xuất", "Xuất nhập khẩu", "Dịch vụ", "Đầu tư", "Công nghệ", "Logistics", "Dệt may",
           "Thực phẩm", "Cơ khí", "Điện tử", "Nội thất")
# Brand names are two syllables, as in most Vietnamese trading names (Hoàng Long, Minh Phát, ...).
_BRAND_1 = ("Hoàng", "Minh", "Thành", "An", "Việt", "Hưng", "Phú", "Đại", "Tân", "Sao", "Hòa", "Bảo", "Nam",
            "Trường", "Kim", "Phương", "Đức", "Quang", "Thái", "Hải")
_BRAND_2 = ("Long", "Phát", "Công", "Phú", "Tiến", "Thịnh", "Gia", "Dương", "Cảng", "Mai", "Bình", "Ngọc",
            "Sơn", "Đông", "Anh", "Hà", "Lộc", "Khang", "Tín", "Nguyên")
_WEIGHTS = (31, 29, 23, 19, 17, 13, 7, 5, 3)  # General Department of Taxation check-digit weights


@dataclass(frozen=True)
class EnterpriseProfile:
    """What the engine knows of a declarant. `tax_debt_days`: days the oldest unpaid tax is overdue (0 = none)."""

    tax_code: str
    name: str
    risk_class: str
    status: str
    tax_debt_days: int
    age_days: int


def _check_digit(first9: str) -> int | None:
    """The tax code's 10th digit, or None when the first nine digits give no valid code."""
    digit = 10 - sum(w * int(c) for w, c in zip(_WEIGHTS, first9)) % 11
    return None if digit == 10 else digit


def tax_code_for(province_code: str, index: int) -> str:
    """The head-office tax code for enterprise `index` in a province: prefix, 7-digit sequence, check digit.

    Injective in `index` (< 1,000,000): digits 3-8 carry the index; digit 9 is the smallest of 1..9 that gives a
    valid check digit (two consecutive choices never both fail), so the sequence is never all zeros.
    """
    if len(province_code) != 2 or not province_code.isdigit() or not 0 <= index < 1_000_000:
        raise ValueError(f"need a 2-digit province code and 0 <= index < 1,000,000, got {province_code!r}, {index}")
    for last in range(1, 10):
        first9 = f"{province_code}{index:06d}{last}"
        check = _check_digit(first9)
        if check is not None:
            return f"{first9}{check}"
    raise AssertionError("unreachable: two consecutive ninth digits never both fail")


def make_enterprise(rng: random.Random, index: int, province_code: str) -> EnterpriseProfile:
    """One enterprise. Tax codes are unique by `index`; ~5% are 13-digit branch codes (10 digits + a branch
    suffix 001..030, written without the dash). ~1% suspended, ~0.5% dissolved, ~1.5% with tax over 90 days due."""
    tax_code = tax_code_for(province_code, index)
    if rng.random() < BRANCH_SHARE:
        tax_code += f"{rng.randint(1, 30):03d}"
    risk_class = rng.choices(list(ENTERPRISE_CLASSES), weights=list(ENTERPRISE_CLASSES.values()))[0]
    roll = rng.random()
    if roll < SUSPENDED_SHARE:
        status = "suspended"
    elif roll < SUSPENDED_SHARE + DISSOLVED_SHARE:
        status = "dissolved"
    else:
        status = "active"
    if rng.random() < LONG_DEBT_SHARE:
        debt = rng.randint(TAX_DEBT_BLOCK_DAYS + 1, 720)
    else:
        debt = rng.randint(1, 60) if rng.random() < 0.12 else 0
    # `new` means under a year of trading history; the oldest firms date from the 1990s.
    age = rng.randint(0, 364) if risk_class == "new" else rng.randint(365, 11_000)
    # Names can repeat here; the real business registry forbids that, but nothing in the engine relies on it.
    name = f"{rng.choice(_FORMS)} {rng.choice(_TRADES)} {rng.choice(_BRAND_1)} {rng.choice(_BRAND_2)}"
    return EnterpriseProfile(tax_code, name, risk_class, status, debt, age)


def make_population(rng: random.Random, count: int) -> list[EnterpriseProfile]:
    """`count` enterprises with distinct tax codes, spread over TAX_PROVINCE_CODES by weight."""
    provinces = rng.choices(list(TAX_PROVINCE_CODES), weights=list(TAX_PROVINCE_CODES.values()), k=count)
    return [make_enterprise(rng, i, p) for i, p in enumerate(provinces)]


def registration_block(profile: EnterpriseProfile) -> str | None:
    """Why the enterprise may not register declarations, as a sentence; None when it may (the engine's own rule)."""
    return domain_registration_block(profile.tax_code, profile.status, profile.tax_debt_days)


# --- goods ----------------------------------------------------------------------------------------------------------
# Sectors: (import weight, export weight, [(hs_code, description, unit, USD low, USD high)]).
_SECTORS: Mapping[str, tuple[float, float, tuple[tuple[str, str, str, float, float], ...]]] = {
    "electronics": (30, 24, (
        ("84713020", "Máy tính xách tay, mới 100%", "PCE", 250, 1800),
        ("85171300", "Điện thoại thông minh, mới 100%", "PCE", 90, 1100),
        ("85423100", "Vi mạch xử lý (IC), mới 100%", "PCE", 0.5, 120),
        ("85044090", "Bộ chuyển đổi nguồn điện tĩnh", "PCE", 2, 300),
        ("84818099", "Van công nghiệp bằng thép", "PCE", 5, 900),
        ("84849000", "Bộ gioăng làm kín cho máy", "SET", 1, 60),
        ("85444299", "Dây cáp điện có đầu nối", "MTR", 0.2, 8),
        ("84151090", "Máy điều hòa không khí treo tường", "SET", 180, 900),
    )),
    "textiles": (15, 24, (
        ("52052200", "Sợi bông chải kỹ, sợi đơn", "KGM", 2.2, 5),
        ("52083900", "Vải dệt thoi từ bông đã nhuộm", "MTR", 0.8, 4),
        ("61091010", "Áo phông nam dệt kim từ bông", "PCE", 1.5, 12),
        ("62034290", "Quần dài nam từ bông", "PCE", 4, 25),
        ("64039990", "Giày thể thao mũ da", "PR", 8, 60),
    )),
    "plastics": (12, 6, (
        ("39021090", "Hạt nhựa polypropylene nguyên sinh", "KGM", 0.9, 1.6),
        ("39231090", "Hộp nhựa đựng hàng", "PCE", 0.05, 3),
        ("39269099", "Sản phẩm khác bằng plastic", "PCE", 0.1, 40),
    )),
    "steel": (10, 6, (
        ("72085100", "Thép cán nóng dạng tấm, dày trên 10mm", "TNE", 520, 800),
        ("72193400", "Thép không gỉ cán nguội dạng cuộn", "KGM", 1.8, 3.5),
        ("73181590", "Bu lông bằng thép có ren", "KGM", 1.5, 6),
        ("73089099", "Kết cấu thép khác", "KGM", 1.2, 4),
    )),
    "vehicles": (5, 2, (
        ("87089999", "Phụ tùng ô tô: bộ phận khác", "PCE", 3, 600),
        ("87141090", "Phụ tùng xe máy", "PCE", 0.5, 80),
        ("87032399", "Ô tô con 5 chỗ, dung tích 1.5-3.0L, mới 100%", "PCE", 18_000, 70_000),
    )),
    "food": (8, 18, (
        ("03061719", "Tôm đông lạnh", "KGM", 6, 14),
        ("08011100", "Dừa sấy khô", "KGM", 1.5, 3),
        ("08081000", "Táo tươi", "KGM", 0.9, 2.5),
        ("09011110", "Cà phê Robusta nhân, chưa rang", "TNE", 2_200, 5_000),
        ("09041120", "Hạt tiêu đen chưa xay", "TNE", 3_000, 7_000),
        ("10063099", "Gạo trắng đã xát", "TNE", 450, 700),
    )),
    "wood": (5, 14, (
        ("94035000", "Giường gỗ dùng trong phòng ngủ", "PCE", 60, 700),
        ("94036090", "Bàn ghế gỗ khác", "PCE", 20, 400),
        ("44012200", "Dăm gỗ keo", "TNE", 120, 180),
        ("44071100", "Gỗ thông xẻ", "MTQ", 180, 420),
    )),
    "pharma": (4, 1, (
        ("30049099", "Thuốc thành phẩm dạng viên", "PCE", 0.5, 40),
        ("30024100", "Vắc xin dùng cho người", "PCE", 3, 60),
    )),
    "chemicals": (4, 2, (
        ("29051100", "Methanol", "TNE", 250, 450),
        ("38249999", "Chế phẩm hóa chất khác", "KGM", 0.8, 9),
    )),
    "scrap": (0.8, 0.3, (
        ("72044900", "Phế liệu sắt thép", "TNE", 300, 420),
        ("39159000", "Phế liệu nhựa", "TNE", 150, 380),
    )),
    "arms": (0.15, 0.03, (
        ("93032000", "Súng săn thể thao", "PCE", 400, 3_000),
        ("93040090", "Súng hơi thể thao", "PCE", 80, 900),
    )),
}
_IMPORT_ORIGINS = {"CN": 36, "KR": 17, "JP": 8, "TW": 6, "US": 5, "TH": 5, "DE": 3, "MY": 3, "ID": 3, "IN": 3,
                   "VN": 2, "SG": 2, "IT": 2, "AU": 2, "FR": 1, "GB": 1, "BR": 1}
_CURRENCY_BY_ORIGIN = {"CN": "CNY", "JP": "JPY", "KR": "KRW", "TH": "THB", "DE": "EUR", "IT": "EUR", "FR": "EUR",
                       "VN": "VND"}
_WHOLE_UNITS = {"PCE", "SET", "PR", "DZN"}


def _line_count(rng: random.Random) -> int:
    """1..50 lines; most declarations (~84%) have 1-5, with a long thin tail up to the limit."""
    if rng.random() < 0.84:
        return rng.choices((1, 2, 3, 4, 5), weights=(38, 20, 12, 8, 6))[0]
    tail = range(6, MAX_GOODS_LINES + 1)
    return rng.choices(tail, weights=[1 / (k - 4) for k in tail])[0]


def _money(amount: float, currency: str) -> str:
    # Currencies without minor units in trade practice are quoted whole; the rest with two decimals.
    return str(max(1, round(amount))) if currency in ("JPY", "KRW", "VND") else f"{max(amount, 0.01):.2f}"


def _line(rng: random.Random, item: tuple, origin: str, currency: str, tariff: Tariff) -> dict[str, str]:
    hs_code, description, unit, low, high = item
    usd_price = low * (high / low) ** rng.random()  # log-uniform within the item's price band
    # Line value in USD: median ~4,400 with a heavy right tail; with ~4.5 lines a declaration averages ~US$47k,
    # close to 2024's US$780 bn / 16.8 M declarations (DESIGN §1).
    line_value = rng.lognormvariate(8.4, 1.3)
    quantity = max(1.0, line_value / usd_price) if unit in _WHOLE_UNITS else max(0.001, line_value / usd_price)
    qty_text = str(round(quantity)) if unit in _WHOLE_UNITS else f"{quantity:.3f}"
    price = usd_price * float(tariff.exchange_rates["USD"] / tariff.exchange_rates[currency])
    return {"hs_code": hs_code, "description": description, "quantity": qty_text, "unit": unit,
            "unit_price": _money(price, currency), "currency": currency, "origin": origin}


def make_goods_lines(rng: random.Random, kind: Kind, tariff: Tariff, n: int | None = None) -> list[dict[str, str]]:
    """JSON-ready goods lines (decimals as strings) that pass `validate_lines`. Lines of one declaration mostly
    come from one sector and share origin and currency, as on a real commercial invoice."""
    n = _line_count(rng) if n is None else n
    column = 0 if kind is Kind.IMPORT else 1
    names = list(_SECTORS)
    sector = rng.choices(names, weights=[_SECTORS[s][column] for s in names])[0]
    if kind is Kind.IMPORT:
        origin = rng.choices(list(_IMPORT_ORIGINS), weights=list(_IMPORT_ORIGINS.values()))[0]
    else:
        origin = "VN" if rng.random() < 0.93 else rng.choice(("CN", "KR", "JP"))  # re-exports
    local = _CURRENCY_BY_ORIGIN.get(origin, "USD")
    currency = local if kind is Kind.IMPORT and rng.random() < 0.25 else "USD"  # most trade is invoiced in USD
    # Controlled goods (arms, scrap) come on their own declarations, never as a stray line among other goods.
    strays = [s for s in names if s not in ("arms", "scrap")]
    stray_weights = [_SECTORS[s][column] for s in strays]
    lines = []
    for _ in range(n):
        other = rng.choices(strays, weights=stray_weights)[0] if rng.random() < 0.1 else sector
        lines.append(_line(rng, rng.choice(_SECTORS[other][2]), origin, currency, tariff))
    return lines


def make_declaration_payload(
    rng: random.Random, kind: Kind, tax_code: str, office_code: str, tariff: Tariff
) -> dict[str, Any]:
    """The JSON body a client sends to pre-declare (IDA/EDA)."""
    return {
        "kind": kind.value,
        "enterprise_tax_code": tax_code,
        "office_code": office_code,
        "goods": make_goods_lines(rng, kind, tariff),
    }


def risk_facts_for(
    profile: EnterpriseProfile, payload: Mapping[str, Any], assessment: Assessment, base: str
) -> RiskFacts:
    """The facts the risk profile sees for a declaration, computed the same way everywhere."""
    goods = payload["goods"]
    return RiskFacts(
        kind=Kind(payload["kind"]),
        enterprise_risk_class=profile.risk_class,
        enterprise_age_days=profile.age_days,
        office_code=payload["office_code"],
        hs_chapters=frozenset(g["hs_code"][:2] for g in goods),
        origins=frozenset(g["origin"] for g in goods),
        customs_value_vnd=assessment.customs_value_vnd,
        line_count=len(goods),
        declaration_base=base,
        hs_headings=frozenset(g["hs_code"][:4] for g in goods),
    )
