"""Request bodies. Shapes and types are checked here; the domain checks meaning (HS codes, offices, limits)."""
from __future__ import annotations

from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from standby.domain.states import Kind

TAX_CODE = r"^(\d{10}|\d{13})$"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GoodsLineIn(_Body):
    hs_code: str = Field(description="8-digit AHTN code", examples=["84713020"], max_length=32)
    description: str = Field(max_length=1000)
    quantity: Decimal
    unit: str = Field(max_length=16, examples=["PCE"])
    unit_price: Decimal
    currency: str = Field(max_length=8, examples=["USD"])
    origin: str = Field(max_length=8, description="ISO 3166 alpha-2 country of origin", examples=["CN"])


class PreDeclareIn(_Body):
    """IDA (import) or EDA (export): the number is assigned and duty and VAT are computed."""

    kind: Kind
    enterprise_tax_code: str = Field(pattern=TAX_CODE, description="10-digit tax code, or 13 for a branch")
    office_code: str = Field(pattern=r"^[0-9A-Z]{4}$", description="4-character customs office code")
    goods: list[GoodsLineIn] = Field(max_length=1000, description="1 to 50 goods lines")


class AmendIn(_Body):
    """IDE / EDE: re-declares the goods; the 12th digit of the number goes up by one."""

    goods: list[GoodsLineIn] = Field(max_length=1000)


class PaymentIn(_Body):
    amount_vnd: int = Field(ge=0, description="must equal the outstanding duty and VAT")


class DecisionIn(_Body):
    decision: Literal["approve", "reject"]
    note: str | None = Field(None, max_length=1000)
