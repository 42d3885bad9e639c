"""PgChangeSource on a real PostgreSQL with wal2json: intake through the real pipeline comes out as row changes of
whole transactions in commit order; reads only peek; acknowledge frees WAL; the snapshot plus the stream from its
start position converges to the primary; the slot's life cycle; unreachable servers are transient."""
from __future__ import annotations

import json
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from decimal import Decimal
from itertools import groupby

import pytest
from sqlalchemy import Engine, delete, insert, select, text, update

from replication.changes import REPLICATED_TABLES, Change, ChangeOp
from replication.errors import ReplicationError, SourceUnavailable
from replication.pg_source import PgChangeSource, int_to_lsn, lsn_to_int
from standby.clearance.commands import Outcome
from standby.store.engine import make_engine
from standby.store.schema import (
    declarations,
    enterprises,
    goods_lines,
    idempotency_keys,
    metadata,
    site_control,
    wards,
)
from tests.integration.postgres_support import (  # noqa: F401  (fixtures included)
    Interleave,
    assert_all,
    count,
    eligible_tax_codes,
    engine,
    office_codes,
    org,
    pipeline,
    pre_declarations,
    rows,
    run_workers,
    site,
)

pytestmark = pytest.mark.postgres


@pytest.fixture
def source(site: Engine, pg_url: str) -> Iterator[PgChangeSource]:
    """A source on the seeded primary with a slot name of its own (slots are cluster-wide); the slot is dropped
    afterwards, or the test database could not be dropped."""
    src = PgChangeSource(pg_url, f"t_{uuid.uuid4().hex[:12]}")
    yield src
    src.drop_slot(missing_ok=True)
    src.close()


def read_all(src: PgChangeSource, after: int, limit: int = 500) -> list[Change]:
    changes: list[Change] = []
    while batch := src.read(after, limit):
        changes += batch
        after = batch[-1].position
    return changes


def transactions(changes: list[Change]) -> list[list[Change]]:
    return [list(group) for _, group in groupby(changes, key=lambda c: c.position)]


def assert_whole_transactions_in_order(changes: list[Change]) -> None:
    txns = transactions(changes)
    assert [t[0].position for t in txns] == sorted({c.position for c in changes}), "positions not increasing"
    for txn in txns:
        assert len({c.txid for c in txn}) == 1 and [c.seq for c in txn] == list(range(len(txn)))
    assert len({t[0].txid for t in txns}) == len(txns), "a transaction came out in pieces"


def pk(table: str) -> list[str]:
    return [c.name for c in metadata.tables[table].primary_key.columns]


def replay(changes: list[Change], state: dict[str, dict[tuple, dict]]) -> dict[str, dict[tuple, dict]]:
    for c in changes:
        rows_ = state.setdefault(c.table, {})
        key = tuple(c.key[n] for n in pk(c.table))
        assert key == tuple(c.key.values()) and (c.row is None or all(c.row[n] == c.key[n] for n in pk(c.table)))
        if c.op is ChangeOp.DELETE:
            rows_.pop(key, None)
        else:
            rows_[key] = c.row
    return state


def copy_of(tables: dict[str, Iterable[dict]]) -> dict[str, dict[tuple, dict]]:
    return {table: {tuple(r[n] for n in pk(table)): r for r in table_rows} for table, table_rows in tables.items()}


def checkpoint(site: Engine) -> None:
    with site.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("CHECKPOINT")


def bases(outcomes: list[Outcome]) -> set[str]:
    return {o.body["number"][:11] for o in outcomes}


# --- streaming ------------------------------------------------------------------------------------------------


def test_intake_comes_out_as_row_changes_of_one_whole_transaction(site: Engine, source: PgChangeSource) -> None:
    source.create_slot()
    began = time.time()
    outcomes = pipeline(site).process(pre_declarations(site, 20, random.Random(1), "ida"))
    assert_all(outcomes, 201)
    source.heartbeat("A")  # synchronous commit: everything before it is flushed, so decodable now

    changes = read_all(source, 0)

    assert_whole_transactions_in_order(changes)
    batch, beat = transactions(changes)
    assert [(c.table, c.op, c.key) for c in beat] == [("replication_heartbeat", ChangeOp.INSERT, {"source": "A"})]
    assert beat[0].row["counter"] == 1 and beat[0].position > batch[0].position
    tables = {c.table for c in batch}
    assert {"number_blocks", "declarations", "goods_lines", "idempotency_keys", "audit_log"} <= tables
    assert tables <= set(REPLICATED_TABLES)
    declared = [c for c in batch if c.table == "declarations"]
    assert {c.key["base"] for c in declared} == bases(outcomes)
    assert all(c.op is ChangeOp.INSERT and c.key == {"base": c.row["base"]} for c in declared)
    lines = [c for c in batch if c.table == "goods_lines"]
    assert len(lines) == count(site, goods_lines)
    assert all(set(c.key) == {"declaration_base", "line_no"} for c in lines)
    assert [c.op for c in batch if c.table == "number_blocks"][-1] is ChangeOp.UPDATE  # the block reserved
    assert all(began - 1 <= c.committed_at <= time.time() + 1 and isinstance(c.txid, int) for c in changes)
    # The rows are the committed rows, in the snapshot's JSON-ready form (same formats on both paths).
    _, copy = source.snapshot()
    copied = copy_of({t.table: t.rows for t in copy})
    for table, replayed in replay(batch, {}).items():
        assert replayed == {k: copied[table][k] for k in replayed}, table
    assert all(isinstance(c.row["quantity"], str) and Decimal(c.row["quantity"]) > 0 for c in lines)


