"""ChangeSource for PostgreSQL: logical decoding with wal2json (format-version 2) through the SQL interface.

The slot is the source's memory: `read` only peeks (decoding from the slot's position each time), and the slot moves
forward only in `acknowledge`. PostgreSQL keeps every WAL segment the slot still needs, so a slot nobody consumes
makes the primary's disk fill up (`retained_wal_bytes` says how much it holds back).

Positions are commit LSNs as integers: every change of a transaction carries the end LSN of its commit record
(`position`) and its index in the transaction (`seq`). Commit LSNs grow strictly in commit order, so positions order
transactions the way the primary committed them.

Decoding sees only WAL that is flushed: with synchronous_commit=off a commit shows up after the WAL writer has
flushed it (up to ~3 x wal_writer_delay). `heartbeat` commits with synchronous_commit=on, which flushes everything
before it too.
"""
from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from datetime import time as dtime
from decimal import Decimal
from typing import Self

from sqlalchemy import Connection, Float, Numeric, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from replication.changes import REPLICATED_TABLES, Change, ChangeOp, SnapshotTable
from replication.errors import ReplicationError, SourceUnavailable
from standby.store.engine import make_engine
from standby.store.schema import metadata as schema_metadata

PLUGIN = "wal2json"
# Serialization failure, deadlock, admin/crash shutdown, cannot connect now, too many connections, slot in use.
TRANSIENT_SQLSTATES = {"40001", "40P01", "57P01", "57P02", "57P03", "53300", "55006"}
SNAPSHOT_BATCH = 2000
SLOT_NAME = re.compile(r"[a-z0-9_]{1,63}")

SLOT = ("SELECT plugin, database, confirmed_flush_lsn::text AS confirmed, "
        "pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn) AS retained FROM pg_replication_slots "
        "WHERE slot_name = CAST(:slot AS name)")
PEEK = ("SELECT lsn::text, data FROM pg_logical_slot_peek_changes(CAST(:slot AS name), NULL, CAST(:n AS integer), "
        "'format-version', '2', 'include-xids', '1', 'include-timestamp', '1', 'include-pk', '1', 'include-types', '0', "
        "'add-tables', CAST(:tables AS text))")
# The commit position of the newest transaction with replicated rows, decoded up to :upto (the last C after the
# last I/U/D), computed in the server so no row data crosses the wire. NULL when no such transaction is pending.
LAST_COMMIT = ("WITH d AS (SELECT c.n, c.lsn, CAST(c.data AS json)->>'action' AS action "
               "FROM pg_logical_slot_peek_changes(CAST(:slot AS name), CAST(:upto AS pg_lsn), NULL, "
               "'format-version', '2', 'include-types', '0', 'add-tables', CAST(:tables AS text)) "
               "WITH ORDINALITY AS c(lsn, xid, data, n)) "
               "SELECT (SELECT lsn::text FROM d WHERE action = 'C' AND n > (SELECT max(n) FROM d "
               "WHERE action IN ('I', 'U', 'D')) ORDER BY n LIMIT 1)")
PRIMARY_KEYS = ("SELECT c.relname::text, a.attname::text FROM pg_index i "
                "JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
                "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
                "WHERE i.indisprimary AND n.nspname = :schema AND c.relname::text = ANY(CAST(:tables AS text[])) "
                "ORDER BY c.relname, array_position(CAST(i.indkey AS int2[]), a.attnum)")


def lsn_to_int(lsn: str) -> int:
    """'16/B374D848' -> (0x16 << 32) | 0xB374D848."""
    hi, lo = lsn.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def int_to_lsn(position: int) -> str:
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


