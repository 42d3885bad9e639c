"""The failback's pure decisions: which declaration a quarantined row belongs to, what replaces it on the old
primary, how reconcile groups and decides (the rule in cutover/reconcile.py), how far the old block is raised."""
from __future__ import annotations

import json

import pytest

from cutover.failback import (QuarantinedRow, QuarantineStatus, declaration_base, next_status, numbers_by_base,
                              pending, records, replacements)
from cutover.reconcile import Verdict, block_floor, decide, group_rows, reapply_changes
from replication.changes import Change, ChangeOp
from replication.streams import decide_start_at

NUMBER = "100000000420"
BASE = NUMBER[:11]
F = 2  # the failover's epoch


def change(position, table, key, row, op=ChangeOp.UPDATE):
    return Change(position, table, ChangeOp.DELETE if row is None else op, key, row)


def answer(number=NUMBER, key="k1", status=201, request_hash="h1"):
    return {"principal": "declarant:0100000001", "key": key, "request_hash": request_hash, "status": status,
            "response": json.dumps({"number": number, "state": "pre_declared"}), "created_at": 1.0}


def qrow(i, table, key, row, number=NUMBER, status=QuarantineStatus.HELD):
    return QuarantinedRow(i, "run", 1, 100 + i, table, key, row, number, status)


def declaration(state="awaiting_payment", epoch=1, number=NUMBER):
    return {"base": number[:11], "number": number, "state": state, "epoch": epoch}


def test_rows_belong_to_the_declaration_their_key_or_stored_answer_names():
    assert declaration_base("declarations", {"base": BASE}, None) == BASE
    assert declaration_base("goods_lines", {"declaration_base": BASE, "line_no": 1}, {}) == BASE
    assert declaration_base("idempotency_keys", {"principal": "p", "key": "k"}, answer()) == BASE
    assert declaration_base("idempotency_keys", {"principal": "p", "key": "k"},
                            answer() | {"response": json.dumps({"error": {"code": "x"}})}) is None
    assert declaration_base("audit_log", {"id": 7}, {"target": NUMBER}) == BASE
    assert declaration_base("officer_rotation", {"office_code": "01CA", "section": "01"}, {}) is None


def test_records_carry_epoch_position_number_and_the_row_as_the_old_primary_left_it():
    tail = [change(11, "goods_lines", {"declaration_base": BASE, "line_no": 1}, {"hs_code": "0101"}),
            change(12, "declarations", {"base": BASE}, declaration()),
            change(13, "goods_lines", {"declaration_base": BASE, "line_no": 2}, None)]
    out = records(tail, run_id="r1", epoch=1, now=5.0, numbers=numbers_by_base(tail))
    assert [(r["table_name"], r["position"], r["declaration_number"], r["epoch"], r["status"]) for r in out] == [
        ("goods_lines", 11, NUMBER, 1, "held"), ("declarations", 12, NUMBER, 1, "held"),
        ("goods_lines", 13, NUMBER, 1, "held")]
    assert json.loads(out[1]["row"]) == declaration() and out[2]["row"] is None
    assert out[0]["pk"] == '{"declaration_base":"10000000042","line_no":1}'


def test_live_rows_become_the_primarys_version_or_go_parents_first_children_last():
    tail = [change(1, "goods_lines", {"declaration_base": BASE, "line_no": 1}, {"a": 1}),
            change(2, "declarations", {"base": BASE}, declaration())]
    writes = replacements(tail, {})  # the primary has neither: both deleted, the line first
    assert [(w.table, w.op) for w in writes] == [("goods_lines", ChangeOp.DELETE), ("declarations", ChangeOp.DELETE)]
    theirs = {("declarations", '{"base":"10000000042"}'): declaration("pre_declared"),
              ("goods_lines", '{"declaration_base":"10000000042","line_no":1}'): {"b": 2}}
    writes = replacements(tail, theirs)
    assert [(w.table, w.op, w.row) for w in writes] == [
        ("declarations", ChangeOp.UPDATE, declaration("pre_declared")), ("goods_lines", ChangeOp.UPDATE, {"b": 2})]


def test_a_row_already_quarantined_is_not_moved_again():
    tail = [change(5, "declarations", {"base": BASE}, declaration())]
    assert pending(tail, {("declarations", '{"base":"10000000042"}', 5)}) == []
    assert pending(tail, {("declarations", '{"base":"10000000042"}', 4)}) == tail


def test_quarantine_status_moves_once_from_held():
    assert next_status(QuarantineStatus.HELD, QuarantineStatus.CONFLICT) is QuarantineStatus.CONFLICT
    with pytest.raises(ValueError):
        next_status(QuarantineStatus.REAPPLIED, QuarantineStatus.CONFLICT)