def test_two_threads_transactions_come_out_whole_and_in_commit_order(site: Engine, source: PgChangeSource,
                                                                      pg_url: str) -> None:
    offices = office_codes(site)
    work = {w: pre_declarations(site, 60, random.Random(10 + i), f"w{w}", offices=offices[i::2])
            for i, w in enumerate("ab")}
    engines = {w: make_engine(pg_url) for w in work}
    batches: list[set[str]] = []
    start = threading.Barrier(2)
    source.create_slot()

    def worker(w: str) -> None:
        p = pipeline(engines[w])
        start.wait()
        for i in range(0, 60, 10):
            outcomes = p.process(work[w][i:i + 10])
            assert_all(outcomes, 201)
            batches.append(bases(outcomes))

    run_workers(worker, work, engines)
    source.heartbeat("A")

    changes = read_all(source, 0, limit=7)

    assert_whole_transactions_in_order(changes)
    declared = [{c.key["base"] for c in txn if c.table == "declarations"} for txn in transactions(changes)]
    declared = [d for d in declared if d]
    assert len(declared) == 12 and sorted(map(sorted, declared)) == sorted(map(sorted, batches))


def test_commit_order_not_transaction_start_order(site: Engine, source: PgChangeSource, pg_url: str) -> None:
    """Worker B's batch runs and commits inside worker A's open transaction: B comes out first though A began
    (and got its transaction id) first."""
    offices = office_codes(site)
    cmd_a, warm_a = pre_declarations(site, 2, random.Random(21), "a", offices=offices[0::2])
    cmd_b, warm_b = pre_declarations(site, 2, random.Random(22), "b", offices=offices[1::2])
    assert cmd_a.payload["enterprise_tax_code"] != cmd_b.payload["enterprise_tax_code"]  # no row lock shared
    engine_a, engine_b = make_engine(pg_url), make_engine(pg_url)
    worker_a, worker_b = pipeline(engine_a), pipeline(engine_b)
    try:
        assert_all(worker_a.process([warm_a]) + worker_b.process([warm_b]), 201)  # number blocks reserved
        source.create_slot()
        with Interleave(engine_a, "INSERT INTO goods_lines", lambda: worker_b.process([cmd_b]), site) as race:
            (answer_a,) = worker_a.process([cmd_a])
    finally:
        engine_a.dispose()
        engine_b.dispose()
    assert race.fired.is_set() and not race.b_waited_on_lock
    assert_all([answer_a, *race.b_result], 201)
    source.heartbeat("A")

    txns = transactions(read_all(source, 0))

    assert [{c.key["base"] for c in t if c.table == "declarations"} for t in txns[:2]] == [
        bases(race.b_result), bases([answer_a])]
    txn_b, txn_a = txns[0][0], txns[1][0]
    assert txn_a.txid < txn_b.txid and txn_b.position < txn_a.position


def test_read_peeks_until_acknowledged(site: Engine, source: PgChangeSource) -> None:
    source.create_slot()
    p = pipeline(site)
    for i in range(4):
        assert_all(p.process(pre_declarations(site, 5, random.Random(30 + i), f"b{i}")), 201)
    source.heartbeat("A")

    first = source.read(0, 100_000)
    assert source.read(0, 100_000) == first  # nothing consumed
    assert_whole_transactions_in_order(first)
    positions = [t[0].position for t in transactions(first)]
    assert len(positions) == 5
    one = source.read(0, 1)  # a transaction is never split, whatever the limit
    assert one == [c for c in first if c.position == positions[0]] and len(one) > 1
    assert source.read(positions[1], 100_000) == [c for c in first if c.position > positions[1]]

    source.acknowledge(positions[2])
    assert source.read(positions[2], 100_000) == [c for c in first if c.position > positions[2]]
    assert source.read(positions[2], 100_000) == [c for c in first if c.position > positions[2]]
    source.acknowledge(positions[1])  # older than the slot: nothing happens
    with pytest.raises(ReplicationError, match="past the requested"):
        source.read(positions[1], 10)  # the slot moved on: the caller would miss a transaction
    with pytest.raises(ReplicationError, match="beyond what"):
        source.acknowledge(positions[-1] + 1)
    source.acknowledge(positions[-1])
    assert source.read(positions[-1], 10) == []
    assert source.head() >= positions[-1]


