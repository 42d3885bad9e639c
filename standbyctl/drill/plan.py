"""The drill's plan and verdict, pure: which steps run in which order with which runbook parameters, each step's
status (an enum with its transition table), the DESIGN §4 targets each step is judged by, and the verdict over a
whole drill. Plain values in, plain values out; the run (standbyctl/drill/run.py) carries the plan out.

The order (issue 11): a planned switchover A → B; the 2025 org restructure through a switchover (B prepares nothing:
A, the standby, takes the new map first, then the primary role); an unplanned failover (kill -9 of every process of
the primary, A); failback of A with reconcile (A becomes B's standby); a switchover back to A. The drill ends where
it started: A primary on the new map, B its standby."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from loadtests.percentile import percentile

TARGET_SWITCHOVER_FREEZE_S = 1.0
TARGET_ORG_VIA_SWITCHOVER_FREEZE_S = 2.0
TARGET_RTO_S = 5.0
CHANGESET = "config/changesets/vn-2025-two-tier/changeset.yaml"


class StepKind(Enum):
    SWITCHOVER = "switchover"
    ORG_VIA_SWITCHOVER = "org-restructure-via-switchover"
    FAILOVER = "failover"
    FAILBACK = "failback"


class StepStatus(Enum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # stopped by the operator (Ctrl-C, SIGTERM) before it could finish
    SKIPPED = "skipped"  # never started: the drill stopped before it

    def to(self, new: "StepStatus") -> "StepStatus":
        """The status after `new`; ValueError when the table does not allow it."""
        if new not in _TRANSITIONS[self]:
            raise ValueError(f"a drill step cannot go from {self.value} to {new.value}")
        return new


_TRANSITIONS = {
    StepStatus.PENDING: {StepStatus.RUNNING, StepStatus.SKIPPED},
    StepStatus.RUNNING: {StepStatus.DONE, StepStatus.FAILED, StepStatus.INTERRUPTED},
    StepStatus.DONE: set(), StepStatus.FAILED: set(), StepStatus.INTERRUPTED: set(), StepStatus.SKIPPED: set(),
}


@dataclass(frozen=True)
class DrillStep:
    """One step of the plan. `source` is the primary before the step, `target` the primary after it; `params` are
    the runbook's (None for a step with no runbook of its own); `targets` the DESIGN §4 figures it is judged by."""

    n: int
    id: str
    title: str
    kind: StepKind
    source: str
    target: str
    params: dict[str, str] | None
    targets: dict[str, float] = field(default_factory=dict)

    @property
    def runbook(self) -> str:
        return self.kind.value


def drill_plan(primary: str = "A", standby: str = "B", changeset: str = CHANGESET) -> list[DrillStep]:
    """The five steps, starting with `primary` primary and `standby` its standby, ending the same way."""
    a, b = primary, standby
    return [
        DrillStep(1, "switchover", f"Planned switchover {a} → {b}", StepKind.SWITCHOVER, a, b,
                  {"from": a, "to": b}, {"freeze_s": TARGET_SWITCHOVER_FREEZE_S}),
        DrillStep(2, "org-restructure", f"2025 org restructure through a switchover {b} → {a}",
                  StepKind.ORG_VIA_SWITCHOVER, b, a, {"from": b, "to": a, "changeset": changeset},
                  {"freeze_s": TARGET_ORG_VIA_SWITCHOVER_FREEZE_S}),
        DrillStep(3, "failover", f"Unplanned failover: kill -9 of {a}, {b} takes over", StepKind.FAILOVER, a, b,
                  {"from": a, "to": b}, {"rto_s": TARGET_RTO_S}),
        DrillStep(4, "failback", f"Failback: {a} rebuilt as {b}'s standby, reconcile", StepKind.FAILBACK, b, b,
                  {"site": a, "primary": b}),
        DrillStep(5, "switchback", f"Planned switchover back {b} → {a}", StepKind.SWITCHOVER, b, a,
                  {"from": b, "to": a}, {"freeze_s": TARGET_SWITCHOVER_FREEZE_S}),
    ]


