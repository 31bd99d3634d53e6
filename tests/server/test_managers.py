"""Manager accounts, sign-in, sessions, CSRF and alerts (server/managers.py, server/sessions.py,
server/alerts.py) against a live server on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import insert, select

from server import alerts, db, managers, orders
from server.app import create_app
from server.auth import Actor
from server.settings import Settings
from tests.conftest import LiveServer
from tests.server.conftest import ADMIN, SHANGHAI, StallSim, register_stall
from tests.server.manage_client import (
    add_manager,
    form_token,
    page_token,
    signed_in,
    try_sign_in,
)

PASSWORD = "菜场-secret-1"
REPO = Path(__file__).resolve().parents[2]


def _wait_for(check, timeout: float = 20.0) -> Any:  # type: ignore[no-untyped-def]
    """The first truthy value of ``check()``; the machine may be loaded, so wait on it."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


# ---- accounts -----------------------------------------------------------------------------------

def test_the_admin_token_creates_only_the_first_manager(server: LiveServer) -> None:
    body = {"username": "wang", "display_name": "王经理", "password": PASSWORD}
    with server.client() as c:
        assert c.post("/api/v1/managers", json=body).status_code == 401
    with server.client(ADMIN) as c:
        first = c.post("/api/v1/managers", json=body)
        assert first.status_code == 201, first.text
        assert first.json()["created_by"] == "admin" and "password" not in first.text
        again = c.post("/api/v1/managers", json={**body, "username": "li"})
        assert again.status_code == 403 and "only creates the first" in again.json()["detail"]
        # Nor may it manage accounts afterwards.
        assert c.post("/api/v1/managers/wang/disable").status_code == 403
    # A signed-in manager adds the next one (fetch-style: the CSRF token as a header).
    with signed_in(server) as (client, csrf):
        added = client.post("/api/v1/managers", json={**body, "username": "li", "display_name": "李"},
                            headers={"X-CSRF-Token": csrf})
        assert added.status_code == 201 and added.json()["created_by"] == "manager:wang"
        dup = client.post("/api/v1/managers", json={**body, "display_name": "x"},
                          headers={"X-CSRF-Token": csrf})
        assert dup.status_code == 409
        bad = client.post("/api/v1/managers", json={**body, "username": "Bad Name"},
                          headers={"X-CSRF-Token": csrf})
        assert bad.status_code == 422
        names = [m["username"] for m in client.get("/api/v1/managers").json()]
        assert names == ["li", "wang"]


def test_passwords_are_stored_as_argon2id_hashes(db_url: str) -> None:
    app = create_app(Settings(db_url=db_url, admin_token=ADMIN))
    with app.state.sessionmaker() as session:
        managers.create(session, Actor("admin", "admin"), "wang", "王经理", PASSWORD)
        session.commit()
        stored = session.execute(select(db.Manager.password_hash)).scalar_one()
    app.state.engine.dispose()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored


# ---- sign-in, cookie, CSRF ----------------------------------------------------------------------

