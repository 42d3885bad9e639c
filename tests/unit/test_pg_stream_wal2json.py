"""wal2json format 1 as row changes (replication.pg_wal2json): plain messages in, Change values out."""
from __future__ import annotations

import json

import pytest

from replication.changes import REPLICATED_TABLES, Change, ChangeOp
from replication.errors import ReplicationError
from replication.pg_wal2json import (RowInsert, add_tables, built, int_to_lsn, lsn_to_int, stream_options, transaction,
                                     transaction_items)

TABLES = frozenset(REPLICATED_TABLES)
IDEMPOTENCY = ["principal", "key", "request_hash", "status", "response", "created_at"]


def message(*changes: dict, nextlsn: str = "0/1926CD0", xid: int = 727) -> bytes:
    return json.dumps({"xid": xid, "nextlsn": nextlsn, "timestamp": "2026-11-30 08:24:13.5+00",
                       "change": list(changes)}).encode()


def insert(table: str, names: list[str], values: list) -> dict:
    return {"kind": "insert", "schema": "public", "table": table, "columnnames": names, "columnvalues": values}


def keyed(kind: str, table: str, keys: dict, names: list[str] | None = None, values: list | None = None) -> dict:
    entry = {"kind": kind, "schema": "public", "table": table,
             "oldkeys": {"keynames": list(keys), "keyvalues": list(keys.values())}}
    if names is not None:
        entry.update(columnnames=names, columnvalues=values)
    return entry


def test_one_message_is_one_whole_transaction_at_its_commit_position() -> None:
    payload = message(insert("idempotency_keys", IDEMPOTENCY, ["p", "k1", "h", 201, "{}", 1.5]),
                      keyed("update", "idempotency_keys", {"principal": "p", "key": "k1"},
                            IDEMPOTENCY, ["p", "k1", "h2", 200, "{}", 2.0]),
                      keyed("delete", "idempotency_keys", {"principal": "p", "key": "k1"}))

    position, changes = transaction(payload, TABLES)

    assert position == lsn_to_int("0/1926CD0")
    key = {"principal": "p", "key": "k1"}
    assert [(c.op, c.key, c.seq) for c in changes] == [
        (ChangeOp.INSERT, key, 0), (ChangeOp.UPDATE, key, 1), (ChangeOp.DELETE, key, 2)]
    assert changes[1].row == {"principal": "p", "key": "k1", "request_hash": "h2", "status": 200, "response": "{}",
                              "created_at": 2.0}
    assert changes[2].row is None
    assert {(c.position, c.txid, c.committed_at) for c in changes} == {(position, 727, 1796027053.5)}


def test_a_primary_key_change_is_a_delete_then_an_insert() -> None:
    payload = message(keyed("update", "idempotency_keys", {"principal": "p", "key": "k1"},
                            IDEMPOTENCY, ["p", "k2", "h", 201, "{}", 1.5]))

    _, changes = transaction(payload, TABLES)

    assert [(c.op, c.key, c.row is None) for c in changes] == [
        (ChangeOp.DELETE, {"principal": "p", "key": "k1"}, True), (ChangeOp.INSERT, {"principal": "p", "key": "k2"}, False)]


def test_keys_follow_the_schemas_primary_key_order_and_numbers_come_out_as_a_snapshot_gives_them() -> None:
    names = ["line_no", "declaration_base", "hs_code", "description", "quantity", "unit", "unit_price", "currency",
             "origin", "value_vnd", "duty_vnd", "vat_vnd"]
    payload = ('{"xid":1,"nextlsn":"0/10","change":[{"kind":"insert","schema":"public","table":"goods_lines",'
               f'"columnnames":{json.dumps(names)},"columnvalues":[2,"10000002001","08011100","x",1.500,"KGM",'
               '2.2800,"USD","VN",383741444,0,0]}]}')

    (change,) = transaction(payload, TABLES)[1]

    assert list(change.key.items()) == [("declaration_base", "10000002001"), ("line_no", 2)]
    assert (change.row["quantity"], change.row["unit_price"], change.row["value_vnd"]) == ("1.500", "2.2800", 383741444)
    assert change.committed_at is None


def test_a_numeric_too_long_for_a_float_keeps_every_digit() -> None:
    names = ["declaration_base", "line_no", "quantity", "unit_price"]
    payload = ('{"xid":1,"nextlsn":"0/10","change":[{"kind":"insert","schema":"public","table":"goods_lines",'
               f'"columnnames":{json.dumps(names)},"columnvalues":["1",1,123456789012345.678,0.1000]}}]}}')

    (change,) = transaction(payload, TABLES)[1]

    assert (change.row["quantity"], change.row["unit_price"]) == ("123456789012345.678", "0.1000")


