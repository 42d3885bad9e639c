"""Applies row changes to the standby's database, exactly once, with the applied position in the same transaction."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

import msgspec
import psycopg
from sqlalchemy import (Boolean, Date, Engine, Float, Integer, Numeric, Table, bindparam, delete, event, select, text,
                        update)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, OperationalError

from replication.changes import Change, ChangeOp
from replication.errors import PermanentApplyError, TargetUnavailable
from replication.pg_wal2json import RowInsert, built
from standby.store.address_moves import Moves, load_moves, move_row, moving_changeset
from standby.store.engine import is_sqlite, make_engine
from standby.store.orgmap import active_map
from standby.store.schema import metadata, replication_state


# From this many upserts in a run, PostgreSQL gets them through COPY and one INSERT ... SELECT (`_bulk_upsert`).
BULK_MIN_ROWS = 64

# Built once: a replicator keeping up with a steady load applies many small windows, each paying these statements
# (see standby.clearance.batch on what building them per call cost).
_CAPTURE = text("UPDATE capture_txn SET capture = :on WHERE id = 1")
_POSITION_VALUES = {"position": bindparam("b_position"), "applied_at": bindparam("b_applied_at")}
_NEW_POSITION = replication_state.insert().values(
    stream=bindparam("b_stream"), part=bindparam("b_part"), changes=bindparam("b_count"),
    heartbeat_at=bindparam("b_heartbeat"), **_POSITION_VALUES)
_MOVE_POSITION = (
    update(replication_state)
    .where(replication_state.c.stream == bindparam("b_stream"), replication_state.c.part == bindparam("b_part"))
    .values(changes=replication_state.c.changes + bindparam("b_count"), **_POSITION_VALUES)
)
_MOVE_POSITION_AND_BEAT = _MOVE_POSITION.values(heartbeat_at=bindparam("b_heartbeat"))


@dataclass(frozen=True)
class ApplyResult:
    part: int
    position: int
    applied: int
    heartbeat_at: float | None  # commit time of the newest primary heartbeat in the batch
    newest_commit_at: float | None
    applied_at: float


def apply_engine(url: str) -> Engine:
    """The standby's writer engine for applying. Foreign keys are not enforced while applying: rows arrive in the
    primary's commit order per key, but partitions run in parallel, so a child may land before its parent (as in
    PostgreSQL's own logical replication, which applies as session_replication_role = replica)."""
    engine = make_engine(url, pool_size=2)
    if is_sqlite(engine):
        @event.listens_for(engine, "connect")
        def _no_fk(dbapi_conn, _record):
            dbapi_conn.execute("PRAGMA foreign_keys=OFF")
    return engine