def test_sign_in_cookie_and_csrf(server: LiveServer) -> None:
    add_manager(server)
    with httpx.Client(base_url=server.url, timeout=15) as browser:
        r = browser.get("/manage/stalls")
        assert r.status_code == 303 and r.headers["location"] == "/manage/login?next=/manage/stalls"
        # The sign-in form itself needs its token: a page elsewhere cannot post it.
        no_token = browser.post("/manage/login", data={"username": "wang", "password": PASSWORD})
        assert no_token.status_code == 403
        r = try_sign_in(browser, "wang", PASSWORD, next_path="/manage/stalls")
        assert r.status_code == 303 and r.headers["location"] == "/manage/stalls"
        cookie = r.headers["set-cookie"].lower()
        assert "wm_session=" in cookie and "httponly" in cookie and "samesite=lax" in cookie
        assert "secure" not in cookie  # plain http here; see the https test below
        page = browser.get("/manage/stalls")
        assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
        csrf = page_token(page)

        # A form post without the session's token, or with another, is refused: 403.
        assert browser.post("/manage/stalls", data={"stall_id": "S07", "name": "x"}).status_code == 403
        # another token for certain: the last character changed (a random token ends in "xx"
        # once in 4,096, and overwriting its end with "xx" then sent the right one)
        other = csrf[:-1] + ("A" if csrf[-1] != "A" else "B")
        wrong = browser.post("/manage/stalls", data={"stall_id": "S07", "name": "x", "csrf_token": other})
        assert wrong.status_code == 403
        assert browser.post("/api/v1/stalls", json={"stall_id": "S07", "name": "x"}).status_code == 403
        with server.client() as anonymous:
            assert anonymous.get("/api/v1/stalls").json() == []  # nothing was registered
        ok = browser.post("/manage/stalls", data={"stall_id": "S07", "name": "x", "csrf_token": csrf})
        assert ok.status_code == 200 and 'id="token"' in ok.text
        api = browser.post("/api/v1/stalls/S07/token", headers={"X-CSRF-Token": csrf})
        assert api.status_code == 200 and api.json()["token"]

        # A bearer token is the request's only credential: its cookie is not used.
        stall_token = api.json()["token"]
        as_stall = browser.get("/api/v1/alerts", headers={"Authorization": f"Bearer {stall_token}"})
        assert as_stall.status_code == 401

        out = browser.post("/manage/logout", data={"csrf_token": csrf})
        assert out.status_code == 303
        assert browser.get("/manage").status_code == 303


def test_session_cookie_is_secure_over_https(server: LiveServer) -> None:
    """Behind a TLS proxy on this machine (uvicorn trusts X-Forwarded-Proto from 127.0.0.1)."""
    add_manager(server)
    with httpx.Client(base_url=server.url, timeout=15,
                      headers={"X-Forwarded-Proto": "https"}) as browser:
        form = browser.get("/manage/login")
        assert "secure" in form.headers["set-cookie"].lower()
        # httpx keeps a Secure cookie for https only: send it back by hand over this http.
        nonce = form.headers["set-cookie"].split(";")[0].split("=", 1)[1]
        r = browser.post("/manage/login", data={"username": "wang", "password": PASSWORD,
                                                "csrf_token": form_token(form), "next": "/manage"},
                         headers={"Cookie": f"wm_signin={nonce}"})
        assert r.status_code == 303
        assert "; secure" in r.headers["set-cookie"].lower()


def test_failed_sign_in_is_rate_limited_per_username_and_address(db_url: str) -> None:
    settings = Settings(db_url=db_url, admin_token=ADMIN)
    with LiveServer(create_app(settings)) as srv:
        add_manager(srv)
        with httpx.Client(base_url=srv.url, timeout=15) as browser:
            for _ in range(managers.USER_THROTTLE.free):  # the fifth locks the name for 30 s
                assert try_sign_in(browser, "wang", "wrong-password").status_code == 401
            locked = try_sign_in(browser, "wang", "wrong-password")
            assert locked.status_code == 429
            assert 15 <= int(locked.headers["retry-after"]) <= 30
            assert "30" in locked.text or "秒后再试" in locked.text
            # Locked means locked: the right password is refused too, without being checked.
            assert try_sign_in(browser, "wang", PASSWORD).status_code == 429
    # The lockout is in the database: a restarted server still refuses.
    with LiveServer(create_app(settings)) as srv, httpx.Client(base_url=srv.url, timeout=15) as b:
        assert try_sign_in(b, "wang", PASSWORD).status_code == 429
        # Per address too: wrong guesses at many names from one address lock the address.
        for i in range(managers.ADDR_THROTTLE.free - managers.USER_THROTTLE.free):
            assert try_sign_in(b, f"guess{i}", "wrong-password").status_code == 401
        assert try_sign_in(b, "guess-last", "wrong-password").status_code == 429


