"""The demo's market seeding (``edge.demo_seed``) against a real market server on 127.0.0.1:
the server then holds the catalogue, prices, specials, a failed rapid test and a manager,
and each stall's feed carries its prices, agreeing with the stall's config seed."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.config import StallConfig
from edge.demo_data import (
    CAPS,
    RAPID_TESTS,
    SPECIALS,
    STALLS,
    YESTERDAY,
    catalogue,
    market_items,
    stall_prices,
)
from edge.demo_seed import ManagerLogin, seed_market
from edge.feed import FeedDoc, build_catalogue
from server.app import create_app
from server.settings import Settings
from tests.conftest import LiveServer
from tests.server.conftest import ADMIN
from tests.server.manage_client import try_sign_in

MARKET_TZ = zoneinfo.ZoneInfo("Asia/Shanghai")  # the server's default market zone


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, dict[str, str],
                                                                         ManagerLogin, dt.datetime]]:
    db = tmp_path_factory.mktemp("demo-seed") / "market.db"
    with LiveServer(create_app(Settings(db_url=f"sqlite:///{db}", admin_token=ADMIN))) as srv:
        now = dt.datetime.now(MARKET_TZ)
        with srv.client(ADMIN) as c:
            tokens = {}
            for sid, name, _vendor in STALLS:
                r = c.post("/api/v1/stalls", json={"stall_id": sid, "name": name})
                assert r.status_code == 201, r.text
                tokens[sid] = r.json()["token"]
            login = seed_market(c, now)
        yield srv, tokens, login, now


def test_the_server_holds_the_demo_catalogue_and_prices(seeded) -> None:  # type: ignore[no-untyped-def]
    srv, _tokens, _login, _now = seeded
    with srv.client() as c:
        items = {it["plu"]: it for it in c.get("/api/v1/items").json()}
        prices = {(p["stall_id"], p["plu"]): p["unit_price_fen"] for p in c.get("/api/v1/prices").json()}
        history = c.get("/api/v1/prices/history", params={"stall_id": "S01", "plu": "1006"}).json()
    expected = {it["plu"]: it for it in market_items()}
    assert len(expected) == 27 and set(items) == set(expected)
    for plu, want in expected.items():
        got = items[plu]
        assert {k: got[k] for k in want if k != "why"} == {k: v for k, v in want.items() if k != "why"}
    assert items["2004"]["category"] == "蔬菜" and items["1003"]["category"] == "水果"
    assert items["3002"]["origin"] == "云南昆明" and items["3002"]["label"] == "Brown-Cap-Mushroom"
    assert {plu for plu, it in items.items() if it["cap_fen"]} == set(CAPS)
    # Today's prices are the stalls' config seeds, exactly.
    assert prices == {(sid, plu): fen for sid, plu, fen in stall_prices()}
    assert prices["S02", "2001"] == 300
    # Where a price changed since yesterday, the history says from what and why.
    mango = next(y for y in YESTERDAY if y[1] == "1006")
    changes = [(ch["old_fen"], ch["new_fen"], ch["why"]) for ch in history["changes"]]
    assert changes == [(mango[2], 1280, mango[3]), (None, mango[2], "昨日价格")]


def test_the_server_holds_todays_specials_and_rapid_tests(seeded) -> None:  # type: ignore[no-untyped-def]
    srv, _tokens, _login, now = seeded
    with srv.client() as c:
        current = c.get("/api/v1/promotions", params={"when": "current"}).json()
        upcoming = c.get("/api/v1/promotions", params={"when": "upcoming"}).json()
        summary = c.get("/api/v1/inspections/summary").json()
        blocked = c.get("/api/v1/inspections/blocked").json()
        display = c.get("/api/v1/display").json()
    assert {(p["stall_id"], p["plu"], p["special_price_fen"]) for p in current} == {
        (sid, plu, fen) for sid, plu, fen, start, _end, _t in SPECIALS if start <= 0}
    assert [(p["stall_id"], p["plu"]) for p in upcoming] == [("S02", "2005")]
    assert all(p["special_price_fen"] < p["regular_price_fen"] for p in current + upcoming)
    day = now.strftime("%Y%m%d")
    assert summary["day"] == now.date().isoformat()
    assert (summary["batches"], summary["failed"]) == (len(RAPID_TESTS), 1)
    assert [(b["stall_id"], b["plu"], b["batch_code"], b["inhibition_percent"])
            for b in summary["failed_batches"]] == [("S02", "2004", f"B{day}-04", 62.5)]
    assert [(b["stall_id"], b["batch_code"], b["blocking"]) for b in blocked] == [("S02", f"B{day}-04", True)]
    # The big screen shows them (its one data endpoint).
    assert {(p["stall_id"], p["plu"]) for p in display["specials"]} == {("S01", "1003"), ("S03", "3007")}
    assert [b["batch_code"] for b in display["inspections"]["failed_batches"]] == [f"B{day}-04"]
    assert len(display["inspections"]["latest"]) == len(RAPID_TESTS)


def test_the_printed_manager_signs_in(seeded) -> None:  # type: ignore[no-untyped-def]
    srv, _tokens, login, now = seeded
    with srv.client() as c:
        assert try_sign_in(c, login.username, "not-" + login.password).status_code != 303
    with srv.client() as c:
        r = try_sign_in(c, login.username, login.password)
        assert r.status_code == 303 and r.headers["location"] == "/manage", r.text
        alerts = c.get("/manage/alerts")
        assert alerts.status_code == 200
        assert f"B{now.strftime('%Y%m%d')}-04" in alerts.text  # the failed batch's alert, open
    with srv.client(ADMIN) as c:
        managers = c.get("/api/v1/managers").json()
    assert [(m["username"], m["disabled"]) for m in managers] == [(login.username, False)]
    assert len(login.password) >= 8


@pytest.mark.parametrize("stall_id", [s[0] for s in STALLS])
def test_each_stalls_feed_carries_its_seed_prices(seeded, stall_id: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    srv, tokens, _login, now = seeded
    with srv.client(tokens[stall_id]) as c:
        r = c.get("/api/v1/feed")
    assert r.status_code == 200, r.text
    doc = FeedDoc.model_validate_json(r.content)
    assert doc.stall_id == stall_id
    assert {p.plu: p.unit_price_fen for p in doc.prices} == {
        plu: fen for sid, plu, fen in stall_prices() if sid == stall_id}
    # The stall's catalogue from this feed and its config seed: the same items at the same
    # prices, the seed's batch codes kept, so a failed test of a batch blocks that item.
    day = now.strftime("%Y%m%d")
    seed = StallConfig(stall_id=stall_id, name=stall_id, data_dir=tmp_path,
                       catalogue=catalogue(stall_id, day)).catalogue  # type: ignore[arg-type]
    items, _labels = build_catalogue(doc, seed)
    assert [(i.code, i.unit_price_fen) for i in items] == [(i.code, i.unit_price_fen) for i in seed]
    refused = {i.code for i in items if i.block_reason is not None}
    assert refused == ({"2004"} if stall_id == "S02" else set())
    if stall_id == "S02":
        assert "62.5" in (items.get("2004").block_reason or "")
    specials = {(s.plu, s.special_price_fen) for s in doc.specials}
    assert specials == {(plu, fen) for sid, plu, fen, *_rest in SPECIALS if sid == stall_id}
    if stall_id == "S01":  # the banana's special prices it now, inside its window
        assert items.get("1003").price_at(dt.datetime.now(dt.UTC)) == 590
