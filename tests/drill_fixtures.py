"""A synthetic drill run folder (the contract of standbyctl/drill: drill.json, samples.jsonl, Locust's history and
latency log, the client's events), built from plain values, for the report's unit test and its browser test.

One drill of 60 s, five steps in the drill's order. Step 2's freeze (2.35 s) misses its 2 s target, so the verdict
is FAIL with that reason; the failover loses 3 acknowledged numbers, listed exactly, none left after reconcile."""
from __future__ import annotations

import csv
import json
from pathlib import Path

T0 = 1795989042.0
DURATION_S = 60
STEP_IDS = ("switchover", "org-restructure", "failover", "failback", "switchback")
MISSED = (2, "freeze_s")  # the step and figure that misses its target


def _step(n: int, sid: str, title: str, runbook: str | None, start: float, end: float, **kw) -> dict:
    record = {"n": n, "id": sid, "title": title, "runbook": runbook, "run_id": f"run-{n}", "status": "done",
              "started_at": T0 + start, "ended_at": T0 + end, "frozen_at": None, "resumed_at": None,
              "killed_at": None, "recovered_at": None, "freeze_s": None, "rto_s": None, "rpo_lost": None,
              "rpo_lost_after_reconcile": None, "rpo_listed_exactly": None, "conflicts": None, "held_front": 0,
              "held_site": 0, "client_errors": 0, "retried": 0, "verify": "clean",
              "ledger": f"{40 * n} acknowledged: 0 lost, 0 doubled, 0 mismatched", "ledger_ok": True,
              "primary_after": None, "targets": {}, "error": None, "note": None}
    for key in ("frozen_at", "resumed_at", "killed_at", "recovered_at"):
        if key in kw:
            kw[key] = T0 + kw[key]
    record.update(kw)
    return record


def drill_steps() -> list[dict]:
    return [
        _step(1, "switchover", "Planned switchover A → B", "switchover", 5, 10, frozen_at=7.0, resumed_at=7.42,
              freeze_s=0.42, held_front=3, held_site=1, retried=2, primary_after="B", targets={"freeze_s": 1.0}),
        _step(2, "org-restructure", "2025 org restructure through a switchover B → A",
              "org-restructure-via-switchover", 14, 23, frozen_at=19.0, resumed_at=21.35, freeze_s=2.35,
              held_front=9, held_site=2, retried=5, primary_after="A", targets={"freeze_s": 2.0}),
        _step(3, "failover", "Unplanned failover: kill -9 of A, B takes over", "failover", 27, 34, killed_at=28.0,
              recovered_at=31.2, rto_s=3.2, rpo_lost=3, rpo_listed_exactly=True, client_errors=2, retried=14,
              verify="not run: A is down", ledger="120 acknowledged: 3 lost, 0 doubled, 0 mismatched",
              ledger_ok=False, primary_after="B", targets={"rto_s": 5.0}),
        _step(4, "failback", "Failback: A rebuilt as B's standby, reconcile", "failback", 37, 46, rpo_lost=3,
              rpo_lost_after_reconcile=0, conflicts=0, primary_after="B"),
        _step(5, "switchback", "Planned switchover back B → A", "switchover", 49, 54, frozen_at=51.0,
              resumed_at=51.38, freeze_s=0.38, held_front=2, retried=1, primary_after="A",
              targets={"freeze_s": 1.0}),
    ]


def drill_record(steps: list[dict] | None = None) -> dict:
    steps = drill_steps() if steps is None else steps
    return {
        "params": {"command": "standbyctl drill --quick", "mode": "quick", "backend": "sqlite", "multiplier": 3.0,
                   "design_rps": 0.39, "enterprises": 2000, "declarants": 300, "operator": "drill",
                   "machine": "Linux x86_64, 2 cores", "started_at": T0, "ended_at": T0 + DURATION_S},
        "steps": steps,
        "slos": [
            {"name": "switchover freeze", "target": "≤ 1.00 s", "measured": "0.42 s", "passed": True},
            {"name": "org restructure freeze (via switchover)", "target": "≤ 2.00 s", "measured": "2.35 s",
             "passed": False},
            {"name": "failover RTO", "target": "≤ 5.00 s", "measured": "3.20 s", "passed": True},
            {"name": "green decision p99", "target": "≤ 100 ms", "measured": "41 ms", "passed": True},
            {"name": "replication lag p99", "target": "≤ 500 ms", "measured": None, "passed": None},
        ],
        "verdict": {"passed": False, "line": "FAIL: step 2 (org-restructure) freeze 2.35 s > 2 s",
                    "reasons": ["step 2 (org-restructure) freeze 2.35 s > 2 s"]},
    }


def _in(t: float, windows) -> bool:
    return any(a <= t < b for a, b in windows)


def _freezes(steps) -> list[tuple[float, float]]:
    return [(s["frozen_at"] - T0, s["resumed_at"] - T0) for s in steps if s["frozen_at"]]


