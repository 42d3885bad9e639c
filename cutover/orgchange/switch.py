"""Apply an org change set to a site's records: prepare online, switch in one short transaction, roll back.

Contract (all on the primary's database; what they write replicates like any other write, except `org_remap`):
- :func:`prepare` loads the change set's successors into `org_successors` and computes, for every live record on the
  site's active map (enterprises' addresses, open declarations' declarant address, customs offices' provinces), the
  codes the change set moves it to, into `org_remap` beside the record. It runs while intake runs; run again, it
  refreshes what changed. Nothing a client reads changes.
- :func:`switch` (intake frozen) re-maps what changed since the preparation (the delta), checks (:func:`check`:
  every live record resolves to a unit of the target map; the records per new unit are the sum of its
  predecessors'; the prepared rows are exactly the live records), then moves the records, keeping their previous
  codes beside them, and makes the target map active, all in one transaction: it happens whole or not at all.
  Closed declarations are never rewritten. Switching a change set that is already active does nothing.
- :func:`rollback` (intake frozen) puts back the previous codes of every record the change set moved and makes the
  previous map active, in one transaction. Switching again afterwards gives the same records as the first switch.
Records landing on the default successor of a split unit carry the change set's id in their review column.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date

from sqlalchemy import Connection, Date, Engine, bindparam, delete, insert, select, text, update

from cutover.orgchange.resolve import Resolver, UnknownCode
from cutover.orgchange.spec import ChangeSet, UnitKind
from standby.domain.states import DeclarationState
from standby.store.orgmap import SCOPE, MapState, active_map
from standby.store.schema import org_map_state, org_successors, site_control

__all__ = ["AlreadyActive", "SwitchRefused", "SwitchReport", "check", "prepare", "rollback", "stop_moving", "switch",
           "target_version"]

OPEN_STATES = tuple(s.value for s in DeclarationState if not s.is_terminal)


class SwitchRefused(Exception):
    """The change set cannot be switched (or rolled back) on this site; nothing was changed. The message says why."""


class AlreadyActive(SwitchRefused):
    """The change set is already the site's active map."""


@dataclass(frozen=True)
class Record:
    """One kind of live record: its table, key, address columns, map-version column and what makes it live."""

    name: str
    table: str
    key: str
    province: str
    ward: str | None
    version: str
    prev: tuple[str, str | None, str]  # previous province, ward, version columns
    review: str | None
    live: str  # extra SQL condition for a record to be live ('' = all)


RECORDS = (
    Record("enterprise", "enterprises", "tax_code", "province_code", "ward_code", "address_valid_from",
           ("prev_province_code", "prev_ward_code", "prev_address_valid_from"), "address_review", ""),
    Record("declaration", "declarations", "base", "declarant_province_code", "declarant_ward_code",
           "declarant_map_version",
           ("declarant_prev_province_code", "declarant_prev_ward_code", "declarant_prev_map_version"),
           "declarant_review", "AND t.state IN :open_states"),
    Record("office", "customs_offices", "code", "province_code", None, "province_map_version",
           ("prev_province_code", None, "prev_province_map_version"), None, ""),
)


@dataclass
class SwitchReport:
    changeset_id: str
    source_version: date
    target_version: date
    prepared: dict[str, int] = field(default_factory=dict)  # records per kind in org_remap after this call
    delta: dict[str, int] = field(default_factory=dict)  # records (re)computed by this call
    moved: dict[str, int] = field(default_factory=dict)
    flagged: dict[str, int] = field(default_factory=dict)  # moved onto a split unit's default successor
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"changeset": self.changeset_id, "from": self.source_version.isoformat(),
                "to": self.target_version.isoformat(), "prepared": self.prepared, "delta": self.delta,
                "moved": self.moved, "flagged": self.flagged, "seconds": round(self.seconds, 3)}


def target_version(changeset: ChangeSet) -> date:
    """The target map's version: the change set's effective date (its reference rows' valid_from)."""
    return changeset.manifest.effective_at.date()


