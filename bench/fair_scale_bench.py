"""The fair scale: 核对 tapped -> the server's verdict painted on ``/fair``, in Chromium.

A market server (uvicorn in this process, SQLite) holding one stall's signed sale, a fair
scale (``FairScale``: the pty scale simulator, its check queue, its screen on 127.0.0.1) and
headless Chromium (Debian's) showing ``/fair``.  The receipt is scanned once (the code
reader's call), line 1 picked, 960 g put on; then for each sample the page's own clock is
read as it clicks 核对 and again at the animation frame after the verdict of that check is
painted (``#verdict``'s ``data-check`` names the new check): the check written to the durable
queue (fsync), sent, judged, stored, answered, published on the live channel and rendered.

Also the server alone: ``POST /api/v1/fair-checks`` answered (httpx, keep-alive), p50/p95.

    .venv/bin/python bench/fair_scale_bench.py [--samples 50]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.fair_scale import FairScale, FairScaleConfig  # noqa: E402
from edge.tracecode import trace_url  # noqa: E402
from server.app import create_app  # noqa: E402
from server.settings import Settings  # noqa: E402
from tests.browser import chromium  # noqa: E402
from tests.conftest import LiveServer  # noqa: E402
from tests.server.conftest import ADMIN, SHANGHAI, StallSim  # noqa: E402

PAINTED = """async () => {
  const v = document.getElementById("verdict");
  const before = v.dataset.check;
  const t0 = performance.now();
  document.getElementById("btn-check").click();
  while (v.dataset.check === before) await new Promise((r) => requestAnimationFrame(r));
  await new Promise((r) => requestAnimationFrame(r));  // the frame that shows it
  return performance.now() - t0;
}"""


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=50)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fair-bench-"))
    with LiveServer(create_app(Settings(db_url=f"sqlite:///{tmp / 'm.db'}", admin_token=ADMIN))) as srv:
        sim = StallSim("S01")
        with srv.client(ADMIN) as c:
            token = c.post("/api/v1/stalls", json={"stall_id": "S01", "name": "王记蔬菜",
                                                   "public_key": sim.public_key}).json()["token"]
            fair_token = c.put("/api/v1/fair-scale/token").json()["token"]
        sale = sim.sale([("1001", "西红柿", 1000, 600, "kg"), ("1002", "黄瓜", 500, 260, "500g")])
        with srv.client(token) as c:
            c.post("/api/v1/sales", json={"sales": [sale]})

        server_ms = []
        with srv.client(fair_token) as c:
            for _ in range(args.samples):
                body = {"check_id": str(uuid.uuid4()), "trace_code": sale["trace_code"], "line_no": 1,
                        "measured_g": 960, "e_g": 5,
                        "checked_at": dt.datetime.now(SHANGHAI).isoformat(timespec="seconds")}
                t0 = time.perf_counter()
                r = c.post("/api/v1/fair-checks", json=body)
                server_ms.append((time.perf_counter() - t0) * 1000)
                assert r.status_code == 201 and r.json()["verdict"] == "short", r.text

        fair = FairScale(FairScaleConfig.model_validate({
            "data_dir": tmp / "fair", "scale": {"port": "sim", "e_g": 2},
            "server": {"url": srv.url, "token": fair_token}, "screen": {"port": 0}}))
        fair.start()
        try:
            assert fair.scan(trace_url(srv.url, sale["trace_code"], sale["signature"])).ok
            assert fair.choose(1).ok
            assert fair.sim is not None
            fair.sim.place(960)
            deadline = time.monotonic() + 10
            while fair.weigher.priceable_net_g != 960 and time.monotonic() < deadline:
                time.sleep(0.02)
            with chromium() as browser:
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                page.goto(f"{fair.http.url}/fair")
                page.wait_for_selector("#btn-check:not([disabled])")
                page_ms = [float(page.evaluate(PAINTED)) for _ in range(args.samples)]
        finally:
            fair.stop()
    for name, values in (("POST /api/v1/fair-checks answered", server_ms),
                         ("核对 clicked -> verdict painted on /fair", page_ms)):
        print(f"{name}: n={len(values)} p50={pct(values, 50):.1f} ms p95={pct(values, 95):.1f} ms "
              f"max={max(values):.1f} ms")


if __name__ == "__main__":
    main()
