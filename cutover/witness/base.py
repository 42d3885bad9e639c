"""What the SQL backends share: the statements of the contract, retries, and the mapping of rows to records.

A backend (sqlite.py, postgres.py) supplies what differs:
- `_engine`: set up for its database;
- `_lock_state(conn)` / `_lock_run(conn, run_id)`: take the lock that makes a read-then-write a compare-and-set
  (SQLite: nothing more, BEGIN IMMEDIATE already holds the database's write lock; PostgreSQL: SELECT ... FOR UPDATE);
- how a write transaction begins (SQLite: BEGIN IMMEDIATE, chosen by the `witness_write` execution option);
- `_transient(exc)`: which database errors are worth a brief retry (locked, connection refused, ...).

Retries: a transient error is retried with tenacity for a short, bounded time, then raised as WitnessUnavailable
with the store (password hidden) and the reason. A write whose commit acknowledgement was lost may be retried once
more than it ran; promote then answers StaleEpoch (the caller re-reads the state), which is the safe side.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from sqlalchemy import Connection, Engine, func, insert, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from tenacity import Retrying, retry_if_exception, stop_after_attempt, stop_after_delay, wait_exponential

from cutover.witness import migrate
from cutover.witness.contract import (
    AuditRecord,
    JournalEntry,
    LeaseHeld,
    RunRecord,
    StaleEpoch,
    WitnessError,
    WitnessState,
    WitnessUnavailable,
)
from cutover.witness.lease import lease_expired
from cutover.witness.schema import STATE_ROW_ID, audit_log, runbook_journal, runbook_runs, witness_state

T = TypeVar("T")
MAX_SITE_ID = 8  # witness_state.primary_site is String(8), like site_control.site_id


class SqlWitness:
    """The contract (see contract.py) on SQLAlchemy Core. Not to be used directly: open_witness picks a backend."""

    backend = "sql"

    def __init__(self, engine: Engine, url: str, *, clock: Callable[[], float] = time.time, attempts: int = 4,
                 retry_budget_s: float = 5.0):
        self._engine, self._clock = engine, clock
        self._attempts, self._retry_budget_s = attempts, retry_budget_s
        self.where = make_url(url).render_as_string(hide_password=True)

    # --- what a backend supplies -------------------------------------------------------------------------------

    def _lock_state(self, conn: Connection):
        raise NotImplementedError

    def _lock_run(self, conn: Connection, run_id: str) -> bool:
        raise NotImplementedError

    def _lock_schema(self, conn: Connection) -> None:
        """Serialise migrations between processes (inside the write transaction)."""

    def _transient(self, exc: BaseException) -> bool:
        raise NotImplementedError

    # --- plumbing ---------------------------------------------------------------------------------------------

    @contextmanager
    def _tx(self, write: bool) -> Iterator[Connection]:
        with self._engine.connect() as conn:
            if write:
                conn.execution_options(witness_write=True)
            with conn.begin():
                yield conn

    def _call(self, what: str, fn: Callable[[Connection], T], *, write: bool = True) -> T:
        """Run fn in one transaction, retrying transient failures briefly; then WitnessUnavailable."""
        def once() -> T:
            with self._tx(write) as conn:
                return fn(conn)

        retrying = Retrying(stop=stop_after_attempt(self._attempts) | stop_after_delay(self._retry_budget_s),
                            wait=wait_exponential(multiplier=0.05, max=1.0),
                            retry=retry_if_exception(self._transient), reraise=True)
        try:
            return retrying(once)
        except DBAPIError as exc:
            if self._transient(exc):
                lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
                reason = lines[0] if lines else type(exc).__name__
                raise WitnessUnavailable(f"the witness ({self.where}) is unavailable while {what}: {reason}; "
                                         f"gave up after retrying for up to {self._retry_budget_s:g} s") from exc
            raise

    def migrate(self) -> bool:
        """Create or upgrade the witness schema (its own Alembic history). True when a migration ran."""
        def run(conn: Connection) -> bool:
            self._lock_schema(conn)
            return migrate.upgrade_in(conn)
        return self._call("migrating its schema", run)

    def schema_revision(self) -> str | None:
        return self._call("reading its schema revision", migrate.current_revision, write=False)

    # --- epoch, primary, lease ---------------------------------------------------------------------------------

    def state(self) -> WitnessState:
        def read(conn: Connection) -> WitnessState:
            row = conn.execute(select(witness_state).where(witness_state.c.id == STATE_ROW_ID)).mappings().first()
            return _state(row)
        return self._call("reading the state", read, write=False)

    def initialise(self, site_id: str) -> WitnessState:
        _check_site_id(site_id)

        def init(conn: Connection) -> WitnessState:
            row = self._lock_state(conn)
            if row["epoch"] != 0 or row["primary_site"] is not None:
                return _state(row)
            return self._set_state(conn, expected_epoch=0, epoch=1, primary_site=site_id)
        return self._call(f"initialising it with site {site_id}", init)

    def promote(self, site_id: str, expected_epoch: int, *, lease_expired_by: float | None = None) -> WitnessState:
        _check_site_id(site_id)

        def cas(conn: Connection) -> WitnessState:
            row = self._lock_state(conn)
            if row["epoch"] != expected_epoch:
                raise StaleEpoch(f"cannot promote site {site_id}: the witness is at epoch {row['epoch']} "
                                 f"(primary {row['primary_site'] or 'none'}), not {expected_epoch}; another "
                                 f"promotion came first: re-read the state")
            if lease_expired_by is not None and not lease_expired(_state(row), lease_expired_by):
                raise LeaseHeld(f"cannot promote site {site_id}: site {row['lease_holder']} holds the lease until "
                                f"{row['lease_expires_at']:.3f} (now {lease_expired_by:.3f}); it may still be "
                                f"writing", holder=row["lease_holder"], expires_at=row["lease_expires_at"])
            return self._set_state(conn, expected_epoch=expected_epoch, epoch=expected_epoch + 1,
                                   primary_site=site_id)
        return self._call(f"promoting site {site_id}", cas)

    def renew_lease(self, site_id: str, epoch: int, ttl_s: float, now: float) -> WitnessState:
        if not ttl_s > 0:
            raise ValueError(f"a lease needs a positive ttl, not {ttl_s!r}")

        def renew(conn: Connection) -> WitnessState:
            row = self._lock_state(conn)
            if row["primary_site"] != site_id or row["epoch"] != epoch:
                raise StaleEpoch(f"site {site_id} cannot renew the lease under epoch {epoch}: the witness names "
                                 f"{row['primary_site'] or 'no site'} primary at epoch {row['epoch']}")
            conn.execute(update(witness_state).where(witness_state.c.id == STATE_ROW_ID).values(
                lease_holder=site_id, lease_expires_at=now + ttl_s, updated_at=now))
            return _state(self._lock_state(conn))
        return self._call(f"renewing site {site_id}'s lease", renew)

    def _set_state(self, conn: Connection, *, expected_epoch: int, epoch: int, primary_site: str) -> WitnessState:
        # The WHERE repeats the comparison: the row lock makes it true already; the statement stays a CAS by itself.
        done = conn.execute(update(witness_state).where(witness_state.c.id == STATE_ROW_ID,
                                                        witness_state.c.epoch == expected_epoch).values(
            epoch=epoch, primary_site=primary_site, lease_holder=None, lease_expires_at=None,
            updated_at=self._clock()))
        if done.rowcount != 1:
            raise StaleEpoch(f"the witness moved past epoch {expected_epoch} while site {primary_site} was promoted")
        return _state(self._lock_state(conn))

    # --- runbook runs and journal ------------------------------------------------------------------------------

    def create_run(self, run: RunRecord) -> None:
        def create(conn: Connection) -> None:
            conn.execute(insert(runbook_runs).values(
                run_id=run.run_id, runbook=run.runbook, operator=run.operator, params=dict(run.params),
                status=run.status, started_at=run.started_at, updated_at=run.updated_at))
        try:
            self._call(f"creating run {run.run_id}", create)
        except IntegrityError:
            raise WitnessError(f"runbook run {run.run_id} already exists in the witness") from None

    def append(self, run_id: str, step: str, phase: str, detail: dict, at: float) -> int:
        def add(conn: Connection) -> int:
            if not self._lock_run(conn, run_id):
                raise WitnessError(f"no runbook run {run_id} in the witness; create_run first")
            last = conn.execute(select(func.max(runbook_journal.c.seq))
                                .where(runbook_journal.c.run_id == run_id)).scalar()
            seq = (last or 0) + 1
            conn.execute(insert(runbook_journal).values(run_id=run_id, seq=seq, step=step, phase=phase, at=at,
                                                        detail=dict(detail)))
            return seq
        return self._call(f"appending to run {run_id}'s journal", add)

    def entries(self, run_id: str) -> list[JournalEntry]:
        def read(conn: Connection) -> list[JournalEntry]:
            rows = conn.execute(select(runbook_journal).where(runbook_journal.c.run_id == run_id)
                                .order_by(runbook_journal.c.seq)).mappings().all()
            return [JournalEntry(r["run_id"], r["seq"], r["step"], r["phase"], r["at"], dict(r["detail"] or {}))
                    for r in rows]
        return self._call(f"reading run {run_id}'s journal", read, write=False)

    def run(self, run_id: str) -> RunRecord | None:
        def read(conn: Connection) -> RunRecord | None:
            row = conn.execute(select(runbook_runs).where(runbook_runs.c.run_id == run_id)).mappings().first()
            return _run(row) if row else None
        return self._call(f"reading run {run_id}", read, write=False)

    def runs(self, limit: int = 20) -> list[RunRecord]:
        def read(conn: Connection) -> list[RunRecord]:
            rows = conn.execute(select(runbook_runs).order_by(runbook_runs.c.started_at.desc(),
                                                              runbook_runs.c.run_id.desc()).limit(limit))
            return [_run(r) for r in rows.mappings()]
        return self._call("listing runs", read, write=False)

    def set_run_status(self, run_id: str, status: str, at: float) -> None:
        def set_status(conn: Connection) -> None:
            done = conn.execute(update(runbook_runs).where(runbook_runs.c.run_id == run_id)
                                .values(status=status, updated_at=at))
            if done.rowcount != 1:
                raise WitnessError(f"no runbook run {run_id} in the witness")
        self._call(f"setting run {run_id}'s status", set_status)

    # --- audit -------------------------------------------------------------------------------------------------

    def audit(self, record: AuditRecord) -> None:
        self._call(f"auditing {record.action}", lambda conn: conn.execute(insert(audit_log).values(
            at=record.at, operator=record.operator, action=record.action, target=record.target,
            args=dict(record.args), outcome=record.outcome, duration_s=record.duration_s,
            detail=dict(record.detail))))

    def audit_records(self, limit: int = 50) -> list[AuditRecord]:
        def read(conn: Connection) -> list[AuditRecord]:
            # Newest first by insertion order: operators' clocks may disagree, the id does not.
            rows = conn.execute(select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)).mappings()
            return [AuditRecord(r["at"], r["operator"], r["action"], r["target"], dict(r["args"] or {}),
                                r["outcome"], r["duration_s"], dict(r["detail"] or {})) for r in rows]
        return self._call("reading the audit", read, write=False)

    def close(self) -> None:
        self._engine.dispose()


def _state(row) -> WitnessState:
    if row is None:  # only a database migrated by hand could lack the row
        return WitnessState(epoch=0, primary_site=None)
    return WitnessState(epoch=row["epoch"], primary_site=row["primary_site"], lease_holder=row["lease_holder"],
                        lease_expires_at=row["lease_expires_at"], updated_at=row["updated_at"])


def _run(row) -> RunRecord:
    return RunRecord(run_id=row["run_id"], runbook=row["runbook"], operator=row["operator"],
                     params=dict(row["params"] or {}), status=row["status"], started_at=row["started_at"],
                     updated_at=row["updated_at"])


def _check_site_id(site_id: str) -> None:
    if not site_id or len(site_id) > MAX_SITE_ID:
        raise ValueError(f"a site id is 1 to {MAX_SITE_ID} characters, not {site_id!r}")