def test_throttle_doubles_the_lockout_and_forgets(db_url: str) -> None:
    app = create_app(Settings(db_url=db_url, admin_token=ADMIN))
    t0 = dt.datetime(2026, 12, 2, 8, 0, tzinfo=dt.UTC)
    try:
        with app.state.sessionmaker() as s:
            managers.create(s, Actor("admin", "admin"), "wang", "王经理", PASSWORD)
            s.commit()
            now = t0
            waits = []
            for _ in range(8):
                with pytest.raises(managers.SignInFailed):
                    managers.sign_in(s, "wang", "wrong", "10.0.0.1", now=now)
                s.commit()
                waits.append(managers.locked_for(s, "wang", "10.0.0.2", now=now))
                now += dt.timedelta(hours=2)  # past any lock, within the day that counts
            assert waits == [0, 0, 0, 0, 30, 60, 120, 240]
            with pytest.raises(managers.SignInLocked):
                managers.sign_in(s, "wang", PASSWORD, "10.0.0.2", now=now - dt.timedelta(hours=2))
            # A failure a day after the last starts counting again.
            late = now + dt.timedelta(days=1, seconds=1)
            with pytest.raises(managers.SignInFailed):
                managers.sign_in(s, "wang", "wrong", "10.0.0.1", now=late)
            assert managers.locked_for(s, "wang", "10.0.0.2", now=late) == 0
            # A success clears the counts of the name and the address.
            assert managers.sign_in(s, "wang", PASSWORD, "10.0.0.1", now=late).username == "wang"
            s.commit()
            assert s.execute(select(db.SignInFailure)).all() == []
    finally:
        app.state.engine.dispose()


def test_session_expires(db_url: str) -> None:
    with LiveServer(create_app(Settings(db_url=db_url, admin_token=ADMIN, manage_session_s=2))) as srv:
        add_manager(srv)
        with signed_in(srv) as (client, _):
            cookie = client.cookies["wm_session"]
            assert client.get("/manage").status_code == 200
            time.sleep(3.1)
        # Sent again after its time (a browser would have dropped it): the server refuses it.
        with httpx.Client(base_url=srv.url, timeout=15, cookies={"wm_session": cookie}) as replay:
            r = replay.get("/manage")
            assert r.status_code == 303 and r.headers["location"].startswith("/manage/login")


def test_disabling_or_a_new_password_ends_sessions(server: LiveServer) -> None:
    add_manager(server)
    with signed_in(server) as (boss, boss_csrf):
        r = boss.post("/api/v1/managers", json={"username": "li", "display_name": "李",
                                                "password": PASSWORD}, headers={"X-CSRF-Token": boss_csrf})
        assert r.status_code == 201
        li = httpx.Client(base_url=server.url, timeout=15)
        assert try_sign_in(li, "li", PASSWORD).status_code == 303
        li_cookie = li.cookies["wm_session"]
        assert li.get("/manage").status_code == 200
        own = boss.post("/manage/managers/wang/disable", data={"csrf_token": boss_csrf})
        assert own.status_code == 409 and "your own account" in own.text
        assert boss.post("/manage/managers/li/disable", data={"csrf_token": boss_csrf}).status_code == 303
        assert li.get("/manage").status_code == 303  # signed out at the next request
        assert try_sign_in(li, "li", PASSWORD).status_code == 401  # and cannot sign in
        assert boss.post("/manage/managers/li/enable", data={"csrf_token": boss_csrf}).status_code == 303
        with httpx.Client(base_url=server.url, cookies={"wm_session": li_cookie}) as old:
            assert old.get("/manage").status_code == 303  # the session before stays ended

        # A new password ends the other sessions of the account; this browser stays in.
        with signed_in(server) as (other, _):
            wrong = boss.post("/manage/account/password", data={
                "csrf_token": boss_csrf, "current_password": "not-it", "new_password": "new-secret-2"})
            assert wrong.status_code == 403
            r = boss.post("/manage/account/password", data={
                "csrf_token": boss_csrf, "current_password": PASSWORD, "new_password": "new-secret-2"})
            assert r.status_code == 303
            assert other.get("/manage").status_code == 303
            assert boss.get("/manage").status_code == 200
        li.close()
    with httpx.Client(base_url=server.url) as again:
        assert try_sign_in(again, "wang", "new-secret-2").status_code == 303


