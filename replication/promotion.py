"""What a promoted standby must fix before it takes writes: its id generators.

Replication copies rows, values included, but not the generators behind them. On PostgreSQL a standby's sequences
(e.g. `audit_log`'s id) are still where its own last insert left them, so the first insert after promotion would
reuse a replicated id: duplicate key. On SQLite an INTEGER PRIMARY KEY without AUTOINCREMENT takes max(rowid) + 1
and needs nothing; an AUTOINCREMENT table follows `sqlite_sequence`, which SQLite also raises on explicit-id
inserts, so it is checked (and raised if ever behind) rather than trusted.

Lives here, not in the store: the need comes from replication (rows copied without their sequences); the switchover
runbook's promote step calls it on the new primary, before intake resumes.
"""
from __future__ import annotations

from sqlalchemy import Connection, Engine, text

from standby.store.engine import is_sqlite

# Sequences of the current schema owned by a table column (serial / bigserial and identity columns alike).
OWNED_SEQUENCES = (
    "SELECT s.relname::text AS sequence, t.relname::text AS table_name, a.attname::text AS column_name "
    "FROM pg_class s JOIN pg_namespace n ON n.oid = s.relnamespace "
    "JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = s.oid "
    "AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i') "
    "JOIN pg_class t ON t.oid = d.refobjid "
    "JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid "
    "WHERE s.relkind = 'S' AND n.nspname = current_schema() ORDER BY 1")


def advance_sequences(engine: Engine) -> dict[str, int]:
    """Set every generator of the schema past the largest value replicated into its column, in one transaction;
    return {generator: its new last value} for those that moved (a generator already past stays; an empty table
    moves nothing). PostgreSQL: every column-owned sequence of the current schema (setval, so the next value is
    max + 1). SQLite: every `sqlite_sequence` entry behind its table's max(rowid). Idempotent."""
    with engine.begin() as conn:
        return _advance_sqlite(conn) if is_sqlite(engine) else _advance_postgres(conn)


def _advance_postgres(conn: Connection) -> dict[str, int]:
    quote = conn.dialect.identifier_preparer.quote
    moved: dict[str, int] = {}
    for seq, table, column in conn.execute(text(OWNED_SEQUENCES)).all():
        # Identifiers cannot be bound: they come from the catalog and are quoted.
        highest = conn.execute(text(f"SELECT max({quote(column)}) FROM {quote(table)}")).scalar()
        last, called = conn.execute(text(f"SELECT last_value, is_called FROM {quote(seq)}")).one()
        next_value = last + 1 if called else last
        if highest is not None and highest >= next_value:
            conn.execute(text("SELECT setval(CAST(:seq AS regclass), :value, true)"),
                         {"seq": quote(seq), "value": int(highest)})
            moved[seq] = int(highest)
    return moved


def _advance_sqlite(conn: Connection) -> dict[str, int]:
    quote = conn.dialect.identifier_preparer.quote
    exists = conn.execute(text("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_sequence'"))
    if exists.first() is None:
        return {}  # no AUTOINCREMENT table has ever been written
    moved: dict[str, int] = {}
    for name, seq in conn.execute(text("SELECT name, seq FROM sqlite_sequence ORDER BY name")).all():
        highest = conn.execute(text(f"SELECT max(rowid) FROM {quote(name)}")).scalar()
        if highest is not None and highest > (seq or 0):
            conn.execute(text("UPDATE sqlite_sequence SET seq = :seq WHERE name = :name"),
                         {"seq": int(highest), "name": name})
            moved[name] = int(highest)
    return moved
