"""standbyctl drill: the disaster-recovery drill, carried out. The plan and verdict are standbyctl/drill/plan.py
(pure); the deployment, the load and the runbook launches are the benches' (standbyctl/bench_switchover*.py,
bench_failover.py, bench_restructure.py), so the drill measures exactly what the benches measure.

The run folder (DIR, default var/drill) holds every process's log, the databases (SQLite), Locust's files, the client
ledger, samples.jsonl (standbyctl/drill/sampler.py) and drill.json, rewritten after every step so that a drill
stopped half-way still leaves its record; the report (standbyctl/drill/report.py) is drawn from the folder alone.

Stopping: the first SIGINT or SIGTERM asks the drill to stop after the step in hand (a runbook runs in its own
session, so Ctrl-C at the terminal does not reach it: it finishes, or rolls itself back, on its own; a failover is
always followed by its failback, so the dead site comes back as a standby); the load is stopped, the sites are
verified, and the report so far is written. A second one stops at once (the runbook in hand is killed; `standbyctl
runbook resume` finishes it)."""
from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from standbyctl.bench_failover import (poll, runbook_figures, start_watch, wait_first_write, wait_lease_gone,
                                       watch_failover)
from standbyctl.bench_failover_figures import failover_rpo, reconcile_counts
from standbyctl.bench_restructure import run_once_frozen
from standbyctl.bench_switchover import (LedgerCheck, count_events, hold_delta, ledger_against, scrape,
                                         start_locust, stop_and_check, switch_once)
from standbyctl.bench_switchover_deploy import Deployment, deploy, site_url, stop_leftovers, terminate
from standbyctl.drill.plan import DrillStep, StepKind, StepStatus, drill_plan
from standbyctl.drill.sampler import Sampler
from standbyctl.drill.sites import EmbeddedSites, RunningSites, SitesUnfit, check_running
from standbyctl.token_reload import wait_until_accepted

WATCH_WAIT_S = 60.0  # the kill to a watch's failover run ended: the lease (seconds) and the run (about one)
GRACE_S = 2.0  # after a freeze or a failover gap: held writes released, answers on their way


@dataclass(frozen=True)
class DrillOptions:
    """What `standbyctl drill` was asked for. quick: a small population and short load phases."""

    quick: bool
    backend: str
    multiplier: float
    enterprises: int
    declarations: int
    warmup_s: float
    gap_s: float
    ramp_s: float
    workdir: Path
    command: str
    operator: str = "drill"
    failover_by: str = "watch"  # the standby's `watch --auto`; "operator": the runbook once the lease expired
    existing: Path | None = None  # the settings file of running sites (--existing); None: the drill deploys its own
    kill_command: str | None = None
    restart_command: str | None = None


# The users start over a whole declarant cycle (config/loadtest.yaml: 20 s), so their declarations spread over it:
# started within 4 s they came in bursts 20 s apart, and the RTO (the first declaration the new primary numbered)
# waited for the next burst (7.35 s where the failover itself was done in under 5).
# The steady SLOs are judged between steps (standbyctl/drill/judge.py): 6 s gaps leave a few steady seconds each.
QUICK = {"enterprises": 2_000, "declarations": 0, "warmup_s": 12.0, "gap_s": 6.0, "ramp_s": 20.0}
FULL = {"enterprises": 106_000, "declarations": 250_000, "warmup_s": 40.0, "gap_s": 20.0, "ramp_s": 30.0}


