"""ChangeSource for PostgreSQL: logical decoding with wal2json, read over the streaming replication protocol.

The slot is the source's memory: `read` takes the slot's change stream (replication.pg_stream, wal2json format 1,
one message per transaction) from the slot's confirmed position, and the slot moves forward only in `acknowledge`,
which reports the standby's position to the server. PostgreSQL keeps every WAL segment the slot still needs, so a
slot nobody consumes makes the primary's disk fill up (`retained_wal_bytes` says how much it holds back).

Positions are commit LSNs as integers: every change of a transaction carries the end LSN of its commit record
(`position`) and its index in the transaction (`seq`). Commit LSNs grow strictly in commit order, so positions order
transactions the way the primary committed them.

Decoding sees only WAL that is flushed: with synchronous_commit=off a commit shows up after the WAL writer has
flushed it (up to ~3 x wal_writer_delay). `heartbeat` commits with synchronous_commit=on, which flushes everything
before it too.

While a source streams, its walsender holds the slot (pg_replication_slots.active): the slot cannot be peeked or
advanced through SQL meanwhile, so `committed` peeks a temporary copy of it, and `drop_slot` ends the walsender
first. A stream takes one of the server's max_wal_senders and, while `committed` runs, one more replication slot.
"""
from __future__ import annotations

import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from datetime import time as dtime
from decimal import Decimal
from typing import Self

from sqlalchemy import Connection, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from tenacity import Retrying, retry_if_exception, retry_if_result, stop_after_delay, wait_exponential

from replication.changes import REPLICATED_TABLES, Change, SnapshotTable
from replication.errors import ReplicationError, SourceUnavailable
from replication.pg_stream import StreamError, WalStream, conninfo
from replication.pg_wal2json import (PLUGIN, RowInsert, add_tables, built, int_to_lsn, lsn_to_int, stream_options,
                                     transaction_items)
from standby.store.engine import make_engine

__all__ = ["PgChangeSource", "int_to_lsn", "lsn_to_int"]

# Serialization failure, deadlock, admin/crash shutdown, cannot connect now, too many connections, slot in use.
TRANSIENT_SQLSTATES = {"40001", "40P01", "57P01", "57P02", "57P03", "53300", "55006"}
SLOT_IN_USE = "55006"
SNAPSHOT_BATCH = 2000
SLOT_NAME = re.compile(r"[a-z0-9_]{1,63}")
# How long a start waits for the slot to be released by an earlier walsender (one that has just been closed, or
# whose client died), and how long `acknowledge` waits for the server to show the confirmed position.
SLOT_RELEASE_S = 10.0
CONFIRM_S = 10.0
# While a read waits for the stream to reach the flushed WAL: how often it asks the server where it is, and after
# how long without a word from the server the stream counts as cut (a partition leaves no reset to notice).
ASK_EVERY_S = 0.01
SILENT_S = 30.0

SLOT = ("SELECT plugin, database, active, confirmed_flush_lsn::text AS confirmed, "
        "pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn) AS retained FROM pg_replication_slots "
        "WHERE slot_name = CAST(:slot AS name)")
# The commit position of the newest transaction with replicated rows, decoded up to :upto (the last C after the
# last I/U/D), computed in the server so no row data crosses the wire. NULL when no such transaction is pending.
LAST_COMMIT = ("WITH d AS (SELECT c.n, c.lsn, CAST(c.data AS json)->>'action' AS action "
               "FROM pg_logical_slot_peek_changes(CAST(:slot AS name), CAST(:upto AS pg_lsn), NULL, "
               "'format-version', '2', 'include-types', '0', 'add-tables', CAST(:tables AS text)) "
               "WITH ORDINALITY AS c(lsn, xid, data, n)) "
               "SELECT (SELECT lsn::text FROM d WHERE action = 'C' AND n > (SELECT max(n) FROM d "
               "WHERE action IN ('I', 'U', 'D')) ORDER BY n LIMIT 1)")
# A temporary copy of the slot at its confirmed position, for `committed` to peek while the stream holds the slot.
COPY_SLOT = "SELECT pg_copy_logical_replication_slot(CAST(:slot AS name), CAST(:copy AS name), true)"
PRIMARY_KEYS = ("SELECT c.relname::text, a.attname::text FROM pg_index i "
                "JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
                "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
                "WHERE i.indisprimary AND n.nspname = :schema AND c.relname::text = ANY(CAST(:tables AS text[])) "
                "ORDER BY c.relname, array_position(CAST(i.indkey AS int2[]), a.attnum)")


