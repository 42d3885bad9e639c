"""The witness's schema, migrated by its own Alembic environment (cutover/witness/migrations/).

Why Alembic and not `metadata.create_all`: the project's rule, and because the witness outlives releases: a later
column must arrive by a versioned migration, like the sites' databases. The witness keeps its history in its own
version table (`witness_alembic_version`), so even a database shared with something else keeps two histories apart.

`upgrade_in(conn)` runs inside a transaction the backend has opened and locked (BEGIN IMMEDIATE on SQLite, an
advisory transaction lock on PostgreSQL), so two processes opening a fresh witness at once migrate it exactly once.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from sqlalchemy import Connection, inspect, text

from cutover.witness.schema import VERSION_TABLE

MIGRATIONS = Path(__file__).parent / "migrations"
# The newest revision in migrations/versions (tests/unit/test_witness_migrate.py checks it is Alembic's head). Known
# here so that opening a current witness, which every command does, needs no Alembic: importing it costs about 0.2 s
# of each process's start, and a failover run by hand starts a process while the primary is down.
HEAD = "w0001"


def alembic_config(url: str = "sqlite://"):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


@lru_cache(maxsize=1)
def head_revision() -> str:
    """The head of the witness's Alembic history, read from its scripts."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(conn: Connection) -> str | None:
    """The revision the witness's schema is at (None before the first migration), from its version table."""
    if not inspect(conn).has_table(VERSION_TABLE):
        return None
    return conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()


def upgrade_in(conn: Connection) -> bool:
    """Bring the witness schema to the newest revision on `conn` (already in a locked transaction).

    Returns True when a migration ran, False when the schema was already current."""
    if current_revision(conn) == HEAD:
        return False
    from alembic import command

    cfg = alembic_config()
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "head")
    return True
