"""The failover bench's pure parts with plain values: RTO from the client ledger, the gap's client events, the
runbook journals' figures, RPO beside the ledger, the decision latency from latency histograms, the tables and the
verdict. No processes, no timing."""
from __future__ import annotations

from collections import Counter

from cutover.witness.contract import JournalEntry
from loadtests.slo import DECISION
from standbyctl.bench_failover_figures import (RunFigures, decision_latency, failover_rpo, first_write_by,
                                               gap_events, latency_table, reconcile_counts, round_table, run_figures,
                                               verdict)
from standbyctl.bench_switchover import LedgerCheck


def ack(number: str, at: float, supersedes: str | None = None) -> dict:
    return {"number": number, "base": number[:-1], "supersedes": supersedes, "enterprise_tax_code": "0100000001",
            "office_code": "01CA", "kind": "import", "ms": 10.0, "at": at}


def event(kind: str, at: float, name: str = "/v1/declarations", error: str | None = "503") -> dict:
    return {"kind": kind, "name": name, "error": error, "ms": 50.0, "at": at}


def entry(step: str, phase: str, detail: dict, seq: int = 0) -> JournalEntry:
    return JournalEntry("run-1", seq, step, phase, 100.0 + seq, detail)


def test_rto_ends_at_the_first_pre_declaration_numbered_by_the_new_primary():
    acks = [ack("100000000010", 99.0), ack("100000000020", 100.5),  # the old primary, before and as it died
            ack("100000000011", 101.0, supersedes="100000000010"),  # an amendment keeps the old site's digit
            ack("200000000021", 103.0, supersedes="200000000020"),  # an amendment on B: not a pre-declaration
            ack("200000000030", 104.2), ack("200000000040", 105.0)]
    assert first_write_by(acks, site_digit=2, after=100.0) == 104.2
    assert first_write_by(acks, site_digit=1, after=100.0) == 100.5
    assert first_write_by(acks, site_digit=2, after=106.0) is None


def test_gap_events_split_the_round_at_the_first_write_plus_the_grace():
    events = [event("failure", 99.0), event("failure", 101.0, error="503 primary_unreachable: {...}"),
              event("retried", 102.0), event("slow", 103.0),
              event("failure", 106.5, error="timeout"), event("failure", 120.0), event("failure", 131.0)]
    counted = gap_events(events, kill_at=100.0, recovered_at=105.0, end=130.0, grace_s=2.0)
    assert counted == {"gap_failures": 2, "gap_retried": 1, "after_gap_failures": 1,
                       "gap_errors": {"/v1/declarations: 503 primary_unreachable": 1, "/v1/declarations: timeout": 1}}


def test_a_gap_that_never_closed_runs_to_the_round_end():
    counted = gap_events([event("failure", 101.0), event("failure", 125.0)], 100.0, None, end=130.0)
    assert (counted["gap_failures"], counted["after_gap_failures"]) == (2, 0)


def failover_journal(lost: list[dict], exact: bool = True) -> list[JournalEntry]:
    return [entry("stop_stream", "intent", {}, 1),
            entry("stop_stream", "acted", {"result": {"stream": "A-to-B", "positions": {"0": 12}}, "duration_s": 0.2}, 2),
            entry("stop_stream", "done", {"result": {"stream": "A-to-B", "positions": {"0": 12}}, "duration_s": 0.25}, 3),
            entry("bump_epoch", "done", {"result": {"epoch": 4, "primary": "B"}, "duration_s": 0.05}, 4),
            entry("report", "done", {"result": {"exact": exact, "lost": lost, "lost_count": len(lost)},
                                     "duration_s": 0.4}, 5)]


def test_run_figures_take_each_steps_duration_and_output_and_the_first_error():
    figures = run_figures(failover_journal([{"number": "100000000050"}]), "done", "run-1")
    assert figures.steps == {"stop_stream": 0.25, "bump_epoch": 0.05, "report": 0.4}
    assert figures.outputs["bump_epoch"] == {"epoch": 4, "primary": "B"}
    assert figures.outputs["report"]["lost_count"] == 1 and figures.error is None
    assert abs(figures.total_s - 0.7) < 1e-9
    failed = run_figures([entry("bump_epoch", "failed", {"error": "StaleEpoch"}, 1)], "failed")
    assert failed.error == "StaleEpoch" and failed.steps == {}


def test_rpo_names_ledger_lost_numbers_the_report_left_out_and_counts_answers_cut_off():
    report = run_figures(failover_journal([{"number": "100000000050"}, {"number": "100000000061"},
                                           {"number": "100000000070"}]), "done")
    rpo = failover_rpo(report, ledger_lost=["100000000050", "100000000060", "100000000080"])
    # 100000000060 was amended on the old primary after the ack: the same declaration, named by the report.
    assert rpo == {"reported": 3, "exact": True, "ledger": 3, "unnamed": ["10000000008"], "unseen": 1,
                   "in_flight_estimate": None}


