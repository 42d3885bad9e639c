"""Tables of the witness database, as SQLAlchemy Core, shared by every backend.

The witness's own Alembic environment (cutover/witness/migrations/, version table `witness_alembic_version`) creates
them; `metadata.create_all` is used nowhere outside tests. A migration test compares the migrated database with these
definitions, so the two cannot drift apart.

- witness_state: exactly one row (id = 1): the epoch, the primary, the primary's lease. Epoch 0 with no primary means
  "never initialised". The first migration inserts that row, so every later change is an UPDATE of a row that exists
  and can be locked (BEGIN IMMEDIATE on SQLite, SELECT ... FOR UPDATE on PostgreSQL).
- runbook_runs: one row per runbook run.
- runbook_journal: (run_id, seq) unique, append-only; a trigger refuses UPDATE and DELETE.
- audit_log: operator actions, append-only the same way.

Timestamps are float seconds since the Unix epoch (UTC), as in the sites' databases.
"""
from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
)

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)

VERSION_TABLE = "witness_alembic_version"
STATE_ROW_ID = 1
APPEND_ONLY_TABLES = ("runbook_journal", "audit_log")

_BigId = BigInteger().with_variant(Integer(), "sqlite")  # INTEGER PRIMARY KEY is SQLite's rowid alias

witness_state = Table(
    "witness_state",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("epoch", BigInteger, nullable=False),
    Column("primary_site", String(8)),
    Column("lease_holder", String(8)),
    Column("lease_expires_at", Float),
    Column("updated_at", Float),
    CheckConstraint("id = 1", name="single_row"),
    CheckConstraint("epoch >= 0", name="epoch"),
)

runbook_runs = Table(
    "runbook_runs",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("runbook", String(128), nullable=False),
    Column("operator", String(128), nullable=False),
    Column("params", JSON, nullable=False),
    Column("status", String(32), nullable=False),
    Column("started_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Index(None, "started_at"),
)

runbook_journal = Table(
    "runbook_journal",
    metadata,
    Column("run_id", String(64), ForeignKey("runbook_runs.run_id"), primary_key=True),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("step", String(128), nullable=False),
    Column("phase", String(32), nullable=False),
    Column("at", Float, nullable=False),
    Column("detail", JSON, nullable=False),
    CheckConstraint("seq >= 1", name="seq"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("operator", String(128), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(128), nullable=False),
    Column("args", JSON, nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("duration_s", Float),
    Column("detail", JSON, nullable=False),
    Index(None, "at"),
)
