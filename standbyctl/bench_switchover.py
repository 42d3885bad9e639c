"""standbyctl bench switchover: planned switchovers back and forth under Locust through the front, measured.

A deployment as in production, on one machine: sites A and B (`standbyctl serve`), the front (`standbyctl front`)
and the replicators (`standbyctl replicate`, the reverse one started by the runbook) each in its own process, one
witness (SQLite file, or a PostgreSQL database), the sites' Ray actors on one Ray cluster this process starts. The
database setup goes through the witness as an operator's would (`db upgrade`, `seed`, then `replicate` snapshots B).

Locust drives the front at MULTIPLIER x design with --ledger-dir: every number acknowledged to a client, with what
the client sent, and every failed or 503-retried request, with its time. Each switchover is `standbyctl runbook run
switchover` in its own process; its figures come from the runbook journal in the witness (the freeze step's
`frozen_at` and `drain_s`, the resume step's `freeze_s`, every step's `duration_s`) and from the front's and the
sites' /metrics read before and after it. After each switchover every acknowledgement so far is looked for on the
new primary; at the end, with the load stopped and the standby settled, on the final primary, and `verify` compares
the sites.

The pure parts (read_ledger, check_ledger, figures_from_journal, hold_delta, table, verdict) take plain values and
are unit-tested; the run drives the deployment of standbyctl/bench_switchover_deploy.py."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from loadtests.percentile import percentile
from standbyctl.bench_switchover_deploy import Deployment, deploy, front_url, site_url, terminate

TARGET_FREEZE_S = 1.0
ON_THE_CLOCK = ("catch_up", "bump_epoch", "promote", "reverse_stream", "resume")  # steps after frozen_at


# -- pure parts -------------------------------------------------------------------------------------------------------

def read_ledger(folder: Path) -> tuple[list[dict], list[dict]]:
    """The acknowledgements (ledger.*.jsonl) and client events (events.*.jsonl) Locust wrote to `folder`. A line
    being written while this reads (no newline yet, or not JSON) is skipped."""
    found: dict[str, list[dict]] = {"ledger": [], "events": []}
    for stem, lines in found.items():
        for path in sorted(Path(folder).glob(f"{stem}.*.jsonl")):
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    lines.append(json.loads(line))
                except ValueError:
                    continue
    return found["ledger"], found["events"]


@dataclass(frozen=True)
class LedgerCheck:
    """Every acknowledged number against the primary's declarations. `lost`: acknowledged, but its declaration is
    not there or carries an older amendment than the one acknowledged; `doubled`: a number acknowledged twice, or a
    declaration stored more than once; `mismatched`: stored with another enterprise, office or kind than sent."""

    acknowledged: int
    lost: list[str] = field(default_factory=list)
    doubled: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.doubled or self.mismatched)

    def describe(self) -> str:
        return (f"{self.acknowledged} acknowledged: {len(self.lost)} lost, {len(self.doubled)} doubled, "
                f"{len(self.mismatched)} mismatched")


def check_ledger(acks: list[dict], stored: list[dict]) -> LedgerCheck:
    """`acks`: ledger lines; `stored`: the primary's declarations as dicts with number, enterprise_tax_code,
    office_code and kind. A declaration is identified by its base (the number without the amendment digit)."""
    rows: dict[str, dict] = {}
    doubled = []
    for row in stored:
        if row["number"][:-1] in rows:
            doubled.append(row["number"])
        rows[row["number"][:-1]] = row
    seen, latest = set(), {}
    for ack in acks:
        if ack["number"] in seen:
            doubled.append(ack["number"])
        seen.add(ack["number"])
        base = ack["number"][:-1]
        if base not in latest or ack["number"] > latest[base]["number"]:
            latest[base] = ack
    lost, mismatched = [], []
    for base, ack in sorted(latest.items()):
        row = rows.get(base)
        if row is None or row["number"] < ack["number"]:
            lost.append(ack["number"])
        elif (row["enterprise_tax_code"], row["office_code"], str(row["kind"])) != (
                ack["enterprise_tax_code"], ack["office_code"], ack["kind"]):
            mismatched.append(ack["number"])
    return LedgerCheck(len(acks), lost, sorted(set(doubled)), mismatched)


@dataclass(frozen=True)
class SwitchFigures:
    """One run's figures from its journal. freeze_s: the freeze step's frozen_at to intake open on the new primary
    (the resume step's freeze_s); to_resume_s: the command's start to that moment; steps: duration of each step;
    frozen_at/resumed_at: Unix times (None when the run did not get there)."""

    status: str
    freeze_s: float | None
    to_resume_s: float | None
    drain_s: float | None
    steps: dict[str, float]
    error: str | None = None
    frozen_at: float | None = None
    resumed_at: float | None = None

    @property
    def between_steps_s(self) -> float | None:
        """The part of the freeze outside the steps' own actions after the freeze (catch-up … resume): the journal
        and audit writes and the planning between steps."""
        if self.freeze_s is None:
            return None
        return self.freeze_s - sum(self.steps.get(k, 0.0) for k in ON_THE_CLOCK)


def step_result(entries, step: str) -> dict | None:
    """The output a runbook action returned for `step` (journalled as detail["result"] of its acted/done entry), the
    last one when the step ran more than once; None when the step has none."""
    for e in reversed(entries):
        if e.step == step and e.phase in ("acted", "done") and isinstance(e.detail.get("result"), dict):
            return e.detail["result"]
    return None


def figures_from_journal(entries, status: str, command_at: float) -> SwitchFigures:
    """`entries`: the run's journal (objects with step, phase, at, detail), in order; `command_at`: Unix time the
    command was started. A run that never resumed has freeze_s None and its first error in `error`."""
    steps = {}
    for e in entries:
        if e.phase == "done" and "duration_s" in e.detail:
            steps[e.step] = float(e.detail["duration_s"])
    freeze, resume = step_result(entries, "freeze") or {}, step_result(entries, "resume") or {}
    freeze_s = resume.get("freeze_s")
    frozen_at = freeze.get("frozen_at")
    resumed_at = frozen_at + freeze_s if freeze_s is not None and frozen_at else None
    error = next((str(e.detail.get("error") or e.detail.get("reason")) for e in entries
                  if e.phase in ("failed", "rollback_failed", "preconditions_failed")), None)
    return SwitchFigures(status, freeze_s, resumed_at - command_at if resumed_at else None, freeze.get("drain_s"),
                         steps, error, frozen_at, resumed_at)


def client_pause(events: list[dict], figures: SwitchFigures) -> tuple[int, float | None]:
    """Client requests slower than the ledger's SLOW_MS that were in flight while intake was frozen (answered
    after frozen_at, sent before resumed_at), and the slowest one's latency in ms: the pause as clients saw it."""
    if figures.frozen_at is None or figures.resumed_at is None:
        return 0, None
    during = [e["ms"] for e in events if e["kind"] == "slow" and e["at"] >= figures.frozen_at
              and e["at"] - e["ms"] / 1000 <= figures.resumed_at]
    return len(during), max(during) if during else None


