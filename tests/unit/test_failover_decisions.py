"""The failover's pure parts: is the old primary fenced, what a repeated epoch bump finds, what the journal says
the divergence was, and the RPO report built from the old primary's changes past it."""
from __future__ import annotations

import json

import pytest

from cutover.actions.failover import bump_decision, old_primary_fenced
from cutover.actions.failover_journal import NoDivergence, divergence_from, step_result
from cutover.rpo import answered_number, bases_needing_rows, in_flight_estimate, lost_declarations
from cutover.witness.contract import JournalEntry, WitnessState
from replication.changes import Change, ChangeOp

NOW = 1_800_000_000.0


def test_a_lease_still_running_refuses_with_the_time_to_wait_and_the_switchover_hint():
    verdict = old_primary_fenced(WitnessState(4, "A", "A", NOW + 2.5), "A", NOW)
    assert not verdict.fenced
    assert "may still be writing" in verdict.reason and "in 2.5 s" in verdict.reason
    assert "switchover" in verdict.reason


@pytest.mark.parametrize("expires", [None, NOW, NOW - 10])
def test_no_lease_or_an_expired_one_fences(expires):
    assert old_primary_fenced(WitnessState(4, "A", "A", expires), "A", NOW).fenced


def test_an_epoch_behind_the_witness_or_a_fenced_row_fences_even_under_a_running_lease():
    state = WitnessState(5, "A", "A", NOW + 30)
    assert old_primary_fenced(state, "A", NOW, old_epoch=4).fenced
    assert old_primary_fenced(state, "A", NOW, old_epoch=5, old_fenced=True).fenced
    assert not old_primary_fenced(state, "A", NOW, old_epoch=5).fenced


def test_bump_decision_tells_a_resumed_bump_from_a_witness_that_moved_on():
    assert bump_decision(WitnessState(3, "A"), "B", 3) == "promote"
    assert bump_decision(WitnessState(4, "B"), "B", 3) == "done"
    assert bump_decision(WitnessState(4, "C"), "B", 3) == "moved"
    assert bump_decision(WitnessState(5, "B"), "B", 3) == "moved"


def _entry(seq, step, phase, result=None):
    return JournalEntry("r", seq, step, phase, NOW + seq, {"result": result} if result is not None else {})


def test_divergence_from_the_journal_converts_json_keys_and_reads_the_last_done():
    entries = [_entry(1, "stop_stream", "intent"),
               _entry(2, "stop_stream", "done", {"stream": "A-to-B", "partitions": 2,
                                                  "positions": {"0": 120, "1": 131}, "applied": 120}),
               _entry(3, "bump_epoch", "done", {"epoch": 6, "primary": "B"}),
               _entry(4, "reverse_start", "done", {"stream": "B-to-A", "position": 77}),
               _entry(5, "reverse_start", "done", {"stream": "B-to-A", "position": 77})]
    d = divergence_from({"from": "A", "to": "B"}, entries)
    assert (d.old_primary, d.new_primary, d.stream, d.partitions) == ("A", "B", "A-to-B", 2)
    assert d.positions == {0: 120, 1: 131} and d.applied == 120
    assert (d.epoch, d.reverse_stream, d.reverse_start) == (6, "B-to-A", 77)
    assert step_result(entries, "promote") is None


def test_no_divergence_before_stop_stream_is_done():
    with pytest.raises(NoDivergence, match="stop_stream"):
        divergence_from({"from": "A", "to": "B"}, [_entry(1, "stop_stream", "intent")])


def _declaration(base, state="pre_declared", amendment=0, updated_at=NOW):
    return {"base": base, "number": f"{base}{amendment}", "enterprise_tax_code": "0100000001", "office_code": "01CA",
            "kind": "import", "state": state, "updated_at": updated_at}


def _answer(base, key, status=201, amendment=0):
    body = {"number": f"{base}{amendment}", "lane": "green"}
    return {"principal": "declarant:0100000001", "key": key, "request_hash": "h", "status": status,
            "response": json.dumps(body), "created_at": NOW}


def _c(position, table, key, row, op=ChangeOp.INSERT):
    return Change(position, table, op, key, row)


