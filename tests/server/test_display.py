"""The entrance big screen (/display, 1920x1080) in a real Chromium that may reach nothing but
127.0.0.1, and its data (GET /api/v1/display) on SQLite and PostgreSQL.

A market is seeded through the real APIs (stalls, catalogue, prices, signed sales of today,
yesterday and a week ago, specials, rapid tests); every figure expected below is worked
out by hand from those sales, not read back from the server.
"""

from __future__ import annotations

import datetime as dt
import json
import queue
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Page, Route
from sqlalchemy import event

from server.display import PeriodCache
from server.stats import period_bounds
from tests.browser import chromium
from tests.conftest import LiveServer, free_port
from tests.server import server_process
from tests.server.conftest import ADMIN, SHANGHAI, StallSim, register_stall
from tests.server.manage_client import add_manager, signed_in

SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(2)>"
METHOD = "酶抑制率法 (GB/T 5009.199)"


# ---- a market seeded through the API -----------------------------------------------------------

@dataclass
class Market:
    """What was sent, and the figures a person works out from it."""

    now: dt.datetime
    sims: dict[str, StallSim]
    tokens: dict[str, str]
    #: Every sale uploaded: (stall, local day, amount in 分).
    sold: list[tuple[str, dt.date, int]] = field(default_factory=list)
    later_special: bool = False

    @property
    def today(self) -> dt.date:
        return self.now.date()

    def upload(self, server: LiveServer, stall: str, plu: str, name: str, weight_g: int, price: int,
               unit: str, when: dt.datetime, *, name_en: str | None = None) -> dict[str, Any]:
        sale = self.sims[stall].sale([(plu, name, weight_g, price, unit)], sold_at=when,
                                     line_extra={"name_en": name_en} if name_en else None)
        with server.client(self.tokens[stall]) as c:
            r = c.post("/api/v1/sales", json={"sales": [sale]})
        assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
        self.sold.append((stall, when.astimezone(SHANGHAI).date(), sale["total_fen"]))
        return sale

    def period_totals(self, period: str) -> dict[str, int]:
        start, end, _ = period_bounds(period, self.today)  # type: ignore[arg-type]
        out: dict[str, int] = {}
        for stall, day, fen in self.sold:
            if start <= day <= end:
                out[stall] = out.get(stall, 0) + fen
        return out


def _ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json()


def _today_at(now: dt.datetime, minutes_ago: int) -> dt.datetime:
    """``minutes_ago`` before now, but never before today's first minute (a run just after
    midnight keeps today's sales today)."""
    at = now - dt.timedelta(minutes=minutes_ago)
    return at if at.date() == now.date() else now.replace(hour=0, minute=0, second=1, microsecond=0)


