"""The failover bench's pure parts (standbyctl bench failover): figures from the client ledger, the runbook
journals and the latency logs, the tables and the verdict. Plain values in, plain values out; unit-tested without
processes (tests/unit/test_bench_failover.py). The run itself is standbyctl/bench_failover.py.

Definitions (each round kills every process of the primary site with SIGKILL at `kill_at`, a Unix time):
- RTO: `kill_at` to the first pre-declaration a client saw accepted (201) under a number of the new primary's site
  digit (numbers carry the issuing site's digit, so no answer of the dead primary can be mistaken for one).
- The gap: `kill_at` to that first write, plus GRACE_S (held writes released by the front are answered just after).
- RPO: the failover report's `lost_count` (the declarations the old primary acknowledged after the standby's
  applied positions, read from the old primary's database), beside the ledger's own count (acknowledged to a client
  and missing on the new primary right after the failover); after failback and reconcile, acknowledged numbers still
  missing from the primary (0 expected unless reconcile listed a conflict)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from loadtests.latency_log import Histograms, latency_percentile
from loadtests.percentile import percentile
from loadtests.slo import DECISION
from standbyctl.bench_switchover import LedgerCheck, step_result

TARGET_RTO_S = 5.0
GRACE_S = 2.0


# -- RTO and the gap --------------------------------------------------------------------------------------------------

def first_write_by(acks: list[dict], site_digit: int, after: float) -> float | None:
    """The Unix time of the first pre-declaration (not an amendment) acknowledged after `after` under a number
    issued by the site with `site_digit`; None when there is none yet."""
    times = [a["at"] for a in acks if a["at"] > after and a.get("supersedes") is None
             and a["number"][:1] == str(site_digit)]
    return min(times) if times else None


def gap_events(events: list[dict], kill_at: float, recovered_at: float | None, end: float,
               grace_s: float = GRACE_S) -> dict:
    """Client events of one round: failures and 503-retried requests in the gap (kill_at .. recovered_at + grace_s;
    to `end` when writes never came back) and failures in the rest of the round (to `end`, the next kill or the
    stop of the load), with the gap's failures counted by request and error code (`gap_errors`)."""
    gap_end = min(end, recovered_at + grace_s) if recovered_at is not None else end
    in_gap = [e for e in events if kill_at <= e["at"] <= gap_end]
    after = [e for e in events if gap_end < e["at"] < end and e["kind"] == "failure"]
    failures = [e for e in in_gap if e["kind"] == "failure"]
    return {"gap_failures": len(failures), "gap_retried": sum(e["kind"] == "retried" for e in in_gap),
            "after_gap_failures": len(after),
            "gap_errors": dict(sorted(Counter(f"{e['name']}: {(e.get('error') or '').split(':')[0][:80]}"
                                              for e in failures).items()))}


# -- the runbooks' journals -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunFigures:
    """One runbook run from its journal: status, each step's duration (s), each step's output, the first error."""

    status: str
    steps: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, dict] = field(default_factory=dict)
    error: str | None = None
    run_id: str | None = None

    @property
    def total_s(self) -> float:
        return sum(self.steps.values())


def run_figures(entries, status: str, run_id: str | None = None) -> RunFigures:
    """`entries`: the run's journal in order (objects with step, phase, at, detail)."""
    steps, outputs = {}, {}
    for e in entries:
        if e.phase == "done" and "duration_s" in e.detail:
            steps[e.step] = float(e.detail["duration_s"])
        if e.step not in outputs and (found := step_result(entries, e.step)) is not None:
            outputs[e.step] = found
    error = next((str(e.detail.get("error") or e.detail.get("reason")) for e in entries
                  if e.phase in ("failed", "rollback_failed", "preconditions_failed")), None)
    return RunFigures(status, steps, outputs, error, run_id)