def test_the_lost_list_names_each_touched_declaration_once_with_its_last_state_and_answer():
    a, b, c = "10000000001", "10000000002", "10000000003"
    changes = [
        _c(10, "declarations", {"base": a}, _declaration(a)),
        _c(11, "goods_lines", {"declaration_base": a, "line_no": 1}, {"declaration_base": a}),
        _c(12, "idempotency_keys", {"principal": "p", "key": "k1"}, _answer(a, "k1")),
        _c(13, "declarations", {"base": a}, _declaration(a, "awaiting_payment", updated_at=NOW + 1), ChangeOp.UPDATE),
        _c(14, "idempotency_keys", {"principal": "p", "key": "k2"}, _answer(a, "k2", status=200)),
        _c(15, "officer_assignments", {"declaration_base": b, "amendment": 0}, {"declaration_base": b}),
        _c(16, "replication_heartbeat", {"source": "A"}, {"source": "A", "at": NOW}),
        _c(17, "audit_log", {"id": 5}, {"id": 5}),
        _c(18, "idempotency_keys", {"principal": "p", "key": "bad"}, {"status": 422, "response": '{"error": {}}'}),
        _c(19, "declarations", {"base": c}, None, ChangeOp.DELETE),
    ]
    assert bases_needing_rows(changes) == {b}
    lost = lost_declarations(changes, {b: _declaration(b, "document_check")}, {b: "pre_declared"})
    assert [d["number"] for d in lost] == [f"{a}0", f"{b}0"]
    first, second = lost
    assert (first["state"], first["at"], first["new_primary_state"]) == ("awaiting_payment", NOW + 1, None)
    assert first["told"] == {"status": 200, "principal": "declarant:0100000001", "key": "k2"}
    assert (first["enterprise_tax_code"], first["office_code"], first["kind"]) == ("0100000001", "01CA", "import")
    assert (second["state"], second["told"], second["new_primary_state"]) == ("document_check", None, "pre_declared")


def test_no_changes_no_loss():
    assert lost_declarations([], {}, {}) == []


def test_answered_number_only_takes_a_twelve_digit_number():
    assert answered_number({"response": '{"number": "100000000012"}'}) == "100000000012"
    assert answered_number({"response": '{"number": "12"}'}) is None
    assert answered_number({"response": "not json"}) is None
    assert answered_number({"response": "[1]"}) is None


def test_in_flight_estimate_is_lag_times_rate_and_says_what_it_cannot_know():
    estimate = in_flight_estimate(NOW, NOW + 2.5, 40.0)
    assert (estimate["lag_s"], estimate["declarations"]) == (2.5, 100)
    assert in_flight_estimate(NOW, NOW - 1, 40.0)["declarations"] == 0
    unknown = in_flight_estimate(None, NOW, 40.0)
    assert unknown["declarations"] is None and "unknown" in unknown["basis"]


def _divergence():
    from cutover.actions.failover_journal import Divergence

    return Divergence("A", "B", "A-to-B", 2, {0: 5, 1: 7}, 2, "B-to-A", 40)


def test_a_report_without_the_old_database_says_why_and_estimates_the_writes_in_flight():
    from cutover.rpo import describe, estimated_report

    report = estimated_report(_divergence(), "the database file /x/site-a.db is missing",
                              {"heartbeat_at": NOW, "last_write_at": NOW + 1.2, "rate_per_s": 10.0})
    assert (report["exact"], report["lost"], report["lost_count"]) == (False, [], None)
    assert report["in_flight_estimate"]["declarations"] == 12
    sentence = describe(report)
    assert "not exact" in sentence and "missing" in sentence and "about 12" in sentence
    assert "standbyctl failover report" in sentence


def test_an_exact_report_counts_the_lost_and_keeps_the_positions_as_json_keys():
    from cutover.rpo import describe, exact_report

    lost = [{"number": "100000000010"}]
    report = exact_report(_divergence(), [_c(9, "declarations", {"base": "10000000001"}, None)], lost)
    assert (report["exact"], report["lost_count"], report["changes"]) == (True, 1, 1)
    assert report["positions"] == {"0": 5, "1": 7}
    assert describe(report).startswith("1 declaration acknowledged by A never reached B")
