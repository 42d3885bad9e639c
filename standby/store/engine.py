"""Engines for a site's database, set up the same way by every process that opens one."""
from __future__ import annotations

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url


def make_engine(url: str, *, pool_size: int = 5, writer: bool = True) -> Engine:
    """An engine for `url`. SQLite gets WAL, synchronous=NORMAL, a busy timeout and foreign keys on.

    A writer engine starts every transaction with BEGIN IMMEDIATE, so two writer processes queue on the busy timeout
    instead of failing when a read lock upgrades. Never open a second connection of a writer engine inside one of
    its transactions: it would wait for itself. `writer=False` (read-only use, e.g. the API's reads) keeps SQLite's
    deferred BEGIN, so reads never queue behind writers (WAL readers see the last commit)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": 30, "isolation_level": None}, pool_size=pool_size)
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_begin_immediate if writer else _sqlite_begin_deferred)
        return engine
    return create_engine(url, pool_size=pool_size, max_overflow=10, pool_pre_ping=True)


def _sqlite_on_connect(dbapi_conn, record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    record.info["capture_txn"] = cur.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'capture_txn'").fetchone() is not None
    cur.close()


def _sqlite_begin_immediate(conn) -> None:
    # pysqlite's own BEGIN is deferred; a deferred reader that later writes can deadlock with another writer.
    conn.exec_driver_sql("BEGIN IMMEDIATE")
    if conn.info.get("capture_txn"):
        # Inside the write lock, so transaction ids follow commit order; change capture stamps rows with it.
        conn.exec_driver_sql("UPDATE capture_txn SET txid = txid + 1 WHERE id = 1")


def _sqlite_begin_deferred(conn) -> None:
    conn.exec_driver_sql("BEGIN")


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"