def failover_rpo(failover: RunFigures, ledger_lost: list[str]) -> dict:
    """The failover report's RPO beside the client ledger's: `reported` (lost_count), `exact`, `ledger` (numbers
    acknowledged to a client and missing on the new primary), `unnamed` (ledger-lost numbers the report does not
    name: the report must name every one) and `unseen` (named by the report, not among the ledger's lost numbers:
    the ledger holds the numbers clients were given, so this is either a later change to a number the new primary
    has, e.g. a registration acknowledged just before the kill, or an answer the kill cut off before the client saw
    it). Numbers compare by declaration (without the amendment digit)."""
    report = failover.outputs.get("report") or {}
    named = {str(d["number"])[:-1] for d in report.get("lost", [])}
    ledger = {n[:-1] for n in ledger_lost}
    return {"reported": report.get("lost_count"), "exact": report.get("exact"), "ledger": len(ledger),
            "unnamed": sorted(ledger - named), "unseen": len(named - ledger),
            "in_flight_estimate": report.get("in_flight_estimate")}


def reconcile_counts(failback: RunFigures) -> dict:
    """What the failback moved aside and reconciled, from its steps' outputs (runbooks/failback.yaml): declarations
    quarantined (and rows: with their idempotency records and audit rows), re-applied on the primary under their
    numbers, listed as conflicts, and the failback's own count of acknowledged declarations missing from the
    primary. None where the step did not report."""
    q, rc, rp = (failback.outputs.get(step) or {} for step in ("quarantine", "reconcile", "report"))
    return {"quarantined": len(q["declarations"]) if "declarations" in q else None, "rows": q.get("moved"),
            "reapplied": rc.get("reapplied_count"), "conflicts": rc.get("conflict_count"),
            "missing": len(rp["missing_from_primary"]) if "missing_from_primary" in rp else None}


# -- decision latency -------------------------------------------------------------------------------------------------

def decision_latency(histograms: Histograms, start: float, end: float) -> dict:
    """p50/p99 of the green-lane decision (Locust's DECISION/green, the registration's answer) over the whole
    seconds after `start` up to `end`, by the project's histogram percentile; `n` samples."""
    after, until = int(start), int(end)
    n = sum(sum(c.values()) for ts, c in histograms.get(DECISION, {}).items() if after < ts <= until)
    return {"p50_ms": latency_percentile(histograms, DECISION, 50, after, until),
            "p99_ms": latency_percentile(histograms, DECISION, 99, after, until), "n": n,
            "seconds": until - after}


# -- tables and verdict -----------------------------------------------------------------------------------------------

