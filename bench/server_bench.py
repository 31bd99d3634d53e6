"""Market-server throughput: sale ingest (signed, verified, rolled up) and the big
screen's query, on SQLite and PostgreSQL, through a real HTTP server on 127.0.0.1.

Baseline in the same run: bare ``/healthz`` requests per second on the same
server, so figures are comparable across noisy machines.

    .venv/bin/python bench/server_bench.py [--sales 3000] [--batch 50] [--db sqlite|postgresql|both]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from server.app import create_app  # noqa: E402
from server.settings import Settings  # noqa: E402
from tests.conftest import POSTGRES_URL, LiveServer, postgres_available  # noqa: E402
from tests.server.conftest import ADMIN, SHANGHAI, StallSim, _reset_postgres  # noqa: E402

STALLS = ("S01", "S02", "S03")


def make_sales(n: int) -> dict[str, list[dict]]:  # type: ignore[type-arg]
    sims = {sid: StallSim(sid) for sid in STALLS}
    out: dict[str, list[dict]] = {sid: [] for sid in STALLS}  # type: ignore[type-arg]
    start = dt.datetime(2026, 11, 28, 6, 0, tzinfo=SHANGHAI)
    for i in range(n):
        sid = STALLS[i % 3]
        when = start + dt.timedelta(seconds=15 * i)
        out[sid].append(sims[sid].sale([("1001", "西红柿", 300 + i % 900, 300, "500g"),
                                        ("1003", "香蕉", 500 + i % 400, 690, "kg")], sold_at=when))
    return out, sims  # type: ignore[return-value]


def run(db_url: str, n: int, batch: int) -> dict[str, float]:
    sales, sims = make_sales(n)  # type: ignore[misc]
    with LiveServer(create_app(Settings(db_url=db_url, admin_token=ADMIN))) as srv:
        tokens = {}
        with srv.client(ADMIN) as c:
            for sid, sim in sims.items():
                tokens[sid] = c.post("/api/v1/stalls", json={"stall_id": sid, "name": sid,
                                                              "public_key": sim.public_key}).json()["token"]
        with srv.client() as c:
            t0 = time.perf_counter()
            for _ in range(300):
                c.get("/healthz")
            health_rps = 300 / (time.perf_counter() - t0)

        def upload(sid: str) -> int:
            done = 0
            with srv.client(tokens[sid]) as c:
                for k in range(0, len(sales[sid]), batch):
                    r = c.post("/api/v1/sales", json={"sales": sales[sid][k:k + batch]})
                    done += r.json()["accepted"]
            return done

        t0 = time.perf_counter()
        with ThreadPoolExecutor(3) as pool:
            accepted = sum(pool.map(upload, STALLS))
        ingest_s = time.perf_counter() - t0
        assert accepted == n, accepted

        with srv.client() as c:
            lat = []
            for _ in range(50):
                t0 = time.perf_counter()
                today = c.get("/api/v1/stats/today").json()
                lat.append((time.perf_counter() - t0) * 1000)
    del today
    return {"sales_per_s": round(n / ingest_s, 1), "healthz_rps": round(health_rps, 1),
            "ratio_sales_per_healthz": round(n / ingest_s / health_rps, 3),
            "stats_today_ms_p50": round(statistics.median(lat), 2)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sales", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    args = ap.parse_args()
    results = {}
    if args.db in ("sqlite", "both"):
        tmp = Path(tempfile.mkdtemp(prefix="wm-srv-bench-"))
        results["sqlite"] = run(f"sqlite:///{tmp / 'market.db'}", args.sales, args.batch)
    if args.db in ("postgresql", "both"):
        if not postgres_available():
            print("no PostgreSQL on 127.0.0.1:5432", file=sys.stderr)
            return 1
        _reset_postgres()
        results["postgresql"] = run(POSTGRES_URL, args.sales, args.batch)
    print(json.dumps({"sales": args.sales, "batch": args.batch, **results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