def failures_in_freezes(events: list[dict], figures: list[SwitchFigures], after_s: float = 2.0) -> int:
    """Client failures answered while intake was frozen or within `after_s` after it opened again."""
    windows = [(f.frozen_at, f.resumed_at + after_s) for f in figures if f.frozen_at and f.resumed_at]
    return sum(1 for e in events if e["kind"] == "failure" and any(a <= e["at"] <= b for a, b in windows))


def metric_totals(text: str) -> dict[str, float]:
    """Every sample of a Prometheus text page summed by sample name (labels added up)."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if not s.name.endswith("_bucket"):
                totals[s.name] = totals.get(s.name, 0.0) + s.value
    return totals


def hold_delta(before: dict[str, dict], after: dict[str, dict]) -> dict:
    """Requests held over one switchover and the latency the holds added, from the front's and the sites' metric
    totals before and after it (`{"front": {...}, "A": {...}, "B": {...}}`). A counter that went down belongs to a
    process that restarted in between (a failback's site): its reading after counts whole, Prometheus' reset rule; a
    site that answers no longer (killed) counts 0, its counts died with it."""
    def d(where: str, name: str) -> float:
        now, was = after.get(where, {}).get(name, 0.0), before.get(where, {}).get(name, 0.0)
        return now - was if now >= was else now

    sites = [k for k in after if k != "front"]
    site_held = sum(d(s, "clearance_intake_holds_total") for s in sites)
    site_s = sum(d(s, "clearance_intake_hold_seconds_sum") for s in sites)
    site_n = sum(d(s, "clearance_intake_hold_seconds_count") for s in sites)
    front_n = d("front", "front_hold_seconds_count")
    return {"front_held": int(d("front", "front_held_total")), "site_held": int(site_held),
            "site_hold_mean_ms": round(site_s / site_n * 1000, 1) if site_n else None,
            "front_hold_mean_ms": round(d("front", "front_hold_seconds_sum") / front_n * 1000, 1) if front_n else None,
            "front_refused": int(d("front", "front_refused_total")),
            "site_refused": int(sum(d(s, "clearance_intake_hold_refused_total") for s in sites))}


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value * 1000:,.0f}"


def table(rows: list[dict]) -> str:
    """The per-switchover table (Markdown). Row keys: n, direction, figures (SwitchFigures), holds (hold_delta),
    slowed (count, max ms from client_pause), errors, retried, ledger (LedgerCheck or None)."""
    lines = ["| # | switch | freeze ms | command→resume ms | drain ms | catch-up ms | bump+promote ms | reverse ms | "
             "journal & between steps ms | held front/site | hold mean ms front/site | refused front/site | "
             "clients slowed (max ms) | client errors (503 retried) | ledger |", "|" + "---|" * 15]
    for r in rows:
        f, h, s = r["figures"], r["holds"], r["figures"].steps
        bump = s.get("bump_epoch", 0) + s.get("promote", 0) if "promote" in s else None
        ledger = r["ledger"].describe() if r["ledger"] else "—"
        refused = f" (refused {len(r['refusals'])}x first)" if r.get("refusals") else ""
        slowest = r["slowed"][1]
        lines.append(f"| {r['n']} | {r['direction']}{refused} | {_ms(f.freeze_s)} | {_ms(f.to_resume_s)} | "
                     f"{_ms(f.drain_s)} | {_ms(s.get('catch_up'))} | {_ms(bump)} | {_ms(s.get('reverse_stream'))} | "
                     f"{_ms(f.between_steps_s)} | {h['front_held']}/{h['site_held']} | "
                     f"{h['front_hold_mean_ms'] or '—'}/{h['site_hold_mean_ms'] or '—'} | "
                     f"{h['front_refused']}/{h['site_refused']} | {r['slowed'][0]} "
                     f"({_ms(slowest / 1000 if slowest is not None else None)}) | {r['errors']} ({r['retried']}) | "
                     f"{ledger} |")
    return "\n".join(lines)


def verdict(rows: list[dict], final: LedgerCheck, verify_ok: bool, errors: int,
            target_s: float = TARGET_FREEZE_S) -> tuple[str, str | None]:
    """The summary line, and the reason the run missed a target (None when every target is met): freeze <=
    target_s max over the switchovers, every switchover done, 0 client errors, 0 lost or doubled, verify clean."""
    freezes = [r["figures"].freeze_s for r in rows if r["figures"].freeze_s is not None]
    worst = max(freezes) if freezes else None
    median = percentile(freezes, 50) if freezes else None
    slowest = max((r["slowed"][1] for r in rows if r.get("slowed") and r["slowed"][1] is not None), default=None)
    in_freezes = sum(r.get("errors_in_freeze", 0) for r in rows)
    summary = (f"freeze max {_ms(worst)} ms, median {_ms(median)} ms over {len(freezes)} of {len(rows)} switchovers "
               f"(target ≤ {target_s * 1000:.0f} ms max); slowest client request during a freeze "
               f"{'—' if slowest is None else f'{slowest:,.0f}'} ms; client errors {errors} (target 0; "
               f"{in_freezes} of them during a freeze or 2 s after it); final ledger "
               f"{final.describe()} (target 0 lost or doubled); verify {'clean' if verify_ok else 'NOT clean'}")
    reasons = []
    if len(freezes) < len(rows) or any(r["figures"].status != "done" for r in rows):
        reasons.append("not every switchover completed")
    if worst is not None and worst > target_s:
        reasons.append(f"freeze max {worst * 1000:.0f} ms > {target_s * 1000:.0f} ms")
    if errors:
        reasons.append(f"{errors} client errors")
    if not final.ok:
        reasons.append(f"ledger: {final.describe()}")
    if not verify_ok:
        reasons.append("verify found differences")
    return summary, ("target missed: " + "; ".join(reasons)) if reasons else None


# -- the run ----------------------------------------------------------------------------------------------------------

def start_locust(dep: Deployment, settings, multiplier: float, ramp_s: float | None = None) -> subprocess.Popen:
    """Locust headless at `multiplier` x design (steady shape) against the front, with the client-side ledger;
    it runs until stopped (SIGTERM). `ramp_s`: the users start over this many seconds (the profile's by default)."""
    root = settings.root
    profile = yaml.safe_load((root / "config/loadtest.yaml").read_text())
    if ramp_s is not None:
        profile["steady"]["ramp_s"] = ramp_s
    profile["steady"]["duration_s"] = 6 * 3600  # the steady shape ends after its duration: outlast every switchover
    profile["tariff"] = str(settings.path(Path(profile["tariff"])))
    (dep.workdir / "loadtest.yaml").write_text(yaml.safe_dump(profile))
    return dep.spawn("locust", [
        sys.executable, "-m", "locust", "-f", str(root / "loadtests/locustfile.py"), "--headless",
        "--host", front_url(settings), "--tokens-file", str(dep.workdir / "tokens.json"), "--shape", "steady",
        "--multiplier", str(multiplier), "--loadtest-config", str(dep.workdir / "loadtest.yaml"),
        "--capacity-config", str(settings.path(settings.reference.capacity)), "-t", "6h",
        "--csv", str(dep.workdir / "locust"), "--only-summary", "--ledger-dir", str(dep.workdir / "ledger")])


def stop_locust(locust: subprocess.Popen, timeout_s: float = 30) -> None:
    """Stop Locust as Ctrl-C does (SIGINT to its process group), so it quits cleanly: its summary and its latency
    log are written as it quits. (A shape run in headless mode waits for its shape before Locust installs its SIGTERM
    handler, so SIGTERM kills it outright.) SIGTERM, then SIGKILL, if it has not ended within `timeout_s`."""
    try:
        os.killpg(locust.pid, signal.SIGINT)
        locust.wait(timeout=timeout_s)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        terminate(locust.pid, locust)


def scrape(settings) -> dict[str, dict]:
    """Metric totals of the front and both sites (an unreachable one reads as empty)."""
    out = {}
    for name, url in (("front", front_url(settings)), ("A", site_url(settings, "A")), ("B", site_url(settings, "B"))):
        try:
            out[name] = metric_totals(httpx.get(f"{url}/metrics", timeout=5).text)
        except httpx.HTTPError:
            out[name] = {}
    return out


def stored_declarations(settings, site: str) -> list[dict]:
    from standby.store.engine import make_engine
    from standby.store.schema import declarations

    engine = make_engine(settings.database_url(site), writer=False)
    try:
        with engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(
                declarations.c.number, declarations.c.enterprise_tax_code, declarations.c.office_code,
                declarations.c.kind)).mappings()]
    finally:
        engine.dispose()