class StopRequest:
    """The first SIGINT/SIGTERM asks the drill to stop after the step in hand; the second stops it at once."""

    def __init__(self, log):
        self.log, self.requested, self._previous = log, False, {}

    def __enter__(self) -> "StopRequest":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def reinstall(self) -> None:
        """Take the signals back: ray.init() in this process installs its own fatal SIGTERM handler."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)

    def __exit__(self, *_exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum, _frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.log(f"\n{signal.Signals(signum).name}: the drill stops after the step in hand, then stops the load, "
                 f"verifies the sites and writes the report so far ({signal.Signals(signum).name} again: stop now)")


@dataclass
class Drill:
    """One drill's state while it runs: the deployment, the witness, the step records (drill.json's shape)."""

    options: DrillOptions
    log: object
    dep: Deployment | None = None
    settings: object = None
    witness: object = None
    locust: object = None
    token: str | None = None
    records: list[dict] = field(default_factory=list)
    params: dict = field(default_factory=dict)
    load_started_at: float | None = None
    sites: EmbeddedSites | RunningSites = field(default_factory=EmbeddedSites)
    token_label: str | None = None  # running sites: the run's tokens, revoked at the end

    @property
    def workdir(self) -> Path:
        return self.options.workdir

    def save(self, **extra) -> None:
        """drill.json as it stands (written whole, then renamed: a reader never sees half of it)."""
        document = {"params": self.params, "steps": self.records, **extra}
        tmp = self.workdir / "drill.json.tmp"
        tmp.write_text(json.dumps(document, indent=2, default=str))
        os.replace(tmp, self.workdir / "drill.json")


def new_record(step: DrillStep) -> dict:
    """A step's record before it runs (the contract's every key, empty)."""
    return {"n": step.n, "id": step.id, "title": step.title, "kind": step.kind.value, "runbook": step.runbook,
            "run_id": None, "status": StepStatus.PENDING.value, "started_at": None, "ended_at": None,
            "frozen_at": None, "resumed_at": None, "killed_at": None, "recovered_at": None, "freeze_s": None,
            "checked_at": None, "rto_s": None, "rpo_lost": None, "rpo_lost_after_reconcile": None,
            "rpo_listed_exactly": None, "conflicts": None, "held_front": 0, "held_site": 0, "client_errors": 0, "retried": 0,
            "verify": "not run", "ledger": "—", "ledger_ok": None, "ledger_lost": None, "ledger_doubled": None,
            "ledger_mismatched": None, "primary_after": None, "targets": dict(step.targets), "error": None,
            "note": None}


def machine() -> str:
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


# -- the steps --------------------------------------------------------------------------------------------------------

def run_switchover(d: Drill, step: DrillStep, record: dict) -> None:
    row = switch_once(d.dep, d.settings, d.witness, step.n, step.source, step.target, retries=3,
                      pause_s=max(d.options.gap_s, 5.0))
    f = row["figures"]
    record.update(status=_status(f.status), freeze_s=f.freeze_s, frozen_at=f.frozen_at, resumed_at=f.resumed_at,
                  held_front=row["holds"]["front_held"], held_site=row["holds"]["site_held"], error=f.error)
    if row["refusals"]:
        record["note"] = f"refused {len(row['refusals'])}x before freezing, then run again: {row['refusals'][0]}"


def held_since(d: Drill, before: dict) -> dict:
    """held_front and held_site for a step's record: the writes held since the /metrics reading `before`."""
    holds = hold_delta(before, scrape(d.settings))
    return {"held_front": holds["front_held"], "held_site": holds["site_held"]}


def run_org_restructure(d: Drill, step: DrillStep, record: dict) -> None:
    before = scrape(d.settings)
    figures = run_once_frozen(d.dep, d.witness, step.runbook, step.params, d.log, pause_s=max(d.options.gap_s, 5.0))
    record.update(status=_status(figures["status"]), freeze_s=figures["freeze_s"], frozen_at=figures["frozen_at"],
                  resumed_at=figures.get("resumed_at"), error=figures.get("error"), **held_since(d, before))
    moved = figures.get("moved")
    notes = [f"prepare {figures['prepare_s']:.2f} s online; moved {sum(moved.values()):,} records"
             if figures.get("prepare_s") is not None and isinstance(moved, dict) else None,
             f"refused {len(figures['refused'])}x before freezing, then run again" if figures.get("refused") else None]
    record["note"] = "; ".join(n for n in notes if n) or None


