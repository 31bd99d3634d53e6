"""End-to-end latency of a stall: from the simulated load settling (and from the first
stable, priceable weight) to the sale visible on the market server's live stream.

The path measured is the real one: simulator -> pty -> pyserial Link -> weighing
states -> pricing -> journal (fsync) -> receipt (file printer) -> outbox -> HTTP
-> ingest + rollups (SQLite) -> SSE event.  Baseline in the same run: one bare
HTTP round trip to the same server (``/healthz``), so the ratio survives a noisy
machine.

    .venv/bin/python bench/demo_latency_bench.py [--sales 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge.config import StallConfig  # noqa: E402
from edge.demo_data import catalogue  # noqa: E402
from edge.stall import StallApp  # noqa: E402
from server.app import create_app  # noqa: E402
from server.settings import Settings  # noqa: E402
from tests.conftest import LiveServer  # noqa: E402

ADMIN = "bench-admin"


def wait_until(cond, timeout: float = 10.0, step: float = 0.001) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return False


class SseWatcher(threading.Thread):
    """Records the monotonic arrival time of every ``sales`` event."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.arrivals: list[float] = []
        self.ready = threading.Event()

    def run(self) -> None:
        with httpx.stream("GET", f"{self.url}/api/v1/events", timeout=None) as r:
            event = None
            for line in r.iter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                    if event == "hello":
                        self.ready.set()
                elif line.startswith("data:") and event == "sales":
                    self.arrivals.append(time.monotonic())


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sales", type=int, default=30)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="wm-bench-"))
    app = create_app(Settings(db_url=f"sqlite:///{tmp / 'market.db'}", admin_token=ADMIN))
    with LiveServer(app) as srv:
        with srv.client(ADMIN) as c:
            token = c.post("/api/v1/stalls", json={"stall_id": "S02", "name": "bench"}).json()["token"]
        cfg = StallConfig(stall_id="S02", name="bench", data_dir=tmp / "S02", seed=3,
                          catalogue=catalogue("S02", "20261128"),
                          server={"url": srv.url, "token": token},
                          screens={"enabled": False})
        stall = StallApp(cfg)
        stall.start()
        watcher = SseWatcher(srv.url)
        watcher.start()
        watcher.ready.wait(10)
        session, sim = stall.session, stall.sim
        assert session is not None and sim is not None
        wait_until(lambda: session.weigh_state.name == "STABLE_ZERO")

        from_settle, from_stable, checkout_ms = [], [], []
        for i in range(args.sales):
            session.select("2001")
            sim.place(300 + 37 * i)
            if not wait_until(lambda: session.current_line() is not None):
                print("scale never settled", file=sys.stderr)
                return 1
            t_stable = time.monotonic()
            t_settle = sim.settled_at
            n = len(watcher.arrivals)
            session.add_weighed()
            t0 = time.perf_counter()
            stall.checkout()
            checkout_ms.append((time.perf_counter() - t0) * 1000)
            if not wait_until(lambda n=n: len(watcher.arrivals) > n):
                print("sale never arrived", file=sys.stderr)
                return 1
            t_seen = watcher.arrivals[n]
            from_stable.append((t_seen - t_stable) * 1000)
            from_settle.append((t_seen - t_settle) * 1000)
            sim.remove()
            wait_until(lambda: session.weigh_state.name == "STABLE_ZERO")

        rtt = []
        with httpx.Client(base_url=srv.url) as c:
            for _ in range(50):
                t0 = time.perf_counter()
                c.get("/healthz")
                rtt.append((time.perf_counter() - t0) * 1000)
        stall.stop()

    base = statistics.median(rtt)
    res = {
        "sales": args.sales,
        "stable_to_visible_ms": {"p50": round(statistics.median(from_stable), 1),
                                 "p95": round(pct(from_stable, 0.95), 1)},
        "settled_to_visible_ms": {"p50": round(statistics.median(from_settle), 1),
                                  "p95": round(pct(from_settle, 0.95), 1)},
        "checkout_ms_p50": round(statistics.median(checkout_ms), 2),
        "baseline_http_rtt_ms_p50": round(base, 2),
        "ratio_stable_to_visible_vs_rtt": round(statistics.median(from_stable) / base, 1),
    }
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
