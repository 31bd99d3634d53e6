"""Batched uploads checked in processes of their own (``server.checkpool``): the same answers
and rows as checked in the server's process, order kept, and a dead worker costs no sale."""

from __future__ import annotations

import datetime as dt
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from edge.integrity import sale_digest
from edge.sale import Sale
from server.app import create_app
from server.auth import StallAuth
from server.checkpool import MAX_FAILED_STARTS, POOL_MIN, CheckPool
from server.ingest import IngestResult, Prepared, check_sales
from server.settings import Settings
from tests.conftest import LiveServer, free_port
from tests.edge.test_stall import wait_for
from tests.server.conftest import ADMIN, StallSim, register_stall
from tests.server.server_process import ServerAt
from tests.server.test_ingest_perf_paths import children

LINES = [("1001", "西红柿", 512, 598, "kg"), ("1002", "黄瓜", 300, 260, "500g")]


def mixed_batch(sim: StallSim, n: int) -> list[dict[str, Any]]:
    """``n`` sales of ``sim``'s, among them one that fails the legal checks (its total is
    not its lines' sum), one signed by another key and one of another stall."""
    out = [sim.sale(LINES) for _ in range(n - 3)]
    bad_total = sim.sale(LINES)
    bad_total["total_fen"] += 1
    forged = sim.sale(LINES)
    forged["signature"] = StallSim(sim.stall_id).sale(LINES)["signature"]
    other = StallSim("S77").sale(LINES)
    return out[:5] + [bad_total] + out[5:10] + [forged, other] + out[10:]


class Market:
    """A server on its own SQLite file with ``processes`` check processes."""

    def __init__(self, path: Path, processes: int) -> None:
        self.url = f"sqlite:///{path}"
        self.app = create_app(Settings(db_url=self.url, admin_token=ADMIN, check_processes=processes))
        self.pool: CheckPool = self.app.state.check_pool
        self.live = LiveServer(self.app)

    def checks(self) -> str:
        with self.live.client() as c:
            return str(c.get("/healthz").json()["checks"])

    def post(self, token: str, sales: list[dict[str, Any]]) -> dict[str, Any]:
        with self.live.client(token) as c:
            r = c.post("/api/v1/sales", json={"sales": sales})
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out

    def warm(self, sim: StallSim) -> None:
        """A first big batch (another stall's): it starts the workers and is checked here."""
        token = register_stall(self.live, sim, "暖机")
        assert self.post(token, [sim.sale(LINES) for _ in range(POOL_MIN)])["accepted"] == POOL_MIN
        assert wait_for(lambda: self.checks() == "ready", timeout=60), self.checks()

    def rows(self) -> list[tuple[Any, ...]]:
        engine = create_engine(self.url)
        with engine.connect() as conn:
            out = [tuple(r) for r in conn.execute(text(
                "SELECT sale_id, stall_id, receipt_no, trace_code, sold_at, local_day, total_fen, "
                "digest, verified, flags, raw FROM sales WHERE stall_id = 'S01' ORDER BY sale_id"))]
            out += [tuple(r) for r in conn.execute(text(
                "SELECT l.* FROM sale_lines l JOIN sales s USING (sale_id) WHERE s.stall_id = 'S01' "
                "ORDER BY l.sale_id, l.idx"))]
        engine.dispose()
        return out


@pytest.fixture
def markets(tmp_path: Path) -> Iterator[tuple[Market, Market]]:
    pooled, plain = Market(tmp_path / "pooled.db", 1), Market(tmp_path / "plain.db", 0)
    with pooled.live, plain.live:
        yield pooled, plain


def test_a_batch_checked_in_a_worker_gets_the_answers_and_rows_of_one_checked_in_process(
        markets: tuple[Market, Market]) -> None:
    pooled, plain = markets
    assert plain.checks() == "off" and pooled.checks() == "idle"  # nothing started before a batch
    pooled.warm(StallSim("S02"))
    sim = StallSim("S01")
    tokens = [register_stall(m.live, sim) for m in (pooled, plain)]
    batch = mixed_batch(sim, 60)
    before = pooled.pool.pooled
    answers = [m.post(t, batch) for m, t in zip((pooled, plain), tokens, strict=True)]
    assert pooled.pool.pooled == before + 1, "the batch went to the worker"
    assert plain.pool.pooled == 0 and plain.pool.in_process == 1
    assert answers[0] == answers[1]
    statuses = [r["status"] for r in answers[0]["results"]]
    assert statuses.count("accepted") == 58 and statuses.count("refused") == 2
    assert [r["sale_id"] for r in answers[0]["results"]] == [s["sale_id"] for s in batch]
    assert [r["flags"] for r in answers[0]["results"]][11] == ["bad_signature"]
    assert pooled.rows() == plain.rows() and len(pooled.rows()) > 58
    # sent again: every sale a duplicate or refused the same way, in both
    again = [m.post(t, batch) for m, t in zip((pooled, plain), tokens, strict=True)]
    assert again[0] == again[1] and again[0]["duplicates"] == 58


