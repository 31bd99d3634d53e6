"""Sales partitioned by month of market day on PostgreSQL (issue 20): ``server/partitions.py``.

SQLite has no partitioning: nothing changes there.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import datetime as dt

from alembic import op

from server import partitions

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        partitions.partition_sales(conn, dt.date.today())


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        partitions.unpartition_sales(conn)
