"""Take the README's screenshot of the big screen (1920x1080) from a seeded market server.

    .venv/bin/python scripts/screenshot.py [docs/screenshot.png] [--lang en] [--serve]

The market is seeded the way a real one fills: five weeks of history for 40 stalls from
``bench/history_gen.py`` (signed sales, the catalogue, stall prices, the rollups), then,
through the server's own API on a real ``wetmarket server`` process, today's specials,
today's rapid tests (two batches failed, one of them passed its retest) and a few live
sales.  ``--serve`` keeps that server running (until Ctrl-C) instead of closing it, to
look at the screen in a browser.
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

from tests.browser import chromium  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.server import server_process  # noqa: E402
from tests.server.conftest import StallSim  # noqa: E402

ADMIN = "screenshot-admin-token"
SHANGHAI = dt.timezone(dt.timedelta(hours=8))


def seed_history(url: str, state: Path) -> None:
    import history_gen

    plan = history_gen.Plan(sales=60_000, stalls=40, days=35, seed=17)
    history_gen.generate(url, plan, state=state, jobs=1)


def _ok(r: httpx.Response) -> Any:
    if r.status_code >= 400:
        raise SystemExit(f"{r.request.method} {r.request.url}: {r.status_code} {r.text}")
    return r.json()


def seed_today(base: str, state: Path) -> None:
    """Specials, rapid tests and live sales, each through the API a market uses."""
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", type=Path, default=REPO / "docs/screenshot.png")
    ap.add_argument("--lang", choices=("zh", "en"), default="zh")
    ap.add_argument("--serve", action="store_true", help="keep the seeded server running")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="wetmarket-screenshot-") as tmp:
        url, state, port = f"sqlite:///{tmp}/market.db", Path(tmp) / "state.json", free_port()
        seed_history(url, state)
        server = server_process.start(url, port, Path(tmp) / "server.log", ADMIN)
        base = f"http://127.0.0.1:{port}"
        try:
            seed_today(base, state)
            with chromium() as browser:
                page = browser.new_page(viewport={"width": 1920, "height": 1080})
                page.goto(f"{base}/display" + ("?lang=en" if args.lang == "en" else ""))
                page.wait_for_function("document.getElementById('live').classList.contains('on')")
                page.wait_for_function("document.querySelectorAll('#main-items tbody tr').length > 0")
                time.sleep(1)
                page.screenshot(path=str(args.out))
            print(args.out)
            if args.serve:
                print(f"serving {base}/display (Ctrl-C stops)", flush=True)
                server.wait()
        except KeyboardInterrupt:
            pass
        finally:
            server_process.stop(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
