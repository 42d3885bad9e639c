"""The witness: the one authority on which site is primary, under which epoch, and who holds the lease.

Written contract for every backend (SQLite file by default, PostgreSQL in production; one backend per file), in the
manner of Patroni's DCS classes. Every method is a short transaction of its own; none holds a lock between calls.

- `state()` returns the current WitnessState (epoch 0 and primary None when nothing was ever initialised).
- `initialise(site_id)` makes `site_id` primary at epoch 1 when the witness is empty and returns the state; on a
  witness that already has a primary it returns the existing state unchanged (the caller compares and refuses).
- `promote(site_id, expected_epoch)` is a compare-and-set: when the current epoch equals `expected_epoch` it sets
  epoch = expected_epoch + 1 and primary = site_id, clears the lease, and returns the new state; otherwise it raises
  StaleEpoch and changes nothing. Every promotion goes through here first: this is what fences the old primary.
  With `lease_expired_by=now` (a failover: the old primary is not frozen and fenced by the caller) the same
  transaction also requires the current lease to be gone at `now` (`cutover.witness.lease.lease_expired`), else
  it raises LeaseHeld and changes nothing: a primary that renewed a moment ago is never replaced under it.
- `renew_lease(site_id, epoch, ttl_s, now)` extends the lease of the current primary under the current epoch and
  returns the state; a site that is not the primary or holds an older epoch gets StaleEpoch.
- Runbook journal: `create_run(run)`, `append(run_id, entry) -> seq` (entries are never updated or deleted; seq
  increases by one per run), `entries(run_id)`, `run(run_id)`, `runs(limit)`, `set_run_status(run_id, status)`.
- Audit of operator actions: `audit(record)` appends; `audit_records(limit)` lists newest first.
- `close()` releases connections.

Backends raise WitnessUnavailable when the store cannot be reached; callers decide whether to retry (tenacity).

Added with the backends (cutover/witness/sqlite.py, postgres.py; common code in base.py), without renaming anything:
- Opening: `cutover.witness.open_witness(url, *, root=None, clock=time.time, migrate=True, **backend_options)`
  picks the backend by scheme (sqlite:///PATH, postgresql://… which means psycopg 3), creates or migrates the
  schema (the witness's own Alembic history, version table `witness_alembic_version`) and returns the witness.
  Relative SQLite paths resolve against `root` (pass `settings.root`), else the working directory. `clock` stamps
  `updated_at` in initialise/promote; renew_lease stamps its own `now`.
- Transient failures (locked, busy, connection refused or lost) are already retried inside every call, briefly and
  with tenacity, before WitnessUnavailable is raised; its message names the store (password hidden) and the reason.
  A write whose commit acknowledgement was lost may be retried: promote then answers StaleEpoch (re-read `state()`);
  an `append` could in that rare case be journalled twice (a reader of the journal should tolerate a repeated entry).
- Refusals that are not about the store: `append`/`set_run_status` on an unknown run and `create_run` with a run id
  that exists raise WitnessError; a site id outside 1..8 characters or a ttl_s <= 0 raises ValueError.
- The journal and the audit are append-only in the database itself (triggers refuse UPDATE and DELETE).
- `runs(limit)` is newest first by started_at; `audit_records(limit)` newest first by insertion order.
- Backend extras, not part of the Protocol: `where` (the URL without its password, for messages), `backend`
  ("sqlite" or "postgresql"), `migrate() -> bool` (True when a migration ran), `schema_revision() -> str | None`.
- Roles for new site databases come from the witness through the pure rule `cutover.witness.roles.initial_role`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class WitnessError(Exception):
    """Base of the witness's errors; the message is for an operator."""


class StaleEpoch(WitnessError):
    """The caller acted on an epoch that is no longer current (another promotion happened first)."""


class LeaseHeld(WitnessError):
    """A promotion that required the current primary's lease to have expired found it still held: nothing changed.
    `holder` and `expires_at` (seconds since the Unix epoch) say whose lease and until when."""

    def __init__(self, message: str, *, holder: str | None = None, expires_at: float | None = None):
        super().__init__(message)
        self.holder, self.expires_at = holder, expires_at


class WitnessUnavailable(WitnessError):
    """The witness store could not be reached or stayed locked."""


@dataclass(frozen=True)
class WitnessState:
    epoch: int
    primary_site: str | None
    lease_holder: str | None = None
    lease_expires_at: float | None = None  # seconds since the Unix epoch
    updated_at: float | None = None


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    runbook: str
    operator: str
    params: dict
    status: str  # a RunStatus value of the runbook engine
    started_at: float
    updated_at: float


@dataclass(frozen=True)
class JournalEntry:
    run_id: str
    seq: int
    step: str  # the step's id in the runbook
    phase: str  # a StepPhase value of the runbook engine (intent, done, failed, rollback_intent, ...)
    at: float
    detail: dict = field(default_factory=dict)


@dataclass(frozen=True)
class AuditRecord:
    at: float
    operator: str
    action: str  # e.g. "runbook.run", "runbook.step", "witness.promote", "db.upgrade"
    target: str  # the site, run id or runbook the action was on
    args: dict
    outcome: str  # "ok", "refused", "failed", ...
    duration_s: float | None = None
    detail: dict = field(default_factory=dict)  # business outcome: requests held, released, refused, ...


class Witness(Protocol):
    def state(self) -> WitnessState: ...

    def initialise(self, site_id: str) -> WitnessState: ...

    def promote(self, site_id: str, expected_epoch: int, *, lease_expired_by: float | None = None
                ) -> WitnessState: ...

    def renew_lease(self, site_id: str, epoch: int, ttl_s: float, now: float) -> WitnessState: ...

    def create_run(self, run: RunRecord) -> None: ...

    def append(self, run_id: str, step: str, phase: str, detail: dict, at: float) -> int: ...

    def entries(self, run_id: str) -> list[JournalEntry]: ...

    def run(self, run_id: str) -> RunRecord | None: ...

    def runs(self, limit: int = 20) -> list[RunRecord]: ...

    def set_run_status(self, run_id: str, status: str, at: float) -> None: ...

    def audit(self, record: AuditRecord) -> None: ...

    def audit_records(self, limit: int = 50) -> list[AuditRecord]: ...

    def close(self) -> None: ...
