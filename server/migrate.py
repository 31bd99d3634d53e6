"""Bring a database to the schema of this code with Alembic (``server/migrations``).

``upgrade(engine)`` runs at every server start, before anything reads the tables:

* an empty database is built revision by revision from ``0001``;
* a database made by the server before it had migrations (its tables, no
  ``alembic_version``) is stamped at the revision it matches (``0002`` when it has
  ``rollup_item_day.name_en``, else ``0001``) and upgraded from there, its rows kept;
* a database already at the head costs one query.

On PostgreSQL, several server processes may start at once: an advisory lock lets one
migrate while the others wait, then find nothing to do.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.exc import SQLAlchemyError

from server import ConfigError, partitions

logger = logging.getLogger(__name__)

SCRIPTS = Path(__file__).resolve().parent / "migrations"
#: Any 64-bit number of our own: the advisory lock that serialises migrating processes.
_PG_LOCK = 0x7765746D61726B74  # "wetmarkt"


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPTS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def include_name(name: str | None, type_: str, _parents: object) -> bool:
    """What autogenerate and the schema comparison look at: not the tables the sales
    partitioning adds on PostgreSQL (``server.partitions``), which no model describes."""
    return not (type_ == "table" and name is not None and partitions.is_partition_table(name))


def head() -> str:
    """The newest revision this code knows."""
    rev = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert rev is not None
    return rev


def current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _legacy_revision(connection: Connection) -> str | None:
    """The revision a database made before migrations matches; None for an empty one."""
    inspector = inspect(connection)
    if not inspector.has_table("sales"):
        return None
    columns = {c["name"] for c in inspector.get_columns("rollup_item_day")}
    return "0002" if "name_en" in columns else "0001"


def upgrade(engine: Engine, target: str = "head") -> None:
    """Migrate ``engine``'s database to ``target``; ConfigError with the reason if it cannot."""
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK})
                conn.commit()
            try:
                with conn.begin():
                    cfg = alembic_config(conn)
                    before = current(conn)
                    if before is None:
                        legacy = _legacy_revision(conn)
                        if legacy is not None:
                            logger.warning("database made before migrations: taken as revision %s",
                                           legacy)
                            command.stamp(cfg, legacy)
                            before = legacy
                    command.upgrade(cfg, target)
                    after = current(conn)
                if before != after:
                    logger.info("database migrated from %s to %s", before or "empty", after)
            finally:
                if conn.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK})
                    conn.commit()
    except SQLAlchemyError as exc:
        raise ConfigError(f"cannot migrate database {engine.url!r}: {exc}") from exc
