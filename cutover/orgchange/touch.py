"""What a change set would touch on a site: read-only counts per old unit, and a pure summary of them.

Contract: :func:`read_touch` runs only SELECTs (group-by counts) on a site's database and returns, per kind, old unit
code -> :class:`UnitTouch`. Counted: enterprises whose address is in the change set's source map
(``address_valid_from`` before the effective date), open declarations (state not terminal) by the declarant's address
as declared (``declarant_map_version`` before the effective date), customs offices on the source map by their
province, and their officers (provinces only; offices have no ward). :func:`touch_lines` turns that into
report lines, per province and per fate, and names codes found on the site that the change set does not map.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, fields
from datetime import date

from sqlalchemy import Engine, func, select

from cutover.orgchange.spec import ChangeSet, Fate, UnitKind
from standby.domain.states import DeclarationState
from standby.store.schema import customs_offices, declarations, enterprises, officers

__all__ = ["UnitTouch", "read_touch", "touch_lines"]


@dataclass
class UnitTouch:
    enterprises: int = 0
    open_declarations: int = 0
    offices: int = 0
    officers: int = 0

    def add(self, other: "UnitTouch") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def text(self) -> str:
        return ", ".join(f"{f.name.replace('_', ' ')} {getattr(self, f.name):,}" for f in fields(self))


def read_touch(engine: Engine, effective: date) -> dict[UnitKind, dict[str, UnitTouch]]:
    """Counts per old province and per old ward on the site behind `engine` (SELECTs only)."""
    out: dict[UnitKind, dict[str, UnitTouch]] = {UnitKind.PROVINCE: defaultdict(UnitTouch),
                                                  UnitKind.WARD: defaultdict(UnitTouch)}
    open_states = [s.value for s in DeclarationState if not s.is_terminal]
    e = enterprises.c
    in_source = e.address_valid_from < effective
    with engine.connect() as conn:
        for p, w, n in conn.execute(select(e.province_code, e.ward_code, func.count())
                                    .where(in_source).group_by(e.province_code, e.ward_code)):
            out[UnitKind.PROVINCE][p].enterprises += n
            out[UnitKind.WARD][w].enterprises += n
        d = declarations.c
        open_q = (select(d.declarant_province_code, d.declarant_ward_code, func.count())
                  .where(d.declarant_map_version < effective, d.state.in_(open_states))
                  .group_by(d.declarant_province_code, d.declarant_ward_code))
        for p, w, n in conn.execute(open_q):
            out[UnitKind.PROVINCE][p].open_declarations += n
            out[UnitKind.WARD][w].open_declarations += n
        o = customs_offices.c
        office_in_source = o.province_map_version < effective
        for p, n in conn.execute(select(o.province_code, func.count()).where(office_in_source)
                                 .group_by(o.province_code)):
            out[UnitKind.PROVINCE][p].offices += n
        officer_q = (select(o.province_code, func.count())
                     .select_from(officers.join(customs_offices, officers.c.office_code == o.code))
                     .where(office_in_source).group_by(o.province_code))
        for p, n in conn.execute(officer_q):
            out[UnitKind.PROVINCE][p].officers += n
    return {kind: dict(units) for kind, units in out.items()}


def touch_lines(changeset: ChangeSet, touch: dict[UnitKind, dict[str, UnitTouch]]) -> list[str]:
    """Report lines: each touched province with its fate and successors, totals per fate per kind, the records on
    split units (they land on a default and are flagged for review), and any site code the change set lacks."""
    lines: list[str] = []
    for kind in changeset.manifest.kinds:
        rows = {r.old_code: r for r in changeset.rows[kind]}
        units = touch.get(kind, {})
        per_fate = {fate: UnitTouch() for fate in Fate}
        for code in sorted(units):
            row = rows.get(code)
            if row is None:
                lines.append(f"  UNMAPPED {kind.value} {code} on the site: {units[code].text()}")
                continue
            per_fate[row.fate].add(units[code])
            if kind is UnitKind.PROVINCE:
                lines.append(f"  province {code} {row.fate.value} -> {'|'.join(row.successors)}: {units[code].text()}")
        for fate, total in per_fate.items():
            lines.append(f"  {kind.value}s {fate.value}: {total.text()}")
    return lines
