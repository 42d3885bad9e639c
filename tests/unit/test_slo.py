"""SLO verdicts, exit code and knee, on real Locust CSVs (tests/fixtures/locust) and a synthetic step ramp."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from loadtests.capacity import load_capacity
from loadtests.slo import (RunStats, StatsRow, find_knee, freeze_events, load_slos, overall_exit_code,
                           read_locust_csv, steps_from_history, verdicts)

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "locust" / "run"
SLO_YAML = ROOT / "config" / "slo.yaml"
PCTS = ["50%", "66%", "75%", "80%", "90%", "95%", "98%", "99%", "99.9%", "99.99%", "100%"]
HISTORY_HEADER = (["Timestamp", "User Count", "Type", "Name", "Requests/s", "Failures/s"] + PCTS
                  + ["Total Request Count", "Total Failure Count", "Total Median Response Time",
                     "Total Average Response Time", "Total Min Response Time", "Total Max Response Time",
                     "Total Average Content Size"])
STATS_HEADER = (["Type", "Name", "Request Count", "Failure Count", "Median Response Time", "Average Response Time",
                 "Min Response Time", "Max Response Time", "Average Content Size", "Requests/s", "Failures/s"] + PCTS)


@pytest.fixture
def slos():
    return load_slos(SLO_YAML)


def test_config_values_match_design(slos):
    assert slos.green_decision_p99_ms == 100
    assert slos.error_rate_max == 0.01
    assert slos.replication_lag_p99_ms == 500
    assert slos.freeze_max_s == 10
    assert "green_decision_p99_ms" in slos.knee.slos


def test_load_slos_clear_errors(tmp_path):
    bad = tmp_path / "slo.yaml"
    bad.write_text("green_decision_p99_ms: -1\nerror_rate_max: 0.01\nreplication_lag_p99_ms: 500\n")
    with pytest.raises(ValueError) as exc:
        load_slos(bad)
    msg = str(exc.value)
    assert str(bad) in msg and "green_decision_p99_ms" in msg and "freeze_max_s" in msg
    bad.write_text("- just a list\n")
    with pytest.raises(ValueError, match="mapping"):
        load_slos(bad)
    with pytest.raises(ValueError, match="cannot read"):
        load_slos(tmp_path / "missing.yaml")


def test_read_real_locust_csv():
    stats = read_locust_csv(FIXTURE)
    assert stats.row(("DECISION", "green")).requests == 31
    assert stats.row(("REPLICATION", "lag")).pct("99%") == 380
    assert stats.requests == 47 and stats.failures == 23  # GET / and GET /nope only
    assert stats.history and stats.start_ts < stats.end_ts
    assert freeze_events(stats.history) == [(1795411658, 3.5)]


def test_read_rejects_non_locust_csv(tmp_path):
    (tmp_path / "x_stats.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="missing columns"):
        read_locust_csv(tmp_path / "x")
    with pytest.raises(ValueError, match="cannot read"):
        read_locust_csv(tmp_path / "nothing")


def test_verdicts_on_fixture_pass_and_fail(slos):
    res = {v.name: v for v in verdicts(read_locust_csv(FIXTURE), slos)}
    assert [*res] == ["green_decision_p99_ms", "error_rate_max", "replication_lag_p99_ms", "freeze_max_s"]
    assert res["green_decision_p99_ms"].passed is True and res["green_decision_p99_ms"].measured == 60
    assert res["replication_lag_p99_ms"].passed is True
    assert res["freeze_max_s"].passed is True and res["freeze_max_s"].measured == pytest.approx(3.5)
    err = res["error_rate_max"]
    assert err.passed is False and err.measured == pytest.approx(23 / 47) and "23 failed of 47" in err.note
    assert overall_exit_code(list(res.values())) == 1


def _stats(**rows) -> RunStats:
    """RunStats from (type, name) -> (requests, failures, p99, max)."""
    out = {}
    for key, (n, f, p99, mx) in rows.items():
        typ, name = key.split("/")
        out[(typ, name)] = StatsRow(typ, name, n, f, None, mx, None, {"99%": p99})
    return RunStats(prefix="mem", rows=out)


def test_all_pass_exit_zero(slos):
    stats = _stats(**{"POST/declare": (1000, 5, 20.0, 90.0), "DECISION/green": (500, 0, 99.0, 120.0),
                      "REPLICATION/lag": (60, 0, 480.0, 600.0), "INTAKE/frozen": (2, 0, 9000.0, 9000.0)})
    res = verdicts(stats, slos)
    assert all(v.passed is True for v in res)
    assert overall_exit_code(res) == 0 and overall_exit_code(res, require_all=True) == 0


def test_not_measured_is_none_not_pass(slos):
    stats = _stats(**{"POST/declare": (1000, 0, 20.0, 90.0), "DECISION/green": (500, 0, 50.0, 60.0)})
    res = {v.name: v for v in verdicts(stats, slos)}
    lag = res["replication_lag_p99_ms"]
    assert lag.passed is None and lag.measured is None and "not measured" in lag.note and "REPLICATION" in lag.note
    assert res["freeze_max_s"].passed is None
    assert overall_exit_code(list(res.values())) == 0
    assert overall_exit_code(list(res.values()), require_all=True) == 1


def test_breaches(slos):
    stats = _stats(**{"POST/declare": (1000, 11, 20.0, 90.0), "DECISION/green": (500, 0, 101.0, 300.0),
                      "REPLICATION/lag": (60, 0, 501.0, 900.0), "INTAKE/frozen": (1, 0, 10_001.0, 10_001.0)})
    res = verdicts(stats, slos)
    assert [v.passed for v in res] == [False, False, False, False]
    assert overall_exit_code(res) == 1


# ----------------------------------------------------------------------------------------------------- knee
def write_step_run(prefix: Path, p99s=(40, 60, 140, 200), users=(10, 20, 30, 40), step_s=5, t0=1_700_000_000,
                   failures_on=None) -> Path:
    """Locust-shaped CSVs of a step ramp: 1 s at 0 users, then one plateau per entry; 1 request/s per user."""
    rows, ts = [], t0
    total_req = total_fail = total_dec = total_lag = 0
    rows.append([ts, 0, "", "Aggregated", 0, 0] + ["N/A"] * len(PCTS) + [0, 0, 0, 0.0, 0, 0, 0])
    for i, (u, p99) in enumerate(zip(users, p99s)):
        for _ in range(step_s):
            ts += 1
            fails = u // 5 if failures_on == i else 0
            total_req += u
            total_fail += fails
            total_dec += u // 2
            total_lag += 1
            rows.append([ts, u, "POST", "/declare", u, fails] + [10] * (len(PCTS) - 4) + [20, 20, 20, 20]
                        + [total_req, total_fail, 10, 10.0, 5, 20, 100.0])
            rows.append([ts, u, "DECISION", "green", u // 2, 0] + [p99 // 2] * 7 + [p99] * 4
                        + [total_dec, 0, p99 // 2, p99 / 2, 1, p99, 0.0])
            rows.append([ts, u, "REPLICATION", "lag", 1, 0] + [100] * 7 + [200] * 4
                         + [total_lag, 0, 100, 100.0, 50, 200, 0.0])
            rows.append([ts, u, "", "Aggregated", u + u // 2 + 1, fails] + [p99] * len(PCTS)
                        + [total_req + total_dec + total_lag, total_fail, 10, 10.0, 1, p99, 50.0])
    with open(f"{prefix}_stats_history.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(HISTORY_HEADER)
        w.writerows(rows)
    with open(f"{prefix}_stats.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(STATS_HEADER)
        w.writerow(["POST", "/declare", total_req, total_fail, 10, 10.0, 5, 20, 100.0, 10, 0] + [10] * 7 + [20] * 4)
        w.writerow(["DECISION", "green", total_dec, 0, 30, 40.0, 1, max(p99s), 0.0, 5, 0]
                   + [30] * 7 + [max(p99s)] * 4)
        w.writerow(["REPLICATION", "lag", total_lag, 0, 100, 100.0, 50, 200, 0.0, 1, 0] + [100] * 7 + [200] * 4)
    return prefix


def test_knee_on_third_plateau(tmp_path, slos):
    stats = read_locust_csv(write_step_run(tmp_path / "ramp"))
    steps = steps_from_history(stats.history, slos, ["1x", "2x", "3x", "4x"])
    assert [s.users for s in steps] == [10, 20, 30, 40]
    assert [s.green_p99_ms for s in steps] == [40, 60, 140, 200]
    assert steps[1].requests_per_s == pytest.approx(20.0) and steps[1].error_rate == 0
    knee = find_knee(stats, slos, ["1x", "2x", "3x", "4x"])
    assert knee is not None
    assert knee.broken_slo == "green_decision_p99_ms"
    assert knee.first_bad.users == 30 and knee.first_bad.label == "3x"
    assert knee.last_good.users == 20 and knee.multiplier == 2.0
    sentence = knee.sentence()
    assert "2.0x design" in sentence and "3.0x design" in sentence and "140 ms > 100 ms" in sentence


def test_knee_with_design_capacity(tmp_path, slos):
    design = load_capacity(ROOT / "config" / "capacity.yaml")
    stats = read_locust_csv(write_step_run(tmp_path / "ramp"))
    knee = find_knee(stats.history, slos, design=design)
    per_decl = design.inputs.requests_per_declaration
    assert knee.rate_declarations_per_s == pytest.approx(20.0 / per_decl)
    assert knee.multiplier == pytest.approx(20.0 / per_decl / design.peak_declarations_per_s)
    assert "declarations/s" in knee.sentence()


def test_knee_on_error_rate_and_none_when_all_hold(tmp_path, slos):
    stats = read_locust_csv(write_step_run(tmp_path / "err", p99s=(40, 50, 60, 70), failures_on=1))
    knee = find_knee(stats, slos)
    assert knee.broken_slo == "error_rate_max" and knee.first_bad.users == 20 and knee.last_good.users == 10
    ok = read_locust_csv(write_step_run(tmp_path / "ok", p99s=(40, 50, 60, 70)))
    assert find_knee(ok, slos) is None


def test_knee_first_step_breaks(tmp_path, slos):
    stats = read_locust_csv(write_step_run(tmp_path / "bad", p99s=(150, 160, 170, 180)))
    knee = find_knee(stats, slos)
    assert knee.last_good is None and knee.rate_declarations_per_s is None and knee.first_bad.index == 0
    assert knee.sentence().startswith("Knee below the first step")


def test_short_plateaus_are_ignored(tmp_path, slos):
    strict = slos.model_copy(update={"knee": slos.knee.model_copy(update={"min_step_s": 6})})  # 5 s = transition
    stats = read_locust_csv(write_step_run(tmp_path / "ramp"))
    assert steps_from_history(stats.history, strict) == []
    assert find_knee(stats, strict) is None


def test_latency_logs_give_each_plateau_its_exact_p99(tmp_path, slos):
    """A rolling window's p99 of 140 ms on the third plateau, yet its decisions were all 20 ms but one: with the
    per-second latency log the plateau holds and the knee moves to the fourth."""
    from collections import Counter

    from loadtests.latency_log import LatencyLog, log_path

    prefix = write_step_run(tmp_path / "ramp")
    log = LatencyLog([("DECISION", "green")])
    for second in range(1, 21):  # plateaus are seconds 1-5, 6-10, 11-15, 16-20 after t0
        for i in range(100):
            ms = 250 if second == 18 and i < 5 else 20
            ms = 140 if second == 12 and i == 0 else ms
            log.record("DECISION", "green", ms, ts=1_700_000_000 + second + 0.5)
    log.write(log_path(str(prefix), pid=7))
    stats = read_locust_csv(prefix)
    assert stats.latency[("DECISION", "green")][1_700_000_012] == Counter({20: 99, 140: 1})
    steps = steps_from_history(stats.history, slos, latency=stats.latency)
    assert [s.green_p99_ms for s in steps] == [20, 20, 20, 250]
    assert [s.lag_p99_ms for s in steps] == [200, 200, 200, 200]  # no lag in the log: the history stands in
    knee = find_knee(stats, slos)
    assert knee.first_bad.users == 40 and knee.last_good.users == 30
