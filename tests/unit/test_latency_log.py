"""Per-second latency histograms: Locust's rounding and percentile rule, files per process merged, spans of seconds."""
from collections import Counter

import pytest

from loadtests.latency_log import LatencyLog, latency_percentile, log_path, read_latency_logs, rounded_ms

GREEN = ("DECISION", "green")


def test_rounding_follows_locust():
    assert [rounded_ms(x) for x in (0.4, 12.6, 99.4, 147, 999, 3432, 58760)] == [0, 13, 99, 150, 1000, 3400, 59000]


def test_percentile_uses_locusts_rule():
    # locust.stats.calculate_response_time_percentile walks down from the slowest until at most int(p x n) values
    # remain: over 1..100 ms that gives p99 = 100 and p50 = 51 (worked by hand from its source).
    hist = {GREEN: {1: Counter({ms: 1 for ms in range(1, 101)})}}
    assert latency_percentile(hist, GREEN, 99) == 100.0
    assert latency_percentile(hist, GREEN, 50) == 51.0
    assert latency_percentile({GREEN: {1: Counter({8: 197, 9: 2, 400: 1})}}, GREEN, 99) == 9.0
    assert latency_percentile(hist, ("DECISION", "red"), 99) is None


def test_span_selects_seconds_after_start_up_to_end():
    hist = {GREEN: {10: Counter({5: 100}), 11: Counter({500: 100}), 12: Counter({7: 100})}}
    assert latency_percentile(hist, GREEN, 99, after_ts=11, until_ts=12) == 7.0
    assert latency_percentile(hist, GREEN, 99, after_ts=9, until_ts=10) == 5.0
    assert latency_percentile(hist, GREEN, 99) == 500.0
    assert latency_percentile(hist, GREEN, 99, after_ts=12) is None


def test_one_bad_window_does_not_make_a_long_plateau_fail():
    """Why the log exists: 60 s of 10 ms with one 1 s hiccup of 300 ms decisions has a p99 of 10 ms, although
    the worst rolling window's p99 is 300 ms."""
    per_s = {ts: Counter({10: 30}) for ts in range(60)}
    per_s[30] = Counter({300: 10})
    assert latency_percentile({GREEN: per_s}, GREEN, 99) == 10.0


def test_processes_write_their_own_files_and_reading_merges_them(tmp_path):
    prefix = str(tmp_path / "run")
    first, second = LatencyLog([GREEN]), LatencyLog([GREEN])
    for ms in (10, 20, 30):
        first.record("DECISION", "green", ms, ts=100.2)
    second.record("DECISION", "green", 40, ts=100.9)
    second.record("GET", "/v1/declarations/[number]", 5, ts=100.9)  # not a measurement: not kept
    first.write(log_path(prefix, pid=1))
    second.write(log_path(prefix, pid=2))
    merged = read_latency_logs(prefix)
    assert merged == {GREEN: {100: Counter({10: 1, 20: 1, 30: 1, 40: 1})}}
    assert not list(tmp_path.glob("*.tmp"))


def test_no_logs_is_empty_and_a_broken_log_is_named(tmp_path):
    prefix = str(tmp_path / "run")
    assert read_latency_logs(prefix) == {}
    log_path(prefix, pid=3).write_text("ts,type\n1,DECISION\n")
    with pytest.raises(ValueError, match="not a latency log"):
        read_latency_logs(prefix)
