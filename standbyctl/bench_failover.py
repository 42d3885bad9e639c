"""standbyctl bench failover: kill -9 of the whole primary site under Locust through the front, measured.

The deployment is the switchover bench's (standbyctl/bench_switchover_deploy.py): sites A and B (`standbyctl
serve`, each with its lease keeper), the front and the replicators each in its own process, one witness, the sites'
Ray actors on the one Ray this process starts. Locust drives the front at MULTIPLIER x design with its client ledger.

Each round, against the site the witness names primary (A, then B, … : the rounds go back and forth):
1. kill: SIGKILL at once to the site's serve process group, its Ray workers (found by their actor names, their
   pids asked before the kill: they run under Ray's raylet, not in serve's process group) and the replicator that
   streams out of it; the workers are then checked gone.
2. failover, by one of two triggers: "watch" (default): `standbyctl watch --site S --auto` runs for each site (the
   killed site's watch dies with it and is started again after the failback) and Y's watch runs the failover
   runbook itself once X fails its checks and its lease expired; "runbook": the bench polls the witness and, once
   X's lease expired, runs `standbyctl runbook run failover --param from=X --param to=Y --yes --operator bench` in
   its own process, as an operator would. RTO = kill to the first 201 of a number issued by Y in the client
   ledger. The watch's flap guard (settings watch.flap_guard_s, 600 s by default) is set shorter than a round.
3. RPO: the failover report's lost count beside the ledger's (acknowledged, missing on Y).
4. The dead site's serve is started again (its role comes from the witness: a fenced standby), then `standbyctl
   runbook run failback --param site=X --param primary=Y` rebuilds it as Y's standby and reconciles; the ledger is
   checked on Y again (missing after reconcile: 0 unless a conflict is listed). The next round kills Y.

Decision latency, synchronous beside asynchronous, in the same deployment: before the rounds, both sites run with
settings.sync naming the pair A, B for one Locust warm-up and window, then both are restarted without it and the
rounds' Locust gives the asynchronous window before the first kill. Both windows: the green-lane decision
(DECISION/green) from Locust's per-second latency log, by loadtests.latency_log.percentile.

The figures are computed by standbyctl/bench_failover_figures.py (pure, unit-tested)."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import yaml
from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

from standbyctl.bench_failover_figures import (decision_latency, failover_rpo, first_write_by, gap_events,
                                               reconcile_counts, run_figures, RunFigures)
from standbyctl.bench_switchover import (launch_runbook, ledger_against, metric_totals, read_ledger, start_locust,
                                         stop_and_check, stop_locust)
from standbyctl.bench_switchover_deploy import Deployment, deploy, site_url, terminate

OTHER = {"A": "B", "B": "A"}


# -- killing a site ---------------------------------------------------------------------------------------------------

def site_worker_pids(site: str) -> list[int]:
    """The pids of `site`'s ClearanceWorker actors on this process's Ray (named clearance-SITE-i, in a namespace of
    the serve that made them), asked of each actor; an actor that does not answer within 10 s is left out."""
    import ray

    pids = []
    for named in ray.util.list_named_actors(all_namespaces=True):
        if not named["name"].startswith(f"clearance-{site}-"):
            continue
        try:
            actor = ray.get_actor(named["name"], namespace=named["namespace"])
            pids.append(ray.get(actor.identity.remote(), timeout=10)[1])
        except Exception:  # noqa: BLE001 - an actor of a serve already gone: nothing left to kill
            continue
    return pids


def replicators_out_of(dep: Deployment, site: str) -> list[int]:
    """Running replicators streaming out of `site` (their pid files in the data folder, which is the work folder)."""
    from cutover.actions.sites import running_replicator
    from replication.sources import stream_name

    return [pid for other in OTHER if other != site
            if (pid := running_replicator(dep.workdir / f"replicate-{stream_name(site, other)}.pid"))]


def kill_site(dep: Deployment, site: str) -> tuple[float, dict]:
    """SIGKILL every process of `site` at once: serve's process group, its Ray workers, the replicator out of it and
    its watch (when one runs). Returns the kill's Unix time (taken just before the first signal) and what was
    killed; `survivors` lists workers still alive 10 s later (none is expected: SIGKILL, and their owner is dead)."""
    from standby.processes import pid_alive

    workers, replicators = site_worker_pids(site), replicators_out_of(dep, site)
    serve, watch = dep.procs.pop(f"site-{site.lower()}"), dep.procs.pop(f"watch-{site.lower()}", None)
    kill_at = time.time()
    os.killpg(serve.pid, signal.SIGKILL)
    if watch is not None:  # the site's own watch dies with it
        _kill(os.killpg, watch.pid)
    for pid in workers:
        _kill(os.kill, pid)
    for pid in replicators:
        _kill(os.killpg, pid)
    serve.wait(timeout=30)
    survivors = poll(lambda: [p for p in workers if pid_alive(p)], done=lambda alive: not alive, every_s=0.1,
                     timeout_s=10)
    return kill_at, {"site": site, "workers": len(workers), "replicators": len(replicators), "watch": watch is not None,
                     "survivors": survivors}


def _kill(how, pid: int) -> None:
    try:
        how(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_lease_gone(witness, site: str, epoch: int, timeout_s: float = 120) -> float:
    """Wait until the witness's lease for `site` (primary at `epoch`) has expired or the epoch moved on; returns the
    Unix time that was first seen."""
    from cutover.witness.lease import lease_expired

    def gone() -> float | None:
        state, now = witness.state(), time.time()
        return now if state.epoch > epoch or state.primary_site != site or lease_expired(state, now) else None

    at = poll(gone, done=lambda r: r is not None, every_s=0.05, timeout_s=timeout_s)
    if at is None:
        raise RuntimeError(f"the witness still held {site}'s lease {timeout_s:g} s after the kill")
    return at


def poll(fn, done, every_s: float, timeout_s: float):
    """Call `fn` every `every_s` until `done(result)` or `timeout_s` passed; the last result either way."""
    return Retrying(retry=retry_if_result(lambda r: not done(r)), wait=wait_fixed(every_s),
                    stop=stop_after_delay(timeout_s), retry_error_callback=lambda st: st.outcome.result())(fn)


def start_site(dep: Deployment, settings, site: str, token: str) -> None:
    """`standbyctl serve --site SITE` again (logging to the same file), waiting until it answers /v1/site."""
    name = f"site-{site.lower()}"
    dep.spawn(name, dep.cli_args("serve", "--site", site))
    dep.wait_http(name, f"{site_url(settings, site)}/v1/site", token=token)


def start_watch(dep: Deployment, site: str) -> None:
    """`standbyctl watch --site SITE --auto`, as each site runs one in production."""
    dep.spawn(f"watch-{site.lower()}", dep.cli_args("watch", "--site", site, "--auto"))


def update_config(dep: Deployment, section: str, values: dict) -> None:
    """Set `values` in one section of the deployment's settings file (read by every process it starts next)."""
    raw = yaml.safe_load(dep.config.read_text())
    raw[section] = {**raw.get(section, {}), **values}
    dep.config.write_text(yaml.safe_dump(raw))