def ledger_against(dep: Deployment, settings, site: str) -> LedgerCheck:
    """Every acknowledgement so far (read first) against `site`'s declarations (read after)."""
    acks, _ = read_ledger(dep.workdir / "ledger")
    return check_ledger(acks, stored_declarations(settings, site))


def launch_runbook(dep: Deployment, witness, log_path: Path, name: str, params: dict[str, str],
                   timeout_s: float = 1800):
    """`standbyctl runbook run NAME --param K=V … --yes --operator OPERATOR` in its own process, its output appended
    to `log_path`. Returns (exit code, the run's record in the witness or None when none was journalled, the Unix
    time the command was started)."""
    command_at = time.time()
    args = [a for k, v in params.items() for a in ("--param", f"{k}={v}")]
    with log_path.open("a") as out:
        rc = subprocess.run(dep.cli_args("runbook", "run", name, *args, "--yes", "--operator", dep.operator,
                                         "--metrics-port", "0"),
                            stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s,
                            start_new_session=True).returncode  # Ctrl-C at the terminal: the caller decides
    run = next((r for r in witness.runs(5) if r.runbook == name and r.started_at >= command_at - 1), None)
    return rc, run, command_at


def run_runbook(dep: Deployment, witness, log_path: Path, source: str, target: str) -> SwitchFigures:
    """`standbyctl runbook run switchover` from `source` to `target` in its own process, then its journal's
    figures (timed from this call)."""
    rc, run, command_at = launch_runbook(dep, witness, log_path, "switchover", {"from": source, "to": target})
    if run is None:
        return SwitchFigures(f"exit {rc}, no run journaled", None, None, None, {}, log_path.read_text()[-300:])
    return figures_from_journal(witness.entries(run.run_id), run.status, command_at)


