"""Online orders (issue 19) on a market of 200 stalls: what a shopper and a stall wait for.

The market of ``feed_bench`` (200 stalls, 300 items, 30 prices per stall, specials, a year of
rapid tests: 73,000) in ``wetmarket server``'s own process, one client on keep-alive on the
same machine, next to ``/healthz`` in the same run:

- ``GET /api/v1/shop/stalls``: the list of stalls (open, online, items), what the page loads
  first and every 30 s; ``GET /api/v1/shop/stalls/{id}``: one stall's priced items with the
  latest test of each and its specials, what a tap on a stall loads;
- ``POST /api/v1/orders``: placing an order of three lines (each with another phone: the
  rate limits are lifted for the bench through ``$WETMARKET_ORDER_RATE_*``);
- ``stall wake``: from the shopper's answer (the order committed) to the answer of the
  stall's long poll (``GET /api/v1/stall/orders?wait=25`` with its ETag);
- ``shopper wake``: from the stall's accept answered to the shopper's live page
  (``GET /api/v1/shop/events``) receiving the order accepted.

    .venv/bin/python bench/orders_bench.py [--db sqlite|postgresql] [--orders 200]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from feed_bench import STALLS, Server, drop_db, fresh_db, pct, timed, write_market  # noqa: E402


def sign_in(shopper: httpx.Client, phone: str) -> None:
    """The shopper's code (shown in the answer: the bench's server runs with the default
    ``shop_code_sender=display``), then her sign-in with it."""
    sent = shopper.post("/api/v1/shop/code", json={"phone": phone})
    assert sent.status_code == 200, sent.text
    r = shopper.post("/api/v1/shop/sign-in", json={"phone": phone, "code": sent.json()["shown_code"]})
    assert r.status_code == 200, r.text


def measure(url: str, orders: int) -> dict[str, object]:
    os.environ["WETMARKET_ORDER_RATE_PHONE"] = "100000/minute"
    os.environ["WETMARKET_ORDER_RATE_ADDR"] = "100000/minute"
    srv = Server(url)
    try:
        with httpx.Client(base_url=srv.base, timeout=30) as c:
            for _ in range(20):
                c.get("/healthz")
            health = pct([timed(c, "/healthz")[0] for _ in range(300)])
            list_ms = []
            for _ in range(50):
                ms, r = timed(c, "/api/v1/shop/stalls")
                assert r.status_code == 200, r.text
                list_ms.append(ms)
            list_kb = round(len(r.content) / 1024, 1)
            stall_ms, by_stall = [], {}
            for n in range(400):
                ms, r = timed(c, f"/api/v1/shop/stalls/{STALLS[n % len(STALLS)]}")
                assert r.status_code == 200, r.text
                stall_ms.append(ms)
                by_stall[r.json()["stall_id"]] = [i for i in r.json()["items"] if i["orderable"]]
            stall_kb = round(len(r.content) / 1024, 1)
            slot = c.get("/api/v1/shop/slots").json()["slots"][0]["start"]

        def line(item: dict[str, str]) -> dict[str, object]:
            amount = {"quantity": 2} if item["price_unit"] == "piece" else {"est_weight_g": 500}
            return {"plu": item["plu"], **amount}

        def body(stall: str) -> dict[str, object]:
            return {"stall_id": stall, "slot_start": slot, "lines": [line(i) for i in by_stall[stall][:3]]}

        place_ms = []
        for n in range(orders):
            with httpx.Client(base_url=srv.base, timeout=30) as shopper:
                sign_in(shopper, f"139{n:08d}")
                t0 = time.perf_counter()
                r = shopper.post("/api/v1/orders", json=body(STALLS[n % len(STALLS)]))
                place_ms.append((time.perf_counter() - t0) * 1000)
                assert r.status_code == 201, r.text

        # The stall's long poll woken by a new order, the shopper's page by the accept.
        stall_wake, shopper_wake = [], []
        stall = STALLS[0]
        token = {"Authorization": f"Bearer token-{stall}"}
        with httpx.Client(base_url=srv.base, timeout=60) as st, \
                httpx.Client(base_url=srv.base, timeout=60) as shopper:
            sign_in(shopper, "13700000000")
            for _ in range(20):
                tag = st.get("/api/v1/stall/orders", headers=token).headers["etag"]
                got: dict[str, float] = {}

                def poll(tag: str = tag, got: dict[str, float] = got) -> None:
                    with httpx.Client(base_url=srv.base, timeout=60) as c2:
                        r = c2.get("/api/v1/stall/orders", params={"wait": 25},
                                   headers={**token, "If-None-Match": tag})
                        got["at"] = time.perf_counter()
                        assert r.status_code == 200, r.status_code

                waiter = threading.Thread(target=poll)
                waiter.start()
                time.sleep(0.3)  # the long poll is waiting
                r = shopper.post("/api/v1/orders", json=body(stall))
                placed_at = time.perf_counter()
                oid = r.json()["id"]
                waiter.join(30)
                stall_wake.append((got["at"] - placed_at) * 1000)

                seen = threading.Event()
                ready = threading.Event()

                def listen(oid: int = oid, seen: threading.Event = seen,
                           ready: threading.Event = ready) -> None:
                    with shopper.stream("GET", "/api/v1/shop/events") as events:
                        for line in events.iter_lines():
                            if not line.startswith("data: "):
                                continue
                            ready.set()
                            if any(o["id"] == oid and o["state"] == "accepted" for o in json.loads(line[6:])):
                                seen.set()
                                return

                listener = threading.Thread(target=listen)
                listener.start()
                ready.wait(10)
                a = st.post(f"/api/v1/stall/orders/{oid}/accept", json={"declined": []}, headers=token)
                accepted_at = time.perf_counter()
                assert a.status_code == 200, a.text
                seen.wait(30)
                shopper_wake.append((time.perf_counter() - accepted_at) * 1000)
                listener.join(10)
        return {"db": url.split(":")[0], "healthz_ms": health, "shop_stalls_ms": pct(list_ms),
                "shop_stalls_kb": list_kb, "shop_stall_ms": pct(stall_ms), "shop_stall_kb": stall_kb,
                "place_order_ms": pct(place_ms),
                "stall_wake_ms": pct(stall_wake), "shopper_wake_ms": pct(shopper_wake)}
    finally:
        srv.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument("--orders", type=int, default=200)
    args = ap.parse_args()
    url = fresh_db(args.db)
    try:
        write_market(url)
        print(json.dumps(measure(url, args.orders), ensure_ascii=False, indent=1))
    finally:
        drop_db(url)


if __name__ == "__main__":
    main()
