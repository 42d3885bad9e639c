"""Tables of a site's database. The same schema runs on SQLite (WAL) and PostgreSQL.

Alembic migrations create these tables; `metadata.create_all` is used nowhere outside tests.
Money is whole VND in BigInteger; codes are strings with their official zero-padding.
"""
from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
)

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)

# Timestamps are float seconds since the epoch (UTC): portable across both engines and cheap to compare.

site_control = Table(
    "site_control",
    metadata,
    Column("site_id", String(8), primary_key=True),
    Column("role", String(16), nullable=False),
    Column("epoch", BigInteger, nullable=False),
    Column("intake_state", String(16), nullable=False),
    Column("primary_site", String(8)),
    Column("updated_at", Float, nullable=False),
    # The current freeze (NULL when intake is not frozen): when it began and how long and how many writes the API
    # may hold meanwhile.
    Column("frozen_at", Float),
    Column("hold_s", Float),
    Column("hold_max", Integer),
    # The witness epoch that fenced this site (NULL if never fenced); `epoch` stays the one it was promoted under.
    Column("fenced_epoch", BigInteger),
    # The self-fencing deadline (seconds since the epoch) of a primary that holds a lease in the witness: no write
    # commits at or after it. NULL: the site keeps no lease (no witness configured).
    Column("lease_until", Float),
    # Migration 0006: set on a standby that switched to a change set's map before its primary (the restructure
    # through a switchover): its applier moves the live rows that still arrive on the old map (address_moves).
    Column("org_moves_changeset", String(64)),
    CheckConstraint("role IN ('primary', 'standby')", name="role"),
    CheckConstraint("intake_state IN ('open', 'frozen', 'fenced')", name="intake_state"),
)

number_blocks = Table(
    "number_blocks",
    metadata,
    Column("site_digit", Integer, primary_key=True),
    Column("next_sequence", BigInteger, nullable=False),
)

provinces = Table(
    "provinces",
    metadata,
    Column("code", String(2), primary_key=True),
    Column("valid_from", Date, primary_key=True),
    Column("valid_to", Date),
    Column("name", String(100), nullable=False),
    Column("short_name", String(100), nullable=False),
)

wards = Table(
    "wards",
    metadata,
    Column("code", String(5), primary_key=True),
    Column("valid_from", Date, primary_key=True),
    Column("valid_to", Date),
    Column("name", String(100), nullable=False),
    Column("province_code", String(2), nullable=False),
    Index(None, "province_code", "valid_from"),
)

customs_branches = Table(
    "customs_branches",
    metadata,
    Column("code", String(5), primary_key=True),
    Column("name", String(100), nullable=False),
    Column("headquarters", String(100)),
    Column("status", String(16), nullable=False),
)

customs_branch_provinces = Table(
    "customs_branch_provinces",
    metadata,
    Column("branch_code", String(5), ForeignKey("customs_branches.code"), primary_key=True),
    Column("legacy_province_code", String(2), primary_key=True),
    Column("status", String(16), nullable=False),
)

