"""The drill's judgement: its SLO table and verdict from the step records and the run folder's measurements.

The steady seconds: the green-lane decision p99 and the replication lag p99 of DESIGN §4 are steady-state figures
("at 3x design"), so they are taken over the seconds of load after the ramp that no step disturbs on purpose: outside
every step, from its start to the end of the verify and ledger check after it, plus GRACE_S (held writes answered,
a new stream's first beats). What a step costs is in its row instead (freeze, RTO, held requests, client errors);
a quick drill has few steady seconds (its gaps are short), a full drill has GAP_S between every two steps."""
from __future__ import annotations

import json
from pathlib import Path

from loadtests.latency_log import Histograms, latency_percentile, read_latency_logs
from loadtests.slo import DECISION, load_slos, read_locust_csv
from standbyctl.drill.plan import correctness_problems, slo_verdicts, verdict

GRACE_S = 2.0


def disturbed_spans(records: list[dict], grace_s: float = GRACE_S) -> list[tuple[float, float]]:
    """The (start, end) Unix spans the drill disturbed on purpose: each step from its start to the end of the
    checks after it (verify reads both sites whole), plus grace."""
    spans = []
    for r in records:
        if r.get("started_at") is not None:
            end = r.get("checked_at") or r.get("ended_at") or r["started_at"]
            spans.append((r["started_at"], end + grace_s))
    return spans


def steady(at: float, start: float, end: float, spans: list[tuple[float, float]]) -> bool:
    """Whether the instant `at` is in the load's steady part [start, end) and in no disturbed span."""
    return start <= at < end and not any(a <= at <= b for a, b in spans)


def steady_histogram(histograms: Histograms, key, start: float, end: float,
                     spans: list[tuple[float, float]]) -> Histograms:
    """`histograms` cut to `key`'s steady whole seconds (the second and its end both steady)."""
    return {key: {ts: c for ts, c in histograms.get(key, {}).items() if steady(ts, start, end, spans)
                  and steady(ts + 1, start, end + 1, spans)}}


def steady_percentile(histograms: Histograms, key, p: float, start: float, end: float,
                      spans: list[tuple[float, float]]) -> float | None:
    """The p-th percentile (0 < p <= 100) of `key` over the steady whole seconds (loadtests.percentile)."""
    return latency_percentile(steady_histogram(histograms, key, start, end, spans), key, p)


def read_jsonl(path: Path) -> list[dict]:
    """The JSON objects of a file being appended to (samples.jsonl): a half-written last line is skipped; [] when
    there is no file."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            out.append(row)
    return out


def judge(params: dict, records: list[dict], extra: dict, *, interrupted: bool, workdir: Path, slo_path: Path) -> dict:
    """drill.json's whole document: params, steps, the final checks in `extra`, "slos" (judged against the SLO
    file `slo_path`, config/slo.yaml) and "verdict"."""
    slos = load_slos(slo_path)
    start = (params.get("load_started_at") or 0) + float(params.get("ramp_s") or 0)
    end = extra.get("stop_at") or params.get("ended_at") or start
    spans = disturbed_spans(records)
    requests = failures = None
    if Path(f"{workdir / 'locust'}_stats.csv").exists():
        stats = read_locust_csv(workdir / "locust")
        requests, failures, histograms = stats.requests, stats.failures, stats.latency
    else:
        histograms = read_latency_logs(workdir / "locust")
    steady_decisions = steady_histogram(histograms, DECISION, start, end, spans)
    green_p99 = latency_percentile(steady_decisions, DECISION, 99)
    decisions = sum(sum(c.values()) for c in steady_decisions[DECISION].values())
    lags = [s["lag_s"] for s in read_jsonl(workdir / "samples.jsonl")
            if s.get("lag_s") is not None and steady(s["at"], start, end, spans)]
    table = slo_verdicts(records, green_p99_ms=green_p99, lag_samples_s=lags, requests=requests or 0,
                         failures=failures or 0, slos=slos, green_samples=decisions)
    problems = correctness_problems(records, extra.get("final_ledger"), extra.get("final_verify"))
    result = verdict(problems, table, interrupted, broke_off=extra.get("error"))
    return {"params": params, "steps": records, **extra, "steady": {"seconds_from": start, "seconds_to": end,
            "disturbed": spans, "lag_samples": len(lags), "decisions": decisions},
            "slos": [s.as_dict() for s in table], "verdict": result}
