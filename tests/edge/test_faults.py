"""Faults a vendor sees (issue 18 item 5), each with real parts: a whole stall (StallApp on
the pty scale simulator, its journal and screens on 127.0.0.1), an ESC/POS printer on
127.0.0.1 that answers "paper out", a camera read through OpenCV from a video file, a
market server that is not there, and a stall process killed with SIGKILL.  Each fault is
said on both screens: the vendor's says what to do, the customer's a short line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
from playwright.sync_api import Browser, expect

from edge.camera import CameraWatch, MissingCamera, OpenCVCamera
from edge.config import StallConfig
from edge.flow import FlowState
from edge.stall import StallApp
from tests.browser import chromium
from tests.edge.printer_sims import TcpPrinter
from tests.edge.test_feed import start_market
from tests.edge.test_screens import open_screen, screen_catalogue, yuan
from tests.edge.test_stall import wait_for

REPO = Path(__file__).resolve().parents[2]


def config(tmp_path: Path, **more: Any) -> StallConfig:
    base: dict[str, Any] = {"stall_id": "S02", "name": "李家蔬菜", "vendor": "李阿姨",
                            "data_dir": tmp_path / "S02", "catalogue": screen_catalogue(), "seed": 7,
                            "printer": {"type": "file"}, "screens": {"port": 0}}
    return StallConfig.model_validate({**base, **more})


def start(cfg: StallConfig) -> StallApp:
    app = StallApp(cfg)
    app.start()
    assert app.flow is not None
    assert wait_for(lambda: app.flow.state is FlowState.IDLE)  # type: ignore[union-attr]
    return app


def state(app: StallApp) -> dict[str, Any]:
    """What both screens get, read over HTTP as they read it."""
    assert app.screens is not None
    return dict(httpx.get(f"{app.screens.url}/api/state", timeout=5).json())


def faults(app: StallApp) -> dict[str, dict[str, str]]:
    return {f["kind"]: f for f in state(app)["faults"]}


def weigh_and_pick(app: StallApp, code: str, grams: int) -> dict[str, Any]:
    """Put ``grams`` on the plate and pick ``code`` by hand, through the screen's call."""
    assert app.sim is not None and app.flow is not None and app.screens is not None
    app.sim.place(grams)
    assert wait_for(lambda: app.flow.state is FlowState.CHOOSING)  # type: ignore[union-attr]
    lines = len(app.flow.snapshot().basket)
    r = httpx.post(f"{app.screens.url}/api/confirm", json={"code": code}, timeout=5)
    assert r.status_code == 200, r.text
    body = dict(r.json())
    if body["line"] is None and body["pending"]:
        # The reading moved between CHOOSING and the tap (a busy machine): the flow prices
        # the tap as soon as the weight is stable again, as it would for a vendor.
        assert wait_for(lambda: app.flow.state is FlowState.PRICED)  # type: ignore[union-attr]
        basket = app.flow.snapshot().basket  # type: ignore[union-attr]
        assert len(basket) > lines
        body["line"] = basket[-1].model_dump(mode="json")
    return body


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


# -- the printer and the scale, seen in Chromium --------------------------------------------
def test_printer_out_of_paper_and_scale_unplugged_on_both_screens(tmp_path: Path, browser: Browser) -> None:
    printer = TcpPrinter(paper=0x72)  # an ESC/POS printer with its paper out
    app = start(config(tmp_path, printer={"type": "network", "host": "127.0.0.1", "port": printer.port}))
    try:
        assert app.screens is not None and app.sim is not None and app.journal is not None
        url = app.screens.url
        vendor = open_screen(browser, app, "/vendor")
        customer = open_screen(browser, app, "/customer")

        # Paper out: the sale is kept in the journal, its receipt queued, both screens say so.
        assert httpx.post(f"{url}/api/pieces", json={"code": "2011", "quantity": 2}).status_code == 200
        r = httpx.post(f"{url}/api/checkout", timeout=10)
        assert r.status_code == 200 and r.json()["printed"] is False, r.text
        assert "paper-out" in r.json()["print_error"]
        receipt_no = r.json()["sale"]["receipt_no"]
        sale = app.journal.find(receipt_no=receipt_no)
        assert sale is not None and sale.total_fen == 500
        expect(vendor.locator("#warnings")).to_contain_text(
            "printer out of paper or failing: 1 receipts wait")
        expect(vendor.locator("#warnings")).to_contain_text("load paper, then tap 'Print queue'")
        expect(vendor.locator("#btn-print-queue")).to_be_visible()
        expect(customer.locator("#notices")).to_contain_text("小票稍后补打 / your receipt will follow")

        # Paper loaded: the queue prints, marked as a reprint, and the warnings go.
        printer.paper = 0x12
        printer.wait_closed(1)
        printer.reset()
        vendor.locator("#btn-print-queue").click()
        assert wait_for(lambda: "重印".encode("gb18030") in bytes(printer.received))
        assert sale.trace_code.encode() in bytes(printer.received)
        expect(vendor.locator("#warnings")).not_to_contain_text("printer out of paper")
        expect(customer.locator("#notices")).to_be_empty()

        # The scale unplugged (its pty closed): nothing is priced, both screens say so.
        app.sim.unplug()
        expect(customer.locator("#notices")).to_contain_text("秤未就绪，暂停计价 / scale not ready: no price")
        expect(customer.locator("#weight")).to_have_text("—")
        expect(vendor.locator("#warnings")).to_contain_text(
            "scale offline, nothing is priced: check the scale's cable and power")
        refused = httpx.post(f"{url}/api/confirm", json={"code": "2001"})
        assert refused.status_code == 409 and "not ready" in refused.json()["reason"]

        # Plugged back: it weighs and prices again, the warnings go.
        app.sim.replug()
        expect(customer.locator("#notices")).to_be_empty()
        line = weigh_and_pick(app, "2001", 800)["line"]
        assert line["weight_g"] == 800
        expect(customer.locator("#amount")).to_have_text(yuan(line["amount_fen"]))
    finally:
        app.stop()
        printer.stop()


