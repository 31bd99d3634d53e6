"""A small market sold through the real ingest, for the statistics and export tests.

Three stalls sell over market days 2026-11-23 (Monday) .. 2026-12-01 (Tuesday) in
Asia/Shanghai; 2026-11-30 is both a Monday (ISO week 49 starts) and the last day of
November.  Every sale is one line, signed and chained as a stall makes it; the tests
check the server's figures against values worked out by hand from this table.

Sales (times +08:00 unless said; amounts as ``edge.pricing`` computes them):

=========  =====  ===========================================  =========
day        stall  lines                                        amount 分
=========  =====  ===========================================  =========
11-23 Mon  S01    2 x 1001 西红柿 500 g at 300 分/500g           2 x 300
11-23 Mon  S02    1 x 2001 苹果 1000 g at 800 分/kg              800
11-29 Sun  S01    5 x 1001 500 g at 400 分/500g                  5 x 400
11-29 Sun  S02    5 x 2001 1000 g at 1000 分/kg                  5 x 1000
11-29 Sun  S02    5 x 1002 黄瓜 1000 g at 600 分/kg              5 x 600
11-29 Sun  S03    5 x 3001 鸡蛋 10 pieces at 100 分/piece         5 x 1000
11-29 Sun  S03    9001 野菜 (not in the catalogue) 1000 g at      500
                  500 分/kg, at 23:30 (last hour of week 48)
11-30 Mon  S01    4 x 1001 400 g at 500 分/500g                  4 x 400
11-30 Mon  S01    1 x 1001 400 g at 503 分/500g (402.4)          402
11-30 Mon  S01    2002 梨 1000 g at 700 分/kg at 23:59:59        700
11-30 Mon  S02    5 x 2001 1000 g at 900 分/kg                   5 x 900
11-30 Mon  S02    5 x 1002 1000 g at 660 分/kg                   5 x 660
11-30 Mon  S03    5 x 3001 10 pieces at 90 分/piece              5 x 900
11-30 Mon  S03    9001 100 g at 2000 分/kg, sold_at               200
                  2026-11-29T16:30:00+00:00 (Sunday in UTC,
                  Monday 00:30 in the market)
12-01 Tue  S01    2002 1000 g at 700 分/kg at 00:00:30           700
                  (11-30 16:00:30 UTC), refunded 12-01 09:00
=========  =====  ===========================================  =========

Inspections (recorded in the table directly: the statistics only read them):
11-30 S02 2001 batch B-APPLE-1 pass 15.0 %, B-APPLE-2 fail 62.0 % and again fail 65.5 %;
11-30 S03 3001 batch B-EGG-1 pass, no inhibition measured.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from edge.integrity import sale_digest, sign_sale
from server import db
from server.app import create_app
from server.settings import Settings
from tests.conftest import LiveServer
from tests.server.conftest import ADMIN, SHANGHAI, StallSim, register_stall, reset_postgres

UTC = dt.UTC
DBS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]

#: (plu, name, name_en, category, price_unit)
CATALOGUE = [
    ("1001", "西红柿", "Tomato", "蔬菜", "500g"),
    ("1002", "黄瓜", "Cucumber", "蔬菜", "kg"),
    ("2001", "苹果", "Apple", "水果", "kg"),
    ("2002", "梨", "Pear", "水果", "kg"),
    ("3001", "鸡蛋", "Egg", "蛋品", "piece"),
]
#: S03's name starts with "=": a formula to Excel, unless the CSV export defuses it.
STALLS = {"S01": "王记", "S02": "李记", "S03": "=1+2 张记"}


def at(month: int, day: int, hour: int, minute: int = 0, second: int = 0,
       tz: dt.tzinfo = SHANGHAI) -> dt.datetime:
    return dt.datetime(2026, month, day, hour, minute, second, tzinfo=tz)


def piece_sale(sim: StallSim, plu: str, name: str, quantity: int, price_fen: int,
               sold_at: dt.datetime) -> dict[str, Any]:
    """A per-piece sale (``StallSim`` weighs): built, then made a counted line and signed."""
    doc = sim.sale([(plu, name, 1, price_fen, "kg")], sold_at=sold_at, sign=False)
    doc["lines"][0].update(weight_g=None, quantity=quantity, price_unit="piece",
                           amount_fen=quantity * price_fen)
    doc["total_fen"] = quantity * price_fen
    doc["signature"] = sign_sale(doc, sim.key)
    sim.prev = sale_digest(doc)
    return doc


@dataclass
class Market:
    server: LiveServer
    tokens: dict[str, str] = field(default_factory=dict)
    #: The 12-01 pear sale of S01, refunded.
    refunded: dict[str, Any] = field(default_factory=dict)


# ---- what the server must answer, worked out by hand from the table above ----------------------

NAMES = {plu: (name, name_en, category, unit) for plu, name, name_en, category, unit in CATALOGUE}


def price_row(day: str, plu: str, lines: int, weight_g: int, quantity: int, amount_fen: int,
              avg: int | None, dod: tuple[int, float] | None = None,
              wow: tuple[int, float] | None = None) -> dict[str, Any]:
    name, name_en, category, unit = NAMES.get(plu, ("野菜", None, None, "kg"))
    return {"day": day, "plu": plu, "name": name, "name_en": name_en, "category": category,
            "price_unit": unit, "lines": lines, "weight_g": weight_g, "quantity": quantity,
            "amount_fen": amount_fen, "avg_price_fen": avg,
            "dod_fen": None if dod is None else dod[0], "dod_pct": None if dod is None else dod[1],
            "wow_fen": None if wow is None else wow[0], "wow_pct": None if wow is None else wow[1]}


# 2026-11-30 by hand (the day before 11-29, the week before 11-23):
NOV30 = {
    # 4 x 400 + 402 = 2002 分 for 2000 g: 2002 x 500 / 2000 = 500.5 -> 501 分/500g (half-up;
    # half-even would give 500).  11-29: 2000 x 500 / 2500 = 400; 11-23: 600 x 500 / 1000 = 300.
    # +101 = 25.25 % of 400; +201 = 67.0 % of 300.
    "1001": price_row("2026-11-30", "1001", 5, 2000, 0, 2002, 501, (101, 25.25), (201, 67.0)),
    # 3300 / 5 kg = 660 分/kg; 11-29 600: +60 = 10 %; nothing on 11-23.
    "1002": price_row("2026-11-30", "1002", 5, 5000, 0, 3300, 660, (60, 10.0)),
    # 4500 / 5 kg = 900; 11-29 1000: -100 = -10 %; 11-23 800: +100 = 12.5 %.
    "2001": price_row("2026-11-30", "2001", 5, 5000, 0, 4500, 900, (-100, -10.0), (100, 12.5)),
    # first sold today: no change.
    "2002": price_row("2026-11-30", "2002", 1, 1000, 0, 700, 700),
    # per piece: 4500 / 50 = 90; 11-29 5000 / 50 = 100: -10 = -10 %.
    "3001": price_row("2026-11-30", "3001", 5, 0, 50, 4500, 90, (-10, -10.0)),
    # not in the catalogue, weighed: per kg.  200 分 for 100 g = 2000 分/kg; 11-29 500: +300 %.
    "9001": price_row("2026-11-30", "9001", 1, 100, 0, 200, 2000, (1500, 300.0)),
}
NOV29 = {
    "1001": price_row("2026-11-29", "1001", 5, 2500, 0, 2000, 400),
    "1002": price_row("2026-11-29", "1002", 5, 5000, 0, 3000, 600),
    "2001": price_row("2026-11-29", "2001", 5, 5000, 0, 5000, 1000),
    "3001": price_row("2026-11-29", "3001", 5, 0, 50, 5000, 100),
    "9001": price_row("2026-11-29", "9001", 1, 1000, 0, 500, 500),
}



def _sales(sims: dict[str, StallSim]) -> dict[str, list[dict[str, Any]]]:
    s1, s2, s3 = sims["S01"], sims["S02"], sims["S03"]
    one = StallSim.sale
    out: dict[str, list[dict[str, Any]]] = {"S01": [], "S02": [], "S03": []}
    out["S01"] += [one(s1, [("1001", "西红柿", 500, 300, "500g")], sold_at=at(11, 23, 10, i))
                   for i in range(2)]
    out["S02"].append(one(s2, [("2001", "苹果", 1000, 800, "kg")], sold_at=at(11, 23, 10)))
    out["S01"] += [one(s1, [("1001", "西红柿", 500, 400, "500g")], sold_at=at(11, 29, 9, i))
                   for i in range(5)]
    out["S02"] += [one(s2, [("2001", "苹果", 1000, 1000, "kg")], sold_at=at(11, 29, 9, i))
                   for i in range(5)]
    out["S02"] += [one(s2, [("1002", "黄瓜", 1000, 600, "kg")], sold_at=at(11, 29, 10, i))
                   for i in range(5)]
    out["S03"] += [piece_sale(s3, "3001", "鸡蛋", 10, 100, at(11, 29, 9, i)) for i in range(5)]
    out["S03"].append(one(s3, [("9001", "野菜", 1000, 500, "kg")], sold_at=at(11, 29, 23, 30)))
    out["S01"] += [one(s1, [("1001", "西红柿", 400, 500, "500g")], sold_at=at(11, 30, 9, i))
                   for i in range(4)]
    out["S01"].append(one(s1, [("1001", "西红柿", 400, 503, "500g")], sold_at=at(11, 30, 9, 30)))
    out["S01"].append(one(s1, [("2002", "梨", 1000, 700, "kg")], sold_at=at(11, 30, 23, 59, 59)))
    out["S02"] += [one(s2, [("2001", "苹果", 1000, 900, "kg")], sold_at=at(11, 30, 9, i))
                   for i in range(5)]
    out["S02"] += [one(s2, [("1002", "黄瓜", 1000, 660, "kg")], sold_at=at(11, 30, 10, i))
                   for i in range(5)]
    out["S03"] += [piece_sale(s3, "3001", "鸡蛋", 10, 90, at(11, 30, 9, i)) for i in range(5)]
    out["S03"].append(one(s3, [("9001", "野菜", 100, 2000, "kg")],
                          sold_at=dt.datetime(2026, 11, 29, 16, 30, tzinfo=UTC)))
    out["S01"].append(one(s1, [("2002", "梨", 1000, 700, "kg")], sold_at=at(12, 1, 0, 0, 30)))
    return out


def _inspections(maker: Any) -> None:
    now = dt.datetime.now(UTC)
    rows = [("S02", "2001", "B-APPLE-1", "pass", 150, at(11, 30, 7)),
            ("S02", "2001", "B-APPLE-2", "fail", 620, at(11, 30, 7, 10)),
            ("S02", "2001", "B-APPLE-2", "fail", 655, at(11, 30, 8)),
            ("S03", "3001", "B-EGG-1", "pass", None, at(11, 30, 7, 20))]
    with maker.begin() as session:
        for stall, plu, batch, result, permille, tested in rows:
            session.add(db.Inspection(batch_code=batch, plu=plu, stall_id=stall, method="酶抑制率法",
                                      inhibition_permille=permille, result=result, tester="检测员",
                                      tested_at=tested, local_day=tested.date(), recorded_by="admin",
                                      recorded_at=now))


def build(server: LiveServer) -> Market:
    maker = server.app.state.sessionmaker
    now = dt.datetime.now(UTC)
    with maker.begin() as session:
        for plu, name, name_en, category, unit in CATALOGUE:
            session.add(db.Item(plu=plu, name=name, name_en=name_en, category=category,
                                price_unit=unit, created_at=now, updated_at=now))
    market = Market(server)
    sims = {sid: StallSim(sid) for sid in STALLS}
    for sid, sim in sims.items():
        market.tokens[sid] = register_stall(server, sim, STALLS[sid])
    all_sales = _sales(sims)
    for sid, sales in all_sales.items():
        with server.client(market.tokens[sid]) as c:
            r = c.post("/api/v1/sales", json={"sales": sales})
        assert r.status_code == 200 and r.json()["accepted"] == len(sales), r.text
    market.refunded = all_sales["S01"][-1]
    with server.client(market.tokens["S01"]) as c:
        r = c.post("/api/v1/refunds", json={"refunds": [{
            "sale_id": market.refunded["sale_id"], "line_no": 1, "amount_fen": 700, "reason": "坏果",
            "operator": "王", "at": at(12, 1, 9).isoformat()}]})
    assert r.json()["results"][0]["status"] == "accepted", r.text
    _inspections(maker)
    return market


def serve(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Market]:
    """The market on a fresh database of the fixture's kind (SQLite or PostgreSQL)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('stats') / 'market.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
        reset_postgres(url)
    with LiveServer(create_app(Settings(db_url=url, admin_token=ADMIN))) as srv:
        yield build(srv)
