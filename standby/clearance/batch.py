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
            query = select(declarations).where(declarations.c.base.in_(bases))
            if lock:
                query = query.with_for_update()
            for row in conn.execute(query).mappings():
                self.declarations[row["base"]] = dict(row)
                tax_codes.add(row["enterprise_tax_code"])
            lines = select(goods_lines.c.declaration_base, goods_lines.c.hs_code, goods_lines.c.origin).where(
                goods_lines.c.declaration_base.in_(bases)
            )
            for base, hs_code, origin in conn.execute(lines):
                self.line_facts.setdefault(base, []).append((hs_code, origin))
        if tax_codes:
            rows = conn.execute(select(enterprises).where(enterprises.c.tax_code.in_(sorted(tax_codes)))).mappings()
            self.enterprises.update({r["tax_code"]: dict(r) for r in rows})

    def next_rotation(self, conn: Connection, office: str, section: str) -> int:
        key = (office, section)
        if key not in self.rotation:
            query = select(officer_rotation.c.next_position).where(
                officer_rotation.c.office_code == office, officer_rotation.c.section == section)
            # Two workers may serve one office while partitions move; the lock keeps them from sharing a turn.
            stored = conn.execute(query.with_for_update() if self.lock else query).scalar()
            self.rotation[key] = stored or 0
        return self.rotation[key]

    def set_rotation(self, office: str, section: str, next_position: int) -> None:
        self.rotation[(office, section)] = next_position
        self.rotation_changed.add((office, section))

    def flush(self, conn: Connection) -> None:
        new = set(self.new_bases)
        if self.new_bases:
            conn.execute(insert(declarations), [self.declarations[b] for b in self.new_bases])
        changed = [self.declarations[b] for b in sorted(self.changed_bases - new)]
        if changed:
            params = [{**row, "b_base": row["base"]} for row in changed]
            setters = {c: bindparam(c) for c in DECLARATION_COLUMNS if c != "base"}
            conn.execute(update(declarations).where(declarations.c.base == bindparam("b_base")).values(setters), params)
        amended = sorted(set(self.replaced_lines) - new)
        if amended:
            conn.execute(delete(goods_lines).where(goods_lines.c.declaration_base.in_(amended)))
        all_lines = [line for lines in self.replaced_lines.values() for line in lines]
        if all_lines:
            conn.execute(insert(goods_lines), all_lines)
        if self.new_assignments:
            conn.execute(insert(officer_assignments), self.new_assignments)
        if self.decided_assignments:
            conn.execute(
                update(officer_assignments)
                .where(
                    officer_assignments.c.declaration_base == bindparam("b_base"),
                    officer_assignments.c.amendment == bindparam("b_amendment"),
                )
                .values(decision=bindparam("decision"), decision_note=bindparam("decision_note"),
                        decided_at=bindparam("decided_at")),
                self.decided_assignments,
            )
        self._flush_rotation(conn)
        if self.idempotency:
            conn.execute(insert(idempotency_keys), self.idempotency)
        if self.audit:
            conn.execute(insert(audit_log), self.audit)

    def _flush_rotation(self, conn: Connection) -> None:
        for office, section in sorted(self.rotation_changed):
            value = self.rotation[(office, section)]
            done = conn.execute(
                update(officer_rotation)
                .where(officer_rotation.c.office_code == office, officer_rotation.c.section == section)
                .values(next_position=value)
            ).rowcount
            if not done:
                conn.execute(insert(officer_rotation).values(office_code=office, section=section, next_position=value))
