"""Market management: catalogue, stall prices and their history, caps, inspections,
specials, manager accounts, scale events, alerts; day rollups; a stall's receipts indexed.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=24), nullable=False),
        sa.Column("stall_id", sa.String(length=16), nullable=True),
        sa.Column("plu", sa.String(length=16), nullable=True),
        sa.Column("detail", sa.String(length=400), nullable=False),
        sa.Column("raised_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("acknowledged_by", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key"),
    )
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_alerts_kind"), ["kind"], unique=False)
        batch_op.create_index("ix_alerts_open", ["acknowledged_at", "raised_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_alerts_raised_at"), ["raised_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_alerts_stall_id"), ["stall_id"], unique=False)

    op.create_table(
        "items",
        sa.Column("plu", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("name_en", sa.String(length=64), nullable=False),
        sa.Column("category", sa.String(length=32), nullable=False),
        sa.Column("price_unit", sa.String(length=8), nullable=False),
        sa.Column("picture", sa.String(length=256), nullable=True),
        sa.Column("origin", sa.String(length=64), nullable=True),
        sa.Column("label", sa.String(length=64), nullable=True),
        sa.Column("cap_fen", sa.BigInteger(), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("plu"),
    )
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_items_category"), ["category"], unique=False)

    op.create_table(
        "managers",
        sa.Column("username", sa.String(length=32), nullable=False),
        sa.Column("display_name", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("session_epoch", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("username"),
    )
    op.create_table(
        "sign_in_failures",
        sa.Column("scope", sa.String(length=8), nullable=False),
        sa.Column("subject", sa.String(length=64), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_failure_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("scope", "subject"),
    )
    op.create_table(
        "stall_contact",
        sa.Column("stall_id", sa.String(length=16), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["stall_id"], ["stalls.stall_id"]),
        sa.PrimaryKeyConstraint("stall_id"),
    )
    op.create_table(
        "price_changes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("plu", sa.String(length=16), nullable=False),
        sa.Column("stall_id", sa.String(length=16), nullable=True),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("price_unit", sa.String(length=8), nullable=False),
        sa.Column("old_fen", sa.BigInteger(), nullable=True),
        sa.Column("new_fen", sa.BigInteger(), nullable=True),
        sa.Column("who", sa.String(length=64), nullable=False),
        sa.Column("why", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("price_changes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_price_changes_at"), ["at"], unique=False)
        batch_op.create_index(batch_op.f("ix_price_changes_plu"), ["plu"], unique=False)
        batch_op.create_index(batch_op.f("ix_price_changes_stall_id"), ["stall_id"], unique=False)

    op.create_table(
        "rollup_stall_day",
        sa.Column("local_day", sa.Date(), nullable=False),
        sa.Column("stall_id", sa.String(length=16), nullable=False),
        sa.Column("sales", sa.Integer(), nullable=False),
        sa.Column("total_fen", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("local_day", "stall_id"),
    )
    op.create_table(
        "rollup_stall_item_day",
        sa.Column("local_day", sa.Date(), nullable=False),
        sa.Column("stall_id", sa.String(length=16), nullable=False),
        sa.Column("plu", sa.String(length=16), nullable=False),
        sa.Column("lines", sa.Integer(), nullable=False),
        sa.Column("weight_g", sa.BigInteger(), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("local_day", "stall_id", "plu"),
    )
    op.create_table(
        "inspections",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("batch_code", sa.String(length=32), nullable=False),
        sa.Column("plu", sa.String(length=16), nullable=False),
        sa.Column("stall_id", sa.String(length=16), nullable=False),
        sa.Column("method", sa.String(length=64), nullable=False),
        sa.Column("inhibition_permille", sa.Integer(), nullable=True),
        sa.Column("result", sa.String(length=8), nullable=False),
        sa.Column("tester", sa.String(length=64), nullable=False),
        sa.Column("tested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("local_day", sa.Date(), nullable=False),
        sa.Column("recorded_by", sa.String(length=64), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("note", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(
            ["stall_id"],
            ["stalls.stall_id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("inspections", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_inspections_batch_code"), ["batch_code"], unique=False)
        batch_op.create_index(batch_op.f("ix_inspections_local_day"), ["local_day"], unique=False)
        batch_op.create_index(batch_op.f("ix_inspections_stall_id"), ["stall_id"], unique=False)

    op.create_table(
        "promotions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("stall_id", sa.String(length=16), nullable=False),
        sa.Column("plu", sa.String(length=16), nullable=False),
        sa.Column("special_price_fen", sa.BigInteger(), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("title", sa.String(length=64), nullable=True),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancelled_by", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["plu"],
            ["items.plu"],
        ),
        sa.ForeignKeyConstraint(
            ["stall_id"],
            ["stalls.stall_id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("promotions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_promotions_ends_at"), ["ends_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_promotions_stall_id"), ["stall_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_promotions_starts_at"), ["starts_at"], unique=False)

    op.create_table(
        "scale_events",
        sa.Column("stall_id", sa.String(length=16), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("counter", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.String(length=400), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("prev", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("flags", sa.JSON(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["stall_id"],
            ["stalls.stall_id"],
        ),
        sa.PrimaryKeyConstraint("stall_id", "seq"),
    )
    with op.batch_alter_table("scale_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_scale_events_at"), ["at"], unique=False)

    op.create_table(
        "stall_prices",
        sa.Column("stall_id", sa.String(length=16), nullable=False),
        sa.Column("plu", sa.String(length=16), nullable=False),
        sa.Column("unit_price_fen", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["plu"],
            ["items.plu"],
        ),
        sa.ForeignKeyConstraint(
            ["stall_id"],
            ["stalls.stall_id"],
        ),
        sa.PrimaryKeyConstraint("stall_id", "plu"),
    )
    with op.batch_alter_table("stall_prices", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_stall_prices_plu"), ["plu"], unique=False)

    with op.batch_alter_table("sales", schema=None) as batch_op:
        batch_op.create_index("ux_sales_stall_receipt", ["stall_id", "receipt_no"], unique=True)
        # Every look-up by stall reads the index above; one on the stall alone only costs inserts.
        batch_op.drop_index(batch_op.f("ix_sales_stall_id"))
        # The big screen's latest sales (ORDER BY received_at DESC LIMIT 10) without a scan.
        batch_op.create_index(batch_op.f("ix_sales_received_at"), ["received_at"], unique=False)
    # The day rollups start with the history already stored, so rankings by week and
    # month and the stalls' average prices cover the days before this migration too.
    op.execute(
        "INSERT INTO rollup_stall_day (local_day, stall_id, sales, total_fen) "
        "SELECT local_day, stall_id, SUM(sales), SUM(total_fen) FROM rollup_stall_hour "
        "GROUP BY local_day, stall_id"
    )
    op.execute(
        "INSERT INTO rollup_stall_item_day "
        "(local_day, stall_id, plu, lines, weight_g, quantity, amount_fen) "
        "SELECT s.local_day, s.stall_id, l.plu, COUNT(*), SUM(COALESCE(l.weight_g, 0)), "
        "SUM(COALESCE(l.quantity, 0)), SUM(l.amount_fen) "
        "FROM sale_lines l JOIN sales s ON s.sale_id = l.sale_id "
        "GROUP BY s.local_day, s.stall_id, l.plu"
    )


def downgrade() -> None:
    with op.batch_alter_table("sales", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sales_received_at"))
        batch_op.create_index(batch_op.f("ix_sales_stall_id"), ["stall_id"], unique=False)
        batch_op.drop_index("ux_sales_stall_receipt")

    with op.batch_alter_table("stall_prices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_stall_prices_plu"))

    op.drop_table("stall_prices")
    with op.batch_alter_table("scale_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_scale_events_at"))

    op.drop_table("scale_events")
    with op.batch_alter_table("promotions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_promotions_starts_at"))
        batch_op.drop_index(batch_op.f("ix_promotions_stall_id"))
        batch_op.drop_index(batch_op.f("ix_promotions_ends_at"))

    op.drop_table("promotions")
    with op.batch_alter_table("inspections", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_inspections_stall_id"))
        batch_op.drop_index(batch_op.f("ix_inspections_local_day"))
        batch_op.drop_index(batch_op.f("ix_inspections_batch_code"))

    op.drop_table("inspections")
    op.drop_table("rollup_stall_item_day")
    op.drop_table("rollup_stall_day")
    with op.batch_alter_table("price_changes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_price_changes_stall_id"))
        batch_op.drop_index(batch_op.f("ix_price_changes_plu"))
        batch_op.drop_index(batch_op.f("ix_price_changes_at"))

    op.drop_table("price_changes")
    op.drop_table("stall_contact")
    op.drop_table("sign_in_failures")
    op.drop_table("managers")
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_items_category"))

    op.drop_table("items")
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_alerts_stall_id"))
        batch_op.drop_index(batch_op.f("ix_alerts_raised_at"))
        batch_op.drop_index(batch_op.f("ix_alerts_kind"))
        batch_op.drop_index("ix_alerts_open")

    op.drop_table("alerts")
