"""Alembic's environment: the server hands in its own connection (``server.migrate``).

From the command line (developers writing a new revision), ``alembic -c server/alembic.ini``
with ``-x db=URL`` (default: a scratch SQLite file) works too.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from server.db import Base, make_engine
from server.migrate import include_name

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things: alembic rebuilds the table ("batch" mode).
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_name=include_name,  # not the sales partitions (server.partitions)
    )
    with context.begin_transaction():
        context.run_migrations()


given = config.attributes.get("connection")
if given is not None:
    _run(given)
else:
    url = context.get_x_argument(as_dictionary=True).get("db", "sqlite:///var/alembic-scratch.db")
    engine = make_engine(url)
    with engine.begin() as conn:
        _run(conn)
    engine.dispose()
