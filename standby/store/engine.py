"""Engines for a site's database, set up the same way by every process that opens one."""
from __future__ import annotations

import sqlite3
from collections.abc import Callable

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_fixed, wait_random

LOCK_WAIT_S = 30.0
# How often a writer that found SQLite's write lock taken tries again. SQLite's own busy handler sleeps 1, 2, 5, 10,
# 15, 20, 25, 25, 25, 50, 50, 100 ms between tries and is not fair: under load, a batch that met the lock once slept
# tens of ms behind writers that arrived after it (measured at 12x design: BEGIN IMMEDIATE p99 20 ms, max 131 ms,
# for transactions that hold the lock ~3 ms). Trying every ~0.5 ms costs a few microseconds a try.
LOCK_POLL_S = 0.0003
LOCK_POLL_JITTER_S = 0.0004


def make_engine(url: str, *, pool_size: int = 5, writer: bool = True, lock_wait_s: float = LOCK_WAIT_S) -> Engine:
    """An engine for `url`. SQLite gets WAL, synchronous=NORMAL, foreign keys on, and waits up to `lock_wait_s` for
    a lock.

    A writer engine starts every transaction with BEGIN IMMEDIATE, so two writer processes queue for the write lock
    instead of failing when a read lock upgrades; a writer that finds the lock taken tries again every ~0.5 ms
    (LOCK_POLL_S) until `lock_wait_s` has passed, then raises SQLAlchemy's OperationalError "database is locked".
    Never open a second connection of a writer engine inside one of its transactions: it would wait for itself.
    `writer=False` (read-only use, e.g. the API's reads) keeps SQLite's deferred BEGIN, so reads never queue behind
    writers (WAL readers see the last commit)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": lock_wait_s, "isolation_level": None},
                               pool_size=pool_size)
        event.listen(engine, "connect", _sqlite_on_connect(writer, lock_wait_s))
        event.listen(engine, "begin", _sqlite_begin_immediate(lock_wait_s) if writer else _sqlite_begin_deferred)
        return engine
    return create_engine(url, pool_size=pool_size, max_overflow=10, pool_pre_ping=True)


def _sqlite_on_connect(writer: bool, lock_wait_s: float) -> Callable:
    def on_connect(dbapi_conn, record) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        record.info["capture_txn"] = cur.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'capture_txn'").fetchone() is not None
        # A writer waits for the lock in _sqlite_begin_immediate, not in SQLite's busy handler. Inside a write
        # transaction, in WAL mode, no statement meets a lock (SQLite's wal.html lists the cases: opening and
        # recovery, both met by the BEGIN). A reader keeps the busy handler for those rare cases.
        cur.execute(f"PRAGMA busy_timeout={0 if writer else int(lock_wait_s * 1000)}")  # numbers, not input
        cur.close()
    return on_connect


def _sqlite_begin_immediate(lock_wait_s: float) -> Callable:
    waiting = Retrying(retry=retry_if_exception(_is_busy), stop=stop_after_delay(lock_wait_s),
                       wait=wait_fixed(LOCK_POLL_S) + wait_random(0, LOCK_POLL_JITTER_S), reraise=True)

    def begin(conn) -> None:
        # pysqlite's own BEGIN is deferred; a deferred reader that later writes can deadlock with another writer.
        raw = conn.connection.dbapi_connection
        try:
            raw.execute("BEGIN IMMEDIATE")  # the usual case: the lock is free, and no tenacity on the hot path
        except sqlite3.Error as first:
            _wait_for_write_lock(conn, raw, first, waiting)
        _count_transaction(conn)
    return begin


def _wait_for_write_lock(conn, raw, first: sqlite3.Error, waiting: Retrying) -> None:
    """BEGIN IMMEDIATE again, after `first` failed: polled while the lock is taken, for as long as `waiting` allows.
    A lock held past the wait, or any other failure, takes a last try through SQLAlchemy, so it is raised as it
    always was: OperationalError "database is locked", which callers take as "unavailable, retry"."""
    if _is_busy(first):
        try:
            waiting.copy()(raw.execute, "BEGIN IMMEDIATE")  # a copy per wait: writers share the engine
            return
        except sqlite3.Error:
            pass
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _is_busy(exc: BaseException) -> bool:
    # the extended code's low byte: SQLITE_BUSY, SQLITE_BUSY_RECOVERY, SQLITE_BUSY_SNAPSHOT …
    return isinstance(exc, sqlite3.OperationalError) and (exc.sqlite_errorcode & 0xFF) == sqlite3.SQLITE_BUSY


def _count_transaction(conn) -> None:
    if conn.info.get("capture_txn"):
        # Inside the write lock, so transaction ids follow commit order; change capture stamps rows with it.
        conn.exec_driver_sql("UPDATE capture_txn SET txid = txid + 1 WHERE id = 1")


def _sqlite_begin_deferred(conn) -> None:
    conn.exec_driver_sql("BEGIN")


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"