def prepare(engine: Engine, changeset: ChangeSet, clock=time.monotonic) -> SwitchReport:
    """Online: load the successors and compute every live record's new codes into org_remap (see the module)."""
    started = clock()
    with engine.begin() as conn:
        state = _refuse_unless_switchable(conn, changeset)
        _load_successors(conn, changeset, replace=True)
        _analyze(conn, "org_successors")
    report = SwitchReport(changeset.manifest.id, state.active_version, target_version(changeset))
    for record in RECORDS:  # one transaction per kind: intake waits on none of them for long
        with engine.begin() as conn:
            report.delta[record.name] = _remap(conn, record, report, only_changed=False)
            report.prepared[record.name] = _count_prepared(conn, record, report)
    with engine.begin() as conn:
        _analyze(conn, "org_remap")
    report.seconds = clock() - started
    return report


def switch(engine: Engine, changeset: ChangeSet, resolver: Resolver, now: float, *,
           ahead_of_primary: bool = False, clock=time.monotonic) -> SwitchReport:
    """Intake frozen: the delta, the check, the move and the new active version in one transaction.

    `ahead_of_primary`: the site is a standby whose primary stays on the old map for now (the restructure through a
    switchover); its applier then moves every live row that still arrives on the old map the same way
    (standby.store.address_moves), from this transaction on."""
    started = clock()
    with engine.begin() as conn:
        # First: on PostgreSQL this waits for the applier's batch in flight and holds off the next.
        _set_moving(conn, changeset.manifest.id if ahead_of_primary else None)
        state = _refuse_unless_switchable(conn, changeset)
        report = SwitchReport(changeset.manifest.id, state.active_version, target_version(changeset))
        _load_successors(conn, changeset, replace=False)  # loaded by prepare; here only if it never ran
        for record in RECORDS:
            report.delta[record.name] = _remap(conn, record, report, only_changed=True)
            report.prepared[record.name] = _count_prepared(conn, record, report)
        problems = check(conn, report, resolver)
        if problems:
            raise SwitchRefused("the check refused the switch (nothing changed):\n  " + "\n  ".join(problems[:20]))
        for record in RECORDS:
            report.moved[record.name], report.flagged[record.name] = _move(conn, record, report)
        conn.execute(update(org_map_state).where(org_map_state.c.scope == SCOPE).values(
            active_version=report.target_version, changeset_id=report.changeset_id,
            previous_version=report.source_version, switched_at=now))
    report.seconds = clock() - started
    return report


def rollback(engine: Engine, changeset: ChangeSet, now: float, clock=time.monotonic) -> SwitchReport:
    """Intake frozen: every record the change set moved gets its previous codes back; the previous map is active."""
    started = clock()
    with engine.begin() as conn:
        state = active_map(conn, lock="update")
        if state.changeset_id != changeset.manifest.id or state.previous_version is None:
            raise SwitchRefused(f"change set {changeset.manifest.id} is not the site's active map (active: "
                                f"{state.active_version} from {state.changeset_id or 'the site creation'}): "
                                f"nothing to roll back")
        report = SwitchReport(changeset.manifest.id, state.active_version, state.previous_version)
        _set_moving(conn, None)
        for record in RECORDS:
            report.moved[record.name] = _restore(conn, record, source=state.active_version,
                                                 target=state.previous_version)
        conn.execute(update(org_map_state).where(org_map_state.c.scope == SCOPE).values(
            active_version=state.previous_version, changeset_id=None, previous_version=None, switched_at=now))
    report.seconds = clock() - started
    return report