class PgChangeSource:
    """The ChangeSource contract (replication.changes) over a wal2json logical replication slot named `slot` in the
    database at `url`. The slot is created by `create_slot` or `snapshot` and dropped by `drop_slot`, never
    implicitly. Transient database errors raise SourceUnavailable; anything else propagates. Not thread-safe:
    one reader per source."""

    # Measured (bench replication, 275,726 changes): reading the next window during the apply made catch-up slower
    # (9,276 vs 14,634 changes/s): decoding runs on the server and competes with the apply workers for the cores.
    read_ahead = False

    def __init__(self, url: str, slot: str, tables: tuple[str, ...] = REPLICATED_TABLES, *, schema: str = "public"):
        if not SLOT_NAME.fullmatch(slot):
            raise ValueError(f"slot name {slot!r}: PostgreSQL allows 1-63 characters of a-z, 0-9 and _")
        self.slot, self.tables, self.schema = slot, tuple(tables), schema
        self.where = make_url(url).render_as_string(hide_password=True)
        self.engine = make_engine(url, pool_size=2)
        event.listen(self.engine, "connect", _session_settings)
        self._auto = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self._add_tables = ",".join(f"{_w2j_escape(schema)}.{_w2j_escape(t)}" for t in self.tables)
        self._ceiling = 0  # highest position delivered here or declared held by the caller (`after`)
        self._snapshot_conns: list[Connection] = []

    # --- the slot ------------------------------------------------------------------------------------------------

    def slot_exists(self) -> bool:
        with self._guard("look up the slot"), self._auto.connect() as conn:
            return conn.execute(text(SLOT), {"slot": self.slot}).first() is not None

    def create_slot(self, exists_ok: bool = False) -> int:
        """Create the slot; return its start position (changes committed after it will be delivered). An existing
        slot is an error unless `exists_ok`, and then it must be a wal2json slot of this database."""
        with self._guard("create the slot"), self._auto.connect() as conn:
            row = conn.execute(text(SLOT), {"slot": self.slot}).first()
            if row is None:
                try:
                    lsn = conn.execute(text("SELECT lsn::text FROM pg_create_logical_replication_slot("
                                            "CAST(:slot AS name), :plugin)"), {"slot": self.slot, "plugin": PLUGIN})
                    return lsn_to_int(lsn.scalar_one())
                except DBAPIError as exc:  # 58P01: no plugin; 55000: wal_level; 42710: created meanwhile
                    if _sqlstate(exc) in ("58P01", "55000"):
                        raise ReplicationError(f"cannot create slot {self.slot!r} on {self.where}: {exc.orig} (needs "
                                               f"wal_level=logical and postgresql-<version>-wal2json)") from exc
                    if _sqlstate(exc) != "42710":
                        raise
                    row = conn.execute(text(SLOT), {"slot": self.slot}).first()
            if not exists_ok:
                raise ReplicationError(f"replication slot {self.slot!r} already exists on {self.where}; drop it "
                                       f"first (it may belong to another stream) or pass exists_ok=True")
            database = conn.execute(text("SELECT current_database()")).scalar_one()
            if (row.plugin, row.database) != (PLUGIN, database):
                raise ReplicationError(f"replication slot {self.slot!r} exists but is a {row.plugin} slot of "
                                       f"database {row.database!r}, not a {PLUGIN} slot of {database!r}")
            return lsn_to_int(row.confirmed)

    def drop_slot(self, missing_ok: bool = False) -> None:
        """Drop the slot and free the WAL it holds. A missing slot is an error unless `missing_ok`."""
        if missing_ok and not self.slot_exists():
            return
        with self._guard("drop the slot"), self._auto.connect() as conn:
            conn.execute(text("SELECT pg_drop_replication_slot(CAST(:slot AS name))"), {"slot": self.slot})

    def retained_wal_bytes(self) -> int:
        """Bytes of WAL the slot keeps on the primary's disk (current WAL position minus the slot's restart LSN).
        It falls after `acknowledge` once PostgreSQL has moved the restart LSN (it does so at running-transaction
        records, logged at least every checkpoint and every 15 s by the background writer when busy)."""
        with self._guard("measure retained WAL"), self._auto.connect() as conn:
            retained = self._slot(conn).retained
        if retained is None:  # restart_lsn gone: the slot exceeded max_slot_wal_keep_size and was invalidated
            raise ReplicationError(f"replication slot {self.slot!r} was invalidated; drop it and take a snapshot")
        return int(retained)

    def heartbeat(self, source_id: str, at: float | None = None) -> int:
        """Upsert this source's row of replication_heartbeat (at = now, counter + 1) and return the counter. The
        row replicates like any other, so the standby can tell its lag in seconds even when nothing else changes.
        Commits with synchronous_commit=on so the WAL up to it is flushed, hence decodable, at once."""
        target = f"{_quote(self.schema)}.replication_heartbeat"
        with self._guard("write the heartbeat"), self.engine.begin() as conn:
            conn.exec_driver_sql("SET LOCAL synchronous_commit TO on")
            return conn.execute(text(
                f"INSERT INTO {target} (source, at, counter) VALUES (:source, :at, 1) ON CONFLICT (source) "
                f"DO UPDATE SET at = EXCLUDED.at, counter = {target}.counter + 1 RETURNING counter"),
                {"source": source_id, "at": time.time() if at is None else at}).scalar_one()

    # --- the contract ----------------------------------------------------------------------------------------------

    def read(self, after: int, limit: int) -> list[Change]:
        """Whole committed transactions with position > `after`, in commit order, until at least `limit` changes
        (a transaction is never split, so the answer can exceed `limit`); fewer than `limit` only when every
        flushed commit was decoded, [] when there is nothing newer. Only peeks: the same arguments give the same
        changes until `acknowledge`. A slot already moved past `after` (0 < after < its position) means changes
        the caller never got were freed: ReplicationError."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._ceiling = max(self._ceiling, after)
        budget = 3 * limit + 64  # rows, counting each transaction's B and C
        while True:
            with self._guard("read changes"), self._auto.connect() as conn:
                confirmed = lsn_to_int(self._slot(conn).confirmed)
                if 0 < after < confirmed:
                    raise ReplicationError(f"slot {self.slot!r} is at {int_to_lsn(confirmed)}, past the requested "
                                           f"{int_to_lsn(after)}: the changes in between are gone; take a snapshot")
                rows = conn.execute(text(PEEK), {"slot": self.slot, "n": budget, "tables": self._add_tables}).all()
            changes: list[Change] = []
            for position, txn in _transactions(rows, self.tables):
                if position > after:
                    changes.extend(txn)
                    if len(changes) >= limit:
                        break
            if len(changes) >= limit or len(rows) < budget:  # a full window, or all flushed WAL decoded
                if changes:
                    self._ceiling = max(self._ceiling, changes[-1].position)
                return changes
            budget *= 4  # skipped (<= after) or empty transactions filled the budget: decode further

    def acknowledge(self, position: int) -> None:
        """Advance the slot to `position` (a commit position from `read`, or the snapshot's start): WAL up to it may
        be freed. Refuses positions beyond what this source delivered; an older position than the slot's does
        nothing."""
        if position > self._ceiling:
            raise ReplicationError(f"acknowledge({position}) is beyond what slot {self.slot!r} delivered "
                                   f"({self._ceiling}); never acknowledge what was not applied")
        with self._guard("acknowledge"), self._auto.connect() as conn:
            if lsn_to_int(self._slot(conn).confirmed) < position:
                conn.execute(text("SELECT pg_replication_slot_advance(CAST(:slot AS name), CAST(:lsn AS pg_lsn))"),
                             {"slot": self.slot, "lsn": int_to_lsn(position)})

    def snapshot(self) -> tuple[int, list[SnapshotTable]]:
        """Ensure the slot exists, take its position as the start, then copy every replicated table in one
        REPEATABLE READ transaction, rows in primary-key order, streamed in batches. Rows committed between the
        start and the copy are in the copy and are delivered again by `read(start, ...)` (idempotent replay).
        Consume the tables one after another; the transaction ends when all are exhausted or at `close()`."""
        self.create_slot(exists_ok=True)
        with self._guard("take a snapshot"):
            with self._auto.connect() as conn:
                start = lsn_to_int(self._slot(conn).confirmed)
            conn = self.engine.connect().execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            self._snapshot_conns.append(conn)
            try:  # the first statement fixes the transaction's snapshot, after the slot's start
                rows = conn.execute(text(PRIMARY_KEYS), {"schema": self.schema, "tables": list(self.tables)}).all()
            except BaseException:
                self._end_snapshot(conn)
                raise
        keys: dict[str, list[str]] = {}
        for table, column in rows:
            keys.setdefault(table, []).append(column)
        missing = [t for t in self.tables if t not in keys]
        if missing:
            self._end_snapshot(conn)
            raise ReplicationError(f"replicated tables missing or without a primary key on {self.where}: {missing}")
        self._ceiling = max(self._ceiling, start)
        remaining = set(self.tables)

        def table_rows(table: str) -> Iterator[dict]:
            sql = (f"SELECT * FROM {_quote(self.schema)}.{_quote(table)} "
                   f"ORDER BY {', '.join(_quote(c) for c in keys[table])}")
            try:
                with self._guard(f"copy {table}"):
                    result = conn.exec_driver_sql(sql, execution_options={"stream_results": True,
                                                                          "yield_per": SNAPSHOT_BATCH})
                    names = list(result.keys())
                    for row in result:
                        yield dict(zip(names, map(_json_ready, row), strict=True))
            finally:
                remaining.discard(table)
                if not remaining:
                    self._end_snapshot(conn)

        return start, [SnapshotTable(t, table_rows(t)) for t in self.tables]

    def committed(self) -> int:
        """The commit position (as `read` numbers it) of the newest committed transaction with replicated rows; the
        slot's confirmed position when none is pending (everything acknowledged, hence applied).

        A synchronous commit of a transaction that writes only a logical message first flushes the WAL of every
        commit before the call (with synchronous_commit=off they would not be decodable yet), then the slot is peeked up to the current WAL
        position. Cheap once caught up: the peek decodes only what the slot has not confirmed. It changes nothing in
        this object, so it may be called beside the thread that reads (the slot may be busy for a moment:
        SourceUnavailable, which replication.progress.committed_position retries)."""
        with self._guard("find the last committed position"):
            with self.engine.begin() as conn:
                # The commit must wait for the WAL flush, and PostgreSQL flushes at commit only for a transaction
                # that wrote WAL of its own before its commit record (an xid alone commits asynchronously): a
                # transactional logical message (which `read` ignores) is such a write.
                conn.exec_driver_sql("SET LOCAL synchronous_commit TO on")
                conn.execute(text("SELECT pg_logical_emit_message(true, 'standby-flush', '')"))
            with self._auto.connect() as conn:
                confirmed = lsn_to_int(self._slot(conn).confirmed)
                upto = conn.execute(text("SELECT pg_current_wal_lsn()::text")).scalar_one()
                last = conn.execute(text(LAST_COMMIT), {"slot": self.slot, "upto": upto,
                                                        "tables": self._add_tables}).scalar()
        return lsn_to_int(last) if last is not None else confirmed

    def head(self) -> int:
        """The primary's current WAL write position, for lag in positions only. Every commit so far is at or below
        it; it also counts WAL of non-replicated tables, so a standby can be fully caught up and stay below it
        until another commit: ask `committed` (replication.progress) whether a standby has caught up."""
        with self._guard("read the WAL position"), self._auto.connect() as conn:
            return lsn_to_int(conn.execute(text("SELECT pg_current_wal_lsn()::text")).scalar_one())

    def close(self) -> None:
        for conn in list(self._snapshot_conns):
            self._end_snapshot(conn)
        self.engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- helpers -----------------------------------------------------------------------------------------------

    def _slot(self, conn: Connection):
        row = conn.execute(text(SLOT), {"slot": self.slot}).first()
        if row is None:
            raise ReplicationError(f"replication slot {self.slot!r} does not exist on {self.where}; create it "
                                   f"(create_slot or snapshot) first")
        return row

    def _end_snapshot(self, conn: Connection) -> None:
        if conn in self._snapshot_conns:
            self._snapshot_conns.remove(conn)
            try:
                conn.close()  # rolls back the read-only transaction
            except DBAPIError:
                pass  # a broken connection has nothing left to end

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except DBAPIError as exc:
            if _transient(exc):
                raise SourceUnavailable(f"cannot {what} at {self.where}: {exc.orig}") from exc
            if _sqlstate(exc) == "42704" and "replication slot" in str(exc.orig):
                raise ReplicationError(f"replication slot {self.slot!r} does not exist on {self.where}") from exc
            raise


def _transactions(rows, tables: tuple[str, ...]) -> Iterator[tuple[int, list[Change]]]:
    """(commit position, changes) per committed transaction in wal2json v2 output (B, I/U/D..., C); transactions
    touching only other tables come out empty. Logical messages (M) are ignored; a TRUNCATE (T) cannot be carried
    as row changes and raises."""
    messages: list[dict] = []
    for lsn, data in rows:
        msg = json.loads(data, parse_float=Decimal)  # numeric values are bare JSON numbers: keep every digit
        action = msg["action"]
        if action == "B":
            messages = []
        elif action in ("I", "U", "D"):
            messages.append(msg)
        elif action == "C":
            position = lsn_to_int(lsn)
            committed_at = datetime.fromisoformat(msg["timestamp"]).timestamp() if msg.get("timestamp") else None
            changes: list[Change] = []
            for m in messages:
                if m["table"] in tables:
                    for op, key, row in _row_changes(m):
                        changes.append(Change(position, m["table"], op, key, row, m.get("xid"), committed_at,
                                              len(changes)))
            yield position, changes
            messages = []
        elif action == "T":
            raise ReplicationError(f"TRUNCATE of {msg.get('schema')}.{msg.get('table')} at {lsn} cannot be "
                                   f"replicated as row changes; take a new snapshot")


def _row_changes(msg: dict) -> list[tuple[ChangeOp, dict, dict | None]]:
    """One wal2json I/U/D message as changes. An update that changes the primary key is a delete of the old key
    and an insert of the new one (as the SQLite change capture logs it)."""
    pk = [p["name"] for p in msg.get("pk", ())]
    action = msg["action"]
    convert = _table_converters(msg["table"])
    if action != "I":  # inserts carry no old identity
        identity = {c["name"]: _converted(c, convert) for c in msg.get("identity", ())}
        old_key = {n: identity[n] for n in pk} if pk and all(n in identity for n in pk) else identity
        if action == "D":
            return [(ChangeOp.DELETE, old_key, None)]
    row = {c["name"]: _converted(c, convert) for c in msg["columns"]}
    key = {n: row[n] for n in pk}
    if action == "I":
        return [(ChangeOp.INSERT, key, row)]
    if old_key and old_key != key:
        return [(ChangeOp.DELETE, old_key, None), (ChangeOp.INSERT, key, row)]
    return [(ChangeOp.UPDATE, key, row)]


def _converted(column: dict, convert: dict):
    value, to = column["value"], convert.get(column["name"])
    return value if to is None or value is None else to(value)


@functools.lru_cache(maxsize=64)
def _table_converters(table: str) -> dict:
    """Per column, how wal2json's JSON value becomes what `_json_ready` gives for the same column, from our own
    schema (so wal2json need not send type names with every row). Only numbers need it: numeric stays exact as a
    plain str, double precision becomes a float; text, integers, booleans and dates pass as they come."""
    out = {}
    for column in schema_metadata.tables[table].columns:
        if isinstance(column.type, Float):
            out[column.name] = float
        elif isinstance(column.type, Numeric):
            out[column.name] = _plain_decimal
    return out


def _plain_decimal(value) -> str:
    return format(Decimal(value), "f")


def _json_ready(value):
    """A value read by psycopg as JSON-ready: Decimal as a plain str, dates and times as ISO str."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, (datetime, date, dtime)):
        return value.isoformat()
    if isinstance(value, (bytes, memoryview)):
        return bytes(value).hex()
    return str(value)


def _session_settings(dbapi_conn, _record) -> None:
    # Decoding runs in our backend and formats values with our session's settings: pin them to what we parse.
    with dbapi_conn.cursor() as cur:
        cur.execute("SET DateStyle TO 'ISO, YMD'; SET TimeZone TO 'UTC'; SET extra_float_digits TO 1")
    dbapi_conn.commit()


def _sqlstate(exc: DBAPIError) -> str | None:
    return getattr(exc.orig, "sqlstate", None)


def _transient(exc: DBAPIError) -> bool:
    state = _sqlstate(exc)
    if exc.connection_invalidated or (state is None and isinstance(exc, OperationalError)):
        return True  # refused, reset, timed out before the server said anything
    return state is not None and (state.startswith("08") or state in TRANSIENT_SQLSTATES)


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _w2j_escape(name: str) -> str:
    # wal2json's add-tables list: space, quote, comma, period and asterisk are escaped with a backslash.
    return re.sub(r"([ ',.*\\])", r"\\\1", name)
