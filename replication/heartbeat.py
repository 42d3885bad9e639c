"""The primary's heartbeat: a row the replicator updates every fraction of a second and that replicates like any
other, so the standby's lag is visible even when no declarations are written.

A heartbeat is a write, so it is written only while the source site is a serving primary, checked in the same
transaction as the write: after a switchover fences the old primary, no beat lands there that the new primary would
never get. A refused beat tells the replicator that its source has retired (see `SourceRetired`)."""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError

from replication.errors import SourceUnavailable

from standby.domain.states import IntakeState, SiteRole
from standby.store.engine import is_sqlite
from standby.store.schema import replication_heartbeat, site_control


@dataclass(frozen=True)
class SourceRetired:
    """The source site's control row as the refused heartbeat found it: no longer a serving primary."""

    site_id: str
    role: str | None  # None: the site has no control row
    intake_state: str | None
    epoch: int | None  # the fencing epoch when fenced (site_control.fenced_epoch), else the row's epoch

    def describe(self) -> str:
        if self.role is None:
            return f"source {self.site_id} has no control row"
        fenced = ("fenced" if self.intake_state == IntakeState.FENCED.value
                  else f"{self.role}, intake {self.intake_state}")
        return f"source {self.site_id} is no longer primary ({fenced} at epoch {self.epoch})"


def serving_primary(role: str | None, intake_state: str | None) -> bool:
    """Pure: a site whose writes still count as the primary's history (a primary that is not fenced; a frozen
    primary still is one, it only holds its clients)."""
    return role == SiteRole.PRIMARY.value and intake_state != IntakeState.FENCED.value


def write_heartbeat(engine: Engine, source: str, now: float) -> SourceRetired | None:
    """Upsert the heartbeat row of site `source` if its control row says it is a serving primary; return None when
    written, SourceRetired (nothing written) when not. On PostgreSQL the control row is read FOR SHARE, so a fence
    (an UPDATE of that row) waits for a beat in flight and a beat after it sees the fence. A database that cannot
    be reached or is locked raises SourceUnavailable (transient: the replicator retries the step)."""
    dialect = sqlite if is_sqlite(engine) else postgresql
    stmt = dialect.insert(replication_heartbeat).values(source=source, at=now, counter=1)
    stmt = stmt.on_conflict_do_update(index_elements=["source"],
                                      set_={"at": now, "counter": replication_heartbeat.c.counter + 1})
    control = select(site_control.c.role, site_control.c.intake_state,
                     func.coalesce(site_control.c.fenced_epoch, site_control.c.epoch)).where(
        site_control.c.site_id == source)
    try:
        return _beat(engine, source, stmt, control)
    except OperationalError as exc:
        raise SourceUnavailable(f"cannot write the heartbeat of site {source}: {exc.orig}") from exc


def _beat(engine: Engine, source: str, stmt, control) -> SourceRetired | None:
    with engine.begin() as conn:  # SQLite writer engines BEGIN IMMEDIATE: the check and the write are one step
        if not is_sqlite(engine):
            control = control.with_for_update(read=True)
            # Logical decoding sees only WAL flushed to disk; a synchronous commit makes the beat (and every commit
            # before it) visible to the stream at once, even where synchronous_commit is off.
            conn.exec_driver_sql("SET LOCAL synchronous_commit = on")
        row = conn.execute(control).first()
        if row is None or not serving_primary(row[0], row[1]):
            return SourceRetired(source, *(tuple(row) if row is not None else (None, None, None)))
        conn.execute(stmt)
    return None
