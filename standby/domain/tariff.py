"""Goods lines, the tariff they are assessed against, and the tax assessment.

Contracts:
- `validate_line` / `validate_lines` turn untrusted, JSON-decoded input into `GoodsLine`s or raise `DomainError`
  (status 422) naming the field, e.g. ``goods[3].quantity``. They never raise anything else for bad input.
- `assess` is pure and deterministic: every amount is an integer number of VND, rounded half up per line
  (customs value first, then duty on that value, then VAT on value + duty); totals are sums of the line amounts,
  so the lines always add up to the totals.
- `Tariff.from_dict` / `load_tariff` validate the YAML and raise `ValueError` naming the bad key.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation, localcontext
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import yaml

from standby.domain.errors import DomainError
from standby.domain.states import Kind

MAX_GOODS_LINES = 50  # VNACCS IDA/EDA limit per declaration
MAX_QUANTITY = Decimal(10) ** 9
MAX_UNIT_PRICE = Decimal(10) ** 12  # in the line's currency; keeps products far inside Decimal precision
# Decimal places accepted: the same as the stored columns (Numeric(18, 3) / Numeric(18, 4)), so what is assessed
# is exactly what is stored and replicated; nothing is rounded silently on write.
QUANTITY_PLACES = 3
PRICE_PLACES = 4
MAX_DESCRIPTION = 200
# UN/ECE Recommendation 20 unit codes as VNACCS uses them.
UNITS = frozenset({"KGM", "TNE", "GRM", "PCE", "SET", "PR", "DZN", "MTR", "MTK", "MTQ", "LTR", "KWH"})
VAT_RATES = frozenset({Decimal(0), Decimal(5), Decimal(8), Decimal(10)})
RESERVED_CHAPTERS = frozenset({"77"})  # reserved by the WCO for future use

_HS_RE = re.compile(r"[0-9]{8}")
_NUMBER_RE = re.compile(r"-?[0-9]{1,20}(\.[0-9]{1,20})?")
_CURRENCY_RE = re.compile(r"[A-Z]{3}")
_ORIGIN_RE = re.compile(r"[A-Z]{2}")
_CHAPTER_RE = re.compile(r"[0-9]{2}")
_HEADING_RE = re.compile(r"[0-9]{4}")
_ONE = Decimal(1)
_HUNDRED = Decimal(100)


@dataclass(frozen=True)
class GoodsLine:
    """One validated goods line. Amounts are exact Decimals in the line's currency."""

    hs_code: str
    description: str
    quantity: Decimal
    unit: str
    unit_price: Decimal
    currency: str
    origin: str

    @property
    def chapter(self) -> str:
        return self.hs_code[:2]

    @property
    def heading(self) -> str:
        return self.hs_code[:4]


@dataclass(frozen=True)
class Rates:
    """Percentages (e.g. Decimal('10') is 10%) that apply to one chapter or heading."""

    import_duty: Decimal
    vat: Decimal
    export_duty: Decimal = Decimal(0)