def check(conn: Connection, report: SwitchReport, resolver: Resolver) -> list[str]:
    """The switch's check, as sentences (none: it may switch). Reads only."""
    problems = []
    params = _params(report)
    for record in RECORDS:
        ward = " OR r.new_ward_code IS NULL" if record.ward else ""
        rows = conn.execute(text(
            f"SELECT r.record_key, r.old_province_code, r.old_ward_code FROM org_remap r "
            f"WHERE r.changeset_id = :cs AND r.record = :record AND (r.new_province_code IS NULL{ward}) LIMIT 5"),
            {**params, "record": record.name}).all()
        problems += [f"{record.name} {key}: province {p}" + (f" ward {w}" if w else "") + " resolves to no unit of "
                     f"map {report.target_version}" for key, p, w in rows]
        live = _live_count(conn, record, report)
        if live != report.prepared[record.name]:
            problems.append(f"{record.name}s: {live:,} live on map {report.source_version} but "
                            f"{report.prepared[record.name]:,} prepared")
        problems += _sums_differ(conn, record, report, resolver)
        if record.ward:
            problems += [f"{record.name} {key}: ward {w} moves to ward {nw} in province {np}, which is not a successor "
                         f"of its province {p}" for key, p, w, np, nw in conn.execute(text(
                             "SELECT r.record_key, r.old_province_code, r.old_ward_code, r.new_province_code, "
                             "r.new_ward_code FROM org_remap r WHERE r.changeset_id = :cs AND r.record = :record "
                             "AND r.new_province_code IS NOT NULL AND NOT EXISTS (SELECT 1 FROM org_successors s "
                             "WHERE s.changeset_id = :cs AND s.kind = 'province' AND s.old_code = r.old_province_code "
                             "AND s.new_code = r.new_province_code) LIMIT 5"), {"cs": report.changeset_id,
                                                                               "record": record.name})]
    return problems


# -- the SQL ---------------------------------------------------------------------------------------------------------

def _params(report: SwitchReport) -> dict:
    return {"cs": report.changeset_id, "source": report.source_version, "target": report.target_version,
            "open_states": list(OPEN_STATES)}


def _text(sql: str):
    """A statement whose :source/:target are dates and :open_states an IN list (each bound only where it occurs)."""
    kinds = {"source": {"type_": Date}, "target": {"type_": Date}, "open_states": {"expanding": True}}
    return text(sql).bindparams(*(bindparam(name, **kw) for name, kw in kinds.items() if f":{name}" in sql))


def _remap(conn: Connection, record: Record, report: SwitchReport, *, only_changed: bool) -> int:
    """Upsert org_remap rows for the record kind's live records on the source map (only those whose codes differ
    from their prepared row, or that have none, when `only_changed`); return how many."""
    if record.ward:  # the new ward is the old ward's default successor; its province is the new province
        old_ward, new = f"t.{record.ward}", "w.province_code, s.code"
        joins = (f"LEFT JOIN (SELECT old_code, new_code AS code, needs_review FROM org_successors WHERE "
                 f"changeset_id = :cs AND kind = 'ward' AND is_default = :yes) s ON s.old_code = t.{record.ward} "
                 f"LEFT JOIN wards w ON w.code = s.code AND w.valid_from = :target")
    else:
        old_ward, new = "NULL", "p.code, NULL"
        joins = (f"LEFT JOIN (SELECT old_code, new_code AS code, needs_review FROM org_successors WHERE "
                 f"changeset_id = :cs AND kind = 'province' AND is_default = :yes) s "
                 f"ON s.old_code = t.{record.province} "
                 f"LEFT JOIN provinces p ON p.code = s.code AND p.valid_from = :target")
    changed = ""
    if only_changed:
        same_ward = f" AND r.old_ward_code = t.{record.ward}" if record.ward else ""
        changed = (f"AND NOT EXISTS (SELECT 1 FROM org_remap r WHERE r.changeset_id = :cs AND r.record = :record "
                   f"AND r.record_key = t.{record.key} AND r.old_province_code = t.{record.province}{same_ward} "
                   f"AND r.old_version = t.{record.version})")
    sql = (f"INSERT INTO org_remap (changeset_id, record, record_key, old_province_code, old_ward_code, old_version, "
           f"new_province_code, new_ward_code, review) "
           f"SELECT CAST(:cs AS VARCHAR(64)), CAST(:record AS VARCHAR(12)), t.{record.key}, t.{record.province}, {old_ward}, t.{record.version}, {new}, "
           f"COALESCE(s.needs_review, :no) FROM {record.table} t {joins} "
           f"WHERE t.{record.version} = :source {record.live} {changed} "
           f"ON CONFLICT (changeset_id, record, record_key) DO UPDATE SET "
           f"old_province_code = excluded.old_province_code, old_ward_code = excluded.old_ward_code, "
           f"old_version = excluded.old_version, new_province_code = excluded.new_province_code, "
           f"new_ward_code = excluded.new_ward_code, review = excluded.review")
    result = conn.execute(_text(sql), {**_params(report), "record": record.name, "yes": True, "no": False})
    return result.rowcount


