"""Statistics from the rollups (/api/v1/stats/...), on SQLite and PostgreSQL, every figure
checked against values worked out by hand from the market in ``stats_market``."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event

from server import stats
from tests.server import stats_market
from tests.server.conftest import ADMIN
from tests.server.stats_market import DBS, NOV29, NOV30, Market


@pytest.fixture(scope="module", params=DBS)
def market(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Market]:
    yield from stats_market.serve(request, tmp_path_factory)


def get(market: Market, path: str, **params: Any) -> Any:
    with market.server.client() as c:
        r = c.get(path, params=params)
    assert r.status_code == 200, r.text
    return r.json()


def test_average_prices_with_day_and_week_changes(market: Market) -> None:
    body = get(market, "/api/v1/stats/item-prices", start="2026-11-29", end="2026-11-30")
    assert body["start"] == "2026-11-29" and body["end"] == "2026-11-30"
    assert body["rows"] == list(NOV29.values()) + list(NOV30.values())


def test_average_prices_of_chosen_items_over_a_week(market: Market) -> None:
    body = get(market, "/api/v1/stats/item-prices", start="2026-11-23", end="2026-12-01",
               plu=["1001", "2002"])
    assert [(r["day"], r["plu"], r["avg_price_fen"]) for r in body["rows"]] == [
        ("2026-11-23", "1001", 300), ("2026-11-29", "1001", 400), ("2026-11-30", "1001", 501),
        ("2026-11-30", "2002", 700), ("2026-12-01", "2002", 700)]
    assert body["rows"][-1]["dod_fen"] == 0 and body["rows"][-1]["dod_pct"] == 0.0


def test_default_range_is_the_last_seven_market_days(market: Market) -> None:
    body = get(market, "/api/v1/stats/item-prices")
    today = dt.datetime.now(stats_market.SHANGHAI).date()
    assert (body["start"], body["end"]) == ((today - dt.timedelta(days=6)).isoformat(), today.isoformat())


def test_risers_and_fallers_need_volume_on_both_days(market: Market) -> None:
    body = get(market, "/api/v1/stats/movers", day="2026-11-30")
    assert body["min_lines"] == 5
    # 9001 rose 300 % on one line of 100 g: no trend.  2002 has no day before.
    assert body["risers"] == [NOV30["1001"], NOV30["1002"]]
    # Equal falls (-10 %) in PLU order.
    assert body["fallers"] == [NOV30["2001"], NOV30["3001"]]
    one = get(market, "/api/v1/stats/movers", day="2026-11-30", min_lines=1, limit=1)
    assert one["risers"] == [NOV30["9001"]] and one["fallers"] == [NOV30["2001"]]
    assert get(market, "/api/v1/stats/movers", day="2026-11-23") == {
        "day": "2026-11-23", "min_lines": 5, "risers": [], "fallers": []}


def test_hot_categories(market: Market) -> None:
    body = get(market, "/api/v1/stats/categories", day="2026-11-30")
    # The day: 2002 + 3300 + 4500 + 700 + 4500 + 200 = 15202 分.
    assert body["day"] == "2026-11-30" and body["amount_fen"] == 15202
    assert body["categories"] == [
        # 1001 + 1002: 2002 + 3300 = 5302 = 34.88 % of 15202; 11-29 2000 + 3000: +302 = 6.04 %.
        {"category": "蔬菜", "lines": 10, "weight_g": 7000, "quantity": 0, "amount_fen": 5302,
         "share_pct": 34.88, "prev_amount_fen": 5000, "change_fen": 302, "change_pct": 6.04},
        # 2001 + 2002: 4500 + 700 = 5200 = 34.21 %; 11-29 5000: +200 = 4 %.
        {"category": "水果", "lines": 6, "weight_g": 6000, "quantity": 0, "amount_fen": 5200,
         "share_pct": 34.21, "prev_amount_fen": 5000, "change_fen": 200, "change_pct": 4.0},
        # 4500 = 29.60 %; 11-29 5000: -10 %.
        {"category": "蛋品", "lines": 5, "weight_g": 0, "quantity": 50, "amount_fen": 4500,
         "share_pct": 29.6, "prev_amount_fen": 5000, "change_fen": -500, "change_pct": -10.0},
        # not in the catalogue: 200 = 1.32 %; 11-29 500: -60 %.
        {"category": None, "lines": 1, "weight_g": 100, "quantity": 0, "amount_fen": 200,
         "share_pct": 1.32, "prev_amount_fen": 500, "change_fen": -300, "change_pct": -60.0},
    ]
    first = get(market, "/api/v1/stats/categories", day="2026-11-23")["categories"]
    assert [(c["category"], c["amount_fen"], c["prev_amount_fen"], c["change_pct"]) for c in first] == [
        ("水果", 800, None, None), ("蔬菜", 600, None, None)]


def rank(stall: str, sales: int, total: int, share: float, prev: int | None,
         change: float | None, n: int) -> dict[str, Any]:
    return {"rank": n, "stall_id": stall, "name": stats_market.STALLS[stall], "sales": sales,
            "total_fen": total, "share_pct": share, "prev_total_fen": prev, "change_pct": change}


def test_stall_ranking_by_day(market: Market) -> None:
    body = get(market, "/api/v1/stats/stall-ranking", period="day", day="2026-11-30")
    assert {k: body[k] for k in ("period", "label", "start", "end", "sales", "total_fen")} == {
        "period": "day", "label": "2026-11-30", "start": "2026-11-30", "end": "2026-11-30",
        "sales": 22, "total_fen": 15202}
    assert body["ranking"] == [
        # 7800 / 15202 = 51.31 %; 11-29 8000: -2.5 %
        rank("S02", 10, 7800, 51.31, 8000, -2.5, 1),
        # 900 x 5 + 200 (sold 16:30 UTC on the 29th: the 30th in the market) = 4700; 11-29 5500
        rank("S03", 6, 4700, 30.92, 5500, -14.55, 2),
        # 2002 + 700 (23:59:59) = 2702; 11-29 2000: +35.1 %
        rank("S01", 6, 2702, 17.77, 2000, 35.1, 3),
    ]


def test_stall_ranking_by_iso_week_in_the_market_zone(market: Market) -> None:
    week48 = get(market, "/api/v1/stats/stall-ranking", period="week", day="2026-11-29")
    # Monday 11-23 .. Sunday 11-29: S03's 23:30 sale of Sunday is in it, its sale of
    # 16:30 UTC that Sunday (00:30 Monday in the market) is not.
    assert (week48["label"], week48["start"], week48["end"]) == ("2026-W48", "2026-11-23", "2026-11-29")
    assert (week48["sales"], week48["total_fen"]) == (24, 16900)
    assert week48["ranking"] == [
        rank("S02", 11, 8800, 52.07, None, None, 1),  # 800 + 5000 + 3000
        rank("S03", 6, 5500, 32.54, None, None, 2),  # 5000 + 500
        rank("S01", 7, 2600, 15.38, None, None, 3),  # 600 + 2000
    ]
    week49 = get(market, "/api/v1/stats/stall-ranking", period="week", day="2026-12-06")
    assert (week49["label"], week49["start"], week49["end"]) == ("2026-W49", "2026-11-30", "2026-12-06")
    assert week49["total_fen"] == 15902  # 15202 on Monday + S01's 700 on Tuesday
    assert week49["ranking"] == [
        rank("S02", 10, 7800, 49.05, 8800, -11.36, 1),
        rank("S03", 6, 4700, 29.56, 5500, -14.55, 2),
        rank("S01", 7, 3402, 21.39, 2600, 30.85, 3),  # 2702 + 700; +802 of 2600
    ]


def test_stall_ranking_by_month(market: Market) -> None:
    nov = get(market, "/api/v1/stats/stall-ranking", period="month", day="2026-11-30")
    assert (nov["label"], nov["start"], nov["end"], nov["total_fen"]) == (
        "2026-11", "2026-11-01", "2026-11-30", 32102)
    assert nov["ranking"] == [
        rank("S02", 21, 16600, 51.71, None, None, 1),  # 800 + 8000 + 7800
        rank("S03", 12, 10200, 31.77, None, None, 2),  # 5500 + 4700
        rank("S01", 13, 5302, 16.52, None, None, 3),  # 600 + 2000 + 2702
    ]
    # S01's pear at 00:00:30 on 12-01 (16:00:30 UTC on 11-30) is December's.
    dec = get(market, "/api/v1/stats/stall-ranking", period="month", day="2026-12-15")
    assert (dec["label"], dec["start"], dec["end"]) == ("2026-12", "2026-12-01", "2026-12-31")
    assert dec["ranking"] == [rank("S01", 1, 700, 100.0, 5302, -86.8, 1)]  # -4602 / 5302
    assert get(market, "/api/v1/stats/stall-ranking", period="month", day="2027-02-10")["ranking"] == []


def test_price_trend_of_the_main_items(market: Market) -> None:
    body = get(market, "/api/v1/stats/price-trend", end="2026-11-30", days=8, top=3)
    days = [(dt.date(2026, 11, 23) + dt.timedelta(days=i)).isoformat() for i in range(8)]
    assert (body["start"], body["end"], body["days"]) == ("2026-11-23", "2026-11-30", days)
    gap = [None] * 5
    # Best sellers of the window by amount: 2001 10300, 3001 9500, 1002 6300 (then 1001 4602).
    assert body["items"] == [
        {"plu": "2001", "name": "苹果", "name_en": "Apple", "price_unit": "kg",
         "prices": [800, *gap, 1000, 900]},
        {"plu": "3001", "name": "鸡蛋", "name_en": "Egg", "price_unit": "piece",
         "prices": [None, *gap, 100, 90]},
        {"plu": "1002", "name": "黄瓜", "name_en": "Cucumber", "price_unit": "kg",
         "prices": [None, *gap, 600, 660]},
    ]
    chosen = get(market, "/api/v1/stats/price-trend", end="2026-11-30", days=8, plu=["9001", "1001"])
    assert [(i["plu"], i["price_unit"], i["prices"]) for i in chosen["items"]] == [
        ("9001", "kg", [None, *gap, 500, 2000]), ("1001", "500g", [300, *gap, 400, 501])]
    ranked = get(market, "/api/v1/stats/price-trend", end="2026-11-30", days=8)
    # 2002 and 9001 both sold 700 分 in the window: PLU order.
    assert [i["plu"] for i in ranked["items"]] == ["2001", "3001", "1002", "1001", "2002", "9001"]


@pytest.mark.parametrize(("path", "params", "field", "words"), [
    ("item-prices", {"start": "2026-11-30", "end": "2026-11-29"}, "start", "after end"),
    ("item-prices", {"start": "2026-01-01", "end": "2026-04-03"}, "end", "at most 92 days"),
    ("item-prices", {"start": "1999-12-31", "end": "2000-01-01"}, "start", "outside"),
    ("item-prices", {"start": "2026-02-30"}, "start", "date"),
    ("movers", {"day": "2100-01-01"}, "day", "outside"),
    ("movers", {"day": "2026-11-30", "min_lines": 0}, "min_lines", "greater than or equal"),
    ("categories", {"day": "yesterday"}, "day", "date"),
    ("stall-ranking", {"period": "year"}, "period", "day"),
    ("price-trend", {"days": 93}, "days", "less than or equal"),
    ("price-trend", {"end": "2000-01-03", "days": 5}, "days", "before 2000-01-01"),
])
def test_bad_days_and_ranges_are_a_clear_422(market: Market, path: str, params: dict[str, Any],
                                             field: str, words: str) -> None:
    with market.server.client() as c:
        r = c.get(f"/api/v1/stats/{path}", params=params)
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert error["loc"] == ["query", field] and words in error["msg"], error


def test_the_longest_ranges_are_answered(market: Market) -> None:
    body = get(market, "/api/v1/stats/item-prices", start="2026-09-01", end="2026-12-01")  # 92 days
    assert len(body["rows"]) == 14
    assert len(get(market, "/api/v1/stats/price-trend", end="2000-01-01", days=1)["days"]) == 1


RAW = re.compile(r'\b(FROM|JOIN)\s+"?(sales|sale_lines)\b', re.IGNORECASE)


def test_statistics_read_rollups_only(market: Market) -> None:
    """No statistic or export reads raw sales: with ten million stored, only rollups are cheap."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    engine = market.server.app.state.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        for path, params in [("item-prices", {"start": "2026-11-23", "end": "2026-12-01"}),
                             ("movers", {"day": "2026-11-30"}),
                             ("categories", {"day": "2026-11-30"}),
                             ("stall-ranking", {"period": "month", "day": "2026-11-30"}),
                             ("price-trend", {"end": "2026-11-30", "days": 30})]:
            get(market, f"/api/v1/stats/{path}", **params)
        for kind in ("item_prices", "stall_sales", "inspections"):
            with market.server.client(ADMIN) as c:
                r = c.get("/api/v1/export", params={"kind": kind, "start": "2026-11-01",
                                                    "end": "2026-12-31"})
            assert r.status_code == 200, r.text
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert any("rollup_item_day" in s for s in seen) and any("rollup_stall_day" in s for s in seen)
    assert not [s for s in seen if RAW.search(s)]


