"""Which unit a code names, in which map version, and how to find the records "in" that unit on either map.

A unit code means nothing without its map version (old province 15 was Yên Bái, new 15 is Lào Cai). A map version is
the `valid_from` date of its reference rows (provinces, wards); the site's active one is read only through
:func:`standby.store.orgmap.active_map`.

Contract:
- :func:`resolve_unit` (reads only) finds the map version(s) a code exists in and picks one: the version the caller
  names, else the site's active map when the code exists there (an ambiguous code is read as a code of the active
  map, and the answer says so), else the only version the code exists in. It raises :class:`UnknownUnit` (a sentence
  naming the code) when the code exists in no version (or not in the named one), :class:`UnknownMap` for a map name
  that is not a loaded version.
- :func:`plan_search` (pure) says which codes to look for per map version so that records are found whether they
  carry the old codes (closed declarations keep the map they were declared in) or the new ones: a unit of the active
  map is searched under its own code on the active map and under its predecessors (the active change set's
  `org_successors` rows whose new code is it) on the previous map; a unit of the previous map under its code on the
  previous map, and under the *previous* codes of the records a change set moved off it. The previous-codes match is
  exact where "every successor of the old unit" would not be: a record written after the switch in new Lào Cai may
  lie in old Lào Cai, not in old Yên Bái.
- :func:`unit_filter` turns a :class:`Search` into one SQL condition over a table's code/version columns (bound
  parameters only). A split old ward's closed records are found under each of its successors.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from sqlalchemy import ColumnElement, Connection, and_, false, or_, select

from standby.store.orgmap import MapState, _as_date, active_map
from standby.store.reference import LEGACY_FROM
from standby.store.schema import org_successors, provinces, wards

KINDS = ("province", "ward")
_TABLES = {"province": provinces, "ward": wards}


class UnknownUnit(LookupError):
    """The code names no unit (in the named map version, when one was named). The message is a sentence."""


class UnknownMap(ValueError):
    """The map named is not one of the site's map versions. The message is a sentence naming the known ones."""


# -- map versions: names and dates (pure) ----------------------------------------------------------------------------

def map_label(version: date) -> str:
    """The short name of a map version: 'legacy' for the map before any change set, else its year ('2025')."""
    return "legacy" if version == LEGACY_FROM else str(version.year)


def parse_map(name: str, known: list[date]) -> date:
    """'legacy', a year ('2025') or an ISO date ('2025-07-01') -> one of the `known` versions; UnknownMap otherwise."""
    text = name.strip().lower()
    labels = ", ".join(f"{map_label(v)} ({v.isoformat()})" for v in sorted(known))
    if text == "legacy" and LEGACY_FROM in known:
        return LEGACY_FROM
    matches = [v for v in known if (text.isdigit() and len(text) == 4 and str(v.year) == text
                                    and v != LEGACY_FROM) or v.isoformat() == text]
    if len(matches) != 1:
        raise UnknownMap(f"map {name!r} is not a map version of this site; the versions are {labels}")
    return matches[0]


# -- choosing the version a code is read in (pure) -------------------------------------------------------------------

@dataclass(frozen=True)
class UnitRow:
    """One reference row: a unit as it exists in one map version."""

    kind: str
    code: str
    version: date
    name: str
    province_code: str | None = None  # a ward's province, in the same map version

    def as_dict(self) -> dict:
        out = {"code": self.code, "name": self.name, "map_version": self.version.isoformat(),
               "map": map_label(self.version)}
        if self.province_code is not None:
            out["province_code"] = self.province_code
        return out


@dataclass(frozen=True)
class Choice:
    """The row a code was read as, why ('named', 'active_map' or 'only_version'), and its namesakes elsewhere."""

    unit: UnitRow
    resolved_by: str
    namesakes: tuple[UnitRow, ...]

    def sentence(self) -> str:
        u = self.unit
        head = {"named": f"{u.kind} {u.code} read in the {map_label(u.version)} map, as asked",
                "active_map": f"{u.kind} {u.code} read in the active {map_label(u.version)} map",
                "only_version": f"{u.kind} {u.code} exists only in the {map_label(u.version)} map"}[self.resolved_by]
        others = "; ".join(f"in the {label} map {n.code} is {n.name} (ask with map={label})"
                           for n, label in ((n, map_label(n.version)) for n in self.namesakes) if n.name != u.name)
        return f"{head}: {u.name}" + (f"; {others}" if others else "")


