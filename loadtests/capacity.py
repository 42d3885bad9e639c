"""Design capacity derived from config/capacity.yaml: declarations a year → peak day → peak hour → per second."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class CapacityInputs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    declarations_2024: int = Field(gt=0)
    load_over_design_2024: float = Field(gt=0)
    working_days_per_year: int = Field(gt=0, le=366)
    peak_day_factor: float = Field(ge=1)
    business_hours_per_day: float = Field(gt=0, le=24)
    peak_hour_factor: float = Field(ge=1)
    requests_per_declaration: float = Field(gt=0)


@dataclass(frozen=True)
class DesignCapacity:
    inputs: CapacityInputs
    declarations_per_year: float
    per_working_day: float
    peak_day: float
    peak_hour: float
    peak_declarations_per_s: float
    peak_requests_per_s: float

    def declarations_per_s(self, multiplier: float) -> float:
        return self.peak_declarations_per_s * multiplier

    def explain(self) -> str:
        i = self.inputs
        return "\n".join([
            f"design declarations/year = {i.declarations_2024:,} / {i.load_over_design_2024} = {self.declarations_per_year:,.0f}",
            f"average working day      = / {i.working_days_per_year} days = {self.per_working_day:,.0f}",
            f"peak day                 = x {i.peak_day_factor} = {self.peak_day:,.0f}",
            f"peak hour                = / {i.business_hours_per_day} h x {i.peak_hour_factor} = {self.peak_hour:,.0f}",
            f"peak declarations/s      = {self.peak_declarations_per_s:.2f}",
            f"peak requests/s          = x {i.requests_per_declaration} = {self.peak_requests_per_s:.1f}",
        ])


def derive(inputs: CapacityInputs) -> DesignCapacity:
    per_year = inputs.declarations_2024 / inputs.load_over_design_2024
    per_day = per_year / inputs.working_days_per_year
    peak_day = per_day * inputs.peak_day_factor
    peak_hour = peak_day / inputs.business_hours_per_day * inputs.peak_hour_factor
    per_s = peak_hour / 3600
    return DesignCapacity(inputs, per_year, per_day, peak_day, peak_hour, per_s, per_s * inputs.requests_per_declaration)


def load_capacity(path: Path) -> DesignCapacity:
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        return derive(CapacityInputs.model_validate(raw.get("inputs", {})))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read capacity inputs: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"inputs.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"{path}: {problems}") from None