@pytest.mark.parametrize(("amount", "weight", "quantity", "unit", "avg"), [
    (1001, 1000, 0, "kg", 1001),
    (1001, 1000, 0, "500g", 501),  # 500.5 -> 501
    (1003, 2000, 0, "500g", 251),  # 250.75 -> 251
    (1001, 2000, 0, "500g", 250),  # 250.25 -> 250
    (25, 0, 10, "piece", 3),  # 2.5 -> 3
    (500, 0, 0, "piece", None),
    (500, 1000, 2, "kg", None),  # weighed and counted lines summed: no honest average
])
def test_average_price_is_rounded_half_up_per_legal_unit(amount: int, weight: int, quantity: int,
                                                         unit: str, avg: int | None) -> None:
    assert stats.average_price_fen(amount, weight, quantity, unit) == avg


def test_periods() -> None:
    assert stats.period_bounds("week", dt.date(2027, 1, 1)) == (
        dt.date(2026, 12, 28), dt.date(2027, 1, 3), "2026-W53")
    assert stats.period_bounds("month", dt.date(2028, 2, 29)) == (
        dt.date(2028, 2, 1), dt.date(2028, 2, 29), "2028-02")
    assert stats.period_bounds("month", dt.date(2026, 12, 31))[1] == dt.date(2026, 12, 31)
