"""Baseline: the schema the server made with ``create_all`` before it had migrations.

A database of that code (no ``alembic_version`` table) is stamped at this revision, or
at 0002 when it already has ``rollup_item_day.name_en``, and upgraded from there
(``server.migrate``).

Revision ID: 0001
Revises:
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rollup_item_day",
        sa.Column("local_day", sa.Date(), nullable=False),
        sa.Column("plu", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("lines", sa.Integer(), nullable=False),
        sa.Column("weight_g", sa.BigInteger(), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("local_day", "plu"),
    )
    op.create_table(
        "rollup_stall_hour",
        sa.Column("local_day", sa.Date(), nullable=False),
        sa.Column("hour", sa.Integer(), nullable=False),
        sa.Column("stall_id", sa.String(length=16), nullable=False),
        sa.Column("sales", sa.Integer(), nullable=False),
        sa.Column("total_fen", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("local_day", "hour", "stall_id"),
    )
    op.create_table(
        "server_meta",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=256), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_table(
        "stalls",
        sa.Column("stall_id", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("public_key", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("stall_id"),
        sa.UniqueConstraint("token_sha256"),
    )
    op.create_table(
        "sales",
        sa.Column("sale_id", sa.String(length=36), nullable=False),
        sa.Column("stall_id", sa.String(length=16), nullable=False),
        sa.Column("receipt_no", sa.Integer(), nullable=False),
        sa.Column("trace_code", sa.String(length=20), nullable=False),
        sa.Column("sold_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("local_day", sa.Date(), nullable=False),
        sa.Column("total_fen", sa.BigInteger(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("signature", sa.String(length=256), nullable=False),
        sa.Column("verified", sa.Boolean(), nullable=False),
        sa.Column("flags", sa.JSON(), nullable=False),
        sa.Column("raw", sa.JSON(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["stall_id"],
            ["stalls.stall_id"],
        ),
        sa.PrimaryKeyConstraint("sale_id"),
        sa.UniqueConstraint("trace_code"),
    )
    with op.batch_alter_table("sales", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sales_local_day"), ["local_day"], unique=False)
        batch_op.create_index(batch_op.f("ix_sales_stall_id"), ["stall_id"], unique=False)

    op.create_table(
        "refunds",
        sa.Column("sale_id", sa.String(length=36), nullable=False),
        sa.Column("line_no", sa.Integer(), nullable=False),
        sa.Column("stall_id", sa.String(length=16), nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.Column("operator", sa.String(length=64), nullable=False),
        sa.Column("refunded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("local_day", sa.Date(), nullable=False),
        sa.ForeignKeyConstraint(
            ["sale_id"],
            ["sales.sale_id"],
        ),
        sa.PrimaryKeyConstraint("sale_id", "line_no"),
    )
    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_refunds_local_day"), ["local_day"], unique=False)
        batch_op.create_index(batch_op.f("ix_refunds_stall_id"), ["stall_id"], unique=False)

    op.create_table(
        "sale_lines",
        sa.Column("sale_id", sa.String(length=36), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("plu", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("weight_g", sa.Integer(), nullable=True),
        sa.Column("quantity", sa.Integer(), nullable=True),
        sa.Column("unit_price_fen", sa.BigInteger(), nullable=False),
        sa.Column("price_unit", sa.String(length=8), nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("batch_code", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(
            ["sale_id"],
            ["sales.sale_id"],
        ),
        sa.PrimaryKeyConstraint("sale_id", "idx"),
    )
    with op.batch_alter_table("sale_lines", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sale_lines_plu"), ["plu"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("sale_lines", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sale_lines_plu"))

    op.drop_table("sale_lines")
    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_refunds_stall_id"))
        batch_op.drop_index(batch_op.f("ix_refunds_local_day"))

    op.drop_table("refunds")
    with op.batch_alter_table("sales", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sales_stall_id"))
        batch_op.drop_index(batch_op.f("ix_sales_local_day"))

    op.drop_table("sales")
    op.drop_table("stalls")
    op.drop_table("server_meta")
    op.drop_table("rollup_stall_hour")
    op.drop_table("rollup_item_day")