# -- the camera ------------------------------------------------------------------------------
def _video(path: Path, frames: int, *, same: bool) -> Path:
    """An MJPEG file: the same picture every frame (a frozen camera), or noise (a live one)."""
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    rng = np.random.default_rng(1)
    still = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    for _ in range(frames):
        out.write(still if same else rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))
    out.release()
    return path


def test_camera_missing_sells_by_hand_and_says_so(tmp_path: Path) -> None:
    app = start(config(tmp_path, camera={"source": str(tmp_path / "no-such-camera.mp4")}))
    try:
        assert isinstance(app.camera, MissingCamera) and app.recognizer is None
        camera = faults(app)["camera"]
        assert camera["vendor"].startswith("摄像头未连接")
        assert "camera missing, no recognition: pick items by PLU, name or pinyin initials" \
            in camera["vendor"]
        assert camera["customer"] == "摊主手动选品 / the vendor picks items by hand"
        # Selling by PLU and by pinyin initials goes on.
        assert app.flow is not None and [i.code for i in app.flow.search("xhs").items][:1] == ["2001"]
        assert weigh_and_pick(app, "2001", 600)["line"]["weight_g"] == 600
    finally:
        app.stop()


def test_unreadable_taught_items_are_set_aside_and_the_catalogue_still_recognised(tmp_path: Path) -> None:
    """A gallery the stall cannot read (a broken file, another model's embeddings) used to cost it
    every guess: now the folder is kept aside, whole, with the market items' copies (so they are
    taken again), and the recogniser starts with an empty gallery."""
    photos = tmp_path / "photos"
    photos.mkdir()
    photo = next((REPO.parent / "shared" / "data" / "grocery-store" / "val").rglob("*.jpg"))
    shutil.copy(photo, photos / "a.jpg")
    data = tmp_path / "S02"
    (data / "gallery").mkdir(parents=True)
    junk = b"not a database" * 50
    (data / "gallery" / "gallery.sqlite3").write_bytes(junk)
    (data / "gallery-shared").mkdir()
    (data / "gallery-shared" / "7.json").write_text("{}")
    (data / "gallery-shared.json").write_text('{"etag": "x"}')
    app = start(config(tmp_path, camera={"source": str(photos)}))
    try:
        assert app.recognizer is not None and len(app.recognizer.gallery) == 0
        aside = [p for p in data.iterdir() if p.name.startswith("gallery.set-aside-")]
        assert len(aside) == 1
        assert (aside[0] / "gallery" / "gallery.sqlite3").read_bytes() == junk
        assert (aside[0] / "gallery-shared" / "7.json").exists()
        assert (aside[0] / "gallery-shared.json").exists()
        assert not (data / "gallery-shared.json").exists()
        rec = app.recognizer.recognize(photos / "a.jpg")
        assert rec.top and not rec.unknown
        # the vendor is told, on the vendor's screen only, until the first sale
        assert app.flow is not None
        told = [w for w in app.flow.snapshot().warnings if "kept aside" in w]
        assert len(told) == 1 and aside[0].name in told[0] and "重新学会" in told[0]
        assert not any(aside[0].name in f.customer for f in app.flow.snapshot().faults)
        weigh_and_pick(app, "2001", 700)
        assert app.flow.checkout().ok
        assert not [w for w in app.flow.snapshot().warnings if "kept aside" in w]
    finally:
        app.stop()