def restart_sites(dep: Deployment, settings, token: str, sync_pairs: list[list[str]]) -> None:
    """Stop both sites' serve (SIGTERM), write settings.sync with `sync_pairs` into the settings file, start both
    again. Used with no load running and no watch running (a watch would take the restart for a death)."""
    for site in ("A", "B"):
        proc = dep.procs.pop(f"site-{site.lower()}", None)
        if proc is not None:
            terminate(proc.pid, proc)
    update_config(dep, "sync", {"pairs": sync_pairs})
    for site in ("A", "B"):
        start_site(dep, settings, site, token)


# -- one round --------------------------------------------------------------------------------------------------------

def runbook_figures(dep: Deployment, witness, log_path: Path, name: str, params: dict) -> tuple[RunFigures, float]:
    """Run a runbook in its own process; its journal's figures and the command's wall time (s)."""
    rc, run, command_at = launch_runbook(dep, witness, log_path, name, params)
    took = time.time() - command_at
    if run is None:
        return RunFigures(f"exit {rc}, no run journaled", error=log_path.read_text()[-300:]), took
    return run_figures(witness.entries(run.run_id), run.status, run.run_id), took


def watch_failover(witness, after: float, timeout_s: float = 120) -> tuple[RunFigures, float]:
    """The failover run a watch started after `after`, once it has ended: its journal's figures and its run time
    (s, the run's own start to its last update); a RunFigures with status "none" when no run ended in time."""
    from cutover.runbook.plan import RunStatus

    def ended():
        run = next((r for r in witness.runs(10) if r.runbook == "failover" and r.started_at >= after), None)
        return run if run is not None and RunStatus(run.status).is_terminal else None

    run = poll(ended, done=lambda r: r is not None, every_s=0.1, timeout_s=timeout_s)
    if run is None:
        return RunFigures("none", error=f"no watch started a failover within {timeout_s:g} s"), float(timeout_s)
    figures = run_figures(witness.entries(run.run_id), run.status, run.run_id)
    return figures, run.updated_at - run.started_at


