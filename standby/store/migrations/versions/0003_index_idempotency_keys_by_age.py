"""index idempotency keys by age

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 05:19:25.207073

"""
from typing import Sequence, Union

from alembic import op


# revision identifiers, used by Alembic.
revision: str = '0003'
down_revision: Union[str, Sequence[str], None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    # A plain CREATE INDEX: batch mode could rebuild the table on SQLite and lose its change-capture triggers.
    op.create_index(op.f('ix_idempotency_keys_created_at'), 'idempotency_keys', ['created_at'], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index(op.f('ix_idempotency_keys_created_at'), table_name='idempotency_keys')
