"""Issue 18's "tested for real", end to end, once: a stall a vendor sells with, its two
screens, and the market's big screen, with real parts and the faults a vendor meets.

- the market server is a real ``wetmarket server`` process on 127.0.0.1 (SQLite); the
  stall is registered with the admin token (its token), registers its signing key itself
  and its outbox uploads each sale there; its feed follows the market;
- the stall is a whole ``StallApp`` in this process: the scale simulator on a pseudo-terminal,
  the journal, the file printer, the shipped recogniser looking at an image folder of a real
  photo (one the model is unsure of, so the vendor taps a guess), its screens on 127.0.0.1;
- three headless Chromium pages (Debian's): /vendor and /customer, opened first and never
  reloaded, and the server's /display, never reloaded either (it reconnects by itself after
  the server's restart).

Then, in order: weigh -> four guesses -> tap -> price on the customer's screen -> checkout
-> receipt file -> sale on the big screen; the camera unplugged (its folder taken away) ->
sold by PLU on the keypad; the scale unplugged (pty closed) -> no price on both screens,
plugged back; the server stopped -> selling goes on with the queue growing on /vendor,
started again on the same database and port -> the queue drains, the big screen shows it,
and the stall's journal and the market agree to the 分.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from edge.camera import ImageFolderCamera
from edge.flow import FlowState
from edge.stall import StallApp
from tests.conftest import free_port
from tests.edge.test_faults import config, start, state
from tests.edge.test_screens import browser, open_screen, unsure_photo, yuan  # noqa: F401 - fixtures
from tests.edge.test_stall import wait_for
from tests.server import server_process
from tests.server.conftest import ADMIN
from tests.test_market_e2e import open_display

pytestmark = pytest.mark.browser

STALL = "S02"
#: How long a page may take to follow (the big screen after a restart: SSE's retry is 3 s).
FOLLOW_MS = 15_000


class Market:
    """The ``wetmarket server`` process, stopped and started again on one database and port."""

    def __init__(self, tmp_path: Path) -> None:
        self.db = f"sqlite:///{tmp_path / 'market.db'}"
        self.log = tmp_path / "server.log"
        self.at = server_process.ServerAt(free_port())
        self.proc: Any = None

    def start(self) -> None:
        self.proc = server_process.start(self.db, self.at.port, self.log, ADMIN)

    def stop(self) -> None:
        if self.proc is not None:
            server_process.stop(self.proc)
            self.proc = None

    def get(self, path: str) -> Any:
        with self.at.client(ADMIN) as c:
            r = c.get(path)
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture
def market(tmp_path: Path) -> Iterator[Market]:
    m = Market(tmp_path)
    m.start()
    try:
        yield m
    finally:
        m.stop()


def checkout(vendor: Page, app: StallApp) -> int:
    """Tap "checkout" on /vendor; the new sale's total, read back from the journal."""
    assert app.journal is not None
    before = len(app.journal.all_sales())
    vendor.click("#btn-checkout")
    expect(vendor.locator("#message")).to_contain_text("已结账 / paid")
    journal = app.journal
    assert wait_for(lambda: len(journal.all_sales()) == before + 1)
    return int(journal.all_sales()[-1]["total_fen"])


def pick_on_keypad(vendor: Page, code: str) -> None:
    vendor.click("#keypad [data-key='C']")
    for key in code:
        vendor.click(f"#keypad [data-key='{key}']")
    expect(vendor.locator("#results button.item").first).to_have_attribute("data-code", code)
    vendor.click("#keypad [data-key='ok']")


def priced(app: StallApp, vendor: Page) -> None:
    """The load is priced; on failure, where the flow and the scale stopped and what the
    vendor's screen says (a refusal says why)."""
    flow = app.flow
    assert flow is not None
    if not wait_for(lambda: flow.state is FlowState.PRICED):
        raise AssertionError(f"not priced: flow {flow.state.value}, scale {flow.session.weigher.state.name}, "
                             f"the vendor's message {vendor.locator('#message').text_content()!r}")