class Applier:
    """Contract: `apply(stream, part, changes, upto)` applies `changes` (already in commit order, all belonging to
    `part`; Changes, or RowInserts that it builds only where it must: PostgreSQL copies their values as they are)
    that are above the partition's stored position, and stores `upto` as the new position, all in one transaction.
    After a crash the same window can be sent again: nothing at or below the stored position is applied twice.
    Transient failures raise TargetUnavailable (nothing written); a change the database refuses raises
    PermanentApplyError naming that change (nothing of the window written)."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time):
        self.engine, self.clock = engine, clock
        self._dialect = sqlite if is_sqlite(engine) else postgresql
        self._coercers = {name: _coercer(t) for name, t in metadata.tables.items()}
        self._statements: dict[tuple[str, bool | str], tuple] = {}  # (table, delete or "bulk") -> SQL
        self._moves_cache: Moves | None = None

    def positions(self, stream: str) -> dict[int, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(replication_state.c.part, replication_state.c.position)
                                .where(replication_state.c.stream == stream)).all()
        return dict(rows)

    def apply(self, stream: str, part: int, changes: Sequence[Change | RowInsert], upto: int) -> ApplyResult:
        try:
            return self._apply(stream, part, changes, upto)
        except OperationalError as exc:
            raise TargetUnavailable(f"standby database unavailable: {exc.orig}") from exc
        except DBAPIError as exc:
            culprit = self._culprit(changes) or (changes[0] if changes else None)
            raise PermanentApplyError(culprit and built(culprit),
                                      f"{type(exc.orig).__name__}: {exc.orig}") from exc

    def _apply(self, stream: str, part: int, changes: Sequence[Change | RowInsert], upto: int) -> ApplyResult:
        with self.engine.begin() as conn:
            self._replica_session(conn)
            stored = conn.execute(select(replication_state.c.position).where(
                replication_state.c.stream == stream, replication_state.c.part == part)).scalar()
            fresh = [c for c in changes if stored is None or c.position > stored]
            moves = self._moves(conn)
            for group in _runs([_moved(built(c), moves) for c in fresh] if moves else fresh):
                self._execute(conn, group)
            heartbeat = max((built(c).row["at"] for c in fresh
                             if c.table == "replication_heartbeat" and c.op is not ChangeOp.DELETE), default=None)
            newest = max((c.committed_at for c in fresh if c.committed_at), default=None)
            now = self.clock()
            position = max(upto, stored or 0)
            self._store_position(conn, stream, part, position, len(fresh), heartbeat, now, stored is None)
            self._capture(conn, on=True)
        return ApplyResult(part, position, len(fresh), heartbeat, newest, now)

    def _moves(self, conn) -> Moves | None:
        """The moves of the change set this standby switched to ahead of its primary (the org restructure through a
        switchover), None otherwise; read in every transaction (under a share lock on PostgreSQL, so the standby's
        own switch never interleaves with a batch), the successors cached per change set."""
        changeset_id = moving_changeset(conn)
        if changeset_id is None:
            return None
        if self._moves_cache is None or self._moves_cache.changeset_id != changeset_id:
            self._moves_cache = load_moves(conn, active_map(conn))
        return self._moves_cache

    def write_changes(self, conn, changes: Sequence[Change], *, replica: bool) -> None:
        """Write row images (JSON-ready or as the database returned them) in the caller's open transaction, in the
        order given, as upserts and deletes. `replica=True` writes as the applier does (SQLite: change capture off,
        back on before returning; PostgreSQL: session_replication_role = replica): the failback moving an old
        primary's rows aside. `replica=False` writes like any client, captured and replicated: reconcile bringing
        them back on the primary."""
        if replica:
            self._replica_session(conn)
        for group in _runs(changes):
            self._execute(conn, group)
        if replica:
            self._capture(conn, on=True)

    def _replica_session(self, conn) -> None:
        if not is_sqlite(self.engine):
            conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
        else:
            self._capture(conn, on=False)

    def _capture(self, conn, on: bool) -> None:
        """SQLite only: what the applier writes is the primary's history, so the standby's capture triggers skip
        it. Switched off and on inside the applier's own transaction, so no other connection ever sees it off."""
        if is_sqlite(self.engine):
            conn.execute(_CAPTURE, {"on": int(on)})

    def _store_position(self, conn, stream, part, position, count, heartbeat, now, new: bool) -> None:
        params = {"b_stream": stream, "b_part": part, "b_count": count, "b_position": position, "b_applied_at": now,
                  "b_heartbeat": heartbeat}
        if new:
            conn.execute(_NEW_POSITION, params)
        else:  # a window without a heartbeat keeps the last one's time
            conn.execute(_MOVE_POSITION if heartbeat is None else _MOVE_POSITION_AND_BEAT, params)

    def _execute(self, conn, group: list[Change | RowInsert]) -> None:
        """One executemany of precompiled SQL per run. Streamed values are JSON-ready (str for numeric and dates),
        which both drivers bind as the column needs, so the hot path skips SQLAlchemy's per-row work."""
        table = metadata.tables[group[0].table]
        if group[0].op is not ChangeOp.DELETE and len(group) >= BULK_MIN_ROWS and not is_sqlite(self.engine):
            self._bulk_upsert(conn, table, group)
            return
        group = [built(c) for c in group]
        if group[0].op is ChangeOp.DELETE:
            sql, names = self._sql(table, delete=True)
            conn.exec_driver_sql(sql, [tuple(c.key[n] for n in names) for c in group])
            return
        sql, names = self._sql(table, delete=False)
        conn.exec_driver_sql(sql, [tuple(c.row.get(n) for n in names) for c in group])

    def _bulk_upsert(self, conn, table: Table, group: list[Change]) -> None:
        """PostgreSQL: a run of upserts as one COPY into a temporary staging table and one INSERT ... SELECT ... ON
        CONFLICT, instead of a statement per row. Within a run (one table, no delete in between) the last image of
        a key is the one that counts, and one INSERT may touch a key only once: earlier images are dropped."""
        names = [c.name for c in table.columns]
        pk_at = [names.index(c.name) for c in table.primary_key.columns]
        latest = {}
        for change in group:
            values = (change.values_in_schema_order() if type(change) is RowInsert
                      else [change.row.get(n) for n in names])
            latest[tuple(values[i] for i in pk_at)] = values
        stage, upsert, copy_in, copy_stage = self._bulk_sql(table)
        with conn.connection.driver_connection.cursor() as cur:
            if len(latest) == len(group) and all(c.op is ChangeOp.INSERT for c in group):
                # Rows new to the primary are almost always new here too (a catch-up's backlog): straight into the
                # table, half the server's work of staging. A row already here (a window applied again after a
                # crash, a snapshot's overlap) refuses the whole COPY, which then goes the upsert's way.
                cur.execute("SAVEPOINT replication_copy")
                try:
                    _copy_rows(cur, copy_in, latest.values())
                    cur.execute("RELEASE SAVEPOINT replication_copy")
                    return
                except psycopg.errors.UniqueViolation:
                    cur.execute("ROLLBACK TO SAVEPOINT replication_copy")
            cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {_quote(table.name)}) ON COMMIT DELETE ROWS")
            _copy_rows(cur, copy_stage, latest.values())
            cur.execute(upsert)
            cur.execute(f"TRUNCATE {stage}")  # the next run of this table in the same transaction starts empty

    def _bulk_sql(self, table: Table) -> tuple[str, str, str, str]:
        """(staging table, upsert from it, COPY into the table, COPY into the staging table), made once a table."""
        key = (table.name, "bulk")
        if key not in self._statements:
            stage = _quote(f"replication_stage_{table.name}")
            sql, names = self._sql(table, delete=False)
            columns = ", ".join(_quote(n) for n in names)
            conflict = sql[sql.index(" ON CONFLICT"):]
            self._statements[key] = (stage, f"INSERT INTO {_quote(table.name)} ({columns}) SELECT {columns} "
                                            f"FROM {stage}{conflict}",
                                     f"COPY {_quote(table.name)} ({columns}) FROM STDIN",
                                     f"COPY {stage} ({columns}) FROM STDIN")
        return self._statements[key]

    def _sql(self, table: Table, delete: bool) -> tuple[str, list[str]]:
        key = (table.name, delete)
        if key not in self._statements:
            mark = "?" if is_sqlite(self.engine) else "%s"
            quote = self.engine.dialect.identifier_preparer.quote
            pk = [c.name for c in table.primary_key.columns]
            if delete:
                where = " AND ".join(f"{quote(n)} = {mark}" for n in pk)
                self._statements[key] = (f"DELETE FROM {quote(table.name)} WHERE {where}", pk)
            else:
                names = [c.name for c in table.columns]
                others = [n for n in names if n not in pk]
                action = ("DO UPDATE SET " + ", ".join(f"{quote(n)} = excluded.{quote(n)}" for n in others)
                          if others else "DO NOTHING")
                self._statements[key] = (
                    f"INSERT INTO {quote(table.name)} ({', '.join(quote(n) for n in names)}) "
                    f"VALUES ({', '.join([mark] * len(names))}) ON CONFLICT ({', '.join(quote(n) for n in pk)}) "
                    f"{action}", names)
        return self._statements[key]

    def _upsert(self, table: Table):
        stmt = self._dialect.insert(table)
        keys = [c.name for c in table.primary_key.columns]
        others = {c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys}
        return (stmt.on_conflict_do_update(index_elements=keys, set_=others) if others
                else stmt.on_conflict_do_nothing(index_elements=keys))

    def _culprit(self, changes: Sequence[Change]) -> Change | None:
        """Find the first change the database refuses, one at a time in a transaction that is rolled back."""
        with self.engine.connect() as conn:
            tx = conn.begin()
            try:
                self._replica_session(conn)
                for change in changes:
                    try:
                        with conn.begin_nested():
                            self._execute(conn, [change])
                    except DBAPIError:
                        return change
            finally:
                tx.rollback()
        return None

    def load_snapshot(self, stream: str, parts: int, position: int, tables: Iterable, batch: int = 5000,
                      progress: Callable[[str, int], None] = lambda table, rows: None) -> int:
        """Copy a snapshot into empty-or-stale tables (upserts) and set every partition's position to `position`."""
        total = 0
        with self.engine.begin() as conn:
            self._replica_session(conn)
            for snap in tables:
                table = metadata.tables[snap.table]
                coerce, statement, rows, count = self._coercers[snap.table], self._upsert(table), [], 0
                for row in snap.rows:
                    rows.append(coerce(row))
                    if len(rows) >= batch:
                        conn.execute(statement, rows)
                        count, rows = count + len(rows), []
                        progress(snap.table, count)
                if rows:
                    conn.execute(statement, rows)
                    count += len(rows)
                progress(snap.table, count)
                total += count
            conn.execute(delete(replication_state).where(replication_state.c.stream == stream))
            now = self.clock()
            conn.execute(replication_state.insert(), [
                {"stream": stream, "part": p, "position": position, "changes": 0, "heartbeat_at": None,
                 "applied_at": now} for p in range(parts)])
            self._capture(conn, on=True)
        return total


