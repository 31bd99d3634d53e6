"""Issue 19's fair scale, tested for real: a receipt's 1 kg line found 40 g short raises the
manager's alert.

- the market server is a real ``wetmarket server`` process on 127.0.0.1 (SQLite), holding a
  stall's signed sale (西红柿 1 kg, 黄瓜 500 g) and the fair scale's token;
- the fair scale is a whole ``FairScale`` in this process: the scale simulator on a
  pseudo-terminal, its camera an image folder holding the receipt's QR code (the content a
  stall prints: ``edge.tracecode.trace_url``), its check queue, its screen on 127.0.0.1;
- its screen ``/fair`` in headless Chromium, opened once and never reloaded; the manager's
  ``/manage/fair-scale`` in another page.

The camera reads the QR -> genuine, two lines -> line 1 -> 960 g on the plate -> 核对 -> short,
alert with both weights, on the manager's page; then the USB code reader's path (typed, Enter),
the whole receipt within tolerance; then the server away: the weight is shown, the check queued,
sent and judged when the server is back.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from playwright.sync_api import Browser, Page, expect

from edge.fair_scale import FairScale, FairScaleConfig
from edge.tracecode import trace_url
from tests.browser import chromium, manage_sign_in
from tests.edge.test_stall import wait_for
from tests.server.conftest import ADMIN, StallSim
from tests.test_stall_e2e import Market

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


def qr_folder(root: Path, text: str) -> Path:
    """A camera folder whose one picture is a receipt's QR code, as a phone-sized photo."""
    code = cv2.QRCodeEncoder.create().encode(text)
    big = cv2.resize(code, None, fx=10, fy=10, interpolation=cv2.INTER_NEAREST)
    framed = np.full((big.shape[0] + 200, big.shape[1] + 200), 255, np.uint8)
    framed[100:-100, 100:-100] = big
    (root / "receipt").mkdir(parents=True)
    assert cv2.imwrite(str(root / "receipt" / "qr.png"), cv2.cvtColor(framed, cv2.COLOR_GRAY2BGR))
    return root


def receipt_state(page: Page, expected: str, fair: FairScale, errors: list[str]) -> None:
    """The receipt's state shown; on failure the screen's message says why (a refusal of the
    code read, the server), and the fair scale's side what it holds (a receipt the page did
    not get, or none: the scanner's counts say whether it saw a code)."""
    try:
        expect(page.locator("#receipt")).to_have_attribute("data-state", expected)
    except AssertionError as exc:
        receipt = fair.receipt
        held = (f"\nthe fair scale holds: receipt {receipt.get('state') if receipt else None!r}, "
                f"frames looked at {fair.frames_looked}, codes read {fair.codes_read}, "
                f"resets {fair.resets}, state version {fair.hub.latest[0]}")
        if errors:
            held += f"\nthe page's script errors: {errors}"
        raise AssertionError(f"{exc}\nthe screen's message: {page.locator('#message').text_content()!r}"
                             f"{held}") from None


def verdict(page: Page, expected: str) -> None:
    """The verdict shown; on failure the screen's message says why (a refusal, the server)."""
    try:
        expect(page.locator("#verdict")).to_have_attribute("data-verdict", expected)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nthe screen's message: {page.locator('#message').text_content()!r}"
                             ) from None


def weigh(fair: FairScale, page: Page, grams: int) -> None:
    assert fair.sim is not None
    fair.sim.place(grams)
    expect(page.locator("#measured-g")).to_have_attribute("data-stable", "true")
    expect(page.locator("#measured-g")).to_have_text(f"{grams // 1000}.{grams % 1000:03d}")


