"""The stall's screens (edge/screens) with real parts: a whole stall (StallApp: the scale
simulator on a pseudo-terminal, the journal, the file printer, the shipped recogniser
looking at a real photo), its screen server on 127.0.0.1, and headless Chromium (Debian's)
tapping /vendor while /customer, opened before, follows without a reload."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from playwright.sync_api import Browser, Page, Route, expect

from edge.camera import ImageFolderCamera
from edge.config import ScreensConfig, StallConfig
from edge.demo_data import catalogue
from edge.flow import FlowState
from edge.screens.app import create_app
from edge.screens.hub import ScreenHub
from edge.stall import StallApp
from tests.browser import chromium
from tests.conftest import require_real_dataset
from tests.edge.camera_photos import find_photo
from tests.edge.test_feed import price_market, running, stall_config, start_market
from tests.edge.test_stall import wait_for

#: Recogniser labels of S02's items whose photos the guesses test may use.
LABELS = ("Carrots", "Cucumber", "Yellow-Onion", "Aubergine", "Solid-Potato", "Zucchini")
MARKUP = '<img src=x onerror="window.pwned=1">'
MARKUP_EN = "<script>window.pwned=2</script>"


def screen_catalogue() -> list[dict[str, Any]]:
    items = catalogue("S02", "20261202")
    for item in items:
        if item["plu"] == "2004":
            item["inspection"] = "failed"  # its batch failed the rapid test: stopped from sale
    items.append({"plu": "2011", "name": "玉米", "name_en": "Sweet corn", "unit_price_fen": 250,
                  "price_unit": "piece", "batch_code": "B20261202-11"})
    items.append({"plu": "2012", "name": MARKUP, "name_en": MARKUP_EN, "unit_price_fen": 100,
                  "price_unit": "piece"})
    return items


def start_stall(tmp_path: Path, *, camera: Path | None = None, name: str = "李家蔬菜") -> StallApp:
    cfg = StallConfig(stall_id="S02", name=name, vendor="李阿姨", data_dir=tmp_path / "S02",
                      catalogue=screen_catalogue(), seed=7,  # type: ignore[arg-type]
                      camera={"source": str(camera) if camera else None,  # type: ignore[arg-type]
                              "auto_confirm": 0.95},
                      printer={"type": "file"},  # type: ignore[arg-type]
                      screens={"port": 0})  # type: ignore[arg-type]
    app = StallApp(cfg)
    app.start()
    assert app.flow is not None and app.screens is not None
    assert wait_for(lambda: app.flow.state is FlowState.IDLE)  # type: ignore[union-attr]
    return app


@pytest.fixture
def manual(tmp_path: Path) -> Iterator[StallApp]:
    """A stall without a camera: items are picked by hand."""
    app = start_stall(tmp_path)
    yield app
    app.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def unsure_photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A camera folder with one photo (or camera view of one, ``tests/edge/camera_photos.py``)
    of a stall's item that the shipped model recognises, not surely (below the stall's
    auto-confirm): its guesses wait for the vendor's tap."""
    require_real_dataset()
    from model.recognizer import Recognizer

    rec = Recognizer.load(background_refit=False)
    root = tmp_path_factory.mktemp("camera")
    if find_photo(rec, list(LABELS), lambda lb, r: not r.unknown and r.top[0][0] in LABELS
                  and 0.3 < r.top[0][1] < 0.85, root / "photo") is None:
        pytest.fail("no photo the model is unsure of among the stall's items")
    return root


def open_screen(browser: Browser, app: StallApp, path: str) -> Page:
    assert app.screens is not None
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(f"{app.screens.url}{path}")
    expect(page.locator("#live")).to_have_class(re.compile(r"\bon\b"))
    page.evaluate("window.__marker = 1")  # gone if the page reloads
    return page


def yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


