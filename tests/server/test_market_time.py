"""Market time whatever the server machine's ``TZ``: the real ``wetmarket server`` process
under ``TZ=UTC`` and ``TZ=America/New_York`` (and PostgreSQL sessions in that zone too),
and an SQLite file written by older code brought to UTC at start."""

from __future__ import annotations

import datetime as dt
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from edge.cli import main
from server import db
from server.app import create_app
from server.settings import Settings
from tests.conftest import LiveServer, free_port
from tests.server.conftest import ADMIN, SHANGHAI, StallSim

WETMARKET = str(Path(sys.executable).parent / "wetmarket")
SOLD_AT = dt.datetime(2026, 11, 28, 11, 30, 53, tzinfo=SHANGHAI)


@contextmanager
def wetmarket_server(db_url: str, machine_tz: str, log: Path, *flags: str,
                     env: dict[str, str] | None = None) -> Iterator[str]:
    """``wetmarket server`` as its own process; PGTZ puts its PostgreSQL session in
    ``machine_tz`` as well, so neither database answers in the market's zone by chance."""
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WETMARKET_")}
    proc_env = {**clean, "TZ": machine_tz, "PGTZ": machine_tz, "WETMARKET_ADMIN_TOKEN": ADMIN,
                **(env or {})}
    with log.open("wb") as out:
        proc = subprocess.Popen([WETMARKET, "server", "--db", db_url, "--port", str(port), *flags],
                                env=proc_env, stdout=out, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert proc.poll() is None, log.read_text(errors="replace")
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.1)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _post(url: str, sim: StallSim, sales: list[dict]) -> str:  # type: ignore[type-arg]
    """Register ``sim``'s stall, upload ``sales``; the stall's token."""
    with httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/api/v1/stalls", json={"stall_id": sim.stall_id, "name": "王记鲜果",
                                           "public_key": sim.public_key},
                   headers={"Authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 201, r.text
        token = str(r.json()["token"])
        r = c.post("/api/v1/sales", json={"sales": sales}, headers={"Authorization": f"Bearer {token}"})
        assert r.json()["accepted"] == len(sales), r.text
    return token


def _shown_time(page: httpx.Response) -> tuple[str, str | None]:
    """The trace page's time as the shopper reads it, and its machine-readable ISO form."""
    match = re.search(r"<th>时间 Time</th><td>(?:<time[^>]*>)?([^<]+)<", page.text)
    assert match, page.text
    iso = re.search(r'<time id="sold-at" datetime="([^"]+)">', page.text)
    return match.group(1), iso.group(1) if iso else None


@pytest.mark.parametrize("machine_tz", ["UTC", "America/New_York"])
def test_trace_page_and_recent_sales_show_market_time(db_url: str, machine_tz: str,
                                                      tmp_path: Path) -> None:
    """Issue 16 item 10: the trace page showed 19:30:53 for a receipt printed 11:30:53."""
    sim = StallSim("S01")
    printed = sim.sale([("1001", "西红柿", 512, 300, "500g")], sold_at=SOLD_AT)
    # The same kind of instant sent by a stall whose clock writes UTC: 05:00Z is 13:00 market time.
    in_utc = sim.sale([("1001", "西红柿", 512, 300, "500g")],
                      sold_at=dt.datetime(2026, 11, 28, 5, 0, 0, tzinfo=dt.UTC))
    with wetmarket_server(db_url, machine_tz, tmp_path / "server.log") as url:
        _post(url, sim, [printed, in_utc])
        with httpx.Client(base_url=url, timeout=30) as c:
            first = c.get(f"/t/{printed['trace_code']}")
            second = c.get(f"/t/{in_utc['trace_code']}")
            recent = c.get("/api/v1/sales-recent").json()
    assert sorted(s["sold_at"] for s in recent) == ["2026-11-28T11:30:53+08:00",
                                                    "2026-11-28T13:00:00+08:00"]
    assert _shown_time(first) == ("2026-11-28 11:30:53", "2026-11-28T11:30:53+08:00")
    assert _shown_time(second) == ("2026-11-28 13:00:00", "2026-11-28T13:00:00+08:00")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_server_flags_and_variables_name_the_market(db_url: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """``--market-region/--market-number/--timezone`` (or WETMARKET_*) say which trace codes
    are this market's and which zone its times are shown in."""
    sim = StallSim("S01", region="320102", market=7)
    sale = sim.sale([("1001", "西红柿", 512, 300, "500g")], sold_at=SOLD_AT)
    flags = ("--market-region", "320102", "--market-number", "7", "--timezone", "Asia/Tokyo")
    with wetmarket_server(db_url, "UTC", tmp_path / "flags.log", *flags) as url:
        _post(url, sim, [sale])
        page = httpx.get(f"{url}/t/{sale['trace_code']}", timeout=30)
    assert _shown_time(page) == ("2026-11-28 12:30:53", "2026-11-28T12:30:53+09:00")
    env = {"WETMARKET_MARKET_REGION": "320102", "WETMARKET_MARKET_NUMBER": "7"}
    other = StallSim("S02")  # of the default market 310106-001
    with (wetmarket_server(db_url, "UTC", tmp_path / "env.log", env=env) as url,
          httpx.Client(base_url=url, timeout=30) as c):
        token = c.post("/api/v1/stalls", json={"stall_id": "S02", "name": "乙"},
                       headers={"Authorization": f"Bearer {ADMIN}"}).json()["token"]
        body = c.post("/api/v1/sales", json={"sales": [other.sale([("1", "香蕉", 1000, 690, "kg")])]},
                      headers={"Authorization": f"Bearer {token}"}).json()
    assert "not this market (7 of region 320102)" in body["results"][0]["reason"]
    for bad, message in [(("--market-number", "1000"), "market must be an integer 1..999"),
                         (("--market-region", "99010"), "region code must be 6 digits"),
                         (("--market-number", "x"), "market_number: Input should be a valid integer"),
                         (("--timezone", "Mars/Base"), "unknown time zone 'Mars/Base'"),
                         (("--check-processes", "-1"), "check_processes: Input should be greater than or "
                                                       "equal to 0"),
                         (("--check-processes", "two"), "check_processes: Input should be a valid integer")]:
        # In this process (the command's own main(), which a wetmarket process runs): a start
        # of the command line per case cost 2 s of imports each.
        rc = main(["server", "--db", db_url, "--port", str(free_port()), *bad])
        err = capsys.readouterr().err
        assert rc == 1 and "Traceback" not in err, err
        assert message in err, err


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_an_older_sqlite_file_is_brought_to_utc(db_url: str, tmp_path: Path) -> None:
    """Older code wrote SQLite times as wall time without offset: ``sold_at`` the stall's,
    ``refunded_at`` the refund's (checked against commit f94aab1: 11:30:53+08:00 was stored
    as '2026-11-28 11:30:53.000000').  A start brings them to UTC, once."""
    sim = StallSim("S01")
    sale = sim.sale([("1", "香蕉", 1000, 690, "kg")], sold_at=SOLD_AT)
    refund = {"sale_id": sale["sale_id"], "line_no": 1, "amount_fen": 690, "reason": "坏了",
              "operator": "王", "at": "2026-11-28T12:00:00+08:00"}
    with LiveServer(create_app(Settings(db_url=db_url, admin_token=ADMIN))) as srv:
        token = _post(srv.url, sim, [sale])
        with srv.client(token) as c:
            assert c.post("/api/v1/refunds", json={"refunds": [refund]}).json()["results"][0][
                "status"] == "accepted"
    # Make the file what the older server left: wall times, and no time_storage mark.
    path = db_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT sold_at FROM sales").fetchone() == ("2026-11-28 03:30:53.000000",)
        conn.execute("UPDATE sales SET sold_at = '2026-11-28 11:30:53.000000'")
        conn.execute("UPDATE refunds SET refunded_at = '2026-11-28 12:00:00.000000'")
        conn.execute("DELETE FROM server_meta WHERE key = 'time_storage'")
    for _start in range(2):  # the second start changes nothing
        app = create_app(Settings(db_url=db_url, admin_token=ADMIN))
        with app.state.sessionmaker() as session:
            sold_at = session.execute(select(db.Sale.sold_at)).scalar_one()
            refunded_at = session.execute(select(db.Refund.refunded_at)).scalar_one()
        assert sold_at == SOLD_AT and sold_at.tzinfo == dt.UTC
        assert refunded_at == dt.datetime.fromisoformat(refund["at"])
        with LiveServer(app) as srv, srv.client() as c:
            assert _shown_time(c.get(f"/t/{sale['trace_code']}"))[0] == "2026-11-28 11:30:53"
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT sold_at FROM sales").fetchone() == ("2026-11-28 03:30:53.000000",)
        assert conn.execute("SELECT value FROM server_meta WHERE key = 'time_storage'").fetchone() \
            == ("utc",)