def write_drill_json(folder: Path, record: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "drill.json"
    path.write_text(json.dumps(record or drill_record(), ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def write_samples(folder: Path, steps: list[dict]) -> None:
    freezes, outage = _freezes(steps), [(28.0, 31.2)]
    with open(folder / "samples.jsonl", "w", encoding="utf-8") as fh:
        for t in range(DURATION_S + 1):
            step = next((s["id"] for s in steps if s["started_at"] - T0 <= t <= s["ended_at"] - T0), None)
            lag = None if _in(t, outage) or 28 <= t < 37 else round(0.05 + 0.03 * (t % 4) + (0.6 if t == 36 else 0), 3)
            held = 4 if _in(t, freezes) else 0
            fh.write(json.dumps({"at": T0 + t + 0.2, "step": step, "primary": "B" if 10 <= t < 23 or 31 <= t < 54
                                 else "A", "lag_s": lag, "front_held": held, "site_held": 1 if held else 0}) + "\n")
        fh.write('{"at": 17959')  # the sampler's line being written when the report read the file


def write_history(folder: Path) -> None:
    header = ["Timestamp", "User Count", "Type", "Name", "Requests/s", "Failures/s", "50%", "66%", "75%", "80%",
              "90%", "95%", "98%", "99%", "99.9%", "99.99%", "100%", "Total Request Count", "Total Failure Count",
              "Total Median Response Time", "Total Average Response Time", "Total Min Response Time",
              "Total Max Response Time", "Total Average Content Size"]
    with open(folder / "locust_stats_history.csv", "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(header)
        total = 0
        for t in range(1, DURATION_S):
            rps = 0.0 if t < 2 else 6.0 + (t % 3) * 0.4 - (3.0 if 28 <= t < 31 else 0.0)
            fps = 0.6 if 28 <= t < 30 else 0.0
            total += int(rps)
            pct = ["N/A"] * 11 if t < 2 else [20, 22, 25, 28, 35, 45, 60, 80, 120, 120, 120]
            for typ, name in (("POST", "/v1/declarations"), ("", "Aggregated")):
                out.writerow([int(T0) + t, 30, typ, name, f"{rps:.6f}", f"{fps:.6f}", *pct, total, 2 if t >= 30
                              else 0, 22, 25.1, 3, 140, 512])


def write_latency(folder: Path, steps: list[dict]) -> None:
    freezes = _freezes(steps)
    with open(folder / "locust_latency.4242.csv", "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(("ts", "type", "name", "ms", "count"))
        for t in range(2, DURATION_S):
            if 28 <= t < 31:
                continue  # no decisions while no primary answers
            slow = 600 if _in(t, freezes) or _in(t - 1, freezes) else 0
            for ms, count in ((18, 60), (25, 25), (40, 10), (70, 4), (95 + slow, 1)):
                out.writerow((int(T0) + t, "DECISION", "green", ms, count))


def write_events(folder: Path) -> None:
    ledger = folder / "ledger"
    ledger.mkdir(exist_ok=True)
    events = [{"kind": "failure", "name": "POST /v1/declarations", "error": "ConnectError", "ms": 12, "at": T0 + at}
              for at in (28.4, 29.1)]
    events += [{"kind": "retried", "name": "POST /v1/declarations", "error": "503", "ms": 400, "at": T0 + at}
               for at in (7.1, 7.2, 19.3, 19.5, 20.1, 20.4, 21.0, 51.1, *(28.2 + 0.2 * i for i in range(14)))]
    events.append({"kind": "slow", "name": "GET /v1/declarations", "error": None, "ms": 1500, "at": T0 + 40.0})
    with open(ledger / "events.4242.jsonl", "w", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(ev) + "\n" for ev in events))
    (ledger / "ledger.4242.jsonl").write_text(json.dumps({"number": "3000000011", "at": T0 + 6}) + "\n",
                                              encoding="utf-8")


def build_drill_folder(folder: Path) -> Path:
    """The whole run folder of a finished (failing) drill in `folder`; returns it."""
    steps = drill_steps()
    write_drill_json(folder, drill_record(steps))
    write_samples(folder, steps)
    write_history(folder)
    write_latency(folder, steps)
    write_events(folder)
    return folder


def build_early_stop_folder(folder: Path) -> Path:
    """A drill stopped during its first step: only drill.json, step 1 interrupted, the rest skipped, no verdict."""
    steps = drill_steps()
    first = dict(steps[0], status="interrupted", ended_at=None, resumed_at=None, freeze_s=None,
                 note="stopped by SIGTERM")
    rest = [dict(s, status="skipped", **{k: None for k in ("started_at", "ended_at", "frozen_at", "resumed_at",
                                                           "killed_at", "recovered_at", "freeze_s", "rto_s",
                                                           "rpo_lost", "rpo_lost_after_reconcile")},
                 verify="not run: skipped", ledger="—", ledger_ok=None) for s in steps[1:]]
    record = drill_record([first, *rest])
    record["params"]["ended_at"] = None
    record["slos"] = []
    record["verdict"] = {"passed": None, "line": "", "reasons": []}
    write_drill_json(folder, record)
    return folder
