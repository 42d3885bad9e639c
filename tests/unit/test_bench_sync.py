"""bench sync's figures (pure): each mode's decision latency over its own windows only, side by side."""
from collections import Counter

from loadtests.slo import DECISION
from standbyctl.bench_sync import summarise, table


def window(mode: str, start: float, end: float, **metrics) -> dict:
    return {"mode": mode, "start": start, "end": end, "waits": 0, "wait_s": 0.0, "rounds": 0, "standby_lost": 0,
            **metrics}


def test_each_mode_counts_only_the_seconds_of_its_own_windows():
    # async windows: seconds 101..110 at 10 ms; sync: 201..210 at 30 ms; a second between them (150) at 900 ms
    histograms = {DECISION: {**{ts: Counter({10: 5}) for ts in range(101, 111)},
                             **{ts: Counter({30: 5}) for ts in range(201, 211)}, 150: Counter({900: 50})}}
    windows = [window("async", 100.2, 110.9), window("sync", 200.5, 210.1, waits=40, wait_s=0.8, rounds=25)]
    modes = summarise(windows, histograms)
    assert (modes["async"]["p50_ms"], modes["async"]["p99_ms"], modes["async"]["n"]) == (10.0, 10.0, 50)
    assert (modes["sync"]["p50_ms"], modes["sync"]["p99_ms"], modes["sync"]["n"]) == (30.0, 30.0, 50)
    assert (modes["sync"]["waits"], modes["sync"]["mean_wait_ms"], modes["sync"]["rounds"]) == (40, 20.0, 25)
    assert modes["async"]["mean_wait_ms"] is None and modes["sync"]["seconds"] == 10
    text = table({"modes": modes})
    assert "| p50 ms | 10.0 | 30.0 | +20 |" in text
    assert "| writes that waited for B (mean wait ms) | — | 40 (20.0) | |" in text
