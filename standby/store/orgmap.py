"""The map version in force on a site: the one answer to "which map do this site's live records use".

Contract: :func:`active_map` reads the `org_map_state` row (migration 0006) on an open connection and only reads.
A map version is the `valid_from` date of its reference rows (provinces, wards). An org change set's switch writes
the row in the same transaction as the records it moves (cutover.orgchange.switch), and the row replicates, so a
standby reports the version its copy of the records is in.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from sqlalchemy import Connection, select

from standby.store.schema import org_map_state

SCOPE = "site"


@dataclass(frozen=True)
class MapState:
    active_version: date
    changeset_id: str | None  # the change set that made it active (None: the map the site was created on)
    previous_version: date | None
    switched_at: float | None


class NoMapState(LookupError):
    """The database has no org_map_state row: it is not migrated to revision 0006."""


def active_map(conn: Connection, lock: str | None = None) -> MapState:
    """The site's map state. `lock` (PostgreSQL; SQLite's writers are serialized anyway): "share" for a writer whose
    rows depend on the map (the standby's applier moving rows that arrive on an old map), "update" for the switch
    that changes it, so the two never interleave."""
    query = select(org_map_state).where(org_map_state.c.scope == SCOPE)
    if lock is not None:
        query = query.with_for_update(read=lock == "share")
    row = conn.execute(query).mappings().first()
    if row is None:
        raise NoMapState("no org_map_state row: run `standbyctl db upgrade` on this site")
    return MapState(_as_date(row["active_version"]), row["changeset_id"], _as_date(row["previous_version"]),
                    row["switched_at"])


def _as_date(value) -> date | None:
    return date.fromisoformat(value) if isinstance(value, str) else value
