"""On PostgreSQL, ``sales`` is partitioned by month of market day, and old months archive.

Why: a market keeps every sale for years (traceability), but screens, statistics and
uploads only touch the last days.  With one partition a month, the month of today is a
small table whose indexes stay in memory, and a month that is no longer needed online is
*detached* (``ALTER TABLE sales DETACH PARTITION``: a catalogue change, no rewrite) into a
table of its own that an operator dumps and drops (:func:`archive`).

The layout (migration ``0007``; SQLite keeps the plain tables, it has no partitioning):

* ``sales`` is ``PARTITION BY RANGE (local_day)``: ``sales_YYYY_MM`` per month, and
  ``sales_default`` for a day outside them (a stall clock years off), so no insert fails
  for want of a partition.  :func:`ensure` makes the months around today (at every server
  start and once a day), moving any rows the default partition holds for them.
* PostgreSQL enforces a unique index on a partitioned table only with the partition key in
  it, so what makes a sale unique across all months is kept in ``sale_keys`` (sale id;
  stall and receipt number; trace code; with the day and the digest), one narrow row per
  sale, filled by a trigger on ``sales`` in the insert's own statement: a duplicate fails
  that insert exactly as the unique indexes on ``sales`` did before.  ``sale_keys`` is never
  archived: a sale sent again after its month is archived is still a duplicate, and the
  next receipt of a stall still finds its predecessor's digest (``server.ingest``).
* ``sale_lines`` and ``refunds`` reference ``sale_keys``.  Lines are not partitioned (they
  have no day of their own); :func:`archive` moves a month's lines into
  ``sale_lines_YYYY_MM`` beside its sales.

The models (``server.db``) describe the logical schema, which SQLite has as it is;
:data:`POSTGRES_DIFFERENCES` lists what PostgreSQL holds differently, and the migrations
test compares the rest exactly.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass

from sqlalchemy import Column, Connection, Date, Engine, Integer, MetaData, String, Table, text

from server import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_PARTITION = "sales_default"
#: A month's partition, and its lines once archived.
_MONTH = re.compile(r"^sale(s|_lines)_(\d{4})_(\d{2})$")
#: Months made ahead of today and kept before it by :func:`ensure`.
AHEAD, BEHIND = 2, 1

#: What PostgreSQL's schema holds differently from the models (``compare_metadata``'s
#: findings, as (kind, table, name)): uniqueness moved to ``sale_keys``, the references
#: to it, and the tables the partitioning adds.
POSTGRES_DIFFERENCES = frozenset({
    ("add_constraint", "sales", None),  # the unique trace code (sale_keys has it)
    ("add_index", "sales", "ux_sales_stall_receipt"),
    ("remove_index", "sales", "ix_sales_stall_receipt"),
    ("remove_index", "sales", "ix_sales_trace_code"),
    ("remove_fk", "sale_lines", "sale_lines_sale_id_fkey"),
    ("add_fk", "sale_lines", None),
    ("remove_fk", "refunds", "refunds_sale_id_fkey"),
    ("add_fk", "refunds", None),
})


#: ``sale_keys`` as the queries see it (PostgreSQL only: outside the models' metadata).
SALE_KEYS = Table(
    "sale_keys", MetaData(),
    Column("sale_id", String(36), primary_key=True),
    Column("stall_id", String(16), nullable=False),
    Column("receipt_no", Integer, nullable=False),
    Column("trace_code", String(20), nullable=False),
    Column("local_day", Date, nullable=False),
    Column("digest", String(64), nullable=False),
)


def is_partition_table(name: str) -> bool:
    """A table the partitioning adds beside the models' (a month, the default, the keys, or
    an archived month's lines): autogenerate and the schema comparison leave them out."""
    return name in (DEFAULT_PARTITION, "sale_keys") or _MONTH.match(name) is not None


def month_of(day: dt.date) -> dt.date:
    return day.replace(day=1)