def choose_version(kind: str, code: str, rows: list[UnitRow], active: date, named: date | None = None) -> Choice:
    """Pick the version `code` is read in among the `rows` it exists in (see the module's contract)."""
    by_version = {r.version: r for r in rows}
    if named is not None:
        if named not in by_version:
            where = ", ".join(map_label(v) for v in sorted(by_version)) or "no map version"
            raise UnknownUnit(f"{kind} {_shown(code)} does not exist in the {map_label(named)} map (it exists in "
                              f"{where})")
        chosen, how = by_version[named], "named"
    elif active in by_version:
        chosen, how = by_version[active], "active_map"
    elif by_version:
        chosen, how = by_version[max(by_version)], "only_version"
    else:
        raise UnknownUnit(f"no {kind} with code {_shown(code)} in any map version of this site")
    return Choice(chosen, how, tuple(r for v, r in sorted(by_version.items()) if v != chosen.version))


# -- what to search for (pure) ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Search:
    """Codes per map version to match against records' current codes, and against their previous codes (the codes
    a change set moved them off)."""

    current: tuple[tuple[date, tuple[str, ...]], ...]
    previous: tuple[tuple[date, tuple[str, ...]], ...] = ()

    def as_list(self) -> list[dict]:
        return ([{"codes": "current", "map_version": v.isoformat(), "map": map_label(v), "unit_codes": list(c)}
                 for v, c in self.current] +
                [{"codes": "previous", "map_version": v.isoformat(), "map": map_label(v), "unit_codes": list(c)}
                 for v, c in self.previous])


def plan_search(unit: UnitRow, state: MapState, predecessors: tuple[str, ...]) -> Search:
    """Where records in `unit` are, on either map (see the module's contract). `predecessors`: the active change
    set's old codes whose successors include `unit` (used only when `unit` is of the active map)."""
    previous = state.previous_version if state.changeset_id else None
    if unit.version == state.active_version and previous is not None:
        current = ((unit.version, (unit.code,)),) + (((previous, predecessors),) if predecessors else ())
        return Search(current)
    if previous is not None and unit.version == previous:
        return Search(((unit.version, (unit.code,)),), ((unit.version, (unit.code,)),))
    return Search(((unit.version, (unit.code,)),))


@dataclass(frozen=True)
class Columns:
    """A table's columns holding one kind of unit code: the code, its map version, and the previous pair."""

    code: ColumnElement
    version: ColumnElement
    prev_code: ColumnElement | None = None
    prev_version: ColumnElement | None = None


def unit_filter(search: Search, cols: Columns) -> ColumnElement:
    """One SQL condition: a record matches when its (code, version), or its previous pair, is in the search."""
    terms = [and_(cols.version == v, cols.code.in_(codes)) for v, codes in search.current if codes]
    if cols.prev_code is not None:
        terms += [and_(cols.prev_version == v, cols.prev_code.in_(codes)) for v, codes in search.previous if codes]
    return or_(*terms) if terms else false()


# -- reads -----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Resolution:
    """A code resolved on a site: the choice, the site's map state, the change set's links, and the search plan."""

    choice: Choice
    state: MapState
    predecessors: tuple[str, ...] = ()  # old codes (previous map) that became this unit, when it is of the active map
    successors: tuple[str, ...] = ()  # new codes (active map) this unit became, when it is of the previous map
    search: Search = field(default_factory=lambda: Search(()))

    def as_dict(self) -> dict:
        s = self.state
        out = {"kind": self.choice.unit.kind, **self.choice.unit.as_dict(), "resolved_by": self.choice.resolved_by,
               "message": self.choice.sentence(), "active_map": {
                   "map_version": s.active_version.isoformat(), "map": map_label(s.active_version),
                   "changeset": s.changeset_id},
               "namesakes": [n.as_dict() for n in self.choice.namesakes]}
        if self.predecessors:
            out["predecessors"] = {"map_version": s.previous_version.isoformat(), "map": map_label(s.previous_version),
                                   "codes": list(self.predecessors)}
        if self.successors:
            out["successors"] = {"map_version": s.active_version.isoformat(), "map": map_label(s.active_version),
                                 "codes": list(self.successors)}
        return out


