"""The drill report: its per-second series from plain values, and the page written from a synthetic run folder
(tests/drill_fixtures.py), whole or stopped early."""
from __future__ import annotations

import json
import math
import re
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest

from standbyctl.drill.report import drill_window, step_row, target_misses, write_report
from standbyctl.drill.timeline import (event_series, latency_series, load_series, sample_series, step_spans,
                                       timeline_series)
from tests.drill_fixtures import (MISSED, STEP_IDS, T0, build_drill_folder, build_early_stop_folder,
                                  write_drill_json)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DEC = ("DECISION", "green")


# ------------------------------------------------------------------------------------------------------- series
def test_load_series_is_seconds_since_start_with_nan_for_unknown_rates():
    t, rps, fps = load_series([(1002, 5.0, 0.0), (1001, None, None), (1003, 6.5, 0.5)], t0=1000)
    assert t == [1, 2, 3]
    assert math.isnan(rps[0]) and rps[1:] == [5.0, 6.5]
    assert math.isnan(fps[0]) and fps[1:] == [0.0, 0.5]


def test_load_series_keeps_the_last_row_of_a_repeated_second():
    assert load_series([(10, 1.0, 0.0), (10, 2.0, 0.1)], t0=10) == ([0], [2.0], [0.1])


def test_latency_series_gives_each_seconds_own_percentiles():
    hist = {DEC: {101: Counter({10: 197, 50: 2, 900: 1}), 102: Counter({20: 1}), 104: Counter({30: 3})},
            ("REPLICATION", "lag"): {103: Counter({5000: 1})}}
    t, (p50, p99) = latency_series(hist, t0=100, ps=(50, 99))
    assert t == [1, 2, 4]  # second 103 had no decision
    assert p50 == [10.0, 20.0, 30.0]
    assert p99 == [50.0, 20.0, 30.0]  # 101: one 900 ms in 200 is past the p99; 102, 104: own values only


def test_latency_series_is_empty_without_decisions():
    assert latency_series({}, t0=0) == ([], [[], [], []])


def test_event_series_counts_failures_and_retries_on_every_second_of_the_drill():
    events = [{"kind": "failure", "at": 101.2}, {"kind": "failure", "at": 101.9}, {"kind": "retried", "at": 103.0},
              {"kind": "slow", "at": 102.0}, {"kind": "failure", "at": 99.0}, {"kind": "failure"}]
    t, errors, retried = event_series(events, t0=100.0, t_end=103.5)
    assert t == [0, 1, 2, 3]
    assert errors == [0, 2, 0, 0]  # the one before the drill and the one without a time are not on it
    assert retried == [0, 0, 0, 1]


def test_sample_series_orders_samples_and_keeps_a_missing_lag_as_a_gap():
    samples = [{"at": 12.0, "lag_s": None, "front_held": 3, "site_held": 1},
               {"at": 11.0, "lag_s": 0.2, "front_held": 0, "site_held": 0}, {"step": None}]
    t, lag, front, site = sample_series(samples, t0=10.0)
    assert t == [1.0, 2.0]
    assert lag[0] == 0.2 and math.isnan(lag[1])
    assert front == [0.0, 3.0] and site == [0.0, 1.0]


def test_timeline_without_a_ledger_has_no_error_series_but_an_empty_ledger_has_zeros():
    assert timeline_series(0, 2, events=None).errors_t == []
    assert timeline_series(0, 2, events=[]).errors == [0, 0, 0]


def test_step_spans_mark_freeze_and_outage_windows_and_what_the_step_cost():
    steps = [{"n": 1, "id": "switchover", "started_at": 105, "ended_at": 110, "frozen_at": 107, "resumed_at": 107.5,
              "freeze_s": 0.5, "targets": {"freeze_s": 1.0}},
             {"n": 3, "id": "failover", "started_at": 120, "ended_at": None, "killed_at": 121, "recovered_at": 127,
              "rto_s": 6.0, "targets": {"rto_s": 5.0}},
             {"n": 4, "id": "failback", "started_at": None}]
    one, three = step_spans(steps, t0=100)
    assert (one.label, one.start, one.end, one.freeze, one.outage) == ("1 switchover", 5, 10, (7, 7.5), None)
    assert (one.cost, one.missed) == ("freeze 0.50 s", False)
    assert (three.end, three.outage, three.cost, three.missed) == (None, (21, 27), "RTO 6.00 s", True)


def test_target_misses_names_only_figures_over_their_target():
    step = {"freeze_s": 2.35, "rto_s": None, "targets": {"freeze_s": 2.0, "rto_s": 5.0}}
    assert list(target_misses(step)) == ["freeze_s"]
    assert target_misses({"freeze_s": 2.0, "targets": {"freeze_s": 2.0}}) == {}


def test_drill_window_falls_back_to_the_steps_and_the_data():
    assert drill_window({"params": {"started_at": 10, "ended_at": 90}}) == (10, 90)
    drill = {"params": {}, "steps": [{"started_at": 20, "ended_at": 30}, {"started_at": None}]}
    assert drill_window(drill, [15, 40]) == (15, 40)
    assert drill_window({"params": {}, "steps": []}) == (None, None)


