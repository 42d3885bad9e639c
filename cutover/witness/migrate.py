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

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from cutover.witness.schema import VERSION_TABLE

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str = "sqlite://") -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


@lru_cache(maxsize=1)
def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()


def upgrade_in(conn: Connection) -> bool:
    """Bring the witness schema to the newest revision on `conn` (already in a locked transaction).

    Returns True when a migration ran, False when the schema was already current."""
    if current_revision(conn) == head_revision():
        return False
    cfg = alembic_config()
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "head")
    return True
