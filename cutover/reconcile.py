"""Reconcile: each declaration the failback quarantined on the old primary is brought back on the current primary
under its original number when nothing about it changed there since the failover, and listed for review when it did.

The rule (pure, `decide`), for one declaration (its quarantined rows: declarations, goods_lines,
officer_assignments, the idempotency records whose answer names it and its audit records), given the failover's
epoch F (the epoch the new primary was promoted with) and the primary's current rows:

1. CONFLICT when the primary's declarations row has epoch >= F: the primary wrote it after the failover (every write
   is stamped with the epoch it was accepted under, and before F the primary only held what it had replicated from
   the old primary, i.e. the version from before the divergence). Its state now and the old primary's are named.
2. CONFLICT when an idempotency record of the declaration exists on the primary with another request or answer: the
   client's retry was carried out again on the primary (under another number), so bringing this one back would
   double it.
3. CONFLICT when the quarantine holds rows of the declaration but not the declaration itself, and the primary has
   no row for it (its lines could not stand alone).
4. Otherwise REAPPLY: the primary has no row for it (it was created in the lost tail) or still holds the version
   from before the divergence (epoch < F). Its rows are written on the primary as the old primary last had them,
   in one transaction, with change capture ON (they replicate back to the old primary like any write), KEEPING
   THEIR ORIGINAL EPOCH: the epoch says under which epoch a write was accepted, and these were accepted by the old
   primary before the failover (the audit in the witness and the quarantine say when and by whom they came back).
   Keeping it also makes a repeated reconcile after a crash decide the same way (rule 1 still sees epoch < F).
   The idempotency records come with it (a client retrying an old request through the front gets its original
   answer); audit records are added under new ids unless an identical one is already there.

Idempotency records that name no declaration (a refused request) are their own group: re-applied when the primary
has none for that key or the same one, else a conflict. Before any declaration, the old primary's number block
(number_blocks row of its site digit, which replicates) is raised on the primary past every quarantined number and
past the old primary's own block, so the old site never issues those numbers again after a switchover back. Rows of
no declaration (officer rotation, heartbeats, the block itself) stay in the quarantine (status held): the primary's
own bookkeeping supersedes them.

Every decision is audited in the witness with the operator, and the quarantined rows' status, decided_at and
decision are updated on the old primary (QuarantineStatus: held -> reapplied | conflict).
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

from sqlalchemy import Engine, and_, insert, select, update

from cutover.failback import QuarantinedRow, QuarantineStatus, mark, quarantined, rows_by_key, write_order
from cutover.witness.contract import AuditRecord, Witness
from replication.apply import Applier
from replication.changes import Change, ChangeOp
from standby.domain.states import IntakeState, SiteRole
from standby.store.schema import audit_log, declarations, number_blocks
from standby.store.engine import is_sqlite
from standby.store.site import lock_control_for_batch

DECLARATION_TABLES = ("declarations", "goods_lines", "officer_assignments", "idempotency_keys", "audit_log")
ANSWER_FIELDS = ("request_hash", "status", "response")


class Verdict(str, Enum):
    REAPPLY = "reapply"
    CONFLICT = "conflict"


@dataclass(frozen=True)
class Group:
    """One declaration's quarantined rows (or one idempotency record that names no declaration)."""

    number: str | None
    rows: tuple[QuarantinedRow, ...]

    @property
    def label(self) -> str:
        if self.number:
            return self.number
        answer = next(r for r in self.rows if r.table == "idempotency_keys")
        return f"Idempotency-Key {answer.key['key']!r} of {answer.key['principal']}"

    def of(self, table: str) -> list[QuarantinedRow]:
        return [r for r in self.rows if r.table == table]


@dataclass(frozen=True)
class Decision:
    group: Group
    verdict: Verdict
    reason: str


# -- pure --------------------------------------------------------------------------------------------------------

def group_rows(rows: Sequence[QuarantinedRow]) -> tuple[list[Group], list[QuarantinedRow]]:
    """(declaration groups in the order first touched, rows of no declaration). A group's number is its
    declarations row's number (the latest amendment the old primary had), else the number its other rows name."""
    by_base: dict[str, list[QuarantinedRow]] = {}
    groups: list[Group] = []
    others: list[QuarantinedRow] = []
    for row in rows:
        if row.table in DECLARATION_TABLES and row.declaration_number:
            by_base.setdefault(row.declaration_number[:11], []).append(row)
        elif row.table == "idempotency_keys":
            groups.append(Group(None, (row,)))
        else:
            others.append(row)
    for members in by_base.values():
        own = [r for r in members if r.table == "declarations" and r.row]
        number = own[-1].row["number"] if own else members[0].declaration_number
        groups.append(Group(number, tuple(members)))
    return groups, others