# ---- nothing secret in the logs -----------------------------------------------------------------

def test_nothing_secret_is_logged(server: LiveServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    typed_into_the_name = "my-password-typed-as-name"
    add_manager(server)
    secrets: list[str] = [ADMIN, PASSWORD, typed_into_the_name]
    with httpx.Client(base_url=server.url, timeout=15) as browser:
        try_sign_in(browser, typed_into_the_name, PASSWORD)
        try_sign_in(browser, "wang", "wrong-one-xyz")
        secrets.append("wrong-one-xyz")
        assert try_sign_in(browser, "wang", PASSWORD).status_code == 303
        secrets.append(browser.cookies["wm_session"])
        page = browser.get("/manage/stalls")
        csrf = page_token(page)
        secrets.append(csrf)
        made = browser.post("/manage/stalls", data={"stall_id": "S09", "name": "鱼", "csrf_token": csrf})
        secrets.append(made.text.split('id="token" class="token">')[1].split("<")[0])
        rotated = browser.post("/api/v1/stalls/S09/token", headers={"X-CSRF-Token": csrf})
        secrets.append(rotated.json()["token"])
        browser.post("/manage/account/password", data={
            "csrf_token": csrf, "current_password": PASSWORD, "new_password": "another-secret-3"})
        secrets.append("another-secret-3")
    # Everything the server process logged; the test's own HTTP client (httpx, httpcore) logs
    # the headers it receives, cookies included, and is not the server.
    logged = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records
                       if not r.name.startswith(("httpx", "httpcore")))
    assert "manager wang signed in" in logged  # the server did log what happened
    for secret in secrets:
        assert secret and secret not in logged, f"logged: {secret[:6]}..."


# ---- alerts -------------------------------------------------------------------------------------

def _alerts(server: LiveServer, **params: str) -> list[dict[str, Any]]:
    with server.client(ADMIN) as c:
        r = c.get("/api/v1/alerts", params=params)
    assert r.status_code == 200, r.text
    return list(r.json())


def test_ingest_raises_chain_signature_and_gap_alerts_once(server: LiveServer) -> None:
    sim = StallSim("S01")
    token = register_stall(server, sim)
    line = [("1001", "西红柿", 512, 300, "500g")]
    first = [sim.sale(line), sim.sale(line)]
    lost = [sim.sale(line), sim.sale(line)]  # receipts 3 and 4 never reach the server
    fifth = sim.sale(line)
    unsigned = [sim.sale(line, sign=False), sim.sale(line, sign=False)]  # 6, 7
    sim.prev = "0" * 64  # receipt 8 does not chain to 7
    broken = sim.sale(line)
    with server.client(token) as c:
        for batch in (first, [fifth], unsigned, [broken], first + [fifth] + unsigned + [broken]):
            r = c.post("/api/v1/sales", json={"sales": batch})
            assert r.status_code == 200, r.text
    got = {(a["kind"], a["key"]) for a in _alerts(server)}
    day = dt.datetime.now(SHANGHAI).date().isoformat()
    assert got == {("receipt_gap", "receipt_gap:S01:3-4"),
                   ("bad_signature", f"bad_signature:S01:{day}"),
                   ("bad_chain", "bad_chain:S01:8")}
    gap = next(a for a in _alerts(server) if a["kind"] == "receipt_gap")
    assert "#3–#4" in gap["detail"] and gap["stall_id"] == "S01"
    # The lost receipts arrive late: no new alert, and the gap alert stays to be acknowledged.
    with server.client(token) as c:
        assert c.post("/api/v1/sales", json={"sales": lost}).json()["accepted"] == 2
    assert len(_alerts(server)) == 3

    with server.client(ADMIN) as c:
        ack = c.post(f"/api/v1/alerts/{gap['id']}/ack")
        assert ack.status_code == 200 and ack.json()["acknowledged_by"] == "admin"
        again = c.post(f"/api/v1/alerts/{gap['id']}/ack")
        assert again.json()["acknowledged_at"] == ack.json()["acknowledged_at"]
        assert c.post("/api/v1/alerts/999999/ack").status_code == 404
    assert {a["kind"] for a in _alerts(server)} == {"bad_signature", "bad_chain"}
    assert len(_alerts(server, open="false")) == 3


