"""The failover's RPO, by declaration number: which declarations the old primary acknowledged that the promoted
standby never applied, and what each client was last told.

Pure part (plain values in, a report dict out; unit-tested without databases):
- `lost_declarations(changes, old_rows, new_states)`: the declarations touched by `changes` (the old primary's
  changes past the standby's per-partition positions, `replication.divergence.unapplied_changes`), each with the
  state the old primary left it in and the last answer it stored for a client. A declaration is touched by a change
  to its `declarations` row (key `base`), its goods lines or officer assignments (key `declaration_base`), or an
  idempotency record whose stored answer names its number (the client's answer: status, principal, key).
  `old_rows` (base -> declarations row read from the old primary) fills in a declaration whose own row did not change
  past the divergence; `new_states` (base -> state on the new primary) says which of them the new primary holds in
  an older state (None: it has not got it at all).
- `exact_report(...)` and `estimated_report(...)`: the report either way. Exact: {"exact": True, "lost": [...],
  "lost_count": n, "changes": m, ...}, sorted by number. Not exact (the old primary's database cannot be read):
  {"exact": False, "reason": ..., "lost": [], "lost_count": None, "in_flight_estimate": {...}}.
- `in_flight_estimate(heartbeat_at, last_write_at, rate_per_s)`: how many declaration writes were in flight by the
  last known lag. The lag is from the newest old-primary heartbeat the standby applied (the replicator writes one
  every 0.2 s on the primary; it replicates like any row) to the last moment the old primary could write: its
  self-fencing deadline from the lease it last held (lease_expires_at - fence_margin_s), or, without a lease, the
  moment the stream was stopped. The rate is the declarations the standby received per second in the
  `RATE_WINDOW_S` before that heartbeat (rows whose updated_at falls in the window). Their product is an upper-side
  estimate in declaration writes (a write is a pre-declaration, registration, amendment, decision or payment), not
  in row changes: the number an operator can compare with the exact list later.

I/O part: `compute_report(old_url, new_engine, divergence, stop)` reads the old primary's change source and rows
(refusing politely, with the estimate, when they cannot be read) and the new primary's states, and returns the
report; `database_problem(url)` says why a database cannot be read (None when it can), never creating a SQLite file.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError

from cutover.actions.failover_journal import Divergence
from replication.changes import Change, ChangeOp
from replication.divergence import last_images, unapplied_changes
from replication.errors import ReplicationError
from replication.sources import slot_name
from standby.store.engine import make_engine
from standby.store.schema import declarations

DECLARATION_CHILDREN = ("goods_lines", "officer_assignments")
RATE_WINDOW_S = 10.0
CONNECT_TIMEOUT_S = 3


# -- pure ------------------------------------------------------------------------------------------------------------

def base_of(change: Change) -> str | None:
    """The declaration base (11 digits) a change belongs to, or None for a change of no declaration."""
    if change.table == "declarations":
        return change.key.get("base")
    if change.table in DECLARATION_CHILDREN:
        return change.key.get("declaration_base")
    if change.table == "idempotency_keys" and change.row:
        number = answered_number(change.row)
        return number[:11] if number else None
    return None


def answered_number(idempotency_row: Mapping) -> str | None:
    """The declaration number a stored answer names (its JSON body's "number"), or None."""
    try:
        body = json.loads(idempotency_row.get("response") or "null")
    except (TypeError, ValueError):
        return None
    number = body.get("number") if isinstance(body, dict) else None
    return number if isinstance(number, str) and len(number) == 12 and number.isdigit() else None


def lost_declarations(changes: Iterable[Change], old_rows: Mapping[str, Mapping],
                      new_states: Mapping[str, str | None]) -> list[dict]:
    """One entry per declaration the changes touch, sorted by number (see the module docstring)."""
    changes = list(changes)
    images = last_images(c for c in changes if c.table == "declarations")
    rows: dict[str, Mapping | None] = {}
    for change in images.values():
        rows[change.key["base"]] = change.row  # None: the old primary deleted it
    told: dict[str, dict] = {}
    for change in changes:  # commit order: the last answer stored wins
        if change.table == "idempotency_keys" and change.op is not ChangeOp.DELETE and base_of(change):
            told[base_of(change)] = {"status": change.row.get("status"), "principal": change.row.get("principal"),
                                     "key": change.row.get("key")}
    bases = {b for b in (base_of(c) for c in changes) if b}
    lost = []
    for base in bases:
        row = rows[base] if base in rows else old_rows.get(base)
        if row is None:
            continue  # deleted on the old primary, or no declaration row anywhere: nothing a client holds
        lost.append({"number": row["number"], "base": base, "enterprise_tax_code": row["enterprise_tax_code"],
                     "office_code": row["office_code"], "kind": row["kind"], "state": row["state"],
                     "at": row.get("updated_at"), "told": told.get(base),
                     "new_primary_state": new_states.get(base)})
    return sorted(lost, key=lambda d: d["number"])


def bases_needing_rows(changes: Iterable[Change]) -> set[str]:
    """The bases touched whose own declarations row did not change past the divergence (read from the old DB)."""
    changes = list(changes)
    own = {c.key.get("base") for c in changes if c.table == "declarations"}
    return {b for b in (base_of(c) for c in changes) if b} - own


def exact_report(divergence: Divergence, changes: list[Change], lost: list[dict]) -> dict:
    return {"exact": True, "old_primary": divergence.old_primary, "new_primary": divergence.new_primary,
            "stream": divergence.stream, "positions": {str(p): v for p, v in sorted(divergence.positions.items())},
            "changes": len(changes), "lost_count": len(lost), "lost": lost}


def in_flight_estimate(heartbeat_at: float | None, last_write_at: float | None, rate_per_s: float | None) -> dict:
    """Declaration writes in flight by the last known lag (see the module docstring); None parts stay unknown."""
    if heartbeat_at is None or last_write_at is None:
        return {"lag_s": None, "rate_per_s": rate_per_s, "declarations": None,
                "basis": "no heartbeat of the old primary was applied on the standby: the lag is unknown"}
    lag = max(0.0, last_write_at - heartbeat_at)
    count = None if rate_per_s is None else round(lag * rate_per_s)
    return {"lag_s": round(lag, 3), "rate_per_s": rate_per_s, "declarations": count,
            "basis": "lag from the newest old-primary heartbeat the standby applied to the old primary's last "
                     "possible write (its self-fencing deadline, else when the stream stopped), times the "
                     f"declarations the standby received per second in the {RATE_WINDOW_S:g} s before that heartbeat"}


def estimated_report(divergence: Divergence, reason: str, stop: Mapping) -> dict:
    estimate = in_flight_estimate(stop.get("heartbeat_at"), stop.get("last_write_at"), stop.get("rate_per_s"))
    return {"exact": False, "old_primary": divergence.old_primary, "new_primary": divergence.new_primary,
            "stream": divergence.stream, "positions": {str(p): v for p, v in sorted(divergence.positions.items())},
            "reason": reason, "changes": None, "lost_count": None, "lost": [], "in_flight_estimate": estimate}


def describe(report: Mapping) -> str:
    """One operator sentence about the report."""
    if report["exact"]:
        n = report["lost_count"]
        return (f"{n} declaration{'' if n == 1 else 's'} acknowledged by {report['old_primary']} never reached "
                f"{report['new_primary']} ({report['changes']} row changes past the divergence)")
    estimate = report["in_flight_estimate"]
    about = "an unknown number of" if estimate["declarations"] is None else f"about {estimate['declarations']}"
    return (f"the list is not exact: {report['reason']}; {about} declaration writes were in flight (lag "
            f"{estimate['lag_s']} s); run `standbyctl failover report RUN_ID` once {report['old_primary']}'s "
            f"database is readable again")


# -- I/O ------------------------------------------------------------------------------------------------------------

def database_problem(url: str, timeout_s: int = CONNECT_TIMEOUT_S) -> str | None:
    """Why the database at `url` cannot be read now (a sentence), or None when it can. Never creates anything: a
    missing SQLite file is reported, not made."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = Path(parsed.database or "")
        if not parsed.database or not path.is_file():
            return f"the database file {path} is missing"
        engine = create_engine(f"sqlite:///file:{path}?mode=ro&uri=true", connect_args={"timeout": timeout_s})
    else:
        engine = create_engine(url, connect_args={"connect_timeout": timeout_s}, pool_pre_ping=False)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1 FROM site_control LIMIT 1")).all()
        return None
    except DBAPIError as exc:
        where = parsed.render_as_string(hide_password=True)
        return f"cannot read {where}: {str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else exc}"
    finally:
        engine.dispose()


def _open_source(old_url: str, divergence: Divergence):
    """The old primary's change source of the stream, without creating anything (a slot made now would hold
    nothing of the lost tail)."""
    if make_url(old_url).get_backend_name() == "sqlite":
        from replication.sqlite_source import SqliteChangeSource

        return SqliteChangeSource(old_url)
    from replication.pg_source import PgChangeSource

    source = PgChangeSource(old_url, slot_name(divergence.old_primary, divergence.new_primary))
    if not source.slot_exists():
        source.close()
        raise ReplicationError(f"the replication slot {source.slot} of stream {divergence.stream} is gone from "
                               f"{divergence.old_primary}'s database: the changes past the divergence cannot be read")
    return source


def _declaration_rows(engine: Engine, bases: Iterable[str]) -> dict[str, dict]:
    bases = sorted(set(bases))
    found: dict[str, dict] = {}
    with engine.connect() as conn:
        for i in range(0, len(bases), 500):
            for row in conn.execute(select(declarations).where(declarations.c.base.in_(bases[i:i + 500]))).mappings():
                found[row["base"]] = dict(row)
    return found


def compute_report(old_url: str, new_engine: Engine, divergence: Divergence, stop: Mapping) -> dict:
    """The report: exact when the old primary's database and change source can be read, else the estimate with
    the reason. `stop` is step stop_stream's result (heartbeat_at, last_write_at, rate_per_s for the estimate)."""
    problem = database_problem(old_url)
    if problem:
        return estimated_report(divergence, problem, stop)
    try:
        source = _open_source(old_url, divergence)
        try:
            changes = unapplied_changes(source, divergence.positions, divergence.partitions)
        finally:
            source.close()
        old_engine = make_engine(old_url, writer=False)
        try:
            old_rows = _declaration_rows(old_engine, bases_needing_rows(changes))
        finally:
            old_engine.dispose()
    except (ReplicationError, DBAPIError) as exc:
        return estimated_report(divergence, f"cannot read {divergence.old_primary}'s changes: {exc}", stop)
    touched = {b for b in (base_of(c) for c in changes) if b}
    new_states = {base: row["state"] for base, row in _declaration_rows(new_engine, touched).items()}
    lost = lost_declarations(changes, old_rows, new_states)
    return exact_report(divergence, changes, lost)