def step_misses(record: dict) -> list[str]:
    """The targets one step record (the drill.json step shape) missed: each as a sentence; empty when none."""
    missed = []
    for key, target in (record.get("targets") or {}).items():
        value = record.get(key)
        if value is not None and value > target:
            missed.append(f"step {record['n']} ({record['id']}) {key.removesuffix('_s')} {value:.2f} s > {target:g} s")
    if record.get("kind") == StepKind.SWITCHOVER.value and record.get("client_errors"):
        missed.append(f"step {record['n']} ({record['id']}) {record['client_errors']} client errors (target 0)")
    return missed


def correctness_problems(steps: list[dict], final_ledger: dict | None, final_verify: str | None) -> list[str]:
    """What makes the drill fail whatever the timings: a step that failed, verify differences after a step or at
    the end, the failover report not naming every number the ledger lost, acknowledged numbers still missing after
    reconcile beyond the conflicts it listed, anything doubled or mismatched at the end."""
    problems, conflicts_so_far = [], 0
    for s in steps:
        conflicts_so_far += s.get("conflicts") or 0
        if s.get("ledger_doubled") or s.get("ledger_mismatched"):
            problems.append(f"after step {s['n']} ({s['id']}): {s['ledger']}")
        # a failover loses the lag on purpose (async): the failback's reconcile is what must bring it back
        elif (s.get("kind") != StepKind.FAILOVER.value and (s.get("ledger_lost") or 0) > conflicts_so_far
              and s.get("rpo_lost_after_reconcile") is None):
            problems.append(f"after step {s['n']} ({s['id']}): {s['ledger']}")
        if s["status"] == StepStatus.FAILED.value:
            problems.append(f"step {s['n']} ({s['id']}) failed: {s.get('error') or 'see its log'}")
        if s.get("verify") == "differences":
            problems.append(f"verify found differences after step {s['n']} ({s['id']})")
        if s.get("rpo_listed_exactly") is False:
            problems.append(f"step {s['n']} ({s['id']}): the failover report did not name every number the "
                            f"ledger lost")
        after, conflicts = s.get("rpo_lost_after_reconcile"), s.get("conflicts") or 0
        if after is not None and after > conflicts:
            problems.append(f"step {s['n']} ({s['id']}): {after} acknowledged numbers missing after reconcile "
                            f"({conflicts} conflicts listed)")
    if final_ledger is not None:
        lost, doubled, mismatched = (len(final_ledger.get(k) or []) for k in ("lost", "doubled", "mismatched"))
        conflicts = sum(s.get("conflicts") or 0 for s in steps)
        if lost > conflicts or doubled or mismatched:
            problems.append(f"final ledger: {final_ledger['describe']}")
    if final_verify == "differences":
        problems.append("the final verify found differences")
    return problems


@dataclass(frozen=True)
class Slo:
    """One SLO verdict row: `passed` None when nothing was measured."""

    name: str
    target: str
    measured: str
    passed: bool | None

    def as_dict(self) -> dict:
        return {"name": self.name, "target": self.target, "measured": self.measured, "passed": self.passed}


def _worst(values: list[float | None]) -> float | None:
    seen = [v for v in values if v is not None]
    return max(seen) if seen else None


def _judge(name: str, target: float, value: float | None, fmt: str, unit: str, what: str = "≤") -> Slo:
    if value is None:
        return Slo(name, f"{what} {target:{fmt}} {unit}", "not measured", None)
    return Slo(name, f"{what} {target:{fmt}} {unit}", f"{value:{fmt}} {unit}", value <= target)


MIN_P99_SAMPLES = 200  # a p99 of fewer values rests on one or two of them: shown, not judged


def _judge_p99(name: str, target_ms: float, value_ms: float | None, samples: int, what: str) -> Slo:
    if value_ms is not None and samples < MIN_P99_SAMPLES:
        return Slo(name, f"≤ {target_ms:.0f} ms", f"{value_ms:.0f} ms over only {samples} {what}: not judged "
                                                  f"(a p99 needs ≥ {MIN_P99_SAMPLES}; the full drill has them)", None)
    return _judge(name, target_ms, value_ms, ".0f", "ms")