def test_a_stall_gone_silent_is_alerted_once(db_url: str) -> None:
    settings = Settings(db_url=db_url, admin_token=ADMIN, silent_after_s=1, alert_check_s=0.2,
                        market_opens=dt.time(0, 0), market_closes=dt.time(23, 59, 59))
    with LiveServer(create_app(settings)) as srv:
        sim = StallSim("S02")
        token = register_stall(srv, sim)
        with srv.client(token) as c:
            c.post("/api/v1/sales", json={"sales": [sim.sale([("1", "香蕉", 1000, 690, "kg")])]})
        silent = _wait_for(lambda: [a for a in _alerts(srv) if a["kind"] == "stall_silent"])
        assert len(silent) == 1 and silent[0]["stall_id"] == "S02"
        time.sleep(1.0)  # several more rounds of checks: still one alert for one silence
        assert len([a for a in _alerts(srv) if a["kind"] == "stall_silent"]) == 1
        # The stall's last contact is stored (it survives a restart).
        with srv.app.state.sessionmaker() as s:
            assert s.get(db.StallContact, "S02") is not None


def test_silence_counts_only_in_market_hours_and_today(db_url: str) -> None:
    settings = Settings(db_url=db_url, admin_token=ADMIN, silent_after_s=1800,
                        market_opens=dt.time(6, 0), market_closes=dt.time(20, 0))
    app = create_app(settings)
    try:
        maker = app.state.sessionmaker
        with maker.begin() as s:
            for sid in ("S01", "S02", "S03"):
                s.add(db.Stall(stall_id=sid, name=sid, token_sha256=sid * 10,
                               created_at=dt.datetime.now(dt.UTC)))
        contacts = alerts.Contacts()
        day = dt.datetime(2026, 12, 2, tzinfo=SHANGHAI)
        contacts.seen("S01", day.replace(hour=9))               # silent since 09:00
        contacts.seen("S02", day.replace(hour=9, minute=50))    # seen 10 minutes ago
        contacts.seen("S03", day.replace(day=1, hour=19))       # yesterday: not "gone" today
        checker = alerts.Checker(settings, maker, contacts)
        checker.run_once(day.replace(hour=10))
        checker.run_once(day.replace(hour=10, minute=5))
        checker.run_once(day.replace(hour=21))  # closed
        with maker() as s:
            rows = s.execute(select(db.Alert.kind, db.Alert.stall_id)).all()
        assert rows == [("stall_silent", "S01")]
    finally:
        app.state.engine.dispose()


def test_a_stall_stays_online_while_a_round_stores_its_contact(db_url: str) -> None:
    """A round of checks takes the contacts noted since the last, then stores them: between
    the two the stall was in neither, and read as offline (a shopper's order page said so; a
    stall's long poll for its orders, whose answer carries that flag, woke with nothing new:
    a CI run caught it).  Here the round is held by the write lock right after it took them."""
    settings = Settings(db_url=db_url, admin_token=ADMIN)
    app = create_app(settings)

    class Noted(alerts.Contacts):
        taken = threading.Event()

        def take(self) -> dict[str, dt.datetime]:
            out = super().take()
            self.taken.set()
            return out

    def online() -> bool:
        with maker() as s:
            return orders.stall_online(s, contacts.peek(), ["S01"])["S01"]

    try:
        maker = app.state.sessionmaker
        with maker.begin() as s:
            s.add(db.Stall(stall_id="S01", name="S01", token_sha256="1" * 64,
                           created_at=dt.datetime.now(dt.UTC)))
        contacts, lock = Noted(), threading.Lock()
        checker = alerts.Checker(settings, maker, contacts, lock)
        assert not online()
        contacts.seen("S01")
        assert online()
        with lock:
            round_ = threading.Thread(target=checker.run_once)
            round_.start()
            assert contacts.taken.wait(10)
            assert online()  # taken, not yet stored
        round_.join(10)
        with maker() as s:
            assert s.get(db.StallContact, "S01") is not None
        assert online()
        assert contacts.take() == {}  # stored: nothing new to store
        contacts.put_back({"S01": dt.datetime.now(dt.UTC)})  # a round that failed to store
        assert set(contacts.take()) == {"S01"}
    finally:
        app.state.engine.dispose()