def test_frozen_camera_goes_to_manual_mode(tmp_path: Path) -> None:
    frozen = _video(tmp_path / "frozen.avi", 120, same=True)
    app = start(config(tmp_path, camera={"source": str(frozen), "frozen_s": 1.5}))
    try:
        assert isinstance(app.camera, CameraWatch) and app.flow is not None
        assert wait_for(lambda: app.camera.fault == "frozen", timeout=15)  # type: ignore[union-attr]
        assert wait_for(lambda: "camera" in faults(app))
        assert "camera frozen, no recognition" in faults(app)["camera"]["vendor"]
        # No recognition is asked while it is frozen; the vendor picks by hand.
        line = weigh_and_pick(app, "2001", 700)["line"]
        assert line["weight_g"] == 700
        snap = app.flow.snapshot()
        assert snap.guesses == [] and not snap.recognizing and snap.unknown is None
    finally:
        app.stop()

    # The control: a live camera's frames differ, it is never called frozen.
    live = CameraWatch(OpenCVCamera(str(_video(tmp_path / "live.avi", 40, same=False))),
                       stop=threading.Event(), frozen_s=0.2, probe_s=0.05)
    for _ in range(10):
        assert live.read() is not None
        time.sleep(0.05)
    assert live.fault is None
    live.camera.close()