def _s(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _n(value) -> str:
    return "—" if value is None else str(value)


def round_table(rows: list[dict]) -> str:
    """The per-kill table (Markdown). Row keys: n, direction, killed ({"site", "workers", "replicators"}),
    lease_s (kill → lease expired), runbook_s (the failover command's run), rto_s, events (gap_events), rpo
    (failover_rpo), failover / failback (RunFigures or None), reconcile (reconcile_counts), after (LedgerCheck
    after failback + reconcile, or None)."""
    lines = ["| # | failover | killed (Ray workers, replicators) | kill→lease expired s | failover run s | RTO s | "
             "client errors in gap (503 retried) | errors after gap | RPO report (exact) | ledger lost "
             "(unnamed by report) | failback | quarantined / reapplied / conflicts | missing after reconcile |",
             "|" + "---|" * 13]
    for r in rows:
        rpo, fb, rc, ev = r.get("rpo") or {}, r.get("failback"), r.get("reconcile") or {}, r.get("events") or {}
        after = r.get("after")
        exact = "" if rpo.get("exact") is None else (" exact" if rpo["exact"] else " NOT exact")
        unnamed = len(rpo.get("unnamed", []))
        lines.append(
            f"| {r['n']} | {r['direction']} {r['failover'].status if r.get('failover') else '—'} | "
            f"{r['killed']['workers']}, {r['killed']['replicators']} | {_s(r.get('lease_s'))} | "
            f"{_s(r.get('runbook_s'))} | {_s(r.get('rto_s'))} | {ev.get('gap_failures', '—')} "
            f"({ev.get('gap_retried', '—')}) | {ev.get('after_gap_failures', '—')} | "
            f"{_n(rpo.get('reported'))}{exact} | {_n(rpo.get('ledger'))} ({unnamed}) | "
            f"{fb.status if fb else '—'} | {_n(rc.get('quarantined'))} / {_n(rc.get('reapplied'))} / "
            f"{_n(rc.get('conflicts'))} | "
            f"{len(after.lost) if after is not None else '—'} |")
    return "\n".join(lines)


def latency_table(phases: dict[str, dict]) -> str:
    """Decision latency per phase (Markdown): {"async": decision_latency(...), "sync": ...}."""
    lines = ["| mode | p50 ms | p99 ms | decisions | seconds measured |", "|---|---|---|---|---|"]
    for mode, lat in phases.items():
        lines.append(f"| {mode} | {_n(lat.get('p50_ms'))} | {_n(lat.get('p99_ms'))} | {lat.get('n', 0)} | "
                     f"{lat.get('seconds', 0)} |")
    return "\n".join(lines)


def verdict(rows: list[dict], final: LedgerCheck | None, verify_ok: bool | None, phases: dict | None = None,
            target_s: float = TARGET_RTO_S) -> tuple[str, str | None]:
    """The summary line and the reason a target was missed (None when all were met): every failover and failback
    done, RTO <= target_s at its max, every ledger-lost number named by the report, 0 acknowledged numbers missing
    after reconcile beyond the conflicts it listed, the final ledger clean and verify clean."""
    rtos = [r["rto_s"] for r in rows if r.get("rto_s") is not None]
    worst = max(rtos) if rtos else None
    gap = sum((r.get("events") or {}).get("gap_failures", 0) for r in rows)
    after_gap = sum((r.get("events") or {}).get("after_gap_failures", 0) for r in rows)
    reported = [r["rpo"]["reported"] for r in rows if (r.get("rpo") or {}).get("reported") is not None]
    missing, conflicts, over = [], 0, []  # a conflict stays missing in the later rounds' checks too
    for r in rows:
        conflicts += (r.get("reconcile") or {}).get("conflicts") or 0
        if r.get("after") is not None:
            missing.append(len(r["after"].lost))
            if missing[-1] > conflicts:
                over.append(r["n"])
    summary = (f"{len(rows)} kills: RTO max {_s(worst)} s, median {_s(percentile(rtos, 50) if rtos else None)} s "
               f"over {len(rtos)} (target ≤ {target_s:g} s); client errors in the gaps {gap}, after them {after_gap}; "
               f"RPO by the failover report {sum(reported)} declarations over {len(reported)} failovers "
               f"(max {max(reported) if reported else '—'}); acknowledged numbers missing from the primary after the "
               f"last failback + reconcile {missing[-1] if missing else '—'} ({conflicts} conflicts listed); final ledger {final.describe() if final else '—'}; verify "
               f"{'—' if verify_ok is None else 'clean' if verify_ok else 'NOT clean'}"
               + "".join(f"; green-lane decision {mode} p50 {_n(lat.get('p50_ms'))} ms, p99 {_n(lat.get('p99_ms'))} ms"
                         for mode, lat in (phases or {}).items()))
    reasons = []
    if any(r.get("failover") is None or r["failover"].status != "done" for r in rows):
        reasons.append("not every failover completed")
    if any(r.get("failback") is None or r["failback"].status != "done" for r in rows):
        reasons.append("not every failback completed")
    if len(rtos) < len(rows):
        reasons.append("a new primary accepted no write")
    if worst is not None and worst > target_s:
        reasons.append(f"RTO max {worst:.2f} s > {target_s:g} s")
    if any((r.get("rpo") or {}).get("unnamed") for r in rows):
        reasons.append("the failover report left out numbers the ledger lost")
    if over:
        reasons.append(f"acknowledged numbers missing after reconcile beyond the conflicts listed (kills {over})")
    if final is not None and not final.ok:
        reasons.append(f"final ledger: {final.describe()}")
    if verify_ok is False:
        reasons.append("verify found differences")
    return summary, ("target missed: " + "; ".join(reasons)) if reasons else None
