"""site control: the lease's self-fencing deadline; quarantine for the rows an old primary wrote past a failover

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 20:30:00.000000

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision: str = '0005'
down_revision: Union[str, Sequence[str], None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    # site_control is not captured (no trigger to rebuild); quarantine is local to a site and not captured either.
    op.add_column('site_control', sa.Column('lease_until', sa.Float(), nullable=True))
    op.create_table(
        'quarantine',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
        sa.Column('run_id', sa.String(length=64), nullable=False),
        sa.Column('epoch', sa.BigInteger(), nullable=False),
        sa.Column('position', sa.BigInteger(), nullable=False),
        sa.Column('table_name', sa.String(length=64), nullable=False),
        sa.Column('pk', sa.Text(), nullable=False),
        sa.Column('row', sa.Text(), nullable=True),
        sa.Column('declaration_number', sa.String(length=12), nullable=True),
        sa.Column('quarantined_at', sa.Float(), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('decided_at', sa.Float(), nullable=True),
        sa.Column('decision', sa.Text(), nullable=True),
        sa.CheckConstraint("status IN ('held', 'reapplied', 'conflict')", name=op.f('ck_quarantine_status')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_quarantine')),
        sa.UniqueConstraint('run_id', 'table_name', 'pk', name=op.f('uq_quarantine_run_id_table_name_pk')),
    )
    op.create_index(op.f('ix_quarantine_status_declaration_number'), 'quarantine', ['status', 'declaration_number'])


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index(op.f('ix_quarantine_status_declaration_number'), table_name='quarantine')
    op.drop_table('quarantine')
    op.drop_column('site_control', 'lease_until')