def _count_prepared(conn: Connection, record: Record, report: SwitchReport) -> int:
    """Prepared rows that match a live record's current codes (a record closed or moved since is not counted)."""
    same_ward = f" AND r.old_ward_code = t.{record.ward}" if record.ward else ""
    return conn.execute(_text(
        f"SELECT count(*) FROM org_remap r JOIN {record.table} t ON t.{record.key} = r.record_key "
        f"WHERE r.changeset_id = :cs AND r.record = :record AND t.{record.version} = :source {record.live} "
        f"AND r.old_province_code = t.{record.province}{same_ward} AND r.old_version = t.{record.version}"),
        {**_params(report), "record": record.name}).scalar_one()


def _live_count(conn: Connection, record: Record, report: SwitchReport) -> int:
    return conn.execute(_text(f"SELECT count(*) FROM {record.table} t WHERE t.{record.version} = :source "
                              f"{record.live}"), _params(report)).scalar_one()


def _sums_differ(conn: Connection, record: Record, report: SwitchReport, resolver: Resolver) -> list[str]:
    """Records per new unit from the prepared rows against the sum over its predecessors of the live records per
    old unit, mapped by the change set's rows in Python (an independent path to the same numbers)."""
    column, kind = (record.ward, UnitKind.WARD) if record.ward else (record.province, UnitKind.PROVINCE)
    new_column = "new_ward_code" if record.ward else "new_province_code"
    old_counts = conn.execute(_text(f"SELECT t.{column}, count(*) FROM {record.table} t WHERE t.{record.version} = "
                                    f":source {record.live} GROUP BY t.{column}"), _params(report)).all()
    expected: Counter = Counter()
    problems = []
    for code, n in old_counts:
        try:
            expected[resolver.resolve(kind, code).default_successor] += n
        except UnknownCode as exc:
            problems.append(f"{record.name}s: {n:,} on {exc}")
    same_ward = f" AND r.old_ward_code = t.{record.ward}" if record.ward else ""
    prepared = Counter(dict(conn.execute(_text(
        f"SELECT r.{new_column}, count(*) FROM org_remap r JOIN {record.table} t ON t.{record.key} = r.record_key "
        f"WHERE r.changeset_id = :cs AND r.record = :record AND t.{record.version} = :source {record.live} "
        f"AND r.old_province_code = t.{record.province}{same_ward} GROUP BY r.{new_column}"),
        {**_params(report), "record": record.name}).all()))
    for code in sorted(set(expected) | set(prepared), key=str):
        if expected[code] != prepared[code]:
            problems.append(f"{record.name}s on new {kind.value} {code}: {prepared[code]:,} prepared, "
                            f"{expected[code]:,} from its predecessors")
    return problems


