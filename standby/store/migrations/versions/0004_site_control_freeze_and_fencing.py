"""site control: the freeze's hold bounds and start, and the fencing epoch

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 17:05:00.000000

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision: str = '0004'
down_revision: Union[str, Sequence[str], None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

COLUMNS = (
    ('frozen_at', sa.Float()),
    ('hold_s', sa.Float()),
    ('hold_max', sa.Integer()),
    ('fenced_epoch', sa.BigInteger()),
)


def upgrade() -> None:
    """Upgrade schema."""
    # Plain ADD COLUMN (nullable, no default): no table rebuild on SQLite. site_control is not captured, so no
    # trigger needs the new columns.
    for name, type_ in COLUMNS:
        op.add_column('site_control', sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    # SQLite has had DROP COLUMN since 3.35; site_control has no index or constraint on these columns.
    for name, _type in reversed(COLUMNS):
        op.drop_column('site_control', name)