def seed(server: LiveServer) -> Market:
    now = dt.datetime.now(SHANGHAI).replace(microsecond=0)
    sims = {"S01": StallSim("S01"), "S02": StallSim("S02"), "S03": StallSim("S03")}
    names = {"S01": "王记鲜果", "S02": "李家蔬菜", "S03": SCRIPT}
    m = Market(now, sims, {sid: register_stall(server, sim, names[sid]) for sid, sim in sims.items()})
    with server.client(ADMIN) as c:
        for plu, name, en, cat, unit in (("1001", "西红柿", "Tomato", "蔬菜", "500g"),
                                         ("1002", "土豆", "Potato", "蔬菜", "kg"),
                                         ("2001", "苹果", "Apple", "水果", "500g"),
                                         ("9001", SCRIPT, IMG, "蔬菜", "kg")):
            _ok(c.post("/api/v1/items", json={"plu": plu, "name": name, "name_en": en, "category": cat,
                                              "price_unit": unit}), 201)
        for stall, plu, fen in (("S01", "1001", 300), ("S02", "1002", 340), ("S03", "9001", 500)):
            _ok(c.put(f"/api/v1/prices/{stall}/{plu}", json={"unit_price_fen": fen, "why": "开市定价"}))

    week_ago = dt.datetime.combine(m.today - dt.timedelta(days=7), dt.time(10), SHANGHAI)
    yesterday = dt.datetime.combine(m.today - dt.timedelta(days=1), dt.time(10), SHANGHAI)
    # A week ago: potatoes at 2.50 元/kg (5 x 1 kg), apples at 6.00 元/500g (1 kg = 12.00).
    for _ in range(5):
        m.upload(server, "S02", "1002", "土豆", 1000, 250, "kg", week_ago)
    m.upload(server, "S01", "2001", "苹果", 1000, 600, "500g", week_ago + dt.timedelta(hours=1))
    # Yesterday: potatoes at 2.80 元/kg, tomatoes at 3.00 元/500g (1 kg = 6.00), 5 each.
    for _ in range(5):
        m.upload(server, "S02", "1002", "土豆", 1000, 280, "kg", yesterday)
        m.upload(server, "S01", "1001", "西红柿", 1000, 300, "500g", yesterday)
    # Today: potatoes up to 3.20 元/kg, tomatoes down to 2.70 元/500g, one apple line,
    # one line of the stall named <script>.
    for _ in range(5):
        m.upload(server, "S02", "1002", "土豆", 1000, 320, "kg", _today_at(now, 3), name_en="Potato")
        m.upload(server, "S01", "1001", "西红柿", 1000, 270, "500g", _today_at(now, 3), name_en="Tomato")
    m.upload(server, "S01", "2001", "苹果", 500, 600, "500g", _today_at(now, 2), name_en="Apple")
    m.upload(server, "S03", "9001", SCRIPT, 1000, 500, "kg", _today_at(now, 1), name_en=IMG)

    with server.client(ADMIN) as c:
        for stall, plu, fen, title in (("S01", "1001", 250, "晚市特价"), ("S03", "9001", 450, SCRIPT)):
            _ok(c.post("/api/v1/promotions", json={
                "stall_id": stall, "plu": plu, "special_price_fen": fen, "title": title,
                "starts_at": (now - dt.timedelta(hours=1)).isoformat(),
                "ends_at": (now + dt.timedelta(hours=3)).isoformat()}), 201)
        starts = now + dt.timedelta(minutes=30)
        m.later_special = starts.date() == m.today  # else it starts tomorrow: not today's
        _ok(c.post("/api/v1/promotions", json={
            "stall_id": "S02", "plu": "1002", "special_price_fen": 300, "starts_at": starts.isoformat(),
            "ends_at": (starts + dt.timedelta(hours=1)).isoformat()}), 201)
        for batch, plu, stall, inhibition in (("B-PASS-1", "1001", "S01", 12.5),
                                              ("B-FAIL-1", "1002", "S02", 62.5),
                                              ("B-PASS-2", "9001", "S03", 20.0)):
            _ok(c.post("/api/v1/inspections", json={
                "batch_code": batch, "plu": plu, "stall_id": stall, "inhibition_percent": inhibition,
                "tester": "刘检测", "tested_at": now.isoformat()}), 201)
    return m


# ---- the data -----------------------------------------------------------------------------------

