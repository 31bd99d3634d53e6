"""The stalls' feed (``GET /api/v1/feed``) against a market server holding many sales.

Target (issue 17): p95 <= 50 ms with 10 million sales stored.  The feed reads the
catalogue, prices, specials and rapid tests, never a sale; this bench shows it by
measuring the same requests on the same database before and after the sales are added.

A market of 200 stalls (S001..S200), 300 items, 30 prices per stall, a current and an
upcoming special per stall and a year of rapid tests (one per stall per day, 2 % failed)
is written through the ORM; the sales are filler rows written by SQL (each stall's receipt
numbers, trace codes, a year of days, one line each: what the feed might trip over is
their number, not their content).  The server runs as ``wetmarket server`` in its own
process; a client on keep-alive measures, next to ``/healthz`` in the same run:

- ``304``: ``If-None-Match`` with the current ETag, 1000 requests over the 200 stalls, one
  client, and 2000 from 8 clients at once next to 2000 ``/healthz`` from 8 clients (what a
  market's stalls cost while nothing changes);
- ``200 after a change``: the version bumped, then every stall asks (the first builds the
  market's items part, the rest reuse it);
- ``long poll wake``: from the commit of a change to the answer of a waiting long poll.

    .venv/bin/python bench/feed_bench.py [--db sqlite|postgresql] [--sales 10000000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sqlalchemy import insert, text  # noqa: E402

from server import db, feedversion  # noqa: E402
from server.auth import token_hash  # noqa: E402
from server.settings import Settings  # noqa: E402
from tests.conftest import free_port  # noqa: E402

BENCH_DIR = REPO / "var" / "bench"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_DB = "wetmarket_feed_bench"
ADMIN = "feed-bench-admin-token"
STALLS = [f"S{n:03d}" for n in range(1, 201)]
UNITS = ("kg", "500g", "piece")


def fresh_db(kind: str) -> str:
    if kind == "sqlite":
        BENCH_DIR.mkdir(parents=True, exist_ok=True)
        for p in BENCH_DIR.glob("feed.db*"):
            p.unlink()
        return f"sqlite:///{BENCH_DIR / 'feed.db'}"
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {PG_DB}")
    return f"postgresql://postgres@127.0.0.1:5432/{PG_DB}"


def drop_db(url: str) -> None:
    if url.startswith("sqlite:///"):
        for p in BENCH_DIR.glob("feed.db*"):
            p.unlink()
        return
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")


def write_market(url: str) -> None:
    """200 stalls, 300 items, prices, specials and a year of rapid tests."""
    engine = db.make_engine(url)
    tz = Settings().tz
    maker = db.init_db(engine, tz)
    now = dt.datetime.now(dt.UTC)
    items = [{"plu": str(3001 + i), "name": f"菜品{i:03d}", "name_en": f"Item {i}",
              "category": ("蔬菜", "水果", "肉禽", "水产")[i % 4], "price_unit": UNITS[i % 3],
              "picture": None, "origin": "上海", "label": None, "cap_fen": 5000, "active": True,
              "created_at": now, "updated_at": now} for i in range(300)]
    stalls = [{"stall_id": s, "name": f"摊位{s}", "token_sha256": token_hash(f"token-{s}"),
               "public_key": None, "created_at": now} for s in STALLS]
    prices, specials, tests = [], [], []
    for n, s in enumerate(STALLS):
        plus = [str(3001 + (n * 7 + k) % 300) for k in range(30)]
        prices += [{"stall_id": s, "plu": p, "unit_price_fen": 300 + 10 * k, "updated_at": now}
                   for k, p in enumerate(plus)]
        for start, plu in ((now - dt.timedelta(hours=1), plus[0]), (now + dt.timedelta(hours=5), plus[1])):
            specials.append({"stall_id": s, "plu": plu, "special_price_fen": 200, "starts_at": start,
                             "ends_at": start + dt.timedelta(hours=3), "title": "特价",
                             "created_by": "admin", "created_at": now, "cancelled_at": None,
                             "cancelled_by": None})
        for day in range(365):
            at = now - dt.timedelta(days=day, hours=3)
            fail = (n + day) % 50 == 0
            tests.append({"batch_code": f"B{at:%Y%m%d}-{n:03d}", "plu": plus[day % 30],
                          "stall_id": s, "method": "酶抑制率法 (GB/T 5009.199)",
                          "inhibition_permille": 620 if fail else 120,
                          "result": "fail" if fail else "pass", "tester": "检测员",
                          "tested_at": at, "local_day": at.astimezone(tz).date(),
                          "recorded_by": "admin", "recorded_at": at, "note": None})
    with maker.begin() as session:
        for table, rows in ((db.Item, items), (db.Stall, stalls), (db.StallPrice, prices),
                            (db.Promotion, specials), (db.Inspection, tests)):
            columns = set(table.__table__.columns.keys())
            session.execute(insert(table), [{k: v for k, v in r.items() if k in columns} for r in rows])
        feedversion.bump(session)
    engine.dispose()


#: One sale and its line per number i: stall i % 200, that stall's receipt i // 200 + 1,
#: sold on one of the year's days.
_SALES_SQLITE = """
WITH RECURSIVE c(i) AS (SELECT :lo UNION ALL SELECT i + 1 FROM c WHERE i + 1 < :hi)
INSERT INTO {table} SELECT {columns} FROM c
"""
_SALE_COLUMNS = {
    "sale_id": "printf('%08x-0000-4000-8000-%012x', i, i)",
    "stall_id": "printf('S%03d', i % 200 + 1)",
    "receipt_no": "i / 200 + 1",
    "trace_code": "printf('310106001%03d%07d0', i % 200 + 1, i / 200 + 1)",
    "sold_at": "date('now', printf('-%d days', i % 365)) || ' 02:00:00.000000'",
    "local_day": "date('now', printf('-%d days', i % 365))",
    "total_fen": "690",
    "digest": "printf('%064x', i)",
    "prev_hash": "printf('%064x', i)",
    "signature": "printf('%086x', i)",
    "verified": "1",
    "flags": "'[]'",
    "raw": "'{}'",
    "received_at": "date('now', printf('-%d days', i % 365)) || ' 02:00:01.000000'",
}
_LINE_COLUMNS = {
    "sale_id": "printf('%08x-0000-4000-8000-%012x', i, i)", "idx": "0",
    "plu": "printf('%d', 3001 + i % 300)", "name": "'香蕉'", "weight_g": "1000",
    "quantity": "NULL", "unit_price_fen": "690", "price_unit": "'kg'", "amount_fen": "690",
    "batch_code": "'B20261201-01'",
}


def fill_sales_sqlite(url: str, n: int, chunk: int = 1_000_000) -> None:
    import sqlite3

    path = url.removeprefix("sqlite:///")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")  # filler for a benchmark, rebuilt at will
    conn.execute("PRAGMA cache_size=-1000000")
    # Secondary indexes dropped during the load and built again after it, as they were.
    indexes = conn.execute("SELECT name, sql FROM sqlite_master WHERE type='index' AND sql IS NOT NULL "
                           "AND tbl_name IN ('sales', 'sale_lines')").fetchall()
    for name, _sql in indexes:
        conn.execute(f'DROP INDEX "{name}"')
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        conn.execute("BEGIN")
        for table, columns in (("sales", _SALE_COLUMNS), ("sale_lines", _LINE_COLUMNS)):
            cols = ", ".join(columns.values())
            names = ", ".join(columns)
            conn.execute(_SALES_SQLITE.format(table=f"{table} ({names})", columns=cols),
                         {"lo": lo, "hi": hi})
        conn.execute("COMMIT")
        print(f"  {hi:,} sales", file=sys.stderr, flush=True)
    for _name, sql in indexes:
        conn.execute(sql)
    conn.execute("ANALYZE")
    conn.close()


def fill_sales_postgres(url: str, n: int, chunk: int = 1_000_000) -> None:
    import psycopg

    sale = {**_SALE_COLUMNS,
            "sale_id": "lpad(to_hex(i), 8, '0') || '-0000-4000-8000-' || lpad(to_hex(i), 12, '0')",
            "stall_id": "'S' || lpad((i % 200 + 1)::text, 3, '0')",
            "trace_code": ("'310106001' || lpad((i % 200 + 1)::text, 3, '0') "
                           "|| lpad((i / 200 + 1)::text, 7, '0') || '0'"),
            "sold_at": "now() - make_interval(days => (i % 365)::int)",
            "local_day": "(now() - make_interval(days => (i % 365)::int))::date",
            "digest": "lpad(to_hex(i), 64, '0')", "prev_hash": "lpad(to_hex(i), 64, '0')",
            "signature": "lpad(to_hex(i), 86, '0')", "verified": "true",
            "flags": "'[]'::json", "raw": "'{}'::json",
            "received_at": "now() - make_interval(days => (i % 365)::int)"}
    line = {**_LINE_COLUMNS, "sale_id": sale["sale_id"], "plu": "(3001 + i % 300)::text"}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")  # filler for a benchmark
        # Indexes that back no constraint are dropped during the load and built again after.
        indexes = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename IN ('sales', 'sale_lines') "
            "AND indexname NOT IN (SELECT conname FROM pg_constraint)").fetchall()
        for name, _sql in indexes:
            conn.execute(f'DROP INDEX "{name}"')
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            for table, columns in (("sales", sale), ("sale_lines", line)):
                conn.execute(f"INSERT INTO {table} ({', '.join(columns)}) SELECT "
                             f"{', '.join(columns.values())} FROM generate_series({lo}, {hi - 1}) AS i")
            print(f"  {hi:,} sales", file=sys.stderr, flush=True)
        for _name, sql in indexes:
            conn.execute(sql)
        conn.execute("ANALYZE")


def count_sales(url: str) -> int:
    engine = db.make_engine(url)
    with engine.connect() as conn:
        n = int(conn.execute(text("SELECT count(*) FROM sales")).scalar() or 0)
    engine.dispose()
    return n


def bump(url: str) -> None:
    engine = db.make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE server_meta SET value = CAST(CAST(value AS INTEGER) + 1 AS VARCHAR(256)) "
                          "WHERE key = :k"), {"k": feedversion.KEY})
    engine.dispose()


class Server:
    """``wetmarket server`` in its own process."""

    def __init__(self, url: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "WETMARKET_ADMIN_TOKEN": ADMIN}
        self.proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "server", "--db", url,
                                      "--port", str(self.port)], cwd=REPO, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def pct(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"p50": round(statistics.median(ordered), 2),
            "p95": round(ordered[max(0, int(len(ordered) * 0.95) - 1)], 2),
            "max": round(ordered[-1], 2), "n": len(ordered)}


def timed(client: httpx.Client, path: str, **kw: object) -> tuple[float, httpx.Response]:
    t0 = time.perf_counter()
    r = client.get(path, **kw)  # type: ignore[arg-type]
    return (time.perf_counter() - t0) * 1000, r


def measure(url: str) -> dict[str, object]:
    srv = Server(url)
    try:
        with httpx.Client(base_url=srv.base, timeout=30) as c:
            for _ in range(20):
                c.get("/healthz")
            health = pct([timed(c, "/healthz")[0] for _ in range(300)])

            tags: dict[str, str] = {}
            first = []
            for s in STALLS:  # after the change (the bench wrote it): every stall asks
                ms, r = timed(c, "/api/v1/feed", headers={"Authorization": f"Bearer token-{s}"})
                assert r.status_code == 200, r.text
                tags[s] = r.headers["etag"]
                first.append(ms)
            body_kb = round(len(r.content) / 1024, 1)

            def not_modified(s: str) -> float:
                ms, r = timed(c, "/api/v1/feed", headers={"Authorization": f"Bearer token-{s}",
                                                          "If-None-Match": tags[s]})
                assert r.status_code == 304, r.status_code
                return ms

            one = pct([not_modified(STALLS[i % 200]) for i in range(1000)])

        def client_run(k: int, feed: bool) -> list[float]:
            with httpx.Client(base_url=srv.base, timeout=30) as ck:
                out = []
                for i in range(250):
                    if not feed:
                        out.append(timed(ck, "/healthz")[0])
                        continue
                    s = STALLS[(k * 25 + i) % 200]
                    ms, r = timed(ck, "/api/v1/feed", headers={"Authorization": f"Bearer token-{s}",
                                                               "If-None-Match": tags[s]})
                    assert r.status_code == 304
                    out.append(ms)
                return out

        def eight_clients(feed: bool) -> tuple[dict[str, float], float]:
            t0 = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                runs = list(pool.map(client_run, range(8), [feed] * 8))
            return pct([ms for run in runs for ms in run]), 8 * 250 / (time.perf_counter() - t0)

        health8, health_rate = eight_clients(False)
        eight, rate = eight_clients(True)

        # Long poll: a stall waits; a change is committed; how long until it has the answer.
        wakes = []
        for _ in range(5):
            answered: list[float] = []

            def wait_for_change(answered: list[float] = answered) -> None:
                with httpx.Client(base_url=srv.base, timeout=60) as cw:
                    cw.get("/api/v1/feed", params={"wait": 25},
                           headers={"Authorization": "Bearer token-S001", "If-None-Match": tags["S001"]})
                answered.append(time.perf_counter())

            waiter = threading.Thread(target=wait_for_change)
            waiter.start()
            time.sleep(1.0)
            changed = time.perf_counter()
            bump(url)
            waiter.join()
            wakes.append((answered[0] - changed) * 1000)
            with httpx.Client(base_url=srv.base, timeout=30) as c:
                tags["S001"] = c.get("/api/v1/feed",
                                     headers={"Authorization": "Bearer token-S001"}).headers["etag"]
    finally:
        srv.stop()
    return {"healthz_ms": health, "healthz_8_clients_ms": health8,
            "healthz_8_clients_rps": round(health_rate),
            "feed_200_after_change_ms": pct(first), "feed_kb": body_kb,
            "feed_304_ms": one, "feed_304_8_clients_ms": eight, "feed_304_8_clients_rps": round(rate),
            "long_poll_wake_ms": pct(wakes)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument("--sales", type=int, default=10_000_000)
    ap.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = ap.parse_args()
    url = fresh_db(args.db)
    try:
        write_market(url)
        results = {"db": args.db, "before": {"sales": 0, **measure(url)}}
        t0 = time.perf_counter()
        (fill_sales_sqlite if args.db == "sqlite" else fill_sales_postgres)(url, args.sales)
        fill_s = round(time.perf_counter() - t0)
        bump(url)  # a change, so the stalls' first asks are full feeds again
        results["after"] = {"sales": count_sales(url), "fill_s": fill_s, **measure(url)}
        print(json.dumps(results, indent=1, ensure_ascii=False))
    finally:
        if not args.keep:
            drop_db(url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