def _group(*extra):
    rows = (qrow(1, "declarations", {"base": BASE}, declaration()),
            qrow(2, "idempotency_keys", {"principal": "declarant:0100000001", "key": "k1"}, answer()), *extra)
    groups, others = group_rows(rows)
    assert len(groups) == 1
    return groups[0], others


def _answers(on_primary=None):
    return {'{"key":"k1","principal":"declarant:0100000001"}': on_primary}


def test_a_declaration_the_primary_has_not_got_is_reapplied():
    group, _ = _group()
    verdict = decide(group, declaration_on_primary=None, answers_on_primary=_answers(), failover_epoch=F)
    assert verdict.verdict is Verdict.REAPPLY and "no row" in verdict.reason


def test_a_declaration_the_primary_holds_from_before_the_divergence_is_reapplied():
    group, _ = _group()
    verdict = decide(group, declaration_on_primary=declaration("pre_declared", epoch=F - 1),
                     answers_on_primary=_answers(), failover_epoch=F)
    assert verdict.verdict is Verdict.REAPPLY and "before the divergence" in verdict.reason


def test_a_declaration_the_primary_wrote_after_the_failover_is_a_conflict():
    group, _ = _group()
    verdict = decide(group, declaration_on_primary=declaration("cleared", epoch=F),
                     answers_on_primary=_answers(), failover_epoch=F)
    assert verdict.verdict is Verdict.CONFLICT
    assert "cleared under epoch 2" in verdict.reason and "awaiting_payment" in verdict.reason


def test_a_request_carried_out_again_on_the_primary_is_a_conflict_and_the_same_answer_is_not():
    group, _ = _group()
    retried = answer(number="200000000070")
    verdict = decide(group, declaration_on_primary=None, answers_on_primary=_answers(retried), failover_epoch=F)
    assert verdict.verdict is Verdict.CONFLICT and "k1" in verdict.reason
    same = decide(group, declaration_on_primary=None, answers_on_primary=_answers(answer()), failover_epoch=F)
    assert same.verdict is Verdict.REAPPLY  # a reconcile repeated after a crash decides the same way


def test_lines_without_their_declaration_anywhere_are_a_conflict():
    groups, _ = group_rows([qrow(1, "goods_lines", {"declaration_base": BASE, "line_no": 1}, {"x": 1})])
    verdict = decide(groups[0], declaration_on_primary=None, answers_on_primary={}, failover_epoch=F)
    assert verdict.verdict is Verdict.CONFLICT


def test_grouping_keeps_bookkeeping_apart_and_answers_without_a_number_alone():
    refused = answer() | {"response": json.dumps({"error": {"code": "enterprise_blocked"}}), "key": "k9"}
    rows = [qrow(1, "declarations", {"base": BASE}, declaration()),
            qrow(2, "audit_log", {"id": 3}, {"target": NUMBER}),
            qrow(3, "officer_rotation", {"office_code": "01CA", "section": "01"}, {"next_position": 2}, None),
            qrow(4, "idempotency_keys", {"principal": "p", "key": "k9"}, refused, None)]
    groups, others = group_rows(rows)
    assert [(g.number, len(g.rows)) for g in groups] == [(None, 1), (NUMBER, 2)]
    assert [r.table for r in others] == ["officer_rotation"]
    assert groups[0].label.startswith("Idempotency-Key 'k9'")


def test_reapplied_writes_put_the_declaration_before_its_lines_and_leave_audit_records_apart():
    group, _ = _group(qrow(3, "goods_lines", {"declaration_base": BASE, "line_no": 1}, {"x": 1}),
                      qrow(4, "audit_log", {"id": 9}, {"target": NUMBER}))
    tables = [c.table for c in reapply_changes(group)]
    assert tables.index("declarations") < tables.index("goods_lines") and "audit_log" not in tables


def test_the_old_block_is_raised_past_every_quarantined_number_and_its_own_reach():
    rows = [qrow(1, "declarations", {"base": BASE}, declaration()),
            qrow(2, "number_blocks", {"site_digit": 1}, {"site_digit": 1, "next_sequence": 300}, None),
            qrow(3, "declarations", {"base": "20000000099"}, declaration(number="200000000990"), "200000000990")]
    assert block_floor(rows, 1) == 300
    assert block_floor(rows[:1], 1) == 43
    assert block_floor(rows, 2) == 100


def test_a_fixed_stream_start_keeps_a_stream_that_ran_on_and_replaces_an_older_one():
    assert decide_start_at({}, 2, 40) == ("write", 40)
    assert decide_start_at({0: 40, 1: 40}, 2, 40) == ("keep", 40)  # a re-run
    assert decide_start_at({0: 50, 1: 60}, 2, 40) == ("keep", 50)  # the replicator streamed on
    assert decide_start_at({0: 10, 1: 60}, 2, 40) == ("write", 40)  # an older stream's positions
    assert decide_start_at({0: 50}, 2, 40) == ("write", 40)  # another partition count
