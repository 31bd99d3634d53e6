"""Specials (特价) through the live server, on SQLite and PostgreSQL: a special is below the
stall's regular price and within the cap, in a sane window, never overlapping another,
cancelled but never deleted; the list shows current, upcoming and past ones."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from tests.conftest import LiveServer
from tests.server.conftest import ADMIN, SHANGHAI, StallSim, register_stall
from tests.server.market_rows import add_item, feed_version


def _now() -> dt.datetime:
    return dt.datetime.now(SHANGHAI).replace(microsecond=0)


def _special(starts: dt.datetime, ends: dt.datetime, **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"stall_id": "S01", "plu": "1001", "special_price_fen": 800,
                            "starts_at": starts.isoformat(), "ends_at": ends.isoformat(), "title": "晚市特价"}
    body.update(over)
    return {k: v for k, v in body.items() if v is not None}


def _setup(server: LiveServer) -> str:
    token = register_stall(server, StallSim("S01"))
    register_stall(server, StallSim("S02"), "李家蔬菜")
    add_item(server, "1001", "西红柿", cap_fen=1500, prices={"S01": 1000, "S02": 1200})
    add_item(server, "1002", "青菜", unit="500g", prices={"S01": 300})
    add_item(server, "1003", "土豆", prices={"S01": 2000}, cap_fen=1500)  # priced above a lowered cap
    add_item(server, "1004", "萝卜")  # no stall sells it
    add_item(server, "1005", "旧品种", active=False, prices={"S01": 500})
    return token


def test_a_special_runs_in_its_window_and_is_cancelled_never_deleted(server: LiveServer) -> None:
    _setup(server)
    now = _now()
    version = feed_version(server)
    with server.client(ADMIN) as c:
        r = c.post("/api/v1/promotions",
                   json=_special(now - dt.timedelta(hours=1), now + dt.timedelta(hours=2)))
        assert r.status_code == 201, r.text
        current = r.json()
        assert current["state"] == "current" and current["created_by"] == "admin"
        assert (current["special_price_fen"], current["regular_price_fen"]) == (800, 1000)
        assert (current["name"], current["price_unit"], current["stall_name"]) == ("西红柿", "kg", "王记鲜果")
        assert current["ends_at"] == (now + dt.timedelta(hours=2)).isoformat()  # market time
        assert feed_version(server) == version + 1
        tomorrow = now + dt.timedelta(days=1)
        upcoming = c.post("/api/v1/promotions", json=_special(
            tomorrow, tomorrow + dt.timedelta(hours=3), plu="1002", special_price_fen=250, title=None)).json()
        assert upcoming["state"] == "upcoming" and upcoming["title"] is None
        other_stall = c.post("/api/v1/promotions", json=_special(
            now, now + dt.timedelta(days=2), stall_id="S02", special_price_fen=1100)).json()
        assert other_stall["state"] == "current"

        def ids(**params: Any) -> list[int]:
            r = c.get("/api/v1/promotions", params=params)
            assert r.status_code == 200, r.text
            return [p["id"] for p in r.json()]

        assert ids() == [current["id"], other_stall["id"]]  # the one ending first, first
        assert ids(when="upcoming") == [upcoming["id"]]
        assert ids(when="past") == []
        assert ids(stall_id="S02") == [other_stall["id"]]
        assert ids(when="all", plu="1002") == [upcoming["id"]]

        version = feed_version(server)
        r = c.post(f"/api/v1/promotions/{current['id']}/cancel")
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "cancelled" and r.json()["cancelled_by"] == "admin"
        assert feed_version(server) == version + 1
        assert ids() == [other_stall["id"]]
        assert ids(when="past") == [current["id"]]  # kept, marked cancelled
        assert len(ids(when="all")) == 3
        again = c.post(f"/api/v1/promotions/{current['id']}/cancel")
        assert again.status_code == 409 and "cancelled already" in again.json()["detail"]
        assert c.post("/api/v1/promotions/999/cancel").status_code == 404
        # The cancelled window is free again.
        assert c.post("/api/v1/promotions", json=_special(now, now + dt.timedelta(hours=1),
                                                          special_price_fen=700)).status_code == 201
    with server.client() as c:
        assert c.post(f"/api/v1/promotions/{upcoming['id']}/cancel").status_code == 401
        assert len(c.get("/api/v1/promotions", params={"when": "all"}).json()) == 4  # public


def test_what_is_no_special_is_refused_with_its_reason(server: LiveServer) -> None:
    token = _setup(server)
    now = _now()
    soon, later = now + dt.timedelta(minutes=10), now + dt.timedelta(hours=4)
    with server.client(ADMIN) as c:
        assert c.post("/api/v1/promotions", json=_special(soon, later)).status_code == 201
        version = feed_version(server)
        for over, status, words in [
            ({"special_price_fen": 1000}, 409, "不低于摊位原价 10.00 元/kg"),  # equal is no special
            ({"special_price_fen": 1100, "stall_id": "S02", "plu": "1001"}, 201, None),
            ({"special_price_fen": 1600, "plu": "1003"}, 409, "高于市场限价 15.00 元/kg"),
            ({"plu": "1004"}, 409, "no regular price"),
            ({"plu": "1005"}, 409, "inactive"),
            ({"plu": "9999"}, 404, "PLU 9999"),
            ({"stall_id": "S09"}, 404, "no stall S09"),
            ({"special_price_fen": 600}, 409, "overlaps special"),
            ({"special_price_fen": 0}, 422, "greater than 0"),
            ({"special_price_fen": "600"}, 422, "valid integer"),
            ({"special_price_fen": 600.0}, 422, "valid integer"),
            ({"special_price_fen": 600, "plu": "1002", "ends_at": soon.isoformat()}, 422, "after starts_at"),
            ({"plu": "1002", "special_price_fen": 250,
              "ends_at": (soon + dt.timedelta(days=32)).isoformat()}, 422, "at most 31 days"),
            ({"plu": "1002", "special_price_fen": 250, "starts_at": (now - dt.timedelta(hours=3)).isoformat(),
              "ends_at": (now - dt.timedelta(hours=1)).isoformat()}, 422, "over already"),
            ({"plu": "1002", "special_price_fen": 250,
              "starts_at": (now + dt.timedelta(days=100)).isoformat(),
              "ends_at": (now + dt.timedelta(days=101)).isoformat()}, 422, "starts within 92 days"),
            ({"plu": "1002", "special_price_fen": 250, "starts_at": "2026-12-01T10:00:00"}, 422, "timezone"),
            ({"plu": "1002", "special_price_fen": 250, "title": "x" * 65}, 422, "at most 64"),
            ({"plu": "1002", "special_price_fen": 250, "shop": "S01"}, 422, "Extra inputs"),
        ]:
            r = c.post("/api/v1/promotions", json=_special(soon, later, **over))
            assert r.status_code == status, (over, r.text)
            if words:
                assert words in r.text, (over, r.text)
        assert feed_version(server) == version + 1  # only the one accepted changed the feed
    with server.client(token) as c:  # managers enter specials; a stall's token is not one
        r = c.post("/api/v1/promotions", json=_special(soon, later, plu="1002", special_price_fen=250))
        assert r.status_code == 401
    with server.client() as c:
        assert c.post("/api/v1/promotions", json=_special(soon, later, plu="1002")).status_code == 401
        assert c.get("/api/v1/promotions", params={"when": "soon"}).status_code == 422


def test_an_ended_special_is_past_and_cannot_be_cancelled(server: LiveServer) -> None:
    _setup(server)
    now = dt.datetime.now(dt.UTC)
    with server.client(ADMIN) as c:
        short = c.post("/api/v1/promotions", json=_special(now - dt.timedelta(hours=1),
                                                           now + dt.timedelta(seconds=1))).json()
        deadline = dt.datetime.fromisoformat(short["ends_at"])
        while (left := (deadline - dt.datetime.now(dt.UTC)).total_seconds()) >= 0:
            time.sleep(left + 0.05)  # until the window has closed
        past = c.get("/api/v1/promotions", params={"when": "past"}).json()
        assert [(p["id"], p["state"]) for p in past] == [(short["id"], "over")]
        assert c.get("/api/v1/promotions").json() == []
        r = c.post(f"/api/v1/promotions/{short['id']}/cancel")
        assert r.status_code == 409 and "over already" in r.json()["detail"]