def next_month(first: dt.date) -> dt.date:
    return (first.replace(day=28) + dt.timedelta(days=4)).replace(day=1)


def around(today: dt.date) -> list[dt.date]:
    """The first days of the months :func:`ensure` keeps: :data:`BEHIND` before today's,
    today's, and :data:`AHEAD` after."""
    first = month_of(today)
    for _ in range(BEHIND):
        first = month_of(first - dt.timedelta(days=1))
    out = []
    for _ in range(BEHIND + 1 + AHEAD):
        out.append(first)
        first = next_month(first)
    return out


def partition_name(first: dt.date, table: str = "sales") -> str:
    return f"{table}_{first.year:04d}_{first.month:02d}"


def is_partitioned(conn: Connection) -> bool:
    if conn.dialect.name != "postgresql":
        return False
    return bool(conn.execute(text(
        "SELECT EXISTS (SELECT 1 FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid "
        "WHERE c.relname = 'sales' AND c.relnamespace = 'public'::regnamespace)")).scalar())


def attached_months(conn: Connection) -> list[dt.date]:
    rows = conn.execute(text(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'public.sales'::regclass"))
    out = []
    for (name,) in rows:
        m = _MONTH.match(name)
        if m and m.group(1) == "s":
            out.append(dt.date(int(m.group(2)), int(m.group(3)), 1))
    return sorted(out)


def add_month(conn: Connection, first: dt.date) -> bool:
    """Attach the partition of the month starting ``first`` unless it exists; rows the default
    partition holds for that month move into it.  True when it was made."""
    if first in attached_months(conn):
        return False
    name, end = partition_name(first), next_month(first)
    if conn.execute(text("SELECT to_regclass(:n)"), {"n": f"public.{name}"}).scalar() is not None:
        # Archived (detached, not dropped yet): late sales of that month go to the default.
        logger.info("sales: %s is archived; not made again", name)
        return False
    bounds = {"a": first, "b": end}
    # Made as a plain table and attached: a partition created straight away is refused
    # while the default partition holds rows of its month.
    conn.execute(text(f"CREATE TABLE {name} (LIKE sales INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"))
    moved = conn.execute(text(
        f"WITH moved AS (DELETE FROM {DEFAULT_PARTITION} WHERE local_day >= :a AND local_day < :b "
        f"RETURNING *) INSERT INTO {name} SELECT * FROM moved"), bounds).rowcount
    conn.execute(text(f"ALTER TABLE sales ATTACH PARTITION {name} "
                      f"FOR VALUES FROM ('{first.isoformat()}') TO ('{end.isoformat()}')"))
    logger.info("sales: partition %s made (%d rows moved from %s)", name, moved, DEFAULT_PARTITION)
    return True


def ensure(engine: Engine, today: dt.date) -> list[str]:
    """The partitions of the months around ``today`` (:data:`BEHIND` before, :data:`AHEAD`
    after), made where missing; the names made.  Nothing on SQLite or an unpartitioned
    database."""
    made: list[str] = []
    with engine.begin() as conn:
        if not is_partitioned(conn):
            return made
        # One server process at a time (several start together on one database).
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('wetmarket sales partitions'))"))
        for first in around(today):
            if add_month(conn, first):
                made.append(partition_name(first))
    return made


@dataclass(frozen=True)
class Partition:
    name: str
    first: dt.date | None  # None: the default partition
    rows: int


def partitions(engine: Engine) -> list[Partition]:
    """The attached partitions of ``sales``, oldest first, with their (estimated) row counts."""
    with engine.connect() as conn:
        if not is_partitioned(conn):
            raise ConfigError("sales is not partitioned here (SQLite, or PostgreSQL before migration 0007)")
        rows = conn.execute(text(
            "SELECT c.relname, greatest(c.reltuples, 0)::bigint FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'public.sales'::regclass"))
        out = []
        for name, n in rows:
            m = _MONTH.match(name)
            first = dt.date(int(m.group(2)), int(m.group(3)), 1) if m else None
            out.append(Partition(name, first, int(n)))
    return sorted(out, key=lambda p: (p.first is None, p.first or dt.date.min))


@dataclass(frozen=True)
class Archived:
    sales_table: str
    lines_table: str
    sales: int
    lines: int


def archive(engine: Engine, month: dt.date, today: dt.date) -> Archived:
    """Detach the month starting ``month`` from ``sales`` into ``sales_YYYY_MM`` and move its
    lines into ``sale_lines_YYYY_MM``: two tables for the operator to dump (``pg_dump -t``)
    and drop.  Refused for the current month or later, and for a month with refunds after
    it was archived (none can be: refunds read the sale)."""
    month = month_of(month)
    if month >= month_of(today):
        raise ConfigError(f"{month:%Y-%m} is not over yet: only past months are archived")
    name, lines = partition_name(month), partition_name(month, "sale_lines")
    with engine.begin() as conn:
        if not is_partitioned(conn):
            raise ConfigError("sales is not partitioned here (SQLite, or PostgreSQL before migration 0007)")
        if month not in attached_months(conn):
            raise ConfigError(f"no attached partition {name} (archived already, or never made)")
        conn.execute(text(f"ALTER TABLE sales DETACH PARTITION {name}"))
        # The lines of the detached sales, by their ids (sale_lines has no day of its own).
        conn.execute(text(f"CREATE TABLE {lines} (LIKE sale_lines INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"))
        n_lines = conn.execute(text(
            f"WITH moved AS (DELETE FROM sale_lines l USING {name} s WHERE l.sale_id = s.sale_id "
            f"RETURNING l.*) INSERT INTO {lines} SELECT * FROM moved")).rowcount
        n_sales = int(conn.execute(text(f"SELECT count(*) FROM {name}")).scalar() or 0)
    logger.warning("sales of %s archived: %d sales in %s, %d lines in %s", f"{month:%Y-%m}",
                   n_sales, name, n_lines, lines)
    return Archived(name, lines, n_sales, n_lines)


# ---- migration 0007 ---------------------------------------------------------------------

_KEY_FUNCTION = """
CREATE FUNCTION wetmarket_sale_key() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO sale_keys (sale_id, stall_id, receipt_no, trace_code, local_day, digest)
    VALUES (NEW.sale_id, NEW.stall_id, NEW.receipt_no, NEW.trace_code, NEW.local_day, NEW.digest);
    RETURN NULL;
END $$
"""


def partition_sales(conn: Connection, today: dt.date) -> None:
    """Migration 0007 on PostgreSQL: ``sales`` rebuilt partitioned, its rows kept, with
    ``sale_keys`` and its trigger (see the module's docstring)."""
    conn.execute(text(
        "CREATE TABLE sale_keys (sale_id varchar(36) PRIMARY KEY, stall_id varchar(16) NOT NULL, "
        "receipt_no integer NOT NULL, trace_code varchar(20) NOT NULL, local_day date NOT NULL, "
        "digest varchar(64) NOT NULL)"))
    conn.execute(text("INSERT INTO sale_keys SELECT sale_id, stall_id, receipt_no, trace_code, local_day, "
                      "digest FROM sales"))
    conn.execute(text("CREATE UNIQUE INDEX ux_sale_keys_stall_receipt ON sale_keys (stall_id, receipt_no)"))
    conn.execute(text("CREATE UNIQUE INDEX ux_sale_keys_trace_code ON sale_keys (trace_code)"))
    for table in ("sale_lines", "refunds"):
        conn.execute(text(f"ALTER TABLE {table} DROP CONSTRAINT {table}_sale_id_fkey"))
    conn.execute(text("CREATE TABLE sales_p (LIKE sales INCLUDING DEFAULTS) PARTITION BY RANGE (local_day)"))
    conn.execute(text(f"CREATE TABLE {DEFAULT_PARTITION} PARTITION OF sales_p DEFAULT"))
    # A partition for each month that has sales, and the months around today.
    months = {d for (d,) in conn.execute(text(
        "SELECT DISTINCT date_trunc('month', local_day)::date FROM sales"))}
    months.update(around(today))
    for first in sorted(months):
        conn.execute(text(f"CREATE TABLE {partition_name(first)} PARTITION OF sales_p "
                          f"FOR VALUES FROM ('{first.isoformat()}') TO ('{next_month(first).isoformat()}')"))
    conn.execute(text("INSERT INTO sales_p SELECT * FROM sales"))
    conn.execute(text("DROP TABLE sales"))
    conn.execute(text("ALTER TABLE sales_p RENAME TO sales"))
    conn.execute(text("ALTER TABLE sales ADD CONSTRAINT sales_pkey PRIMARY KEY (sale_id, local_day)"))
    conn.execute(text("ALTER TABLE sales ADD CONSTRAINT sales_stall_id_fkey FOREIGN KEY (stall_id) "
                      "REFERENCES stalls (stall_id)"))
    for index, columns in (("ix_sales_local_day", "local_day"), ("ix_sales_received_at", "received_at"),
                           ("ix_sales_stall_receipt", "stall_id, receipt_no"),
                           ("ix_sales_trace_code", "trace_code")):
        conn.execute(text(f"CREATE INDEX {index} ON sales ({columns})"))
    for table in ("sale_lines", "refunds"):
        conn.execute(text(f"ALTER TABLE {table} ADD CONSTRAINT {table}_sale_id_fkey FOREIGN KEY (sale_id) "
                          "REFERENCES sale_keys (sale_id)"))
    conn.execute(text(_KEY_FUNCTION))
    conn.execute(text("CREATE TRIGGER sales_key AFTER INSERT ON sales FOR EACH ROW "
                      "EXECUTE FUNCTION wetmarket_sale_key()"))


def unpartition_sales(conn: Connection) -> None:
    """Migration 0007 undone on PostgreSQL: the plain ``sales`` of the models again, with the
    rows still attached (archived months stay in their own tables)."""
    conn.execute(text("CREATE TABLE sales_u (LIKE sales INCLUDING DEFAULTS)"))
    conn.execute(text("INSERT INTO sales_u SELECT * FROM sales"))
    for table in ("sale_lines", "refunds"):
        conn.execute(text(f"ALTER TABLE {table} DROP CONSTRAINT {table}_sale_id_fkey"))
    conn.execute(text("DROP TABLE sales"))  # its partitions and trigger with it
    conn.execute(text("DROP FUNCTION wetmarket_sale_key()"))
    conn.execute(text("ALTER TABLE sales_u RENAME TO sales"))
    conn.execute(text("ALTER TABLE sales ADD CONSTRAINT sales_pkey PRIMARY KEY (sale_id)"))
    conn.execute(text("ALTER TABLE sales ADD CONSTRAINT sales_stall_id_fkey FOREIGN KEY (stall_id) "
                      "REFERENCES stalls (stall_id)"))
    conn.execute(text("ALTER TABLE sales ADD CONSTRAINT sales_trace_code_key UNIQUE (trace_code)"))
    conn.execute(text("CREATE INDEX ix_sales_local_day ON sales (local_day)"))
    conn.execute(text("CREATE INDEX ix_sales_received_at ON sales (received_at)"))
    conn.execute(text("CREATE UNIQUE INDEX ux_sales_stall_receipt ON sales (stall_id, receipt_no)"))
    for table in ("sale_lines", "refunds"):
        conn.execute(text(f"ALTER TABLE {table} ADD CONSTRAINT {table}_sale_id_fkey FOREIGN KEY (sale_id) "
                          "REFERENCES sales (sale_id)"))
    conn.execute(text("DROP TABLE sale_keys"))