def switch_once(dep: Deployment, settings, witness, n: int, source: str, target: str, *, retries: int,
                pause_s: float) -> dict:
    """One switchover with its figures, holds and ledger check. A run refused before freezing (a precondition,
    e.g. the freeze estimate over budget) is run again after `pause_s`, up to `retries` times, as an operator
    would; the refusals are counted in the row. A run that froze is never repeated."""
    before, started_at, refusals = scrape(settings), time.time(), []
    log_path = dep.workdir / f"switchover-{n:02d}.log"
    while True:
        figures = run_runbook(dep, witness, log_path, source, target)
        if figures.status == "done" or figures.frozen_at is not None or len(refusals) >= retries:
            break
        refusals.append(figures.error or figures.status)
        dep.log(f"      refused before freezing ({(figures.error or figures.status)[-160:]}); again in {pause_s:g} s")
        time.sleep(pause_s)
    holds = hold_delta(before, scrape(settings))
    primary = witness.state().primary_site
    return {"n": n, "direction": f"{source}→{target}", "figures": figures, "holds": holds, "refusals": refusals,
            "command_at": started_at, "ledger": ledger_against(dep, settings, primary)}


def count_events(events: list[dict], start: float, end: float) -> tuple[int, int]:
    """Client failures and 503-retried requests with start <= at < end."""
    inside = [e for e in events if start <= e["at"] < end]
    return sum(e["kind"] == "failure" for e in inside), sum(e["kind"] == "retried" for e in inside)


