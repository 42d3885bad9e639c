"""The load profile (config/loadtest.yaml) as plain values: users per class, pacing and the shapes' schedules.

Pure code, no Locust: the locustfile turns these numbers into users and a LoadTestShape. The rate always comes from
config/capacity.yaml (`DesignCapacity.declarations_per_s(multiplier)`), so "2x design" means one thing everywhere."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from loadtests.capacity import DesignCapacity

REPO = Path(__file__).resolve().parents[1]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Think(_Section):
    min: float = Field(ge=0)
    max: float = Field(ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> Think:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) is below min ({self.min})")
        return self


class Mix(_Section):
    declarant: float = Field(gt=0)
    officer: float = Field(ge=0)
    standby_reader: float = Field(ge=0)


class DeclarantBehaviour(_Section):
    cycle_s: float = Field(gt=0)
    think_s: Think
    export_share: float = Field(ge=0, le=1)
    amend_share: float = Field(ge=0, le=1)
    polls_per_declaration: int = Field(ge=0, le=100)
    pay_green: bool = True
    pay_approved: bool = True


class OfficerBehaviour(_Section):
    queue_poll_s: float = Field(gt=0)
    think_s: Think
    max_decisions_per_poll: int = Field(ge=1)
    approve_share: float = Field(ge=0, le=1)


class ReaderBehaviour(_Section):
    think_s: Think


class Steady(_Section):
    multipliers: list[float] = Field(min_length=1)
    duration_s: float = Field(gt=0)
    ramp_s: float = Field(gt=0)


class Step(_Section):
    start_multiplier: float = Field(gt=0)
    step: float = Field(gt=0)
    step_s: float = Field(gt=0)
    max_multiplier: float = Field(gt=0)
    ramp_s: float = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Step:
        if self.max_multiplier < self.start_multiplier:
            raise ValueError(f"max_multiplier ({self.max_multiplier}) is below start_multiplier "
                             f"({self.start_multiplier})")
        return self


class Spike(_Section):
    declarations: int = Field(gt=0)
    window_hours: float = Field(gt=0, le=24)
    compression: float = Field(ge=1)
    before_s: float = Field(ge=0)
    after_s: float = Field(ge=0)
    ramp_s: float = Field(gt=0)


class Monitor(_Section):
    replication_poll_s: float = Field(gt=0)
    readyz_poll_s: float = Field(gt=0)


class LoadProfile(_Section):
    tariff: Path
    requests_per_declaration: float = Field(gt=0)
    mix: Mix
    declarant: DeclarantBehaviour
    officer: OfficerBehaviour
    standby_reader: ReaderBehaviour
    steady: Steady
    step: Step
    spike: Spike
    monitor: Monitor

    @property
    def tariff_path(self) -> Path:
        return self.tariff if self.tariff.is_absolute() else REPO / self.tariff


def resolve(path: str | Path) -> Path:
    """A path as given if it exists, else relative to the repository root (so defaults work from any directory)."""
    path = Path(path)
    return path if path.is_absolute() or path.exists() else REPO / path


def load_profile(path: str | Path) -> LoadProfile:
    """Read and validate a load profile; errors name the file and the key, e.g. `declarant.cycle_s`."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        return LoadProfile.model_validate(raw)
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read the load profile: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"{path}: {problems}") from None


def check_against_capacity(profile: LoadProfile, capacity: DesignCapacity) -> None:
    """Refuse a profile whose requests_per_declaration disagrees with capacity.yaml's."""
    expected = capacity.inputs.requests_per_declaration
    if not math.isclose(profile.requests_per_declaration, expected, rel_tol=1e-9):
        raise ValueError(f"requests_per_declaration: {profile.requests_per_declaration} in the load profile, "
                         f"{expected} in capacity.yaml; they must agree")


def target_declarations_per_s(capacity: DesignCapacity, multiplier: float) -> float:
    if multiplier <= 0:
        raise ValueError(f"multiplier must be positive, got {multiplier}")
    return capacity.declarations_per_s(multiplier)


def spike_declarations_per_s(profile: LoadProfile) -> float:
    """The first day after cutover, compressed: declarations / (window / compression)."""
    s = profile.spike
    return s.declarations / (s.window_hours * 3600 / s.compression)


def spike_duration_s(profile: LoadProfile) -> float:
    return profile.spike.window_hours * 3600 / profile.spike.compression