def test_weigh_see_the_guesses_tap_see_the_price_check_out_and_print(
        tmp_path: Path, browser: Browser, unsure_photo: Path) -> None:
    app = start_stall(tmp_path, camera=unsure_photo)
    try:
        assert isinstance(app.camera, ImageFolderCamera) and app.sim is not None and app.flow is not None
        customer = open_screen(browser, app, "/customer")
        vendor = open_screen(browser, app, "/vendor")
        app.camera.show("photo")
        app.sim.place(1200)
        guesses = vendor.locator("#guesses button.guess")
        expect(guesses).to_have_count(4)
        expect(vendor.locator("#state")).to_have_attribute("data-state", "choosing")
        expect(vendor.locator("#weight")).to_have_text("1.200")
        # No photo in the catalogue: each guess shows a placeholder tile with its name.
        expect(guesses.first.locator(".pic .initial")).to_have_count(1)
        # Another part of the screen changes while the vendor reaches for a guess: the guess
        # buttons stay the same nodes. Rebuilt on every push, a button replaced between
        # touch-down and touch-up lost the tap (CI once saw the flow left "choosing").
        assert app.screens is not None
        vendor.evaluate("document.querySelectorAll('#guesses button.guess')[1].dataset.seen = 'yes'")
        shown = {k: v for k, v in app.screens.hub.state.items() if k != "v"}
        assert app.screens.hub.publish({**shown, "warnings": ["a passing warning"]})
        expect(vendor.locator("#warnings")).to_contain_text("a passing warning")
        expect(guesses.nth(1)).to_have_attribute("data-seen", "yes")
        code = guesses.nth(1).get_attribute("data-code")  # the vendor taps the second guess
        guesses.nth(1).click()
        assert wait_for(lambda: app.flow is not None and app.flow.state is FlowState.PRICED)
        line = app.flow.snapshot().basket[-1]
        assert (line.plu, line.weight_g) == (code, 1200)
        expect(vendor.locator("#message")).to_contain_text(yuan(line.amount_fen))

        # The customer's screen, never reloaded, shows the price with its legal unit.
        expect(customer.locator("#amount")).to_have_text(yuan(line.amount_fen))
        expect(customer.locator("#unit-price")).to_have_text(yuan(line.unit_price_fen))
        legal = {"kg": "元/kg", "500g": "元/500g"}[line.price_unit]
        expect(customer.locator("#unit")).to_contain_text(legal)
        expect(customer.locator("#item")).to_contain_text(line.name)
        expect(customer.locator("#item")).to_contain_text(line.name_en)
        expect(customer.locator("#origin")).to_contain_text("上海崇明")
        expect(customer.locator("#inspection")).to_contain_text("快检合格")
        expect(customer.locator("#weight")).to_have_text("1.200")
        expect(customer.locator("#basket li")).to_have_count(1)
        assert "斤" not in customer.inner_text("body")

        app.sim.remove()
        expect(vendor.locator("#state")).to_have_attribute("data-state", "idle")
        vendor.click("#btn-checkout")
        expect(vendor.locator("#message")).to_contain_text(f"已结账 / paid {yuan(line.amount_fen)}")
        receipts = list((app.cfg.data_dir / "receipts").glob("*.bin"))
        assert len(receipts) == 1 and receipts[0].stat().st_size > 100
        expect(customer.locator("#basket li")).to_have_count(0)
        expect(customer.locator("#total")).to_have_text("0.00")
        expect(vendor.locator("#last-receipt")).to_contain_text(receipts[0].stem.split("-")[1])
        # The picked guess was not the recogniser's first: the stall was taught this photo.
        assert wait_for(lambda: app.flow is not None and app.flow.snapshot().taught == 1)
        assert customer.evaluate("window.__marker") == 1 and vendor.evaluate("window.__marker") == 1
    finally:
        app.stop()


