"""The planners' report: report.html with verdict line, SLO table, knee sentence, embedded PNGs, PNGs beside it."""
from __future__ import annotations

import base64
import re
from pathlib import Path

from loadtests.report import PLOTS, main, write_report
from loadtests.slo import find_knee, load_slos, read_locust_csv, steps_from_history, verdicts
from tests.unit.test_slo import FIXTURE, SLO_YAML, write_step_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_report_on_real_locust_run(tmp_path):
    slos = load_slos(SLO_YAML)
    stats = read_locust_csv(FIXTURE)
    res = verdicts(stats, slos)
    knee = find_knee(stats, slos)
    failover = {"at": stats.start_ts + 2, "label": "failover to standby"}
    path = write_report(stats, res, knee, {"multiplier": 3, "users": 4, "markers": [failover]}, tmp_path / "out")
    assert path == tmp_path / "out" / "report.html"
    doc = path.read_text(encoding="utf-8")
    assert "FAIL: 1 of 4 SLOs failed at 3x design" in doc
    assert 'id="slo-table"' in doc
    for name in ("green_decision_p99_ms", "error_rate_max", "replication_lag_p99_ms", "freeze_max_s"):
        assert name in doc
    assert doc.count("<td class='v'>PASS</td>") == 3 and doc.count("<td class='v'>FAIL</td>") == 1
    assert knee.sentence().replace("<", "&lt;").replace(">", "&gt;") in doc
    assert "failover to standby" in doc and "freeze 3.5 s" in doc
    assert "users" in doc and "3" in doc
    for name in PLOTS:
        png = tmp_path / "out" / f"{name}.png"
        assert png.read_bytes().startswith(PNG_SIGNATURE)
    embedded = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", doc)
    assert len(embedded) == len(PLOTS)
    assert all(base64.b64decode(b).startswith(PNG_SIGNATURE) for b in embedded)
    assert "src='http" not in doc and 'src="http' not in doc  # self-contained


def test_report_pass_with_knee_sentence(tmp_path):
    slos = load_slos(SLO_YAML)
    stats = read_locust_csv(write_step_run(tmp_path / "ramp", p99s=(40, 60, 140, 200)))
    knee = find_knee(stats, slos, ["1x", "2x", "3x", "4x"])
    path = write_report(stats, verdicts(stats, slos), knee, {"load": "step ramp 1x-4x"}, tmp_path / "r")
    doc = path.read_text(encoding="utf-8")
    assert "Knee: SLOs held up to 2.0x design" in doc and "green_decision_p99_ms broke" in doc
    assert "FAIL: 1 of 4 SLOs failed at step ramp 1x-4x" in doc  # whole-run p99 is 200 ms
    assert "NOT MEASURED" in doc  # no freeze in this run


def test_report_all_pass_and_no_knee(tmp_path):
    slos = load_slos(SLO_YAML)
    stats = read_locust_csv(write_step_run(tmp_path / "ok", p99s=(40, 50, 60, 70)))
    res = verdicts(stats, slos)
    doc = write_report(stats, res, find_knee(stats, slos), {"multiplier": 3}, tmp_path / "r").read_text()
    assert "PASS: 3 of 4 SLOs met at 3x design; not measured: freeze_max_s" in doc
    assert "No knee: every SLO held" in doc


def test_cli_exit_codes(tmp_path, capsys):
    assert main([str(FIXTURE), "--slo", str(SLO_YAML), "--out", str(tmp_path / "a"), "--multiplier", "3"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and (tmp_path / "a" / "report.html").exists()
    ok = write_step_run(tmp_path / "ok", p99s=(40, 50, 60, 70))
    assert main([str(ok), "--slo", str(SLO_YAML), "--out", str(tmp_path / "b")]) == 0
    assert main([str(ok), "--slo", str(SLO_YAML), "--out", str(tmp_path / "c"), "--require-all"]) == 1
    assert main([str(tmp_path / "missing"), "--slo", str(SLO_YAML)]) == 2


def test_a_step_ramp_leads_with_the_knee_and_a_row_per_step(tmp_path, capsys):
    slos = load_slos(SLO_YAML)
    labels = ["1x", "2x", "3x", "4x"]
    stats = read_locust_csv(write_step_run(tmp_path / "ramp", p99s=(40, 60, 140, 200)))
    steps = steps_from_history(stats.history, slos, labels)
    knee = find_knee(stats, slos, labels)
    doc = write_report(stats, verdicts(stats, slos), knee, {"shape": "step"}, tmp_path / "r", steps).read_text()
    headline = re.search(r'<div class="verdict (\w+)" id="verdict">([^<]*)</div>', doc)
    assert headline.group(1) == "pass" and headline.group(2).startswith("Knee: SLOs held up to 2.0x design")
    assert 'id="steps"' in doc and doc.count("<td class='v'>held</td>") == 2
    assert doc.count("<td class='v'>broke: green_decision_p99_ms</td>") == 2
    assert "SLOs over the whole ramp (past the knee on purpose)" in doc
    # the command line: a ramp that found its knee above the first step succeeds; one broken from the start fails
    ramp = str(tmp_path / "ramp")
    assert main([ramp, "--slo", str(SLO_YAML), "--out", str(tmp_path / "a"), "--steps", ",".join(labels)]) == 0
    bad = str(write_step_run(tmp_path / "bad", p99s=(150, 160, 170, 180)))
    assert main([bad, "--slo", str(SLO_YAML), "--out", str(tmp_path / "b"), "--steps", ",".join(labels)]) == 1
    assert "Knee below the first step" in capsys.readouterr().out