def test_the_parts_of_a_batch_come_back_in_its_order(tmp_path: Path) -> None:
    settings = Settings(db_url=f"sqlite:///{tmp_path / 'm.db'}", admin_token=ADMIN)
    sim = StallSim("S01")
    stall = StallAuth("S01", sim.public_key)
    batch = mixed_batch(sim, 160)
    pool = CheckPool(settings, 2)
    try:
        assert pool.state == "idle"
        here = pool.check(stall, batch, None)  # starts the pool, checked here meanwhile
        assert pool.in_process == 1 and pool.state in ("starting", "ready")
        assert wait_for(lambda: pool.state == "ready", timeout=60)
        there = pool.check(stall, batch, None)  # in three parts of 53 or 54: two workers
        assert pool.pooled == 1
    finally:
        pool.close()
    assert pool.state == "off"
    assert here == there == check_sales(stall, batch, settings, None)
    assert [p.sale_id if isinstance(p, Prepared) else p.sale_id for p in there] == \
        [s["sale_id"] for s in batch]
    refused = [p for p in there if isinstance(p, IngestResult)]
    assert [p.reason is not None and "total" in p.reason for p in refused][:1] == [True]
    assert pool.check(stall, batch, "S09")[0] == IngestResult(
        batch[0]["sale_id"], "refused", "stall S01 has the trace-code stall number of S09, registered "
        "first; the market manager must give it a number of its own")