customs_offices = Table(
    "customs_offices",
    metadata,
    Column("code", String(4), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("branch_code", String(5), ForeignKey("customs_branches.code"), nullable=False),
    Column("province_code", String(2), nullable=False),
    # Migration 0006: the map version of province_code, and the code before the last org change set moved it.
    Column("province_map_version", Date, doc="which map version province_code belongs to"),
    Column("prev_province_code", String(2)),
    Column("prev_province_map_version", Date),
)

officers = Table(
    "officers",
    metadata,
    Column("officer_id", String(16), primary_key=True),
    Column("name", String(100), nullable=False),
    Column("office_code", String(4), ForeignKey("customs_offices.code"), nullable=False),
    Column("section", String(2), nullable=False),
    Column("position", Integer, nullable=False, doc="place in the office section's registered rotation list"),
    Column("active", Boolean, nullable=False, default=True),
    UniqueConstraint("office_code", "section", "position"),
    CheckConstraint("section IN ('01', '02')", name="section"),
)

officer_rotation = Table(
    "officer_rotation",
    metadata,
    Column("office_code", String(4), primary_key=True),
    Column("section", String(2), primary_key=True),
    Column("next_position", Integer, nullable=False),
)

enterprises = Table(
    "enterprises",
    metadata,
    Column("tax_code", String(13), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("province_code", String(2), nullable=False),
    Column("ward_code", String(5), nullable=False),
    Column("address_valid_from", Date, nullable=False, doc="which map version the address codes belong to"),
    Column("street", String(200), nullable=False),
    Column("status", String(16), nullable=False),
    Column("tax_debt_days", Integer, nullable=False),
    Column("risk_class", String(16), nullable=False),
    Column("age_days", Integer, nullable=False),
    # Migration 0006: the address before the last org change set moved it (a rollback restores it), and the change
    # set that put the address on a split unit's default successor (a human should check it).
    Column("prev_province_code", String(2)),
    Column("prev_ward_code", String(5)),
    Column("prev_address_valid_from", Date),
    Column("address_review", String(64), doc="the change set whose default successor this address landed on"),
    CheckConstraint("status IN ('active', 'suspended', 'dissolved')", name="status"),
    Index(None, "province_code", "ward_code"),
)

declarations = Table(
    "declarations",
    metadata,
    Column("base", String(11), primary_key=True, doc="first 11 digits of the number; stable across amendments"),
    Column("number", String(12), nullable=False, unique=True),
    Column("amendment", Integer, nullable=False),
    Column("kind", String(8), nullable=False),
    Column("section", String(2), nullable=False),
    Column("enterprise_tax_code", String(13), ForeignKey("enterprises.tax_code"), nullable=False),
    Column("office_code", String(4), ForeignKey("customs_offices.code"), nullable=False),
    Column("state", String(20), nullable=False),
    Column("lane", String(8)),
    Column("lane_rule", String(64)),
    Column("lane_reason", Text),
    Column("officer_id", String(16)),
    Column("line_count", Integer, nullable=False),
    Column("customs_value_vnd", BigInteger, nullable=False),
    Column("duty_vnd", BigInteger, nullable=False),
    Column("vat_vnd", BigInteger, nullable=False),
    Column("total_vnd", BigInteger, nullable=False),
    Column("paid_vnd", BigInteger, nullable=False, default=0),
    Column("site_id", String(8), nullable=False),
    Column("epoch", BigInteger, nullable=False, doc="epoch the last write was accepted under"),
    Column("created_at", Float, nullable=False),
    Column("registered_at", Float),
    Column("decided_at", Float),
    Column("closed_at", Float),
    Column("updated_at", Float, nullable=False),
    # Migration 0006: the declarant's address as declared (a legal record: a closed declaration keeps it), with its
    # map version; an open one is moved by an org change set, which keeps the previous codes for a rollback.
    Column("declarant_province_code", String(2)),
    Column("declarant_ward_code", String(5)),
    Column("declarant_map_version", Date),
    Column("declarant_prev_province_code", String(2)),
    Column("declarant_prev_ward_code", String(5)),
    Column("declarant_prev_map_version", Date),
    Column("declarant_review", String(64), doc="the change set whose default successor the address landed on"),
    CheckConstraint("kind IN ('import', 'export')", name="kind"),
    CheckConstraint("amendment BETWEEN 0 AND 9", name="amendment"),
    CheckConstraint("total_vnd >= 0 AND paid_vnd >= 0", name="money"),
    Index(None, "enterprise_tax_code"),
    Index(None, "office_code", "state"),
    Index(None, "officer_id", "state"),
    # Migration 0006: an org switch finds the open declarations on a map through this, never by reading the closed
    # ones, so its freeze grows with the open declarations, not with the store.
    Index(None, "declarant_map_version", "state"),
)

goods_lines = Table(
    "goods_lines",
    metadata,
    Column("declaration_base", String(11), ForeignKey("declarations.base"), primary_key=True),
    Column("line_no", Integer, primary_key=True),
    Column("hs_code", String(8), nullable=False),
    Column("description", String(200), nullable=False),
    Column("quantity", Numeric(18, 3), nullable=False),
    Column("unit", String(8), nullable=False),
    Column("unit_price", Numeric(18, 4), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("origin", String(2), nullable=False),
    Column("value_vnd", BigInteger, nullable=False),
    Column("duty_vnd", BigInteger, nullable=False),
    Column("vat_vnd", BigInteger, nullable=False),
)

officer_assignments = Table(
    "officer_assignments",
    metadata,
    Column("declaration_base", String(11), ForeignKey("declarations.base"), primary_key=True),
    Column("amendment", Integer, primary_key=True),
    Column("officer_id", String(16), ForeignKey("officers.officer_id"), nullable=False),
    Column("office_code", String(4), nullable=False),
    Column("section", String(2), nullable=False),
    Column("lane", String(8), nullable=False),
    Column("assigned_at", Float, nullable=False),
    Column("decision", String(16)),
    Column("decision_note", Text),
    Column("decided_at", Float),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("principal", String(64), primary_key=True),
    Column("key", String(128), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("status", Integer, nullable=False),
    Column("response", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Index(None, "created_at"),  # retention deletes by age
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("site_id", String(8), nullable=False),
    Column("epoch", BigInteger, nullable=False),
    Column("actor", String(64), nullable=False),
    Column("action", String(32), nullable=False),
    Column("target", String(32)),
    Column("detail", Text),
)

# --- change capture and replication bookkeeping (migration 0002) ---------------------------------------------------

change_log = Table(
    "change_log",
    metadata,
    # AUTOINCREMENT: a sequence is never reused after acknowledged rows are pruned. SQLite has one writer at a time,
    # so the order rows get their seq in is the order their transactions commit.
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("table_name", String(64), nullable=False),
    Column("op", String(8), nullable=False),
    Column("pk", Text, nullable=False),
    Column("row", Text),
    Column("at", Float, nullable=False),
    Column("txid", BigInteger, nullable=False),
    sqlite_autoincrement=True,
)  # SQLite change capture, filled by triggers in the writing transaction (PostgreSQL uses logical decoding)

capture_txn = Table(
    "capture_txn",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("txid", BigInteger, nullable=False),
    Column("capture", Integer, nullable=False),
)  # one row; every write transaction of a writer engine bumps it first, so the triggers can stamp a transaction id

replication_heartbeat = Table(
    "replication_heartbeat",
    metadata,
    Column("source", String(8), primary_key=True),
    Column("at", Float, nullable=False),
    Column("counter", BigInteger, nullable=False),
)  # written on the primary by the replicator and replicated like any row, so the standby can tell its lag

replication_state = Table(
    "replication_state",
    metadata,
    Column("stream", String(64), primary_key=True),
    Column("part", Integer, primary_key=True),
    Column("position", BigInteger, nullable=False),
    Column("changes", BigInteger, nullable=False),
    Column("heartbeat_at", Float),
    Column("applied_at", Float, nullable=False),
)  # on the standby: how far each apply partition has got, written in the same transaction as the rows


# --- failback (migration 0005) -------------------------------------------------------------------------------------

quarantine = Table(
    "quarantine",
    metadata,
    # Rows an old primary wrote after the position its standby had applied when it was promoted (a failover): moved
    # here by the failback, never deleted, so reconcile can bring them back or list them for review. Not replicated.
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("run_id", String(64), nullable=False, doc="the failback run that moved the row aside"),
    Column("epoch", BigInteger, nullable=False, doc="the epoch the old primary wrote under"),
    Column("position", BigInteger, nullable=False, doc="the change's position in the old primary's stream"),
    Column("table_name", String(64), nullable=False),
    Column("pk", Text, nullable=False, doc="the row's key, JSON"),
    Column("row", Text, doc="the row as the old primary last had it, JSON; NULL when it deleted the row"),
    Column("declaration_number", String(12), doc="the declaration the row belongs to, for review"),
    Column("quarantined_at", Float, nullable=False),
    Column("status", String(16), nullable=False, default="held"),
    Column("decided_at", Float),
    Column("decision", Text, doc="why reconcile re-applied or listed it"),
    CheckConstraint("status IN ('held', 'reapplied', 'conflict')", name="status"),
    UniqueConstraint("run_id", "table_name", "pk"),
    Index(None, "status", "declaration_number"),
)


# --- org-structure change sets (migration 0006) ----------------------------------------------------------------------

org_map_state = Table(
    "org_map_state",
    metadata,
    # One row: the map version in force on this site's records (replicated, so a standby follows the switch).
    # Map versions are the reference rows' valid_from dates.
    Column("scope", String(8), primary_key=True, doc="always 'site'"),
    Column("active_version", Date, nullable=False),
    Column("changeset_id", String(64), doc="the change set that made active_version active"),
    Column("previous_version", Date),
    Column("switched_at", Float),
)

org_successors = Table(
    "org_successors",
    metadata,
    # A loaded change set's mapping: each old unit's successors, one of them the default (replicated, so both sites
    # resolve old codes the same way).
    Column("changeset_id", String(64), primary_key=True),
    Column("kind", String(8), primary_key=True),
    Column("old_code", String(5), primary_key=True),
    Column("new_code", String(5), primary_key=True),
    Column("is_default", Boolean, nullable=False),
    Column("needs_review", Boolean, nullable=False),
    CheckConstraint("kind IN ('province', 'ward')", name="kind"),
)

org_remap = Table(
    "org_remap",
    metadata,
    # Prepared online: each live record's codes now and where the change set moves them. Local to the site that
    # prepares (not replicated); the switch reads it in one UPDATE per table.
    Column("changeset_id", String(64), primary_key=True),
    Column("record", String(12), primary_key=True, doc="enterprise, declaration or office"),
    Column("record_key", String(13), primary_key=True),
    Column("old_province_code", String(2), nullable=False),
    Column("old_ward_code", String(5)),
    Column("old_version", Date, nullable=False),
    Column("new_province_code", String(2)),
    Column("new_ward_code", String(5)),
    Column("review", Boolean, nullable=False),
    CheckConstraint("record IN ('enterprise', 'declaration', 'office')", name="record"),
)
