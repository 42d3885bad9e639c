"""standbyctl bench sync: what synchronous mode (settings.sync) costs in decision latency, beside asynchronous
replication, in one deployment and one run.

The deployment is the switchover bench's (standbyctl/bench_switchover_deploy.py): sites A (primary) and B (standby)
each `standbyctl serve` in its own process, the replicator A → B, the front, one witness, the sites' Ray actors on
the one Ray this process starts. Locust drives the front at MULTIPLIER x design (config/capacity.yaml), the same
load as `bench switchover` and `bench failover`.

Each round measures both modes, in alternating order (async first in odd rounds, sync first in even ones), so drift
in the machine's load hits both alike: both sites are restarted with `sync.pairs` [[A, B]] (sync) or none (async),
Locust warms up, then one window is measured. Per mode, over all its windows: p50/p99 of the green-lane decision
(Locust's DECISION/green, the registration's answer) from Locust's per-second latency log by the project's
histogram percentile (standbyctl.bench_failover_figures.decision_latency), and from the primary's /metrics what the
acknowledgements waited for the standby (standby_sync_wait_seconds), the rounds that shared a committed read
(standby_sync_rounds_total) and whether the standby was ever lost (standby_sync_lost_total)."""
from __future__ import annotations

import json
from pathlib import Path

from loadtests.latency_log import read_latency_logs
from standbyctl.bench_failover import load_window, restart_sites, update_config
from standbyctl.bench_failover_figures import decision_latency
from standbyctl.bench_switchover import start_locust, stop_locust
from standbyctl.bench_switchover_deploy import deploy, replicator_pids, start_forward_stream, terminate

MODES = {"async": [], "sync": [["A", "B"]]}  # mode -> settings.sync.pairs


def window(dep, settings, token: str, mode: str, multiplier: float, warmup_s: float, window_s: float) -> dict:
    """Both sites restarted in `mode`, Locust warmed up, one window measured; its times and the metric deltas."""
    restart_sites(dep, settings, token, MODES[mode])
    locust = start_locust(dep, settings, multiplier)
    try:
        start, end, delta = load_window(dep, settings, locust, warmup_s, window_s)
    finally:
        stop_locust(locust)  # Locust writes its latency log as it quits
    return {"mode": mode, "start": start, "end": end,
            "waits": int(delta.get("standby_sync_wait_seconds_count", 0)),
            "wait_s": delta.get("standby_sync_wait_seconds_sum", 0.0),
            "rounds": int(delta.get("standby_sync_rounds_total", 0)),
            "standby_lost": int(delta.get("standby_sync_lost_total", 0))}


def summarise(windows: list[dict], histograms) -> dict:
    """Per mode: the decision latency of each window and of all its windows together (merged histograms: the
    windows are disjoint in time), and the sync metrics summed."""
    out = {}
    for mode in MODES:
        mine = [w for w in windows if w["mode"] == mode]
        per_window = [decision_latency(histograms, w["start"], w["end"]) for w in mine]
        merged = _merged(histograms, mine)
        waits = sum(w["waits"] for w in mine)
        out[mode] = {**decision_latency(merged, 0, 2 ** 40), "seconds": sum(w["seconds"] for w in per_window),
                     "windows": per_window, "waits": waits,
                     "mean_wait_ms": round(sum(w["wait_s"] for w in mine) / waits * 1000, 2) if waits else None,
                     "rounds": sum(w["rounds"] for w in mine),
                     "standby_lost": sum(w["standby_lost"] for w in mine)}
    return out


def _merged(histograms, windows: list[dict]):
    """The histograms restricted to the whole seconds of `windows` (as decision_latency counts them)."""
    keep = [(int(w["start"]), int(w["end"])) for w in windows]
    return {key: {ts: c for ts, c in per_s.items() if any(a < ts <= b for a, b in keep)}
            for key, per_s in histograms.items()}


def set_replicator_idle(dep, settings, idle_ms: float, log) -> None:
    """Restart the replicator A → B with settings.replication.idle_sleep_ms = `idle_ms` (it resumes from its
    positions)."""
    update_config(dep, "replication", {"idle_sleep_ms": idle_ms})
    for pid in replicator_pids(dep.workdir):
        terminate(pid, None)
    start_forward_stream(dep, settings)
    log(f"- replicator A → B restarted with replication.idle_sleep_ms {idle_ms:g}")


def main_run(base, *, workdir: Path, backend: str, multiplier: float, warmup_s: float, window_s: float,
             rounds: int, enterprises_count: int, log, replicator_idle_ms: float | None = None) -> dict:
    """Deploy, measure `rounds` rounds of both modes, stop everything (also on failure or Ctrl-C).
    `replicator_idle_ms`: the replicator's idle sleep (settings.replication.idle_sleep_ms) for the whole run."""
    dep, settings = deploy(base, workdir, backend, enterprises_count, log)
    token = json.loads((workdir / "tokens.json").read_text())["declarants"][-1]["token"]
    windows: list[dict] = []
    try:
        if replicator_idle_ms is not None:
            set_replicator_idle(dep, settings, replicator_idle_ms, log)
        for r in range(rounds):
            for mode in (("async", "sync") if r % 2 == 0 else ("sync", "async")):
                log(f"- round {r + 1}/{rounds}, {mode}: both sites restarted; Locust {multiplier:g}x, {warmup_s:g} s "
                    f"warm-up + {window_s:g} s measured …")
                windows.append(window(dep, settings, token, mode, multiplier, warmup_s, window_s))
                w = windows[-1]
                if mode == "sync":
                    log(f"  {w['waits']} acknowledgements waited for B in {w['rounds']} rounds; standby lost "
                        f"{w['standby_lost']} times")
    finally:
        dep.stop()
    return {"modes": summarise(windows, read_latency_logs(workdir / "locust")), "windows": windows,
            "multiplier": multiplier, "backend": backend, "replicator_idle_ms": replicator_idle_ms}


def table(result: dict) -> str:
    """Markdown: the two modes side by side."""
    a, s = result["modes"]["async"], result["modes"]["sync"]

    def cost(key: str) -> str:
        return "—" if a[key] is None or s[key] is None else f"+{s[key] - a[key]:.0f}"

    return "\n".join([
        "| green-lane decision | async | sync | sync cost |",
        "|---|---|---|---|",
        f"| p50 ms | {a['p50_ms']} | {s['p50_ms']} | {cost('p50_ms')} |",
        f"| p99 ms | {a['p99_ms']} | {s['p99_ms']} | {cost('p99_ms')} |",
        f"| decisions measured | {a['n']} | {s['n']} | |",
        f"| writes that waited for B (mean wait ms) | — | {s['waits']} ({s['mean_wait_ms']}) | |",
        f"| committed reads (rounds) | — | {s['rounds']} | |",
        f"| standby lost | — | {s['standby_lost']} | |"])