@dataclass(frozen=True)
class Tariff:
    """Exchange rates to VND and duty/VAT rates per HS chapter, with per-heading overrides already merged."""

    rates_date: str
    exchange_rates: Mapping[str, Decimal]
    chapters: Mapping[str, Rates]
    headings: Mapping[str, Rates]

    @property
    def valid_chapters(self) -> frozenset[str]:
        return frozenset(self.chapters)

    def rates_for(self, hs_code: str) -> Rates:
        """Heading override if there is one, else the chapter's rates. KeyError for an unknown chapter."""
        heading = self.headings.get(hs_code[:4])
        return heading if heading is not None else self.chapters[hs_code[:2]]

    def to_vnd(self, amount: Decimal, currency: str) -> Decimal:
        return amount * self.exchange_rates[currency]

    @classmethod
    def from_dict(cls, d: Any) -> "Tariff":
        """Build from the decoded YAML (see config/tariffs.yaml); ValueError names the bad key."""
        if not isinstance(d, Mapping):
            raise ValueError("tariff: the document must be a mapping")
        _only_keys(d, {"rates_date", "exchange_rates", "chapters", "headings"}, "tariff")
        if not isinstance(d.get("rates_date"), str):
            raise ValueError("tariff: rates_date must be the date of the exchange rates as a quoted string")
        chapters = {code: _parse_rates(code, entry, None) for code, entry in _mapping(d, "chapters").items()}
        for code in chapters:
            if not _CHAPTER_RE.fullmatch(code) or not 1 <= int(code) <= 97 or code in RESERVED_CHAPTERS:
                raise ValueError(f"tariff: chapters.{code}: not a valid HS chapter (01-97, 77 is reserved)")
        headings = {}
        for code, entry in _mapping(d, "headings", required=False).items():
            if not _HEADING_RE.fullmatch(code) or code[:2] not in chapters:
                raise ValueError(f"tariff: headings.{code}: not a 4-digit heading of a listed chapter")
            headings[code] = _parse_rates(code, entry, chapters[code[:2]])
        # Read-only views, so a frozen Tariff cannot be changed through its mappings either.
        return cls(d["rates_date"], MappingProxyType(_parse_exchange_rates(d)), MappingProxyType(chapters),
                   MappingProxyType(headings))


def _only_keys(d: Mapping, allowed: set[str], where: str) -> None:
    unknown = sorted(str(k) for k in d if k not in allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}; expected {', '.join(sorted(allowed))}")


def _mapping(d: Mapping, key: str, required: bool = True) -> Mapping:
    value = d.get(key, None if required else {})
    if not isinstance(value, Mapping) or (required and not value):
        raise ValueError(f"tariff: {key} must be a non-empty mapping")
    for code in value:
        if not isinstance(code, str):  # YAML reads 01 as the integer 1; quoting keeps leading zeros
            raise ValueError(f"tariff: {key}: every code must be a quoted string, got {code!r}")
    return value


def _percent(value: Any, where: str, high: int) -> Decimal:
    number = _decimal(value if not isinstance(value, str) else value.strip())
    if number is None or not 0 <= number <= high:
        raise ValueError(f"{where} must be a percentage between 0 and {high}, got {value!r}")
    return number


def _parse_rates(code: str, entry: Any, base: Rates | None) -> Rates:
    """A chapter entry needs import_duty and vat; a heading entry overrides any of them on top of `base`."""
    where = f"tariff: {'chapters' if base is None else 'headings'}.{code}"
    if not isinstance(entry, Mapping) or not entry:
        raise ValueError(f"{where} must be a mapping of rates")
    _only_keys(entry, {"import_duty", "vat", "export_duty"}, where)
    if base is None and not {"import_duty", "vat"} <= set(entry):
        raise ValueError(f"{where}: import_duty and vat are required")
    base = base or Rates(Decimal(0), Decimal(0))
    rates = Rates(
        _percent(entry["import_duty"], f"{where}.import_duty", 1000) if "import_duty" in entry else base.import_duty,
        _percent(entry["vat"], f"{where}.vat", 100) if "vat" in entry else base.vat,
        _percent(entry["export_duty"], f"{where}.export_duty", 100) if "export_duty" in entry else base.export_duty,
    )
    if rates.vat not in VAT_RATES:
        raise ValueError(f"{where}.vat must be one of 0, 5, 8, 10 (Vietnam's VAT rates), got {entry.get('vat')!r}")
    return rates


def _parse_exchange_rates(d: Mapping) -> dict[str, Decimal]:
    rates = {}
    for code, value in _mapping(d, "exchange_rates").items():
        number = _decimal(value)
        if not _CURRENCY_RE.fullmatch(code) or number is None or number <= 0:
            raise ValueError(f"tariff: exchange_rates.{code} must be a positive VND rate for an ISO 4217 code")
        rates[code] = number
    if rates.get("VND") != _ONE:
        raise ValueError("tariff: exchange_rates.VND must be present and equal to 1")
    return rates


def load_tariff(path: str | Path) -> Tariff:
    """Read and validate a tariff YAML file (see config/tariffs.yaml)."""
    with open(path, encoding="utf-8") as fh:
        return Tariff.from_dict(yaml.safe_load(fh))


