"""Market-server benchmarks (issue 17), each figure next to a baseline measured in the same run.

The server is the real one, ``wetmarket server`` in its own process on 127.0.0.1; the load
comes from another process (``_client`` below: asyncio, HTTP/1.1 keep-alive, every request
built beforehand, so the client costs the server's cores as little as it can).  The
databases are an SQLite file under ``var/bench/`` and the PostgreSQL database
``wetmarket_bench`` on 127.0.0.1:5432 (never ``test``: the test suite drops its schema),
each filled first by ``bench/history_gen.py`` (its stalls S001.. go on with their own
receipt chains and tokens).

    .venv/bin/python bench/server_bench.py ingest [--db sqlite|postgresql|both] [--batch 100]
        sales/s uploaded in batches by 4 stalls at once; baseline: the same rows stored by a
        raw ``executemany`` per batch (sales, then lines, one commit), no HTTP, no checks.
    .venv/bin/python bench/server_bench.py single [--history 0,10000,30000] [--concurrency 8]
        single-sale requests/s, 8 stalls at once, a big screen subscribed to /api/v1/events, at
        each history size; baselines: /healthz requests/s (same client, same concurrency) and
        commits/s of a raw one-row SQLite insert with synchronous=FULL in the same folder.
    .venv/bin/python bench/server_bench.py mixed [--db ...] [--concurrency 8] [--batch-stalls 2]
        single sales and batches of 100 at once on one server (two client processes): each
        one's rate and p95 together, next to each alone on the same server in the same run.
    .venv/bin/python bench/server_bench.py store [--db sqlite|postgresql|both] [--group 3]
            [--batch 1] [--copy-from N]
        what the group commit's writer costs with nothing beside it: uploads of 8 stalls
        (``--batch`` sales each) checked (``prepare``), then stored ``--group`` uploads to a
        transaction and committed, all in this one thread, no HTTP; per group, the milliseconds
        of the store and of the commit and the thread's CPU, next to the same database's raw
        commit rate; per sale, the CPU microseconds of the checks (and apart, of validation,
        digest and signature), of the writer, and of PostgreSQL's backends (from ``/proc``).
        The server's own writer, timed inside ``wetmarket server`` under ``single``, is what
        this is the floor of.
    .venv/bin/python bench/server_bench.py figures [--db ...] [--history 30000] [--repeat 300]
        what the big screen's live view costs each time the server publishes it (today's
        figures and the latest sales, ``server.live.LiveFigures.figures``), in this one thread
        on a generated history: CPU and wall milliseconds per computation.
    .venv/bin/python bench/server_bench.py endpoints --sales 10000000 [--url PATH ...]
        p50/p95 of each URL (default: the big screen's /api/v1/stats/today and
        /api/v1/sales-recent, the first event of /api/v1/events, and how long an upload takes
        to reach a subscribed screen) over a synthetic history of that size; baseline:
        /healthz.  ``--url stall:PATH`` sends stall S001's token, ``--url admin:PATH`` the
        admin token, ``--header 'Cookie: ...'`` any header (manager pages); ``--keep`` keeps
        the generated database for the next run (``--reuse``); ``--all`` every statistics
        endpoint and the stall's feed, ``--manage`` the manager pages too (signed in as a
        manager the bench adds).

With no sub-command (``bench/run_all.py``): ``ingest`` and ``single`` with small histories.
Every figure line carries the machine's load average when it was measured.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import inspect
import json
import os
import pickle
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from edge.integrity import sale_digest, sign_sale  # noqa: E402
from edge.pricing import line_amount_fen  # noqa: E402
from edge.tracecode import make_trace_code, stall_number  # noqa: E402

BENCH_DIR = REPO / "var" / "bench"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_BENCH_DB = "wetmarket_bench"
PG_BENCH_URL = f"postgresql://postgres@127.0.0.1:5432/{PG_BENCH_DB}"
ADMIN = "bench-admin-token"
SHANGHAI = dt.timezone(dt.timedelta(hours=8))


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


# -- databases ------------------------------------------------------------------------------


def fresh_db(kind: str, name: str) -> str:
    """An empty database of ``kind``: ``var/bench/<name>.db`` or PostgreSQL's wetmarket_bench."""
    if kind == "sqlite":
        BENCH_DIR.mkdir(parents=True, exist_ok=True)
        path = BENCH_DIR / f"{name}.db"
        for p in BENCH_DIR.glob(f"{name}.db*"):
            p.unlink()
        return f"sqlite:///{path}"
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {PG_BENCH_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {PG_BENCH_DB}")
    return PG_BENCH_URL


def drop_db(url: str) -> None:
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        for p in path.parent.glob(path.name + "*"):
            p.unlink()
        return
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {PG_BENCH_DB} WITH (FORCE)")


#: Another checkout whose server code the benchmarks run (``--code``), e.g. a worktree of the
#: commit before a change; None: this one.
CODE: Path | None = None


def code_env() -> dict[str, str]:
    env = dict(os.environ)
    if CODE is not None:
        env["PYTHONPATH"] = str(CODE)
    return env


def with_history(kind: str, name: str, sales: int, *, jobs: int = 2, days: int = 365) -> tuple[str, Path]:
    """A fresh database holding ``sales`` synthetic sales of 200 stalls (``history_gen``, run
    with the server code under test, so its migrations make the schema); its state file."""
    url = fresh_db(kind, name)
    state = BENCH_DIR / f"{name}-state.json"
    cmd = [sys.executable, str(Path(__file__).with_name("history_gen.py")), "--db", url,
           "--sales", str(sales), "--days", str(days if sales else 1), "--state", str(state),
           "--jobs", str(jobs if sales > 200_000 else 1)]
    subprocess.run(cmd, check=True, env=code_env(), cwd=CODE or REPO,
                   stderr=None if sales > 200_000 else subprocess.DEVNULL)
    return url, state


# -- the server -----------------------------------------------------------------------------


class ServerProc:
    """``wetmarket server`` in its own process."""

    def __init__(self, db_url: str, *, workers: int | None = None,
                 check_processes: int | None = None, write_process: str | None = None) -> None:
        from tests.conftest import free_port

        self.db_url = db_url
        self.port = free_port()
        self.workers = workers
        self.check_processes = check_processes
        self.write_process = write_process
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ServerProc:
        import httpx

        cmd = [str(Path(sys.executable).parent / "wetmarket"), "server", "--db", self.db_url,
               "--port", str(self.port)]
        if self.workers:
            cmd += ["--workers", str(self.workers)]
        env = {**code_env(), "WETMARKET_ADMIN_TOKEN": ADMIN}
        if self.check_processes is not None:  # by the environment: older code (--code) ignores it
            env["WETMARKET_CHECK_PROCESSES"] = str(self.check_processes)
        if self.write_process is not None:  # the same: older code ignores it
            env["WETMARKET_WRITE_PROCESS"] = self.write_process
        BENCH_DIR.mkdir(parents=True, exist_ok=True)
        self.log = (BENCH_DIR / "server.log").open("wb")
        self.proc = subprocess.Popen(cmd, env=env, cwd=CODE or REPO, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited: "
                                   + (BENCH_DIR / "server.log").read_text(errors="replace")[-2000:])
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.2)
        return self

    def writer(self, wait: float = 60) -> str | None:
        """What ``/healthz`` says of the writer process (``server.writeprocess``), once it is
        up if it was asked for (``on``); None from code without one."""
        import httpx

        deadline = time.monotonic() + wait
        while True:
            state = httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=5).json().get("writer")
            if state != "starting" or time.monotonic() > deadline:
                return cast(str | None, state)
            time.sleep(0.1)

    def checks(self) -> str | None:
        """What ``/healthz`` says of the check processes (``server.checkpool``); None from
        code without them."""
        import httpx

        return httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=5).json().get("checks")

    def warm_up(self, stall: BenchStall, sales: int = 20) -> None:
        """One batch of ``stall``'s (not a measured stall's) before the measure: it starts
        the check processes, which the measure then finds ready, as a server up for a
        while has them."""
        import httpx

        now = dt.datetime.now(SHANGHAI).replace(microsecond=0)
        batch = [stall.sale(i, now - dt.timedelta(seconds=sales - i)) for i in range(sales)]
        r = httpx.post(f"http://127.0.0.1:{self.port}/api/v1/sales", json={"sales": batch},
                       headers={"Authorization": f"Bearer {stall.token}"}, timeout=60)
        r.raise_for_status()
        deadline = time.monotonic() + 60
        while self.checks() in ("idle", "starting"):
            if time.monotonic() > deadline:
                raise RuntimeError("the check processes did not start")
            time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()