# -- the server ------------------------------------------------------------------------------
def test_server_away_selling_goes_on_with_the_queue_shown(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on: the market server is away
        s.bind(("127.0.0.1", 0))
        away = f"http://127.0.0.1:{s.getsockname()[1]}"
    app = start(config(tmp_path, server={"url": away, "token": "stall-token"}, feed={"enabled": False}))
    try:
        assert app.flow is not None and app.outbox is not None
        for _ in range(2):
            assert app.flow.add_pieces("2011", 1).ok
            assert app.flow.checkout().ok
        assert wait_for(lambda: "2 sales queued" in faults(app).get("server", {}).get("vendor", ""),
                        timeout=10)
        server = faults(app)["server"]
        assert server["vendor"].endswith("server away: selling goes on, 2 sales queued, sent when it is back")
        assert server["customer"] == "离线销售，记录已保存 / offline: every sale is kept"
        assert state(app)["server"]["queue"] == 2
    finally:
        app.stop()


def test_the_queue_shown_counts_a_sale_from_the_moment_it_is_journaled(tmp_path: Path) -> None:
    """The screens read the journal's counts once a second; a sale must not wait for that
    read: the state that first shows its receipt counts it as queued (the drills read "queue
    0" as "everything is sent")."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        away = f"http://127.0.0.1:{s.getsockname()[1]}"
    app = start(config(tmp_path, server={"url": away, "token": "stall-token"}, feed={"enabled": False}))
    try:
        assert app.flow is not None
        for n in range(1, 4):  # three sales well inside one second of the screens' slow read
            assert app.flow.add_pieces("2011", 1).ok
            sale = app.flow.checkout().sale
            assert sale is not None
            deadline = time.monotonic() + 10
            shown = state(app)
            while shown["flow"]["last_receipt"] != sale.trace_code and time.monotonic() < deadline:
                time.sleep(0.01)
                shown = state(app)
            assert shown["flow"]["last_receipt"] == sale.trace_code
            assert shown["server"]["queue"] == n
    finally:
        app.stop()


def test_the_queue_shown_drops_to_zero_when_the_server_takes_the_sale(tmp_path: Path) -> None:
    """The outbox tells the screens when it settled sales: with the screens' own poll
    stretched to an hour, the queue shown still goes 1 -> 0 with the upload.  (The drill with
    the stall's clock 10 minutes ahead found the screens waiting for that poll: under
    libfaketime a timed wait does not end, and only the scale's noise used to poke them.)"""
    srv, token = start_market(tmp_path / "market.db")
    try:
        app = start(config(tmp_path, server={"url": srv.url, "token": token}, feed={"enabled": False},
                           orders={"enabled": False}))
        try:
            assert app.screens is not None and app.flow is not None
            assert wait_for(lambda: state(app)["server"]["online"] is True)
            app.screens.hub.poll_s = 3600.0
            app.screens.hub.poke()  # the poll in progress ends; the next one waits an hour
            assert app.flow.add_pieces("2011", 1).ok
            assert app.flow.checkout().ok
            assert wait_for(lambda: state(app)["server"]["queue"] == 0 and state(app)["flow"]["last_receipt"],
                            timeout=10), state(app)["server"]
            with srv.client() as c:
                assert c.get("/api/v1/stats/today").json()["sales"] == 1
        finally:
            app.stop()
    finally:
        srv.__exit__(None, None, None)


# -- kill -9 mid-basket ------------------------------------------------------------------------
CHILD = textwrap.dedent("""
    import dataclasses, json, sys, time
    from pathlib import Path
    from edge.config import StallConfig
    from edge.flow import FlowState
    from edge.stall import StallApp

    cfg = StallConfig.model_validate_json(Path(sys.argv[1]).read_text())
    app = StallApp(cfg)
    app.start()
    flow, sim = app.flow, app.sim
    deadline = time.monotonic() + 20
    def until(state):
        while flow.snapshot().state is not state:
            assert time.monotonic() < deadline, flow.snapshot().state
            time.sleep(0.05)
    until(FlowState.IDLE)
    sim.place(800)
    until(FlowState.CHOOSING)
    assert flow.confirm("2001").ok
    assert flow.add_pieces("2011", 3).ok
    assert flow.void(2, "数错了").ok
    assert flow.add_pieces("2011", 2).ok
    print(json.dumps([dataclasses.asdict(ln) for ln in flow.session.lines]), flush=True)
    time.sleep(600)
""")


def test_kill_9_mid_basket_the_open_basket_is_back(tmp_path: Path) -> None:
    cfg = config(tmp_path, screens={"enabled": False})
    cfg_file = tmp_path / "stall.json"
    cfg_file.write_text(cfg.model_dump_json())
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(cfg_file)], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out = child.stdout.readline() if child.stdout else ""
        assert out, child.stderr.read() if child.stderr else ""
        before = json.loads(out)
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
    assert [(ln["plu"], ln["weight_g"], ln["quantity"]) for ln in before] == [
        ("2001", 800, None), ("2011", None, 2)]
    saved = tmp_path / "S02" / "open-basket.json"
    assert saved.is_file()

    # The market raised 2001's price meanwhile: the restored lines keep the price they had,
    # and the basket goes on under the catalogue it started with.
    items = screen_catalogue()
    for item in items:
        if item["plu"] == "2001":
            old = item["unit_price_fen"]
            item["unit_price_fen"] = old + 100
    app = start(config(tmp_path, catalogue=items, screens={"enabled": False}))
    try:
        flow, journal = app.flow, app.journal
        assert flow is not None and journal is not None and app.session is not None
        snap = flow.snapshot()
        assert [ln.__dict__ for ln in snap.basket] == before
        assert [ln.voided for ln in app.session._basket.all_lines] == [False, True, False]
        assert [f.kind for f in snap.faults] == ["basket"]
        assert "open basket restored after a restart (2 lines)" in snap.faults[0].vendor
        # One more line of 2001, priced like the first: the basket's own catalogue.
        line = weigh_and_pick_flow(app, "2001", 400)
        assert line.unit_price_fen == old == before[0]["unit_price_fen"]
        kept = saved.read_bytes()
        result = flow.checkout()
        assert result.ok and result.sale is not None
        assert [ln.unit_price_fen for ln in result.sale.lines if ln.plu == "2001"] == [old, old]
        assert not saved.exists()
        assert flow.snapshot().faults == []
        # Between baskets the new catalogue applies.
        assert flow.search("2001").items[0].unit_price_fen == old + 100
        audit = [(e["action"], e["line_no"]) for e in journal.audit_trail(str(result.sale.sale_id))]
        assert ("void", 2) in audit and audit[-1][0] == "checkout"
        sale_id = str(result.sale.sale_id)
    finally:
        app.stop()

    # Killed after the sale was journaled but before its copy was removed: not sold twice.
    saved.write_bytes(kept)
    again = start(config(tmp_path, catalogue=items, screens={"enabled": False}))
    try:
        assert again.flow is not None and again.flow.snapshot().basket == []
        assert not saved.exists()
        assert json.loads(kept)["basket_id"] == sale_id
    finally:
        again.stop()


def weigh_and_pick_flow(app: StallApp, code: str, grams: int) -> Any:
    assert app.sim is not None and app.flow is not None
    app.sim.place(grams)
    assert wait_for(lambda: app.flow.state is FlowState.CHOOSING)  # type: ignore[union-attr]
    result = app.flow.confirm(code)
    assert result.ok, result.reason
    if result.line is None and result.pending:  # the weight moved again: priced once stable
        assert wait_for(lambda: app.flow.state is FlowState.PRICED)  # type: ignore[union-attr]
        return app.flow.snapshot().basket[-1]  # type: ignore[union-attr]
    return result.line
