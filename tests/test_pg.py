"""The tests' PostgreSQL (tests/pg.py): a private server where the machine has none on 5432."""

from __future__ import annotations

import os

import psycopg
import pytest

from tests import pg
from tests.conftest import free_port


@pytest.mark.postgres
@pytest.mark.slow
def test_private_server_serves_and_is_removed() -> None:
    bindir = pg.find_bindir()
    if bindir is None:
        if pg.connect_error(pg.DEFAULT_URL) is None:
            pytest.skip("no PostgreSQL binaries here; the tests use the server on 127.0.0.1:5432")
        pytest.fail("neither a PostgreSQL server on 127.0.0.1:5432 nor binaries to start one")
    server = pg.PrivatePostgres(bindir).start()
    try:
        assert server.url != pg.DEFAULT_URL
        with psycopg.connect(server.url) as conn:
            conn.execute("CREATE TABLE t (x int)")
            conn.execute("INSERT INTO t VALUES (42)")
            assert conn.execute("SELECT x, current_database(), current_user FROM t").fetchone() == (
                42, "test", "postgres")
        owner = os.stat(server.data).st_uid
        assert owner != 0 or os.geteuid() != 0  # initdb refuses root: it ran as another user
    finally:
        server.stop()
    assert not server.root.exists()
    assert pg.connect_error(server.url) is not None  # stopped


def test_a_configured_url_must_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/test"
    monkeypatch.setenv("WETMARKET_TEST_PG_URL", dead)
    with pytest.raises(pg.PostgresUnavailable, match=f"WETMARKET_TEST_PG_URL={dead} does not answer"):
        pg.provide()


def test_skip_postgres_starts_no_private_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WETMARKET_TEST_PG_URL", raising=False)
    monkeypatch.setenv("WETMARKET_TEST_PG_PRIVATE", "1")  # as if nothing answered on 5432
    with pytest.raises(pg.PostgresUnavailable, match="WETMARKET_SKIP_POSTGRES=1 asks not to start one"):
        pg.provide(start_private=False)