def wait_first_write(dep: Deployment, digit: int, after: float, timeout_s: float = 60) -> float | None:
    """The first pre-declaration numbered by the site with `digit` in the client ledger after `after`, waiting up
    to `timeout_s` for it; None if none came."""
    return poll(lambda: first_write_by(read_ledger(dep.workdir / "ledger")[0], digit, after),
                done=lambda r: r is not None, every_s=0.2, timeout_s=timeout_s)


def kill_round(dep: Deployment, settings, witness, n: int, token: str, trigger: str) -> dict:
    """Kill the primary, fail over to its standby (trigger "runbook": the bench runs the runbook once the lease
    expired; "watch": the standby's `watch --auto` does), measure, bring the dead site back and fail back. The row's
    `events` are filled in at the end, when every client event is known."""
    state = witness.state()
    old = state.primary_site
    new = OTHER[old]
    kill_at, killed = kill_site(dep, old)
    dep.log(f"  {n:>2}. killed {old} (serve, {killed['workers']} Ray workers, {killed['replicators']} replicator(s))"
            + (f"; workers still alive: {killed['survivors']}" if killed["survivors"] else ""))
    lease_at = wait_lease_gone(witness, old, state.epoch)
    if trigger == "watch":
        failover, runbook_s = watch_failover(witness, kill_at)
    else:
        failover, runbook_s = runbook_figures(dep, witness, dep.workdir / f"failover-{n:02d}.log", "failover",
                                              {"from": old, "to": new})
    row = {"n": n, "direction": f"{old}→{new}", "kill_at": kill_at, "killed": killed, "lease_s": lease_at - kill_at,
           "runbook_s": runbook_s, "failover": failover, "failback": None, "after": None, "reconcile": {}}
    recovered = wait_first_write(dep, settings.site(new).site_digit, kill_at) if failover.status == "done" else None
    row["recovered_at"], row["rto_s"] = recovered, (recovered - kill_at) if recovered else None
    row["rpo"] = failover_rpo(failover, ledger_against(dep, settings, new).lost)
    dep.log(f"      failover {failover.status} in {runbook_s:.1f} s (lease gone {row['lease_s']:.2f} s after the "
            f"kill); RTO {row['rto_s'] if row['rto_s'] is None else round(row['rto_s'], 2)} s; RPO: report "
            f"{row['rpo']['reported']} (exact {row['rpo']['exact']}), ledger {row['rpo']['ledger']}"
            + (f"; error: {failover.error}" if failover.error else ""))
    if failover.status != "done":
        return row
    start_site(dep, settings, old, token)
    failback, failback_s = runbook_figures(dep, witness, dep.workdir / f"failback-{n:02d}.log", "failback",
                                           {"site": old, "primary": new})
    row["failback"], row["failback_s"], row["reconcile"] = failback, failback_s, reconcile_counts(failback)
    row["after"] = ledger_against(dep, settings, new)
    if trigger == "watch":
        start_watch(dep, old)
    dep.log(f"      failback {failback.status} in {failback_s:.1f} s {row['reconcile']}; after reconcile: "
            f"{row['after'].describe()}" + (f"; error: {failback.error}" if failback.error else ""))
    return row


# -- the whole run ----------------------------------------------------------------------------------------------------

def load_window(dep: Deployment, settings, locust, warmup_s: float, window_s: float) -> tuple[float, float, dict]:
    """Let Locust warm up, then measure a window; (start, end, what A's metric totals grew by in it). Used before
    the first kill, while A is the primary."""
    time.sleep(warmup_s)
    primary_url = site_url(settings, "A")
    before, start = _metrics(primary_url), time.time()
    time.sleep(window_s)
    end = time.time()
    if locust.poll() is not None:
        raise RuntimeError(f"Locust exited with {locust.returncode}; see {dep.workdir / 'locust.log'}")
    return start, end, {k: v - before.get(k, 0.0) for k, v in _metrics(primary_url).items()}