def test_a_killed_worker_costs_no_sale_and_the_pool_starts_again(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    market = Market(tmp_path / "m.db", 1)
    with market.live:
        market.warm(StallSim("S02"))
        sim = StallSim("S01")
        token = register_stall(market.live, sim)
        executor = market.pool._pool  # noqa: SLF001 - the test kills what the pool runs
        assert executor is not None
        pids = list(executor._processes)  # noqa: SLF001
        assert pids
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        in_process = market.pool.in_process
        answer = market.post(token, [sim.sale(LINES) for _ in range(40)])
        assert answer["accepted"] == 40
        assert market.pool.in_process == in_process + 1
        assert "a check process failed" in caplog.text
        assert market.checks() == "idle"
        # the next big batch starts it again, and the one after is checked there
        assert market.post(token, [sim.sale(LINES) for _ in range(20)])["accepted"] == 20
        assert wait_for(lambda: market.checks() == "ready", timeout=60)
        pooled = market.pool.pooled
        assert market.post(token, [sim.sale(LINES) for _ in range(20)])["accepted"] == 20
        assert market.pool.pooled == pooled + 1
        assert len(market.rows()) == 80 * 3  # each sale and its two lines


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_small_uploads_start_no_worker(server: LiveServer) -> None:
    sim = StallSim("S01")
    token = register_stall(server, sim)
    with server.client(token) as c:
        for n in (1, POOL_MIN - 1):
            assert c.post("/api/v1/sales", json={"sales": [sim.sale(LINES) for _ in range(n)]}
                          ).json()["accepted"] == n
        # idle: none started ("off" on a machine of one CPU, where the default is none)
        assert c.get("/healthz").json()["checks"] in ("idle", "off")
    pool: CheckPool = server.app.state.check_pool
    assert pool.pooled == 0 and pool.in_process == 2


def test_a_checked_sale_crosses_processes_as_its_rows_and_comes_back_the_same(tmp_path: Path) -> None:
    """A check process answers with each sale's rows, ready to store; the model rebuilt from
    them (for an order's fulfilment) is the sale the check validated."""
    settings = Settings(db_url=f"sqlite:///{tmp_path / 'm.db'}", admin_token=ADMIN)
    sim = StallSim("S01")
    raws = [sim.sale(LINES, extra={"order_id": 7, "rounding": "half-up"}, line_extra={"name_en": "Tomato"}),
            sim.sale(LINES, sold_at=dt.datetime(2026, 12, 5, 0, 30, 15, tzinfo=dt.UTC))]
    checked = check_sales(StallAuth("S01", sim.public_key), raws, settings, None)
    assert all(isinstance(p, Prepared) for p in checked)
    back = pickle.loads(pickle.dumps(checked))
    assert back == checked
    sales = [b for b in back if isinstance(b, Prepared)]
    assert [b.order_id for b in sales] == [7, None]
    assert sales[0].names_en[0] == "Tomato" and sales[1].names_en == (None,) * len(LINES)
    for b, raw in zip(sales, raws, strict=True):
        want = Sale.model_validate(raw, context=settings.sale_context("S01"))
        got = b.model()
        assert got.model_dump() == want.model_dump() and got.model_extra == want.model_extra
        assert [ln.model_extra for ln in got.lines] == [ln.model_extra for ln in want.lines]
        assert sale_digest(got) == b.digest and got.sold_at.utcoffset() == want.sold_at.utcoffset()
        assert b.row["sold_at"] == want.sold_at and b.row["total_fen"] == want.total_fen
        assert [ln["amount_fen"] for ln in b.lines] == [ln.amount_fen for ln in want.lines]


def test_ctrl_c_stops_the_server_and_its_workers_quietly(tmp_path: Path) -> None:
    """Ctrl-C in a terminal signals the whole process group: the server stops gracefully, its
    workers end with it, and nothing prints a traceback."""
    port = free_port()
    log = tmp_path / "server.log"
    proc = subprocess.Popen([str(Path(sys.executable).parent / "wetmarket"), "server", "--db",
                             f"sqlite:///{tmp_path / 'm.db'}", "--port", str(port), "--check-processes", "1"],
                            env={**os.environ, "WETMARKET_ADMIN_TOKEN": ADMIN}, stdout=subprocess.DEVNULL,
                            stderr=log.open("wb"), start_new_session=True)
    try:
        at = ServerAt(port)
        assert wait_for(lambda: _answers(at), timeout=60), log.read_text()
        sim = StallSim("S01")
        with at.client(ADMIN) as c:
            token = c.post("/api/v1/stalls", json={"stall_id": "S01", "name": "王记",
                                                   "public_key": sim.public_key}).json()["token"]
        with at.client(token) as c:
            assert c.post("/api/v1/sales", json={"sales": [sim.sale(LINES) for _ in range(20)]}
                          ).json()["accepted"] == 20
            assert wait_for(lambda: c.get("/healthz").json()["checks"] == "ready", timeout=60)
            assert c.post("/api/v1/sales", json={"sales": [sim.sale(LINES) for _ in range(20)]}
                          ).json()["accepted"] == 20
        workers = children(proc.pid)
        assert workers, "the check process (and multiprocessing's resource tracker) run"
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert wait_for(lambda: not any(_alive(p) for p in workers), timeout=10)
    assert "Traceback" not in log.read_text(), log.read_text()


def _answers(at: ServerAt) -> bool:
    try:
        with at.client() as c:
            return c.get("/healthz").status_code == 200
    except httpx.TransportError:
        return False


def _cannot_start() -> None:
    raise RuntimeError("this worker cannot read its settings")


class UnstartableSettings(Settings):
    """Settings as the server reads them, which a worker cannot: unpickled, they raise."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_cannot_start, ())


def test_workers_that_cannot_start_cost_no_sale_and_are_given_up(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    settings = UnstartableSettings(db_url=f"sqlite:///{tmp_path / 'm.db'}", admin_token=ADMIN)
    sim = StallSim("S01")
    stall = StallAuth("S01", sim.public_key)
    pool = CheckPool(settings, 1)
    try:
        for attempt in range(MAX_FAILED_STARTS + 2):
            batch = [sim.sale(LINES) for _ in range(POOL_MIN)]
            checked = pool.check(stall, batch, None)  # here: the workers never come up
            assert [p.sale_id for p in checked if isinstance(p, Prepared)] == [s["sale_id"] for s in batch]
            if attempt < MAX_FAILED_STARTS:
                assert wait_for(lambda: pool.state == "idle", timeout=60), pool.state
        assert pool.state == "failed" and pool.pooled == 0 and pool.in_process == MAX_FAILED_STARTS + 2
        assert f"check processes could not start {MAX_FAILED_STARTS} times in a row" in caplog.text
    finally:
        pool.close()
