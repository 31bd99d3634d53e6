"""The whole chain of issue 17 with real parts, once: a manager changes a price and records a
failed rapid test on the /manage pages, the stall follows the feed and refuses that batch,
and the big screen shows it, live.

- the market server is a real ``wetmarket server`` process on 127.0.0.1 (SQLite, and
  PostgreSQL), bootstrapped as an operator does: the admin token creates the first manager,
  registers the stall (its token) and enters the catalogue and the opening prices;
- the manager works in headless Chromium (Debian's): signs in through the real form, sets
  the stall's price on the prices page, records the failed test on the rapid-test page;
- the stall is a real edge process in this one (``edge.stall.StallApp``: the simulated scale
  on a pseudo-terminal, the journal, ``FeedClient`` following ``GET /api/v1/feed`` with the
  stall's token and handing each catalogue to the session, the outbox uploading sales);
  ``wetmarket stall`` has no way to weigh or show a refusal from outside, so it runs here;
- the big screen (/display) is a second Chromium page, opened before any change and never
  reloaded.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from edge import CatalogueError
from tests.browser import chromium, manage_sign_in, submit
from tests.conftest import free_port
from tests.edge.test_feed import TOMATO_BATCH, running, stall_config, version_of, weigh
from tests.edge.test_stall import wait_for
from tests.server import server_process
from tests.server.conftest import ADMIN, SHANGHAI, reset_postgres
from tests.server.manage_client import add_manager

PASSWORD = "菜场-secret-1"
#: The demo stall S02 (tests/edge/test_feed.py's config): 西红柿 2001 of batch TOMATO_BATCH
#: at 3.00 元/500g in its seed, 胡萝卜 2003 at 3.80 元/kg.
STALL, STALL_NAME = "S02", "李家蔬菜"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def market(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[server_process.ServerAt]:
    """A ``wetmarket server`` process on a new database."""
    if request.param == "sqlite":
        db = f"sqlite:///{tmp_path / 'market.db'}"
    else:
        db = request.getfixturevalue("postgres_url")  # asked for only here: SQLite alone starts none
        reset_postgres(db)
    at = server_process.ServerAt(free_port())
    proc = server_process.start(db, at.port, tmp_path / "server.log", ADMIN)
    try:
        yield at
    finally:
        server_process.stop(proc)


def bootstrap(market: server_process.ServerAt) -> str:
    """What the operator does with the admin token: the first manager, the stall (its token),
    the catalogue and the stall's opening prices.  The stall's token."""
    add_manager(market, password=PASSWORD)  # type: ignore[arg-type]  # its client is all it uses
    with market.client(ADMIN) as c:
        r = c.post("/api/v1/stalls", json={"stall_id": STALL, "name": STALL_NAME})
        assert r.status_code == 201, r.text
        token = str(r.json()["token"])
        for plu, name, en, unit, fen in (("2001", "西红柿", "Tomato", "500g", 300),
                                         ("2003", "胡萝卜", "Carrot", "kg", 380)):
            r = c.post("/api/v1/items", json={"plu": plu, "name": name, "name_en": en,
                                              "category": "蔬菜", "price_unit": unit})
            assert r.status_code == 201, r.text
            r = c.put(f"/api/v1/prices/{STALL}/{plu}", json={"unit_price_fen": fen, "why": "开市定价"})
            assert r.status_code == 200, r.text
    return token


def open_display(page: Page, url: str) -> None:
    page.goto(f"{url}/display")
    page.wait_for_function("document.getElementById('live').classList.contains('on')", timeout=15_000)
    page.wait_for_function("window.display && window.display.data !== null", timeout=15_000)
    page.evaluate("window.__marker = 1")  # gone if the page reloads


@pytest.mark.browser
def test_a_price_and_a_failed_rapid_test_go_from_the_managers_page_to_the_stall_and_the_screen(
        market: server_process.ServerAt, tmp_path: Path) -> None:
    token = bootstrap(market)
    with running(stall_config(tmp_path, market.url, token)) as stall, chromium() as browser:
        session = stall.session
        assert session is not None
        # Two items and two prices entered: feed version 4, the market's prices in use.
        assert wait_for(lambda: version_of(stall) == 4)
        assert session.catalogue.get("2001").unit_price_fen == 300

        screen = browser.new_context(viewport={"width": 1920, "height": 1080}).new_page()
        errors: list[str] = []
        screen.on("pageerror", lambda exc: errors.append(f"display: {exc}"))
        open_display(screen, market.url)
        assert screen.inner_text("#count") == "0" and screen.inner_text("#insp-failed") == "0"

        page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        page.on("pageerror", lambda exc: errors.append(f"manage: {exc}"))
        manage_sign_in(page, market.url, "wang", PASSWORD)
        expect(page.locator("h1")).to_contain_text("概览")

        # The manager raises the stall's tomatoes to 3.60 元/500g on the prices page.
        page.goto(f"{market.url}/manage/prices?stall_id={STALL}")
        expect(page.locator("#prices")).to_contain_text("3.00 元/500g")
        submit(page, "#set-price", stall_id=STALL, plu="2001", price="3.60", why="进价上涨")
        expect(page.locator("#flash")).to_have_text("价格已保存")
        expect(page.locator("#history tbody tr").first).to_contain_text("manager:wang")

        # The stall prices its next line at the new price, and the sale reaches the screen.
        assert wait_for(lambda: session.catalogue.get("2001").unit_price_fen == 360)
        assert weigh(stall, "2001", 1000) == 720
        sale = stall.checkout()
        assert [(ln.plu, ln.unit_price_fen, ln.batch_code) for ln in sale.lines] == [
            ("2001", 360, TOMATO_BATCH)]
        expect(screen.locator("#count")).to_have_text("1", timeout=15_000)
        expect(screen.locator("#recent li").first).to_contain_text("￥7.20")

        # The manager records a failed rapid test of the stall's tomato batch.
        page.goto(f"{market.url}/manage/inspections")
        tested = dt.datetime.now(SHANGHAI).strftime("%Y-%m-%dT%H:%M")
        submit(page, "#record-inspection", stall_id=STALL, plu="2001", batch_code=TOMATO_BATCH,
               inhibition="62.5", tester="张检测", tested_at=tested)
        expect(page.locator("#flash")).to_have_text("快检已录入")
        expect(page.locator(f"#inspections tr[data-batch={TOMATO_BATCH}]")).to_have_attribute(
            "data-result", "fail")
        expect(page.locator("#blocked")).to_contain_text(TOMATO_BATCH)

        # The stall refuses to price that batch, with the reason; its carrots still sell.
        assert wait_for(lambda: session.block_reason("2001") is not None)
        reason = session.block_reason("2001")
        assert reason is not None
        assert reason.startswith(f"批次 {TOMATO_BATCH}（西红柿）农残快检不合格（"), reason
        assert "抑制率 62.5%" in reason and "检测员 张检测" in reason and "禁止销售" in reason
        with pytest.raises(CatalogueError) as refused:
            session.select("2001")
        assert str(refused.value) == reason
        assert session.block_reason("2003") is None
        assert weigh(stall, "2003", 500) == 190
        assert stall.checkout().total_fen == 190

        # The screen shows the failed batch, blocked, at its stall; it never reloaded.
        expect(screen.locator("#insp-failed")).to_have_text("1", timeout=15_000)
        failed = screen.locator(f"#insp-failed-list li[data-batch='{TOMATO_BATCH}']")
        for part in ("不合格", "西红柿", f"{STALL} {STALL_NAME}", "已禁售", f"批次 {TOMATO_BATCH}",
                     "抑制率 62.5%"):
            expect(failed).to_contain_text(part)
        expect(screen.locator("#count")).to_have_text("2", timeout=15_000)
        # Where the screen shows prices: today's average price of the tomatoes sold, the new
        # one (the price panels follow a sale within 15 s, a market change at once: the test's
        # refresh came with it).
        expect(screen.locator("#main-items tbody tr[data-plu='2001']")).to_contain_text("3.60元/500g")
        assert screen.evaluate("window.__marker") == 1
        assert errors == []
