"""The switchover bench's pure parts with plain values: the ledger check, the figures taken from a runbook journal,
the holds from metric totals, the report table and the verdict. No processes, no timing."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from standbyctl.bench_switchover import (LedgerCheck, SwitchFigures, check_ledger, client_pause,
                                         failures_in_freezes, figures_from_journal, hold_delta, metric_totals,
                                         read_ledger, table, verdict)


def ack(number: str, tax: str = "0100000001", office: str = "01CA", kind: str = "import", at: float = 100.0,
        supersedes: str | None = None) -> dict:
    return {"number": number, "base": number[:-1], "supersedes": supersedes, "enterprise_tax_code": tax,
            "office_code": office, "kind": kind, "ms": 12.0, "at": at}


def row(number: str, tax: str = "0100000001", office: str = "01CA", kind: str = "import") -> dict:
    return {"number": number, "enterprise_tax_code": tax, "office_code": office, "kind": kind}


def test_every_acknowledged_number_found_with_its_contents_is_clean():
    check = check_ledger([ack("100000000010"), ack("200000000010", kind="export")],
                         [row("100000000010"), row("200000000010", kind="export"), row("100000000020")])
    assert check.ok and check.acknowledged == 2
    assert check.describe() == "2 acknowledged: 0 lost, 0 doubled, 0 mismatched"


def test_a_missing_declaration_is_lost_and_a_number_acknowledged_twice_is_doubled():
    check = check_ledger([ack("100000000010"), ack("100000000010"), ack("100000000020")], [row("100000000010")])
    assert check.lost == ["100000000020"]
    assert check.doubled == ["100000000010"]
    assert not check.ok


def test_an_amendment_is_checked_by_its_new_number_and_an_older_stored_amendment_is_lost():
    acks = [ack("100000000010"), ack("100000000011", supersedes="100000000010")]
    assert check_ledger(acks, [row("100000000011")]).ok  # the row carries the amended number now
    assert check_ledger(acks, [row("100000000010")]).lost == ["100000000011"]


def test_other_contents_than_the_client_sent_are_mismatched():
    check = check_ledger([ack("100000000010", office="79CA")], [row("100000000010", office="01CA")])
    assert check.mismatched == ["100000000010"] and not check.lost


def test_read_ledger_skips_a_line_still_being_written(tmp_path):
    (tmp_path / "ledger.1.jsonl").write_text(json.dumps(ack("100000000010")) + "\n{\"number\": \"1000")
    (tmp_path / "events.1.jsonl").write_text(json.dumps({"kind": "failure", "name": "x", "at": 1.0}) + "\n")
    acks, events = read_ledger(tmp_path)
    assert [a["number"] for a in acks] == ["100000000010"]
    assert events[0]["kind"] == "failure"


@dataclass
class Entry:
    step: str
    phase: str
    at: float
    detail: dict = field(default_factory=dict)


def journal() -> list[Entry]:
    return [Entry("freeze", "intent", 1000.0),
            Entry("freeze", "acted", 1000.05, {"result": {"frozen_at": 1000.04, "drain_s": 0.02}, "duration_s": 0.05}),
            Entry("freeze", "done", 1000.06, {"result": {"frozen_at": 1000.04, "drain_s": 0.02}, "duration_s": 0.05}),
            Entry("catch_up", "done", 1000.1, {"result": {}, "duration_s": 0.03}),
            Entry("resume", "acted", 1000.3, {"result": {"freeze_s": 0.25}, "duration_s": 0.01}),
            Entry("resume", "done", 1000.31, {"result": {"freeze_s": 0.25}, "duration_s": 0.01})]


def test_the_freeze_comes_from_the_freeze_steps_frozen_at_and_the_resume_steps_freeze_s():
    figures = figures_from_journal(journal(), "done", command_at=995.0)
    assert figures.freeze_s == 0.25 and figures.drain_s == 0.02
    assert figures.frozen_at == 1000.04 and abs(figures.resumed_at - 1000.29) < 1e-9
    assert abs(figures.to_resume_s - 5.29) < 1e-9
    assert figures.steps == {"freeze": 0.05, "catch_up": 0.03, "resume": 0.01}
    assert abs(figures.between_steps_s - 0.21) < 1e-9  # 0.25 - catch-up 0.03 - resume 0.01
    assert figures.error is None


def test_a_run_that_never_resumed_has_no_freeze_and_names_its_error():
    entries = journal()[:3] + [Entry("catch_up", "failed", 1005.0, {"error": "site B did not catch up"}),
                               Entry("freeze", "rolled_back", 1005.1, {"result": {}})]
    figures = figures_from_journal(entries, "rolled_back", command_at=995.0)
    assert figures.freeze_s is None and figures.to_resume_s is None
    assert figures.error == "site B did not catch up"


def test_a_run_refused_by_its_preconditions_names_the_reason():
    entries = [Entry("@run", "preconditions_failed", 1000.0, {"reason": "estimated freeze 1.51 s is OVER the budget"})]
    figures = figures_from_journal(entries, "refused", command_at=995.0)
    assert figures.frozen_at is None and figures.error == "estimated freeze 1.51 s is OVER the budget"


def test_client_pause_counts_slow_requests_in_flight_during_the_freeze():
    figures = figures_from_journal(journal(), "done", command_at=995.0)  # frozen 1000.04 .. 1000.29
    events = [{"kind": "slow", "ms": 400.0, "at": 1000.35},   # sent 999.95, answered after resume: in flight
              {"kind": "slow", "ms": 300.0, "at": 1000.2},    # sent and answered inside the freeze
              {"kind": "slow", "ms": 300.0, "at": 999.0},     # before the freeze
              {"kind": "slow", "ms": 250.0, "at": 1001.0},    # sent after resume
              {"kind": "failure", "ms": 900.0, "at": 1000.2}]
    assert client_pause(events, figures) == (2, 400.0)
    assert failures_in_freezes(events, [figures]) == 1  # the failure at 1000.2, inside the freeze


METRICS_BEFORE = """# TYPE front_held_total counter
front_held_total 2.0
# TYPE front_hold_seconds histogram
front_hold_seconds_bucket{le="1.0"} 1.0
front_hold_seconds_sum 0.5
front_hold_seconds_count 1.0
# TYPE front_refused_total counter
front_refused_total{reason="front_held_too_long"} 0.0
"""
METRICS_AFTER = METRICS_BEFORE.replace("front_held_total 2.0", "front_held_total 5.0").replace(
    "_sum 0.5", "_sum 1.1").replace("_count 1.0", "_count 4.0")
SITE_AFTER = """# TYPE clearance_intake_holds_total counter
clearance_intake_holds_total 3.0
# TYPE clearance_intake_hold_seconds histogram
clearance_intake_hold_seconds_sum 0.3
clearance_intake_hold_seconds_count 3.0
"""


def test_hold_delta_counts_held_requests_and_their_mean_hold_between_two_readings():
    before = {"front": metric_totals(METRICS_BEFORE), "A": {}, "B": {}}
    after = {"front": metric_totals(METRICS_AFTER), "A": metric_totals(SITE_AFTER), "B": {}}
    holds = hold_delta(before, after)
    assert holds["front_held"] == 3 and holds["site_held"] == 3
    assert holds["front_hold_mean_ms"] == 200.0 and holds["site_hold_mean_ms"] == 100.0
    assert holds["front_refused"] == 0 and holds["site_refused"] == 0


def test_hold_delta_of_a_killed_site_is_zero_and_of_a_restarted_one_its_new_count():
    site = metric_totals(SITE_AFTER)
    restarted = {name: value / 3 for name, value in site.items()}  # counted afresh since its restart
    holds = hold_delta({"front": {}, "A": site, "B": site}, {"front": {}, "A": {}, "B": restarted})
    assert holds["site_held"] == int(site["clearance_intake_holds_total"] / 3)
    assert holds["site_refused"] == 0


def _row(n: int, freeze_s: float | None, status: str = "done") -> dict:
    figures = SwitchFigures(status, freeze_s, 5.0 if freeze_s else None, 0.02,
                            {"catch_up": 0.03, "bump_epoch": 0.01, "promote": 0.01, "reverse_stream": 0.02})
    return {"n": n, "direction": "A→B" if n % 2 else "B→A", "figures": figures, "errors": 0, "retried": 0,
            "slowed": (2, 400.0), "ledger": LedgerCheck(10),
            "holds": {"front_held": 1, "site_held": 2, "front_hold_mean_ms": 150.0, "site_hold_mean_ms": 80.0,
                      "front_refused": 0, "site_refused": 1}}


def test_the_table_has_one_line_per_switchover_with_its_figures():
    text = table([_row(1, 0.25), _row(2, None, status="rolled_back") | {"refusals": ["estimate over budget"]}])
    lines = text.splitlines()
    assert len(lines) == 4
    assert lines[2].startswith("| 1 | A→B | 250 | 5,000 | 20 | 30 | 20 | 20 | 180 | 1/2 | 150.0/80.0 | 0/1 | "
                               "2 (400) |")
    assert lines[3].startswith("| 2 | B→A (refused 1x first) | — | — |")


def test_the_verdict_passes_within_the_targets_and_names_every_miss():
    rows = [_row(1, 0.25), _row(2, 0.75)]
    summary, failed = verdict(rows, LedgerCheck(20), verify_ok=True, errors=0)
    assert failed is None
    assert "freeze max 750 ms, median 750 ms over 2 of 2 switchovers" in summary  # p50 of two: the upper
    _, failed = verdict([_row(1, 1.2), _row(2, None, status="rolled_back")], LedgerCheck(20, lost=["100000000010"]),
                        verify_ok=False, errors=3)
    assert failed.startswith("target missed: not every switchover completed; freeze max 1200 ms > 1000 ms; "
                             "3 client errors; ledger: 20 acknowledged: 1 lost")
    assert failed.endswith("verify found differences")