# --- validation of untrusted goods lines -------------------------------------------------------------------------


def _refuse(code: str, field: str, sentence: str) -> DomainError:
    return DomainError(code, f"{field} {sentence}", field, 422)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _decimal(value: Any) -> Decimal | None:
    """A plain decimal number from a JSON number or numeric string, else None (bools, NaN, 1e3-style strings...)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        # repr gives the shortest round-tripping text, so 0.1 becomes 0.1 and not its binary expansion.
        return Decimal(repr(value)) if math.isfinite(value) else None
    if isinstance(value, str) and _NUMBER_RE.fullmatch(value):
        return Decimal(value)
    return None


def _places(d: Decimal) -> int:
    """Decimal places that carry a digit: 2.500 has one. (Not normalize(), which rounds to context precision.)"""
    _, digits, exponent = d.as_tuple()
    significant = "".join(map(str, digits)).rstrip("0")
    if not significant:
        return 0
    return max(0, -(int(exponent) + len(digits) - len(significant)))


def _hs_code(raw: Mapping, field: str, tariff: Tariff) -> str:
    value = raw.get("hs_code")
    if not isinstance(value, str) or not _HS_RE.fullmatch(value):
        raise _refuse("hs_code_invalid", field, f"must be an 8-digit AHTN code such as '84713020', got {_show(value)}")
    if value[:2] in RESERVED_CHAPTERS or value[:2] not in tariff.chapters:
        raise _refuse("hs_code_invalid", field, f"names HS chapter {value[:2]}, which is reserved or does not exist")
    return value


def _description(raw: Mapping, field: str) -> str:
    value = raw.get("description")
    if not isinstance(value, str) or not value.strip():
        raise _refuse("description_invalid", field, "must be a non-empty text describing the goods")
    value = value.strip()
    if len(value) > MAX_DESCRIPTION:
        raise _refuse("description_invalid", field, f"must be at most {MAX_DESCRIPTION} characters, got {len(value)}")
    return value


def _quantity(raw: Mapping, field: str) -> Decimal:
    value = _decimal(raw.get("quantity"))
    if value is None:
        raise _refuse("quantity_invalid", field, f"must be a number, got {_show(raw.get('quantity'))}")
    if value <= 0 or value > MAX_QUANTITY:
        sentence = f"must be above 0 and at most {MAX_QUANTITY:,}, got {_show(raw['quantity'])}"
        raise _refuse("quantity_invalid", field, sentence)
    if _places(value) > QUANTITY_PLACES:
        raise _refuse("quantity_invalid", field, f"may have at most {QUANTITY_PLACES} decimal places")
    return value


def _unit_price(raw: Mapping, field: str) -> Decimal:
    value = _decimal(raw.get("unit_price"))
    if value is None:
        raise _refuse("value_invalid", field, f"must be a finite number, got {_show(raw.get('unit_price'))}")
    if value < 0:
        raise _refuse("value_invalid", field, f"must not be negative, got {_show(raw['unit_price'])}")
    if value > MAX_UNIT_PRICE:
        raise _refuse("value_invalid", field, f"must be at most {MAX_UNIT_PRICE:,}, got {_show(raw['unit_price'])}")
    if _places(value) > PRICE_PLACES:
        raise _refuse("value_invalid", field, f"may have at most {PRICE_PLACES} decimal places")
    return value


def validate_line(raw: Any, index: int, tariff: Tariff) -> GoodsLine:
    """Turn one untrusted goods line into a `GoodsLine`, or raise `DomainError` (422) naming ``goods[index].<field>``.

    Fields are checked in declaration-form order and the first fault is reported. Unknown keys are ignored.
    """
    prefix = f"goods[{index}]"
    if not isinstance(raw, Mapping):
        raise _refuse("goods_line_invalid", prefix, f"must be an object with the goods line's fields, got {_show(raw)}")
    hs_code = _hs_code(raw, f"{prefix}.hs_code", tariff)
    description = _description(raw, f"{prefix}.description")
    quantity = _quantity(raw, f"{prefix}.quantity")
    unit = raw.get("unit")
    if not isinstance(unit, str) or unit not in UNITS:
        raise _refuse("unit_invalid", f"{prefix}.unit", f"must be one of {', '.join(sorted(UNITS))}, got {_show(unit)}")
    unit_price = _unit_price(raw, f"{prefix}.unit_price")
    currency = raw.get("currency")
    if not isinstance(currency, str) or not _CURRENCY_RE.fullmatch(currency) or currency not in tariff.exchange_rates:
        known = ", ".join(sorted(tariff.exchange_rates))
        raise _refuse("currency_unknown", f"{prefix}.currency", f"must be one of {known}, got {_show(currency)}")
    origin = raw.get("origin")
    if not isinstance(origin, str) or not _ORIGIN_RE.fullmatch(origin):
        sentence = f"must be an ISO 3166 two-letter code such as 'CN', got {_show(origin)}"
        raise _refuse("origin_invalid", f"{prefix}.origin", sentence)
    return GoodsLine(hs_code, description, quantity, unit, unit_price, currency, origin)


def validate_lines(raw_list: Any, tariff: Tariff) -> tuple[GoodsLine, ...]:
    """Validate a declaration's goods: a list of 1..MAX_GOODS_LINES lines. Raises `DomainError` (422)."""
    if not isinstance(raw_list, list) or not raw_list:
        raise _refuse("goods_missing", "goods", "must be a list with at least one goods line")
    if len(raw_list) > MAX_GOODS_LINES:
        sentence = f"has {len(raw_list)} lines; a declaration holds at most {MAX_GOODS_LINES}"
        raise _refuse("too_many_lines", "goods", sentence)
    return tuple(validate_line(raw, i, tariff) for i, raw in enumerate(raw_list))


