"""SLO verdicts and the knee of the curve for a Locust capacity run (DESIGN.md §2 "Planners", §4 numbers to beat).

Pure: reads config/slo.yaml and Locust's CSV output (`locust --headless --csv PREFIX --csv-full-history`), computes
the verdicts; no plotting, no I/O besides reading those files. `loadtests.report` draws the report.

Conventions of the Locust side (custom request events; the response time carries the measurement):
    DECISION/green     green-lane decision latency, ms
    REPLICATION/lag    replication lag, ms, sampled once a second
    INTAKE/frozen      one intake freeze, its duration in ms
Every other (Type, Name) row is a real client request; the error rate is their failures over their requests
(the measurement rows above are excluded from both counts).
"""
from __future__ import annotations

import csv
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from loadtests.latency_log import Histograms, latency_percentile, read_latency_logs

DECISION = ("DECISION", "green")
LAG = ("REPLICATION", "lag")
FREEZE = ("INTAKE", "frozen")
MEASUREMENT_TYPES = frozenset({DECISION[0], LAG[0], FREEZE[0]})
AGGREGATED = ("", "Aggregated")

SloName = Literal["green_decision_p99_ms", "error_rate_max", "replication_lag_p99_ms", "freeze_max_s"]
SLO_NAMES: tuple[str, ...] = ("green_decision_p99_ms", "error_rate_max", "replication_lag_p99_ms", "freeze_max_s")


