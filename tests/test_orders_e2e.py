"""Issue 19's ordering, tested for real, end to end: a shopper orders on the market server's
/shop page in headless Chromium (a phone's viewport) while the stall is off; the stall starts
(a whole ``StallApp``: the pty scale simulator, the file printer, its outbox, feed and order
desk to that server, its /vendor page in Chromium), the order arrives there with its badge,
the vendor accepts it, weighs each line on the simulated scale through the normal flow and
checks out; the receipt prints with the order's number, the sale goes up through the outbox,
and the shopper's page, never reloaded, shows "ready" with the final amount, which is the
sale's to the 分, and the weighed line that went beyond the tolerance.  A second order,
placed while /vendor is open, rings and is declined; the first is handed over, paid by QR."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from edge.flow import FlowState
from server.app import create_app
from server.settings import Settings
from tests.conftest import LiveServer
from tests.edge.test_faults import config, start
from tests.edge.test_screens import browser, open_screen, yuan  # noqa: F401 - fixtures
from tests.edge.test_stall import wait_for
from tests.server.conftest import ADMIN

pytestmark = pytest.mark.browser

STALL = "S02"
FOLLOW_MS = 15_000


@pytest.fixture
def market(tmp_path: Path) -> Iterator[tuple[LiveServer, str]]:
    settings = Settings(db_url=f"sqlite:///{tmp_path / 'market.db'}", admin_token=ADMIN)
    with LiveServer(create_app(settings)) as srv:
        with srv.client(ADMIN) as c:
            token = c.post("/api/v1/stalls", json={"stall_id": STALL, "name": "李家蔬菜"}).json()["token"]
            for plu, name, en, unit, fen in (("2003", "胡萝卜", "Carrot", "kg", 380),
                                             ("2011", "玉米", "Sweet corn", "piece", 250)):
                item = {"plu": plu, "name": name, "name_en": en, "category": "蔬菜", "price_unit": unit,
                        "cap_fen": 2000}
                assert c.post("/api/v1/items", json=item).status_code == 201
                price = {"unit_price_fen": fen, "why": "开市"}
                assert c.put(f"/api/v1/prices/{STALL}/{plu}", json=price).status_code == 200
        yield srv, token


def order_on_the_shop(shop: Page, lines: dict[str, str]) -> None:
    """Pick the stall, add each item (PLU -> the option's value), place the order."""
    shop.click(f"#stalls li[data-stall='{STALL}'] button")
    for plu, amount in lines.items():
        item = shop.locator(f"#items li[data-plu='{plu}']")
        item.locator("select.amount").select_option(amount)
        item.locator("button.add").click()
    expect(shop.locator("#cart li")).to_have_count(len(lines))
    shop.click("#place")
    expect(shop.locator("#message")).to_contain_text("已下单，取货码")


def test_order_online_the_stall_weighs_it_and_the_shopper_sees_it_ready(
        tmp_path: Path, market: tuple[LiveServer, str], browser: Browser) -> None:  # noqa: F811
    srv, token = market
    phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    shop = phone.new_page()
    errors: list[str] = []
    shop.on("pageerror", lambda exc: errors.append(f"shop: {exc}"))
    shop.goto(f"{srv.url}/shop")
    shop.fill("#phone", "138 0013 8000")
    shop.click("#send-code")  # the market of this test shows the code (shop_code_sender=display)
    expect(shop.locator("#shown-code")).to_contain_text("验证码")
    code = re.search(r"[0-9]{6}", shop.locator("#shown-code").inner_text())
    assert code is not None
    shop.fill("#code", f"{(int(code[0]) + 1) % 10**6:06d}")
    shop.click("#sign-in")
    expect(shop.locator("#message")).to_contain_text("验证码不对")
    shop.fill("#code", code[0])
    shop.click("#sign-in")
    expect(shop.locator("#me")).to_have_text("138****8000")
    expect(shop.locator(f"#stalls li[data-stall='{STALL}'] .badge")).to_contain_text("离线")
    shop.click(f"#stalls li[data-stall='{STALL}'] button")
    carrot = shop.locator("#items li[data-plu='2003']")
    expect(carrot.locator(".price")).to_have_text("3.80 元/kg")  # the legal unit, never 斤
    expect(shop.locator("#items li[data-plu='2011'] .price")).to_have_text("2.50 元/件")
    shop.evaluate("window.__marker = 1")  # gone if the page reloads
    # The items read again unchanged (every 30 s; here the stall tapped again): the rows stay
    # the nodes they were, so a tap on "Add" or an open amount picker is not lost to a redraw.
    carrot.evaluate("n => { n.dataset.seen = 'yes'; }")
    with shop.expect_response(lambda r: r.url.endswith(f"/api/v1/shop/stalls/{STALL}")):
        shop.click(f"#stalls li[data-stall='{STALL}'] button")
    shop.evaluate("() => new Promise((done) => setTimeout(done, 200))")  # its answer drawn
    expect(carrot).to_have_attribute("data-seen", "yes")

    # 1. Ordered while the stall is off: it waits, "not yet accepted".
    order_on_the_shop(shop, {"2003": "1000", "2011": "2"})
    mine = shop.locator("#orders li.order").first
    expect(mine.locator(".state")).to_have_text("待摊位接单")
    expect(mine).to_contain_text("摊位暂时离线")
    expect(mine).to_contain_text("预估 ¥8.80")  # 1 kg at 3.80 + 2 at 2.50
    order_id = int(mine.get_attribute("data-id") or 0)
    mine = shop.locator(f"#orders li[data-id='{order_id}']")  # the newest is listed first

    app = start(config(tmp_path, server={"url": srv.url, "token": token}, feed={"wait_s": 2}))
    try:
        assert app.sim is not None and app.flow is not None and app.journal is not None
        # The stall sells the market's items at the market's prices (its feed) before it weighs.
        assert wait_for(lambda: app.session is not None and app.session.feed_state is not None
                        and app.session.feed_state.version is not None)
        vendor = open_screen(browser, app, "/vendor")
        vendor.on("pageerror", lambda exc: errors.append(f"vendor: {exc}"))
        expect(vendor.locator("#orders-count")).to_have_text("1", timeout=FOLLOW_MS)
        card = vendor.locator(f"#orders-list li[data-id='{order_id}']")
        expect(card).to_contain_text("约 1000 克")
        expect(mine.locator(".state")).to_have_text("待摊位接单")

        # 2. A second order while /vendor is open: the badge rings; the vendor declines it.
        order_on_the_shop(shop, {"2011": "1"})
        expect(vendor.locator("#orders-count")).to_have_text("2", timeout=FOLLOW_MS)
        expect(vendor.locator("#orders-badge")).to_have_attribute("data-rings", "1")
        second = vendor.locator("#orders-list li[data-state='placed']").nth(1)
        second_id = second.get_attribute("data-id")
        second.locator("button.decline").click()
        expect(shop.locator(f"#orders li[data-id='{second_id}'] .state")).to_have_text("已取消",
                                                                                       timeout=FOLLOW_MS)

        # 3. The first accepted, weighed on the scale: 1.150 kg of carrots (15 % over the
        #    estimate, beyond the 10 % tolerance) and two cobs of corn by the piece.
        card.locator("button.accept").click()
        expect(mine.locator(".state")).to_have_text("已接单", timeout=FOLLOW_MS)
        card.locator("button.weigh").click()
        expect(card).to_have_class(re.compile(r"\battached\b"))
        expect(mine.locator(".state")).to_have_text("称重配货中", timeout=FOLLOW_MS)
        app.sim.place(1150)
        expect(vendor.locator("#state")).to_have_attribute("data-state", "choosing")
        card.locator("li[data-plu='2003'] button.weigh-line").click()
        assert wait_for(lambda: app.flow is not None and app.flow.state is FlowState.PRICED)
        expect(card.locator("li[data-plu='2003'] .over")).to_contain_text("1150 克")
        app.sim.remove()
        expect(vendor.locator("#state")).to_have_attribute("data-state", "idle")
        card.locator("li[data-plu='2011'] button.weigh-line").click()
        expect(vendor.locator("#basket li")).to_have_count(2)
        vendor.click("#btn-checkout")
        expect(vendor.locator("#message")).to_contain_text("已结账 / paid")
        sale = app.journal.all_sales()[-1]
        assert sale["order_id"] == order_id and sale["total_fen"] == 437 + 500  # 1.150 kg x 3.80
        receipt = sorted((app.cfg.data_dir / "receipts").glob("*.bin"))[-1].read_bytes()
        assert f"网上订单 #{order_id}".encode("gb18030") in receipt

        # 4. The sale uploaded, the shopper's page (never reloaded) shows it ready, to the 分.
        expect(mine.locator(".state")).to_have_text("已备好，可取货", timeout=FOLLOW_MS)
        expect(mine.locator(".final")).to_have_text(f"实付金额 ¥{yuan(sale['total_fen'])}")
        expect(mine).to_contain_text("实称 1150 克 ¥4.37")
        expect(mine.locator(".diff").first).to_contain_text("+15%（超过 ±10%）")
        with srv.client(ADMIN) as c:
            stored = c.get("/api/v1/orders-all").json()
        first = next(o for o in stored if o["id"] == order_id)
        assert (first["state"], first["sale_id"], first["final_fen"]) == ("ready", sale["sale_id"],
                                                                         sale["total_fen"])

        # 5. Handed over against the code on the shopper's page (the stall never sees it), paid by QR.
        code = mine.locator(".code").inner_text().strip()
        assert re.fullmatch(r"[0-9]{4}", code) and code not in card.inner_text()
        expect(card.locator("button.paid-qr")).to_be_visible(timeout=FOLLOW_MS)
        card.locator("button.paid-qr").click()  # no code typed: said, nothing sent
        expect(vendor.locator("#message")).to_contain_text("取货码")
        card.locator("input.pickup-code").fill(f"{(int(code) + 1) % 10_000:04d}")
        card.locator("button.paid-qr").click()
        expect(vendor.locator("#message")).to_contain_text("取货码不对")
        expect(mine.locator(".state")).to_have_text("已备好，可取货")
        card.locator("input.pickup-code").fill(code)
        card.locator("button.paid-qr").click()
        expect(mine.locator(".state")).to_have_text("已取货", timeout=FOLLOW_MS)
        share = httpx.get(f"{srv.url}/api/v1/stats/online-share", timeout=5).json()
        assert (share["online_sales"], share["online_fen"]) == (1, sale["total_fen"])
        assert shop.evaluate("window.__marker") == 1 and vendor.evaluate("window.__marker") == 1
        assert errors == []
    finally:
        phone.close()  # its live stream ends before the server stops
        app.stop()
