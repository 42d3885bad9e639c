"""The site's control row: its role, epoch and intake state. Every write checks it in its own transaction.

The operations a runbook calls (`freeze`, `resume`, `fence`, `promote`) move the row through the transition
tables of `standby.domain.states` under an epoch, each in one transaction, each idempotent when the row is
already where the call would put it (so a runbook resumed after a crash can repeat its last step).

The freeze is a barrier: a clearance batch takes the row with `lock_control_for_batch` (SELECT ... FOR SHARE on
PostgreSQL) at the start of its transaction, and `freeze` takes the table in EXCLUSIVE mode before its UPDATE, so it
waits for every in-flight batch (the drain) and every batch that starts later reads FROZEN. On SQLite every writer
transaction begins with BEGIN IMMEDIATE, which serialises it with the batches the same way.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from sqlalchemy import Connection, Engine, bindparam, insert, select, text, update
from sqlalchemy.exc import OperationalError

from standby.domain.errors import DomainError, StaleEpoch
from standby.domain.states import IntakeState, SiteRole, next_intake_state, next_role
from standby.store.engine import is_sqlite
from standby.store.schema import site_control


@dataclass(frozen=True)
class SiteControl:
    """A site's control row. `drained_s` is not stored: `freeze` sets it on the row it returns to the seconds it
    waited for in-flight batches (0.0 when the call found the row already frozen); None everywhere else."""

    site_id: str
    role: SiteRole
    epoch: int
    intake_state: IntakeState
    primary_site: str | None
    updated_at: float
    frozen_at: float | None = None
    hold_s: float | None = None
    hold_max: int | None = None
    fenced_epoch: int | None = None
    drained_s: float | None = None
    lease_until: float | None = None  # the self-fencing deadline of a primary that keeps a lease (None: no lease)


class EpochMismatch(StaleEpoch):
    """A control-row operation refused because of its epoch: not the row's (freeze, resume) or not newer than the
    row's (fence, promote). Nothing was written. HTTP-wise a 409 with code `epoch_mismatch`."""

    def __init__(self, message: str, *, current_epoch: int, epoch: int):
        super().__init__(message, current_epoch=current_epoch, epoch=epoch, code="epoch_mismatch")


class DrainTimeout(Exception):
    """`freeze` waited longer than its drain timeout for in-flight batches; nothing was written (intake is open)."""


def init_site(engine: Engine, site_id: str, role: SiteRole, primary_site: str | None = None, epoch: int = 1,
              now: float | None = None) -> SiteControl:
    """Create the control row if the database has none; an existing row is left as it is and returned."""
    existing = read_control(engine, site_id)
    if existing:
        return existing
    primary = site_id if role is SiteRole.PRIMARY else primary_site
    with engine.begin() as conn:
        conn.execute(insert(site_control).values(
            site_id=site_id, role=role.value, epoch=epoch, intake_state=IntakeState.OPEN.value, primary_site=primary,
            updated_at=now if now is not None else time.time()))
    return read_control(engine, site_id)


def read_control(engine: Engine, site_id: str) -> SiteControl | None:
    with engine.connect() as conn:
        return _read(conn, site_id)


def lock_control_for_batch(conn: Connection, site_id: str) -> SiteControl | None:
    """The control row, read inside a clearance batch's transaction as its first statement. On PostgreSQL the row
    is taken FOR SHARE, held until the batch commits: `freeze` waits for it, and a batch that starts after a freeze
    committed sees FROZEN. (On SQLite the batch's BEGIN IMMEDIATE already holds the database's write lock.)"""
    return _read(conn, site_id, share=not is_sqlite(conn.engine))


# Built once: every clearance batch starts with this read (see standby.store.reads on what building once saves).
_CONTROL = select(site_control).where(site_control.c.site_id == bindparam("site_id"))
_CONTROL_SHARED = _CONTROL.with_for_update(read=True)


def _read(conn: Connection, site_id: str, *, share: bool = False) -> SiteControl | None:
    row = conn.execute(_CONTROL_SHARED if share else _CONTROL, {"site_id": site_id}).mappings().first()
    if row is None:
        return None
    return SiteControl(row["site_id"], SiteRole(row["role"]), row["epoch"], IntakeState(row["intake_state"]),
                       row["primary_site"], row["updated_at"], row["frozen_at"], row["hold_s"], row["hold_max"],
                       row["fenced_epoch"], lease_until=row["lease_until"])


def _existing(conn: Connection, site_id: str) -> SiteControl:
    control = _read(conn, site_id)
    if control is None:
        raise LookupError(f"site {site_id} has no control row; run `standbyctl db upgrade`")
    return control


def _write(conn: Connection, site_id: str, now: float | None, **values) -> None:
    conn.execute(update(site_control).where(site_control.c.site_id == site_id).values(
        updated_at=now if now is not None else time.time(), **values))