# -- requests -------------------------------------------------------------------------------


def http_request(method: str, path: str, body: bytes | None = None, token: str | None = None,
                 headers: Iterable[str] = ()) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    lines += list(headers)
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


@dataclass
class BenchStall:
    """A generated stall going on with its chain: signed sales as a stall makes them."""

    stall_id: str
    token: str
    key: Ed25519PrivateKey
    receipt_no: int
    prev: str
    items: list[tuple[str, str, str, str, int]] = field(default_factory=list)

    @classmethod
    def from_state(cls, state: Path, stall_ids: Iterable[str]) -> list[BenchStall]:
        import base64

        import history_gen

        data = json.loads(state.read_text())
        out = []
        for sid in stall_ids:
            s = data[sid]
            key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(s["private_key"]))
            # Any items: the bench's sales need not follow the stall's kind.
            items = [(plu, name, en, unit, (lo + hi) // 2)
                     for plu, name, en, _, unit, lo, hi in history_gen.CATALOGUE[::5]]
            out.append(cls(sid, s["token"], key, s["receipt_no"], s["prev_hash"], items))
        return out

    def sale(self, i: int, when: dt.datetime) -> dict[str, Any]:
        self.receipt_no += 1
        lines = []
        for k in range(1 + i % 3):
            plu, name, en, unit, price = self.items[(i + k) % len(self.items)]
            if unit == "piece":
                qty, weight = 1 + (i % 3), None
                amount = line_amount_fen(unit_price_fen=price, price_unit=unit, quantity=qty)
            else:
                qty, weight = None, 300 + (i * 37 + k * 101) % 1500
                amount = line_amount_fen(unit_price_fen=price, price_unit=unit, weight_g=weight)
            lines.append({"plu": plu, "name": name, "weight_g": weight, "quantity": qty,
                          "unit_price_fen": price, "price_unit": unit, "amount_fen": amount,
                          "batch_code": f"B{when:%Y%m%d}-01", "name_en": en})
        doc: dict[str, Any] = {
            "sale_id": str(uuid.uuid4()), "stall_id": self.stall_id, "receipt_no": self.receipt_no,
            "sold_at": when.isoformat(timespec="seconds"),
            "trace_code": make_trace_code("310106", 1, stall_number(self.stall_id), self.receipt_no),
            "lines": lines, "total_fen": sum(ln["amount_fen"] for ln in lines),
            "prev_hash": self.prev, "signature": "",
        }
        doc["signature"] = sign_sale(doc, self.key)
        self.prev = sale_digest(doc)
        return doc


def sales_of(stalls: list[BenchStall], per_stall: int) -> dict[str, list[dict[str, Any]]]:
    now = dt.datetime.now(SHANGHAI).replace(microsecond=0)
    start = now - dt.timedelta(seconds=per_stall)
    return {s.stall_id: [s.sale(i, start + dt.timedelta(seconds=i)) for i in range(per_stall)]
            for s in stalls}


# -- the client process ---------------------------------------------------------------------


def run_client(job: dict[str, Any]) -> dict[str, Any]:
    """Run ``job`` in a client process of its own; what it measured."""
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=BENCH_DIR, suffix=".job", delete=False) as f:
        pickle.dump(job, f)
    try:
        out = subprocess.run([sys.executable, __file__, "_client", f.name], check=True,
                             capture_output=True, timeout=1800)
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"client failed: {exc.stderr.decode()[-3000:]}") from None
    finally:
        Path(f.name).unlink()
    return dict(json.loads(out.stdout))


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    request: bytes) -> tuple[int, bytes]:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length) if length else b""
    return status, body


