"""`verify`: compare the primary and the standby table by table in primary-key chunks and name every differing key.

Contract of `verify(primary, standby, tables=VERIFY_TABLES, *, chunk_rows=10_000, progress=None, settle=None,
rechecks=3) -> VerifyReport`:

- Both engines are the same kind of database (both SQLite or both PostgreSQL); anything else is a ValueError, as is
  a table the schema does not know. Pass read engines (`make_engine(url, writer=False)`): verify only reads, every
  read in its own short transaction, so a SQLite reader neither pins an old snapshot nor queues behind writers.
  Text keys must sort the same on both sides (same collation), which a replica's database does.
- Each table's primary-key order is split into chunks of about `chunk_rows` rows by ONE read of the primary (a
  window over the key columns only). Chunks are key ranges (-inf, k1), [k1, k2), ..., [kn, +inf), so rows the
  standby holds beyond either end of the primary's keys still fall in a chunk. Re-checks reuse the boundaries.
- For each chunk both sides compute count(*) and a digest of the chunk's rows in the database, so no rows cross the
  wire: PostgreSQL `md5(string_agg(CAST(ROW(<all columns>) AS text), '|' ORDER BY <pk>))`; SQLite a registered
  aggregate (sha256 of each row's typed column values, summed modulo 2**256, so the scan order does not matter).
  On PostgreSQL the standby's read runs in a helper thread alongside the primary's.
- A chunk whose (count, digest) differ is compared again after `settle()` (a callable that returns once the standby
  has everything the primary had committed when it was called), up to `rechecks` times. If it still differs (at
  once without `settle`), both sides' rows of that chunk only are fetched and every differing key is named:
  "missing" (on the primary, not on the standby), "extra" (on the standby only), or "different" (with the differing
  column names, in table order). Values count as different when their type or value differs. With `settle`, the
  differing keys are then looked at again while the primary may still take writes (primary, settle, standby,
  primary): a key whose standby row equals what the primary held at either read was in flight, not a difference;
  so verify can run against a live primary (a switchover's preflight and postcheck do).
- `progress(table, done_chunks, total_chunks)` is called when a table starts (done 0) and after each of its chunks.
- The report gives, per table, rows compared (primary and standby), chunks, chunks drilled into, re-checks, the
  differences and the seconds taken; `.ok` is True when no table has a difference; `.summary()` gives lines to read.
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from itertools import pairwise

from sqlalchemy import Connection, Engine, Table, text

from replication.changes import REPLICATED_TABLES
from standby.store import schema

VERIFY_TABLES = tuple(name for name in REPLICATED_TABLES if name != "replication_heartbeat")
SUPPORTED_DIALECTS = ("sqlite", "postgresql")
SHOWN_PER_TABLE = 20  # differences listed per table in summary(); the report keeps them all
_SQLITE_DIGEST = "standby_verify_digest"
_REGISTERED = "standby_verify_digest_registered"

Key = tuple
Bounds = tuple[Key | None, Key | None]


@dataclass(frozen=True)
class Difference:
    table: str
    key: dict
    kind: str  # "missing" (not on the standby) | "extra" (only on the standby) | "different"
    columns: tuple[str, ...] = ()

    def describe(self) -> str:
        key = ", ".join(f"{name}={value}" for name, value in self.key.items())
        what = {"missing": "missing on standby", "extra": "extra on standby"}.get(self.kind)
        return f"{self.table} ({key}): {what or 'different in ' + ', '.join(self.columns)}"


@dataclass
class TableReport:
    table: str
    rows: int = 0  # on the primary, summed over chunks as last compared
    standby_rows: int = 0
    chunks: int = 0
    chunks_drilled: int = 0  # chunks whose rows were fetched because (count, digest) still differed
    rechecks: int = 0  # settle() calls made for this table's chunks
    differences: list[Difference] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.differences

    def line(self) -> str:
        out = (f"{self.table}: {_count(self.rows, 'row')} in {_count(self.chunks, 'chunk')}, "
               f"{_count(len(self.differences), 'difference')}")
        if self.standby_rows != self.rows:
            out += f" (standby has {self.standby_rows:,} rows)"
        if self.rechecks:
            out += f", {_count(self.rechecks, 're-check')} after settle"
        return f"{out} [{self.seconds:.2f} s]"


@dataclass
class VerifyReport:
    dialect: str
    tables: list[TableReport]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.tables)

    @property
    def differences(self) -> list[Difference]:
        return [d for t in self.tables for d in t.differences]

    @property
    def chunks_drilled(self) -> int:
        return sum(t.chunks_drilled for t in self.tables)

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables)

    def table(self, name: str) -> TableReport:
        return next(t for t in self.tables if t.table == name)

    def summary(self) -> list[str]:
        lines = []
        for t in self.tables:
            lines.append(t.line())
            lines += [f"  {d.describe()}" for d in t.differences[:SHOWN_PER_TABLE]]
            if len(t.differences) > SHOWN_PER_TABLE:
                lines.append(f"  ... and {len(t.differences) - SHOWN_PER_TABLE:,} more in {t.table}")
        chunks = sum(t.chunks for t in self.tables)
        if self.ok:
            lines.append(f"OK: {self.rows:,} rows in {len(self.tables)} tables ({chunks:,} chunks) are the same on "
                         f"both sides [{self.seconds:.2f} s]")
        else:
            bad = [t.table for t in self.tables if not t.ok]
            lines.append(f"DIFFERENT: {_count(len(self.differences), 'differing key')} in {', '.join(bad)} "
                         f"({self.chunks_drilled:,} of {chunks:,} chunks drilled) [{self.seconds:.2f} s]")
        return lines


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'s' * (n != 1)}"


def verify(primary: Engine, standby: Engine, tables: Iterable[str] = VERIFY_TABLES, *, chunk_rows: int = 10_000,
           progress: Callable[[str, int, int], None] | None = None, settle: Callable[[], None] | None = None,
           rechecks: int = 3) -> VerifyReport:
    """Compare `tables` on `primary` and `standby` (see the module docstring for the contract)."""
    dialect = primary.dialect.name
    if standby.dialect.name != dialect:
        raise ValueError(f"verify compares two databases of the same kind; primary is {dialect}, standby is "
                         f"{standby.dialect.name}")
    if dialect not in SUPPORTED_DIALECTS:
        raise ValueError(f"verify supports {' and '.join(SUPPORTED_DIALECTS)}, not {dialect}")
    if chunk_rows < 1 or rechecks < 0:
        raise ValueError("chunk_rows must be at least 1 and rechecks at least 0")
    names = list(tables)
    unknown = [n for n in names if n not in schema.metadata.tables]
    if unknown:
        raise ValueError(f"not tables of the site schema: {', '.join(unknown)}")
    started = time.monotonic()
    # PostgreSQL works while we wait, so the standby's read overlaps the primary's; SQLite's digest is Python code
    # under the GIL, where a second thread only adds contention.
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="verify-standby") if dialect == "postgresql" else None
    with pool or nullcontext():
        reports = [_verify_table(_TableSql(schema.metadata.tables[n], primary), primary, standby, pool, chunk_rows,
                                 progress, settle, rechecks) for n in names]
    return VerifyReport(dialect, reports, time.monotonic() - started)


class _TableSql:
    """The statements verify runs for one table, identifiers quoted by the dialect, values always bound."""

    def __init__(self, table: Table, engine: Engine):
        quote = engine.dialect.identifier_preparer.quote
        self.table, self.dialect = table.name, engine.dialect.name
        self.columns = [c.name for c in table.columns]
        self.pk = [c.name for c in table.primary_key.columns]
        self.pk_index = [self.columns.index(c) for c in self.pk]
        self.name = quote(table.name)
        self.pk_sql = ", ".join(quote(c) for c in self.pk)
        self.columns_sql = ", ".join(quote(c) for c in self.columns)
        if self.dialect == "postgresql":
            self.digest_sql = (f"md5(string_agg(CAST(ROW({self.columns_sql}) AS text), '|' "
                               f"ORDER BY {self.pk_sql}))")
        else:
            self.digest_sql = f"{_SQLITE_DIGEST}({self.columns_sql})"

    def boundaries(self, chunk_rows: int) -> tuple[str, dict]:
        """First key of every chunk but the first: rows 1 + chunk_rows, 1 + 2 * chunk_rows, ... in key order."""
        statement = (f"SELECT {self.pk_sql} FROM (SELECT {self.pk_sql}, row_number() OVER (ORDER BY {self.pk_sql}) "
                     f"AS verify_rn FROM {self.name}) AS chunk_starts "
                     f"WHERE verify_rn > 1 AND (verify_rn - 1) % :n = 0 ORDER BY verify_rn")
        return statement, {"n": chunk_rows}

    def where(self, bounds: Bounds) -> tuple[str, dict]:
        parts, params = [], {}
        for bound, op, prefix in ((bounds[0], ">=", "lo"), (bounds[1], "<", "hi")):
            if bound is None:
                continue
            names = [f"{prefix}_{i}" for i in range(len(bound))]
            params.update(zip(names, bound))
            binds = ", ".join(f":{n}" for n in names)
            parts.append(f"{self.pk_sql} {op} {binds}" if len(bound) == 1 else f"({self.pk_sql}) {op} ({binds})")
        return (" WHERE " + " AND ".join(parts) if parts else ""), params

    def summary(self, bounds: Bounds) -> tuple[str, dict]:
        where, params = self.where(bounds)
        return f"SELECT count(*), {self.digest_sql} FROM {self.name}{where}", params

    def rows(self, bounds: Bounds) -> tuple[str, dict]:
        where, params = self.where(bounds)
        return f"SELECT {self.columns_sql} FROM {self.name}{where} ORDER BY {self.pk_sql}", params


def _verify_table(sql: _TableSql, primary: Engine, standby: Engine, pool: ThreadPoolExecutor | None, chunk_rows: int,
                  progress, settle, rechecks: int) -> TableReport:
    started = time.monotonic()
    statement, params = sql.boundaries(chunk_rows)
    with primary.connect() as conn:
        starts = [tuple(r) for r in conn.execute(text(statement), params)]
    edges: list[Key | None] = [None, *starts, None]
    chunks: list[Bounds] = list(pairwise(edges))
    report = TableReport(sql.table, chunks=len(chunks))
    if progress:
        progress(sql.table, 0, len(chunks))
    for done, bounds in enumerate(chunks, 1):
        on_primary, on_standby = _both(pool, _summary, primary, standby, sql, bounds)
        tries = 0
        while on_primary != on_standby and settle is not None and tries < rechecks:
            settle()
            tries += 1
            on_primary, on_standby = _both(pool, _summary, primary, standby, sql, bounds)
        report.rechecks += tries
        report.rows += on_primary[0]
        report.standby_rows += on_standby[0]
        if on_primary != on_standby:
            report.chunks_drilled += 1
            found = _differences(sql, *_both(pool, _rows, primary, standby, sql, bounds))
            if found and settle is not None and rechecks:
                found = _reconcile(sql, primary, standby, found, settle, rechecks)
            report.differences += found
        if progress:
            progress(sql.table, done, len(chunks))
    report.seconds = time.monotonic() - started
    return report


def _both(pool: ThreadPoolExecutor | None, read, primary: Engine, standby: Engine, sql: _TableSql, bounds: Bounds):
    """The same read on both sides: at once with a pool (the standby's in its thread), else one after the other."""
    if pool is None:
        return read(primary, sql, bounds), read(standby, sql, bounds)
    on_standby = pool.submit(read, standby, sql, bounds)
    return read(primary, sql, bounds), on_standby.result()


def _summary(engine: Engine, sql: _TableSql, bounds: Bounds) -> tuple[int, str | None]:
    statement, params = sql.summary(bounds)
    with engine.connect() as conn:
        _register_digest(conn)
        count, digest = conn.execute(text(statement), params).one()
    return count, digest


def _rows(engine: Engine, sql: _TableSql, bounds: Bounds) -> dict[Key, tuple]:
    statement, params = sql.rows(bounds)
    with engine.connect() as conn:
        return {tuple(row[i] for i in sql.pk_index): tuple(row) for row in conn.execute(text(statement), params)}


def _reconcile(sql: _TableSql, primary: Engine, standby: Engine, found: list[Difference], settle, rechecks: int
               ) -> list[Difference]:
    """Look again at the differing keys only, while the primary may still be taking writes: read them on the
    primary, settle, read them on the standby, read them on the primary again. A key whose standby row (or absence)
    equals what the primary held at either read was only in flight; the rest are differences. Repeated up to
    `rechecks` times for keys that changed again meanwhile; what is left is reported from the last reads."""
    keys = [tuple(d.key[c] for c in sql.pk) for d in found]
    before = after = on_standby = {}
    for _ in range(rechecks):
        before = _rows_by_key(primary, sql, keys)
        settle()
        on_standby = _rows_by_key(standby, sql, keys)
        after = _rows_by_key(primary, sql, keys)
        keys = [k for k in keys if on_standby.get(k) not in (before.get(k), after.get(k))]
        if not keys:
            return []
    return _differences(sql, {k: after[k] for k in keys if k in after}, {k: on_standby[k] for k in keys
                                                                         if k in on_standby})


def _rows_by_key(engine: Engine, sql: _TableSql, keys: list[Key], per_statement: int = 200) -> dict[Key, tuple]:
    """The rows with these primary keys (absent keys are simply not in the answer), values bound, never inlined."""
    found: dict[Key, tuple] = {}
    for start in range(0, len(keys), per_statement):
        batch = keys[start:start + per_statement]
        params = {f"k{i}_{j}": value for i, key in enumerate(batch) for j, value in enumerate(key)}
        quote = engine.dialect.identifier_preparer.quote
        match = " OR ".join("(" + " AND ".join(f"{quote(c)} = :k{i}_{j}" for j, c in enumerate(sql.pk)) + ")"
                            for i in range(len(batch)))
        with engine.connect() as conn:
            for row in conn.execute(text(f"SELECT {sql.columns_sql} FROM {sql.name} WHERE {match}"), params):
                found[tuple(row[i] for i in sql.pk_index)] = tuple(row)
    return found


def _differences(sql: _TableSql, primary: dict[Key, tuple], standby: dict[Key, tuple]) -> list[Difference]:
    out = []
    for key, row in primary.items():
        other = standby.get(key)
        if other is None:
            out.append(Difference(sql.table, dict(zip(sql.pk, key)), "missing"))
            continue
        columns = tuple(name for name, a, b in zip(sql.columns, row, other) if type(a) is not type(b) or a != b)
        if columns:
            out.append(Difference(sql.table, dict(zip(sql.pk, key)), "different", columns))
    out += [Difference(sql.table, dict(zip(sql.pk, key)), "extra") for key in standby if key not in primary]
    return out


class _SqliteDigest:
    """Order-independent digest of a chunk: the sum of each row's sha256 (over the repr of its typed values)."""

    def __init__(self):
        self.total = 0

    def step(self, *values) -> None:
        self.total += int.from_bytes(hashlib.sha256(repr(values).encode("utf-8", "surrogatepass")).digest(), "big")

    def finalize(self) -> str:
        return format(self.total % (1 << 256), "064x")


def _register_digest(conn: Connection) -> None:
    if conn.dialect.name != "sqlite" or conn.connection.info.get(_REGISTERED):
        return
    conn.connection.dbapi_connection.create_aggregate(_SQLITE_DIGEST, -1, _SqliteDigest)
    conn.connection.info[_REGISTERED] = True