def _epoch_guard(what: str, site_id: str, current: int, epoch: int, *, newer: bool) -> None:
    ok = epoch > current if newer else epoch == current
    if not ok:
        needed = f"an epoch newer than {current}" if newer else f"epoch {current}"
        raise EpochMismatch(f"{what} of site {site_id} needs {needed}, not epoch {epoch}",
                            current_epoch=current, epoch=epoch)


def _transition(what: str, site_id: str, fn, *args, **kwargs):
    """A domain transition whose stale epoch is reported as this module's EpochMismatch."""
    try:
        return fn(*args, **kwargs)
    except EpochMismatch:
        raise
    except StaleEpoch as err:
        raise EpochMismatch(f"{what} of site {site_id}: {err.refusal.message}", current_epoch=err.current_epoch,
                            epoch=err.epoch) from None


def freeze(engine: Engine, site_id: str, *, epoch: int, hold_s: float, hold_max: int, now: float | None = None,
           drain_timeout_s: float = 30.0, clock: Callable[[], float] = time.perf_counter) -> SiteControl:
    """Freeze intake (OPEN → FROZEN) at the primary under `epoch`, once every in-flight batch has committed.

    `engine` must be a writer engine (`make_engine(url)`). Returns the frozen row with `drained_s`, the seconds
    spent waiting for in-flight batches. After it returns, no batch commits until `resume`: the API holds writes up
    to `hold_s` seconds and `hold_max` requests. Idempotent when already frozen under `epoch` (the first freeze's
    bounds and start stand). Raises EpochMismatch if the row's epoch is not `epoch`, DomainError `not_primary` for a
    standby, IllegalTransition for a fenced site, DrainTimeout if batches did not finish in `drain_timeout_s`,
    LookupError without a row."""
    if hold_s <= 0 or hold_max < 1:
        raise ValueError(f"a freeze needs hold_s > 0 and hold_max >= 1, not {hold_s} and {hold_max}")
    started = clock()
    try:
        with engine.begin() as conn:  # on SQLite BEGIN IMMEDIATE: waiting here for the write lock is the drain
            _drain(conn, drain_timeout_s)
            drained = clock() - started
            current = _existing(conn, site_id)
            if current.role is not SiteRole.PRIMARY:
                raise DomainError("not_primary", f"site {site_id} is a standby; only a primary is frozen", status=409)
            _epoch_guard("a freeze", site_id, current.epoch, epoch, newer=False)
            if current.intake_state is IntakeState.FROZEN:
                return replace(current, drained_s=0.0)
            _transition("a freeze", site_id, next_intake_state, current.intake_state, IntakeState.FROZEN,
                        current_epoch=current.epoch, epoch=epoch)
            at = now if now is not None else time.time()
            _write(conn, site_id, at, intake_state=IntakeState.FROZEN.value, frozen_at=at, hold_s=hold_s,
                   hold_max=hold_max)
    except OperationalError as exc:
        if _is_lock_timeout(exc):
            raise DrainTimeout(f"site {site_id}: in-flight batches did not finish within {drain_timeout_s} s; "
                               f"intake stays open") from exc
        raise
    return replace(read_control(engine, site_id), drained_s=drained)


def _drain(conn: Connection, timeout_s: float) -> None:
    """Wait for in-flight batches on PostgreSQL. EXCLUSIVE conflicts with the ROW SHARE lock each batch's FOR SHARE
    takes, not with plain reads; a table lock rather than the row's FOR UPDATE because table locks queue fairly:
    batches arriving meanwhile wait behind the freeze instead of starving it with overlapping share locks."""
    if is_sqlite(conn.engine):
        return
    conn.execute(text("SELECT set_config('lock_timeout', :ms, true)"), {"ms": f"{max(1, int(timeout_s * 1000))}ms"})
    conn.execute(text("LOCK TABLE site_control IN EXCLUSIVE MODE"))


def _is_lock_timeout(exc: OperationalError) -> bool:
    return getattr(exc.orig, "sqlstate", None) == "55P03" or "database is locked" in str(exc.orig)


def resume(engine: Engine, site_id: str, *, epoch: int, now: float | None = None) -> SiteControl:
    """Open intake (FROZEN → OPEN) under the row's own `epoch` and clear the freeze. Idempotent when already open
    under `epoch`. Raises EpochMismatch for another epoch (a fenced site is never resumed: it needs a promotion),
    IllegalTransition for a standby, LookupError without a row."""
    with engine.begin() as conn:
        current = _existing(conn, site_id)
        _epoch_guard("a resume", site_id, current.epoch, epoch, newer=False)
        if current.intake_state is IntakeState.OPEN and current.role is SiteRole.PRIMARY:
            return current
        _transition("a resume", site_id, next_intake_state, current.intake_state, IntakeState.OPEN,
                    current_epoch=current.epoch, epoch=epoch)
        if current.role is not SiteRole.PRIMARY:
            raise DomainError("not_primary", f"site {site_id} is a standby; promote it first", status=409)
        _write(conn, site_id, now, intake_state=IntakeState.OPEN.value, frozen_at=None, hold_s=None, hold_max=None)
    return read_control(engine, site_id)


