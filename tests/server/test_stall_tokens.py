"""The stalls a server process knows by their tokens (``server.auth.StallTokens``): what it
keeps, when it forgets, and that a token replaced through one server process stops working in
another (PostgreSQL, two processes on one database).  The same process's case, a stolen
token refused from the next request on, is ``test_security.test_a_replaced_token_is_refused_at_once``."""

from __future__ import annotations

import os
import socket
import time

import psycopg
import pytest

from server.app import create_app
from server.auth import StallAuth, StallTokens
from server.settings import Settings
from tests.conftest import LiveServer
from tests.server.conftest import ADMIN, StallSim, register_stall, reset_postgres

LINE = [("1001", "西红柿", 512, 300, "500g")]
STALL = StallAuth("S01", "key")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_known_token_is_kept_until_its_time_is_up() -> None:
    clock = Clock()
    tokens = StallTokens(30.0, clock)
    assert tokens.get("a") is None
    tokens.put("a", STALL, tokens.generation)
    clock.now += 29.9
    assert tokens.get("a") == STALL
    clock.now += 0.1
    assert tokens.get("a") is None and len(tokens) == 0


def test_a_look_up_that_began_before_a_change_keeps_nothing() -> None:
    """The read saw the stall as it was; the change committed (and forgot) while it ran."""
    tokens = StallTokens(30.0)
    began = tokens.generation
    tokens.forget()
    tokens.put("a", STALL, began)
    assert tokens.get("a") is None
    tokens.put("a", STALL, tokens.generation)
    assert tokens.get("a") == STALL
    tokens.forget()
    assert tokens.get("a") is None


def test_nothing_is_kept_while_changes_may_go_unheard_or_with_no_time_to_keep() -> None:
    tokens = StallTokens(30.0, trusting=False)  # PostgreSQL before its listener listens
    tokens.put("a", STALL, tokens.generation)
    assert tokens.get("a") is None
    tokens.trust(True)
    tokens.put("a", STALL, tokens.generation)
    assert tokens.get("a") == STALL
    tokens.trust(False)  # the listener lost its connection: a notice may be missed
    assert tokens.get("a") is None
    tokens.put("a", STALL, tokens.generation)
    assert tokens.get("a") is None
    off = StallTokens(0.0)  # Settings.stall_token_cache_s = 0: every request looks its token up
    off.put("a", STALL, off.generation)
    assert off.get("a") is None


def _upload(server: LiveServer, token: str, sim: StallSim) -> int:
    with server.client(token) as c:
        return c.post("/api/v1/sales", json={"sales": [sim.sale(LINE)]}).status_code


def _refused_within(server: LiveServer, token: str, sim: StallSim, seconds: float) -> float | None:
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if _upload(server, token, sim) == 401:
            return time.monotonic() - start
        time.sleep(0.02)
    return None


@pytest.mark.postgres
def test_a_token_replaced_through_one_server_process_stops_working_in_another(postgres_url: str) -> None:
    """Each process remembers the token for an hour here: only the change's notice, sent in
    its transaction, can make the other process forget it; and a process whose listener lost
    its connection trusts nothing it knew until it listens again."""
    reset_postgres(postgres_url)
    settings = Settings(db_url=postgres_url, admin_token=ADMIN, stall_token_cache_s=3600)
    a, b = create_app(settings), create_app(settings)
    with LiveServer(a) as srv_a, LiveServer(b) as srv_b:
        sim = StallSim("S01")
        stolen = register_stall(srv_a, sim)
        assert b.state.listener.listening.wait(10)
        assert _upload(srv_b, stolen, sim) == 200
        assert len(b.state.stall_tokens) == 1  # known to b now
        with srv_a.client(ADMIN) as manager:
            fresh = manager.post("/api/v1/stalls/S01/token").json()["token"]
        took = _refused_within(srv_b, stolen, sim, 5.0)
        assert took is not None, "the other process still takes the replaced token"
        assert _upload(srv_b, fresh, sim) == 200
        assert len(b.state.stall_tokens) == 1

        # b's listener loses its connection: b forgets, and keeps nothing until it listens again
        b.state.listener.listening.clear()
        with psycopg.connect(postgres_url.replace("+psycopg", ""), autocommit=True) as conn:
            killed = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE query LIKE 'LISTEN %' AND pid <> pg_backend_pid()").fetchone()
        assert killed is not None and killed[0] >= 2  # a's and b's listeners
        assert b.state.listener.listening.wait(10)
        assert len(b.state.stall_tokens) == 0
        assert _upload(srv_b, fresh, sim) == 200
        assert len(b.state.stall_tokens) == 1
        with srv_a.client(ADMIN) as manager:
            manager.post("/api/v1/stalls/S01/token").raise_for_status()
        assert _refused_within(srv_b, fresh, sim, 5.0) is not None


def test_an_unknown_token_is_never_kept(tmp_path) -> None:  # type: ignore[no-untyped-def]
    app = create_app(Settings(db_url=f"sqlite:///{tmp_path / 'm.db'}", admin_token=ADMIN))
    with LiveServer(app) as srv:
        sim = StallSim("S01")
        token = register_stall(srv, sim)
        for _ in range(3):
            assert _upload(srv, "not-a-token", sim) == 401
        assert len(app.state.stall_tokens) == 0
        assert _upload(srv, token, sim) == 200
        assert len(app.state.stall_tokens) == 1
        with srv.client(ADMIN) as manager:  # a key cleared by a manager: the stall is forgotten
            assert manager.delete("/api/v1/stalls/S01/key").status_code == 200
        assert len(app.state.stall_tokens) == 0
        with srv.client(token) as c:  # and the next upload is judged by the stall as it is now
            r = c.post("/api/v1/sales", json={"sales": [sim.sale(LINE)]})
        assert r.status_code == 200, r.text
        assert "no_stall_key" in r.json()["results"][0]["flags"], r.text


@pytest.mark.postgres
def test_the_listener_probes_its_connection(postgres_url: str) -> None:
    """A network cut without a reset leaves a connection that looks alive while every notice
    is lost: the listener's TCP connection is probed (keepalives), so it fails and comes back."""
    from server.events import KEEPALIVES, PgListener

    listener = PgListener(postgres_url, {"wetmarket_probe": lambda _payload: None})
    listener.start()
    try:
        assert listener.listening.wait(10)
        conn = listener.connection
        assert conn is not None
        with socket.socket(fileno=os.dup(conn.fileno())) as sock:
            # tests/pg.py reaches every PostgreSQL of the suite on 127.0.0.1, as a server does
            assert sock.family in (socket.AF_INET, socket.AF_INET6), sock.family
            tcp = socket.IPPROTO_TCP
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(tcp, socket.TCP_KEEPIDLE) == KEEPALIVES["keepalives_idle"]
            assert sock.getsockopt(tcp, socket.TCP_KEEPINTVL) == KEEPALIVES["keepalives_interval"]
            assert sock.getsockopt(tcp, socket.TCP_KEEPCNT) == KEEPALIVES["keepalives_count"]
    finally:
        listener.stop()
    assert listener.connection is None
