"""org-structure change sets: the active map version, loaded mappings, prepared re-maps, and the address columns they
move (a declaration's declarant address as declared; the previous codes a rollback restores)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 00:10:00.000000

"""
from datetime import date
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

from standby.store.capture import capture_triggers, drop_capture_triggers


# revision identifiers, used by Alembic.
revision: str = '0006'
down_revision: Union[str, Sequence[str], None] = '0005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

LEGACY_FROM = date(1900, 1, 1)  # the legacy map's version (standby/store/reference.py), frozen here

NEW_COLUMNS = {
    'customs_offices': (('province_map_version', sa.Date()), ('prev_province_code', sa.String(2)),
                        ('prev_province_map_version', sa.Date())),
    'enterprises': (('prev_province_code', sa.String(2)), ('prev_ward_code', sa.String(5)),
                    ('prev_address_valid_from', sa.Date()), ('address_review', sa.String(64))),
    'declarations': (('declarant_province_code', sa.String(2)), ('declarant_ward_code', sa.String(5)),
                     ('declarant_map_version', sa.Date()), ('declarant_prev_province_code', sa.String(2)),
                     ('declarant_prev_ward_code', sa.String(5)), ('declarant_prev_map_version', sa.Date()),
                     ('declarant_review', sa.String(64))),
}

# Captured columns as of this revision (SQLite triggers list every column they log; see 0002).
CAPTURED = {
    'customs_offices': (('code',), ('code', 'name', 'branch_code', 'province_code', 'province_map_version',
                                    'prev_province_code', 'prev_province_map_version'), ()),
    'enterprises': (('tax_code',), ('tax_code', 'name', 'province_code', 'ward_code', 'address_valid_from', 'street',
                                    'status', 'tax_debt_days', 'risk_class', 'age_days', 'prev_province_code',
                                    'prev_ward_code', 'prev_address_valid_from', 'address_review'), ()),
    'declarations': (('base',), ('base', 'number', 'amendment', 'kind', 'section', 'enterprise_tax_code',
                                 'office_code', 'state', 'lane', 'lane_rule', 'lane_reason', 'officer_id', 'line_count',
                                 'customs_value_vnd', 'duty_vnd', 'vat_vnd', 'total_vnd', 'paid_vnd', 'site_id',
                                 'epoch', 'created_at', 'registered_at', 'decided_at', 'closed_at', 'updated_at',
                                 'declarant_province_code', 'declarant_ward_code', 'declarant_map_version',
                                 'declarant_prev_province_code', 'declarant_prev_ward_code',
                                 'declarant_prev_map_version', 'declarant_review'),
                     ('created_at', 'registered_at', 'decided_at', 'closed_at', 'updated_at')),
    'org_map_state': (('scope',), ('scope', 'active_version', 'changeset_id', 'previous_version', 'switched_at'),
                      ('switched_at',)),
    'org_successors': (('changeset_id', 'kind', 'old_code', 'new_code'),
                       ('changeset_id', 'kind', 'old_code', 'new_code', 'is_default', 'needs_review'), ()),
}