def test_read_decodes_past_transactions_without_replicated_rows(site: Engine, source: PgChangeSource) -> None:
    """site_control does not replicate: its transactions decode as empty ones, which read skips, however many."""
    source.create_slot()

    def unreplicated(i: int) -> None:
        with site.begin() as conn:
            conn.execute(update(site_control).values(updated_at=float(i)))

    for i in range(40):
        unreplicated(i)
    for i in range(20):
        source.heartbeat("A", at=float(i))
        unreplicated(i)

    assert [c.row["counter"] for c in source.read(0, 1)] == [1]
    first = source.read(0, 15)  # a full window although empty transactions come first and in between
    assert [c.row["counter"] for c in first] == list(range(1, 16))
    rest = source.read(first[-1].position, 15)
    assert [c.row["counter"] for c in rest] == list(range(16, 21))  # fewer than the limit: caught up
    assert all(c.table == "replication_heartbeat" for c in first + rest)


def test_retained_wal_falls_after_acknowledge(site: Engine, source: PgChangeSource) -> None:
    source.create_slot()
    assert_all(pipeline(site).process(pre_declarations(site, 100, random.Random(4), "big")), 201)
    checkpoint(site)  # logs the running-transactions record PostgreSQL moves a slot's restart point to
    source.heartbeat("A")
    changes = read_all(source, 0)
    held = source.retained_wal_bytes()
    assert held > 100_000

    source.acknowledge(changes[-1].position)

    assert source.retained_wal_bytes() < held // 10


def test_update_delete_and_key_change_carry_the_right_keys(site: Engine, source: PgChangeSource) -> None:
    tax_code = eligible_tax_codes(site)[0]
    (ward,) = rows(site, select(wards).order_by(wards.c.code, wards.c.valid_from).limit(1))
    source.create_slot()
    with site.begin() as conn:
        conn.execute(update(enterprises).where(enterprises.c.tax_code == tax_code).values(street="1 Ly Thai To"))
    with site.begin() as conn:
        conn.execute(insert(idempotency_keys).values(principal="p", key="k1", request_hash="h", status=201,
                                                     response="{}", created_at=1.5))
    with site.begin() as conn:
        conn.execute(update(idempotency_keys).where(idempotency_keys.c.key == "k1").values(key="k2"))
    with site.begin() as conn:
        conn.execute(delete(idempotency_keys).where(idempotency_keys.c.key == "k2"))
        conn.execute(delete(wards).where(wards.c.code == ward["code"], wards.c.valid_from == ward["valid_from"]))
    source.heartbeat("A")

    changes = read_all(source, 0)[:-1]

    assert [(c.table, c.op, c.key) for c in changes] == [
        ("enterprises", ChangeOp.UPDATE, {"tax_code": tax_code}),
        ("idempotency_keys", ChangeOp.INSERT, {"principal": "p", "key": "k1"}),
        ("idempotency_keys", ChangeOp.DELETE, {"principal": "p", "key": "k1"}),  # a key change: delete + insert
        ("idempotency_keys", ChangeOp.INSERT, {"principal": "p", "key": "k2"}),
        ("idempotency_keys", ChangeOp.DELETE, {"principal": "p", "key": "k2"}),
        ("wards", ChangeOp.DELETE, {"code": ward["code"], "valid_from": ward["valid_from"].isoformat()}),
    ]
    assert_whole_transactions_in_order(changes)
    assert [len(t) for t in transactions(changes)] == [1, 1, 2, 2]
    (stored,) = rows(site, select(enterprises).where(enterprises.c.tax_code == tax_code))
    assert changes[0].row == {**stored, "address_valid_from": stored["address_valid_from"].isoformat()}
    assert changes[3].row == {"principal": "p", "key": "k2", "request_hash": "h", "status": 201, "response": "{}",
                              "created_at": 1.5}
    assert all(c.row is None for c in changes if c.op is ChangeOp.DELETE)


# --- snapshot -------------------------------------------------------------------------------------------------


