"""The stalls' feed version: one number that grows with every change a stall must apply.

Catalogue, prices, caps, specials and inspections (blocked batches) all bump it in the
transaction that changes them, so a stall that already holds version N learns with one
cheap query (the feed's ETag) that nothing changed.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, String, cast, insert, select, update
from sqlalchemy.orm import Session

from server import db

KEY = "feed_version"


def current(session: Session) -> int:
    value = session.execute(select(db.Meta.value).where(db.Meta.key == KEY)).scalar()
    return int(value) if value is not None else 0


def bump(session: Session) -> int:
    """Add one to the version inside the caller's transaction (which commits it); the new one.

    One UPDATE: concurrent writers on PostgreSQL queue on the row lock, so no two changes
    share a version.
    """
    new = session.execute(
        update(db.Meta).where(db.Meta.key == KEY)
        .values(value=cast(cast(db.Meta.value, BigInteger) + 1, String))
        .returning(db.Meta.value)
    ).scalar()
    if new is None:
        session.execute(insert(db.Meta).values(key=KEY, value="1"))
        return 1
    return int(new)