def upgrade() -> None:
    """Upgrade schema."""
    sqlite = op.get_bind().dialect.name == "sqlite"
    for table, columns in NEW_COLUMNS.items():
        for name, type_ in columns:
            op.add_column(table, sa.Column(name, type_, nullable=True))
    op.add_column('site_control', sa.Column('org_moves_changeset', sa.String(64), nullable=True))  # not captured
    op.create_table(
        'org_map_state',
        sa.Column('scope', sa.String(length=8), nullable=False),
        sa.Column('active_version', sa.Date(), nullable=False),
        sa.Column('changeset_id', sa.String(length=64), nullable=True),
        sa.Column('previous_version', sa.Date(), nullable=True),
        sa.Column('switched_at', sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint('scope', name=op.f('pk_org_map_state')),
    )
    op.create_table(
        'org_successors',
        sa.Column('changeset_id', sa.String(length=64), nullable=False),
        sa.Column('kind', sa.String(length=8), nullable=False),
        sa.Column('old_code', sa.String(length=5), nullable=False),
        sa.Column('new_code', sa.String(length=5), nullable=False),
        sa.Column('is_default', sa.Boolean(), nullable=False),
        sa.Column('needs_review', sa.Boolean(), nullable=False),
        sa.CheckConstraint("kind IN ('province', 'ward')", name=op.f('ck_org_successors_kind')),
        sa.PrimaryKeyConstraint('changeset_id', 'kind', 'old_code', 'new_code', name=op.f('pk_org_successors')),
    )
    op.create_table(
        'org_remap',
        sa.Column('changeset_id', sa.String(length=64), nullable=False),
        sa.Column('record', sa.String(length=12), nullable=False),
        sa.Column('record_key', sa.String(length=13), nullable=False),
        sa.Column('old_province_code', sa.String(length=2), nullable=False),
        sa.Column('old_ward_code', sa.String(length=5), nullable=True),
        sa.Column('old_version', sa.Date(), nullable=False),
        sa.Column('new_province_code', sa.String(length=2), nullable=True),
        sa.Column('new_ward_code', sa.String(length=5), nullable=True),
        sa.Column('review', sa.Boolean(), nullable=False),
        sa.CheckConstraint("record IN ('enterprise', 'declaration', 'office')", name=op.f('ck_org_remap_record')),
        sa.PrimaryKeyConstraint('changeset_id', 'record', 'record_key', name=op.f('pk_org_remap')),
    )
    # The switch finds the open declarations on a map through this, never reading the closed ones.
    op.create_index(op.f('ix_declarations_declarant_map_version_state'), 'declarations',
                    ['declarant_map_version', 'state'])
    # Fill with capture off: every site runs this migration itself, so the fill is not a change to replicate.
    if sqlite:
        op.execute("UPDATE capture_txn SET capture = 0 WHERE id = 1")
    op.execute(sa.text("INSERT INTO org_map_state (scope, active_version) VALUES ('site', :legacy)")
               .bindparams(legacy=LEGACY_FROM))
    op.execute(sa.text("UPDATE customs_offices SET province_map_version = :legacy").bindparams(legacy=LEGACY_FROM))
    # Existing declarations take the declarant's address from the enterprise (what it was when the row was written
    # is not known; before this revision nothing could move an enterprise's address).
    for column, source in (('declarant_province_code', 'province_code'), ('declarant_ward_code', 'ward_code'),
                           ('declarant_map_version', 'address_valid_from')):
        op.execute(f"UPDATE declarations SET {column} = (SELECT e.{source} FROM enterprises e "
                   f"WHERE e.tax_code = declarations.enterprise_tax_code)")
    if sqlite:
        op.execute("UPDATE capture_txn SET capture = 1 WHERE id = 1")
        for table, (pk, columns, reals) in CAPTURED.items():
            for statement in drop_capture_triggers(table) + capture_triggers(table, pk, columns, reals):
                op.execute(statement)


def downgrade() -> None:
    """Downgrade schema: the 0002 triggers of the changed tables come back with their old column lists."""
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        for table in CAPTURED:
            for statement in drop_capture_triggers(table):
                op.execute(statement)
    op.drop_index(op.f('ix_declarations_declarant_map_version_state'), table_name='declarations')
    op.drop_table('org_remap')
    op.drop_table('org_successors')
    op.drop_table('org_map_state')
    op.drop_column('site_control', 'org_moves_changeset')
    for table, columns in reversed(NEW_COLUMNS.items()):
        for name, _type in reversed(columns):
            op.drop_column(table, name)
    if sqlite:
        before = _revision_0002().CAPTURED
        for table in NEW_COLUMNS:
            for statement in capture_triggers(table, *before[table]):
                op.execute(statement)


def _revision_0002():
    from importlib.util import module_from_spec, spec_from_file_location
    from pathlib import Path
    spec = spec_from_file_location("revision_0002", Path(__file__).with_name(
        "0002_change_capture_and_replication_state.py"))
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
