"""The witness in a PostgreSQL database: production (a database outside both sites).

psycopg 3 through SQLAlchemy 2.x Core, bound parameters only. A write reads the single state row with
SELECT ... FOR UPDATE in READ COMMITTED: a second promoter blocks on the row lock until the first commits, then reads
the new epoch and is refused (StaleEpoch) — a compare-and-set. The journal serialises appenders of one run by locking
that run's row, so seq goes up by exactly one per entry without gaps or unique-key clashes. Migrations from several
processes at once are serialised by a transaction-scoped advisory lock.

Transient: connection refused or lost, admin shutdown, a serialisation failure or deadlock — retried briefly with
tenacity, then WitnessUnavailable.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import Connection, create_engine, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from cutover.witness.base import SqlWitness
from cutover.witness.schema import STATE_ROW_ID, runbook_runs, witness_state

# pg_advisory_xact_lock key for schema migrations: any constant the sites' databases do not use.
MIGRATION_LOCK_KEY = 0x5717_0E55
TRANSIENT_SQLSTATES = {"40001", "40P01", "57P01", "57P02", "57P03", "08000", "08001", "08003", "08004", "08006"}


class PostgresWitness(SqlWitness):
    backend = "postgresql"

    def __init__(self, url: str, *, clock: Callable[[], float] = time.time, connect_timeout_s: int = 3,
                 lock_timeout_s: float = 5.0, attempts: int = 4, retry_budget_s: float = 8.0, pool_size: int = 2):
        url = psycopg_url(url)
        # lock_timeout bounds how long a write waits for the state row; a stuck holder then reads as unavailable.
        engine = create_engine(url, pool_size=pool_size, max_overflow=8, pool_pre_ping=True,
                               connect_args={"connect_timeout": connect_timeout_s,
                                             "options": f"-c lock_timeout={int(lock_timeout_s * 1000)}"})
        super().__init__(engine, url, clock=clock, attempts=attempts, retry_budget_s=retry_budget_s)

    def _lock_state(self, conn: Connection):
        return conn.execute(select(witness_state).where(witness_state.c.id == STATE_ROW_ID)
                            .with_for_update()).mappings().one()

    def _lock_run(self, conn: Connection, run_id: str) -> bool:
        return conn.execute(select(runbook_runs.c.run_id).where(runbook_runs.c.run_id == run_id)
                            .with_for_update()).first() is not None

    def _lock_schema(self, conn: Connection) -> None:
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})

    def _transient(self, exc: BaseException) -> bool:
        if isinstance(exc, (OperationalError, InterfaceError)):
            return True
        if isinstance(exc, DBAPIError):
            return exc.connection_invalidated or getattr(exc.orig, "sqlstate", None) in TRANSIENT_SQLSTATES \
                or getattr(exc.orig, "sqlstate", None) == "55P03"  # lock_not_available (lock_timeout)
        return False


def psycopg_url(url: str) -> str:
    """postgresql:// and postgres:// mean psycopg 3 here; an explicit driver is kept."""
    parsed = make_url(url.replace("postgres://", "postgresql://", 1) if url.startswith("postgres://") else url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)