def run_failover(d: Drill, step: DrillStep, record: dict) -> None:
    """kill -9 of every process of the primary; the failover by the standby's `watch --auto` (the drill starts both
    sites' watches for the step when it started the sites; running sites have their own) or, with --failover-by
    operator, by the runbook once the witness's lease expired (as a person would); RTO to the first write the new
    primary acknowledged; RPO beside the ledger."""
    epoch, before = d.witness.state().epoch, scrape(d.settings)
    by_watch = d.options.failover_by == "watch"
    ours = by_watch and isinstance(d.sites, EmbeddedSites)
    try:
        if ours:
            start_watches(d, (step.source, step.target))
        kill_at, killed = d.sites.kill(d.dep, step.source)
        record["killed_at"] = kill_at
        d.log(f"  killed {step.source}: {killed}")
        if by_watch:
            failover, _took = watch_failover(d.witness, kill_at, timeout_s=WATCH_WAIT_S)
            if failover.status == "none" and not ours:
                hint = (f"is `standbyctl watch --site {step.target} --auto` running at {step.target}? (or drill with "
                        "--failover-by operator)")
                failover = replace(failover, error=f"{failover.error}; {hint}")
        else:
            wait_lease_gone(d.witness, step.source, epoch)
            failover, _took = runbook_figures(d.dep, d.witness, d.workdir / f"step-{step.n}-failover.log",
                                              "failover", step.params)
    finally:
        if ours:
            stop_watches(d)
    record.update(status=_status(failover.status), run_id=failover.run_id, error=failover.error)
    if failover.status != "done":
        return
    recovered = wait_first_write(d.dep, d.settings.site(step.target).site_digit, kill_at)
    # the front holds writes from the kill until B is primary
    record.update(recovered_at=recovered, rto_s=(recovered - kill_at) if recovered else None, **held_since(d, before))
    rpo = failover_rpo(failover, ledger_against(d.dep, d.settings, step.target).lost)
    record.update(rpo_lost=rpo["ledger"], rpo_listed_exactly=not rpo["unnamed"],
                  verify=f"not run: {step.source} is down until its failback",
                  note=f"failover report: {rpo['reported']} lost" + ("" if rpo["exact"] else " (estimate)")
                       + (f", {rpo['unseen']} of them not numbers the ledger lost (a later change to a number "
                          f"{step.target} has, or an answer the kill cut off)" if rpo["unseen"] else ""))


def start_watches(d: Drill, sites: tuple[str, ...], timeout_s: float = 120) -> None:
    """`standbyctl watch --site S --auto` for each site, as in production, once each has made its first decision
    (audited in the witness), so the kill is watched from its first second."""
    from cutover.watch.loop import DECIDE_ACTION

    since = time.time()
    for site in sites:
        start_watch(d.dep, site)
    wanted = {f"watch@{site}" for site in sites}
    seen = poll(lambda: {r.operator for r in d.witness.audit_records(50)
                         if r.action == DECIDE_ACTION and r.at >= since} & wanted,
                done=lambda found: found == wanted, every_s=0.2, timeout_s=timeout_s)
    if seen != wanted:
        raise RuntimeError(f"the watch of {sorted(wanted - seen)} made no decision within {timeout_s:g} s; "
                           f"see {d.workdir}/watch-*.log")


def stop_watches(d: Drill) -> None:
    for name in [n for n in d.dep.procs if n.startswith("watch-")]:
        proc = d.dep.procs.pop(name)
        terminate(proc.pid, proc)


def run_failback(d: Drill, step: DrillStep, record: dict) -> None:
    site, before = step.params["site"], scrape(d.settings)
    d.sites.bring_back(d.dep, d.settings, site, d.token)
    failback, _took = runbook_figures(d.dep, d.witness, d.workdir / f"step-{step.n}-failback.log", "failback",
                                      step.params)
    counts = reconcile_counts(failback)
    record.update(status=_status(failback.status), run_id=failback.run_id, error=failback.error,
                  conflicts=counts["conflicts"], **held_since(d, before))
    record["note"] = (f"quarantined {counts['quarantined']}, re-applied {counts['reapplied']}, "
                      f"conflicts {counts['conflicts']}")


RUNNERS = {StepKind.SWITCHOVER: run_switchover, StepKind.ORG_VIA_SWITCHOVER: run_org_restructure,
           StepKind.FAILOVER: run_failover, StepKind.FAILBACK: run_failback}


def _status(runbook_status: str) -> str:
    return StepStatus.DONE.value if runbook_status == "done" else StepStatus.FAILED.value