def test_pick_by_plu_on_the_keypad_and_pieces(manual: StallApp, browser: Browser) -> None:
    assert manual.sim is not None
    customer = open_screen(browser, manual, "/customer?lang=en")
    vendor = open_screen(browser, manual, "/vendor")
    expect(vendor.locator("#warnings")).to_contain_text("no recognition")
    manual.sim.place(700)
    expect(vendor.locator("#state")).to_have_attribute("data-state", "choosing")
    for key in "2003":
        vendor.click(f"#keypad [data-key='{key}']")
    expect(vendor.locator("#q")).to_have_value("2003")
    expect(vendor.locator("#results button.item").first).to_have_attribute("data-code", "2003")
    vendor.click("#keypad [data-key='ok']")
    # 0.700 kg at 3.80 元/kg = 2.66 元, in English only on this customer screen.
    expect(customer.locator("#amount")).to_have_text("2.66")
    expect(customer.locator("#unit")).to_have_text("yuan/kg")
    expect(customer.locator("#item")).to_have_text("Carrot")
    expect(customer.locator("#inspection")).to_have_text("rapid test passed")
    manual.sim.remove()
    expect(vendor.locator("#state")).to_have_attribute("data-state", "idle")

    # Corn by the piece: the keypad types the quantity once the item is picked.
    vendor.click("#keypad [data-key='C']")
    for key in "2011":
        vendor.click(f"#keypad [data-key='{key}']")
    expect(vendor.locator("#results button.item").first).to_have_attribute("data-code", "2011")
    vendor.click("#keypad [data-key='ok']")
    expect(vendor.locator("#qty-panel")).to_be_visible()
    vendor.click("#keypad [data-key='C']")
    vendor.click("#keypad [data-key='3']")
    vendor.click("#keypad [data-key='ok']")
    expect(vendor.locator("#qty-panel")).to_be_hidden()
    expect(customer.locator("#basket li")).to_have_count(2)
    expect(customer.locator("#basket li").nth(1)).to_contain_text("yuan/piece")
    expect(customer.locator("#total")).to_have_text(yuan(266 + 750))
    expect(vendor.locator("#total")).to_have_text("10.16")

    # Void the carrots from the screen: the customer's total follows.
    vendor.locator("#basket li").first.locator("button.void-btn").click()
    expect(customer.locator("#total")).to_have_text("7.50")
    expect(vendor.locator("#message")).to_have_text("已作废 / voided")  # picked by hand: nothing taught
    expect(vendor.locator("#basket li")).to_have_count(1)
    expect(customer.locator("#basket li")).to_have_count(1)


def test_a_blocked_batch_is_refused_with_its_reason(manual: StallApp, browser: Browser) -> None:
    assert manual.sim is not None
    vendor = open_screen(browser, manual, "/vendor")
    expect(vendor.locator("#warnings")).to_contain_text("禁售批次：茄子")
    manual.sim.place(900)
    expect(vendor.locator("#state")).to_have_attribute("data-state", "choosing")
    # Typed on a keyboard: the keys go to the search box, Enter picks the first match.
    vendor.locator("body").press("2")
    vendor.keyboard.type("004")
    expect(vendor.locator("#results button.item.blocked").first).to_contain_text("不合格")
    vendor.keyboard.press("Enter")
    expect(vendor.locator("#message")).to_have_class(re.compile(r"\bbad\b"))
    expect(vendor.locator("#message")).to_contain_text("农残快检不合格，禁止销售")
    assert manual.flow is not None and manual.flow.snapshot().basket == []


def test_enter_picks_from_the_answer_to_what_was_typed(manual: StallApp, browser: Browser) -> None:
    """A keypad or a code reader types a code and Enter faster than the search answers: Enter
    picks the first match of the whole code, not of the prefix whose results are on screen (a
    loaded run of the test above picked 西红柿, the first match of "2", for "2004")."""
    assert manual.sim is not None
    vendor = open_screen(browser, manual, "/vendor")
    manual.sim.place(900)
    expect(vendor.locator("#state")).to_have_attribute("data-state", "choosing")

    def slow(route: Route) -> None:
        time.sleep(0.4)  # a busy scale: each search answers a while after it is asked
        route.continue_()

    vendor.route("**/api/search?*", slow)
    vendor.locator("body").press("2")
    expect(vendor.locator("#results button.item").first).to_contain_text("西红柿")
    vendor.keyboard.type("004")
    vendor.keyboard.press("Enter")
    expect(vendor.locator("#message")).to_contain_text("农残快检不合格，禁止销售")
    assert manual.flow is not None and manual.flow.snapshot().basket == []
    # Enter with the answer on screen picks at once; typing on after an Enter cancels its pick.
    vendor.keyboard.press("Escape")
    vendor.keyboard.type("2001")
    expect(vendor.locator("#results button.item").first).to_contain_text("2001")
    vendor.keyboard.press("Enter")
    expect(vendor.locator("#message")).to_contain_text("西红柿")
    assert [line.plu for line in manual.flow.snapshot().basket] == ["2001"]


