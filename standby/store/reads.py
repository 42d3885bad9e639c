"""The API's reads: a declaration with its goods lines, an officer's office, an officer's queue.

The statements are built once, at import, with bound parameters: SQLAlchemy then memoizes their cache keys, which
halves the per-read cost against building the statement on every call (246 -> 122 us for a declaration and its goods
lines on SQLite; a read is ~40% of the load tests' requests). Contract: every function takes an open connection and
only reads; none of them commits."""
from __future__ import annotations

from sqlalchemy import Connection, bindparam, func, select

from standby.domain.states import DeclarationState
from standby.store.schema import change_log, declarations, goods_lines, officers

QUEUE_STATES = (DeclarationState.DOCUMENT_CHECK.value, DeclarationState.INSPECTION.value)

_DECLARATION = select(declarations).where(declarations.c.base == bindparam("base"))
_GOODS = (select(goods_lines).where(goods_lines.c.declaration_base == bindparam("base"))
          .order_by(goods_lines.c.line_no))
_OFFICE_OF_DECLARATION = select(declarations.c.office_code).where(declarations.c.base == bindparam("base"))
_OFFICE_OF_OFFICER = select(officers.c.office_code).where(officers.c.officer_id == bindparam("officer_id"))
_QUEUE = (select(declarations)
          .where(declarations.c.officer_id == bindparam("officer_id"), declarations.c.state.in_(QUEUE_STATES))
          .order_by(declarations.c.registered_at).limit(bindparam("limit")))


def declaration(conn: Connection, base: str) -> dict | None:
    """The declaration row with this 11-digit base, or None."""
    row = conn.execute(_DECLARATION, {"base": base}).mappings().first()
    return dict(row) if row is not None else None


def goods(conn: Connection, base: str) -> list[dict]:
    """The declaration's goods lines in line order."""
    return [dict(r) for r in conn.execute(_GOODS, {"base": base}).mappings()]


def office_of_declaration(conn: Connection, base: str) -> str | None:
    return conn.execute(_OFFICE_OF_DECLARATION, {"base": base}).scalar()


def office_of_officer(conn: Connection, officer_id: str) -> str | None:
    return conn.execute(_OFFICE_OF_OFFICER, {"officer_id": officer_id}).scalar()


def officer_queue(conn: Connection, officer_id: str, limit: int) -> list[dict]:
    """Declarations waiting for this officer's decision (document check or inspection), oldest registration first."""
    return [dict(r) for r in conn.execute(_QUEUE, {"officer_id": officer_id, "limit": limit}).mappings()]


_CHANGE_LOG_HEAD = select(change_log.c.seq, change_log.c.at).order_by(change_log.c.seq).limit(1)
_CHANGE_LOG_LAST = select(func.max(change_log.c.seq))


def change_log_backlog(conn: Connection) -> tuple[int, float | None] | None:
    """(captured changes not yet acknowledged, commit time of the oldest) from SQLite's change_log, by its primary
    key only (two index lookups, whatever its size; acknowledged entries are pruned from the front, so the span of
    sequence numbers is the count). None where there is no SQLite change capture (PostgreSQL, or before migration
    0002): the engine notes it per connection when it connects (store/engine.py)."""
    if not conn.info.get("capture_txn"):
        return None
    head = conn.execute(_CHANGE_LOG_HEAD).first()
    if head is None:
        return 0, None
    return conn.execute(_CHANGE_LOG_LAST).scalar() - head.seq + 1, head.at