def after_step(d: Drill, step: DrillStep, record: dict) -> None:
    """verify between the sites (unless one is down) and the ledger against the primary, into the record."""
    from cutover.actions.sites import Sites

    primary = d.witness.state().primary_site
    record["primary_after"] = primary
    if record["verify"] == "not run" and record["status"] == StepStatus.DONE.value:
        sites = Sites(d.settings, d.witness, config_path=d.dep.config)
        try:
            ok = sites.verify(primary, "B" if primary == "A" else "A", settle_timeout_s=60).ok
            record["verify"] = "clean" if ok else "differences"
        except Exception as exc:  # noqa: BLE001 - the drill reports it and goes on to the report
            record["verify"] = f"not run: {type(exc).__name__}: {str(exc)[:160]}"
        finally:
            sites.close()
    check = ledger_against(d.dep, d.settings, primary)
    record.update(ledger=check.describe(), ledger_ok=check.ok, ledger_lost=len(check.lost),
                  ledger_doubled=len(check.doubled), ledger_mismatched=len(check.mismatched))
    if step.kind is StepKind.FAILBACK:
        record["rpo_lost_after_reconcile"] = len(check.lost)


def run_step(d: Drill, step: DrillStep, record: dict, sampler: Sampler) -> None:
    record["status"] = StepStatus(record["status"]).to(StepStatus.RUNNING).value
    record["started_at"] = time.time()
    sampler.step(step.id, f"step {step.n} {step.id}")
    d.log(f"- step {step.n}: {step.title} …")
    d.save()
    try:
        RUNNERS[step.kind](d, step, record)
    except KeyboardInterrupt:
        record.update(status=StepStatus.INTERRUPTED.value, error="stopped at once by a second Ctrl-C/SIGTERM")
        raise
    except Exception as exc:  # noqa: BLE001 - a step that breaks is a failed step in the report, not a traceback
        record.update(status=StepStatus.FAILED.value, error=f"{type(exc).__name__}: {exc}"[:500])
    finally:
        record["ended_at"] = time.time()
        sampler.step(None)
    if record["status"] != StepStatus.INTERRUPTED.value:
        after_step(d, step, record)
    record["checked_at"] = time.time()
    d.save()
    d.log(step_line(record))


def step_line(r: dict) -> str:
    figures = [f"freeze {r['freeze_s']:.2f} s" if r["freeze_s"] is not None else None,
               f"RTO {r['rto_s']:.2f} s" if r["rto_s"] is not None else None,
               f"RPO {r['rpo_lost']} lost" if r["rpo_lost"] is not None else None,
               f"held front/site {r['held_front']}/{r['held_site']}",
               f"verify {r['verify']}", f"ledger {r['ledger']}"]
    return (f"  step {r['n']} {r['status']} in {r['ended_at'] - r['started_at']:.1f} s: "
            + ", ".join(f for f in figures if f) + (f"; error: {r['error']}" if r["error"] else "")
            + (f"; {r['note']}" if r["note"] else ""))


# -- the whole drill --------------------------------------------------------------------------------------------------

def start(d: Drill, base) -> tuple[str, str]:
    """Deploy (sites, witness, front, replication A → B caught up), or check the running sites, then the load with
    its ledger. Returns (primary, standby)."""
    o = d.options
    if o.existing is not None:
        primary, standby = start_on_running_sites(d, base)
        _start_load(d)
        return primary, standby

    def bulk_seed(dep: Deployment) -> None:
        if o.declarations:
            d.log(f"- seeding {o.declarations:,} historical declarations on A …")
            dep.run("seed", "--site", "A", "--enterprises", "0", "--declarations", str(o.declarations),
                    timeout_s=7200)

    d.dep, d.settings = deploy(base, o.workdir, o.backend, o.enterprises, d.log, before_replication=bulk_seed)
    from cutover.witness import open_witness

    d.dep.operator = o.operator
    d.witness = open_witness(d.settings.witness_url, root=d.settings.root)
    _start_load(d)
    return "A", "B"