def _metrics(url: str) -> dict:
    try:
        return metric_totals(httpx.get(f"{url}/metrics", timeout=5).text)
    except httpx.HTTPError:
        return {}


def sync_phase(dep: Deployment, settings, token: str, multiplier: float, warmup_s: float, window_s: float) -> dict:
    """Both sites restarted with settings.sync pairing A and B; Locust warm-up and window; Locust stopped; both
    restarted without the pair. Returns the window and what the sync metrics counted in it."""
    restart_sites(dep, settings, token, [["A", "B"]])
    locust = start_locust(dep, settings, multiplier)
    try:
        start, end, delta = load_window(dep, settings, locust, warmup_s, window_s)
    finally:
        stop_locust(locust)  # Locust writes its latency log as it quits
    restart_sites(dep, settings, token, [])
    return {"start": start, "end": end, "waits": int(delta.get("standby_sync_wait_seconds_count", 0)),
            "standby_lost": int(delta.get("standby_sync_lost_total", 0))}


def main_run(base, *, workdir: Path, backend: str, kills: int, multiplier: float, warmup_s: float, window_s: float,
             gap_s: float, sync_window: bool, enterprises_count: int, trigger: str, flap_guard_s: float,
             log) -> dict:
    """Deploy, measure sync then async decision latency, kill the primary `kills` times (failback between), stop
    the load, check the ledger on the final primary and verify; every process stopped at the end, also on failure
    or Ctrl-C. Returns rows, latency phases, the final check and verify's result."""
    from cutover.witness import open_witness
    from loadtests.latency_log import read_latency_logs

    dep, settings = deploy(base, workdir, backend, enterprises_count, log)
    rows: list[dict] = []
    sync = witness = None
    try:
        witness = open_witness(settings.witness_url, root=settings.root)
        token = json.loads((workdir / "tokens.json").read_text())["declarants"][-1]["token"]
        if sync_window:
            log(f"- synchronous mode (sync.pairs [[A, B]]): both sites restarted; Locust {multiplier:g}x for "
                f"{warmup_s:g} s warm-up + {window_s:g} s measured …")
            sync = sync_phase(dep, settings, token, multiplier, warmup_s, window_s)
            log(f"  {sync['waits']} acknowledgements waited for the standby, standby lost {sync['standby_lost']} "
                f"times; both sites restarted without sync")
        if trigger == "watch":
            update_config(dep, "watch", {"flap_guard_s": flap_guard_s})
            for site in ("A", "B"):
                start_watch(dep, site)
            log(f"- `standbyctl watch --site A|B --auto` running (flap guard {flap_guard_s:g} s)")
        locust = start_locust(dep, settings, multiplier)
        log(f"- asynchronous: Locust {multiplier:g}x, {warmup_s:g} s warm-up + {window_s:g} s measured, then "
            f"{kills} kills of the primary, {gap_s:g} s apart …")
        async_start, async_end, _ = load_window(dep, settings, locust, warmup_s, window_s)
        for n in range(1, kills + 1):
            if locust.poll() is not None:
                raise RuntimeError(f"Locust exited with {locust.returncode}; see {workdir / 'locust.log'}")
            row = kill_round(dep, settings, witness, n, token, trigger)
            rows.append(row)
            if row["failback"] is None or row["failback"].status != "done":
                break
            time.sleep(gap_s)
        log("- stopping the load; settling the standby; final ledger check and verify …")
        stop_at, primary, verify_ok, final, events = stop_and_check(dep, settings, witness, locust)
    finally:
        if witness is not None:
            witness.close()
        dep.stop()
    ends = [r["kill_at"] for r in rows[1:]] + [stop_at]
    for row, end in zip(rows, ends):
        row["events"] = gap_events(events, row["kill_at"], row.get("recovered_at"), end)
    histograms = read_latency_logs(workdir / "locust")
    phases = {"async": decision_latency(histograms, async_start, async_end)}
    if sync is not None:
        phases["sync"] = {**decision_latency(histograms, sync["start"], sync["end"]),
                          "waits": sync["waits"], "standby_lost": sync["standby_lost"]}
    return {"rows": rows, "phases": phases, "final": final, "verify_ok": verify_ok, "final_primary": primary,
            "events": events, "stop_at": stop_at}
