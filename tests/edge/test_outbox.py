"""The outbox uploads every journaled sale exactly once, across a server outage."""

from __future__ import annotations

import time
from pathlib import Path

from edge.journal import Journal
from edge.outbox import Outbox
from edge.sale import Sale
from server.app import create_app
from server.settings import Settings
from tests.conftest import LiveServer
from tests.server.conftest import ADMIN, StallSim


def _wait(cond, timeout: float = 15.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def _journal_sales(j: Journal, sim: StallSim, n: int) -> None:
    for _ in range(n):
        def build(receipt_no: int, prev: str) -> Sale:
            sim.receipt_no, sim.prev = receipt_no - 1, prev
            return Sale.model_validate(sim.sale([("1", "香蕉", 1000, 690, "kg")]))
        j.append(build)


def test_outage_then_recovery_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    sim = StallSim("S01")
    srv = LiveServer(create_app(Settings(db_url=f"sqlite:///{tmp_path / 'm.db'}", admin_token=ADMIN)))
    journal = Journal(tmp_path / "j.sqlite3")
    # The stall was registered earlier; its token is known, the server is now down.
    srv.__enter__()
    with srv.client(ADMIN) as c:
        token = c.post("/api/v1/stalls", json={"stall_id": "S01", "name": "甲"}).json()["token"]
    srv.__exit__(None, None, None)

    outbox = Outbox(journal, srv.url, token, stall_id="S01", public_key=sim.public_key,
                    max_backoff_s=0.5, timeout_s=1.0)
    outbox.start()
    _journal_sales(journal, sim, 5)
    outbox.notify()
    assert _wait(lambda: outbox.last_error is not None)
    assert journal.counts()["pending"] == 5 and not outbox.online

    srv2 = LiveServer(srv.app)
    srv2.port, srv2.url = srv.port, srv.url
    srv2.server.config.port = srv.port
    with srv2:
        assert _wait(lambda: journal.counts()["sent"] == 5)
        _journal_sales(journal, sim, 2)
        outbox.notify()
        assert _wait(lambda: journal.counts()["sent"] == 7, 5.0)
        # A lost acknowledgement makes the stall send again: the server says "duplicate".
        for d in journal.all_sales()[:3]:
            journal.mark(d["sale_id"], "pending")
        outbox.notify()
        assert _wait(lambda: journal.counts()["sent"] == 7 and journal.counts()["pending"] == 0)
        with srv2.client() as c:
            today = c.get("/api/v1/stats/today").json()
        assert today["sales"] == 7 and today["total_fen"] == 7 * 690
        with srv2.client(ADMIN) as c:
            assert c.get("/api/v1/stalls").json()[0]["has_key"] is True
        outbox.stop()