def start_on_running_sites(d: Drill, base) -> tuple[str, str]:
    """The running sites of the settings file, checked (standbyctl/drill/sites.py); tokens issued for the run."""
    from cutover.witness import open_witness
    from standby.store.engine import make_engine

    o = d.options
    stop_leftovers(o.workdir, d.log)
    shutil.rmtree(o.workdir, ignore_errors=True)  # a run folder of the drill's own (the CLI checked it)
    o.workdir.mkdir(parents=True)
    d.dep, d.settings = Deployment(o.workdir, d.log), base
    d.dep.config, d.dep.operator = o.existing, o.operator
    d.sites = RunningSites(o.kill_command, o.restart_command)
    d.witness = open_witness(base.witness_url, root=base.root)
    engines = []

    def engine_for(site: str):
        engines.append(make_engine(base.database_url(site), writer=False))
        return engines[-1]
    try:
        primary, standby = check_running(base, d.witness, engine_for)
    finally:
        for engine in engines:
            engine.dispose()
    d.token_label = f"drill-{time.strftime('%Y%m%d-%H%M%S')}"
    d.log(f"- running sites: {primary} primary, {standby} its standby; tokens for the run labelled {d.token_label}")
    d.dep.run("tokens", "issue-many", "--site", primary, "--declarants", "300", "--out",
              str(o.workdir / "tokens.json"), "--label", d.token_label)
    token = json.loads((o.workdir / "tokens.json").read_text())["declarants"][-1]["token"]
    for site in (primary, standby):  # the load starts at once: every HTTP process of each site must know the tokens
        if not wait_until_accepted(site_url(base, site), token):
            raise SitesUnfit(f"site {site} did not accept the drill's tokens within 30 s: is it serving with the "
                             f"tokens file of {o.existing} (auth.tokens_file)?")
    return primary, standby


def _start_load(d: Drill) -> None:
    o = d.options
    d.token = json.loads((o.workdir / "tokens.json").read_text())["declarants"][-1]["token"]
    d.locust = start_locust(d.dep, d.settings, o.multiplier, ramp_s=o.ramp_s)
    d.load_started_at = time.time()
    d.params["load_started_at"] = d.load_started_at
    d.log(f"- Locust at {o.multiplier:g}x design through the front; {o.warmup_s:g} s of load before the first step")


def steps_loop(d: Drill, plan: list[DrillStep], stop: StopRequest, sampler: Sampler) -> bool:
    """Run the plan in order; False when it stopped early (a failed step or the operator). A failover is always
    followed by its failback, so the killed site is not left down."""
    for step, record in zip(plan, d.records):
        previous = d.records[step.n - 2] if step.n > 1 else None
        must_follow = step.kind is StepKind.FAILBACK and previous and previous["status"] == "done"
        if (stop.requested and not must_follow) or (previous and previous["status"] in ("failed", "interrupted")):
            return False
        why_not = reason_to_skip(d, step)
        if why_not:
            record.update(status=StepStatus(record["status"]).to(StepStatus.SKIPPED).value, note=why_not)
            d.log(f"- step {step.n}: {step.title}: {why_not}")
            continue
        if d.locust.poll() is not None:
            raise RuntimeError(f"Locust exited with {d.locust.returncode}; see {d.workdir / 'locust.log'}")
        run_step(d, step, record, sampler)
        if not stop.requested:  # after the last step too: the steady figures then see the sites as the drill left them
            _sleep_unless_stopped(d.options.gap_s, stop)
    return True


def reason_to_skip(d: Drill, step: DrillStep) -> str | None:
    """Why `step` is not run (None: run it): a failover with nothing the drill may kill (running sites without
    --kill-primary) and its failback, or a step whose primary is not the primary now (the failover was skipped)."""
    if step.kind in (StepKind.FAILOVER, StepKind.FAILBACK) and not d.sites.can_kill:
        return "not run: no --kill-primary COMMAND (a drill never kills running sites it did not start)"
    primary = d.witness.state().primary_site
    if step.source != primary:
        return f"not run: {primary} is the primary, not {step.source}"
    return None


