"""The group commit's writer in a process of its own (server.writeprocess), on PostgreSQL:
started under load, killed under load without losing or doubling a sale, and an order's
shopper woken by the sale that fulfils it."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from server import db
from server.app import create_app
from server.settings import Settings
from tests.conftest import LiveServer
from tests.server.conftest import ADMIN, StallSim, register_stall, reset_postgres, writer_server


def _wait_for(what: str, ok: Any, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not ok():
        assert time.monotonic() < deadline, f"waited {seconds} s for {what}"
        time.sleep(0.02)


def _stored(app: Any) -> tuple[int, int]:
    """Sales stored and distinct sale ids among them."""
    with app.state.sessionmaker() as session:
        return (session.scalar(select(func.count()).select_from(db.Sale)) or 0,
                session.scalar(select(func.count(func.distinct(db.Sale.sale_id)))) or 0)


def _stall_uploads(srv: LiveServer, sim: StallSim, token: str, n: int, answers: list[str],
                   stop_after: threading.Event | None = None) -> list[dict[str, Any]]:
    """``n`` single-sale uploads, one after another as a stall sends them, each sent again until
    answered (as the stall's journal does); every answer's status in ``answers``."""
    sent = []
    with srv.client(token) as c:
        for i in range(n):
            sale = sim.sale([("1", "香蕉", 100 + i, 690, "kg")])
            sent.append(sale)
            for _ in range(50):
                try:
                    r = c.post("/api/v1/sales", json={"sales": [sale]})
                except httpx.HTTPError:
                    continue
                if r.status_code == 200:
                    answers.append(r.json()["results"][0]["status"])
                    break
                time.sleep(0.05)  # 409 or 500: sent again, as a stall does
            else:
                raise AssertionError(f"sale {i} of {sim.stall_id} never answered")
    return sent


@pytest.mark.postgres
def test_uploads_queueing_start_the_writer_process(postgres_url: str) -> None:
    """``auto``: one upload at a time never starts it; uploads that queue behind the writer do,
    and once it is up it stores them."""
    reset_postgres(postgres_url)
    app = create_app(Settings(db_url=postgres_url, admin_token=ADMIN))
    writer = app.state.writer
    with LiveServer(app) as srv:
        sims = [StallSim(f"S{i:02d}") for i in range(1, 7)]
        tokens = [register_stall(srv, s, f"摊{i}") for i, s in enumerate(sims)]
        answers: list[str] = []
        _stall_uploads(srv, sims[0], tokens[0], 5, answers)
        assert writer.state == "idle" and app.state.group_commit.uploads == 5
        with httpx.Client(base_url=srv.url) as c:
            assert c.get("/healthz").json()["writer"] == "idle"

        def busy(k: int) -> None:
            while writer.state != "ready" and len(answers) < 3000:
                _stall_uploads(srv, sims[k], tokens[k], 5, answers)
            _stall_uploads(srv, sims[k], tokens[k], 10, answers)

        with ThreadPoolExecutor(6) as pool:
            list(pool.map(busy, range(6)))
        assert writer.state == "ready" and writer.uploads >= 60
        assert set(answers) == {"accepted"}
        assert _stored(app) == (len(answers), len(answers))
        with httpx.Client(base_url=srv.url) as c:
            assert c.get("/healthz").json()["writer"] == "ready"
        proc = writer.process
        assert proc is not None and proc.is_alive()
    # the server stopped: so did its writer
    assert not proc.is_alive() and proc.exitcode == 0


@pytest.mark.postgres
def test_a_writer_process_killed_under_load_loses_and_doubles_no_sale(
        postgres_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """The writer process killed while it holds an upload (stopped, then killed), ended when it
    hangs, then killed twice while four stalls upload: every sale is answered, stored exactly
    once, and its chain unbroken; the writer comes back each time."""
    reset_postgres(postgres_url)
    with writer_server(postgres_url, allow_fallback=True) as srv:
        app = srv.app
        writer = app.state.writer
        sims = [StallSim(f"S{i:02d}") for i in range(1, 5)]
        tokens = [register_stall(srv, s, f"摊{i}") for i, s in enumerate(sims)]

        # An upload the process holds when it dies is stored by the server instead.
        pid = writer.process.pid
        os.kill(pid, signal.SIGSTOP)
        held: list[str] = []
        t = threading.Thread(target=_stall_uploads, args=(srv, sims[0], tokens[0], 1, held))
        t.start()
        _wait_for("the upload to wait on the stopped writer", lambda: writer.waiting == 1, 10)
        os.kill(pid, signal.SIGKILL)
        t.join(30)
        assert held == ["accepted"]
        # One that hangs (stopped, never killed) is ended once an upload has waited too long.
        writer.answer_timeout_s = 0.5
        while writer.state != "ready":  # ``on``: the next upload starts it again
            _stall_uploads(srv, sims[0], tokens[0], 1, held)
        hung = writer.process
        os.kill(hung.pid, signal.SIGSTOP)
        started = time.monotonic()
        _stall_uploads(srv, sims[0], tokens[0], 1, held)
        assert 0.5 <= time.monotonic() - started < 10
        # (its exit status is the server's to collect: two threads waiting for it may both miss it)
        assert f"the writer process (pid {hung.pid}) has not answered an upload in 0.5 s" in caplog.text
        assert set(held) == {"accepted"}
        writer.answer_timeout_s = 10.0
        # ``on``: the next upload starts it again (stored by the server meanwhile)
        deadline = time.monotonic() + 60
        while writer.state != "ready":
            assert time.monotonic() < deadline, writer.state
            _stall_uploads(srv, sims[0], tokens[0], 1, held)
        assert set(held) == {"accepted"}

        answers: list[str] = []
        kills: list[int] = []

        def killer() -> None:
            for _ in range(2):
                _wait_for("uploads through the writer", lambda: writer.state == "ready"
                          and writer.uploads > len(kills) * 60 + 20, 60)
                proc = writer.process
                proc.kill()
                kills.append(proc.pid)

        k = threading.Thread(target=killer)
        k.start()

        def stall(i: int) -> list[dict[str, Any]]:
            sent: list[dict[str, Any]] = []
            deadline = time.monotonic() + 120
            while (len(kills) < 2 or len(sent) < 60) and time.monotonic() < deadline:
                sent += _stall_uploads(srv, sims[i], tokens[i], 5, answers)
            return sent

        with ThreadPoolExecutor(4) as pool:
            sent = [s for batch in pool.map(stall, range(4)) for s in batch]
        k.join(60)
        assert len(kills) == 2
        # a sale whose commit the kill let through but whose answer it lost is found again
        assert len(answers) == len(sent) and set(answers) <= {"accepted", "duplicate"}
        total, distinct = _stored(app)
        assert total == distinct == len(sent) + len(held)
        with app.state.sessionmaker() as session:
            ids = set(session.scalars(select(db.Sale.sale_id)))
            flags = list(session.scalars(select(db.Sale.flags)))
        assert {s["sale_id"] for s in sent} <= ids
        assert all(f == [] for f in flags)  # every chain intact, every signature good
        with srv.client() as c:
            assert c.get("/api/v1/stats/today").json()["sales"] == total
        _stall_uploads(srv, sims[1], tokens[1], 1, answers)  # the next upload starts it again
        _wait_for("the writer to come back", lambda: writer.state == "ready")


@pytest.mark.postgres
def test_batches_and_single_sales_written_at_once_by_both_writers(postgres_url: str) -> None:
    """A batch is stored by the server's own group commit, a single sale by the process, both
    at once from different stalls: every sale stored once, the day's rollups their sums."""
    reset_postgres(postgres_url)
    app = create_app(Settings(db_url=postgres_url, admin_token=ADMIN, write_process="on"))
    writer, group = app.state.writer, app.state.group_commit
    with LiveServer(app) as srv:
        _wait_for("the writer", lambda: writer.state == "ready")
        sims = [StallSim(f"S{i:02d}") for i in range(1, 5)]
        tokens = [register_stall(srv, s, f"摊{i}") for i, s in enumerate(sims)]
        singles: list[str] = []

        def batches(k: int) -> list[str]:
            out = []
            with srv.client(tokens[k]) as c:
                for _ in range(6):
                    batch = [sims[k].sale([("2", "黄瓜", 300 + i, 260, "500g")]) for i in range(20)]
                    r = c.post("/api/v1/sales", json={"sales": batch})
                    assert r.status_code == 200, r.text
                    out += [x["status"] for x in r.json()["results"]]
            return out

        with ThreadPoolExecutor(4) as pool:
            batched = pool.map(batches, (0, 1))
            list(pool.map(lambda k: _stall_uploads(srv, sims[k], tokens[k], 40, singles), (2, 3)))
            statuses = [x for b in batched for x in b]
        assert statuses == ["accepted"] * 240 and singles == ["accepted"] * 80
        assert group.uploads == 12 and writer.uploads == 80
        assert _stored(app) == (320, 320)
        with srv.client() as c:
            today = c.get("/api/v1/stats/today").json()
        assert today["sales"] == 320
        items = {it["plu"]: it for it in today["items"]}
        assert items["2"]["lines"] == 240 and items["1"]["lines"] == 80
        assert items["2"]["weight_g"] == 2 * 6 * sum(300 + i for i in range(20))
        assert items["1"]["weight_g"] == 2 * sum(100 + i for i in range(40))


@pytest.mark.postgres
def test_a_sale_stored_by_the_writer_process_wakes_its_orders_shopper(postgres_url: str) -> None:
    """The sale that fulfils an online order is written in the writer process; the shopper's
    live page on the server hears of it at once (NOTIFY with the commit), not at its next
    keep-alive.  The same through the server's own group commit."""
    from tests.server.test_orders import PHONE_A, first_slot, set_up_order_stall, signed_in_shopper

    for mode in ("on", "off"):
        reset_postgres(postgres_url)
        app = create_app(Settings(db_url=postgres_url, admin_token=ADMIN, write_process=mode))
        with LiveServer(app) as srv:
            sim, token = set_up_order_stall(srv)
            want = "ready" if mode == "on" else "off"
            _wait_for("the writer", lambda a=app, w=want: a.state.writer.state == w)
            assert app.state.listener.listening.wait(10)
            shopper = signed_in_shopper(srv, PHONE_A)
            r = shopper.post("/api/v1/orders", json={"stall_id": "S01", "slot_start": first_slot(shopper),
                                                     "lines": [{"plu": "1001", "est_weight_g": 500}]})
            assert r.status_code == 201, r.text
            oid = r.json()["id"]
            with srv.client(token) as st:
                assert st.post(f"/api/v1/stall/orders/{oid}/accept", json={}).status_code == 200
                with shopper.stream("GET", "/api/v1/shop/events") as events:
                    lines = events.iter_lines()
                    first = next(line for line in lines if line.startswith("data: "))
                    assert json.loads(first[6:])[0]["state"] == "accepted"
                    sale = sim.sale([("1001", "西红柿", 520, 800, "kg")], extra={"order_id": oid})
                    stored = time.monotonic()
                    up = st.post("/api/v1/sales", json={"sales": [sale]})
                    assert up.json()["results"][0]["status"] == "accepted", up.text
                    later = next(line for line in lines if line.startswith("data: "))
                    assert json.loads(later[6:])[0]["state"] == "ready"
                    assert time.monotonic() - stored < 5, mode  # woken, not the 15 s keep-alive
            assert (app.state.writer.uploads > 0) == (mode == "on")


@pytest.mark.postgres
def test_a_writer_process_that_never_comes_up_is_given_up(postgres_url: str) -> None:
    """Not ready in time (here: at once), it is ended and counts as a failed start; three in a
    row and it is given up. Every upload meanwhile is stored by the server."""
    reset_postgres(postgres_url)
    app = create_app(Settings(db_url=postgres_url, admin_token=ADMIN, write_process="on"))
    writer = app.state.writer
    writer.start_timeout_s = 0.0
    with LiveServer(app) as srv:
        sim = StallSim("S01")
        token = register_stall(srv, sim)
        answers: list[str] = []
        deadline = time.monotonic() + 60
        while writer.state != "failed":  # each upload in ``on`` starts it again
            assert time.monotonic() < deadline, writer.state
            _stall_uploads(srv, sim, token, 1, answers)
        assert set(answers) == {"accepted"} and writer.uploads == 0
        assert app.state.group_commit.uploads == len(answers)
        with httpx.Client(base_url=srv.url) as c:
            assert c.get("/healthz").json()["writer"] == "failed"
        _stall_uploads(srv, sim, token, 2, answers)
        assert writer.state == "failed" and writer.process is None
    assert _stored(app) == (len(answers), len(answers))


def test_sqlite_never_starts_a_writer_process(tmp_path) -> None:  # type: ignore[no-untyped-def]
    app = create_app(Settings(db_url=f"sqlite:///{tmp_path / 'm.db'}", admin_token=ADMIN,
                              write_process="on"))
    with LiveServer(app) as srv:
        sim = StallSim("S01")
        token = register_stall(srv, sim)
        answers: list[str] = []
        _stall_uploads(srv, sim, token, 3, answers)
        with httpx.Client(base_url=srv.url) as c:
            assert c.get("/healthz").json()["writer"] == "off"
    assert answers == ["accepted"] * 3 and app.state.writer.process is None


def test_write_process_setting_is_checked() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="write_process"):
        Settings(write_process="sometimes")