def decide(group: Group, *, declaration_on_primary: Mapping | None, answers_on_primary: Mapping[str, Mapping | None],
           failover_epoch: int) -> Decision:
    """The rule in the module's docstring. `answers_on_primary` maps each idempotency record's key JSON (as
    quarantined) to the primary's row for that key, or None."""
    if declaration_on_primary is not None and int(declaration_on_primary["epoch"]) >= failover_epoch:
        mine = next((r.row for r in reversed(group.of("declarations")) if r.row), None)
        was = f"; the old primary had it {mine['state']} (epoch {mine['epoch']})" if mine else ""
        return Decision(group, Verdict.CONFLICT,
                        f"changed on the primary after the failover: {declaration_on_primary['state']} under epoch "
                        f"{declaration_on_primary['epoch']} >= {failover_epoch}{was}")
    for answer in group.of("idempotency_keys"):
        theirs = answers_on_primary.get(_key_json(answer))
        if theirs is not None and answer.row is not None and any(
                str(theirs[f]) != str(answer.row[f]) for f in ANSWER_FIELDS):
            return Decision(group, Verdict.CONFLICT,
                            f"Idempotency-Key {answer.key['key']!r} was answered differently on the primary (status "
                            f"{theirs['status']}: {str(theirs['response'])[:120]}); the client's retry was carried "
                            f"out there")
    has_own_row = any(r.table == "declarations" for r in group.rows)
    if group.number and not has_own_row and declaration_on_primary is None and any(
            r.table in ("goods_lines", "officer_assignments") for r in group.rows):
        return Decision(group, Verdict.CONFLICT, "the quarantine holds lines of the declaration but not the "
                                                 "declaration, and the primary has no row for it")
    if declaration_on_primary is None:
        return Decision(group, Verdict.REAPPLY, "the primary has no row of it: re-applied under its number")
    return Decision(group, Verdict.REAPPLY, f"the primary still holds its version from before the divergence "
                                            f"(epoch {declaration_on_primary['epoch']} < {failover_epoch})")


def block_floor(rows: Sequence[QuarantinedRow], site_digit: int) -> int:
    """The lowest next_sequence of the old primary's number block that issues none of its quarantined numbers
    again: past every quarantined number of its digit and at least the block the old primary had reached."""
    floor = 1
    for row in rows:
        if row.table == "number_blocks" and row.key.get("site_digit") == site_digit and row.row:
            floor = max(floor, int(row.row["next_sequence"]))
        number = row.declaration_number
        if number and int(number[0]) == site_digit:
            floor = max(floor, int(number[1:11]) + 1)
    return floor


def reapply_changes(group: Group) -> list[Change]:
    """The group's rows (audit records aside) as writes, in an order the primary's foreign keys accept."""
    changes = [Change(r.position, r.table, ChangeOp.DELETE if r.row is None else ChangeOp.UPDATE, r.key, r.row)
               for r in group.rows if r.table != "audit_log"]
    return sorted(changes, key=write_order)


def _key_json(row: QuarantinedRow) -> str:
    return json.dumps(row.key, sort_keys=True, separators=(",", ":"))


# -- I/O -----------------------------------------------------------------------------------------------------------

class PrimaryNotOpen(Exception):
    """The site reconcile writes to is not an open primary (fenced, a standby, or frozen for a switchover)."""


@dataclass
class ReconcileReport:
    reapplied: list[str] = field(default_factory=list)
    conflicts: list[dict] = field(default_factory=list)
    kept: dict[str, int] = field(default_factory=dict)  # rows of no declaration left held, by table
    number_block: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"reapplied": self.reapplied, "reapplied_count": len(self.reapplied), "conflicts": self.conflicts,
                "conflict_count": len(self.conflicts), "kept": self.kept, "number_block": self.number_block}