def finish(d: Drill) -> dict:
    """Stop the load, verify the final primary against its standby, check every acknowledgement there; the
    client events spread over the steps (each step owns the seconds to the next step's start)."""
    stop_at, primary, verify_ok, final, events = stop_and_check(d.dep, d.settings, d.witness, d.locust)
    d.locust = None
    ran = [r for r in d.records if r["started_at"] is not None]
    ends = [r["started_at"] for r in ran[1:]] + [stop_at]
    for record, end in zip(ran, ends):
        record["client_errors"], record["retried"] = count_events(events, record["started_at"], end)
    return {"stop_at": stop_at, "final_primary": primary, "final_verify": "clean" if verify_ok else "differences",
            "final_ledger": _ledger_json(final), "client_errors": count_events(events, 0, stop_at)[0]}


def _ledger_json(check: LedgerCheck) -> dict:
    return {"ok": check.ok, "describe": check.describe(), "acknowledged": check.acknowledged, "lost": check.lost,
            "doubled": check.doubled, "mismatched": check.mismatched}


def main_run(base, options: DrillOptions, log) -> dict:
    """The drill from start to report. Returns drill.json's document (with "verdict"), also when the drill
    stopped early; every process it started is stopped, also on failure or a second Ctrl-C."""
    from standbyctl.drill.judge import judge

    options.workdir.parent.mkdir(parents=True, exist_ok=True)
    d = Drill(options, log)
    plan = drill_plan()
    d.records = [new_record(s) for s in plan]
    d.params = {"command": options.command, "mode": "quick" if options.quick else "full",
                "backend": options.backend, "multiplier": options.multiplier, "enterprises": options.enterprises,
                "declarations": options.declarations, "warmup_s": options.warmup_s, "ramp_s": options.ramp_s,
                "gap_s": options.gap_s,
                "sites": f"running: {options.existing}" if options.existing else "started by the drill",
                "failover_by": options.failover_by,
                "operator": options.operator, "machine": machine(), "started_at": time.time(), "ended_at": None}
    extra, completed, sampler = {}, False, None
    with StopRequest(log) as stop:
        try:
            primary, standby = start(d, base)
            stop.reinstall()
            if (primary, standby) != (plan[0].source, plan[0].target):
                plan = drill_plan(primary, standby)
                d.records = [new_record(s) for s in plan]
            d.save()
            sampler = Sampler(d.settings, d.dep.config, d.workdir / "samples.jsonl", log).start()
            _sleep_unless_stopped(d.options.warmup_s, stop)
            completed = steps_loop(d, plan, stop, sampler)
            log("- stopping the load; settling the standby; the final ledger check and verify …")
            sampler.finishing()
            extra = finish(d)
        except KeyboardInterrupt:
            extra["error"] = "stopped at once by a second Ctrl-C/SIGTERM: the step in hand was cut short"
        except Exception as exc:  # noqa: BLE001 - the report says what broke; the CLI prints it
            extra["error"] = f"{type(exc).__name__}: {exc}"[:800]
        finally:
            _shut_down(d, sampler)
    d.params["ended_at"] = time.time()
    for record in d.records:
        if record["status"] == StepStatus.PENDING.value:
            record["status"] = StepStatus(record["status"]).to(StepStatus.SKIPPED).value
    document = judge(d.params, d.records, extra, interrupted=stop.requested and not completed,
                     workdir=options.workdir, slo_path=base.path(Path("config/slo.yaml")))
    if options.workdir.exists():
        d.save(**{k: v for k, v in document.items() if k not in ("params", "steps")})
    return document


def _sleep_unless_stopped(seconds: float, stop: StopRequest) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline and not stop.requested:
        time.sleep(0.2)


def _shut_down(d: Drill, sampler: Sampler | None) -> None:
    if sampler is not None:
        sampler.stop()
    if d.locust is not None and d.locust.poll() is None:
        from standbyctl.bench_switchover import stop_locust

        stop_locust(d.locust)
    if d.witness is not None:
        d.witness.close()
    if d.token_label is not None:
        from standby.api.auth import revoke_tokens

        revoked = revoke_tokens(d.settings.path(d.settings.auth.tokens_file), d.token_label)
        d.log(f"- revoked the run's {revoked} tokens ({d.token_label})")
    if d.dep is not None:
        d.log("- stopping every process the drill started …")
        d.dep.stop()