def _luminance(rgb: str) -> float:
    """WCAG relative luminance of a computed ``rgb(r, g, b)``."""
    def channel(c: float) -> float:
        c /= 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (float(x) for x in re.findall(r"[\d.]+", rgb)[:3])
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def contrast(page: Page, selector: str) -> float:
    """The WCAG contrast ratio of ``selector``'s text against its figure's background."""
    fg, bg = page.evaluate("""(sel) => { const v = document.querySelector(sel);
        return [getComputedStyle(v).color, getComputedStyle(v.closest('.fig')).backgroundColor]; }""",
                           selector)
    light, dark = sorted((_luminance(fg), _luminance(bg)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def test_a_1_kg_line_40_g_short_raises_the_alert(tmp_path: Path, browser: Browser) -> None:
    market = Market(tmp_path)
    market.start()
    fair: FairScale | None = None
    try:
        stall = StallSim("S01")
        with market.at.client(ADMIN) as c:
            token = c.post("/api/v1/stalls", json={"stall_id": "S01", "name": "王记蔬菜",
                                                   "public_key": stall.public_key}).json()["token"]
            fair_token = c.put("/api/v1/fair-scale/token").json()["token"]
            assert c.post("/api/v1/managers", json={"username": "wang", "display_name": "王经理",
                                                    "password": "菜场-secret-1"}).status_code == 201
        sale = stall.sale([("1001", "西红柿", 1000, 600, "kg"), ("1002", "黄瓜", 500, 260, "500g")])
        with market.at.client(token) as c:
            assert c.post("/api/v1/sales", json={"sales": [sale]}).json()["accepted"] == 1
        qr = trace_url(market.at.url, sale["trace_code"], sale["signature"])

        fair = FairScale(FairScaleConfig.model_validate({
            "data_dir": tmp_path / "fair", "scale": {"port": "sim", "max_g": 15000, "e_g": 2},
            "camera": {"source": str(qr_folder(tmp_path / "camera", qr)), "scan_every_s": 0.2},
            "server": {"url": market.at.url, "token": fair_token}, "screen": {"port": 0}, "seed": 3}))
        fair.start()
        assert fair.outbox is not None
        fair.outbox.max_backoff_s = 1.0  # 30 s in service: the queue drains a second after the restart
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{fair.http.url}/fair")
        expect(page.locator("#live")).to_have_class(re.compile(r"\bon\b"))
        page.evaluate("window.__marker = 1")  # gone if the page reloads

        # the camera reads the receipt: genuine, its stall, its two lines
        receipt_state(page, "genuine", fair, errors)
        expect(page.locator("#receipt")).to_contain_text("王记蔬菜")
        expect(page.locator("#lines button.line")).to_have_count(3)  # the whole receipt, line 1, line 2
        # the weight moving on the plate leaves the line buttons as they are: a tap is never
        # lost to a button replaced between touch-down and touch-up
        page.locator("#lines [data-line='1']").evaluate("n => { n.dataset.seen = 'yes'; }")
        weigh(fair, page, 300)
        expect(page.locator("#lines [data-line='1']")).to_have_attribute("data-seen", "yes")
        page.click("#lines [data-line='1']")
        expect(page.locator("#lines [data-line='1']")).to_have_class(re.compile(r"\bhere\b"))
        expect(page.locator("#receipt-g")).to_have_text("1.000")
        weigh(fair, page, 960)
        expect(page.locator("#diff-g")).to_have_text("-40")
        for figure in ("#receipt-g", "#measured-g", "#diff-g"):  # read from a step away (WCAG AAA: 7)
            assert contrast(page, figure) >= 7, figure
        page.click("#btn-check")
        verdict(page, "short")
        expect(page.locator("#verdict")).to_contain_text("短斤少两")
        expect(page.locator("#verdict")).to_contain_text("-40 g")

        alerts = market.get("/api/v1/alerts?kind=short_weight")
        assert [(a["stall_id"], a["plu"]) for a in alerts] == [("S01", "1001")]
        assert "收据 1000 克，实称 960 克" in alerts[0]["detail"] and "40 g short" in alerts[0]["detail"]

        manager = browser.new_page(viewport={"width": 1280, "height": 800})
        manage_sign_in(manager, market.at.url, "wang", "菜场-secret-1")
        manager.goto(f"{market.at.url}/manage/fair-scale")
        expect(manager.locator("#complaints tr[data-stall='S01'] td.short")).to_have_text("1")
        expect(manager.locator("#fair-checks tbody tr")).to_have_count(1)
        expect(manager.locator("#fair-checks tbody tr").first).to_have_attribute("data-verdict", "short")
        manager.goto(f"{market.at.url}/manage/alerts?kind=short_weight")
        expect(manager.locator("#alerts li")).to_contain_text("960 g")

        # the next shopper: the receipt taken from the camera, her code reader types it
        assert fair.camera is not None and fair.sim is not None
        fair.camera.show(None)  # type: ignore[attr-defined]
        fair.sim.remove()
        page.click("#btn-reset")
        receipt_state(page, "none", fair, errors)
        page.locator("#scan").press_sequentially("not a receipt")
        page.locator("#scan").press("Enter")
        expect(page.locator("#message")).to_contain_text("不是小票上的二维码")
        page.locator("#scan").press_sequentially(qr)
        page.locator("#scan").press("Enter")
        receipt_state(page, "genuine", fair, errors)
        page.click("#lines [data-line='all']")
        expect(page.locator("#receipt-g")).to_have_text("1.500")
        weigh(fair, page, 1492)  # 8 g under 1.5 kg: within 5 + 5 g
        page.click("#btn-check")
        verdict(page, "ok")

        # a receipt this market never printed (another receipt number): said so, and recorded
        page.click("#btn-reset")
        forged = sale["trace_code"][:-2] + "9" + sale["trace_code"][-1]
        page.locator("#scan").press_sequentially(forged)
        page.locator("#scan").press("Enter")
        receipt_state(page, "forged", fair, errors)
        expect(page.locator("#receipt")).to_contain_text("收据无效")
        expect(page.locator("#lines button")).to_have_count(0)
        page.click("#btn-check")
        verdict(page, "forged")

        # the server away: the weight is shown, the check waits in the queue
        market.stop()
        fair.sim.remove()
        page.click("#btn-reset")
        page.locator("#scan").press_sequentially(qr)
        page.locator("#scan").press("Enter")
        receipt_state(page, "offline", fair, errors)
        weigh(fair, page, 1400)
        page.click("#btn-check")
        verdict(page, "queued")
        expect(page.locator("#server")).to_contain_text("1")
        assert len(fair.outbox.pending()) == 1
        market.start()
        assert wait_for(lambda: not fair.outbox.pending(), timeout=20)  # type: ignore[union-attr]
        checks = market.get("/api/v1/fair-checks")
        assert [(c["verdict"], c["line_no"], c["receipt_g"], c["measured_g"]) for c in checks] == [
            ("short", None, 1500, 1400), ("forged", None, None, 1492), ("ok", None, 1500, 1492),
            ("short", 1, 1000, 960)]
        assert len(market.get("/api/v1/alerts?kind=short_weight")) == 2
        assert page.evaluate("window.__marker") == 1 and not errors
    finally:
        if fair is not None:
            fair.stop()
        market.stop()
