"""Columns added to a table since a database was created, added when the server starts.

``create_all`` creates missing tables but never alters an existing one, so a database
made by older code would lack a column added since (``rollup_item_day.name_en``) and
every query naming it would fail.  Only nullable columns without a default are added
this way (older rows read NULL, which the code expects); anything else is a clear
``ConfigError`` rather than a guess.
"""

from __future__ import annotations

import logging

from sqlalchemy import Engine, MetaData, inspect
from sqlalchemy.exc import SQLAlchemyError

from server import ConfigError

logger = logging.getLogger(__name__)


def add_missing_columns(engine: Engine, metadata: MetaData) -> list[str]:
    """Add ``metadata``'s nullable columns that the database's tables lack; their names."""
    added: list[str] = []
    quote = engine.dialect.identifier_preparer
    try:
        inspector = inspect(engine)
        with engine.begin() as conn:
            for table in metadata.sorted_tables:
                if not inspector.has_table(table.name):
                    continue
                present = {c["name"] for c in inspector.get_columns(table.name)}
                for column in table.columns:
                    if column.name in present:
                        continue
                    if not column.nullable or column.server_default is not None:
                        raise ConfigError(f"database table {table.name} lacks column {column.name}, "
                                          "which cannot be added at start; upgrade it by hand")
                    conn.exec_driver_sql(
                        f"ALTER TABLE {quote.format_table(table)} ADD COLUMN "
                        f"{quote.format_column(column)} {column.type.compile(dialect=engine.dialect)}")
                    added.append(f"{table.name}.{column.name}")
    except SQLAlchemyError as exc:
        raise ConfigError(f"cannot add new columns to database {engine.url!r}: {exc}") from exc
    if added:
        logger.warning("database made by an older server: added columns %s", ", ".join(added))
    return added