# ---------------------------------------------------------------------------------------------------------- config
class KneeCriteria(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    slos: tuple[SloName, ...] = ("green_decision_p99_ms", "error_rate_max", "replication_lag_p99_ms")
    min_step_s: float = Field(default=3, ge=0)


class Slos(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    green_decision_p99_ms: float = Field(gt=0)
    error_rate_max: float = Field(ge=0, le=1)
    replication_lag_p99_ms: float = Field(gt=0)
    freeze_max_s: float = Field(gt=0)
    knee: KneeCriteria = KneeCriteria()


def load_slos(path: Path | str) -> Slos:
    """Read and validate config/slo.yaml; every problem is a ValueError naming the file and the key."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read SLOs: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of SLO name to target, got {type(raw).__name__}")
    try:
        return Slos.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"{path}: {problems}") from None


# ------------------------------------------------------------------------------------------------------- CSV input
def _num(value: str | None) -> float | None:
    if value is None:
        return None
    value = value.strip()
    if value in ("", "N/A"):
        return None
    try:
        f = float(value)
    except ValueError:
        return None
    return f if math.isfinite(f) else None


@dataclass(frozen=True)
class StatsRow:
    """One row of PREFIX_stats.csv (whole-run totals for one (Type, Name))."""
    type: str
    name: str
    requests: int
    failures: int
    avg_ms: float | None
    max_ms: float | None
    requests_per_s: float | None
    percentiles: dict[str, float | None]  # "50%" -> ms

    def pct(self, p: str) -> float | None:
        return self.percentiles.get(p)


@dataclass(frozen=True)
class HistoryRow:
    """One row of PREFIX_stats_history.csv. Percentiles and rates are Locust's rolling (10 s) window; totals are
    cumulative since the start of the run."""
    ts: int
    users: int
    type: str
    name: str
    requests_per_s: float | None
    failures_per_s: float | None
    percentiles: dict[str, float | None]
    total_requests: int
    total_failures: int
    total_avg_ms: float | None
    total_max_ms: float | None

    @property
    def key(self) -> tuple[str, str]:
        return (self.type, self.name)

    def pct(self, p: str) -> float | None:
        return self.percentiles.get(p)


@dataclass(frozen=True)
class RunStats:
    prefix: str
    rows: dict[tuple[str, str], StatsRow]
    history: list[HistoryRow] = field(default_factory=list)
    latency: Histograms = field(default_factory=dict)  # per-second SLO measurements (loadtests.latency_log)

    def row(self, key: tuple[str, str]) -> StatsRow | None:
        return self.rows.get(key)

    def request_rows(self) -> list[StatsRow]:
        """Real client requests: everything but the Aggregated total and the measurement rows."""
        return [r for k, r in self.rows.items() if k != AGGREGATED and r.type not in MEASUREMENT_TYPES]

    @property
    def requests(self) -> int:
        return sum(r.requests for r in self.request_rows())

    @property
    def failures(self) -> int:
        return sum(r.failures for r in self.request_rows())

    @property
    def error_rate(self) -> float | None:
        return self.failures / self.requests if self.requests else None

    @property
    def start_ts(self) -> int | None:
        return self.history[0].ts if self.history else None

    @property
    def end_ts(self) -> int | None:
        return self.history[-1].ts if self.history else None


_STATS_REQUIRED = ("Type", "Name", "Request Count", "Failure Count", "99%")
_HISTORY_REQUIRED = ("Timestamp", "User Count", "Type", "Name", "Requests/s", "Failures/s", "99%",
                     "Total Request Count", "Total Failure Count")


def _percentile_columns(fieldnames: Sequence[str]) -> list[str]:
    return [c for c in fieldnames if re.fullmatch(r"\d+(\.\d+)?%", c)]


def _read_csv(path: Path, required: Sequence[str]) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            fields = list(reader.fieldnames or [])
            rows = list(reader)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read Locust CSV: {exc}") from None
    missing = [c for c in required if c not in fields]
    if missing:
        raise ValueError(f"{path}: not a Locust CSV, missing columns {missing}")
    return fields, rows


def _int(value: str | None) -> int:
    n = _num(value)
    return int(n) if n is not None else 0


def read_locust_csv(prefix: Path | str) -> RunStats:
    """Parse PREFIX_stats.csv (required), PREFIX_stats_history.csv (optional: without `--csv-full-history`
    there are no plots over time and no knee) and PREFIX_latency.*.csv (optional: exact p99 per plateau)."""
    prefix = str(prefix)
    fields, raw = _read_csv(Path(f"{prefix}_stats.csv"), _STATS_REQUIRED)
    pcols = _percentile_columns(fields)
    rows: dict[tuple[str, str], StatsRow] = {}
    for r in raw:
        key = (r["Type"], r["Name"])
        rows[key] = StatsRow(
            type=key[0], name=key[1], requests=_int(r["Request Count"]), failures=_int(r["Failure Count"]),
            avg_ms=_num(r.get("Average Response Time")), max_ms=_num(r.get("Max Response Time")),
            requests_per_s=_num(r.get("Requests/s")), percentiles={c: _num(r[c]) for c in pcols})
    hpath = Path(f"{prefix}_stats_history.csv")
    history = read_history(hpath) if hpath.exists() else []
    return RunStats(prefix=prefix, rows=rows, history=history, latency=read_latency_logs(prefix))


def read_history(path: Path) -> list[HistoryRow]:
    """Parse a PREFIX_stats_history.csv (Locust's --csv-full-history), sorted by second; ValueError naming the file
    when it cannot be read or lacks Locust's columns."""
    history: list[HistoryRow] = []
    hfields, hraw = _read_csv(path, _HISTORY_REQUIRED)
    hp = _percentile_columns(hfields)
    for r in hraw:
        history.append(HistoryRow(
            ts=_int(r["Timestamp"]), users=_int(r["User Count"]), type=r["Type"], name=r["Name"],
            requests_per_s=_num(r["Requests/s"]), failures_per_s=_num(r["Failures/s"]),
            percentiles={c: _num(r[c]) for c in hp}, total_requests=_int(r["Total Request Count"]),
            total_failures=_int(r["Total Failure Count"]), total_avg_ms=_num(r.get("Total Average Response Time")),
            total_max_ms=_num(r.get("Total Max Response Time"))))
    history.sort(key=lambda h: h.ts)  # stable: keeps Locust's row order within a second
    return history


def freeze_events(history: Sequence[HistoryRow]) -> list[tuple[int, float]]:
    """(epoch second, duration s) for each second in which INTAKE/frozen recorded new freezes. With several freezes
    in one second the duration is their mean (Locust keeps totals, not samples)."""
    out: list[tuple[int, float]] = []
    count, total_ms = 0, 0.0
    for h in history:
        if h.key != FREEZE or h.total_requests <= count:
            continue
        sum_ms = (h.total_avg_ms or 0.0) * h.total_requests
        out.append((h.ts, (sum_ms - total_ms) / (h.total_requests - count) / 1000.0))
        count, total_ms = h.total_requests, sum_ms
    return out


# ---------------------------------------------------------------------------------------------------------- verdicts
@dataclass(frozen=True)
class Verdict:
    name: str
    target: float
    measured: float | None
    passed: bool | None  # None: not measured in this run
    note: str
    unit: str = ""


def _judge(name: str, target: float, measured: float | None, unit: str, what: str, missing: str) -> Verdict:
    if measured is None:
        return Verdict(name, target, None, None, f"not measured: {missing}", unit)
    passed = measured <= target
    note = f"{what} {_fmt(measured, unit)} {'<=' if passed else '>'} {_fmt(target, unit)}"
    return Verdict(name, target, measured, passed, note, unit)


def _fmt(value: float, unit: str) -> str:
    if unit == "ratio":
        return f"{value * 100:.2f}%"
    return f"{value:,.0f} {unit}" if unit == "ms" else f"{value:,.1f} {unit}"


def verdicts(stats: RunStats, slos: Slos) -> list[Verdict]:
    """One verdict per SLO, in config order. A measurement absent from the run is passed=None, never a pass."""
    green = stats.row(DECISION)
    lag = stats.row(LAG)
    freeze = stats.row(FREEZE)
    green_p99 = green.pct("99%") if green and green.requests else None
    lag_p99 = lag.pct("99%") if lag and lag.requests else None
    freeze_s = freeze.max_ms / 1000.0 if freeze and freeze.requests and freeze.max_ms is not None else None
    return [
        _judge("green_decision_p99_ms", slos.green_decision_p99_ms, green_p99, "ms", "green-lane decision p99",
               "no DECISION/green events in the run"),
        _judge("error_rate_max", slos.error_rate_max, stats.error_rate, "ratio",
               f"{stats.failures:,} failed of {stats.requests:,} requests:", "no client requests in the run"),
        _judge("replication_lag_p99_ms", slos.replication_lag_p99_ms, lag_p99, "ms", "replication lag p99",
               "no REPLICATION/lag events in the run"),
        _judge("freeze_max_s", slos.freeze_max_s, freeze_s, "s",
               f"longest of {freeze.requests if freeze else 0} freeze(s)", "no INTAKE/frozen events (no freeze)"),
    ]


def overall_exit_code(results: Sequence[Verdict], require_all: bool = False) -> int:
    """0 when no SLO failed; 1 when one failed, or (require_all) when one was not measured."""
    if any(v.passed is False for v in results):
        return 1
    if require_all and any(v.passed is None for v in results):
        return 1
    return 0


# -------------------------------------------------------------------------------------------------------------- knee
@dataclass(frozen=True)
class Step:
    """One plateau of a step ramp (constant Locust user count)."""
    index: int
    label: str
    users: int
    start_ts: int
    end_ts: int
    seconds: float
    requests: int
    failures: int
    requests_per_s: float
    declarations_per_s: float | None  # None without a design capacity
    multiplier: float | None          # achieved load over design (or parsed from a "2x" label)
    green_p99_ms: float | None
    error_rate: float | None
    lag_p99_ms: float | None
    freeze_max_s: float | None
    broken: tuple[tuple[str, float, float], ...] = ()  # (slo, measured, target)


@dataclass(frozen=True)
class Knee:
    rate_declarations_per_s: float | None  # last good step's achieved rate (None: first step broke, or no design)
    multiplier: float | None               # last good step's load over design
    broken_slo: str                        # first SLO that broke on the first bad step
    last_good: Step | None
    first_bad: Step

    def sentence(self) -> str:
        bad = self.first_bad
        slo, measured, target = bad.broken[0]
        unit = _SLO_UNITS[slo]
        why = f"{slo} broke: {_fmt(measured, unit)} > {_fmt(target, unit)}"
        if self.last_good is None:
            return f"Knee below the first step: at {describe_step(bad)}, {why}."
        return f"Knee: SLOs held up to {describe_step(self.last_good)}; at {describe_step(bad)}, {why}."


_SLO_UNITS = {"green_decision_p99_ms": "ms", "error_rate_max": "ratio", "replication_lag_p99_ms": "ms",
              "freeze_max_s": "s"}


def describe_step(step: Step) -> str:
    parts = []
    if step.multiplier is not None:
        parts.append(f"{step.multiplier:.1f}x design")
    elif step.label:
        parts.append(step.label)
    rate = (f"{step.declarations_per_s:,.1f} declarations/s" if step.declarations_per_s is not None
            else f"{step.requests_per_s:,.1f} requests/s")
    parts.append(f"{rate}, {step.users} users")
    return f"{parts[0]} ({', '.join(parts[1:])})" if len(parts) > 1 else parts[0]


def _label_multiplier(label: str) -> float | None:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*x\b.*", label, re.IGNORECASE)
    return float(m.group(1)) if m else None


def steps_from_history(history: Sequence[HistoryRow], slos: Slos, step_labels: Sequence[str] | None = None,
                       design=None, latency: Histograms | None = None) -> list[Step]:
    """Group history by user-count plateau (consecutive seconds at one user count > 0, at least knee.min_step_s long)
    and compute each plateau's achieved rate, green p99, error rate, lag p99 and longest freeze.

    A plateau's figures cover its own seconds only: the ramp onto it, where the user count still changes, forms
    short runs that belong to no plateau. With `latency` (the per-second histograms) its p99s are exact over those
    seconds; without, the worst of Locust's rolling 10 s p99s inside the plateau stands in, which overstates the
    p99 of a long plateau.

    design: a loadtests.capacity.DesignCapacity; with it, declarations/s = requests/s / requests_per_declaration
    and multiplier = declarations/s / design peak. Without it the multiplier comes from labels such as "2x"."""
    if not history:
        return []
    seconds = sorted({h.ts for h in history})
    by_ts: dict[int, list[HistoryRow]] = {}
    for h in history:
        by_ts.setdefault(h.ts, []).append(h)
    users_at = {ts: max(h.users for h in rows) for ts, rows in by_ts.items()}

    # plateaus: runs of consecutive recorded seconds with the same user count
    runs: list[list[int]] = []
    for ts in seconds:
        if runs and users_at[runs[-1][-1]] == users_at[ts]:
            runs[-1].append(ts)
        else:
            runs.append([ts])

    totals: dict[tuple[str, str], tuple[int, int]] = {}  # cumulative (requests, failures) per key, as of a second
    snapshot: dict[int, dict[tuple[str, str], tuple[int, int]]] = {}
    for ts in seconds:
        for h in by_ts[ts]:
            totals[h.key] = (h.total_requests, h.total_failures)
        snapshot[ts] = dict(totals)

    def req_totals(snap: dict[tuple[str, str], tuple[int, int]]) -> tuple[int, int]:
        r = f = 0
        for (typ, name), (n, nf) in snap.items():
            if (typ, name) != AGGREGATED and typ not in MEASUREMENT_TYPES:
                r, f = r + n, f + nf
        return r, f

    freezes = freeze_events(history)
    steps: list[Step] = []
    prev_end: int | None = None
    for run in runs:
        start, end = run[0], run[-1]
        users = users_at[start]
        length = end - start + 1
        base_ts = prev_end
        prev_end = end
        if users <= 0 or length < slos.knee.min_step_s:
            continue
        base = req_totals(snapshot[base_ts]) if base_ts is not None else (0, 0)
        now = req_totals(snapshot[end])
        dur = float(end - base_ts) if base_ts is not None else float(length)
        requests, failures = now[0] - base[0], now[1] - base[1]
        rps = requests / dur if dur > 0 else 0.0
        rows = [h for ts in run for h in by_ts[ts]]

        def p99(key: tuple[str, str]) -> float | None:
            if latency and key in latency:
                return latency_percentile(latency, key, 99, base_ts if base_ts is not None else start - 1, end)
            vals = [h.pct("99%") for h in rows if h.key == key and h.pct("99%") is not None]
            return max(vals) if vals else None

        fz = [d for ts, d in freezes if (base_ts if base_ts is not None else start - 1) < ts <= end]
        label = step_labels[len(steps)] if step_labels and len(steps) < len(step_labels) else ""
        if design is not None:
            dps = rps / design.inputs.requests_per_declaration
            mult = dps / design.peak_declarations_per_s
        else:
            dps, mult = None, _label_multiplier(label) if label else None
        step = Step(index=len(steps), label=label, users=users, start_ts=start, end_ts=end, seconds=dur,
                    requests=requests, failures=failures, requests_per_s=rps, declarations_per_s=dps,
                    multiplier=mult, green_p99_ms=p99(DECISION),
                    error_rate=failures / requests if requests else None, lag_p99_ms=p99(LAG),
                    freeze_max_s=max(fz) if fz else None)
        measured = {"green_decision_p99_ms": step.green_p99_ms, "error_rate_max": step.error_rate,
                    "replication_lag_p99_ms": step.lag_p99_ms, "freeze_max_s": step.freeze_max_s}
        broken = tuple((name, measured[name], getattr(slos, name)) for name in slos.knee.slos
                       if measured[name] is not None and measured[name] > getattr(slos, name))
        steps.append(Step(**{**step.__dict__, "broken": broken}))
    return steps


def find_knee(history: Sequence[HistoryRow] | RunStats, slos: Slos, step_labels: Sequence[str] | None = None,
              design=None) -> Knee | None:
    """The first plateau on which a knee SLO breaks, with the last plateau before it on which all held.
    None when every plateau held (or there is no history)."""
    latency = None
    if isinstance(history, RunStats):
        history, latency = history.history, history.latency
    return knee_of(steps_from_history(history, slos, step_labels, design, latency))


def knee_of(steps: Sequence[Step]) -> Knee | None:
    """The knee of steps already computed (steps_from_history): the first broken step and the last good before it."""
    last_good: Step | None = None
    for step in steps:
        if step.broken:
            return Knee(rate_declarations_per_s=last_good.declarations_per_s if last_good else None,
                        multiplier=last_good.multiplier if last_good else None,
                        broken_slo=step.broken[0][0], last_good=last_good, first_bad=step)
        last_good = step
    return None
