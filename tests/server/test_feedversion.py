"""The feed version grows by one per change, on SQLite and PostgreSQL."""

from __future__ import annotations

from server import db, feedversion
from server.settings import Settings


def test_each_bump_is_one_more_and_survives_a_restart(db_url: str) -> None:
    engine = db.make_engine(db_url)
    try:
        maker = db.init_db(engine, Settings().tz)
        with maker.begin() as session:
            assert feedversion.current(session) == 0
            assert [feedversion.bump(session) for _ in range(3)] == [1, 2, 3]
        with maker() as session:
            assert feedversion.current(session) == 3
        with maker() as session:  # a bump that is rolled back is not kept
            feedversion.bump(session)
            session.rollback()
        with maker() as session:
            assert feedversion.current(session) == 3
    finally:
        engine.dispose()
