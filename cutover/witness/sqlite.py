"""The witness in a SQLite file: the embedded default (one machine, no setup).

WAL, so readers (the front polling `state()`) never wait for a writer. synchronous=FULL, not the sites' NORMAL: the
witness is the authority on the epoch, and a promotion acknowledged and then lost to a power cut could let an old
primary back in. Every write transaction starts with BEGIN IMMEDIATE: it takes the database's write lock before
reading, so reading the state row and updating it is a compare-and-set that no other process can interleave (a
deferred BEGIN would let two promoters read the same epoch, then one fail on the lock upgrade). Reads keep a deferred
BEGIN. "database is locked" after the busy timeout, or a file that cannot be opened, is transient: retried briefly,
then WitnessUnavailable.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Connection, create_engine, event, select
from sqlalchemy.exc import OperationalError

from cutover.witness.base import SqlWitness
from cutover.witness.contract import WitnessUnavailable
from cutover.witness.schema import STATE_ROW_ID, runbook_runs, witness_state
from standby.settings import resolve_sqlite_url

PREFIX = "sqlite:///"


class SqliteWitness(SqlWitness):
    backend = "sqlite"

    def __init__(self, url: str, *, root: Path | None = None, clock: Callable[[], float] = time.time,
                 busy_timeout_s: float = 2.0, attempts: int = 4, retry_budget_s: float = 8.0):
        url = sqlite_url(url, root)
        _ensure_parent(url)
        engine = create_engine(url, connect_args={"timeout": busy_timeout_s, "isolation_level": None,
                                                  "check_same_thread": False})
        busy_ms = int(busy_timeout_s * 1000)

        def on_connect(dbapi_conn, _record) -> None:
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout={busy_ms}")  # an int we computed, not input
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        def on_begin(conn: Connection) -> None:
            # pysqlite's own BEGIN is deferred; see the module docstring for why writes must be IMMEDIATE.
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("witness_write") else "BEGIN")

        event.listen(engine, "connect", on_connect)
        event.listen(engine, "begin", on_begin)
        super().__init__(engine, url, clock=clock, attempts=attempts, retry_budget_s=retry_budget_s)

    def _lock_state(self, conn: Connection):
        # BEGIN IMMEDIATE already holds the write lock for the whole transaction.
        return conn.execute(select(witness_state).where(witness_state.c.id == STATE_ROW_ID)).mappings().one()

    def _lock_run(self, conn: Connection, run_id: str) -> bool:
        return conn.execute(select(runbook_runs.c.run_id).where(runbook_runs.c.run_id == run_id)).first() is not None

    def _transient(self, exc: BaseException) -> bool:
        return isinstance(exc, OperationalError) and any(
            words in str(exc.orig).lower() for words in ("locked", "busy", "unable to open", "disk i/o"))


def sqlite_url(url: str, root: Path | None) -> str:
    """An absolute sqlite:/// URL: relative paths resolve against root (the settings' root) or else the cwd."""
    if not url.startswith(PREFIX) or ":memory:" in url or url == PREFIX:
        raise ValueError(f"a SQLite witness needs a file, e.g. sqlite:///var/witness.db, not {url!r}")
    return resolve_sqlite_url(url, root if root is not None else Path.cwd())


def _ensure_parent(url: str) -> None:
    path = Path(url[len(PREFIX):].split("?", 1)[0])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WitnessUnavailable(f"the witness ({url}) is unavailable: cannot create its folder "
                                 f"{path.parent}: {exc.strerror or exc}") from None