async def _load(job: dict[str, Any]) -> dict[str, Any]:
    """Every connection sends its requests one after another; all connections at once."""
    port, expect = job["port"], job.get("expect")
    latencies: list[float] = []
    errors: list[str] = []
    screen_events = 0
    stop = asyncio.Event()

    async def screen() -> None:
        nonlocal screen_events
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(http_request("GET", "/api/v1/events"))
        buf = b""
        while not stop.is_set():
            try:
                chunk = await asyncio.wait_for(reader.read(65536), 0.2)
            except TimeoutError:
                continue
            if not chunk:
                break
            buf = buf[-32:] + chunk
            screen_events += chunk.count(b"event: sales")
        writer.close()

    async def conn(requests: list[bytes]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for req in requests:
            t0 = time.perf_counter()
            status, body = await _exchange(reader, writer, req)
            latencies.append(time.perf_counter() - t0)
            if status != 200 or (expect is not None and expect.encode() not in body):
                errors.append(f"{status} {body[:200]!r}")
        writer.close()

    tasks = []
    if job.get("screen"):
        tasks.append(asyncio.create_task(screen()))
        await asyncio.sleep(0.5)
    t0 = time.perf_counter()
    await asyncio.gather(*(conn(reqs) for reqs in job["conns"]))
    seconds = time.perf_counter() - t0
    await asyncio.sleep(0.3 if tasks else 0)
    stop.set()
    await asyncio.gather(*tasks)
    return {"requests": len(latencies), "seconds": seconds, "rps": len(latencies) / seconds,
            **_percentiles(latencies), "errors": len(errors), "first_errors": errors[:3],
            "screen_events": screen_events}


def _percentiles(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {}
    ms = sorted(s * 1000 for s in seconds)
    q = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else ms * 99
    return {"p50_ms": round(statistics.median(ms), 2), "p95_ms": round(q[94], 2),
            "p99_ms": round(q[98], 2), "max_ms": round(ms[-1], 2)}


async def _latency(job: dict[str, Any]) -> dict[str, Any]:
    """One connection: the same request ``repeat`` times after ``warmup``; its latencies."""
    reader, writer = await asyncio.open_connection("127.0.0.1", job["port"])
    lat, statuses, size = [], set(), 0
    for i in range(job["warmup"] + job["repeat"]):
        t0 = time.perf_counter()
        status, body = await _exchange(reader, writer, job["request"])
        if i >= job["warmup"]:
            lat.append(time.perf_counter() - t0)
            statuses.add(status)
            size = len(body)
    writer.close()
    return {**_percentiles(lat), "statuses": sorted(statuses), "bytes": size}


async def _first_event(job: dict[str, Any]) -> dict[str, Any]:
    """The live stream: how long its first event takes on a new connection, and how long a
    stored upload takes to reach a subscribed screen as a ``sales`` event."""
    port = job["port"]
    first, live = [], []
    for i in range(job["repeat"]):
        t0 = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(http_request("GET", "/api/v1/events"))
        buf = b""
        while b"event: hello" not in buf:
            buf += await reader.read(65536)
        first.append(time.perf_counter() - t0)
        uploads = job.get("uploads") or []
        if i < len(uploads):
            up_r, up_w = await asyncio.open_connection("127.0.0.1", port)
            buf = b""
            t1 = time.perf_counter()
            status, body = await _exchange(up_r, up_w, uploads[i])
            if status != 200 or b'"accepted":1' not in body:
                raise RuntimeError(f"upload refused: {status} {body[:300]!r}")
            while b"event: sales" not in buf:
                buf += await asyncio.wait_for(reader.read(1 << 20), 30)
            live.append(time.perf_counter() - t1)
            up_w.close()
        writer.close()
    return {"first_event": _percentiles(first), "upload_to_screen": _percentiles(live)}


def client_main(job_file: str) -> int:
    job = pickle.loads(Path(job_file).read_bytes())
    fn = {"load": _load, "latency": _latency, "first_event": _first_event}[job["kind"]]
    print(json.dumps(asyncio.run(fn(job))))
    return 0


# -- baselines ------------------------------------------------------------------------------


def sqlite_commit_rate(seconds: float = 3.0) -> dict[str, Any]:
    """Commits/s of a raw one-row insert (WAL, synchronous=FULL) in var/bench: the disk's
    floor for one acknowledged sale at a time."""
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    path = BENCH_DIR / "commit-rate.db"
    for p in BENCH_DIR.glob("commit-rate.db*"):
        p.unlink()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t (id TEXT PRIMARY KEY, body TEXT)")
    body = "x" * 700
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t VALUES (?, ?)", (str(uuid.uuid4()), body))
        conn.execute("COMMIT")
        n += 1
    rate = n / (time.perf_counter() - t0)
    conn.close()
    for p in BENCH_DIR.glob("commit-rate.db*"):
        p.unlink()
    return {"commits_per_s": round(rate), "load": load_average()}


def raw_executemany(kind: str, batches: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]]
                    ) -> float:
    """Sales/s of the very rows the server stores, by a raw executemany per batch (sales, then
    lines, one commit) into an empty copy of the schema: what the database alone costs."""
    from server.db import init_db, make_engine

    url = fresh_db(kind, "raw")
    engine = make_engine(url)
    init_db(engine, SHANGHAI_ZONE)
    engine.dispose()
    sale_cols = list(batches[0][0][0])
    line_cols = list(batches[0][1][0])
    if kind == "sqlite":
        conn: Any = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")  # as the server: a sale acknowledged is on disk
        conn.execute("PRAGMA foreign_keys=ON")
        mark = "?"
    else:
        import psycopg

        conn = psycopg.connect(url)
        mark = "%s"

    def sql(table: str, cols: list[str]) -> str:
        return f"INSERT INTO {table} ({','.join(cols)}) VALUES ({','.join([mark] * len(cols))})"

    sales_sql, lines_sql = sql("sales", sale_cols), sql("sale_lines", line_cols)
    stalls = sorted({r["stall_id"] for rows, _ in batches for r in rows})
    now: Any = dt.datetime.now(dt.UTC)
    if kind == "sqlite":
        now = now.strftime("%Y-%m-%d %H:%M:%S.%f")
    conn.cursor().executemany(sql("stalls", ["stall_id", "name", "token_sha256", "created_at"]),
                              [(s, s, s * 16, now) for s in stalls])
    conn.commit()
    n, t0 = 0, time.perf_counter()
    for sale_rows, line_rows in batches:
        cur = conn.cursor()
        if kind == "sqlite":
            cur.execute("BEGIN")
        cur.executemany(sales_sql, [tuple(r[c] for c in sale_cols) for r in sale_rows])
        cur.executemany(lines_sql, [tuple(r[c] for c in line_cols) for r in line_rows])
        conn.commit()
        n += len(sale_rows)
    rate = n / (time.perf_counter() - t0)
    conn.close()
    drop_db(url)
    return rate


