"""The failback's quarantine: what only the old primary had (its writes after the divergence) moved aside, so it can
become a standby of the new primary without a full copy.

A failover promotes the standby with what it had applied of the stream old -> new; every change the old primary
committed above those positions (`replication.divergence.unapplied_changes`) is a row only it has. For each such
row (its last image, `last_images`) the quarantine, in ONE transaction per chunk on the old primary's database:
copies the row as the old primary last had it into its `quarantine` table (with the old primary's epoch, the
change's position and the declaration the row belongs to), then replaces the live row with the new primary's
current version of it, or deletes it when the new primary has none. Afterwards the old primary's replicated tables
equal the new primary's for those rows and are untouched everywhere else (rows from before the divergence are
kept), so the stream new -> old can start at the position the failover fixed (`replication.streams
.start_stream_at`). Rows are written as the applier writes them (change capture off): the old site is a standby.

Idempotent: a change already quarantined (same table, key and position, under any run) is skipped, so a resumed or
repeated failback never copies the new primary's rows into the quarantine as if they were the old primary's.

Pure decisions (`declaration_base`, `number_in`, `records`, `replacements`, `pending`) are separate from the I/O
(`rows_by_key`, `quarantined_keys`, `quarantine_tail`, `quarantined`, `mark`).
"""
from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from enum import Enum

from sqlalchemy import Connection, Engine, insert, select, text, update

from replication.apply import Applier
from replication.changes import Change, ChangeOp
from replication.divergence import row_key
from standby.store.schema import declarations, metadata, quarantine

_NUMBER = re.compile(r"[1-9][0-9]{11}")
CHUNK_ROWS = 500  # rows moved aside per transaction on the old primary
KEYS_PER_READ = 200  # keys per statement when reading rows by key


class QuarantineStatus(str, Enum):
    """A quarantined row's status; transitions: HELD -> REAPPLIED | CONFLICT (reconcile decides once)."""

    HELD = "held"
    REAPPLIED = "reapplied"
    CONFLICT = "conflict"


QUARANTINE_TRANSITIONS = {(QuarantineStatus.HELD, QuarantineStatus.REAPPLIED),
                          (QuarantineStatus.HELD, QuarantineStatus.CONFLICT)}


def next_status(current: QuarantineStatus, target: QuarantineStatus) -> QuarantineStatus:
    """The status a reconcile decision moves a row to; anything but held -> reapplied|conflict raises ValueError."""
    if (current, target) not in QUARANTINE_TRANSITIONS:
        raise ValueError(f"a quarantined row cannot go from {current.value} to {target.value}")
    return target


# -- pure --------------------------------------------------------------------------------------------------------

def number_in(table: str, row: Mapping | None) -> str | None:
    """The declaration number a row names itself, if any: a declaration's number, the number in a stored
    idempotent answer, an audit record's target."""
    if row is None:
        return None
    if table == "declarations":
        return row.get("number")
    if table == "idempotency_keys":
        try:
            number = json.loads(row.get("response") or "{}").get("number")
        except (ValueError, AttributeError):
            return None
        return number if isinstance(number, str) and _NUMBER.fullmatch(number) else None
    if table == "audit_log":
        target = row.get("target")
        return target if isinstance(target, str) and _NUMBER.fullmatch(target) else None
    return None


def declaration_base(table: str, key: Mapping, row: Mapping | None) -> str | None:
    """The base (first 11 digits) of the declaration a row belongs to, or None for rows of no declaration."""
    if table == "declarations":
        return key["base"]
    if table in ("goods_lines", "officer_assignments"):
        return key["declaration_base"]
    number = number_in(table, row)
    return number[:11] if number else None


def pending(changes: Iterable[Change], already: set[tuple[str, str, int]]) -> list[Change]:
    """The changes not yet quarantined: `already` holds (table, key JSON, position) of every quarantined row."""
    return [c for c in changes if (*row_key(c), c.position) not in already]


def numbers_by_base(changes: Iterable[Change]) -> dict[str, str]:
    """Base -> the number the rows themselves give (a declaration's row first, then answers and audit targets)."""
    found: dict[str, str] = {}
    for change in sorted(changes, key=lambda c: c.table != "declarations"):
        number = number_in(change.table, change.row)
        if number:
            found.setdefault(number[:11], number)
    return found


