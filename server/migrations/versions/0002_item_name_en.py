"""The English item name on the big screen: ``rollup_item_day.name_en``.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rollup_item_day", schema=None) as batch_op:
        batch_op.add_column(sa.Column("name_en", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rollup_item_day", schema=None) as batch_op:
        batch_op.drop_column("name_en")