def estimated_requests_per_declaration(profile: LoadProfile, green_share: float = 0.53) -> float:
    """Requests per declaration implied by the behaviour (cross-check of `requests_per_declaration`): pre-declare,
    amend, register, pay, polls, the officer's decision and the officers' queue fetches. green_share defaults to
    the national 53% (capacity.yaml lane_mix_reference)."""
    d, o = profile.declarant, profile.officer
    pays = (green_share if d.pay_green else 0) + ((1 - green_share) * o.approve_share if d.pay_approved else 0)
    decisions = 1 - green_share
    # officer users per declarant user x queue fetches per officer per declarant cycle
    queue_fetches = profile.mix.officer / profile.mix.declarant * d.cycle_s / o.queue_poll_s
    return 1 + d.amend_share + 1 + pays + d.polls_per_declaration + decisions + queue_fetches


@dataclass(frozen=True)
class UserPlan:
    """How many users of each class give `declarations_per_s`, and each user's pacing (seconds per iteration)."""

    declarations_per_s: float
    declarants: int
    officers: int
    readers: int
    declarant_pacing_s: float
    officer_pacing_s: float

    @property
    def total(self) -> int:
        return self.declarants + self.officers + self.readers


def plan_users(profile: LoadProfile, declarations_per_s: float, *, with_readers: bool = True) -> UserPlan:
    """Declarant users = rate x cycle (each carries one declaration per cycle, constant_pacing(cycle)); officers
    and readers follow from the mix weights (at least one officer if the mix has any)."""
    m = profile.mix
    declarants = max(1, math.ceil(declarations_per_s * profile.declarant.cycle_s - 1e-9))
    officers = math.ceil(declarants * m.officer / m.declarant) if m.officer else 0
    readers = math.ceil(declarants * m.standby_reader / m.declarant) if (m.standby_reader and with_readers) else 0
    return UserPlan(declarations_per_s, declarants, officers, readers, profile.declarant.cycle_s,
                    profile.officer.queue_poll_s)


@dataclass(frozen=True)
class Stage:
    duration_s: float
    users: int
    spawn_rate: float
    label: str


def _stage(profile: LoadProfile, rate: float, duration_s: float, ramp_s: float, previous: int, label: str,
           with_readers: bool) -> Stage:
    users = plan_users(profile, rate, with_readers=with_readers).total
    return Stage(duration_s, users, max(1.0, round(abs(users - previous) / ramp_s, 2)), label)


def steady_schedule(profile: LoadProfile, capacity: DesignCapacity, multiplier: float, *,
                    with_readers: bool = True) -> list[Stage]:
    s = profile.steady
    return [_stage(profile, target_declarations_per_s(capacity, multiplier), s.duration_s, s.ramp_s, 0,
                   f"steady {multiplier:g}x", with_readers)]


def step_schedule(profile: LoadProfile, capacity: DesignCapacity, *, with_readers: bool = True) -> list[Stage]:
    s, stages, previous = profile.step, [], 0
    count = math.floor((s.max_multiplier - s.start_multiplier) / s.step + 1e-9) + 1
    for i in range(count):
        multiplier = s.start_multiplier + i * s.step
        stage = _stage(profile, target_declarations_per_s(capacity, multiplier), s.step_s, s.ramp_s, previous,
                       f"step {multiplier:g}x", with_readers)
        stages.append(stage)
        previous = stage.users
    return stages


def spike_schedule(profile: LoadProfile, capacity: DesignCapacity, *, with_readers: bool = True) -> list[Stage]:
    s, base = profile.spike, target_declarations_per_s(capacity, 1)
    stages: list[Stage] = []
    previous = 0
    for duration, rate, label in ((s.before_s, base, "before spike 1x"),
                                  (spike_duration_s(profile), spike_declarations_per_s(profile),
                                   f"spike {spike_declarations_per_s(profile) / base:.1f}x"),
                                  (s.after_s, base, "after spike 1x")):
        if duration > 0:
            stages.append(_stage(profile, rate, duration, s.ramp_s, previous, label, with_readers))
            previous = stages[-1].users
    return stages


def stage_at(stages: list[Stage], elapsed_s: float) -> Stage | None:
    """The stage running `elapsed_s` seconds into the schedule; None once it is over."""
    end = 0.0
    for stage in stages:
        end += stage.duration_s
        if elapsed_s < end:
            return stage
    return None
