"""The market catalogue, stall prices with their history, and price caps (调价管理, 明码标价),
through a real server on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from server import db, feedversion
from server.guard import DEFAULT_BODY_LIMIT
from tests.conftest import LiveServer
from tests.server.conftest import ADMIN, StallSim, register_stall
from tests.server.test_http_limits import announce_only

BANANA = {"plu": "1001", "name": "香蕉", "name_en": "Banana", "category": "水果",
          "price_unit": "kg", "origin": "海南", "label": "Banana"}
CABBAGE = {"plu": "2001", "name": "大白菜", "name_en": "Chinese cabbage", "category": "蔬菜",
           "price_unit": "500g", "label": "大白菜"}


@dataclass
class Market:
    server: LiveServer
    engine: Engine
    tokens: dict[str, str]  # stall id -> its token

    def admin(self) -> httpx.Client:
        return self.server.client(ADMIN)

    def stall(self, stall_id: str) -> httpx.Client:
        return self.server.client(self.tokens[stall_id])

    def public(self) -> httpx.Client:
        return self.server.client()

    def feed_version(self) -> int:
        with Session(self.engine) as session:
            return feedversion.current(session)

    def changes(self) -> list[db.PriceChange]:
        with Session(self.engine) as session:
            return list(session.execute(select(db.PriceChange).order_by(db.PriceChange.id)).scalars())

    def alerts(self) -> list[db.Alert]:
        with Session(self.engine) as session:
            return list(session.execute(select(db.Alert).order_by(db.Alert.id)).scalars())


@pytest.fixture
def market(server: LiveServer, db_url: str) -> Iterator[Market]:
    tokens = {sid: register_stall(server, StallSim(sid), name=f"摊位{sid}")
              for sid in ("S01", "S02", "S03")}
    engine = db.make_engine(db_url)
    try:
        yield Market(server, engine, tokens)
    finally:
        engine.dispose()


def _create(m: Market, item: dict[str, Any], **extra: Any) -> dict[str, Any]:
    with m.admin() as c:
        r = c.post("/api/v1/items", json={**item, **extra})
    assert r.status_code == 201, r.text
    return dict(r.json())


def _put(client: httpx.Client, stall_id: str, plu: str, body: dict[str, Any]) -> httpx.Response:
    return client.put(f"/api/v1/prices/{stall_id}/{plu}", json=body)


def _msgs(r: httpx.Response) -> str:
    detail = r.json()["detail"]
    return detail if isinstance(detail, str) else " ".join(e["msg"] for e in detail)


# ---- the catalogue ---------------------------------------------------------------------


def test_items_are_created_read_changed_and_deactivated(market: Market) -> None:
    m = market
    banana = _create(m, BANANA, picture="/static/favicon.svg")
    assert banana["active"] is True and banana["cap_fen"] is None
    assert banana["label_known"] is True  # Banana is one of the shipped recognizer's labels
    assert banana["created_at"].endswith("+08:00")  # the market's zone
    cabbage = _create(m, CABBAGE, picture="https://cdn.example.com/img/cabbage.jpg")
    assert cabbage["label_known"] is False  # kept all the same: a stall may teach it
    # Markup in a name is data: stored and answered exactly as sent (pages escape it).
    script = _create(m, {**BANANA, "plu": "1002", "name": "<script>alert(1)</script>",
                         "category": "水果<b>"})
    assert script["name"] == "<script>alert(1)</script>"

    with m.public() as c:
        assert [i["plu"] for i in c.get("/api/v1/items").json()] == ["1001", "1002", "2001"]
        assert [i["plu"] for i in c.get("/api/v1/items", params={"category": "蔬菜"}).json()] == ["2001"]
        assert c.get("/api/v1/items/1002").json()["name"] == "<script>alert(1)</script>"
        assert c.get("/api/v1/items/9999").status_code == 404

    with m.admin() as c:
        r = c.post("/api/v1/items", json={**BANANA, "name": "另一个香蕉"})
        assert r.status_code == 409 and "already exists" in r.text
        r = c.patch("/api/v1/items/1001", json={"name": "香蕉（海南）", "origin": None})
        assert r.status_code == 200, r.text
        assert r.json()["changed"] is True
        assert (r.json()["item"]["name"], r.json()["item"]["origin"]) == ("香蕉（海南）", None)
        assert c.patch("/api/v1/items/1001", json={"name": "香蕉（海南）"}).json()["changed"] is False
        r = c.patch("/api/v1/items/1001", json={"name": None})
        assert r.status_code == 422 and "cannot be null" in _msgs(r)
        assert c.patch("/api/v1/items/9999", json={"name": "x"}).status_code == 404
        # Deactivated, never deleted: still readable, off the active list, takes no price.
        assert c.patch("/api/v1/items/2001", json={"active": False}).json()["item"]["active"] is False
    with m.public() as c:
        assert [i["plu"] for i in c.get("/api/v1/items", params={"active": "true"}).json()] == ["1001",
                                                                                              "1002"]
        assert [i["plu"] for i in c.get("/api/v1/items", params={"active": "false"}).json()] == ["2001"]
    with m.stall("S01") as c:
        r = _put(c, "S01", "2001", {"unit_price_fen": 150})
        assert r.status_code == 409 and "deactivated" in r.text and "停用" in r.text
        # A stall's token is not a manager's.
        assert c.post("/api/v1/items", json={**BANANA, "plu": "3"}).status_code == 401
        assert c.patch("/api/v1/items/1001", json={"name": "x"}).status_code == 401
    with m.public() as c:
        assert c.post("/api/v1/items", json={**BANANA, "plu": "3"}).status_code == 401


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_bad_items_are_refused_with_the_reason(market: Market) -> None:
    bad: list[tuple[dict[str, Any], str]] = [
        ({"price_unit": "斤"}, "never per 斤 or 两"),
        ({"price_unit": "两"}, "never per 斤 or 两"),
        ({"price_unit": "jin"}, "never per 斤 or 两"),
        ({"price_unit": "lb"}, "'kg', '500g' or 'piece'"),
        ({"cap_fen": "300"}, "valid integer"),  # money is a JSON integer, never a string
        ({"cap_fen": 300.0}, "valid integer"),
        ({"cap_fen": True}, "valid integer"),
        ({"cap_fen": 0}, "greater than 0"),
        ({"picture": "javascript:alert(1)"}, "http(s) URL or a path under /static/"),
        ({"picture": "/static/../db.py"}, "must not hold empty, . or .. parts"),
        ({"picture": "/static/missing.png"}, "no file /static/missing.png"),
        ({"picture": "/static/display.css"}, "picture must be one of"),
        ({"picture": "https://example.com/a b.png"}, "printable ASCII"),
        ({"name": "香\x00蕉"}, "control"),
        ({"name": "   "}, "at least 1 character"),
        ({"category": "类" * 33}, "at most 32 characters"),
        ({"plu": "10 01"}, "pattern"),
        ({"colour": "yellow"}, "Extra inputs are not permitted"),
    ]
    with market.admin() as c:
        for change, why in bad:
            r = c.post("/api/v1/items", json={**BANANA, **change})
            assert r.status_code == 422, (change, r.text)
            assert why in _msgs(r), (change, r.text)
        r = c.post("/api/v1/items", json={**BANANA, "price_unit": "斤"})
        assert "明码标价只用元/千克、元/500克或元/个" in _msgs(r)
        assert c.get("/api/v1/items").json() == []
        assert c.patch("/api/v1/items/1001", json={"price_unit": "斤"}).status_code == 422
    assert market.feed_version() == 0


# ---- prices ----------------------------------------------------------------------------


def test_stalls_set_their_own_prices_and_managers_any_with_a_reason(market: Market) -> None:
    m = market
    _create(m, BANANA)
    _create(m, CABBAGE)
    version = m.feed_version()
    with m.stall("S01") as s1:
        r = _put(s1, "S01", "1001", {"unit_price_fen": 690})
        assert r.status_code == 200, r.text
        assert r.json() == {"stall_id": "S01", "plu": "1001", "unit_price_fen": 690, "changed": True,
                            "price_high": False}
        assert m.feed_version() == version + 1
        # The same price again records nothing and says so.
        r = _put(s1, "S01", "1001", {"unit_price_fen": 690, "why": "again"})
        assert r.json()["changed"] is False
        assert m.feed_version() == version + 1
        assert _put(s1, "S01", "1001", {"unit_price_fen": 720, "why": "进价上涨"}).json()["changed"]
        assert _put(s1, "S01", "2001", {"unit_price_fen": 150}).status_code == 200
        # Another stall's price: 403, and nothing recorded.
        r = _put(s1, "S02", "1001", {"unit_price_fen": 100})
        assert r.status_code == 403 and "S01" in r.text and "S02" in r.text
        assert s1.delete("/api/v1/prices/S02/1001").status_code == 403
        # Money is a JSON integer of 分.
        for bad in ("720", 7.2, 720.0, True, 0, -5, None):
            r = _put(s1, "S01", "1001", {"unit_price_fen": bad})
            assert r.status_code == 422, (bad, r.text)
        assert _put(s1, "S01", "9999", {"unit_price_fen": 100}).status_code == 404
    assert m.feed_version() == version + 3
    with m.admin() as a:
        r = _put(a, "S02", "1001", {"unit_price_fen": 680})
        assert r.status_code == 422 and "why" in _msgs(r)  # a manager says why
        r = _put(a, "S02", "1001", {"unit_price_fen": 680, "why": "按物价所核价"})
        assert r.status_code == 200 and r.json()["changed"] is True
        assert _put(a, "S09", "1001", {"unit_price_fen": 680, "why": "x"}).status_code == 404
    with m.public() as c:
        assert _put(c, "S01", "1001", {"unit_price_fen": 700}).status_code == 401
        with m.server.client("not-a-token") as bad:
            assert _put(bad, "S01", "1001", {"unit_price_fen": 700}).status_code == 401
        prices = c.get("/api/v1/prices").json()
        assert [(p["stall_id"], p["plu"], p["unit_price_fen"], p["price_unit"]) for p in prices] == [
            ("S01", "1001", 720, "kg"), ("S01", "2001", 150, "500g"), ("S02", "1001", 680, "kg")]
        assert [p["stall_id"] for p in c.get("/api/v1/prices", params={"plu": "1001"}).json()] == [
            "S01", "S02"]
        assert [p["plu"] for p in c.get("/api/v1/prices/S01").json()] == ["1001", "2001"]
        assert c.get("/api/v1/prices/S03").json() == []
        assert c.get("/api/v1/prices/S09").status_code == 404

    rows = [(r.stall_id, r.plu, r.kind, r.price_unit, r.old_fen, r.new_fen, r.who, r.why)
            for r in m.changes()]
    assert rows == [
        ("S01", "1001", "price", "kg", None, 690, "stall:S01", ""),
        ("S01", "1001", "price", "kg", 690, 720, "stall:S01", "进价上涨"),
        ("S01", "2001", "price", "500g", None, 150, "stall:S01", ""),
        ("S02", "1001", "price", "kg", None, 680, "admin", "按物价所核价"),
    ]
    assert m.feed_version() == version + 4

    # A stall stops pricing an item: recorded too; a second removal has nothing to do.
    with m.stall("S01") as s1:
        r = s1.delete("/api/v1/prices/S01/2001", params={"why": "下架"})
        assert r.json() == {"stall_id": "S01", "plu": "2001", "unit_price_fen": None,
                            "changed": True, "price_high": False}
        assert s1.delete("/api/v1/prices/S01/2001").json()["changed"] is False
    with m.admin() as a:
        r = a.delete("/api/v1/prices/S02/1001")
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "why"]
    assert [(r.stall_id, r.old_fen, r.new_fen, r.why) for r in m.changes()[4:]] == [
        ("S01", 150, None, "下架")]
    assert m.feed_version() == version + 5


def test_a_price_is_checked_before_the_body_is_read(market: Market) -> None:
    """The stall-or-manager route checks its token before it reads a body (server.guard)."""
    port, path = market.server.port, "/api/v1/prices/S01/1001"
    status, body = announce_only(port, "PUT", path, 1000, token="not-a-token")
    assert status == 401, body
    status, body = announce_only(port, "PUT", path, 1000)
    assert status == 401 and "stall's bearer token" in body["detail"]
    for token in (ADMIN, market.tokens["S01"]):
        status, body = announce_only(port, "PUT", path, DEFAULT_BODY_LIMIT + 1, token=token)
        assert status == 413, body


def test_caps_refuse_prices_above_them_and_are_history(market: Market) -> None:
    m = market
    _create(m, BANANA, cap_fen=1000)
    with m.stall("S01") as s1, m.stall("S02") as s2:
        assert _put(s1, "S01", "1001", {"unit_price_fen": 1000}).status_code == 200  # at the cap
        r = _put(s2, "S02", "1001", {"unit_price_fen": 1001})
        assert r.status_code == 409
        assert r.json()["detail"] == ("单价 ￥10.01/kg 高于市场限价 ￥10.00/kg — unit price ￥10.01/kg is "
                                      "above the market's cap ￥10.00/kg")
        assert _put(s2, "S02", "1001", {"unit_price_fen": 600}).status_code == 200
    version = m.feed_version()
    with m.admin() as a:
        # A cap is the manager's, and says why.
        r = a.patch("/api/v1/items/1001", json={"cap_fen": 900})
        assert r.status_code == 422 and "why" in _msgs(r)
        # Below a stall's price: refused, naming it, and nothing changes...
        r = a.patch("/api/v1/items/1001", json={"cap_fen": 800, "why": "节日限价"})
        assert r.status_code == 409
        assert "S01 ￥10.00/kg" in r.json()["detail"] and "lower_prices" in r.json()["detail"]
        assert a.get("/api/v1/items/1001").json()["cap_fen"] == 1000
        assert m.feed_version() == version
        # ...unless the manager lowers those prices to the cap with it, each recorded.
        r = a.patch("/api/v1/items/1001", json={"cap_fen": 800, "why": "节日限价", "lower_prices": True})
        assert r.status_code == 200 and r.json()["item"]["cap_fen"] == 800
        assert m.feed_version() == version + 1
        assert [(p["stall_id"], p["unit_price_fen"]) for p in a.get("/api/v1/prices").json()] == [
            ("S01", 800), ("S02", 600)]
        # A raised cap needs nothing else; null removes it.
        assert a.patch("/api/v1/items/1001", json={"cap_fen": None, "why": "取消限价"}).status_code == 200
    with m.stall("S01") as s1:
        assert _put(s1, "S01", "1001", {"unit_price_fen": 1500}).status_code == 200
        # A stall cannot touch a cap.
        assert s1.patch("/api/v1/items/1001", json={"cap_fen": 5000, "why": "x"}).status_code == 401

    rows = [(r.kind, r.stall_id, r.old_fen, r.new_fen, r.who, r.why) for r in m.changes()]
    assert rows == [
        ("cap", None, None, 1000, "admin", "新建商品时设定 — set when the item was created"),
        ("price", "S01", None, 1000, "stall:S01", ""),
        ("price", "S02", None, 600, "stall:S02", ""),
        ("price", "S01", 1000, 800, "admin", "限价下调至 ￥8.00/kg — cap lowered: 节日限价"),
        ("cap", None, 1000, 800, "admin", "节日限价"),
        ("cap", None, 800, None, "admin", "取消限价"),
        ("price", "S01", 800, 1500, "stall:S01", ""),
    ]


def test_a_price_unit_changes_only_without_prices_in_the_old_one(market: Market) -> None:
    m = market
    _create(m, BANANA, cap_fen=1000)
    with m.stall("S01") as s1:
        _put(s1, "S01", "1001", {"unit_price_fen": 700})
    with m.admin() as a:
        r = a.patch("/api/v1/items/1001", json={"price_unit": "500g"})
        assert r.status_code == 409 and "S01" in r.text and "remove_prices" in r.text
        assert a.get("/api/v1/items/1001").json()["price_unit"] == "kg"
        r = a.patch("/api/v1/items/1001", json={"price_unit": "500g", "remove_prices": True})
        assert r.status_code == 422 and "why" in _msgs(r)
        r = a.patch("/api/v1/items/1001", json={"price_unit": "500g", "remove_prices": True,
                                                 "cap_fen": 500, "why": "改按500克计价"})
        assert r.status_code == 200, r.text
        assert (r.json()["item"]["price_unit"], r.json()["item"]["cap_fen"]) == ("500g", 500)
        assert a.get("/api/v1/prices").json() == []
    with m.stall("S01") as s1:
        assert _put(s1, "S01", "1001", {"unit_price_fen": 501}).status_code == 409  # the new cap
        assert _put(s1, "S01", "1001", {"unit_price_fen": 350}).status_code == 200
    rows = [(r.kind, r.stall_id, r.price_unit, r.old_fen, r.new_fen) for r in m.changes()]
    # Each row's old and new are in its own unit.
    assert rows == [("cap", None, "kg", None, 1000), ("price", "S01", "kg", None, 700),
                    ("price", "S01", "kg", 700, None), ("cap", None, "kg", 1000, None),
                    ("cap", None, "500g", None, 500), ("price", "S01", "500g", None, 350)]
    # Without stall prices the unit changes; the old cap is cleared with it, recorded.
    _create(m, CABBAGE, cap_fen=300)
    with m.admin() as a:
        r = a.patch("/api/v1/items/2001", json={"price_unit": "kg"})
        assert r.status_code == 200 and r.json()["item"]["cap_fen"] is None
    last = m.changes()[-1]
    assert (last.kind, last.price_unit, last.old_fen, last.new_fen) == ("cap", "500g", 300, None)
    assert "500g" in last.why and "kg" in last.why


def test_a_price_far_above_the_median_raises_one_alert(market: Market) -> None:
    m = market
    _create(m, BANANA)
    with m.stall("S01") as s1, m.stall("S02") as s2, m.stall("S03") as s3:
        assert not _put(s1, "S01", "1001", {"unit_price_fen": 600}).json()["price_high"]
        assert not _put(s2, "S02", "1001", {"unit_price_fen": 640}).json()["price_high"]
        # The median of the other stalls is 620: up to 930 is not an alert.
        assert not _put(s3, "S03", "1001", {"unit_price_fen": 930}).json()["price_high"]
        assert m.alerts() == []
        assert _put(s3, "S03", "1001", {"unit_price_fen": 931}).json()["price_high"]
        assert _put(s3, "S03", "1001", {"unit_price_fen": 931}).json()["changed"] is False
        _put(s3, "S03", "1001", {"unit_price_fen": 700})
        assert _put(s3, "S03", "1001", {"unit_price_fen": 931}).json()["price_high"]  # the same finding
    alerts = m.alerts()
    assert [(a.kind, a.key, a.stall_id, a.plu) for a in alerts] == [
        ("price_high", "price_high:S03:1001:931", "S03", "1001")]
    assert "￥9.31/kg" in alerts[0].detail and "￥6.20/kg" in alerts[0].detail


def test_the_history_pages_newest_first(market: Market) -> None:
    m = market
    _create(m, BANANA, cap_fen=5000)
    _create(m, CABBAGE)
    with m.stall("S01") as s1, m.stall("S02") as s2:
        for fen in (500, 510, 520):
            _put(s1, "S01", "1001", {"unit_price_fen": fen})
        _put(s2, "S02", "1001", {"unit_price_fen": 530})
        _put(s1, "S01", "2001", {"unit_price_fen": 120})
    with m.public() as c:
        seen, before = [], None
        while True:
            params: dict[str, Any] = {"limit": 2, **({"before": before} if before else {})}
            page = c.get("/api/v1/prices/history", params=params).json()
            seen += page["changes"]
            before = page["next_before"]
            if before is None:
                break
        assert [(x["stall_id"], x["plu"], x["new_fen"]) for x in seen] == [
            ("S01", "2001", 120), ("S02", "1001", 530), ("S01", "1001", 520), ("S01", "1001", 510),
            ("S01", "1001", 500), (None, "1001", 5000)]
        assert [x["id"] for x in seen] == sorted((x["id"] for x in seen), reverse=True)
        assert seen[0]["at"].endswith("+08:00")

        def history(**params: Any) -> list[tuple[Any, ...]]:
            r = c.get("/api/v1/prices/history", params=params)
            assert r.status_code == 200, r.text
            return [(x["stall_id"], x["plu"], x["kind"], x["new_fen"]) for x in r.json()["changes"]]

        assert history(plu="1001", stall_id="S01") == [("S01", "1001", "price", 520),
                                                       ("S01", "1001", "price", 510),
                                                       ("S01", "1001", "price", 500)]
        assert history(kind="cap") == [(None, "1001", "cap", 5000)]
        assert history(stall_id="S02") == [("S02", "1001", "price", 530)]
        assert c.get("/api/v1/prices/history", params={"limit": 0}).status_code == 422
        assert c.get("/api/v1/prices/history", params={"before": 2**40}).status_code == 422
        assert c.get("/api/v1/prices/history", params={"plu": "a\x00b"}).status_code == 422


def test_concurrent_changes_of_one_price_keep_an_unbroken_history(market: Market) -> None:
    """Eight managers change one stall's price at once: each row's old price is the new price
    of the row before (the item's row is locked on PostgreSQL, writers serialised on SQLite)."""
    m = market
    _create(m, BANANA)
    errors: list[str] = []

    def change(fen: int) -> None:
        with m.admin() as a:
            for step in range(5):
                r = _put(a, "S01", "1001", {"unit_price_fen": fen + step, "why": f"run {fen}"})
                if r.status_code != 200:
                    errors.append(r.text)

    threads = [threading.Thread(target=change, args=(1000 * n,)) for n in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    rows = m.changes()
    assert len(rows) == 40
    assert rows[0].old_fen is None
    assert all(later.old_fen == earlier.new_fen for earlier, later in zip(rows, rows[1:], strict=False))
    with m.public() as c:
        assert c.get("/api/v1/prices/S01").json()[0]["unit_price_fen"] == rows[-1].new_fen
