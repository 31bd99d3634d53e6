"""Online orders (issue 19): orders, their lines, and whether each stall takes orders.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "orders",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("stall_id", sa.String(length=16), nullable=False),
        sa.Column("phone_key", sa.String(length=64), nullable=False),
        sa.Column("phone_masked", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("pickup_code", sa.String(length=8), nullable=False),
        sa.Column("slot_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("slot_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("note", sa.String(length=200), nullable=True),
        sa.Column("estimate_fen", sa.BigInteger(), nullable=False),
        sa.Column("final_fen", sa.BigInteger(), nullable=True),
        sa.Column("tolerance_pct", sa.Integer(), nullable=False),
        sa.Column("sale_id", sa.String(length=36), nullable=True),
        sa.Column("trace_code", sa.String(length=20), nullable=True),
        sa.Column("local_day", sa.Date(), nullable=True),
        sa.Column("payment", sa.String(length=8), nullable=True),
        sa.Column("cancel_reason", sa.String(length=200), nullable=True),
        sa.Column("cancelled_by", sa.String(length=64), nullable=True),
        sa.Column("placed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("accepted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("weighing_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ready_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("picked_up_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["stall_id"], ["stalls.stall_id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sale_id"),
    )
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.create_index("ix_orders_stall_state", ["stall_id", "state"], unique=False)
        batch_op.create_index("ix_orders_phone", ["phone_key", "id"], unique=False)
        batch_op.create_index("ix_orders_local_day", ["local_day"], unique=False)
        batch_op.create_index("ix_orders_placed_at", ["placed_at"], unique=False)
    op.create_table(
        "order_lines",
        sa.Column("order_id", sa.Integer(), nullable=False),
        sa.Column("line_no", sa.Integer(), nullable=False),
        sa.Column("plu", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("name_en", sa.String(length=64), nullable=False),
        sa.Column("price_unit", sa.String(length=8), nullable=False),
        sa.Column("unit_price_fen", sa.BigInteger(), nullable=False),
        sa.Column("est_weight_g", sa.Integer(), nullable=True),
        sa.Column("quantity", sa.Integer(), nullable=True),
        sa.Column("est_amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("final_weight_g", sa.Integer(), nullable=True),
        sa.Column("final_quantity", sa.Integer(), nullable=True),
        sa.Column("final_amount_fen", sa.BigInteger(), nullable=True),
        sa.Column("over_tolerance", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"]),
        sa.PrimaryKeyConstraint("order_id", "line_no"),
    )
    op.create_table(
        "order_desks",
        sa.Column("stall_id", sa.String(length=16), nullable=False),
        sa.Column("open", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["stall_id"], ["stalls.stall_id"]),
        sa.PrimaryKeyConstraint("stall_id"),
    )


def downgrade() -> None:
    op.drop_table("order_desks")
    op.drop_table("order_lines")
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_index("ix_orders_placed_at")
        batch_op.drop_index("ix_orders_local_day")
        batch_op.drop_index("ix_orders_phone")
        batch_op.drop_index("ix_orders_stall_state")
    op.drop_table("orders")
