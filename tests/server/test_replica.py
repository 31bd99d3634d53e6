"""The statistics, the big screen and the export read from a PostgreSQL streaming replica
(``wetmarket server --read-db``), while sales go to the primary.

A private primary and its hot-standby replica are started for the module (``tests/pg.py``:
initdb, pg_basebackup -R); pausing the replica's replay shows which server a route reads.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest
from pydantic import ValidationError

from server.app import create_app
from server.settings import Settings
from tests import pg
from tests.conftest import LiveServer
from tests.server.conftest import ADMIN, StallSim, register_stall

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[pg.PrivatePostgres, pg.PrivatePostgres]]:
    bindir = pg.find_bindir()
    if bindir is None:
        pytest.fail("no PostgreSQL binaries to start a primary and its replica "
                    "(scripts/bootstrap.sh test installs Debian's postgresql)")
    primary = pg.PrivatePostgres(bindir).start()
    try:
        replica = pg.PrivatePostgres(bindir, primary=primary).start()
        try:
            yield primary, replica
        finally:
            replica.stop()
    finally:
        primary.stop()


def _caught_up(primary: str, replica: str, timeout: float = 20) -> None:
    # The insert position, not pg_current_wal_lsn() (the write position): the private primary
    # runs with synchronous_commit=off (tests/pg.py), so a commit the server has answered can
    # still sit in the WAL buffers past the write position, and a replica that had replayed
    # up to there did not have it yet (the test failed about one run in four under load).
    with psycopg.connect(primary, autocommit=True) as p, psycopg.connect(replica, autocommit=True) as r:
        lsn = p.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]  # type: ignore[index]
        deadline = time.monotonic() + timeout
        while not r.execute("SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), %s) >= 0",
                            (lsn,)).fetchone()[0]:  # type: ignore[index]
            assert time.monotonic() < deadline, "the replica did not catch up"
            time.sleep(0.05)


def _replay(replica: str, on: bool) -> None:
    with psycopg.connect(replica, autocommit=True) as r:
        r.execute("SELECT pg_wal_replay_resume()" if on else "SELECT pg_wal_replay_pause()")


def test_statistics_screen_and_export_read_the_replica(pair) -> None:  # type: ignore[no-untyped-def]
    primary, replica = pair
    app = create_app(Settings(db_url=primary.url, read_db_url=replica.url, admin_token=ADMIN))
    with LiveServer(app) as srv:
        sim = StallSim("S01")
        token = register_stall(srv, sim)

        def upload(grams: int) -> None:
            with srv.client(token) as c:
                sale = sim.sale([("1001", "西红柿", grams, 300, "500g")])
                r = c.post("/api/v1/sales", json={"sales": [sale]})
            assert r.status_code == 200 and r.json()["accepted"] == 1, r.text

        def figures() -> tuple[int, int, int]:
            with srv.client(ADMIN) as c:
                today = c.get("/api/v1/stats/today").json()
                display = c.get("/api/v1/display").json()
                day = today["day"]
                export = c.get("/api/v1/export", params={"kind": "stall_sales", "start": day, "end": day,
                                                         "format": "json"}).json()
            return today["sales"], display["today"]["sales"], sum(row["sales"] for row in export["rows"])

        upload(500)
        _caught_up(primary.url, replica.url)
        assert figures() == (1, 1, 1)
        _replay(replica.url, on=False)
        try:
            upload(600)  # stored on the primary ...
            with psycopg.connect(primary.url) as p:
                assert p.execute("SELECT count(*) FROM sales").fetchone() == (2,)
            assert figures() == (1, 1, 1)  # ... read from the replica, which has not replayed it
        finally:
            _replay(replica.url, on=True)
        _caught_up(primary.url, replica.url)
        assert figures() == (2, 2, 2)


def test_a_replica_needs_a_postgresql_primary() -> None:
    with pytest.raises(ValidationError, match="needs a PostgreSQL primary"):
        Settings(db_url="sqlite:///m.db", read_db_url="postgresql://postgres@127.0.0.1:5433/test")
    with pytest.raises(ValidationError, match="streaming replica"):
        Settings(db_url="postgresql://postgres@127.0.0.1/test", read_db_url="sqlite:///r.db")