SHANGHAI_ZONE: Any = None  # set in main(): zoneinfo.ZoneInfo("Asia/Shanghai")


def stored_rows(sales: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows the server stores for ``sales`` (``server.ingest.table_rows``), as the driver takes
    them (JSON as text, a time as SQLite's text or an aware datetime)."""
    from edge.sale import Sale
    from server.ingest import as_prepared, table_rows

    now = dt.datetime.now(dt.UTC)
    out_sales, out_lines = [], []
    for raw in sales:
        sale = Sale.model_validate(raw)
        checked = as_prepared(sale, sale.to_json(), sale_digest(sale), sale.sold_at.astimezone(SHANGHAI), ())
        row, lines = table_rows(checked, [], now)
        row = {**row, "flags": json.dumps(row["flags"]), "raw": json.dumps(row["raw"], ensure_ascii=False)}
        out_sales.append(row)
        out_lines += lines
    return out_sales, out_lines


def _sqlite_times(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: (v.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f") if isinstance(v, dt.datetime) else v)
             for k, v in r.items()} for r in rows]


# -- the benchmarks -------------------------------------------------------------------------


def bench_ingest(kind: str, *, per_stall: int, batch: int, stalls: int,
                 workers: int | None, check_processes: int | None = None,
                 write_process: str | None = None) -> dict[str, Any]:
    url, state = with_history(kind, "ingest", 0)
    *bench_stalls, warm = BenchStall.from_state(state, [f"S{i + 1:03d}" for i in range(stalls + 1)])
    sales = sales_of(bench_stalls, per_stall)
    conns = [[http_request("POST", "/api/v1/sales", json.dumps({"sales": s[k:k + batch]}).encode(),
                           token=st.token)
              for k in range(0, len(s), batch)]
             for st, s in zip(bench_stalls, sales.values(), strict=True)]
    with ServerProc(url, workers=workers, check_processes=check_processes,
                    write_process=write_process) as srv:
        srv.warm_up(warm)
        checks = srv.checks()
        writer = srv.writer()
        load = load_average()
        out = run_client({"kind": "load", "port": srv.port, "conns": conns,
                          "expect": f'"accepted":{batch}'})
        health = run_client({"kind": "load", "port": srv.port,
                             "conns": [[http_request("GET", "/healthz")] * 1000 for _ in range(stalls)]})
    drop_db(url)
    total = sum(len(s) for s in sales.values())
    batches = []
    for s in sales.values():
        for k in range(0, len(s), batch):
            rows, lines = stored_rows(s[k:k + batch])
            if kind == "sqlite":
                rows, lines = _sqlite_times(rows), lines
            batches.append((rows, lines))
    raw_rate = raw_executemany(kind, batches)
    return {"db": kind, "sales": total, "batch": batch, "stalls_at_once": stalls, "workers": workers or 1,
            "checks": checks, "check_processes": check_processes, "write_process": write_process,
            "writer": writer,
            "sales_per_s": round(total / out["seconds"]), "request_p50_ms": out.get("p50_ms"),
            "request_p95_ms": out.get("p95_ms"), "errors": out["errors"], "first_errors": out["first_errors"],
            "baseline_raw_executemany_sales_per_s": round(raw_rate),
            "ratio_to_raw": round(total / out["seconds"] / raw_rate, 3),
            "healthz_rps": round(health["rps"]), "load": load}


def bench_single(kind: str, history: int, *, per_stall: int, concurrency: int, screen: bool,
                 workers: int | None, write_process: str | None = None) -> dict[str, Any]:
    url, state = with_history(kind, f"single-{history}", history)
    bench_stalls = BenchStall.from_state(state, [f"S{i + 1:03d}" for i in range(concurrency)])
    sales = sales_of(bench_stalls, per_stall)
    conns = [[http_request("POST", "/api/v1/sales", json.dumps({"sales": [sale]}).encode(), token=st.token)
              for sale in s]
             for st, s in zip(bench_stalls, sales.values(), strict=True)]
    with ServerProc(url, workers=workers, write_process=write_process) as srv:
        writer = srv.writer()
        load = load_average()
        out = run_client({"kind": "load", "port": srv.port, "conns": conns, "expect": '"accepted":1',
                          "screen": screen})
        writer_after = srv.writer()
        health = run_client({"kind": "load", "port": srv.port, "screen": screen,
                             "conns": [[http_request("GET", "/healthz")] * per_stall
                                       for _ in range(concurrency)]})
    drop_db(url)
    return {"db": kind, "history": history, "concurrency": concurrency, "screen": screen,
            "workers": workers or 1, "write_process": write_process, "writer": [writer, writer_after],
            "requests": out["requests"], "sales_per_s": round(out["rps"]),
            "p50_ms": out.get("p50_ms"), "p95_ms": out.get("p95_ms"), "errors": out["errors"],
            "first_errors": out["first_errors"], "screen_events": out["screen_events"],
            "healthz_rps": round(health["rps"]),
            # what one sale costs in this machine's own /healthz requests (the target,
            # 800 sales/s beside about 1,000 /healthz, asks for about 1.25)
            "healthz_per_sale": round(health["rps"] / out["rps"], 2) if out["rps"] else None,
            "load": load}


def bench_mixed(kind: str, *, per_stall: int, batch_per_stall: int, batch: int, concurrency: int,
                batch_stalls: int, workers: int | None, write_process: str | None = None) -> dict[str, Any]:
    """Single sales and batches at once on one server, each beside itself alone in the same
    run: ``concurrency`` stalls send one sale a request, ``batch_stalls`` send ``batch`` a
    request.  First half of every stall's sales: the single sales alone, then the batches
    alone; second half: both at once (two client processes started together).  A rate is
    over its own client's run; ``overlap`` says how much of the shorter one the other covered."""
    import concurrent.futures

    url, state = with_history(kind, "mixed", 0)
    ids = [f"S{i + 1:03d}" for i in range(concurrency + batch_stalls + 1)]
    *stalls, warm = BenchStall.from_state(state, ids)
    single_stalls, bulk_stalls = stalls[:concurrency], stalls[concurrency:]
    singles = sales_of(single_stalls, 2 * per_stall)
    bulks = sales_of(bulk_stalls, 2 * batch_per_stall)

    def single_job(half: int) -> dict[str, Any]:
        conns = [[http_request("POST", "/api/v1/sales", json.dumps({"sales": [sale]}).encode(),
                               token=st.token)
                  for sale in s[half * per_stall:(half + 1) * per_stall]]
                 for st, s in zip(single_stalls, singles.values(), strict=True)]
        return {"kind": "load", "conns": conns, "expect": '"accepted":1'}

    def batch_job(half: int) -> dict[str, Any]:
        conns = []
        for st, s in zip(bulk_stalls, bulks.values(), strict=True):
            mine = s[half * batch_per_stall:(half + 1) * batch_per_stall]
            conns.append([http_request("POST", "/api/v1/sales",
                                       json.dumps({"sales": mine[k:k + batch]}).encode(), token=st.token)
                          for k in range(0, len(mine), batch)])
        return {"kind": "load", "conns": conns, "expect": f'"accepted":{batch}'}

    def timed(job: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        out = run_client(job)
        # the client process's start-up is outside its own clock: place its run at the end
        end = time.perf_counter() - t0
        out["window"] = (end - out["seconds"], end)
        return out

    with ServerProc(url, workers=workers, write_process=write_process) as srv:
        srv.warm_up(warm)
        load = load_average()
        alone_single = run_client({**single_job(0), "port": srv.port})
        alone_batch = run_client({**batch_job(0), "port": srv.port})
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            fs = pool.submit(timed, {**single_job(1), "port": srv.port})
            fb = pool.submit(timed, {**batch_job(1), "port": srv.port})
            mixed_single, mixed_batch = fs.result(), fb.result()
        writer = srv.writer()
    drop_db(url)
    (a0, a1), (b0, b1) = mixed_single["window"], mixed_batch["window"]
    overlap = max(0.0, min(a1, b1) - max(a0, b0)) / min(a1 - a0, b1 - b0)
    bulk_sales = batch_per_stall * batch_stalls
    both = {"single_sales_per_s": round(mixed_single["rps"]),
            "single_p95_ms": mixed_single.get("p95_ms"),
            "batch_sales_per_s": round(bulk_sales / mixed_batch["seconds"]),
            "batch_request_p95_ms": mixed_batch.get("p95_ms"),
            "all_sales_per_s": round((mixed_single["requests"] + bulk_sales) / (max(a1, b1) - min(a0, b0))),
            "overlap": round(overlap, 2)}
    return {"db": kind, "mixed": True, "concurrency": concurrency, "batch_stalls": batch_stalls,
            "batch": batch,
            "workers": workers or 1, "write_process": write_process, "writer": writer,
            "alone": {"single_sales_per_s": round(alone_single["rps"]),
                      "single_p95_ms": alone_single.get("p95_ms"),
                      "batch_sales_per_s": round(bulk_sales / alone_batch["seconds"]),
                      "batch_request_p95_ms": alone_batch.get("p95_ms")},
            "together": both,
            "single_ratio": round(mixed_single["rps"] / alone_single["rps"], 2),
            "batch_ratio": round(alone_batch["seconds"] / mixed_batch["seconds"], 2),
            "errors": sum(r["errors"] for r in (alone_single, alone_batch, mixed_single, mixed_batch)),
            "first_errors": [e for r in (alone_single, alone_batch, mixed_single, mixed_batch)
                             for e in r["first_errors"]][:3],
            "load": load}


#: pid -> (command name, parent pid, process group, CPU seconds so far)
Procs = dict[int, tuple[str, int, int, float]]


def process_cpu() -> Procs:
    """Every process's CPU seconds (user + system) so far, read from ``/proc``."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1:text.rindex(")")]
        fields = text[text.rindex(")") + 2:].split()
        cpu = (int(fields[11]) + int(fields[12])) / tick
        out[int(stat.parent.name)] = (name, int(fields[1]), int(fields[2]), cpu)
    return out


def cpu_spent(before: Procs, after: Procs, pid: int) -> float:
    """CPU seconds process ``pid`` of ``after`` spent since ``before`` (all of it if it is new,
    or if its pid was another process's then)."""
    name, _ppid, _group, cpu = after[pid]
    return cpu - (before[pid][3] if pid in before and before[pid][0] == name else 0.0)


def postgres_backends(db: str) -> set[int]:
    """The pids of the PostgreSQL backends serving database ``db`` (their titles name it)."""
    out = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            title = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if title.startswith("postgres: ") and f" {db} " in title:
            out.add(int(cmdline.parent.name))
    return out


def _thread_us(f: Any, items: list[Any]) -> float:
    """This thread's CPU microseconds per item of ``f`` over ``items``."""
    t0 = time.thread_time()
    for item in items:
        f(item)
    return (time.thread_time() - t0) / max(1, len(items)) * 1e6


def bench_store(kind: str, *, per_stall: int, group: int, batch: int = 1,
                copy_from: int | None = None) -> dict[str, Any]:
    """Uploads of 8 stalls (``batch`` sales each) stored ``group`` uploads to a transaction in
    this one thread (``server.ingest.prepare`` then ``store``, then the commit): the writer's
    floor, and what each sale costs of CPU, step by step: the checks (``prepare``, and apart
    its validation, digest and signature check on the same sales), the writer's store and
    commit, and PostgreSQL's backends.  ``copy_from``: the group size from which the writer
    copies the sales on PostgreSQL (``server.ingest._PG_COPY_FROM``, set in this process)."""
    if CODE is not None:
        sys.path.insert(0, str(CODE))
    import server.ingest as ingest
    from edge.integrity import sale_digest
    from edge.pricing import check_sale
    from edge.sale import Sale
    from server.app import create_app
    from server.auth import StallAuth
    from server.ingest import IngestResult, Prepared, StallLike, prepare, signature_ok, store, verify_key
    from server.settings import Settings

    if copy_from is not None:
        if not hasattr(ingest, "_PG_COPY_FROM"):
            raise SystemExit("--copy-from: this code copies no sales (no server.ingest._PG_COPY_FROM)")
        ingest._PG_COPY_FROM = copy_from  # noqa: SLF001 - the bench's knob, this process only
    url, state = with_history(kind, "store", 0)
    stall_ids = [f"S{i + 1:03d}" for i in range(8)]
    bench_stalls = BenchStall.from_state(state, stall_ids)
    sales = sales_of(bench_stalls, per_stall * batch)
    app = create_app(Settings(db_url=url, admin_token=ADMIN))
    try:
        maker = app.state.sessionmaker
        with maker() as session:
            keys = {sid: session.execute(text_query("SELECT public_key FROM stalls WHERE stall_id = :s"),
                                         {"s": sid}).scalar_one() for sid in stall_ids}
        auths = {sid: StallAuth(sid, keys[sid]) for sid in stall_ids}
        settings = app.state.settings
        ready: list[list[tuple[StallLike, list[Prepared | IngestResult]]]] = []
        cpu0 = time.thread_time()
        with maker() as session:  # checked first: prepare runs beside the writer in the server
            for i in range(per_stall):
                uploads: list[tuple[StallLike, list[Prepared | IngestResult]]] = [
                    (auths[sid],
                     prepare(session, auths[sid], sales[sid][i * batch:(i + 1) * batch], settings))
                    for sid in stall_ids]
                ready += [uploads[j:j + group] for j in range(0, len(uploads), group)]
        checks_us = (time.thread_time() - cpu0) / (per_stall * batch * len(stall_ids)) * 1e6
        # the parts of the checks, on the first stall's sales (the same kind of sale for all)
        mine = sales[stall_ids[0]]
        context = settings.sale_context(stall_ids[0])
        models = [Sale.model_validate(raw, context=context) for raw in mine]
        digests = [sale_digest(m) for m in models]
        key = verify_key(keys[stall_ids[0]])
        assert key is not None, "the bench's stalls have keys"
        # the server's own checks where the code names them (server.ingest.validate); older
        # code (--code) ran the same two steps inside prepare
        checks = getattr(ingest, "validate", None)
        validate_one = ((lambda raw: checks(auths[stall_ids[0]], raw, settings, None)) if checks is not None
                        else (lambda raw: check_sale(Sale.model_validate(raw, context=context))))
        parts = {"validate": _thread_us(validate_one, mine),
                 "digest": _thread_us(sale_digest, models),
                 "signature": _thread_us(lambda i: signature_ok(key, models[i].signature, digests[i]),
                                         list(range(len(models))))}
        store_s: list[float] = []
        commit_s: list[float] = []
        # the server's group commit announces what it stored (PostgreSQL's NOTIFY); older code
        # (--code) sent that notice by a statement of its own after the store: the same here
        extra = {"announce": "bench"} if "announce" in inspect.signature(store).parameters else {}
        notice = text_query("SELECT pg_notify('wetmarket_sales', '{}')") if (
            kind == "postgresql" and not extra) else None
        # the group commit's own connections where the code has them (on PostgreSQL, planned
        # for each statement; server.db.make_engine)
        writer = getattr(app.state, "write_sessionmaker", maker)
        with writer() as session:  # the writer's connection opened before PostgreSQL's CPU is read
            session.execute(text_query("SELECT 1"))
        pg0 = process_cpu() if kind == "postgresql" else {}
        cpu0, wall0 = time.thread_time(), time.perf_counter()
        for group_ in ready:
            with writer() as session:
                t0 = time.perf_counter()
                results = store(session, group_, own_transaction=True, **extra)
                if notice is not None:
                    session.execute(notice)
                t1 = time.perf_counter()
                session.commit()
                commit_s.append(time.perf_counter() - t1)
                store_s.append(t1 - t0)
            assert all(r.status == "accepted" for res in results for r in res), results
        wall, cpu = time.perf_counter() - wall0, time.thread_time() - cpu0
        if pg0:
            pg1 = process_cpu()
            pg_cpu: float | None = sum(cpu_spent(pg0, pg1, pid) for pid in postgres_backends(PG_BENCH_DB)
                                       if pid in pg1)
        else:
            pg_cpu = None
    finally:
        app.state.engine.dispose()
        if getattr(app.state, "write_engine", None) is not None:
            app.state.write_engine.dispose()
    drop_db(url)
    n, stored = len(ready), sum(len(p) for g in ready for _, p in g)
    return {"db": kind, "what": "store", "group": group, "batch": batch, "groups": n, "sales": stored,
            "copy_from": getattr(ingest, "_PG_COPY_FROM", None) if kind == "postgresql" else None,
            "sales_per_s": round(stored / wall),
            "per_group_ms": {"store_p50": round(statistics.median(store_s) * 1000, 3),
                             "store_mean": round(sum(store_s) / n * 1000, 3),
                             "commit_p50": round(statistics.median(commit_s) * 1000, 3),
                             "commit_mean": round(sum(commit_s) / n * 1000, 3),
                             "thread_cpu": round(cpu / n * 1000, 3), "wall": round(wall / n * 1000, 3)},
            "cpu_us_per_sale": {"checks": round(checks_us, 1),
                                **{k: round(v, 1) for k, v in parts.items()},
                                "writer": round(cpu / stored * 1e6, 1),
                                "postgresql": None if pg_cpu is None else round(pg_cpu / stored * 1e6, 1)},
            "load": load_average()}


def bench_figures(kind: str, *, history: int, repeat: int) -> dict[str, Any]:
    """What the big screen's live view costs the server each time it publishes
    (``server.live.LiveFigures.figures``: today's figures and the latest sales, computed in a
    thread after every few uploads while a screen is subscribed), in this one thread on a
    generated history: CPU and wall milliseconds per computation."""
    if CODE is not None:
        sys.path.insert(0, str(CODE))
    from server.app import create_app
    from server.settings import Settings

    url, _ = with_history(kind, "figures", history)
    app = create_app(Settings(db_url=url, admin_token=ADMIN))
    try:
        live = app.state.live
        live.figures(1, None)  # statements compiled, connections opened
        cpu: list[float] = []
        wall: list[float] = []
        for _ in range(repeat):
            c0, w0 = time.thread_time(), time.perf_counter()
            live.figures(1, None)
            cpu.append((time.thread_time() - c0) * 1e3)
            wall.append((time.perf_counter() - w0) * 1e3)
    finally:
        app.state.engine.dispose()
    return {"db": kind, "what": "figures", "history": history, "repeat": repeat,
            "cpu_ms_p50": round(statistics.median(cpu), 3), "wall_ms_p50": round(statistics.median(wall), 3),
            "wall_ms_p95": round(_percentiles([w / 1e3 for w in wall])["p95_ms"], 3),
            "load": load_average()}


def text_query(sql: str) -> Any:
    from sqlalchemy import text

    return text(sql)


DEFAULT_URLS = ("/api/v1/stats/today", "/api/v1/sales-recent", "/api/v1/display")
#: What the big screen and the bureau's statistics read, and the stall's feed (``--all``).
ALL_URLS = (*DEFAULT_URLS, "/api/v1/stats/item-prices", "/api/v1/stats/movers",
            "/api/v1/stats/categories", "/api/v1/stats/stall-ranking?period=day",
            "/api/v1/stats/stall-ranking?period=week", "/api/v1/stats/stall-ranking?period=month",
            "/api/v1/stats/price-trend", "stall:/api/v1/feed")
#: The manager pages (``--manage``), read signed in as a manager the bench adds.
MANAGE_URLS = ("/manage", "/manage/stalls", "/manage/items", "/manage/prices?stall_id=S001",
               "/manage/inspections", "/manage/specials", "/manage/alerts", "/manage/managers")
BENCH_MANAGER = ("bench", "bench-manager-password-1")


def manager_cookie(port: int) -> str:
    """A manager's session cookie on the server at ``port`` (the manager added with the admin
    token if the database has none of that name), as ``Cookie: ...``."""
    import re

    import httpx

    user, password = BENCH_MANAGER
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
        r = c.post("/api/v1/managers", headers={"Authorization": f"Bearer {ADMIN}"},
                   json={"username": user, "display_name": "Bench", "password": password})
        if r.status_code not in (201, 409):
            raise RuntimeError(f"cannot add the bench's manager: {r.status_code} {r.text[:300]}")
        form = c.get("/manage/login")
        token = re.search(r'name="csrf_token" value="([^"]*)"', form.text)
        if token is None:
            raise RuntimeError("no sign-in form at /manage/login")
        r = c.post("/manage/login", data={"username": user, "password": password,
                                          "csrf_token": token.group(1), "next": "/manage"})
        if r.status_code != 303:
            raise RuntimeError(f"the bench's manager cannot sign in: {r.status_code}")
        return "Cookie: " + "; ".join(f"{k}={v}" for k, v in c.cookies.items())


def chain_heads(url: str, state: Path, stall_ids: list[str]) -> list[BenchStall]:
    """The stalls of a kept history as the database holds them now (a run before added
    sales to their chains): last receipt number and digest read back."""
    from sqlalchemy import select

    from server import db
    from server.db import make_engine

    stalls = BenchStall.from_state(state, stall_ids)
    engine = make_engine(url)
    with engine.connect() as conn:
        for s in stalls:
            row = conn.execute(select(db.Sale.receipt_no, db.Sale.digest)
                               .where(db.Sale.stall_id == s.stall_id)
                               .order_by(db.Sale.receipt_no.desc()).limit(1)).first()
            if row is not None:
                s.receipt_no, s.prev = int(row[0]), str(row[1])
    engine.dispose()
    return stalls


def bench_endpoints(kind: str, sales: int, urls: list[str], headers: list[str], *, repeat: int,
                    reuse: bool, keep: bool, workers: int | None, jobs: int,
                    single: int, manage: bool = False) -> dict[str, Any]:
    name = f"history-{sales}"
    state = BENCH_DIR / f"{name}-state.json"
    if reuse and state.exists():
        url = f"sqlite:///{BENCH_DIR / (name + '.db')}" if kind == "sqlite" else PG_BENCH_URL
        gen_s = 0.0
    else:
        t0 = time.perf_counter()
        url, state = with_history(kind, name, sales, jobs=jobs)
        gen_s = time.perf_counter() - t0
    stalls = chain_heads(url, state, [f"S{i + 1:03d}" for i in range(8)])
    tokens = {"stall": stalls[0].token, "admin": ADMIN}
    results: dict[str, Any] = {}
    try:
        with ServerProc(url, workers=workers) as srv:
            load = load_average()
            specs = [(spec, headers) for spec in ["/healthz", *urls]]
            if manage:
                cookie = manager_cookie(srv.port)
                specs += [(f"manager:{path}", [*headers, cookie]) for path in MANAGE_URLS]
            for spec, sent in specs:
                who, sep, path = spec.partition(":")
                if not sep or who not in (*tokens, "manager"):
                    who, path = "", spec
                req = http_request("GET", path, token=tokens.get(who), headers=sent)
                results[spec] = run_client({"kind": "latency", "port": srv.port, "request": req,
                                            "warmup": 5, "repeat": repeat})
                if results[spec]["statuses"] != [200]:  # a figure of an error page is no figure
                    raise RuntimeError(f"{spec} answered {results[spec]['statuses']}")
                results[spec]["load"] = load_average()
            now = dt.datetime.now(SHANGHAI)
            uploads = [http_request("POST", "/api/v1/sales",
                                    json.dumps({"sales": [stalls[0].sale(i, now)]}).encode(),
                                    token=stalls[0].token)
                       for i in range(min(repeat, 50))]
            results["/api/v1/events"] = run_client({"kind": "first_event", "port": srv.port,
                                                    "repeat": len(uploads), "uploads": uploads})
            results["/api/v1/events"]["load"] = load_average()
            if single:
                # Single-sale uploads on top of this history, as "single" measures them.
                conns = [[http_request("POST", "/api/v1/sales", json.dumps({"sales": [sale]}).encode(),
                                       token=st.token) for sale in mine]
                         for st, mine in zip(stalls, sales_of(stalls, single).values(), strict=True)]
                out = run_client({"kind": "load", "port": srv.port, "conns": conns,
                                  "expect": '"accepted":1', "screen": True})
                results["single_sales"] = {"sales_per_s": round(out["rps"]), "p50_ms": out.get("p50_ms"),
                                           "p95_ms": out.get("p95_ms"), "errors": out["errors"],
                                           "load": load_average()}
    finally:
        if not keep:
            drop_db(url)
            for p in BENCH_DIR.glob(f"{name}-state.json"):
                p.unlink()
    return {"db": kind, "history_sales": sales, "generated_in_s": round(gen_s), "load": load,
            "workers": workers or 1, "endpoints": results}


def main(argv: list[str] | None = None) -> int:
    global SHANGHAI_ZONE, CODE
    import zoneinfo

    SHANGHAI_ZONE = zoneinfo.ZoneInfo("Asia/Shanghai")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_client"]:
        return client_main(argv[1])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what")
    for name in ("ingest", "single", "mixed", "store", "endpoints", "figures"):
        p = sub.add_parser(name)
        p.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
        p.add_argument("--workers", type=int, help="server processes (wetmarket server --workers)")
        p.add_argument("--check-processes", type=int,
                       help="the server's check processes (wetmarket server --check-processes; "
                            "default: the server's own default)")
        p.add_argument("--write-process", choices=("auto", "on", "off"),
                       help="PostgreSQL: the server's writer process (wetmarket server "
                            "--write-process; default: the server's own, auto); on waits for it "
                            "before measuring")
    sub.choices["ingest"].add_argument("--batch", type=int, default=100)
    sub.choices["ingest"].add_argument("--per-stall", type=int, default=3000)
    sub.choices["ingest"].add_argument("--stalls", type=int, default=4)
    sub.choices["single"].add_argument("--history", default="0,10000,30000",
                                       help="comma-separated history sizes (sales stored first)")
    sub.choices["single"].add_argument("--concurrency", type=int, default=8)
    sub.choices["single"].add_argument("--per-stall", type=int, default=400)
    mx = sub.choices["mixed"]
    mx.add_argument("--per-stall", type=int, default=1500, help="single sales per stall in each half")
    mx.add_argument("--concurrency", type=int, default=8, help="stalls sending one sale a request")
    mx.add_argument("--batch-stalls", type=int, default=2, help="stalls sending batches")
    mx.add_argument("--batch-per-stall", type=int, default=15000, help="sales per batch stall in each half")
    mx.add_argument("--batch", type=int, default=100)
    sub.choices["store"].add_argument("--group", type=int, default=3,
                                      help="uploads to a transaction (the server's groups hold about 3 "
                                           "with 8 stalls sending one sale each)")
    sub.choices["store"].add_argument("--per-stall", type=int, default=600, help="uploads per stall")
    sub.choices["store"].add_argument("--batch", type=int, default=1, help="sales per upload")
    sub.choices["store"].add_argument("--copy-from", type=int,
                                      help="older code (--code) only: copy a group's sales on PostgreSQL "
                                           "from this many on (server.ingest._PG_COPY_FROM, in the "
                                           "bench's process); the current code copies none")
    sub.choices["single"].add_argument("--no-screen", action="store_true",
                                       help="no big screen subscribed to /api/v1/events")
    sub.choices["figures"].add_argument("--history", type=int, default=30000, help="sales stored first")
    sub.choices["figures"].add_argument("--repeat", type=int, default=300)
    ep = sub.choices["endpoints"]
    ep.add_argument("--sales", type=int, default=10_000_000)
    ep.add_argument("--url", action="append", default=[], help="PATH, stall:PATH or admin:PATH")
    ep.add_argument("--header", action="append", default=[], help="'Name: value' sent with every URL")
    ep.add_argument("--repeat", type=int, default=200)
    ep.add_argument("--jobs", type=int, default=2, help="history_gen processes")
    ep.add_argument("--keep", action="store_true", help="keep the generated database")
    ep.add_argument("--reuse", action="store_true", help="use the database kept by --keep")
    ep.add_argument("--all", action="store_true", help="every statistics endpoint and the feed")
    ep.add_argument("--manage", action="store_true",
                    help="also the manager pages, signed in as a manager the bench adds")
    ep.add_argument("--single", type=int, default=0, metavar="N",
                    help="then N single-sale uploads by each of 8 stalls, a screen subscribed")
    ap.add_argument("--code", type=Path, help="run the server code of this checkout (a git worktree "
                    "of an older commit: the 'before' figures)")
    args = ap.parse_args(argv)
    CODE = args.code.resolve() if args.code else None
    kinds = ["sqlite", "postgresql"] if getattr(args, "db", "both") == "both" else [args.db]
    out: list[dict[str, Any]] = []

    def add(result: dict[str, Any]) -> None:
        out.append(result)  # and each figure on stderr as soon as it is measured
        print(json.dumps(result, ensure_ascii=False), file=sys.stderr, flush=True)

    if args.what in (None, "single", "store"):
        add(sqlite_commit_rate())
    for kind in kinds:
        if args.what is None:
            add(bench_ingest(kind, per_stall=1000, batch=100, stalls=4, workers=None))
            add(bench_single(kind, 0, per_stall=200, concurrency=8, screen=True, workers=None))
        elif args.what == "ingest":
            add(bench_ingest(kind, per_stall=args.per_stall, batch=args.batch, stalls=args.stalls,
                             workers=args.workers, check_processes=args.check_processes,
                             write_process=args.write_process))
        elif args.what == "mixed":
            add(bench_mixed(kind, per_stall=args.per_stall, batch_per_stall=args.batch_per_stall,
                            batch=args.batch, concurrency=args.concurrency, batch_stalls=args.batch_stalls,
                            workers=args.workers, write_process=args.write_process))
        elif args.what == "store":
            add(bench_store(kind, per_stall=args.per_stall, group=args.group, batch=args.batch,
                            copy_from=args.copy_from))
        elif args.what == "figures":
            add(bench_figures(kind, history=args.history, repeat=args.repeat))
        elif args.what == "single":
            for n in (int(x) for x in args.history.split(",")):
                add(bench_single(kind, n, per_stall=args.per_stall, concurrency=args.concurrency,
                                 screen=not args.no_screen, workers=args.workers,
                                 write_process=args.write_process))
        else:
            urls = args.url or list(ALL_URLS if args.all else DEFAULT_URLS)
            add(bench_endpoints(kind, args.sales, urls, args.header,
                                repeat=args.repeat, reuse=args.reuse, keep=args.keep,
                                workers=args.workers, jobs=args.jobs, single=args.single,
                                manage=args.manage))
    print(json.dumps(out, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