def map_versions(conn: Connection) -> list[date]:
    """The map versions whose reference rows this site holds."""
    return sorted(_as_date(v) for v in conn.execute(select(provinces.c.valid_from).distinct()).scalars())


def unit_rows(conn: Connection, kind: str, code: str) -> list[UnitRow]:
    """Every reference row with this code, one per map version it exists in."""
    if kind not in _TABLES:
        raise UnknownUnit(f"unit kind {kind!r} is not one of {', '.join(KINDS)}")
    table = _TABLES[kind]
    province = table.c.province_code if kind == "ward" else None
    cols = [table.c.code, table.c.valid_from, table.c.name] + ([province] if province is not None else [])
    return [UnitRow(kind, r[0], _as_date(r[1]), r[2], r[3] if province is not None else None)
            for r in conn.execute(select(*cols).where(table.c.code == code))]


def linked_codes(conn: Connection, changeset_id: str, kind: str, code: str, *, forward: bool) -> tuple[str, ...]:
    """The change set's successors of old `code` (forward) or predecessors of new `code`, sorted."""
    known, wanted = ((org_successors.c.old_code, org_successors.c.new_code) if forward
                     else (org_successors.c.new_code, org_successors.c.old_code))
    return tuple(sorted(conn.execute(select(wanted).where(
        org_successors.c.changeset_id == changeset_id, org_successors.c.kind == kind, known == code)).scalars()))


def resolve_unit(conn: Connection, kind: str, code: str, version: date | None = None) -> Resolution:
    """Resolve `code` on this site (see the module's contract); reads only."""
    state = active_map(conn)
    choice = choose_version(kind, code, unit_rows(conn, kind, code), state.active_version, version)
    unit, preds, succs = choice.unit, (), ()
    if state.changeset_id and state.previous_version is not None:
        if unit.version == state.active_version:
            preds = linked_codes(conn, state.changeset_id, kind, code, forward=False)
        elif unit.version == state.previous_version:
            succs = linked_codes(conn, state.changeset_id, kind, code, forward=True)
    return Resolution(choice, state, preds, succs, plan_search(unit, state, preds))


def unit_name(conn: Connection, kind: str, code: str | None, version: date | None) -> str | None:
    """The name of unit `code` in map `version`, or None (no such row, or no code)."""
    if code is None or version is None:
        return None
    table = _TABLES[kind]
    return conn.execute(select(table.c.name).where(table.c.code == code, table.c.valid_from == version)).scalar()



def unit_lines(r: Resolution) -> list[str]:
    """An operator's reading of a resolution, one fact a line (`standbyctl orgchange unit`)."""
    u, s = r.choice.unit, r.state
    lines = [r.choice.sentence(),
             f"  {u.kind} {u.code} in map {map_label(u.version)} ({u.version.isoformat()}): {u.name}"
             + (f", province {u.province_code}" if u.province_code else ""),
             f"  active map: {map_label(s.active_version)} ({s.active_version.isoformat()}), "
             + (f"made active by change set {s.changeset_id}" if s.changeset_id else "no change set applied")]
    lines += [f"  also in map {map_label(n.version)} ({n.version.isoformat()}): {n.code} = {n.name}"
              for n in r.choice.namesakes]
    if r.predecessors:
        lines.append(f"  predecessors in map {map_label(s.previous_version)} (change set {s.changeset_id}): "
                     + ", ".join(r.predecessors))
    if r.successors:
        lines.append(f"  successors in map {map_label(s.active_version)} (change set {s.changeset_id}): "
                     + ", ".join(r.successors))
    lines += [f"  searched: {x['codes']} codes in map {x['map']}: {', '.join(x['unit_codes'])}"
              for x in r.search.as_list()]
    return lines


def _shown(code: str) -> str:
    """A code as an error message quotes it: an oversized one is cut, not echoed whole."""
    return code if len(code) <= 16 else f"{code[:16]}… ({len(code)} characters)"