def _copy_rows(cur, statement: str, rows: Iterable[list]) -> None:
    with cur.copy(statement) as copy:
        for values in rows:
            copy.write_row(values)


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _moved(change: Change, moves: Moves) -> Change:
    """The change with its row moved to the standby's active map (see standby.store.address_moves), or as it came."""
    if change.row is None:
        return change
    row = move_row(change.table, change.row, moves)
    return change if row is None else msgspec.structs.replace(change, row=row)


def _runs(changes: Sequence[Change | RowInsert]) -> Iterable[list[Change | RowInsert]]:
    """Consecutive changes to the same table with the same kind of statement, so each run is one executemany
    (order is kept: a run never reorders anything)."""
    run: list[Change] = []
    for change in changes:
        kind = (change.table, change.op is ChangeOp.DELETE)
        if run and (run[0].table, run[0].op is ChangeOp.DELETE) != kind:
            yield run
            run = []
        run.append(change)
    if run:
        yield run


def _coercer(table: Table) -> Callable[[dict], dict]:
    """JSON-ready values (as the sources give them) to the column types the database driver expects."""
    def converter(column):
        kind = column.type
        if isinstance(kind, Boolean):
            return lambda v: None if v is None else bool(v)
        if isinstance(kind, Date):
            return lambda v: date.fromisoformat(v[:10]) if isinstance(v, str) else v
        if isinstance(kind, Numeric) and not isinstance(kind, Float):
            return lambda v: None if v is None else Decimal(str(v))
        if isinstance(kind, Float):
            return lambda v: None if v is None else float(v)
        if isinstance(kind, Integer):
            return lambda v: None if v is None else int(v)
        return lambda v: v

    convert = {c.name: converter(c) for c in table.columns}

    def coerce(row: dict) -> dict:
        return {name: convert[name](value) for name, value in row.items() if name in convert}
    return coerce