def records(changes: Sequence[Change], *, run_id: str, epoch: int, now: float,
            numbers: Mapping[str, str]) -> list[dict]:
    """The quarantine rows for `changes` (each a row's last image on the old primary): `numbers` maps a
    declaration base to its number for rows that do not carry it."""
    out = []
    for change in changes:
        table, pk = row_key(change)
        base = declaration_base(change.table, change.key, change.row)
        out.append({"run_id": run_id, "epoch": epoch, "position": change.position, "table_name": table, "pk": pk,
                    "row": None if change.row is None else json.dumps(change.row, sort_keys=True, default=str),
                    "declaration_number": numbers.get(base) if base else None, "quarantined_at": now,
                    "status": QuarantineStatus.HELD.value})
    return out


def replacements(changes: Sequence[Change], on_primary: Mapping[tuple[str, str], dict | None]) -> list[Change]:
    """What makes the old primary's live rows equal the new primary's: its current row (upsert) or, when it has
    none, a delete. Parents are written before children and deleted after them (foreign keys)."""
    out = []
    for change in changes:
        row = on_primary.get(row_key(change))
        out.append(Change(change.position, change.table, ChangeOp.DELETE if row is None else ChangeOp.UPDATE,
                          change.key, row))
    return sorted(out, key=write_order)


def write_order(change: Change) -> tuple[int, int]:
    """Sort key: upserts before deletes; declarations upserted before their lines and deleted after them."""
    depth = 0 if change.table == "declarations" else 1
    return (1, -depth) if change.op is ChangeOp.DELETE else (0, depth)


# -- I/O -----------------------------------------------------------------------------------------------------------

def rows_by_key(source: Engine | Connection, table: str, keys: Sequence[Mapping]) -> dict[tuple[str, str], dict]:
    """The rows of `table` with these primary keys as the database stores them (no type conversion, so written
    back they are the same values), keyed by `row_key`. Absent keys are absent from the answer. `source` is an
    engine (a short read of its own) or the caller's open connection (read inside its transaction)."""
    t = metadata.tables[table]
    pk = [c.name for c in t.primary_key.columns]
    quote = source.dialect.identifier_preparer.quote
    columns = ", ".join(quote(c.name) for c in t.columns)
    found: dict[tuple[str, str], dict] = {}
    for start in range(0, len(keys), KEYS_PER_READ):
        batch = keys[start:start + KEYS_PER_READ]
        params = {f"k{i}_{j}": key[c] for i, key in enumerate(batch) for j, c in enumerate(pk)}
        match = " OR ".join("(" + " AND ".join(f"{quote(c)} = :k{i}_{j}" for j, c in enumerate(pk)) + ")"
                            for i in range(len(batch)))
        statement = text(f"SELECT {columns} FROM {quote(table)} WHERE {match}")
        with (source.connect() if isinstance(source, Engine) else nullcontext(source)) as conn:
            for row in conn.execute(statement, params).mappings():
                key = {c: row[c] for c in pk}
                found[(table, json.dumps(key, sort_keys=True, separators=(",", ":"), default=str))] = dict(row)
    return found


def rows_for(engine: Engine, changes: Iterable[Change]) -> dict[tuple[str, str], dict]:
    """`rows_by_key` for the rows `changes` touched, over every table they name."""
    by_table: dict[str, list[Mapping]] = {}
    for change in changes:
        by_table.setdefault(change.table, []).append(change.key)
    found: dict[tuple[str, str], dict] = {}
    for table, keys in by_table.items():
        found.update(rows_by_key(engine, table, keys))
    return found


def quarantined_keys(engine: Engine) -> set[tuple[str, str, int]]:
    """(table, key JSON, position) of every row in the site's quarantine, under any run."""
    with engine.connect() as conn:
        return {(t, pk, p) for t, pk, p in conn.execute(
            select(quarantine.c.table_name, quarantine.c.pk, quarantine.c.position))}