def _move(conn: Connection, record: Record, report: SwitchReport) -> tuple[int, int]:
    """Move the kind's live records to their prepared codes, keeping the previous ones; (moved, flagged)."""
    prev_p, prev_w, prev_v = record.prev
    sets = [f"{prev_p} = {record.province}", f"{prev_v} = {record.version}",
            f"{record.province} = r.new_province_code", f"{record.version} = :target"]
    if record.ward:
        sets += [f"{prev_w} = {record.ward}", f"{record.ward} = r.new_ward_code"]
    if record.review:
        sets.append(f"{record.review} = CASE WHEN r.review = :yes THEN CAST(:cs AS VARCHAR(64)) ELSE NULL END")
    same_ward = f" AND r.old_ward_code = t.{record.ward}" if record.ward else ""
    sql = (f"UPDATE {record.table} AS t SET {', '.join(sets)} FROM org_remap r "
           f"WHERE r.changeset_id = :cs AND r.record = :record AND r.record_key = t.{record.key} "
           f"AND t.{record.version} = :source {record.live} AND r.old_province_code = t.{record.province}{same_ward}")
    moved = conn.execute(_text(sql), {**_params(report), "record": record.name, "yes": True}).rowcount
    flagged = 0
    if record.review:
        flagged = conn.execute(_text(f"SELECT count(*) FROM {record.table} t WHERE t.{record.review} = :cs "
                                     f"AND t.{record.version} = :target"), _params(report)).scalar_one()
    return moved, flagged


def _restore(conn: Connection, record: Record, *, source: date, target: date) -> int:
    """Give back the previous codes of every record moved from map `target` to map `source` (a rollback)."""
    prev_p, prev_w, prev_v = record.prev
    sets = [f"{record.province} = {prev_p}", f"{record.version} = {prev_v}", f"{prev_p} = NULL", f"{prev_v} = NULL"]
    if record.ward:
        sets += [f"{record.ward} = {prev_w}", f"{prev_w} = NULL"]
    if record.review:
        sets.append(f"{record.review} = NULL")
    sql = (f"UPDATE {record.table} SET {', '.join(sets)} "
           f"WHERE {record.version} = :source AND {prev_v} = :target")
    return conn.execute(_text(sql), {"source": source, "target": target}).rowcount


def stop_moving(engine: Engine) -> None:
    """The site's applier stops moving arriving rows (the restructure through a switchover is over)."""
    with engine.begin() as conn:
        _set_moving(conn, None)


def _analyze(conn: Connection, *tables: str) -> None:
    """PostgreSQL: fresh statistics after a bulk load, or the planner joins ten thousand successors by scanning them
    once per record (seconds for a few hundred records)."""
    if conn.dialect.name == "postgresql":
        for table in tables:
            conn.exec_driver_sql(f"ANALYZE {table}")


def _set_moving(conn: Connection, changeset_id: str | None) -> None:
    query = update(site_control).values(org_moves_changeset=changeset_id)
    if changeset_id is None:  # touches (and locks) no row unless one is set
        query = query.where(site_control.c.org_moves_changeset.is_not(None))
    conn.execute(query)


def _load_successors(conn: Connection, changeset: ChangeSet, *, replace: bool) -> None:
    """The change set's successor rows, replacing any loaded before under its id (or, unless `replace`, keeping
    them: the freeze does not rewrite ten thousand replicated rows that have not changed)."""
    mine = org_successors.c.changeset_id == changeset.manifest.id
    if not replace and conn.execute(select(org_successors.c.kind).where(mine).limit(1)).first() is not None:
        return
    rows = [{"changeset_id": changeset.manifest.id, "kind": kind.value, "old_code": r.old_code, "new_code": code,
             "is_default": code == r.default_successor, "needs_review": r.needs_review and code == r.default_successor}
            for kind, unit_rows in changeset.rows.items() for r in unit_rows for code in r.successors]
    conn.execute(delete(org_successors).where(mine))
    conn.execute(insert(org_successors), rows)


def _refuse_unless_switchable(conn: Connection, changeset: ChangeSet) -> MapState:
    state = active_map(conn, lock="update")
    target = target_version(changeset)
    if state.active_version == target:
        raise AlreadyActive(f"map {target} is already active on this site (change set "
                            f"{state.changeset_id or 'none'})")
    if state.active_version > target:
        raise SwitchRefused(f"the site's active map {state.active_version} is newer than change set "
                            f"{changeset.manifest.id}'s target {target}")
    return state