def slo_verdicts(steps: list[dict], *, green_p99_ms: float | None, lag_samples_s: list[float],
                 requests: int, failures: int, slos, green_samples: int = MIN_P99_SAMPLES) -> list[Slo]:
    """The SLO table: the freezes and RTO of DESIGN §4 from the step records, the green-lane decision p99 and the
    replication lag p99 over the drill's steady seconds (outside every freeze and failover gap, as the run chose
    them), the error rate over every client request. `slos`: loadtests.slo.Slos (config/slo.yaml). A p99 over fewer
    than MIN_P99_SAMPLES values (`green_samples` decisions, `lag_samples_s`) is shown and not judged."""
    def of(kind: StepKind, key: str) -> float | None:
        return _worst([s.get(key) for s in steps if s.get("kind") == kind.value])

    switch_errors = sum(s.get("client_errors") or 0 for s in steps if s.get("kind") == StepKind.SWITCHOVER.value)
    switch_ran = any(s.get("kind") == StepKind.SWITCHOVER.value and s["status"] != "skipped" for s in steps)
    lag_p99 = percentile(lag_samples_s, 99) * 1000 if lag_samples_s else None
    rows = [
        _judge("planned switchover freeze (max)", TARGET_SWITCHOVER_FREEZE_S, of(StepKind.SWITCHOVER, "freeze_s"),
               ".2f", "s"),
        Slo("client errors during planned switchovers", "0", str(switch_errors) if switch_ran else "not measured",
            (switch_errors == 0) if switch_ran else None),
        _judge("org restructure freeze through a switchover", TARGET_ORG_VIA_SWITCHOVER_FREEZE_S,
               of(StepKind.ORG_VIA_SWITCHOVER, "freeze_s"), ".2f", "s"),
        _judge("failover RTO (kill -9 → new primary accepts)", TARGET_RTO_S, of(StepKind.FAILOVER, "rto_s"), ".2f",
               "s"),
        _judge_p99("green-lane decision p99 (steady seconds)", slos.green_decision_p99_ms, green_p99_ms,
                   green_samples, "decisions"),
        _judge_p99("replication lag p99 (steady seconds)", slos.replication_lag_p99_ms, lag_p99,
                   len(lag_samples_s), "samples"),
        _judge("client error rate (whole drill)", slos.error_rate_max * 100, failures / requests * 100
               if requests else None, ".2f", "%"),
    ]
    return rows


def verdict(problems: list[str], slos: list[Slo], interrupted: bool, broke_off: str | None = None) -> dict:
    """The drill's verdict: {"passed", "line", "reasons", "exit_code"}. Exit codes: 0 every step done, nothing lost
    or doubled, verify clean and every SLO met; 1 something lost, doubled, a verify difference or a step failed, or
    the drill broke off (`broke_off`: why, e.g. a site that would not start); 3 correct but an SLO missed; 130
    stopped by the operator (Ctrl-C / SIGTERM) with nothing lost."""
    missed = [f"{s.name} {s.measured} (target {s.target})" for s in slos if s.passed is False]
    if broke_off:
        return {"passed": False, "exit_code": 1, "reasons": [broke_off] + problems + missed,
                "line": f"FAIL (the drill broke off): {broke_off}"
                        + (f"; and: {'; '.join(problems)}" if problems else "")}
    if problems:
        return {"passed": False, "exit_code": 1, "reasons": problems + missed,
                "line": "FAIL (lost, doubled or inconsistent): " + "; ".join(problems)}
    if interrupted:
        return {"passed": False, "exit_code": 130, "reasons": ["stopped by the operator"] + missed,
                "line": "STOPPED by the operator: the steps run so far lost nothing; the rest were skipped"}
    if missed:
        return {"passed": False, "exit_code": 3, "reasons": missed,
                "line": "FAIL (SLO): nothing lost or doubled, verify clean; missed: " + "; ".join(missed)}
    judged = sum(s.passed is not None for s in slos)
    return {"passed": True, "exit_code": 0, "reasons": [],
            "line": f"PASS: every step done, nothing lost or doubled, verify clean, {judged} of {len(slos)} SLOs "
                    f"judged and met"}