@dataclass
class Reconciler:
    """Reconciles the quarantine of `old_site` (engine `old`, a writer) into `primary_site` (engine `primary`, a
    writer: its writes are captured and replicate back). Repeatable: only held rows are looked at."""

    old: Engine
    primary: Engine
    witness: Witness
    old_site: str
    primary_site: str
    site_digit: int  # the old primary's
    failover_epoch: int
    operator: str
    run_id: str
    clock: Callable[[], float] = time.time

    def run(self) -> ReconcileReport:
        everything = quarantined(self.old)
        held = [r for r in everything if r.status is QuarantineStatus.HELD]
        report = ReconcileReport()
        report.number_block = self.raise_block(everything, held)
        groups, others = group_rows(held)
        for group in groups:
            decision = self._settle(group)
            if decision.verdict is Verdict.REAPPLY:
                report.reapplied.append(group.label)
            else:
                report.conflicts.append({"number": group.number, "what": group.label, "reason": decision.reason})
            status = QuarantineStatus.REAPPLIED if decision.verdict is Verdict.REAPPLY else QuarantineStatus.CONFLICT
            mark(self.old, [r.id for r in group.rows], status, decision.reason, self.clock())
            self._audit(group.label, status.value, decision.reason, {"rows": len(group.rows)})
        for row in others:
            if row.table != "number_blocks":
                report.kept[row.table] = report.kept.get(row.table, 0) + 1
        return report

    def _settle(self, group: Group) -> Decision:
        """Decide and, for REAPPLY, write, in ONE transaction on the primary: what the decision read cannot change
        before the write (SQLite: BEGIN IMMEDIATE holds the write lock; PostgreSQL: the declaration row is locked
        FOR UPDATE), so a client acting on the declaration at the same moment is never overwritten."""
        with self.primary.begin() as conn:
            self._require_open(conn)
            declaration = None
            if group.number:
                query = select(declarations.c.epoch, declarations.c.state).where(
                    declarations.c.base == group.number[:11])
                found = conn.execute(query if is_sqlite(self.primary) else query.with_for_update()).mappings().first()
                declaration = dict(found) if found else None
            answers = group.of("idempotency_keys")
            on_primary = rows_by_key(conn, "idempotency_keys", [a.key for a in answers]) if answers else {}
            by_key = {k: v for (_, k), v in on_primary.items()}
            decision = decide(group, declaration_on_primary=declaration,
                              answers_on_primary={_key_json(a): by_key.get(_key_json(a)) for a in answers},
                              failover_epoch=self.failover_epoch)
            if decision.verdict is Verdict.REAPPLY:
                Applier(self.primary, clock=self.clock).write_changes(conn, reapply_changes(group), replica=False)
                for record in group.of("audit_log"):
                    _add_audit_record(conn, record.row)
        return decision

    def raise_block(self, everything: Sequence[QuarantinedRow] | None = None,
                    held: Sequence[QuarantinedRow] | None = None) -> dict:
        """Raise the old primary's number block on the primary to `block_floor` (never lowers it), mark the
        quarantined block row, audit a raise. Idempotent; the quarantine step calls it too, so the old site can
        never issue a quarantined number again even if the failback stops before reconcile."""
        if everything is None:
            everything = quarantined(self.old)
        if held is None:
            held = [r for r in everything if r.status is QuarantineStatus.HELD]
        floor = block_floor(everything, self.site_digit)
        with self.primary.begin() as conn:
            self._require_open(conn)
            current = conn.execute(select(number_blocks.c.next_sequence)
                                   .where(number_blocks.c.site_digit == self.site_digit)).scalar()
            if current is None:
                conn.execute(insert(number_blocks).values(site_digit=self.site_digit, next_sequence=floor))
            elif current < floor:
                conn.execute(update(number_blocks).where(number_blocks.c.site_digit == self.site_digit)
                             .values(next_sequence=floor))
        raised = current is None or current < floor
        reason = (f"site digit {self.site_digit}'s block on {self.primary_site} raised from {current} to {floor}"
                  if raised else f"site digit {self.site_digit}'s block on {self.primary_site} already at "
                                 f"{current} >= {floor}")
        blocks = [r.id for r in held if r.table == "number_blocks" and r.key.get("site_digit") == self.site_digit]
        mark(self.old, blocks, QuarantineStatus.REAPPLIED, reason, self.clock())
        if raised or blocks:
            self._audit(f"number_blocks/{self.site_digit}", "raised" if raised else "ok", reason, {"floor": floor})
        return {"site_digit": self.site_digit, "was": current, "floor": floor, "raised": raised}

    def _require_open(self, conn) -> None:
        control = lock_control_for_batch(conn, self.primary_site)
        if control is None or control.role is not SiteRole.PRIMARY or control.intake_state is not IntakeState.OPEN:
            state = "no control row" if control is None else f"{control.role.value}/{control.intake_state.value}"
            raise PrimaryNotOpen(f"site {self.primary_site} is {state}, not an open primary: reconcile writes only "
                                 f"into the open primary (run it again once it is)")

    def _audit(self, target: str, outcome: str, reason: str, detail: dict) -> None:
        self.witness.audit(AuditRecord(
            at=self.clock(), operator=self.operator, action="failback.reconcile", target=target,
            args={"run_id": self.run_id, "site": self.old_site, "primary": self.primary_site}, outcome=outcome,
            detail={"reason": reason, **detail}))


def _add_audit_record(conn, row: Mapping | None) -> None:
    """The old primary's audit record on the primary under a new id (ids are per site), once."""
    if row is None:
        return
    values = {"at": float(row["at"]), "site_id": row["site_id"], "epoch": int(row["epoch"]), "actor": row["actor"],
              "action": row["action"], "target": row.get("target"), "detail": row.get("detail")}
    c = audit_log.c
    there = conn.execute(select(c.id).where(and_(c.at == values["at"], c.site_id == values["site_id"],
                                                 c.actor == values["actor"], c.action == values["action"],
                                                 c.target == values["target"])).limit(1)).first()
    if there is None:
        conn.execute(insert(audit_log).values(**values))