# ---------------------------------------------------------------------------------------------------------- page
class _Page(HTMLParser):
    """The parts of report.html the tests look at: tables' rows (cell text, cell classes), image srcs."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[tuple[str, str]]]] = {}
        self.imgs: list[str] = []
        self.table = self.cell = None
        self.in_body = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.table = self.tables.setdefault(a.get("id", ""), [])
        elif tag == "tr" and self.table is not None:
            self.table.append([])
        elif tag in ("td", "th") and self.table is not None:
            self.cell = [a.get("class") or "", []]
        elif tag == "img":
            self.imgs.append(a["src"])

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.table[-1].append(("|".join(self.cell[1]), self.cell[0]))
            self.cell = None
        elif tag == "table":
            self.table = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell[1].append(data)  # a cell's main text and its sub-line, as "text|sub"


def _parse(path: Path) -> tuple[str, _Page]:
    text = path.read_text(encoding="utf-8")
    page = _Page()
    page.feed(text)
    return text, page


@pytest.fixture(scope="module")
def full_report(tmp_path_factory) -> Path:
    return write_report(build_drill_folder(tmp_path_factory.mktemp("drill")))


def test_report_leads_with_the_red_verdict_and_its_reasons(full_report):
    text, _ = _parse(full_report)
    assert re.search(r'<div class="verdict fail" id="verdict">FAIL: step 2 \(org-restructure\) freeze 2\.35 s',
                     text)
    assert "<li>step 2 (org-restructure) freeze 2.35 s &gt; 2 s</li>" in text
    assert text.index('id="verdict"') < text.index('id="steps"') < text.index("timeline.png") \
        < text.index('id="slos"') < text.index('id="params"')


def test_report_has_one_row_per_step_in_drill_order(full_report):
    _, page = _parse(full_report)
    rows = page.tables["steps"][1:]  # after the header row
    assert [r[0][0] for r in rows] == ["1", "2", "3", "4", "5"]
    assert all(f"|{sid}" in r[1][0] for sid, r in zip(STEP_IDS, rows, strict=True))
    failover = rows[2]
    assert failover[6][0].startswith("3.20 s")  # RTO
    assert failover[7][0] == "3 → —|listed exactly"
    assert rows[3][7][0] == "3 → 0"  # failback: lost before and after reconcile
    assert failover[9] == ("2|14 retried", "warn")  # client errors (retried): a failover's cost, not a miss
    assert failover[11][1] == "warn"  # its ledger lost what its RPO counts
    assert rows[0][3][0].endswith("|+5.0 s")  # start: time of day and seconds since the drill's start


def test_report_highlights_only_the_figure_that_missed_its_target(full_report):
    _, page = _parse(full_report)
    rows = page.tables["steps"][1:]
    column = {"freeze_s": 5, "rto_s": 6}[MISSED[1]]
    missed = rows[MISSED[0] - 1][column]
    assert missed == ("2.35 s|target ≤ 2 s", "miss")
    others = [(i + 1, c) for i, r in enumerate(rows) for c in (5, 6) if r[c][1] == "miss"]
    assert others == [(MISSED[0], column)]


def test_report_lists_slos_and_every_parameter(full_report):
    _, page = _parse(full_report)
    slos = page.tables["slos"][1:]
    assert [r[0][0] for r in slos][:3] == ["switchover freeze", "org restructure freeze (via switchover)",
                                           "failover RTO"]
    assert [r[-1][0] for r in slos] == ["PASS", "FAIL", "PASS", "PASS", "NOT MEASURED"]
    params = {r[0][0]: r[1][0] for r in page.tables["params"]}
    assert params["command"] == "standbyctl drill --quick"
    assert params["multiplier"] == "3.0" and params["backend"] == "sqlite"
    assert params["started_at"].endswith(f"({T0})")


def test_report_images_are_pngs_beside_it(full_report):
    _, page = _parse(full_report)
    assert page.imgs == ["timeline.png"]
    for src in page.imgs:
        assert (full_report.parent / src).read_bytes()[:8] == PNG_MAGIC


def test_report_of_a_complete_folder_names_nothing_missing(full_report):
    assert 'id="missing"' not in full_report.read_text(encoding="utf-8")


def test_a_drill_stopped_early_still_gets_a_page_saying_what_is_missing(tmp_path):
    text, page = _parse(write_report(build_early_stop_folder(tmp_path)))
    assert "NO VERDICT" in text
    statuses = [r[2][0] for r in page.tables["steps"][1:]]
    assert statuses == ["interrupted", "skipped", "skipped", "skipped", "skipped"]
    for name in ("samples.jsonl", "locust_stats_history.csv", "locust_latency", "ledger/"):
        assert name in text.split('id="missing"')[1].split("</div>")[0]
    assert page.imgs == ["timeline.png"] and (tmp_path / "timeline.png").read_bytes()[:8] == PNG_MAGIC


def test_a_drill_with_no_step_started_renders_without_a_timeline(tmp_path):
    write_drill_json(tmp_path, {"params": {"mode": "quick"}, "steps": [], "slos": []})
    text, page = _parse(write_report(tmp_path))
    assert page.imgs == [] and "No timeline" in text and "no steps recorded" in text


def test_a_missing_or_malformed_drill_record_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="drill.json"):
        write_report(tmp_path)
    (tmp_path / "drill.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="drill.json.*JSON"):
        write_report(tmp_path)
    (tmp_path / "drill.json").write_text(json.dumps({"steps": [{"id": "x"}]}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"drill.json: steps\[0\]"):
        write_report(tmp_path)


def test_client_errors_miss_in_a_switchover_but_are_a_cost_in_a_failover():
    base = {"n": 1, "id": "s", "status": "done", "client_errors": 1, "retried": 0}
    assert "<td class='miss'>1<" in step_row(dict(base, runbook="switchover"), None)
    assert "<td class='warn'>1<" in step_row(dict(base, runbook="failover"), None)
    assert "<td>0<" in step_row(dict(base, runbook="switchover", client_errors=0), None)