def test_the_display_figures_are_the_markets(server: LiveServer) -> None:
    m = seed(server)
    with server.client() as c:
        d = _ok(c.get("/api/v1/display"))
    today = d["today"]
    assert d["day"] == m.today.isoformat()
    assert (today["sales"], today["total_fen"]) == (12, 5 * 320 + 5 * 540 + 600 + 500)
    assert [(r["stall_id"], r["name"], r["sales"], r["total_fen"]) for r in today["ranking"]] == [
        ("S01", "王记鲜果", 6, 3300), ("S02", "李家蔬菜", 5, 1600), ("S03", SCRIPT, 1, 500)]
    assert sum(h["total_fen"] for h in today["hours"]) == 5400
    assert d["compare"]["yesterday"]["hours"] == [{"hour": 10, "sales": 10, "total_fen": 5 * 280 + 5 * 600}]
    assert d["compare"]["last_week"]["hours"] == [{"hour": 10, "sales": 5, "total_fen": 1250},
                                                  {"hour": 11, "sales": 1, "total_fen": 1200}]
    for period in ("week", "month"):
        expected = sorted(m.period_totals(period).items(), key=lambda kv: (-kv[1], kv[0]))
        assert [(r["stall_id"], r["total_fen"]) for r in d["ranking"][period]["ranking"]] == expected

    specials = d["specials"]
    assert [(p["stall_id"], p["name"], p["special_price_fen"], p["regular_price_fen"], p["price_unit"])
            for p in specials] == [("S01", "西红柿", 250, 300, "500g"), ("S03", SCRIPT, 450, 500, "kg")]
    later = [(p["stall_id"], p["special_price_fen"], p["regular_price_fen"]) for p in d["specials_later"]]
    assert later == ([("S02", 300, 340)] if m.later_special else [])
    assert d["next_change_at"] == (specials[0]["ends_at"] if not m.later_special
                                   else d["specials_later"][0]["starts_at"])

    checks = d["inspections"]
    figures = (checks["batches"], checks["passed"], checks["failed"], checks["pass_rate_percent"])
    assert figures == (3, 2, 1, 66.7)
    [failed] = checks["failed_batches"]
    assert (failed["batch_code"], failed["stall_id"], failed["stall_name"], failed["name"],
            failed["inhibition_percent"], failed["blocking"]) == (
        "B-FAIL-1", "S02", "李家蔬菜", "土豆", 62.5, True)
    assert sorted(r["batch_code"] for r in checks["latest"]) == ["B-FAIL-1", "B-PASS-1", "B-PASS-2"]

    # The main items: the best sellers of the last 14 days by amount, each with today's
    # average price in its legal unit and its change from yesterday and a week ago.
    assert [it["plu"] for it in d["price_trend"]["items"]] == ["1001", "1002", "2001", "9001"]
    assert len(d["price_trend"]["days"]) == 14
    potato = next(it for it in d["price_trend"]["items"] if it["plu"] == "1002")
    assert potato["prices"][-8:] == [250, None, None, None, None, None, 280, 320]
    main = {r["plu"]: (r["price_unit"], r["avg_price_fen"], r["dod_pct"], r["wow_pct"])
            for r in d["main_items"]}
    assert main == {"1001": ("500g", 270, -10.0, None), "1002": ("kg", 320, 14.29, 28.0),
                    "2001": ("500g", 600, None, 0.0), "9001": ("kg", 500, None, None)}
    assert [(r["plu"], r["dod_pct"]) for r in d["movers"]["risers"]] == [("1002", 14.29)]
    assert [(r["plu"], r["dod_pct"]) for r in d["movers"]["fallers"]] == [("1001", -10.0)]
    assert [(c["category"], c["amount_fen"], c["share_pct"]) for c in d["categories"]["categories"]] == [
        ("蔬菜", 4800, 88.89), ("水果", 600, 11.11)]

    recent = d["recent"]
    assert recent[0] == {"stall_id": "S03", "stall_name": SCRIPT, "sold_at": recent[0]["sold_at"],
                         "total_fen": 500, "items": [SCRIPT], "items_en": [IMG]}
    assert all("trace_code" not in s for s in recent)  # nothing that opens a shopper's receipt


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_every_query_of_the_display_reads_an_index(server: LiveServer) -> None:
    """No statement behind GET /api/v1/display walks a whole table: with ten million sales
    the answer costs what it costs with ten (SQLite's own query plans say so)."""
    seed(server)
    statements: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        statements.append((statement, parameters))

    engine = server.app.state.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        with server.client() as c:
            _ok(c.get("/api/v1/display"))
    finally:
        event.remove(engine, "before_cursor_execute", record)
    selects = [(st, p) for st, p in statements if st.lstrip().upper().startswith(("SELECT", "WITH"))]
    assert len(selects) > 15
    walked = []
    with engine.connect() as conn:
        real = set(conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'table'").scalars())
        for statement, parameters in selects:
            plan = [row[3] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)]
            walked += [f"{step}: {statement[:120]}" for step in plan
                       if step.startswith("SCAN ") and " USING " not in step and step.split()[1] in real]
    assert walked == []
    tables = " ".join(st for st, _ in selects)
    assert "FROM sales" in tables  # the ticker: the latest sales by the received_at index, 12 of them
    assert [st for st, _ in selects if "FROM sales" in st and "LIMIT" not in st] == []


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_week_and_month_rankings_are_reused_for_their_ttl_only(server: LiveServer) -> None:
    m = seed(server)
    clock = [1000.0]
    periods = PeriodCache(ttl=30, clock=lambda: clock[0])

    def week() -> list[tuple[str, int]]:
        with server.app.state.sessionmaker() as session:
            return [(r.stall_id, r.total_fen) for r in periods.ranking(session, "week", m.today).ranking]

    before = week()
    assert before == sorted(m.period_totals("week").items(), key=lambda kv: (-kv[1], kv[0]))
    m.upload(server, "S03", "9001", SCRIPT, 20_000, 500, "kg", m.now)  # 100.00 more: S03 leads
    clock[0] += 29.9
    assert week() == before
    clock[0] += 0.2
    after = week()
    assert after[0] == ("S03", 500 + 10_000) and after == sorted(m.period_totals("week").items(),
                                                               key=lambda kv: (-kv[1], kv[0]))


# ---- the page -----------------------------------------------------------------------------------

@dataclass
class Screen:
    page: Page
    outside: list[str]
    dialogs: list[str]
    errors: list[str]

    def text(self, selector: str) -> str:
        return self.page.inner_text(selector)

    def wait(self, js: str, timeout: float = 15_000) -> None:
        self.page.wait_for_function(js, timeout=timeout)