def test_sale_prices_over_one_and_a_half_times_the_median(db_url: str) -> None:
    with LiveServer(create_app(Settings(db_url=db_url, admin_token=ADMIN))) as srv:
        for sid, price in (("S01", 600), ("S02", 640), ("S03", 1200), ("S04", 620)):
            sim = StallSim(sid)
            token = register_stall(srv, sim)
            with srv.client(token) as c:
                r = c.post("/api/v1/sales", json={"sales": [
                    sim.sale([("1001", "西红柿", 1000, price, "kg")]),
                    sim.sale([("1002", "土豆", 2000, 280, "kg")])]})
                assert r.json()["accepted"] == 2
        checker = srv.app.state.alert_checker
        checker.run_once()
        checker.run_once()
        high = [a for a in _alerts(srv) if a["kind"] == "price_high"]
        assert [(a["stall_id"], a["plu"]) for a in high] == [("S03", "1001")]
        assert "12.00 元/kg" in high[0]["detail"] and "6.20" in high[0]["detail"]


def test_scale_audit_alerts(db_url: str) -> None:
    app = create_app(Settings(db_url=db_url, admin_token=ADMIN))
    now = dt.datetime.now(dt.UTC)
    try:
        with app.state.sessionmaker.begin() as s:
            s.add(db.Stall(stall_id="S05", name="x", token_sha256="a" * 64, created_at=now))
            s.flush()
            s.execute(insert(db.ScaleEvent), [
                {"stall_id": "S05", "seq": seq, "counter": 1, "kind": kind, "detail": "", "at": now,
                 "prev": "0" * 64, "hash": "0" * 64, "flags": [], "received_at": now}
                for seq, kind in ((1, "zero"), (2, "tare"), (6, "calibration"), (7, "zero"))])
            entries = [(6, "calibration", "span 15 kg", []), (7, "zero", "", ["bad_hash"])]
            alerts.after_scale_events(s, "S05", entries)
            alerts.after_scale_events(s, "S05", entries)  # sent again: nothing new
        with app.state.sessionmaker() as s:
            keys = sorted(s.execute(select(db.Alert.key)).scalars())
        assert keys == ["scale_event:S05:6", "scale_event:S05:7", "scale_event:S05:gap:3-5"]
    finally:
        app.state.engine.dispose()


# ---- the console command ------------------------------------------------------------------------

@pytest.fixture
def sqlite_file(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path / 'market.db'}"


def _cli(*args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], input=stdin, text=True,
                          capture_output=True, timeout=120, env=env, cwd=REPO)


def test_cli_adds_a_manager_any_time(sqlite_file: str) -> None:
    short = _cli("manager", "add", "wang", "--db", sqlite_file, "--password-stdin", stdin="short\n")
    assert short.returncode == 1 and "password: 8 to 128 characters" in short.stderr
    assert "Traceback" not in short.stderr
    ok = _cli("manager", "add", "wang", "--name", "王经理", "--db", sqlite_file, "--password-stdin",
              stdin=f"{PASSWORD}\n")
    assert ok.returncode == 0, ok.stderr
    assert PASSWORD not in ok.stderr + ok.stdout
    # A second one from the console too (the way back in), then both sign in.
    assert _cli("manager", "add", "li", "--db", sqlite_file, "--password-stdin",
                stdin="another-secret\n").returncode == 0
    with LiveServer(create_app(Settings(db_url=sqlite_file, admin_token=ADMIN))) as srv:
        with signed_in(srv):
            pass
        with signed_in(srv, "li", "another-secret"):
            pass