def test_reconcile_counts_come_from_the_failbacks_quarantine_reconcile_and_report_steps():
    failback = RunFigures("done", outputs={
        "quarantine": {"moved": 7, "declarations": ["100000000050", "100000000060"]},
        "reconcile": {"reapplied": ["100000000050"], "reapplied_count": 1, "conflicts": ["100000000060"],
                      "conflict_count": 1},
        "report": {"quarantined": 7, "missing_from_primary": ["100000000060"]}})
    assert reconcile_counts(failback) == {"quarantined": 2, "rows": 7, "reapplied": 1, "conflicts": 1, "missing": 1}
    assert reconcile_counts(RunFigures("failed")) == {"quarantined": None, "rows": None, "reapplied": None,
                                                      "conflicts": None, "missing": None}


def test_decision_latency_is_the_histogram_percentile_over_the_window_only():
    histograms = {DECISION: {100: Counter({10: 60}), 101: Counter({12: 38, 90: 2}), 150: Counter({900: 100})}}
    lat = decision_latency(histograms, start=99.5, end=101.9)
    assert lat == {"p50_ms": 10.0, "p99_ms": 90.0, "n": 100, "seconds": 2}
    assert decision_latency({}, 0, 10) == {"p50_ms": None, "p99_ms": None, "n": 0, "seconds": 10}


def round_row(n: int, rto: float | None, missing: list[str], conflicts: int = 0, unnamed=(), status="done") -> dict:
    failover = RunFigures(status, outputs={"report": {"exact": True, "lost": [], "lost_count": 2}})
    return {"n": n, "direction": "A→B" if n % 2 else "B→A", "killed": {"site": "A", "workers": 2, "replicators": 1},
            "lease_s": 2.9, "runbook_s": 1.4, "rto_s": rto, "failover": failover,
            "events": {"gap_failures": 1, "gap_retried": 5, "after_gap_failures": 0, "gap_errors": {}},
            "rpo": {"reported": 2, "exact": True, "ledger": 1, "unnamed": list(unnamed), "unseen": 1},
            "failback": RunFigures("done"), "reconcile": {"quarantined": 2, "reapplied": 2 - conflicts,
                                                          "conflicts": conflicts},
            "after": LedgerCheck(100, lost=missing)}


def test_round_table_has_one_line_per_kill_with_its_figures():
    text = round_table([round_row(1, 4.21, []), round_row(2, None, ["100000000010"])])
    lines = text.splitlines()
    assert len(lines) == 4 and lines[0].count("|") == lines[2].count("|") == 14
    assert "| 1 | A→B done | 2, 1 | 2.90 | 1.40 | 4.21 | 1 (5) | 0 | 2 exact | 1 (0) | done | 2 / 2 / 0 | 0 |" \
        == lines[2]
    assert lines[3].split("|")[6].strip() == "—" and lines[3].split("|")[-2].strip() == "1"


def test_latency_table_puts_sync_beside_async():
    text = latency_table({"async": {"p50_ms": 41.0, "p99_ms": 180.0, "n": 900, "seconds": 90},
                          "sync": {"p50_ms": 60.0, "p99_ms": 260.0, "n": 880, "seconds": 90}})
    assert text.splitlines()[2] == "| async | 41.0 | 180.0 | 900 | 90 |"
    assert text.splitlines()[3] == "| sync | 60.0 | 260.0 | 880 | 90 |"


def test_verdict_meets_every_target_with_fast_failovers_and_nothing_missing():
    summary, failed = verdict([round_row(1, 4.0, []), round_row(2, 3.0, [])], LedgerCheck(200), verify_ok=True,
                              phases={"async": {"p50_ms": 19.0, "p99_ms": 54.0}, "sync": {"p50_ms": 47.0,
                                                                                         "p99_ms": 130.0}})
    assert failed is None
    assert summary.endswith("verify clean; green-lane decision async p50 19.0 ms, p99 54.0 ms; green-lane decision "
                            "sync p50 47.0 ms, p99 130.0 ms")
    assert summary.startswith("2 kills: RTO max 4.00 s, median 4.00 s over 2 (target ≤ 5 s); client errors in "
                              "the gaps 2, after them 0; RPO by the failover report 4 declarations over 2")


def test_verdict_names_each_missed_target():
    rows = [round_row(1, 6.5, [], unnamed=["10000000008"]), round_row(2, None, ["100000000010"], status="failed")]
    _, failed = verdict(rows, LedgerCheck(200, lost=["100000000010"]), verify_ok=False)
    assert failed == ("target missed: not every failover completed; a new primary accepted no write; RTO max 6.50 s "
                      "> 5 s; the failover report left out numbers the ledger lost; acknowledged numbers missing "
                      "after reconcile beyond the conflicts listed (kills [2]); final ledger: 200 acknowledged: "
                      "1 lost, 0 doubled, 0 mismatched; verify found differences")


def test_a_listed_conflict_may_stay_missing_in_every_later_round():
    rows = [round_row(1, 3.0, ["100000000010"], conflicts=1), round_row(2, 3.0, ["100000000010"])]
    assert verdict(rows, LedgerCheck(200, lost=["100000000010"]), verify_ok=True)[1] == (
        "target missed: final ledger: 200 acknowledged: 1 lost, 0 doubled, 0 mismatched")