# --- assessment ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LineAssessment:
    """Tax on one line, in whole VND. `total_vnd` is the tax payable on the line (duty + VAT)."""

    hs_code: str
    customs_value_vnd: int
    duty_rate: Decimal
    duty_vnd: int
    vat_rate: Decimal
    vat_vnd: int
    total_vnd: int


@dataclass(frozen=True)
class Assessment:
    """Tax on a declaration. Totals are the sums of the lines; `total_vnd` is the tax payable (duty + VAT)."""

    kind: Kind
    lines: tuple[LineAssessment, ...]
    customs_value_vnd: int
    duty_vnd: int
    vat_vnd: int
    total_vnd: int


def _vnd(amount: Decimal) -> int:
    return int(amount.quantize(_ONE, rounding=ROUND_HALF_UP))


def _assess_line(line: GoodsLine, kind: Kind, tariff: Tariff) -> LineAssessment:
    rates = tariff.rates_for(line.hs_code)
    value = _vnd(tariff.to_vnd(line.quantity * line.unit_price, line.currency))
    if kind is Kind.IMPORT:
        duty_rate, vat_rate = rates.import_duty, rates.vat
    else:
        duty_rate, vat_rate = rates.export_duty, Decimal(0)  # exports are zero-rated for VAT
    duty = _vnd(value * duty_rate / _HUNDRED)
    vat = _vnd((value + duty) * vat_rate / _HUNDRED)
    return LineAssessment(line.hs_code, value, duty_rate, duty, vat_rate, vat, duty + vat)


def assess(lines: tuple[GoodsLine, ...] | list[GoodsLine], kind: Kind, tariff: Tariff) -> Assessment:
    """Assess validated lines for `kind`. Pure; equal inputs give equal outputs on every machine."""
    # Ample precision so that no intermediate product is rounded before the final half-up rounding to VND.
    with localcontext() as ctx:
        ctx.prec = 60
        ctx.traps[InvalidOperation] = True
        assessed = tuple(_assess_line(line, kind, tariff) for line in lines)
    return Assessment(
        kind=kind,
        lines=assessed,
        customs_value_vnd=sum(a.customs_value_vnd for a in assessed),
        duty_vnd=sum(a.duty_vnd for a in assessed),
        vat_vnd=sum(a.vat_vnd for a in assessed),
        total_vnd=sum(a.total_vnd for a in assessed),
    )


