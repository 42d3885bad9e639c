"""The working set of one batch: rows loaded once, changed in memory, written back in one transaction."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import Connection, bindparam, delete, insert, select, update

from standby.store.schema import (
    audit_log,
    declarations,
    enterprises,
    goods_lines,
    idempotency_keys,
    officer_assignments,
    officer_rotation,
)

DECLARATION_COLUMNS = [c.name for c in declarations.columns]

# Every statement of a batch is built once, here: a batch at the knee's rates carries one or two commands, so
# building ~10 statements per transaction was most of a ClearanceWorker's CPU (SQLAlchemy's coercions and cache
# keys; see standby.store.reads). IN lists are expanding parameters.
_DECLARATIONS = select(declarations).where(declarations.c.base.in_(bindparam("bases", expanding=True)))
_DECLARATIONS_LOCKED = _DECLARATIONS.with_for_update()
_LINE_FACTS = select(goods_lines.c.declaration_base, goods_lines.c.hs_code, goods_lines.c.origin).where(
    goods_lines.c.declaration_base.in_(bindparam("bases", expanding=True)))
_ENTERPRISES = select(enterprises).where(enterprises.c.tax_code.in_(bindparam("tax_codes", expanding=True)))
_ROTATION = select(officer_rotation.c.next_position).where(
    officer_rotation.c.office_code == bindparam("office"), officer_rotation.c.section == bindparam("b_section"))
_ROTATION_LOCKED = _ROTATION.with_for_update()
_INSERT_DECLARATIONS = insert(declarations)
_UPDATE_DECLARATIONS = update(declarations).where(declarations.c.base == bindparam("b_base")).values(
    {c: bindparam(c) for c in DECLARATION_COLUMNS if c != "base"})
_DELETE_LINES = delete(goods_lines).where(goods_lines.c.declaration_base.in_(bindparam("bases", expanding=True)))
_INSERT_LINES = insert(goods_lines)
_INSERT_ASSIGNMENTS = insert(officer_assignments)
_DECIDE_ASSIGNMENTS = (
    update(officer_assignments)
    .where(officer_assignments.c.declaration_base == bindparam("b_base"),
           officer_assignments.c.amendment == bindparam("b_amendment"))
    .values(decision=bindparam("decision"), decision_note=bindparam("decision_note"),
            decided_at=bindparam("decided_at"))
)
_SET_ROTATION = update(officer_rotation).where(
    officer_rotation.c.office_code == bindparam("office"), officer_rotation.c.section == bindparam("b_section")
).values(next_position=bindparam("value"))
_NEW_ROTATION = insert(officer_rotation).values(office_code=bindparam("office"), section=bindparam("b_section"),
                                                next_position=bindparam("value"))
_INSERT_IDEMPOTENCY = insert(idempotency_keys)
_INSERT_AUDIT = insert(audit_log)


@dataclass
class BatchWrites:
    """Rows loaded for a batch and the writes it has decided; `flush` applies them in the open transaction."""

    declarations: dict[str, dict] = field(default_factory=dict)
    enterprises: dict[str, dict] = field(default_factory=dict)
    line_facts: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # base -> [(hs_code, origin)]
    new_bases: list[str] = field(default_factory=list)
    changed_bases: set[str] = field(default_factory=set)
    replaced_lines: dict[str, list[dict]] = field(default_factory=dict)
    new_assignments: list[dict] = field(default_factory=list)
    decided_assignments: list[dict] = field(default_factory=list)
    rotation: dict[tuple[str, str], int] = field(default_factory=dict)
    rotation_changed: set[tuple[str, str]] = field(default_factory=set)
    audit: list[dict] = field(default_factory=list)
    idempotency: list[dict] = field(default_factory=list)
    lock: bool = False

    def load(self, conn: Connection, bases: Iterable[str], tax_codes: Iterable[str], lock: bool) -> None:
        """Read the batch's declarations (locked FOR UPDATE when `lock`), their goods facts and enterprises."""
        self.lock = lock
        bases, tax_codes = sorted(set(bases)), set(tax_codes)
        if bases:
            for row in conn.execute(_DECLARATIONS_LOCKED if lock else _DECLARATIONS, {"bases": bases}).mappings():
                self.declarations[row["base"]] = dict(row)
                tax_codes.add(row["enterprise_tax_code"])
            for base, hs_code, origin in conn.execute(_LINE_FACTS, {"bases": bases}):
                self.line_facts.setdefault(base, []).append((hs_code, origin))
        if tax_codes:
            rows = conn.execute(_ENTERPRISES, {"tax_codes": sorted(tax_codes)}).mappings()
            self.enterprises.update({r["tax_code"]: dict(r) for r in rows})

    def next_rotation(self, conn: Connection, office: str, section: str) -> int:
        key = (office, section)
        if key not in self.rotation:
            # Two workers may serve one office while partitions move; the lock keeps them from sharing a turn.
            stored = conn.execute(_ROTATION_LOCKED if self.lock else _ROTATION,
                                  {"office": office, "b_section": section}).scalar()
            self.rotation[key] = stored or 0
        return self.rotation[key]

    def set_rotation(self, office: str, section: str, next_position: int) -> None:
        self.rotation[(office, section)] = next_position
        self.rotation_changed.add((office, section))

    def flush(self, conn: Connection) -> None:
        new = set(self.new_bases)
        if self.new_bases:
            conn.execute(_INSERT_DECLARATIONS, [self.declarations[b] for b in self.new_bases])
        changed = [self.declarations[b] for b in sorted(self.changed_bases - new)]
        if changed:
            conn.execute(_UPDATE_DECLARATIONS, [{**row, "b_base": row["base"]} for row in changed])
        amended = sorted(set(self.replaced_lines) - new)
        if amended:
            conn.execute(_DELETE_LINES, {"bases": amended})
        all_lines = [line for lines in self.replaced_lines.values() for line in lines]
        if all_lines:
            conn.execute(_INSERT_LINES, all_lines)
        if self.new_assignments:
            conn.execute(_INSERT_ASSIGNMENTS, self.new_assignments)
        if self.decided_assignments:
            conn.execute(_DECIDE_ASSIGNMENTS, self.decided_assignments)
        self._flush_rotation(conn)
        if self.idempotency:
            conn.execute(_INSERT_IDEMPOTENCY, self.idempotency)
        if self.audit:
            conn.execute(_INSERT_AUDIT, self.audit)

    def _flush_rotation(self, conn: Connection) -> None:
        for office, section in sorted(self.rotation_changed):
            params = {"office": office, "b_section": section, "value": self.rotation[(office, section)]}
            if not conn.execute(_SET_ROTATION, params).rowcount:
                conn.execute(_NEW_ROTATION, params)
