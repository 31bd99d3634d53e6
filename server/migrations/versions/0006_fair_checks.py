"""Fair-scale checks (issue 19 item 4): a shopper's receipt re-weighed at the fair scale.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fair_checks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("check_id", sa.String(length=36), nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("local_day", sa.Date(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("trace_code", sa.String(length=64), nullable=False),
        sa.Column("sale_id", sa.String(length=36), nullable=True),
        sa.Column("stall_id", sa.String(length=16), nullable=True),
        sa.Column("line_no", sa.Integer(), nullable=True),
        sa.Column("receipt_g", sa.Integer(), nullable=True),
        sa.Column("measured_g", sa.Integer(), nullable=False),
        sa.Column("diff_g", sa.Integer(), nullable=True),
        sa.Column("tolerance_mg", sa.Integer(), nullable=True),
        sa.Column("e_g", sa.Integer(), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("alert_id", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("check_id"),
    )
    with op.batch_alter_table("fair_checks", schema=None) as batch_op:
        batch_op.create_index("ix_fair_checks_day_stall", ["local_day", "stall_id"], unique=False)
        batch_op.create_index("ix_fair_checks_checked_at", ["checked_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("fair_checks", schema=None) as batch_op:
        batch_op.drop_index("ix_fair_checks_checked_at")
        batch_op.drop_index("ix_fair_checks_day_stall")
    op.drop_table("fair_checks")
