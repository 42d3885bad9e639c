"""Where an org change set moves a live record's address, for rows that arrive from a primary still on the old map.

A standby that switched to a new map before its primary (the org restructure through a switchover) keeps receiving
the primary's rows with old codes. Its applier moves each live one exactly as the switch moved the records already
there (cutover.orgchange.switch): the default successor of its ward (of its province, for an office), the previous
codes kept beside it, the change set's id in its review column when it landed on a split unit's default. A closed
declaration is applied as it comes (it keeps the codes it was declared with). The same row always moves the same
way, so rows that arrive twice, or out of order between partitions, converge.

Only a standby whose switch said so moves rows (`site_control.org_moves_changeset`, see :func:`moving_changeset`): a
standby that follows its primary's own switch or rollback applies what arrives as it comes.

Contract: :func:`load_moves` reads the active change set's default successors on an open connection (None when the
site's active map came with no change set); :func:`move_row` is pure: the row as the standby stores it, or None when
it stays as it came. Rows are JSON-ready (dates as ISO strings), as replication carries them.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import Connection, select

from standby.domain.states import DeclarationState
from standby.store.orgmap import MapState
from standby.store.schema import org_successors, site_control, wards

OPEN_STATES = frozenset(s.value for s in DeclarationState if not s.is_terminal)


@dataclass(frozen=True)
class Columns:
    province: str
    ward: str | None
    version: str
    prev: tuple[str, str | None, str]
    review: str | None
    live_only: bool  # only records in an open state move (declarations)


MOVABLE: Mapping[str, Columns] = {
    "enterprises": Columns("province_code", "ward_code", "address_valid_from",
                           ("prev_province_code", "prev_ward_code", "prev_address_valid_from"), "address_review",
                           False),
    "declarations": Columns("declarant_province_code", "declarant_ward_code", "declarant_map_version",
                            ("declarant_prev_province_code", "declarant_prev_ward_code", "declarant_prev_map_version"),
                            "declarant_review", True),
    "customs_offices": Columns("province_code", None, "province_map_version",
                               ("prev_province_code", None, "prev_province_map_version"), None, False),
}


@dataclass(frozen=True)
class Moves:
    changeset_id: str
    source: str  # the map version records move from (ISO date)
    target: str  # the active map version (ISO date)
    wards: Mapping[str, tuple[str, str, bool]]  # old ward -> (new ward, its province, needs review)
    provinces: Mapping[str, tuple[str, bool]]  # old province -> (new province, needs review)


# Read in every applied window: built once.
_MOVING_CHANGESET = select(site_control.c.org_moves_changeset).limit(1).with_for_update(read=True)


def moving_changeset(conn: Connection) -> str | None:
    """The change set this site's applier moves arriving rows to (site_control.org_moves_changeset), read under a
    share lock on PostgreSQL: the switch that sets it updates that row first, so a batch sees all or none of it."""
    return conn.execute(_MOVING_CHANGESET).scalar()


def load_moves(conn: Connection, state: MapState) -> Moves | None:
    """The active change set's default successors (None when the active map came with no change set)."""
    if state.changeset_id is None or state.previous_version is None:
        return None
    target = state.active_version
    s = org_successors.c
    rows = conn.execute(select(s.kind, s.old_code, s.new_code, s.needs_review, wards.c.province_code)
                        .select_from(org_successors.outerjoin(wards, (wards.c.code == s.new_code)
                                                              & (wards.c.valid_from == target)
                                                              & (s.kind == "ward")))
                        .where(s.changeset_id == state.changeset_id, s.is_default.is_(True))).all()
    return Moves(state.changeset_id, state.previous_version.isoformat(), target.isoformat(),
                 {old: (new, province, bool(review)) for kind, old, new, review, province in rows if kind == "ward"},
                 {old: (new, bool(review)) for kind, old, new, review, _ in rows if kind == "province"})


def move_row(table: str, row: dict, moves: Moves) -> dict | None:
    """Pure: the row moved to the active map, or None when it stays as it came (not movable, not on the map the
    change set moves from, closed, or on a unit the change set does not map)."""
    columns = MOVABLE.get(table)
    if columns is None or str(row.get(columns.version)) != moves.source:
        return None
    if columns.live_only and row.get("state") not in OPEN_STATES:
        return None
    if columns.ward:
        found = moves.wards.get(row.get(columns.ward))
        if found is None or found[1] is None:
            return None
        new_ward, new_province, review = found
    else:
        found = moves.provinces.get(row.get(columns.province))
        if found is None:
            return None
        (new_province, review), new_ward = found, None
    prev_p, prev_w, prev_v = columns.prev
    moved = dict(row, **{prev_p: row[columns.province], prev_v: row[columns.version],
                         columns.province: new_province, columns.version: moves.target})
    if columns.ward:
        moved[prev_w], moved[columns.ward] = row[columns.ward], new_ward
    if columns.review:
        moved[columns.review] = moves.changeset_id if review else None
    return moved