def weigh_by_hand(app: StallApp, vendor: Page, customer: Page, code: str, grams: int) -> None:
    """Put ``grams`` on the plate, pick ``code`` on the keypad, see it priced, empty the plate."""
    assert app.sim is not None and app.flow is not None
    app.sim.place(grams)
    expect(vendor.locator("#state")).to_have_attribute("data-state", "choosing")
    pick_on_keypad(vendor, code)
    priced(app, vendor)
    line = app.flow.snapshot().basket[-1]
    assert (line.plu, line.weight_g) == (code, grams)
    expect(customer.locator("#amount")).to_have_text(yuan(line.amount_fen))
    app.sim.remove()
    expect(vendor.locator("#state")).to_have_attribute("data-state", "idle")


def test_sell_with_the_screens_through_camera_scale_and_server_faults(
        tmp_path: Path, market: Market, browser: Browser, unsure_photo: Path) -> None:  # noqa: F811
    with market.at.client(ADMIN) as c:
        r = c.post("/api/v1/stalls", json={"stall_id": STALL, "name": "李家蔬菜"})
        assert r.status_code == 201, r.text
        token = r.json()["token"]
    camera = tmp_path / "camera"
    (camera / "photo").mkdir(parents=True)
    for photo in (unsure_photo / "photo").iterdir():
        (camera / "photo" / photo.name).write_bytes(photo.read_bytes())

    app = start(config(tmp_path, camera={"source": str(camera), "auto_confirm": 0.95},
                       server={"url": market.at.url, "token": token}, feed={"wait_s": 2}))
    try:
        assert isinstance(app.camera, ImageFolderCamera) and app.recognizer is not None
        assert app.sim is not None and app.flow is not None and app.outbox is not None
        # Back-off capped at 2 s (30 s in service): the queue drains seconds after the restart.
        app.outbox.max_backoff_s = 2.0
        display = browser.new_context(viewport={"width": 1920, "height": 1080}).new_page()
        errors: list[str] = []
        display.on("pageerror", lambda exc: errors.append(f"display: {exc}"))
        open_display(display, market.at.url)
        expect(display.locator("#count")).to_have_text("0")
        customer = open_screen(browser, app, "/customer")
        vendor = open_screen(browser, app, "/vendor")
        for page in (customer, vendor):
            page.on("pageerror", lambda exc: errors.append(f"stall: {exc}"))
        sold: list[int] = []

        # 1. Weigh, the four guesses, tap, the price for the customer, checkout, receipt, big screen.
        app.camera.show("photo")
        app.sim.place(1200)
        guesses = vendor.locator("#guesses button.guess")
        expect(guesses).to_have_count(4)
        code = guesses.nth(1).get_attribute("data-code")
        guesses.nth(1).click()
        priced(app, vendor)
        line = app.flow.snapshot().basket[-1]
        assert (line.plu, line.weight_g) == (code, 1200)
        expect(customer.locator("#weight")).to_have_text("1.200")
        expect(customer.locator("#unit-price")).to_have_text(yuan(line.unit_price_fen))
        expect(customer.locator("#unit")).to_contain_text({"kg": "元/kg", "500g": "元/500g"}[line.price_unit])
        expect(customer.locator("#amount")).to_have_text(yuan(line.amount_fen))
        app.sim.remove()
        expect(vendor.locator("#state")).to_have_attribute("data-state", "idle")
        sold.append(checkout(vendor, app))
        assert sold == [line.amount_fen]
        receipts = list((app.cfg.data_dir / "receipts").glob("*.bin"))
        assert len(receipts) == 1 and receipts[0].stat().st_size > 100
        expect(display.locator("#count")).to_have_text("1", timeout=FOLLOW_MS)
        expect(display.locator("#total")).to_have_text(f"￥{yuan(sum(sold))}")
        expect(display.locator("#recent li").first).to_contain_text(f"￥{yuan(line.amount_fen)}")
        # The stall registered its signing key itself (its sales are checked with it, below).
        assert {s["stall_id"]: s["has_key"] for s in market.get("/api/v1/stalls")} == {STALL: True}

        # The photo taught the stall (the tapped guess was not the first): shown again it would
        # be taken at once. The items from here on are picked by hand, with no photo shown.
        app.camera.show(None)

        # 2. The camera unplugged: both screens say so, the vendor sells by PLU on the keypad.
        camera.rename(tmp_path / "camera-unplugged")
        expect(vendor.locator("#warnings")).to_contain_text("camera missing, no recognition")
        expect(customer.locator("#notices")).to_contain_text("摊主手动选品 / the vendor picks items by hand")
        weigh_by_hand(app, vendor, customer, "2003", 700)  # 0.700 kg at 3.80 元/kg: 2.66 元
        assert app.flow.snapshot().guesses == []
        sold.append(checkout(vendor, app))
        assert sold[-1] == 266
        expect(display.locator("#count")).to_have_text("2", timeout=FOLLOW_MS)
        expect(display.locator("#total")).to_have_text(f"￥{yuan(sum(sold))}")
        (tmp_path / "camera-unplugged").rename(camera)  # plugged back
        expect(vendor.locator("#warnings")).not_to_contain_text("camera missing")
        expect(customer.locator("#notices")).to_be_empty()

        # 3. The scale unplugged: no price, said on both screens; plugged back, it prices again.
        app.sim.unplug()
        expect(customer.locator("#notices")).to_contain_text("秤未就绪，暂停计价 / scale not ready: no price")
        expect(customer.locator("#weight")).to_have_text("—")
        expect(vendor.locator("#warnings")).to_contain_text("scale offline, nothing is priced")
        refused = httpx.post(f"{app.screens.url}/api/confirm", json={"code": "2003"},  # type: ignore[union-attr]
                             timeout=5)
        assert refused.status_code == 409 and "not ready" in refused.json()["reason"]
        app.sim.replug()
        expect(customer.locator("#notices")).to_be_empty()
        weigh_by_hand(app, vendor, customer, "2003", 500)  # 1.90 元, checked out with the server away

        # 4. The server stopped: selling goes on, /vendor shows the queue growing.
        market.stop()
        sold.append(checkout(vendor, app))
        expect(vendor.locator("#warnings")).to_contain_text("server away: selling goes on, 1 sales queued")
        expect(customer.locator("#notices")).to_contain_text(
            "离线销售，记录已保存 / offline: every sale is kept")
        weigh_by_hand(app, vendor, customer, "2007", 1500)
        sold.append(checkout(vendor, app))
        expect(vendor.locator("#warnings")).to_contain_text("server away: selling goes on, 2 sales queued")
        assert state(app)["server"]["queue"] == 2
        expect(display.locator("#live")).to_have_class("live off")

        # Started again on the same database and port: the queue drains, the big screen follows.
        market.start()
        expect(vendor.locator("#warnings")).not_to_contain_text("server away", timeout=FOLLOW_MS)
        assert wait_for(lambda: app.journal is not None and app.journal.counts()["pending"] == 0)
        expect(display.locator("#live")).to_have_class("live on", timeout=FOLLOW_MS)
        expect(display.locator("#count")).to_have_text("4", timeout=FOLLOW_MS)
        expect(display.locator("#total")).to_have_text(f"￥{yuan(sum(sold))}")

        # The stall's journal and the market agree, to the 分.
        journal = app.journal.all_sales()  # type: ignore[union-attr]
        assert [s["total_fen"] for s in journal] == sold
        today = market.get("/api/v1/stats/today")
        assert (today["sales"], today["total_fen"]) == (len(journal), sum(sold))
        assert app.journal.counts() == {"pending": 0, "sent": 4, "refused": 0}  # type: ignore[union-attr]
        for sale in journal:  # each one stored as signed, its signature verified with the key
            stored = market.get(f"/api/v1/sales/{sale['sale_id']}")
            assert (stored["sale"]["total_fen"], stored["verified"], stored["flags"]) == (
                sale["total_fen"], True, [])
        for page in (display, customer, vendor):
            assert page.evaluate("window.__marker") == 1  # none of them reloaded
        assert errors == []
    finally:
        app.stop()