@dataclass
class QuarantineReport:
    moved: int = 0  # rows moved aside by this call
    skipped: int = 0  # rows quarantined before (a resumed or repeated run)
    replaced: int = 0  # live rows replaced by the new primary's version
    deleted: int = 0  # live rows the new primary has not: deleted (kept in the quarantine)
    by_table: dict[str, int] = field(default_factory=dict)
    declarations: list[str] = field(default_factory=list)  # numbers of the declarations moved aside

    def as_dict(self) -> dict:
        return {"moved": self.moved, "skipped": self.skipped, "replaced": self.replaced, "deleted": self.deleted,
                "by_table": self.by_table, "declarations": sorted(self.declarations)}


def quarantine_tail(old: Engine, primary: Engine, changes: Sequence[Change], *, run_id: str, epoch: int,
                    clock: Callable[[], float] = time.time, chunk_rows: int = CHUNK_ROWS) -> QuarantineReport:
    """Move the old primary's divergent rows aside (see the module's docstring). `old` is a writer engine on the
    old primary made by `replication.apply.apply_engine` (foreign keys not enforced while rows are swapped),
    `primary` reads the new primary, `changes` are the last images of the rows (`divergence.last_images`)."""
    report = QuarantineReport()
    todo = pending(changes, quarantined_keys(old))
    report.skipped = len(changes) - len(todo)
    numbers = numbers_by_base(changes) | _numbers_on(old, todo, numbers_by_base(changes))
    applier = Applier(old, clock=clock)
    for start in range(0, len(todo), chunk_rows):
        part = todo[start:start + chunk_rows]
        current = rows_for(primary, part)
        rows, writes = records(part, run_id=run_id, epoch=epoch, now=clock(), numbers=numbers), \
            replacements(part, current)
        with old.begin() as conn:
            conn.execute(insert(quarantine), rows)
            applier.write_changes(conn, writes, replica=True)
        report.moved += len(part)
        report.deleted += sum(1 for w in writes if w.op is ChangeOp.DELETE)
        report.replaced += sum(1 for w in writes if w.op is not ChangeOp.DELETE)
        for row in rows:
            report.by_table[row["table_name"]] = report.by_table.get(row["table_name"], 0) + 1
    report.declarations = sorted({n for n in numbers.values()})
    return report


def _numbers_on(engine: Engine, changes: Iterable[Change], known: Mapping[str, str]) -> dict[str, str]:
    """Numbers of the declarations rows belong to that the rows do not name (a goods line alone): the old
    primary's own declaration rows, read before they are replaced."""
    bases = sorted({b for c in changes if (b := declaration_base(c.table, c.key, c.row)) and b not in known})
    if not bases:
        return {}
    with engine.connect() as conn:
        return dict(conn.execute(select(declarations.c.base, declarations.c.number)
                                 .where(declarations.c.base.in_(bases))).all())


# -- reading and deciding quarantined rows (reconcile) -------------------------------------------------------------

@dataclass(frozen=True)
class QuarantinedRow:
    id: int
    run_id: str
    epoch: int
    position: int
    table: str
    key: dict
    row: dict | None
    declaration_number: str | None
    status: QuarantineStatus
    decision: str | None = None


def quarantined(engine: Engine, run_id: str | None = None) -> list[QuarantinedRow]:
    """The site's quarantined rows (of one failback run, or all), in the old primary's commit order."""
    query = select(quarantine).order_by(quarantine.c.position, quarantine.c.id)
    if run_id is not None:
        query = query.where(quarantine.c.run_id == run_id)
    with engine.connect() as conn:
        return [QuarantinedRow(r["id"], r["run_id"], r["epoch"], r["position"], r["table_name"], json.loads(r["pk"]),
                               None if r["row"] is None else json.loads(r["row"]), r["declaration_number"],
                               QuarantineStatus(r["status"]), r["decision"]) for r in conn.execute(query).mappings()]


def mark(engine: Engine, ids: Sequence[int], status: QuarantineStatus, decision: str, now: float) -> int:
    """Record reconcile's decision on held rows (rows already decided are left as they are); returns rows changed."""
    if not ids:
        return 0
    next_status(QuarantineStatus.HELD, status)
    with engine.begin() as conn:
        return conn.execute(update(quarantine).where(quarantine.c.id.in_(list(ids)),
                                                     quarantine.c.status == QuarantineStatus.HELD.value)
                            .values(status=status.value, decision=decision, decided_at=now)).rowcount
