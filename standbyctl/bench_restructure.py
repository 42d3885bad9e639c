"""standbyctl bench restructure: the org change set applied to a loaded primary under traffic, measured.

For each store size: the deployment of bench switchover (sites A and B, the front, the replicator A → B, one
witness, each its own process; standbyctl/bench_switchover_deploy.py), with A seeded with ENTERPRISES enterprises on
the legacy map and SIZE historical declarations (a share OPEN_SHARE left open) before the replicator snapshots B.
Locust drives the front at MULTIPLIER x design with its client ledger. Then, each as `standbyctl runbook run` in its
own process: org-restructure in place on A, org-rollback, and org-restructure-via-switchover when runbooks/ has it.
Each run's figures come from its journal in the witness: the prepare and switch (or rollback) steps' own seconds and
counts, the freeze step's drain, the resume step's freeze_s (frozen_at to intake open again). After each run every
acknowledgement so far is looked for on the primary; at the end, with the load stopped, on the final primary, and
verify compares the sites.

The pure parts (run_figures, size_verdict, table) take plain values and are unit-tested through the quick run."""
from __future__ import annotations

import time
from pathlib import Path

import yaml

from cutover.actions.failover_journal import step_result
from standbyctl.bench_switchover import (
    LedgerCheck, count_events, figures_from_journal, launch_runbook, ledger_against, start_locust, stop_and_check)
from standbyctl.bench_switchover_deploy import Deployment, deploy, front_url

TARGET_IN_PLACE_S = 10.0
TARGET_VIA_SWITCHOVER_S = 2.0
IN_PLACE, ROLLBACK, VIA_SWITCHOVER = "org-restructure", "org-rollback", "org-restructure-via-switchover"
PREPARE_STEPS = ("prepare", "prepare_standby")  # in place / on the standby (via switchover)
MOVE_STEPS = ("switch", "rollback", "switch_standby")  # the step that moves the records and activates the map
TARGETS = {IN_PLACE: TARGET_IN_PLACE_S, ROLLBACK: TARGET_IN_PLACE_S, VIA_SWITCHOVER: TARGET_VIA_SWITCHOVER_S}


# -- pure parts -------------------------------------------------------------------------------------------------------

def run_figures(name: str, entries, status: str, command_at: float) -> dict:
    """One runbook run's figures from its journal: status, freeze_s (the resume step's), drain_s, the prepare step's
    seconds and counts, the moving step's (switch, rollback, or the standby's switch via switchover: outside the
    freeze there) seconds and counts, the old primary's own switch after a switchover, every step's duration, the
    first error."""
    f = figures_from_journal(entries, status, command_at)
    prepare = _first_result(entries, PREPARE_STEPS)
    moving = _first_result(entries, MOVE_STEPS)
    old_primary = step_result(entries, "switch_old_primary") or {}
    return {"runbook": name, "status": status, "freeze_s": f.freeze_s, "drain_s": f.drain_s,
            "to_resume_s": f.to_resume_s, "prepare_s": prepare.get("seconds"), "prepared": prepare.get("prepared"),
            "switch_s": moving.get("seconds"), "moved": moving.get("moved"), "delta": moving.get("delta"),
            "old_primary_switch_s": old_primary.get("seconds"), "steps": f.steps, "error": f.error,
            "frozen_at": f.frozen_at, "resumed_at": f.resumed_at}


def _first_result(entries, steps: tuple[str, ...]) -> dict:
    return next((r for s in steps if (r := step_result(entries, s))), {})


def size_verdict(size: dict) -> list[str]:
    """Why one store size missed a target (empty when none): a run not done, a freeze over its target, client
    errors, anything lost, doubled or mismatched, verify not clean."""
    reasons = []
    for run in size["runs"]:
        if run["status"] != "done":
            reasons.append(f"{run['runbook']} {run['status']}: {run['error']}")
        elif run["freeze_s"] is not None and run["freeze_s"] > TARGETS[run["runbook"]]:
            reasons.append(f"{run['runbook']} froze {run['freeze_s']:.2f} s > {TARGETS[run['runbook']]:g} s")
    if size["errors"]:
        reasons.append(f"{size['errors']} client errors")
    if not size["ledger"]["ok"]:
        reasons.append(f"ledger: {size['ledger']['describe']}")
    if not size["verify_ok"]:
        reasons.append("verify found differences")
    return reasons


