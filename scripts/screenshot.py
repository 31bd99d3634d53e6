"""Take the README's screenshots from a seeded market server: the big screen (1920x1080)
and the manager pages on a phone (390x844).

    .venv/bin/python scripts/screenshot.py [docs/screenshot.png] [--lang en] [--only display|manage]
                                           [--serve]

The market is seeded the way a real one fills: five weeks of history for 40 stalls from
``bench/history_gen.py`` (signed sales, the catalogue, stall prices, the rollups), then,
through the server's own API on a real ``wetmarket server`` process, today's specials,
today's rapid tests (two batches failed, one of them passed its retest) and a few live
sales; a manager account and a morning of price changes of one item.  A manager then
signs in to ``/manage`` as on a phone: the overview (today's figures and open alerts) goes
to ``manage.png`` and the prices page of that item with its history to
``manage-prices.png``, next to the big screen's picture.  Every picture is stored as a
palette PNG (a screen of flat colours loses nothing visible) to keep the repository small.
``--serve`` keeps that server running (until Ctrl-C) instead of closing it, to look at the
pages in a browser.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from PIL import Image  # noqa: E402
from playwright.sync_api import Browser, Page, ViewportSize  # noqa: E402

from tests.browser import chromium  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.server import server_process  # noqa: E402
from tests.server.conftest import StallSim  # noqa: E402
from tests.server.manage_client import page_token, try_sign_in  # noqa: E402

ADMIN = "screenshot-admin-token"
SHANGHAI = dt.timezone(dt.timedelta(hours=8))
#: The manager who signs in for the pictures (local to this throw-away server).
MANAGER, MANAGER_NAME, MANAGER_PASSWORD = "chen", "市场办 陈经理", "screenshot-password"
PHONE: ViewportSize = {"width": 390, "height": 844}
LAPTOP: ViewportSize = {"width": 1280, "height": 800}


def seed_history(url: str, state: Path) -> None:
    import history_gen

    plan = history_gen.Plan(sales=60_000, stalls=40, days=35, seed=17)
    history_gen.generate(url, plan, state=state, jobs=1)


def _ok(r: httpx.Response) -> Any:
    if r.status_code >= 400:
        raise SystemExit(f"{r.request.method} {r.request.url}: {r.status_code} {r.text}")
    return r.json()


def seed_today(base: str, state: Path) -> str:
    """Specials, rapid tests, live sales, a manager and a morning's price changes, each
    through the API a market uses; returns the PLU whose prices changed."""
    now = dt.datetime.now(SHANGHAI).replace(microsecond=0)
    admin = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)
    prices = _ok(admin.get("/api/v1/prices"))
    items = {it["plu"]: it for it in _ok(admin.get("/api/v1/items"))}
    seen: set[str] = set()
    specials = 0
    for p in prices:  # one special per item and per stall
        if seen & {p["plu"], p["stall_id"]} or specials >= 7 or p["unit_price_fen"] < 300:
            continue
        seen |= {p["plu"], p["stall_id"]}
        later = specials == 6
        starts = now + dt.timedelta(minutes=30) if later else now - dt.timedelta(hours=2)
        ends = now + dt.timedelta(hours=3 if later else 2 + specials)
        _ok(admin.post("/api/v1/promotions", json={
            "stall_id": p["stall_id"], "plu": p["plu"],
            "special_price_fen": p["unit_price_fen"] * 8 // 10,
            "starts_at": starts.isoformat(), "ends_at": ends.isoformat(),
            "title": "晚市特价" if specials % 3 == 0 else None}))
        specials += 1
    tests = [(62.5, 0), (55.0, 1), (8.2, 2), (12.4, 3), (21.0, 4), (5.3, 5), (17.8, 6), (9.9, 7),
             (30.1, 8), (14.6, 9), (3.7, 10), (26.0, 11)]
    for n, (inhibition, i) in enumerate(tests):
        p = prices[(i * 37) % len(prices)]
        body = {"batch_code": f"B{now:%Y%m%d}-{n + 1:02d}", "plu": p["plu"], "stall_id": p["stall_id"],
                "inhibition_percent": inhibition, "tester": "市场检测室 刘",
                "tested_at": (now - dt.timedelta(minutes=20 * (len(tests) - n))).isoformat()}
        _ok(admin.post("/api/v1/inspections", json=body))
        if n == 1:  # the second failed batch passed its retest
            _ok(admin.post("/api/v1/inspections", json={**body, "inhibition_percent": 11.0,
                                                          "tested_at": now.isoformat()}))
    heads = json.loads(state.read_text())
    for k, sid in enumerate(list(heads)[:8]):
        s = heads[sid]
        sim = StallSim(sid)
        sim.key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(s["private_key"]))
        sim.receipt_no, sim.prev = s["receipt_no"], s["prev_hash"]
        mine = [p for p in prices if p["stall_id"] == sid and items[p["plu"]]["price_unit"] != "piece"][:2]
        sales = []
        for j, p in enumerate(mine):
            item = items[p["plu"]]
            sales.append(sim.sale([(p["plu"], item["name"], 400 + 130 * k + 90 * j, p["unit_price_fen"],
                                    item["price_unit"])], line_extra={"name_en": item["name_en"]}))
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {s['token']}"}, timeout=30) as c:
            _ok(c.post("/api/v1/sales", json={"sales": sales}))
    _ok(admin.post("/api/v1/managers", json={"username": MANAGER, "display_name": MANAGER_NAME,
                                              "password": MANAGER_PASSWORD}))
    return seed_price_changes(base, prices, items)


def seed_price_changes(base: str, prices: list[dict[str, Any]], items: dict[str, dict[str, Any]]) -> str:
    """The manager changes the most widely sold item's price at a few stalls on the prices
    page's form, each with its reason, so the page has a history to show; one stall's goes
    far above the market's median (an alert)."""
    by_plu: dict[str, list[dict[str, Any]]] = {}
    for p in prices:
        by_plu.setdefault(p["plu"], []).append(p)
    plu = max(by_plu, key=lambda k: (len(by_plu[k]), k))
    cap = items[plu]["cap_fen"]
    high = by_plu[plu][-1]["unit_price_fen"] * 2
    whys = ("产地到货价上涨", "早市调价", "新到一批，品质好", "清库存降价")
    changes = [(p, p["unit_price_fen"] + (-1) ** k * max(10, p["unit_price_fen"] // 100 * 10), why)
               for k, (p, why) in enumerate(zip(by_plu[plu], whys, strict=False))]
    changes.append((by_plu[plu][-1], high if cap is None else min(cap, high), "摊主报价（待核实）"))
    with httpx.Client(base_url=base, timeout=30) as manager:
        _ok_redirect(try_sign_in(manager, MANAGER, MANAGER_PASSWORD))
        csrf = page_token(manager.get("/manage"))
        for p, fen, why in changes:
            _ok_redirect(manager.post("/manage/prices", data={
                "stall_id": p["stall_id"], "plu": plu, "price": f"{fen // 100}.{fen % 100:02d}",
                "why": why, "csrf_token": csrf}))
    return plu


def _ok_redirect(r: httpx.Response) -> None:
    """A manager page's form answers 303 when it saved."""
    if r.status_code != 303:
        raise SystemExit(f"{r.request.method} {r.request.url}: {r.status_code} {r.text[:2000]}")


def optimise(path: Path) -> None:
    """Store a screenshot as a palette PNG (256 colours), optimised: a page of flat colours
    and antialiased text looks the same and takes a third of the bytes."""
    with Image.open(path) as img:
        small = img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                                            dither=Image.Dither.NONE)
    small.save(path, optimize=True)


def shoot_display(browser: Browser, base: str, out: Path, lang: str) -> None:
    page = browser.new_page(viewport={"width": 1920, "height": 1080})
    page.goto(f"{base}/display" + ("?lang=en" if lang == "en" else ""))
    page.wait_for_function("document.getElementById('live').classList.contains('on')")
    page.wait_for_function("document.querySelectorAll('#main-items tbody tr').length > 0")
    time.sleep(1)
    page.screenshot(path=str(out))
    page.close()
    optimise(out)


def sign_in(page: Page, base: str) -> None:
    page.goto(f"{base}/manage/login")
    page.fill("input[name=username]", MANAGER)
    page.fill("input[name=password]", MANAGER_PASSWORD)
    page.click("#login button[type=submit]")
    page.wait_for_url(f"{base}/manage")


def shoot_manage(browser: Browser, base: str, folder: Path, plu: str, lang: str) -> list[Path]:
    """Sign in as a manager: the overview on a phone, and one item's prices with their
    history on a laptop's screen (a table of every stall's price is wider than a phone)."""
    query = "&lang=en" if lang == "en" else ""
    shots = []
    for name, path, viewport, phone in (
            ("manage.png", f"/manage?{query}", PHONE, True),
            ("manage-prices.png", f"/manage/prices?stall_id=&plu={plu}{query}", LAPTOP, False)):
        context = browser.new_context(viewport=viewport, is_mobile=phone, has_touch=phone,
                                      device_scale_factor=2 if phone else 1)
        page = context.new_page()
        sign_in(page, base)
        page.goto(base + path)
        page.wait_for_load_state("networkidle")
        out = folder / name
        page.screenshot(path=str(out), full_page=not phone)
        optimise(out)
        shots.append(out)
        context.close()
    return shots


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", type=Path, default=REPO / "docs/screenshot.png",
                    help="the big screen's picture; the manager pages' go to the same folder")
    ap.add_argument("--lang", choices=("zh", "en"), default="zh")
    ap.add_argument("--only", choices=("display", "manage"), help="take only these pictures")
    ap.add_argument("--serve", action="store_true", help="keep the seeded server running")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="wetmarket-screenshot-") as tmp:
        url, state, port = f"sqlite:///{tmp}/market.db", Path(tmp) / "state.json", free_port()
        seed_history(url, state)
        server = server_process.start(url, port, Path(tmp) / "server.log", ADMIN)
        base = f"http://127.0.0.1:{port}"
        try:
            plu = seed_today(base, state)
            shots = []
            with chromium() as browser:
                if args.only in (None, "display"):
                    shoot_display(browser, base, args.out, args.lang)
                    shots.append(args.out)
                if args.only in (None, "manage"):
                    shots += shoot_manage(browser, base, args.out.parent, plu, args.lang)
            for shot in shots:
                print(f"{shot}  {shot.stat().st_size // 1024} KB")
            if args.serve:
                print(f"serving {base}/display and {base}/manage (sign in as {MANAGER}, password "
                      f"{MANAGER_PASSWORD}; Ctrl-C stops)", flush=True)
                server.wait()
        except KeyboardInterrupt:
            pass
        finally:
            server_process.stop(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