def test_snapshot_then_stream_from_its_start_converges(site: Engine, source: PgChangeSource, pg_url: str) -> None:
    p = pipeline(site)
    before = p.process(pre_declarations(site, 10, random.Random(5), "before"))
    assert not source.slot_exists()

    start, tables = source.snapshot()

    assert source.slot_exists() and [t.table for t in tables] == list(REPLICATED_TABLES)
    # Committed while the copy's transaction is open: not in the copy, so the stream must deliver it.
    during = p.process(pre_declarations(site, 5, random.Random(6), "during"))
    assert_all(before + during, 201)
    copied = {t.table: list(t.rows) for t in tables}
    json.dumps(copied)  # JSON-ready
    assert {r["base"] for r in copied["declarations"]} == bases(before)
    for table in ("enterprises", "wards", "officers", "customs_offices"):
        assert len(copied[table]) == count(site, metadata.tables[table]), table
    for table, table_rows in copied.items():
        keys = [tuple(r[n] for n in pk(table)) for r in table_rows]
        assert keys == sorted(keys), f"{table} not in primary-key order"
    line = copied["goods_lines"][0]
    (stored,) = rows(site, select(goods_lines).where(goods_lines.c.declaration_base == line["declaration_base"],
                                                     goods_lines.c.line_no == line["line_no"]))
    assert line["quantity"] == format(stored["quantity"], "f") and line["unit_price"] == format(stored["unit_price"], "f")
    assert isinstance(copied["declarations"][0]["created_at"], float)
    assert isinstance(copied["officers"][0]["active"], bool)
    assert copied["enterprises"][0]["address_valid_from"] == str(rows(site, select(enterprises).order_by(
        enterprises.c.tax_code).limit(1))[0]["address_valid_from"])

    with site.begin() as conn:  # and a late update and delete of copied rows
        conn.execute(update(declarations).where(declarations.c.base == min(bases(before))).values(paid_vnd=7))
        conn.execute(delete(idempotency_keys).where(idempotency_keys.c.key == "before-0"))
    source.heartbeat("A")
    changes = read_all(source, start)

    assert changes and all(c.position > start for c in changes)
    assert bases(during) <= {c.key["base"] for c in changes if c.table == "declarations"}
    with PgChangeSource(pg_url, source.slot) as fresh:
        _, now = fresh.snapshot()  # the slot exists: reused
        assert replay(changes, copy_of(copied)) == copy_of({t.table: t.rows for t in now})


def test_snapshot_streams_rows_through_a_server_side_cursor(site: Engine, source: PgChangeSource) -> None:
    _, tables = source.snapshot()
    (ent,) = [t for t in tables if t.table == "enterprises"]
    assert next(ent.rows)["tax_code"]
    idle = ("SELECT query FROM pg_stat_activity WHERE datname = current_database() "
            "AND state = 'idle in transaction'")
    with site.connect() as conn:  # one transaction holds the copy, fetching the table in batches
        assert [q.split()[0] for q in conn.execute(text(idle)).scalars()] == ["FETCH"]
    for t in tables:
        for _ in t.rows:
            pass
    with site.connect() as conn:  # all consumed: the copy's transaction ended
        assert conn.execute(text(idle)).all() == []


# --- slot life cycle and errors -------------------------------------------------------------------------------


def test_slot_life_cycle(site: Engine, source: PgChangeSource) -> None:
    assert not source.slot_exists()
    with pytest.raises(ReplicationError, match="does not exist"):
        source.read(0, 10)
    position = source.create_slot()
    assert source.slot_exists() and 0 < position <= source.head()
    with pytest.raises(ReplicationError, match="already exists"):
        source.create_slot()
    assert source.create_slot(exists_ok=True) == position
    with site.connect() as conn:
        assert conn.execute(text("SELECT plugin FROM pg_replication_slots WHERE slot_name = :s"),
                            {"s": source.slot}).scalar() == "wal2json"

    source.drop_slot()

    assert not source.slot_exists()
    with site.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM pg_replication_slots WHERE slot_name = :s"),
                            {"s": source.slot}).scalar() == 0
    with pytest.raises(ReplicationError, match="does not exist"):
        source.drop_slot()
    source.drop_slot(missing_ok=True)


def test_unreachable_server_is_transient() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nobody listens once the socket is closed
    src = PgChangeSource(f"postgresql+psycopg://postgres@127.0.0.1:{port}/nowhere", "s")
    try:
        for call in (lambda: src.read(0, 10), src.head, lambda: src.acknowledge(0), src.slot_exists):
            with pytest.raises(SourceUnavailable, match="127.0.0.1"):
                call()
    finally:
        src.close()


def test_lsn_text_and_integers() -> None:
    assert lsn_to_int("16/B374D848") == (0x16 << 32) | 0xB374D848
    assert int_to_lsn(lsn_to_int("16/B374D848")) == "16/B374D848"
    assert lsn_to_int("0/0") == 0
    with pytest.raises(ValueError):
        PgChangeSource("postgresql+psycopg://x@127.0.0.1:1/x", "Bad-Name")