def test_actions_answer_their_result_and_malformed_bodies_422(manual: StallApp) -> None:
    assert manual.screens is not None
    with httpx.Client(base_url=manual.screens.url, timeout=5) as c:
        for path, body, says in (
                ("/api/confirm", {"code": "2011", "quantity": "three"},
                 "quantity: Input should be a valid integer"),
                ("/api/confirm", {"code": "<b>"}, "code: String should match pattern"),
                ("/api/void", {"line_no": 1}, "reason: Field required"),
                ("/api/pieces", {"code": "2011", "quantity": 0},
                 "quantity: Input should be greater than or equal to 1"),
                ("/api/tare/preset", {"grams": 50, "extra": 1}, "extra: Extra inputs are not permitted"),
                ("/api/price", {"code": "2001", "unit_price_fen": 3.2},
                 "unit_price_fen: Input should be a valid integer")):
            r = c.post(path, json=body)
            assert r.status_code == 422, (path, r.text)
            assert says in r.json()["message"], r.json()
        r = c.post("/api/checkout", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code in (200, 409)  # checkout takes no body: an empty basket is refused
        r = c.post("/api/void", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and "JSON" in r.json()["message"]
        # Refusals are the flow's typed results, with the reason.
        r = c.post("/api/pieces", json={"code": "9999", "quantity": 1})
        assert r.status_code == 409 and "9999" in r.json()["reason"] and r.json()["ok"] is False
        r = c.post("/api/checkout")
        assert r.status_code == 409 and r.json()["reason"]
        r = c.post("/api/price", json={"code": "2001", "unit_price_fen": 320})
        assert r.status_code == 409 and "no server token" in r.json()["reason"]
        r = c.post("/api/pieces", json={"code": "2011", "quantity": 2})
        assert r.status_code == 200 and r.json()["line"]["amount_fen"] == 500
        assert c.get("/api/state").json()["flow"]["total_fen"] == 500
        r = c.post("/api/checkout")
        assert r.status_code == 200 and r.json()["printed"] is True
        r = c.post("/api/reprint", json={})
        assert r.status_code == 200 and r.json()["receipt_no"] == 1
        assert len(list((manual.cfg.data_dir / "receipts").glob("*reprint1.bin"))) == 1


def test_the_state_read_after_an_action_shows_it(manual: StallApp) -> None:
    """An action is answered after the screens' state shows it: a script reading
    ``GET /api/state`` right after the answer sees its line (the drills once read a basket
    without its last line, the hub's thread not yet woken).  Here the hub's thread never
    runs, so only the publish before the answer can show it."""
    stop = threading.Event()
    with TestClient(create_app(manual, ScreenHub(manual, stop=stop), stop)) as c:
        assert c.get("/api/state").json() == {}  # nothing published yet
        assert c.post("/api/pieces", json={"code": "2011", "quantity": 2}).status_code == 200
        assert c.post("/api/pieces", json={"code": "2011", "quantity": 1}).status_code == 200
        flow = c.get("/api/state").json()["flow"]
        assert [(ln["plu"], ln["quantity"]) for ln in flow["basket"]] == [("2011", 2), ("2011", 1)]
        assert flow["total_fen"] == 750
        assert c.post("/api/void", json={"line_no": 2, "reason": "拿错了"}).status_code == 200
        assert c.get("/api/state").json()["flow"]["total_fen"] == 500
        assert c.post("/api/checkout").status_code == 200
        assert c.get("/api/state").json()["flow"]["basket"] == []


def test_the_screens_answer_without_waiting_for_the_browsers_ack(manual: StallApp) -> None:
    """The screens' connections send with Nagle's algorithm off: with it on, each answer on a
    kept-alive connection sent its headers, then held its body until the browser acknowledged
    them, which Linux delays by 40 ms (every tap and state read took 44 to 48 ms, against 0.5
    to 2.5 ms; docs/benchmarks.md).  Read on the server's side of a browser-like connection."""
    assert manual.screens is not None
    with httpx.Client(base_url=manual.screens.url, timeout=5) as c:
        assert c.get("/api/state").status_code == 200
        server = manual.screens._http._server  # our uvicorn.Server: its open connections
        assert server is not None
        socks = [conn.transport.get_extra_info("socket") for conn in server.server_state.connections]
        assert socks and all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in socks)


def test_teach_an_item_from_the_screen_then_make_the_stall_forget_it(
        tmp_path: Path, browser: Browser, unsure_photo: Path) -> None:
    """The vendor teaches carrots from the item list (the camera's photo), then, the guesses
    having gone astray, makes the stall forget what it holds of them (two taps: one arms the
    button): gone from the gallery and from its file, the forget button gone with them."""
    app = start_stall(tmp_path, camera=unsure_photo)
    try:
        assert isinstance(app.camera, ImageFolderCamera) and app.recognizer is not None
        assert app.screens is not None
        app.camera.show("photo")
        gallery = app.recognizer.gallery  # type: ignore[attr-defined]
        vendor = open_screen(browser, app, "/vendor")
        vendor.locator("body").press("2")
        vendor.keyboard.type("003")
        row = vendor.locator("#results li").first
        expect(row.locator("button.item")).to_have_attribute("data-code", "2003")
        expect(row.locator("button.forget-btn")).to_have_count(0)  # nothing taught yet
        row.locator("button.teach-btn").click()
        expect(vendor.locator("#message")).to_contain_text("taught: Carrots")
        assert gallery.counts() == {"Carrots": 4}
        forget = vendor.locator("#results li").first.locator("button.forget-btn")
        expect(forget).to_have_count(1)
        # a single tap (a finger that slipped) only arms it, and it disarms by itself
        forget.click()
        expect(forget).to_contain_text("Tap again to forget")
        expect(forget).to_contain_text("Forget", timeout=6000)
        expect(forget).not_to_contain_text("Tap again")
        assert gallery.counts() == {"Carrots": 4}
        forget.click()
        forget.click()
        expect(vendor.locator("#message")).to_contain_text("forgot the photos taught: Carrots")
        assert gallery.counts() == {}
        expect(vendor.locator("#results li").first.locator("button.forget-btn")).to_have_count(0)
        from model.gallery import Gallery
        assert Gallery(gallery.embedding_space, gallery.dim, gallery.folder).counts() == {}
        with httpx.Client(base_url=app.screens.url, timeout=5) as c:
            r = c.post("/api/teach/forget", json={"code": "2003"})
            assert r.status_code == 409 and "nothing taught" in r.json()["reason"]
            r = c.post("/api/teach/forget", json={"code": "9999"})
            assert r.status_code == 409 and "9999" in r.json()["reason"]
            r = c.post("/api/teach/forget", json={"code": "<b>"})
            assert r.status_code == 422 and "code" in r.json()["message"]
    finally:
        app.stop()


def test_markup_in_names_stays_text(tmp_path: Path, browser: Browser) -> None:
    app = start_stall(tmp_path, name="<b>李家</b>")
    try:
        customer = open_screen(browser, app, "/customer")
        vendor = open_screen(browser, app, "/vendor")
        vendor.fill("#q", "2012")
        item = vendor.locator("#results button.item").first
        expect(item).to_contain_text(MARKUP)
        expect(item).to_contain_text(MARKUP_EN)
        item.click()
        vendor.click("#qty-ok")
        expect(customer.locator("#basket li")).to_have_count(1)
        expect(customer.locator("#basket li")).to_contain_text(MARKUP)
        expect(vendor.locator("#stall")).to_contain_text("<b>李家</b>")
        expect(customer.locator("#stall")).to_contain_text("<b>李家</b>")
        for page in (vendor, customer):
            assert page.evaluate("window.pwned") is None
            assert page.locator("main img, main script, header b").count() == 0
    finally:
        app.stop()


def test_a_price_change_goes_to_the_market_and_comes_back_in_the_feed(tmp_path: Path) -> None:
    srv, token = start_market(tmp_path / "market.db")
    try:
        price_market(srv, token)  # 西红柿 2001 at 3.20 元/500g, capped at 10.00
        cfg = stall_config(tmp_path, srv.url, token).model_copy(update={"screens": ScreensConfig(port=0)})
        with running(cfg) as app, httpx.Client(base_url=app.screens.url, timeout=10) as c:  # type: ignore[union-attr]
            session = app.session
            assert session is not None
            assert wait_for(lambda: session.catalogue.get("2001").unit_price_fen == 320)
            r = c.post("/api/price", json={"code": "2001", "unit_price_fen": 1200, "why": "涨价"})
            assert r.status_code == 409 and r.json()["server_status"] == 409, r.text
            r = c.post("/api/price", json={"code": "2001", "unit_price_fen": 340, "why": "进价涨了"})
            assert r.status_code == 200, r.text
            assert wait_for(lambda: session.catalogue.get("2001").unit_price_fen == 340)
            assert wait_for(lambda: c.get("/api/search", params={"q": "2001"}).json()["items"][0]
                            ["unit_price_fen"] == 340)
        # In the market's price history, with the vendor's reason.
        with srv.client() as s:
            changes = s.get("/api/v1/prices/history", params={"plu": "2001", "stall_id": "S02"}).json()
        newest = changes["changes"][0]
        assert (newest["old_fen"], newest["new_fen"], newest["why"]) == (320, 340, "进价涨了")
    finally:
        srv.__exit__(None, None, None)