@contextmanager
def screen(url: str, width: int = 1920, height: int = 1080) -> Iterator[Screen]:
    """The page in a Chromium whose requests to anything but 127.0.0.1 fail (and are listed),
    with every alert() and script error it meets listed too."""
    outside: list[str] = []
    dialogs: list[str] = []
    errors: list[str] = []

    def local_only(route: Route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1" or route.request.url.startswith("data:"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    with chromium() as browser:
        context = browser.new_context(viewport={"width": width, "height": height})
        context.route("**/*", local_only)
        page = context.new_page()
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        s = Screen(page, outside, dialogs, errors)
        s.wait("document.getElementById('live').classList.contains('on')")
        s.wait("window.display && window.display.data !== null")
        yield s
        context.close()


def _rows(s: Screen, selector: str) -> list[str]:
    return [t.strip() for t in s.page.eval_on_selector_all(selector, "els => els.map(e => e.innerText)")]


def _overflows(s: Screen) -> dict[str, Any]:
    return s.page.evaluate("""() => ({
        doc: [document.documentElement.scrollWidth, document.documentElement.scrollHeight,
              innerWidth, innerHeight],
        boxes: [...document.querySelectorAll('.panel, .fit, .kpi')]
            .filter(e => e.scrollHeight > e.clientHeight + 1 || e.scrollWidth > e.clientWidth + 1)
            .map(e => e.id || e.className),
        outside: [...document.querySelectorAll('main *, header *, .kpis *')]
            .filter(e => { const r = e.getBoundingClientRect();
                           return r.width && (r.bottom > innerHeight + 0.5 || r.right > innerWidth + 0.5); })
            .map(e => e.id || e.className || e.tagName),
    })""")


@pytest.mark.browser
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_every_panel_shows_the_seeded_market(server: LiveServer) -> None:
    m = seed(server)
    with screen(f"{server.url}/display") as s:
        # KPIs
        assert s.text("#total") == "￥54.00" and s.text("#count") == "12"
        assert s.text("#avg") == "￥4.50" and s.text("#stalls") == "3"
        assert s.text("#kpi-pass") == "66.7%" and s.text("#kpi-specials") == "2"
        # Specials: item, stall, special and regular price in legal units
        specials = _rows(s, "#specials li:not(.more)")
        assert len(specials) == (3 if m.later_special else 2)
        assert "西红柿" in specials[0] and "S01 王记鲜果" in specials[0] and "晚市特价" in specials[0]
        assert "2.50元/500g" in specials[0] and "原价 3.00元/500g" in specials[0]
        assert SCRIPT in specials[1] and f"S03 {SCRIPT}" in specials[1] and "4.50元/kg" in specials[1]
        assert "5.00元/kg" in specials[1]
        ends = m.now + dt.timedelta(hours=3)
        until = f"{ends:%H:%M}" if ends.date() == m.today else f"{ends:%m-%d %H:%M}"
        assert f"至 {until}" in specials[0]
        if m.later_special:
            starts = (m.now + dt.timedelta(minutes=30)).strftime("%H:%M")
            assert "土豆" in specials[2] and f"{starts} 开始" in specials[2] and "3.00元/kg" in specials[2]
        assert s.page.locator("#specials s").first.inner_text() == "3.00元/500g"  # struck through
        # Rapid tests: figures, the failed batch boxed with stall and item, the latest tests
        shown = [s.text(f"#insp-{k}") for k in ("batches", "passed", "failed", "rate")]
        assert shown == ["3", "2", "1", "66.7%"]
        [failed] = _rows(s, "#insp-failed-list li")
        for part in ("不合格", "土豆", "S02 李家蔬菜", "已禁售", "批次 B-FAIL-1", "抑制率 62.5%", METHOD):
            assert part in failed, part
        latest = _rows(s, "#insp-latest li")
        assert len(latest) == 3 and sum("不合格" in r for r in latest) == 1
        assert sum("合格" in r for r in latest) == 3
        # Stall ranking of the day, and the week's and month's leaders
        ranking = _rows(s, "#ranking li")
        assert ["S01 王记鲜果" in ranking[0], "6笔" in ranking[0], "￥33.00" in ranking[0]] == [True] * 3
        assert "S02 李家蔬菜" in ranking[1] and "￥16.00" in ranking[1]
        assert f"S03 {SCRIPT}" in ranking[2] and "1笔" in ranking[2] and "￥5.00" in ranking[2]
        for period in ("week", "month"):
            leaders = sorted(m.period_totals(period).items(), key=lambda kv: (-kv[1], kv[0]))[:3]
            shown = _rows(s, f"#ranking-{period} li")
            assert [r.split()[1] for r in shown] == [sid for sid, _ in leaders]
            for row, (_, fen) in zip(shown, leaders, strict=True):
                assert f"￥{fen // 100}.{fen % 100:02d}" in row
        # The hourly trend against yesterday and a week before
        assert s.text("#sum-today") == "￥54.00" and s.text("#sum-yesterday") == "￥44.00"
        assert s.text("#sum-lastweek") == "￥24.50"
        plotted = s.page.evaluate("window.display.charts.hours.data")
        assert sum(plotted[1]) == 54 and plotted[2][plotted[0].index(10)] == 44
        assert plotted[3][plotted[0].index(10)] == 12.5 and plotted[3][plotted[0].index(11)] == 12
        # Price trends of the main items: today's average, day on day, week on week, a chart each
        items = _rows(s, "#main-items tbody tr")
        assert [r.split()[0] for r in items] == ["西红柿", "土豆", "苹果", SCRIPT.split()[0]]
        assert "2.70元/500g" in items[0] and "−10.0%" in items[0]
        assert "3.20元/kg" in items[1] and "+14.3%" in items[1] and "+28.0%" in items[1]
        assert "6.00元/500g" in items[2] and "±0.0%" in items[2]
        sparks = s.page.evaluate("Object.fromEntries(Object.entries(window.display.charts.sparks)"
                                 ".map(([k, u]) => [k, u.data[1]]))")
        assert sparks["1002"][-8:] == [2.5, None, None, None, None, None, 2.8, 3.2]
        assert "土豆" in s.text("#risers") and "+14.3%" in s.text("#risers")
        assert "西红柿" in s.text("#fallers") and "−10.0%" in s.text("#fallers")
        # Hot categories and best sellers
        categories = _rows(s, "#categories li")
        assert "蔬菜" in categories[0] and "￥48.00" in categories[0] and "88.9%" in categories[0]
        assert "水果" in categories[1] and "￥6.00" in categories[1] and "11.1%" in categories[1]
        assert "西红柿" in s.text("#items tbody") and "5.00 kg" in s.text("#items tbody")
        # The live ticker: stall, items, amount, time; the newest first
        ticker = _rows(s, "#recent li")
        assert f"S03 {SCRIPT}" in ticker[0] and "￥5.00" in ticker[0]
        assert _today_at(m.now, 1).strftime("%H:%M:%S") in ticker[0]
        # Names with markup are text: nothing ran, nothing was added to the page
        assert s.dialogs == [] and s.errors == []
        assert s.page.evaluate("document.scripts.length") == 2
        assert s.page.evaluate("document.querySelectorAll('img').length") == 0
        # Everything came from 127.0.0.1, the chart library too
        assert s.outside == []
        assert s.page.evaluate("typeof uPlot") == "function"
        hosts = s.page.evaluate("performance.getEntriesByType('resource').map(e => new URL(e.name).hostname)")
        assert hosts and set(hosts) == {"127.0.0.1"}
        assert _overflows(s) == {"doc": [1920, 1080, 1920, 1080], "boxes": [], "outside": []}


@pytest.mark.browser
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_screen_in_english(server: LiveServer) -> None:
    seed(server)
    with screen(f"{server.url}/display?lang=en") as s:
        assert s.page.evaluate("document.documentElement.lang") == "en"
        assert s.page.title() == "平顺菜市场 · Market board"
        assert s.text("#specials-panel h2") == "Today's specials"
        assert s.text("#inspections-panel h2").startswith("Pesticide rapid tests")
        specials = _rows(s, "#specials li")
        assert "Tomato" in specials[0] and "¥2.50/500 g" in specials[0]
        assert "Regular ¥3.00/500 g" in specials[0]
        assert IMG in specials[1]  # the English name, as text
        failed = s.text("#insp-failed-list")
        assert "Potato" in failed and "blocked for sale" in failed and "inhibition 62.5%" in failed
        assert "6 sales" in s.text("#ranking") and "1 sale" in s.text("#ranking")
        assert "Tomato" in s.text("#main-items") and "¥3.20/kg" in s.text("#main-items")
        assert "Potato" in s.text("#risers")
        assert IMG in s.text("#recent")
        assert s.dialogs == [] and s.errors == [] and s.outside == []
        assert s.page.evaluate("document.querySelectorAll('img').length") == 0
        assert _overflows(s) == {"doc": [1920, 1080, 1920, 1080], "boxes": [], "outside": []}


HOLD_DISPLAY_JS = """() => {
  // the next /api/v1/display answer is held after it arrived (read before the sale below)
  const fetch0 = window.fetch;
  window.__held = null;
  window.fetch = async (url, opts) => {
    const r = await fetch0(url, opts);
    if (String(url).endsWith("/api/v1/display") && window.__held === null) {
      const body = await r.json();
      await new Promise((release) => { window.__held = release; });
      return {ok: true, status: 200, json: async () => body};
    }
    return r;
  };
  refreshSoon(0);
}"""


@pytest.mark.browser
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_day_figure_read_before_a_live_sale_does_not_overwrite_it(server: LiveServer) -> None:
    """The screen's refresh (on connecting, or every 15 s after sales) and a sale's live event
    race: an answer read before the sale was stored that arrives after its event must not put
    the older count back (it did, for up to 15 s, and the restart test failed under load)."""
    m = seed(server)
    with screen(f"{server.url}/display") as s:
        s.wait("document.getElementById('count').textContent === '12'")
        s.page.evaluate(HOLD_DISPLAY_JS)
        s.wait("typeof window.__held === 'function'")  # the answer (12 sales) is in, held
        m.upload(server, "S02", "1002", "土豆", 2000, 320, "kg", dt.datetime.now(SHANGHAI))
        s.wait("document.getElementById('count').textContent === '13'")  # the live event
        s.page.evaluate("window.__held(); window.__held = 'released'")
        s.page.wait_for_timeout(300)  # the held answer rendered (its 12) and the event put back
        assert s.text("#count") == "13"


@pytest.mark.browser
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_sale_a_failed_test_a_special_and_a_price_appear_without_a_reload(server: LiveServer) -> None:
    m = seed(server)
    with screen(f"{server.url}/display") as s:
        s.page.evaluate("window.__marker = 1")  # gone if the page reloads

        m.upload(server, "S02", "1002", "土豆", 2000, 320, "kg", dt.datetime.now(SHANGHAI))
        s.wait("document.getElementById('count').textContent === '13'")
        assert s.text("#total") == "￥60.40"
        assert "S02 李家蔬菜" in _rows(s, "#recent li")[0] and "￥6.40" in _rows(s, "#recent li")[0]

        with server.client(ADMIN) as c:
            _ok(c.post("/api/v1/inspections", json={
                "batch_code": "B-FAIL-2", "plu": "1001", "stall_id": "S01", "inhibition_percent": 71.0,
                "tester": "刘检测", "tested_at": dt.datetime.now(SHANGHAI).isoformat()}), 201)
        s.wait("document.getElementById('insp-failed').textContent === '2'")
        assert "B-FAIL-2" in s.text("#insp-failed-list") and "S01 王记鲜果" in s.text("#insp-failed-list")
        assert s.text("#kpi-pass") == "50.0%"

        with server.client(ADMIN) as c:
            _ok(c.put("/api/v1/prices/S01/2001", json={"unit_price_fen": 700, "why": "到货"}))
            _ok(c.post("/api/v1/promotions", json={
                "stall_id": "S01", "plu": "2001", "special_price_fen": 550,
                "starts_at": (dt.datetime.now(SHANGHAI) - dt.timedelta(minutes=1)).isoformat(),
                "ends_at": (dt.datetime.now(SHANGHAI) + dt.timedelta(hours=2)).isoformat()}), 201)
        s.wait("document.getElementById('kpi-specials').textContent === '3'")
        apple = [r for r in _rows(s, "#specials li") if "苹果" in r]
        assert len(apple) == 1 and "5.50元/500g" in apple[0] and "原价 7.00元/500g" in apple[0]

        # A price change alone (no special, no test) reaches the screen too: the regular
        # price shown beside a special follows it.
        with server.client(ADMIN) as c:
            _ok(c.put("/api/v1/prices/S01/1001", json={"unit_price_fen": 320, "why": "进价上涨"}))
        s.wait("[...document.querySelectorAll('#specials li')]"
               ".some(li => li.innerText.includes('原价 3.20元/500g'))", timeout=10_000)
        assert s.page.evaluate("window.__marker") == 1
        assert s.dialogs == [] and s.errors == [] and s.outside == []


@pytest.mark.browser
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_failed_test_recorded_on_the_managers_page_reaches_the_screen(server: LiveServer) -> None:
    """Not only the API: whatever commits a change (here the /manage form) moves the screen."""
    seed(server)
    add_manager(server)
    with screen(f"{server.url}/display") as s, signed_in(server) as (manager, csrf):
        s.page.evaluate("window.__marker = 1")
        tested = dt.datetime.now(SHANGHAI).strftime("%Y-%m-%dT%H:%M")
        r = manager.post("/manage/inspections", data={
            "csrf_token": csrf, "stall_id": "S03", "plu": "9001", "batch_code": "B-FORM-1",
            "inhibition": "80.0", "tester": "王检测", "tested_at": tested})
        assert r.status_code == 303, r.text
        s.wait("document.getElementById('insp-failed').textContent === '2'")
        assert "B-FORM-1" in s.text("#insp-failed-list") and f"S03 {SCRIPT}" in s.text("#insp-failed-list")
        assert s.page.evaluate("window.__marker") == 1 and s.dialogs == []


@pytest.mark.browser
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_crowded_market_fits_1920x1080_without_scrollbars(server: LiveServer) -> None:
    now = dt.datetime.now(SHANGHAI).replace(microsecond=0)
    long_name = "长" * 64
    with server.client(ADMIN) as c:
        for i in range(8):
            _ok(c.post("/api/v1/items", json={"plu": f"{3000 + i}", "name": f"{long_name[:60]}{i:04d}",
                                              "name_en": "L" * 64, "category": f"类{i}" * 8,
                                              "price_unit": "500g"}), 201)
    sims = [StallSim(f"S{n:02d}") for n in range(1, 25)]
    for n, sim in enumerate(sims):
        token = register_stall(server, sim, f"{n:02d}{long_name[:62]}")
        with server.client(token) as c:
            sale = sim.sale([(f"{3000 + n % 8}", f"{long_name[:60]}{n % 8:04d}", 1000 + n, 500 + n, "500g")],
                            sold_at=_today_at(now, 1))
            assert _ok(c.post("/api/v1/sales", json={"sales": [sale]}))["accepted"] == 1
        with server.client(ADMIN) as c:
            plu = f"{3000 + n % 8}"
            _ok(c.put(f"/api/v1/prices/{sim.stall_id}/{plu}", json={"unit_price_fen": 900, "why": "x"}))
            _ok(c.post("/api/v1/promotions", json={
                "stall_id": sim.stall_id, "plu": plu, "special_price_fen": 800, "title": "T" * 64,
                "starts_at": (now - dt.timedelta(hours=1)).isoformat(),
                "ends_at": (now + dt.timedelta(days=3)).isoformat()}), 201)
            _ok(c.post("/api/v1/inspections", json={
                "batch_code": "B" * 28 + f"{n:04d}", "plu": plu, "stall_id": sim.stall_id,
                "inhibition_percent": 55.0 if n % 2 else 10.0, "tester": "T" * 64, "method": "M" * 64,
                "tested_at": now.isoformat()}), 201)
    with screen(f"{server.url}/display") as s:
        assert _overflows(s) == {"doc": [1920, 1080, 1920, 1080], "boxes": [], "outside": []}
        # What does not fit is counted, not cut off or scrolled.
        shown = len(_rows(s, "#ranking li:not(.more)"))
        assert 3 <= shown < 24 and s.text("#ranking li.more") == f"另有 {24 - shown} 项"
        shown = len(_rows(s, "#specials li:not(.more)"))
        assert 3 <= shown < 24 and s.text("#specials li.more") == f"另有 {24 - shown} 项"
        shown = len(_rows(s, "#insp-failed-list li:not(.more)"))
        assert 1 <= shown < 12 and s.text("#insp-failed-list li.more") == f"另有 {12 - shown} 项"
        assert s.text("#kpi-specials") == "24" and s.text("#insp-failed") == "12"
        assert f"至 {now + dt.timedelta(days=3):%m-%d %H:%M}" in s.text("#specials li")  # another day's end
    with screen(f"{server.url}/display?lang=en") as s:
        assert _overflows(s) == {"doc": [1920, 1080, 1920, 1080], "boxes": [], "outside": []}


# ---- the live stream -----------------------------------------------------------------------------

class Events:
    """``/api/v1/events`` read in a thread over a plain socket (closed by ``close``, so the
    server is not left holding the stream): each event's name and JSON data, in order."""

    def __init__(self, server: LiveServer) -> None:
        self.queue: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._stop = threading.Event()
        self._sock = socket.create_connection(("127.0.0.1", server.port), timeout=0.5)
        self._sock.sendall(b"GET /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           b"Accept: text/event-stream\r\n\r\n")
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        assert self.next()[0] == "hello"

    def _body(self) -> Iterator[bytes]:
        """The response body, its chunks joined (the stream is chunked)."""
        buf = b""
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                return
            buf += data
            if b"\r\n\r\n" in buf and buf.startswith(b"HTTP/"):
                buf = buf.split(b"\r\n\r\n", 1)[1]
            while b"\r\n" in buf and not buf.startswith(b"HTTP/"):
                size_line, rest = buf.split(b"\r\n", 1)
                size = int(size_line, 16)
                if len(rest) < size + 2:
                    break
                yield rest[:size]
                buf = rest[size + 2:]

    def _read(self) -> None:
        text, name = "", ""
        for chunk in self._body():
            text += chunk.decode()
            while "\n" in text:
                line, text = text.split("\n", 1)
                line = line.rstrip("\r")
                if line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    self.queue.put((name, json.loads(line[5:].strip())))

    def next(self, timeout: float = 10) -> tuple[str, Any]:
        return self.queue.get(timeout=timeout)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_changes_that_commit_publish_a_market_event_and_refused_ones_do_not(server: LiveServer) -> None:
    sim = StallSim("S01")
    register_stall(server, sim)
    events = Events(server)
    try:
        with server.client(ADMIN) as c:
            _ok(c.post("/api/v1/items", json={"plu": "1001", "name": "西红柿", "name_en": "Tomato",
                                              "category": "蔬菜", "price_unit": "500g", "cap_fen": 600,
                                              "why": "限价"}), 201)
            assert events.next() == ("market", {"type": "market", "changed": ["items", "prices"]})
            _ok(c.put("/api/v1/prices/S01/1001", json={"unit_price_fen": 300, "why": "开市"}))
            assert events.next() == ("market", {"type": "market", "changed": ["prices"]})
            # Refused (above the cap, then not below the regular price): rolled back, no event.
            _ok(c.put("/api/v1/prices/S01/1001", json={"unit_price_fen": 700, "why": "x"}), 409)
            now = dt.datetime.now(SHANGHAI)
            _ok(c.post("/api/v1/promotions", json={
                "stall_id": "S01", "plu": "1001", "special_price_fen": 300,
                "starts_at": now.isoformat(), "ends_at": (now + dt.timedelta(hours=1)).isoformat()}), 409)
            _ok(c.post("/api/v1/inspections", json={
                "batch_code": "B1", "plu": "1001", "stall_id": "S01", "inhibition_percent": 70.0,
                "tester": "刘", "tested_at": now.isoformat()}), 201)
            assert events.next() == ("market", {"type": "market", "changed": ["inspections"]})
        with pytest.raises(queue.Empty):
            events.next(timeout=1)
    finally:
        events.close()


@pytest.mark.postgres
def test_a_screen_on_another_server_process_sees_market_changes(postgres_url: str) -> None:
    """Two servers on one PostgreSQL database (``--workers 2``, or two machines): a screen on
    one gets the market events of changes made on the other (NOTIFY in the change's own
    transaction), and a refused change, rolled back, sends nothing."""
    from server.app import create_app
    from server.settings import Settings
    from tests.server.conftest import reset_postgres

    reset_postgres(postgres_url)
    a = create_app(Settings(db_url=postgres_url, admin_token=ADMIN))
    b = create_app(Settings(db_url=postgres_url, admin_token=ADMIN))
    with LiveServer(a) as srv_a, LiveServer(b) as srv_b:
        register_stall(srv_a, StallSim("S01"))
        assert b.state.listener.listening.wait(10)
        events = Events(srv_b)
        try:
            with srv_a.client(ADMIN) as c:
                _ok(c.post("/api/v1/items", json={"plu": "1001", "name": "西红柿", "name_en": "Tomato",
                                                  "category": "蔬菜", "price_unit": "500g", "cap_fen": 600}),
                    201)
                assert events.next() == ("market", {"type": "market", "changed": ["items", "prices"]})
                _ok(c.put("/api/v1/prices/S01/1001", json={"unit_price_fen": 700, "why": "x"}), 409)
                _ok(c.put("/api/v1/prices/S01/1001", json={"unit_price_fen": 300, "why": "开市"}))
                # The refused change came first: had it been sent, it would be next.
                assert events.next() == ("market", {"type": "market", "changed": ["prices"]})
            with pytest.raises(queue.Empty):
                events.next(timeout=1)
        finally:
            events.close()


@pytest.mark.browser
def test_the_screen_reconnects_by_itself_after_the_server_restarts(tmp_path: Path) -> None:
    db, port, log = f"sqlite:///{tmp_path / 'market.db'}", free_port(), tmp_path / "server.log"
    here = server_process.ServerAt(port)
    proc = server_process.start(db, port, log, ADMIN)
    try:
        sim = StallSim("S01")
        token = register_stall(here, sim)  # type: ignore[arg-type]
        with here.client(token) as c:
            _ok(c.post("/api/v1/sales", json={"sales": [sim.sale([("1001", "西红柿", 1000, 300, "500g")])]}))
        with screen(f"{here.url}/display") as s:
            assert s.text("#count") == "1"
            s.page.evaluate("window.__marker = 1")
            server_process.stop(proc)
            s.wait("document.getElementById('live').classList.contains('off')")
            proc = server_process.start(db, port, log, ADMIN)
            s.wait("document.getElementById('live').classList.contains('on')", timeout=45_000)
            with here.client(token) as c:
                _ok(c.post("/api/v1/sales", json={"sales": [sim.sale([("1002", "土豆", 2000, 280, "kg")])]}))
            s.wait("document.getElementById('count').textContent === '2'")
            assert "土豆" in s.text("#recent") and s.text("#total") == "￥11.60"
            assert s.page.evaluate("window.__marker") == 1
            assert s.outside == [] and s.errors == []
    finally:
        server_process.stop(proc)
