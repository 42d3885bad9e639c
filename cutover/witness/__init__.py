"""The witness: epoch, primary and lease, the runbook journal and the audit of operator actions.

`open_witness(url)` picks the backend by the URL's scheme (sqlite:///… → SqliteWitness, postgresql://… →
PostgresWitness), creates or migrates its schema (its own Alembic history, see migrate.py) and returns it. The
contract every backend keeps is in contract.py.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from cutover.witness.contract import (
    AuditRecord,
    JournalEntry,
    LeaseHeld,
    RunRecord,
    StaleEpoch,
    Witness,
    WitnessError,
    WitnessState,
    WitnessUnavailable,
)

__all__ = ["AuditRecord", "JournalEntry", "LeaseHeld", "RunRecord", "StaleEpoch", "Witness", "WitnessError",
           "WitnessState", "WitnessUnavailable", "open_witness"]


def open_witness(url: str, *, root: Path | None = None, clock: Callable[[], float] = time.time,
                 migrate: bool = True, **backend_options) -> Witness:
    """The witness at `url`, its schema created or migrated to the newest revision.

    `root`: relative SQLite paths resolve against it (pass `settings.root`), else against the working directory.
    `clock`: the time written as updated_at by initialise/promote (inject a fake one in tests).
    `migrate=False` skips the migration (a reader that must not write, e.g. a status page) — the schema must exist.
    `backend_options`: passed to the backend (timeouts and retry budget; see sqlite.py / postgres.py).
    Raises WitnessUnavailable when the store cannot be reached, ValueError for a URL no backend serves."""
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme == "sqlite":
        from cutover.witness.sqlite import SqliteWitness

        witness = SqliteWitness(url, root=root, clock=clock, **backend_options)
    elif scheme in ("postgresql", "postgres"):
        from cutover.witness.postgres import PostgresWitness

        witness = PostgresWitness(url, clock=clock, **backend_options)
    else:
        raise ValueError(f"no witness backend for {scheme!r} URLs; use sqlite:///PATH or postgresql://…")
    if migrate:
        try:
            witness.migrate()
        except BaseException:
            witness.close()
            raise
    return witness