class PgChangeSource:
    """The ChangeSource contract (replication.changes) over a wal2json logical replication slot named `slot` in the
    database at `url`. The slot is created by `create_slot` or `snapshot` and dropped by `drop_slot`, never
    implicitly. Transient database errors, and a stream that breaks, raise SourceUnavailable (the next `read`
    starts the stream again from the slot's confirmed position); anything else propagates. One reader at a time
    (reads are serialised); `acknowledge`, `committed`, `head` and `retained_wal_bytes` may run beside a read."""

    # Measured on 2 cores (BENCHMARKS.md, 2026-11-30; 109,532 changes): reading the next window while the apply
    # workers apply this one made the step slower, 14,631 against 16,767 changes/s without: parsing in the driver and
    # decoding in the walsender compete with the apply workers for the same cores. `read` works either way.
    read_ahead = False

    def __init__(self, url: str, slot: str, tables: tuple[str, ...] = REPLICATED_TABLES, *, schema: str = "public"):
        if not SLOT_NAME.fullmatch(slot):
            raise ValueError(f"slot name {slot!r}: PostgreSQL allows 1-63 characters of a-z, 0-9 and _")
        self.slot, self.tables, self.schema = slot, tuple(tables), schema
        parsed = make_url(url)
        self.where = parsed.render_as_string(hide_password=True)
        self._conninfo = conninfo(parsed.host, parsed.port, parsed.username, parsed.password, parsed.database,
                                  {k: v for k, v in parsed.query.items() if isinstance(v, str)})
        self.engine = make_engine(url, pool_size=3)
        event.listen(self.engine, "connect", _session_settings)
        self._auto = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self._add_tables = add_tables(schema, self.tables)
        self._table_set = frozenset(self.tables)
        self._ceiling = 0  # highest position delivered here or declared held by the caller (`after`)
        self._snapshot_conns: list[Connection] = []
        self._reading = threading.Lock()
        self._stream: WalStream | None = None
        self._floor = 0  # the `after` of the last read: the stream and `_pending` hold what follows it
        # received transactions > _floor, in commit order
        self._pending: deque[tuple[int, list[Change | RowInsert]]] = deque()
        self._pending_changes = 0

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
        """Drop the slot and free the WAL it holds; a walsender streaming it (this source's or another process's)
        is ended first. A missing slot is an error unless `missing_ok`."""
        self._end_stream()
        if missing_ok and not self.slot_exists():
            return
        for attempt in self._while_slot_busy():
            with attempt, self._guard("drop the slot"), self._auto.connect() as conn:
                conn.execute(text("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                                  "WHERE slot_name = CAST(:slot AS name) AND active_pid IS NOT NULL"),
                             {"slot": self.slot})
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
        """`read_window`'s changes, each a Change."""
        return [built(item) for item in self.read_window(after, limit)]

    def read_window(self, after: int, limit: int) -> list[Change | RowInsert]:
        """Whole committed transactions with position > `after`, in commit order, until at least `limit` changes
        (a transaction is never split, so the answer can exceed `limit`); fewer than `limit` only when the stream
        has reached the WAL flushed when the read began, [] when there is nothing newer. Reads consume nothing: the
        same arguments give the same changes until `acknowledge` (an `after` below the previous read's starts the
        stream again from the slot). A slot already moved past `after` (0 < after < its position) means changes
        the caller never got were freed: ReplicationError. Inserts come as RowInserts (the replicator hands them to
        the apply workers, which build them: replication.wire); `read` gives every item as a Change."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        with self._reading, self._guard("read changes"):
            self._ceiling = max(self._ceiling, after)
            self._fill(after, limit)
            changes: list[Change | RowInsert] = []
            for _, txn in self._pending:
                if len(changes) >= limit:
                    break
                changes.extend(txn)
            if changes:
                self._ceiling = max(self._ceiling, changes[-1].position)
            return changes

    def acknowledge(self, position: int) -> None:
        """Move the slot to `position` (a commit position from `read`, or the snapshot's start): WAL up to it may
        be freed. While streaming, the position is reported to the walsender and this returns once the slot shows
        it; otherwise the slot is advanced through SQL. Refuses positions beyond what this source delivered; an
        older position than the slot's does nothing."""
        if position > self._ceiling:
            raise ReplicationError(f"acknowledge({position}) is beyond what slot {self.slot!r} delivered "
                                   f"({self._ceiling}); never acknowledge what was not applied")
        stream = self._stream
        if stream is not None:
            try:
                stream.confirm(position)
                self._await_confirmed(position)
            except StreamError as exc:
                raise self._stream_failure(exc, "acknowledge") from exc
            except SourceUnavailable:
                stream.broken = True  # the walsender is gone: the next read starts the stream again
                raise
            # What the standby holds is not read again: free it now rather than at the next read, while the
            # collector is still held off (standby.heap). A read under way (read-ahead) frees it itself.
            if self._reading.acquire(blocking=False):
                try:
                    self._drop_pending(position)
                finally:
                    self._reading.release()
            return
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
        commit before the call (with synchronous_commit=off they would not be decodable yet), then a temporary copy
        of the slot (the stream holds the slot itself) is peeked up to the current WAL position and dropped. Cheap
        once caught up: the peek decodes only what the slot has not confirmed. It changes nothing in this object,
        so it may be called beside the thread that reads."""
        copy = f"{self.slot[:40]}_peek_{uuid.uuid4().hex[:12]}"
        with self._guard("find the last committed position"):
            with self.engine.begin() as conn:
                # The commit must wait for the WAL flush, and PostgreSQL flushes at commit only for a transaction
                # that wrote WAL of its own before its commit record (an xid alone commits asynchronously): a
                # transactional logical message (which `read` ignores) is such a write.
                conn.exec_driver_sql("SET LOCAL synchronous_commit TO on")
                conn.execute(text("SELECT pg_logical_emit_message(true, 'standby-flush', '')"))
            with self._auto.connect() as conn:
                self._slot(conn)  # a missing slot: ReplicationError naming it
                conn.execute(text(COPY_SLOT), {"slot": self.slot, "copy": copy})
                try:
                    confirmed = lsn_to_int(conn.execute(text(SLOT), {"slot": copy}).one().confirmed)
                    upto = conn.execute(text("SELECT pg_current_wal_lsn()::text")).scalar_one()
                    last = conn.execute(text(LAST_COMMIT), {"slot": copy, "upto": upto,
                                                            "tables": self._add_tables}).scalar()
                finally:  # a temporary slot lives as long as its session, and pooled sessions live long
                    try:
                        conn.execute(text("SELECT pg_drop_replication_slot(CAST(:slot AS name))"), {"slot": copy})
                    except DBAPIError:
                        conn.invalidate()  # ends the session, and the temporary slot with it
        return lsn_to_int(last) if last is not None else confirmed

    def head(self) -> int:
        """The primary's current WAL write position, for lag in positions only. Every commit so far is at or below
        it; it also counts WAL of non-replicated tables, so a standby can be fully caught up and stay below it
        until another commit: ask `committed` (replication.progress) whether a standby has caught up."""
        with self._guard("read the WAL position"), self._auto.connect() as conn:
            return lsn_to_int(conn.execute(text("SELECT pg_current_wal_lsn()::text")).scalar_one())

    def close(self) -> None:
        self._end_stream()
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

    # --- the stream ------------------------------------------------------------------------------------------

    def _fill(self, after: int, limit: int) -> None:
        """`_pending` holds the transactions after `after`, at least `limit` changes of them unless the stream is
        caught up. A stream that broke since the last read (the server timed it out while the caller was busy, or
        it was cut) is started again once here; a fresh stream that breaks is the caller's SourceUnavailable."""
        for _ in range(2):
            fresh = self._stream is None or self._stream.broken or after < self._floor
            if fresh:
                self._start_stream(after)
            self._floor = after
            self._drop_pending(after)
            try:
                self._receive(limit)
                return
            except StreamError as exc:
                self._end_stream()
                if fresh:
                    raise self._stream_failure(exc, "read changes") from exc
        raise AssertionError("unreachable: the second pass starts a fresh stream")

    def _drop_pending(self, upto: int) -> None:
        while self._pending and self._pending[0][0] <= upto:
            self._pending_changes -= len(self._pending.popleft()[1])

    def _start_stream(self, after: int) -> None:
        """(Re)start the stream at the slot's confirmed position; what was received before is dropped (the
        stream delivers it again, and `_receive` skips what is <= `after`)."""
        self._end_stream()
        with self._auto.connect() as conn:
            confirmed = lsn_to_int(self._slot(conn).confirmed)
        if 0 < after < confirmed:
            raise ReplicationError(f"slot {self.slot!r} is at {int_to_lsn(confirmed)}, past the requested "
                                   f"{int_to_lsn(after)}: the changes in between are gone; take a snapshot")
        options = stream_options(self.schema, self.tables)
        for attempt in self._while_slot_busy():
            with attempt:
                try:
                    self._stream = WalStream(self._conninfo, self.slot, options)
                except StreamError as exc:
                    raise self._stream_failure(exc, "start the change stream") from exc

    def _end_stream(self) -> None:
        stream, self._stream = self._stream, None
        self._pending.clear()
        self._pending_changes = 0
        if stream is not None:
            stream.close()

    def _receive(self, limit: int) -> None:
        """Take transactions from the stream into `_pending` until it holds `limit` changes, or the stream has
        reached the WAL flushed now (the server's keepalive says it decoded that far, and whatever it decoded
        arrived before the keepalive)."""
        stream, flushed, asked = self._stream, None, 0.0
        while self._pending_changes < limit:
            message = stream.next_message(0.0 if flushed is None else ASK_EVERY_S)
            if message is not None:
                position, changes = transaction_items(message[1], self._table_set)
                if changes and position > self._floor:
                    self._pending.append((position, changes))
                    self._pending_changes += len(changes)
                continue
            if flushed is None:
                with self._auto.connect() as conn:
                    flushed = lsn_to_int(conn.execute(text("SELECT pg_current_wal_flush_lsn()::text")).scalar_one())
            if stream.server_end >= flushed:
                return
            if time.monotonic() - stream.last_heard > SILENT_S:
                raise StreamError(f"no word from the server for {SILENT_S:.0f} s", None, True)
            if time.monotonic() - asked >= ASK_EVERY_S:
                stream.ask_where()
                asked = time.monotonic()

    def _await_confirmed(self, position: int) -> None:
        """Wait until the walsender has taken the reported position (pg_replication_slots shows it)."""
        def confirmed() -> bool:
            with self._guard("acknowledge"), self._auto.connect() as conn:
                slot = self._slot(conn)
            if lsn_to_int(slot.confirmed) >= position:
                return True
            if not slot.active:  # the walsender is gone (a cut connection): the report died with it
                raise SourceUnavailable(f"the change stream of slot {self.slot!r} at {self.where} ended before "
                                        f"it confirmed {int_to_lsn(position)}")
            return False
        done = Retrying(retry=retry_if_result(lambda ok: not ok), stop=stop_after_delay(CONFIRM_S),
                        wait=wait_exponential(multiplier=0.001, max=0.05),
                        retry_error_callback=lambda _state: False)(confirmed)
        if not done:
            raise SourceUnavailable(f"slot {self.slot!r} at {self.where} did not confirm {int_to_lsn(position)} "
                                    f"within {CONFIRM_S:.0f} s")

    def _stream_failure(self, exc: StreamError, what: str) -> Exception:
        if exc.broken or exc.sqlstate is None or exc.sqlstate.startswith("08") or exc.sqlstate in TRANSIENT_SQLSTATES:
            return SourceUnavailable(f"cannot {what} at {self.where}: {exc}")
        if exc.sqlstate == "42704":
            return ReplicationError(f"replication slot {self.slot!r} does not exist on {self.where}")
        return ReplicationError(f"cannot {what} at {self.where}: {exc}")

    def _while_slot_busy(self) -> Retrying:
        """Attempts of an action that needs the slot free: a walsender that was just closed, or whose client was
        killed, lets go of it a moment later."""
        return Retrying(retry=retry_if_exception(_slot_in_use), stop=stop_after_delay(SLOT_RELEASE_S),
                        wait=wait_exponential(multiplier=0.01, max=0.5), reraise=True)

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


def _slot_in_use(exc: BaseException) -> bool:
    cause = exc.__cause__
    if isinstance(cause, StreamError):
        return cause.sqlstate == SLOT_IN_USE
    return isinstance(cause, DBAPIError) and _sqlstate(cause) == SLOT_IN_USE


def _transient(exc: DBAPIError) -> bool:
    state = _sqlstate(exc)
    if exc.connection_invalidated or (state is None and isinstance(exc, OperationalError)):
        return True  # refused, reset, timed out before the server said anything
    return state is not None and (state.startswith("08") or state in TRANSIENT_SQLSTATES)


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'