def stop_and_check(dep: Deployment, settings, witness, locust) -> tuple[float, str, bool, LedgerCheck, list[dict]]:
    """Stop the load, verify the final primary against its standby (settled), check every acknowledgement on the
    primary. Returns (the Unix time the load was stopped: requests cut off after it are no client errors of the run,
    the primary, verify clean, the ledger check, every client event)."""
    from cutover.actions.sites import Sites

    stop_at = time.time()
    stop_locust(locust)
    primary = witness.state().primary_site
    sites = Sites(settings, witness, config_path=dep.config)
    try:
        verify_ok = sites.verify(primary, "B" if primary == "A" else "A", settle_timeout_s=120).ok
    finally:
        sites.close()
    final = ledger_against(dep, settings, primary)
    return stop_at, primary, verify_ok, final, read_ledger(dep.workdir / "ledger")[1]


def main_run(base, *, workdir: Path, backend: str, switchovers: int, multiplier: float, gap_s: float,
             warmup_s: float, enterprises_count: int, retries: int, log) -> dict:
    """Deploy, load, switch `switchovers` times A→B, B→A, …, `gap_s` apart, check, stop everything. Returns rows
    (per switchover), the final ledger check, verify's result, the client errors and the summary/verdict."""
    from cutover.witness import open_witness

    dep, settings = deploy(base, workdir, backend, enterprises_count, log)
    witness = open_witness(settings.witness_url, root=settings.root)
    rows: list[dict] = []
    try:
        locust = start_locust(dep, settings, multiplier)
        log(f"- Locust at {multiplier:g}x design through the front {front_url(settings)}; "
            f"warming up {warmup_s:g} s …")
        time.sleep(warmup_s)
        for n in range(1, switchovers + 1):
            source, target = ("A", "B") if n % 2 else ("B", "A")
            if locust.poll() is not None:
                raise RuntimeError(f"Locust exited with {locust.returncode}; see {workdir / 'locust.log'}")
            row = switch_once(dep, settings, witness, n, source, target, retries=retries, pause_s=gap_s)
            rows.append(row)
            f = row["figures"]
            log(f"  {n:>2}. {row['direction']} {f.status}: freeze {_ms(f.freeze_s)} ms, command→resume "
                f"{_ms(f.to_resume_s)} ms, held front/site {row['holds']['front_held']}/{row['holds']['site_held']}, "
                f"ledger {row['ledger'].describe()}" + (f"; error: {f.error}" if f.error else ""))
            if f.status != "done":
                break
            time.sleep(gap_s)
        log("- stopping the load; settling the standby; final ledger check and verify …")
        stop_at, primary, verify_ok, final, events = stop_and_check(dep, settings, witness, locust)
    finally:
        witness.close()
        dep.stop()
    ends = [r["command_at"] for r in rows[1:]] + [stop_at]
    for row, end in zip(rows, ends):
        row["errors"], row["retried"] = count_events(events, row["command_at"], end)
        row["slowed"] = client_pause(events, row["figures"])
        row["errors_in_freeze"] = failures_in_freezes(events, [row["figures"]])
    errors, retried = count_events(events, 0, stop_at)
    summary, failed = verdict(rows, final, verify_ok, errors)
    return {"rows": rows, "final": final, "verify_ok": verify_ok, "errors": errors, "events": events,
            "retried": retried, "cut_off": count_events(events, stop_at, float("inf"))[0], "stop_at": stop_at,
            "summary": summary, "failed": failed, "final_primary": primary}