def lost_anything(result: dict) -> bool:
    """Anything acknowledged lost, doubled or mismatched, or a runbook that did not finish, at any size."""
    return any(not s["ledger"]["ok"] or any(r["status"] != "done" for r in s["runs"]) for s in result["sizes"])


def _s(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def table(result: dict) -> str:
    """The per-size, per-runbook table (Markdown)."""
    lines = ["| declarations (open) | seed s (decl/s) | runbook | status | prepare s | freeze s (target) | drain s | "
             "switch/rollback step s | moved | client errors (503 retried) | ledger | verify |", "|" + "---|" * 12]
    for size in result["sizes"]:
        seed = f"{_s(size['seed_s'], 1)} ({size['seed_rate']:,.0f})" if size.get("seed_rate") else "—"
        for run in size["runs"]:
            moved = sum(run["moved"].values()) if isinstance(run.get("moved"), dict) else "—"
            lines.append(
                f"| {size['declarations']:,} ({size['open_share']:.0%}) | {seed} | {run['runbook']} | {run['status']} "
                f"| {_s(run.get('prepare_s'))} | {_s(run['freeze_s'])} (≤ {TARGETS[run['runbook']]:g}) | "
                f"{_s(run.get('drain_s'))} | {_s(run.get('switch_s'))} | {moved} | {size['errors']} ({size['retried']}) | "
                f"{size['ledger']['describe']} | {'clean' if size['verify_ok'] else 'NOT clean'} |")
    return "\n".join(lines)


# -- the run ----------------------------------------------------------------------------------------------------------

def _runbook_params(root: Path, name: str, changeset: str) -> dict[str, str] | None:
    """The params for runbook `name` with A the primary and B its standby, by the names the runbook declares;
    None when runbooks/ has no such runbook."""
    path = root / "runbooks" / f"{name}.yaml"
    if not path.exists():
        return None
    declared = yaml.safe_load(path.read_text()).get("params", {})
    known = {"site": "A", "primary": "A", "from": "A", "standby": "B", "to": "B", "changeset": changeset}
    return {k: v for k, v in known.items() if k in declared}


def _seed_declarations(size: int, open_share: float, log):
    """A bench hook for deploy(): the bulk seed on A, timed (the command's wall time)."""
    timing: dict[str, float] = {}

    def run(dep: Deployment) -> None:
        log(f"- seeding {size:,} declarations on A ({open_share:.0%} open) …")
        started = time.monotonic()
        dep.run("seed", "--site", "A", "--enterprises", "0", "--declarations", str(size), "--open-share",
                str(open_share), timeout_s=7200)
        timing["seed_s"] = time.monotonic() - started
        log(f"  seeded in {timing['seed_s']:.1f} s ({size / timing['seed_s']:,.0f} declarations/s); "
            f"replicator snapshots B …")
    return run, timing


def _run_books(dep: Deployment, settings, witness, locust, *, changeset: str, gap_s: float, log) -> list[dict]:
    """org-restructure, org-rollback and (when runbooks/ has it) org-restructure-via-switchover in turn, each
    `gap_s` after the last; stops at the first that does not finish. The figures of each, with the ledger so far."""
    runs = []
    for name in (IN_PLACE, ROLLBACK, VIA_SWITCHOVER):
        params = _runbook_params(settings.root, name, changeset)
        if params is None:
            log(f"  {name}: no such runbook in runbooks/, skipped")
            continue
        if locust.poll() is not None:
            raise RuntimeError(f"Locust exited with {locust.returncode}; see {dep.workdir / 'locust.log'}")
        log(f"- {name} {' '.join(f'{k}={v}' for k, v in params.items())} …")
        figures = run_once_frozen(dep, witness, name, params, log)
        primary = witness.state().primary_site
        figures["ledger"] = ledger_against(dep, settings, primary).describe()
        runs.append(figures)
        log(f"  {name} {figures['status']}: prepare {_s(figures.get('prepare_s'))} s, freeze "
            f"{_s(figures['freeze_s'])} s, drain {_s(figures.get('drain_s'))} s, switch step "
            f"{_s(figures.get('switch_s'))} s" + (f", old primary's switch {_s(figures['old_primary_switch_s'])} s"
                                                   if figures.get("old_primary_switch_s") is not None else "")
            + f"; ledger on {primary}: {figures['ledger']}"
            + (f"; error: {figures['error']}" if figures.get("error") else ""))
        if figures["status"] != "done":
            return runs
        time.sleep(gap_s)
    return runs


def run_once_frozen(dep: Deployment, witness, name: str, params: dict, log, *, refusals: int = 3,
                     pause_s: float = 10.0) -> dict:
    """One run of runbook `name` and its figures. A run refused before it froze anything (a precondition, e.g. the
    standby's lag or the freeze estimate over budget) is run again after `pause_s`, `refusals` times at most, as
    an operator would; the refusals are in figures["refused"]. A run that froze is never repeated."""
    log_path, refused = dep.workdir / f"{name}.log", []
    while True:
        rc, run, command_at = launch_runbook(dep, witness, log_path, name, params, timeout_s=7200)
        figures = (run_figures(name, witness.entries(run.run_id), run.status, command_at) if run else
                   {"runbook": name, "status": f"exit {rc}, no run journaled", "freeze_s": None,
                    "error": log_path.read_text()[-300:], "frozen_at": None})
        if figures["status"] == "done" or figures["frozen_at"] is not None or len(refused) >= refusals:
            return {**figures, "refused": refused}
        refused.append(figures["error"] or figures["status"])
        log(f"  refused before freezing ({refused[-1][-160:]}); again in {pause_s:g} s")
        time.sleep(pause_s)


def one_size(base, *, workdir: Path, backend: str, size: int, enterprises_count: int, open_share: float,
             multiplier: float, warmup_s: float, gap_s: float, changeset: str, log) -> dict:
    """Deploy and seed for one store size, load, run the runbooks in order, check, stop everything."""
    from cutover.witness import open_witness

    hook, timing = _seed_declarations(size, open_share, log)
    started = time.monotonic()
    dep, settings = deploy(base, workdir, backend, enterprises_count, log, before_replication=hook)
    log(f"  rig up in {time.monotonic() - started:.0f} s")
    witness = open_witness(settings.witness_url, root=settings.root)
    load_at = time.time()
    try:
        locust = start_locust(dep, settings, multiplier)
        log(f"- Locust at {multiplier:g}x design through the front {front_url(settings)}; warming up {warmup_s:g} s …")
        time.sleep(warmup_s)
        runs = _run_books(dep, settings, witness, locust, changeset=changeset, gap_s=gap_s, log=log)
        log("- stopping the load; settling the standby; the final ledger check and verify …")
        stop_at, primary, verify_ok, final, events = stop_and_check(dep, settings, witness, locust)
    finally:
        witness.close()
        dep.stop()
    errors, retried = count_events(events, load_at, stop_at)
    return _size_result(size, open_share, enterprises_count, timing.get("seed_s"), runs, final, verify_ok, errors,
                        retried, primary)


def _size_result(size, open_share, enterprises_count, seed_s, runs, final: LedgerCheck, verify_ok, errors, retried,
                 primary) -> dict:
    result = {"declarations": size, "open_share": open_share, "enterprises": enterprises_count, "seed_s": seed_s,
              "seed_rate": size / seed_s if seed_s else None, "runs": runs, "errors": errors, "retried": retried,
              "final_primary": primary, "verify_ok": verify_ok,
              "ledger": {"ok": final.ok, "describe": final.describe(), "acknowledged": final.acknowledged,
                         "lost": final.lost, "doubled": final.doubled, "mismatched": final.mismatched}}
    result["missed"] = size_verdict(result)
    return result


def main_run(base, *, workdir: Path, backend: str, sizes: list[int], enterprises_count: int, open_share: float,
             multiplier: float, warmup_s: float, gap_s: float, changeset: str, log) -> dict:
    """Every store size in turn, each on a fresh deployment. Returns {"sizes": [...], "failed": reason or None}."""
    results = []
    for size in sizes:
        log(f"== {size:,} declarations, {enterprises_count:,} enterprises, {backend} ==")
        results.append(one_size(base, workdir=workdir / str(size), backend=backend, size=size,
                                enterprises_count=enterprises_count, open_share=open_share, multiplier=multiplier,
                                warmup_s=warmup_s, gap_s=gap_s, changeset=changeset, log=log))
    missed = [f"{s['declarations']:,}: {r}" for s in results for r in s["missed"]]
    return {"sizes": results, "backend": backend, "multiplier": multiplier,
            "failed": ("target missed: " + "; ".join(missed)) if missed else None}
