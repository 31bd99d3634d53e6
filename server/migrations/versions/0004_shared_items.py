"""Shared taught items (issue 18 item 4): items taught at one stall offered to the others.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "shared_items",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("stall_id", sa.String(length=16), nullable=False),
        sa.Column("item_id", sa.String(length=36), nullable=False),
        sa.Column("label", sa.String(length=64), nullable=False),
        sa.Column("plu", sa.String(length=16), nullable=True),
        sa.Column("name", sa.String(length=64), nullable=True),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("doc", sa.JSON(), nullable=False),
        sa.Column("taught_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("withdrawn_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("withdrawn_by", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(["stall_id"], ["stalls.stall_id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("shared_items", schema=None) as batch_op:
        batch_op.create_index("ix_shared_items_model", ["model", "id"], unique=False)
        batch_op.create_index("ux_shared_items_stall_item", ["stall_id", "item_id"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("shared_items", schema=None) as batch_op:
        batch_op.drop_index("ux_shared_items_stall_item")
        batch_op.drop_index("ix_shared_items_model")
    op.drop_table("shared_items")
