"""Defences of docs/security.md that no other module proves, against a live server (SQLite; the
rules are the same code on PostgreSQL): secrets at rest, a stolen stall's token revoked at once,
a stall's signing key replaced, and markup on the shopper's trace page."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.app import create_app
from server.settings import Settings
from tests.browser import chromium
from tests.conftest import LiveServer
from tests.server.conftest import ADMIN, StallSim
from tests.server.manage_client import add_manager

PASSWORD = "菜场-secret-7"
LINE = [("1001", "西红柿", 512, 300, "500g")]


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, Path]]:
    db_file = tmp_path_factory.mktemp("security") / "market.db"
    with LiveServer(create_app(Settings(db_url=f"sqlite:///{db_file}", admin_token=ADMIN))) as srv:
        yield srv, db_file


def _stall(server: LiveServer, sim: StallSim, name: str = "王记") -> str:
    with server.client(ADMIN) as c:
        r = c.post("/api/v1/stalls", json={"stall_id": sim.stall_id, "name": name})
    assert r.status_code == 201, r.text
    token = str(r.json()["token"])
    with server.client(token) as c:  # the stall registers its own key, as its outbox does
        r = c.put(f"/api/v1/stalls/{sim.stall_id}/key", json={"public_key": sim.public_key})
        assert r.status_code == 200, r.text
    return token


def _every_stored_text(db_file: Path) -> str:
    """Every value of every row of every table, as text: what a stolen database file shows."""
    con = sqlite3.connect(db_file)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return "\n".join(str(value) for table in tables
                         for row in con.execute(f'SELECT * FROM "{table}"') for value in row)
    finally:
        con.close()


def test_tokens_and_passwords_are_stored_only_as_hashes(market: tuple[LiveServer, Path]) -> None:
    server, db_file = market
    sim = StallSim("S11")
    first = _stall(server, sim)
    add_manager(server, username="sec", password=PASSWORD)
    with server.client(ADMIN) as c:
        rotated = c.post("/api/v1/stalls/S11/token").json()["token"]
        bureau = c.put("/api/v1/export/token").json()["token"]
    stored = _every_stored_text(db_file)
    for secret in (ADMIN, first, rotated, bureau, PASSWORD):
        assert secret not in stored, f"stored in clear: {secret[:6]}..."
    assert hashlib.sha256(rotated.encode()).hexdigest() in stored  # what is kept instead
    assert "$argon2id$" in stored


def test_a_replaced_token_is_refused_at_once(market: tuple[LiveServer, Path]) -> None:
    """A stolen stall (device or token): the manager gives the stall a new token, and the old one
    opens nothing from the next request on, whatever the call."""
    server, _ = market
    sim = StallSim("S12")
    stolen = _stall(server, sim)
    with server.client(stolen) as thief:
        assert thief.post("/api/v1/sales", json={"sales": [sim.sale(LINE)]}).json()["accepted"] == 1
        assert thief.get("/api/v1/feed").status_code == 200
        with server.client(ADMIN) as manager:
            fresh = manager.post("/api/v1/stalls/S12/token").json()["token"]
        calls = [thief.post("/api/v1/sales", json={"sales": [sim.sale(LINE)]}),
                 thief.get("/api/v1/feed"),
                 thief.put("/api/v1/prices/S12/1001", json={"unit_price_fen": 1}),
                 thief.put("/api/v1/stalls/S12/key", json={"public_key": StallSim("S12").public_key}),
                 thief.post("/api/v1/scale-events", json={"entries": []}),
                 thief.post("/api/v1/refunds", json={"refunds": []})]
        assert [r.status_code for r in calls] == [401] * len(calls), [r.text for r in calls]
    with server.client(fresh) as stall:
        assert stall.get("/api/v1/feed").status_code == 200
        r = stall.post("/api/v1/sales", json={"sales": [sim.sale(LINE)]})
        # The sale refused with the old token is missing from the chain: a gap, as it should be.
        assert r.json()["accepted"] == 1, r.text


def test_a_stalls_signing_key_is_replaced_by_the_manager(market: tuple[LiveServer, Path]) -> None:
    """A stall device replaced (stolen, broken): the manager clears the key, the new device
    registers its own; what the old key signs from then on is flagged, never trusted."""
    server, _ = market
    old = StallSim("S13")
    token = _stall(server, old)
    new = StallSim("S13")
    new.receipt_no, new.prev = old.receipt_no, old.prev
    with server.client(token) as stall:
        assert stall.put("/api/v1/stalls/S13/key", json={"public_key": new.public_key}).status_code == 409
        with server.client(ADMIN) as manager:
            assert manager.delete("/api/v1/stalls/S13/key").status_code == 200
        # Between the two: nothing to check a signature with, so the sale is stored flagged.
        unkeyed = new.sale(LINE)
        r = stall.post("/api/v1/sales", json={"sales": [unkeyed]}).json()["results"][0]
        assert r["status"] == "accepted" and r["flags"] == ["no_stall_key"], r
        assert stall.put("/api/v1/stalls/S13/key", json={"public_key": new.public_key}).status_code == 200
        good = new.sale(LINE)
        assert stall.post("/api/v1/sales", json={"sales": [good]}).json()["results"][0]["flags"] == []
        old.receipt_no, old.prev = new.receipt_no, new.prev
        forged = old.sale(LINE)  # signed with the old key, chained correctly
        r = stall.post("/api/v1/sales", json={"sales": [forged]}).json()["results"][0]
        assert r["status"] == "accepted" and r["flags"] == ["bad_signature"], r
    assert 'data-verdict="genuine"' in server.client().get(f"/t/{good['trace_code']}").text
    assert 'data-verdict="unverified"' in server.client().get(f"/t/{forged['trace_code']}").text


def test_a_leaked_admin_token_is_replaced_by_configuring_another(tmp_path: Path) -> None:
    """The admin token (generated at the first start, shown once) leaked: the operator sets
    WETMARKET_ADMIN_TOKEN to a new one and restarts; the old one opens nothing."""
    url = f"sqlite:///{tmp_path / 'm.db'}"
    leaked = create_app(Settings(db_url=url)).state.generated_admin_token
    assert leaked
    with LiveServer(create_app(Settings(db_url=url, admin_token="a-new-admin-token-1"))) as srv:
        with srv.client(leaked) as c:
            assert c.post("/api/v1/stalls", json={"stall_id": "S01", "name": "甲"}).status_code == 401
            assert c.get("/api/v1/alerts").status_code == 401
        with srv.client("a-new-admin-token-1") as c:
            assert c.post("/api/v1/stalls", json={"stall_id": "S01", "name": "甲"}).status_code == 201


MARKUP = '<script>window.__xss=1</script><img src=x onerror=__xss=2>'  # 64 characters at most


def test_the_trace_page_shows_markup_as_text(market: tuple[LiveServer, Path]) -> None:
    """The trace page is public and shows what stalls and sales name: all of it escaped."""
    server, _ = market
    sim = StallSim("S14")
    token = _stall(server, sim, name=MARKUP)
    sale = sim.sale([("1001", MARKUP, 512, 300, "500g")], line_extra={"batch_code": "B1<b>x</b>"})
    with server.client(token) as c:
        assert c.post("/api/v1/sales", json={"sales": [sale]}).json()["accepted"] == 1
    page = server.client().get(f"/t/{sale['trace_code']}", params={"s": sale["signature"]})
    assert page.status_code == 200 and 'data-verdict="genuine"' in page.text
    assert "<script>window" not in page.text and "<img src=x" not in page.text and "<b>x" not in page.text
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in page.text  # shown, as text, twice
    assert page.text.count("&lt;img src=x onerror=") == 2
    assert page.headers["content-type"].startswith("text/html")
    # And were escaping ever missed, no script but the package's own would run.
    for policy in (page.headers["content-security-policy"],
                   server.client().get("/display").headers["content-security-policy"]):
        scripts = policy.split("script-src ")[1].split(";")[0].split()
        assert "'self'" in scripts and "'unsafe-inline'" not in scripts and "*" not in scripts
    bad = server.client().get(f"/t/{MARKUP}")  # not a trace code: said so, escaped
    assert bad.status_code == 404 and "<script>window" not in bad.text


@pytest.mark.browser
def test_public_pages_run_under_their_policy_in_chromium(market: tuple[LiveServer, Path]) -> None:
    """The policy blocks nothing the pages need (no violation reported, the screen fills in),
    and the names with markup run nothing."""
    server, _ = market
    sim = StallSim("S15")
    token = _stall(server, sim, name=MARKUP)
    sale = sim.sale([("1001", MARKUP, 512, 300, "500g")])
    with server.client(token) as c:
        assert c.post("/api/v1/sales", json={"sales": [sale]}).json()["accepted"] == 1
    violations: list[str] = []
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1920, "height": 1080})
        page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text
                else None)
        page.goto(f"{server.url}/display")
        page.wait_for_function("document.getElementById('live').classList.contains('on')")
        page.wait_for_function("document.getElementById('recent').textContent.includes('<script>')")
        assert page.evaluate("window.__xss") is None
        page.goto(f"{server.url}/t/{sale['trace_code']}?s={sale['signature']}")
        assert MARKUP in page.inner_text("body")
        assert page.evaluate("window.__xss") is None
    assert violations == []
