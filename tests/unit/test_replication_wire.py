"""A window's trip to the apply workers (encode_window / decode_window) and the collector held off around it."""
from __future__ import annotations

import gc

import pytest

from replication.changes import Change, ChangeOp
from replication.pg_wal2json import RowInsert, built
from replication.wire import decode_window, encode_window
from standby.heap import collection_paused


def test_a_window_comes_back_equal_in_order_with_every_kind_of_value():
    window = [
        Change(10, "declarations", ChangeOp.INSERT, {"base": "10000000001"},
               {"base": "10000000001", "amendment": 0, "lane": None, "created_at": 1.75e9, "paid": True,
                "quantity": "12.500", "name": "Hà Nội"}, txid=7, committed_at=1.75e9, seq=0),
        Change(10, "goods_lines", ChangeOp.UPDATE, {"declaration_base": "10000000001", "line_no": 1},
               {"declaration_base": "10000000001", "line_no": 1, "value_vnd": 2 ** 62}, seq=1),
        Change(11, "officers", ChangeOp.DELETE, {"officer_id": "O-1"}, None),
    ]
    back = decode_window(encode_window(window))
    assert back == window
    assert [type(c.op) for c in back] == [ChangeOp] * 3


def test_a_window_with_inserts_left_for_the_workers_comes_back_equal_and_builds_the_same_changes():
    columns = ["declaration_base", "line_no", "hs_code", "description", "quantity", "unit", "unit_price", "currency",
               "origin", "value_vnd", "duty_vnd", "vat_vnd"]
    left = RowInsert(10, "goods_lines", ["10000000001", 1, "85171200", "Điện thoại", 1.5, "PCE", 2.28, "USD", "CN",
                                         2 ** 40, 0, None], 7, 1.75e9, 0)
    window = [left, Change(10, "officers", ChangeOp.DELETE, {"officer_id": "O-1"}, None, 7, 1.75e9, 1)]

    back = decode_window(encode_window(window))

    assert back == window and [type(i) for i in back] == [RowInsert, Change]
    assert built(back[0]) == built(left)
    values = ["10000000001", 1, "85171200", "Điện thoại", "1.500", "PCE", "2.2800", "USD", "CN", 2 ** 40, 0, None]
    assert built(left).row == dict(zip(columns, values))


def test_an_empty_window_comes_back_empty():
    assert decode_window(encode_window([])) == []


def test_the_collector_is_off_inside_and_back_after_an_exception():
    assert gc.isenabled()
    with pytest.raises(RuntimeError):
        with collection_paused():
            assert not gc.isenabled()
            raise RuntimeError("boom")
    assert gc.isenabled()


def test_a_nested_pause_leaves_the_collector_off_for_the_outer_block():
    with collection_paused():
        with collection_paused():
            pass
        assert not gc.isenabled()
    assert gc.isenabled()