def test_other_tables_and_logical_messages_give_no_changes() -> None:
    payload = message({"kind": "message", "transactional": True, "prefix": "standby-flush", "content": ""},
                      insert("site_control", ["site_id"], ["A"]))

    assert transaction(payload, TABLES) == (lsn_to_int("0/1926CD0"), [])


def test_a_truncate_cannot_be_replicated_as_row_changes() -> None:
    payload = message({"kind": "truncate", "schema": "public", "table": "declarations"})

    with pytest.raises(ReplicationError, match="TRUNCATE of public.declarations at 0/1926CD0"):
        transaction(payload, TABLES)


def test_a_message_that_is_not_wal2json_is_refused_by_name() -> None:
    with pytest.raises(ReplicationError, match="cannot parse"):
        transaction(b'{"xid": 1}', TABLES)


def test_stream_options_ask_for_one_message_per_transaction_with_its_commit_position() -> None:
    options = stream_options("public", ("wards", "odd.name"))

    assert options["format-version"] == "1" and options["include-lsn"] == "1"
    assert options["write-in-chunks"] == "0"  # a chunked message could end inside a transaction
    assert options["add-tables"] == add_tables("public", ("wards", "odd.name")) == r"public.wards,public.odd\.name"
    assert int_to_lsn(lsn_to_int("16/B374D848")) == "16/B374D848"


def test_changes_are_plain_values() -> None:
    (change,) = transaction(message(insert("replication_heartbeat", ["source", "at", "counter"], ["A", 1.5, 3])),
                            TABLES)[1]

    assert change == Change(lsn_to_int("0/1926CD0"), "replication_heartbeat", ChangeOp.INSERT, {"source": "A"},
                            {"source": "A", "at": 1.5, "counter": 3}, 727, 1796027053.5, 0)


GOODS = ["declaration_base", "line_no", "hs_code", "description", "quantity", "unit", "unit_price", "currency",
         "origin", "value_vnd", "duty_vnd", "vat_vnd"]
GOODS_VALUES = ["10000002001", 2, "08011100", "x", 1.5, "KGM", 2.28, "USD", "VN", 383741444, 0, 0]


def test_an_insert_is_left_for_the_apply_side_and_builds_into_the_change_transaction_gives() -> None:
    payload = message(insert("goods_lines", GOODS, GOODS_VALUES),
                      keyed("delete", "idempotency_keys", {"principal": "p", "key": "k1"}))

    position, items = transaction_items(payload, TABLES)
    _, changes = transaction(payload, TABLES)

    assert [type(i) for i in items] == [RowInsert, Change]
    assert [built(i) for i in items] == changes
    row_insert = items[0]
    assert row_insert.key == changes[0].key == {"declaration_base": "10000002001", "line_no": 2}
    assert row_insert.values_in_schema_order() == [changes[0].row[n] for n in GOODS]
    assert row_insert.values_in_schema_order()[4:7] == ["1.500", "KGM", "2.2800"]
    assert (row_insert.position, row_insert.seq, row_insert.op) == (position, 0, ChangeOp.INSERT)


def test_an_insert_whose_columns_came_in_another_order_is_built_at_once() -> None:
    order = [3, 0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11]
    payload = message(insert("goods_lines", [GOODS[i] for i in order], [GOODS_VALUES[i] for i in order]))

    _, items = transaction_items(payload, TABLES)

    assert type(items[0]) is Change
    assert items[0].row == built(transaction_items(message(insert("goods_lines", GOODS, GOODS_VALUES)),
                                                   TABLES)[1][0]).row


def test_a_left_insert_with_a_numeric_too_long_for_a_float_keeps_every_digit() -> None:
    values = '["1",1,"x","y",123456789012345.678,"KGM",0.1000,"USD","VN",1,0,0]'
    payload = ('{"xid":1,"nextlsn":"0/10","change":[{"kind":"insert","schema":"public","table":"goods_lines",'
               f'"columnnames":{json.dumps(GOODS)},"columnvalues":{values}}}]}}')

    (item,) = transaction_items(payload, TABLES)[1]

    assert item.values_in_schema_order()[4] == built(item).row["quantity"] == "123456789012345.678"
    assert item.values_in_schema_order()[6] == built(item).row["unit_price"] == "0.1000"


@pytest.mark.parametrize("entry", [insert("goods_lines", GOODS, GOODS_VALUES[:-1]),
                                   keyed("update", "idempotency_keys", {"principal": "p", "key": "k1"},
                                         IDEMPOTENCY, ["p", "k1", "h"])])
def test_a_row_whose_values_do_not_pair_with_its_columns_is_refused_where_it_is_read(entry) -> None:
    with pytest.raises(ReplicationError, match="cannot parse"):
        transaction_items(message(entry), TABLES)
