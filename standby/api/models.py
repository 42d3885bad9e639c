"""Request bodies. Shapes and types are checked here; the domain checks meaning (HS codes, offices, limits)."""
from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from standby.domain.states import Kind
from standby.domain.tariff import MAX_DESCRIPTION, MAX_GOODS_LINES, UNITS

TAX_CODE = r"^([0-9]{10}|[0-9]{13})$"  # ASCII digits: an OpenAPI pattern is ECMA-262, where \d is ASCII
# The domain's own limits (standby.domain.tariff), published in the schema; the domain refuses past them with its own
# codes (too_many_lines, description_invalid...), so a request the document calls valid is never refused for shape.
GOODS = {"minItems": 1, "maxItems": MAX_GOODS_LINES}
# A decimal as a JSON number or a string that reads as one; a string is held to the published pattern (pydantic's own
# Decimal also takes ' 1' and '1_000', which the document does not).
DECIMAL_TEXT = r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?"
_DECIMAL_TEXT = re.compile(DECIMAL_TEXT)


def _published_decimal(value: object) -> object:
    if isinstance(value, str) and not _DECIMAL_TEXT.fullmatch(value):
        raise ValueError("a decimal given as a string must read as one, such as '12.5'")
    return value


Amount = Annotated[Decimal, BeforeValidator(_published_decimal), Field(json_schema_extra={"anyOf": [
    {"type": "number"}, {"type": "string", "pattern": f"^{DECIMAL_TEXT}$"}]})]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GoodsLineIn(_Body):
    hs_code: str = Field(description="8-digit AHTN code", examples=["84713020"], max_length=32,
                         json_schema_extra={"pattern": "^[0-9]{8}$"})
    description: str = Field(max_length=1000, json_schema_extra={"minLength": 1, "maxLength": MAX_DESCRIPTION})
    quantity: Amount
    unit: str = Field(max_length=16, examples=["PCE"], json_schema_extra={"enum": sorted(UNITS)})
    unit_price: Amount
    currency: str = Field(max_length=8, examples=["USD"])
    origin: str = Field(max_length=8, description="ISO 3166 alpha-2 country of origin", examples=["CN"],
                        json_schema_extra={"pattern": "^[A-Z]{2}$"})


class PreDeclareIn(_Body):
    """IDA (import) or EDA (export): the number is assigned and duty and VAT are computed."""

    kind: Kind
    enterprise_tax_code: str = Field(pattern=TAX_CODE, description="10-digit tax code, or 13 for a branch")
    office_code: str = Field(pattern=r"^[0-9A-Z]{4}$", description="4-character customs office code")
    goods: list[GoodsLineIn] = Field(max_length=1000, description="1 to 50 goods lines", json_schema_extra=GOODS)


class AmendIn(_Body):
    """IDE / EDE: re-declares the goods; the 12th digit of the number goes up by one."""

    goods: list[GoodsLineIn] = Field(max_length=1000, json_schema_extra=GOODS)


class PaymentIn(_Body):
    amount_vnd: int = Field(ge=0, description="must equal the outstanding duty and VAT")


class DecisionIn(_Body):
    decision: Literal["approve", "reject"]
    note: str | None = Field(None, max_length=1000)