def fence(engine: Engine, site_id: str, *, epoch: int, primary_site: str, now: float | None = None) -> SiteControl:
    """Fence this site (the old primary) because the witness moved to `epoch` with `primary_site` as primary: intake
    FENCED, role standby, `primary_site` the new primary, `fenced_epoch` = `epoch`; `epoch` (the one it was promoted
    under) is kept. Idempotent when already fenced by `epoch`; a fenced site fenced again by a newer epoch records
    it. Clears `lease_until` (a standby keeps no lease). Raises EpochMismatch for an epoch not newer than the row's
    (or than the fencing already recorded)."""
    with engine.begin() as conn:
        current = _existing(conn, site_id)
        if current.intake_state is IntakeState.FENCED and current.fenced_epoch == epoch:
            return current
        _epoch_guard("fencing", site_id, max(current.epoch, current.fenced_epoch or 0), epoch, newer=True)
        if current.intake_state is not IntakeState.FENCED:
            _transition("fencing", site_id, next_intake_state, current.intake_state, IntakeState.FENCED,
                        current_epoch=current.epoch, epoch=epoch)
        if current.role is SiteRole.PRIMARY:
            next_role(current.role, SiteRole.STANDBY, current_epoch=current.epoch, epoch=epoch)
        _write(conn, site_id, now, intake_state=IntakeState.FENCED.value, role=SiteRole.STANDBY.value,
               primary_site=primary_site, fenced_epoch=epoch, frozen_at=None, hold_s=None, hold_max=None,
               lease_until=None)
    return read_control(engine, site_id)


def promote(engine: Engine, site_id: str, *, epoch: int, now: float | None = None, hold_s: float | None = None,
            hold_max: int | None = None) -> SiteControl:
    """Make this standby (or fenced site) the primary at `epoch`, with intake FROZEN until `resume` (the API holds
    writes meanwhile, within `hold_s`/`hold_max` if given, else its defaults). `epoch` must be newer than the row's
    epoch and than any fencing recorded. Clears `lease_until`: a new primary starts without a lease, and so
    without lease discipline, until its lease keeper (standby.lease) first renews in the witness and writes one.
    Idempotent when already primary at `epoch`. Raises EpochMismatch,
    IllegalTransition (a primary at another epoch is not promoted again), LookupError without a row."""
    with engine.begin() as conn:
        current = _existing(conn, site_id)
        if current.role is SiteRole.PRIMARY and current.epoch == epoch:
            return current
        _epoch_guard("a promotion", site_id, max(current.epoch, current.fenced_epoch or 0), epoch, newer=True)
        next_role(current.role, SiteRole.PRIMARY, current_epoch=current.epoch, epoch=epoch)
        _transition("a promotion", site_id, next_intake_state, current.intake_state, IntakeState.FROZEN,
                    current_epoch=current.epoch, epoch=epoch)
        at = now if now is not None else time.time()
        _write(conn, site_id, at, role=SiteRole.PRIMARY.value, epoch=epoch, intake_state=IntakeState.FROZEN.value,
               primary_site=site_id, fenced_epoch=None, frozen_at=at, hold_s=hold_s, hold_max=hold_max,
               lease_until=None)
    return read_control(engine, site_id)


def set_lease(engine: Engine, site_id: str, *, epoch: int, until: float, now: float | None = None) -> SiteControl:
    """Write the self-fencing deadline `until` (`lease_until`) of this site, the primary at `epoch`, after a lease
    renewal in the witness. Written only when the row is PRIMARY at `epoch` and not fenced; otherwise nothing is
    written and the row is returned as it is (the caller compares: a row that moved on, promoted again or fenced, is
    no one's to extend). Raises LookupError without a row. The deadline is written as given, even when earlier
    than the one stored: a shorter deadline is the safe side, and renewals are written in the order they started."""
    with engine.begin() as conn:
        current = _existing(conn, site_id)
        if current.role is not SiteRole.PRIMARY or current.epoch != epoch or \
                current.intake_state is IntakeState.FENCED:
            return current
        _write(conn, site_id, now, lease_until=until)
    return read_control(engine, site_id)


def set_intake(engine: Engine, site_id: str, target: IntakeState, now: float | None = None) -> SiteControl:
    """Move intake through its transition table under the row's own epoch (an operator's manual freeze or resume;
    a move that needs a newer epoch raises EpochMismatch before anything is written)."""
    with engine.begin() as conn:
        current = _existing(conn, site_id)
        _transition("an intake change", site_id, next_intake_state, current.intake_state, target,
                    current_epoch=current.epoch, epoch=current.epoch)
        values = {"frozen_at": now if now is not None else time.time()} if target is IntakeState.FROZEN else \
            {"frozen_at": None, "hold_s": None, "hold_max": None}
        _write(conn, site_id, now, intake_state=target.value, **values)
    return read_control(engine, site_id)
