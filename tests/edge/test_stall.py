"""A whole stall: a weighing on the simulator's pseudo-terminal becomes a priced,
signed sale on a real market server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge import PricingError
from edge.config import StallConfig
from edge.demo_data import catalogue
from edge.flow import FlowState
from edge.stall import StallApp
from server.app import create_app
from server.settings import Settings
from tests.conftest import LiveServer
from tests.server.conftest import ADMIN


def wait_for(cond, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def market(tmp_path: Path) -> Iterator[tuple[LiveServer, str]]:
    app = create_app(Settings(db_url=f"sqlite:///{tmp_path / 'market.db'}", admin_token=ADMIN))
    with LiveServer(app) as srv:
        with srv.client(ADMIN) as c:
            token = c.post("/api/v1/stalls", json={"stall_id": "S02", "name": "李家蔬菜"}).json()["token"]
        yield srv, token


@pytest.fixture
def stall(market: tuple[LiveServer, str], tmp_path: Path) -> Iterator[StallApp]:
    srv, token = market
    cfg = StallConfig(stall_id="S02", name="李家蔬菜", vendor="李阿姨", data_dir=tmp_path / "S02",
                      catalogue=catalogue("S02", "20261128"), seed=7,
                      server={"url": srv.url, "token": token},  # type: ignore[arg-type]
                      printer={"type": "file"},  # type: ignore[arg-type]
                      screens={"enabled": False})  # type: ignore[arg-type]
    app = StallApp(cfg)
    app.start()
    yield app
    app.stop()


def test_weighing_on_the_pty_becomes_a_sale_on_the_server(
        market: tuple[LiveServer, str], stall: StallApp) -> None:
    srv, _ = market
    session, sim = stall.session, stall.sim
    assert session is not None and sim is not None
    assert wait_for(lambda: session.weigh_state.name == "STABLE_ZERO")
    session.select("2001")                      # 西红柿 3.00 元/500g
    sim.place(1000)
    assert wait_for(lambda: session.current_line() is not None)
    line = session.add_weighed()
    assert (line.weight_g, line.amount_fen) == (1000, 600)
    with pytest.raises(PricingError):           # no second sale before the plate is emptied
        session.select("2003")
        session.add_weighed()
    sim.remove()
    assert wait_for(lambda: session.weigh_state.name == "STABLE_ZERO")
    session.select("2003")                      # 胡萝卜 3.80 元/kg
    sim.place(1500)
    assert wait_for(lambda: session.current_line() is not None)
    assert session.add_weighed().amount_fen == 570
    sale = stall.checkout()
    assert sale.total_fen == 1170 and sale.receipt_no == 1
    assert sale.trace_code.startswith("310106001002")

    with srv.client() as c:
        assert wait_for(lambda: c.get("/api/v1/stats/today").json()["sales"] == 1)
        today = c.get("/api/v1/stats/today").json()
        page = c.get(f"/t/{sale.trace_code}", params={"s": sale.signature})
    assert today["total_fen"] == 1170
    assert today["ranking"] == [{"stall_id": "S02", "name": "李家蔬菜", "sales": 1, "total_fen": 1170}]
    assert 'data-verdict="genuine"' in page.text
    # the server commits before it answers, and the stall marks the sale sent when the answer
    # arrives: the server may count it a moment before the journal does
    journal = stall.journal
    assert journal is not None and wait_for(lambda: journal.counts()["sent"] == 1)
    receipts = list((stall.cfg.data_dir / "receipts").glob("*.bin"))
    assert [r.name for r in receipts] == [f"0000001-{sale.trace_code}.bin"]
    data = receipts[0].read_bytes()
    assert "西红柿".encode("gb18030") in data and "￥11.70".encode("gb18030") in data
    assert f"{srv.url}/t/{sale.trace_code}?s={sale.signature}".encode() in data


def test_moving_load_is_never_priced(stall: StallApp) -> None:
    session, sim = stall.session, stall.sim
    assert session is not None and sim is not None
    assert wait_for(lambda: session.weigh_state.name == "STABLE_ZERO")
    session.select("2001")
    sim.place(800)
    # Right after placement the load cell overshoots and rings: no price may show.
    seen_motion = wait_for(lambda: session.weigh_state.name == "MOTION", 2.0)
    assert seen_motion
    assert session.current_line() is None
    assert wait_for(lambda: session.current_line() is not None)
    assert session.current_line().weight_g == 800  # type: ignore[union-attr]


def test_audit_trail_and_refunds_are_durable(stall: StallApp) -> None:
    from edge import BasketError
    from edge.journal import Journal

    session, sim, journal = stall.session, stall.sim, stall.journal
    assert session is not None and sim is not None and journal is not None
    assert wait_for(lambda: session.weigh_state.name == "STABLE_ZERO")
    session.select("2001")
    sim.place(1000)
    assert wait_for(lambda: session.current_line() is not None)
    session.add_weighed()
    sim.remove()
    assert wait_for(lambda: session.weigh_state.name == "STABLE_ZERO")
    session.select("2003")
    sim.place(500)
    assert wait_for(lambda: session.current_line() is not None)
    session.add_weighed()
    session.void(2, "顾客不要了")
    sale = stall.checkout()
    assert [ln.plu for ln in sale.lines] == ["2001"]
    trail = journal.audit_trail(str(sale.sale_id))
    assert [e["action"] for e in trail] == ["add", "add", "void", "checkout"]
    assert "顾客不要了" in trail[2]["detail"]

    ref = session.refund(sale.trace_code, [1], reason="坏果", operator="李阿姨")
    assert ref.amount_fen == 600
    stall.outbox.notify()  # type: ignore[union-attr]
    srv_url = stall.cfg.server.url
    import httpx

    assert wait_for(lambda: httpx.get(f"{srv_url}/api/v1/stats/today").json()["refunds_fen"] == 600)
    assert wait_for(lambda: journal.pending_refunds() == [])
    with pytest.raises(BasketError, match="already refunded"):
        session.refund(sale.trace_code, [1], reason="again")
    with pytest.raises(BasketError, match="no receipt"):
        session.refund("31010600100200099990", [1], reason="x")
    # A weighed line that never became a sale is still on record.
    sim.remove()
    assert wait_for(lambda: session.weigh_state.name == "STABLE_ZERO")
    session.select("2001")
    sim.place(700)
    assert wait_for(lambda: session.current_line() is not None)
    session.add_weighed()
    session.discard("顾客走了")
    # Survives a restart of the stall process.
    again = Journal(journal.path)
    actions = [e["action"] for e in again.audit_trail()]
    assert actions[-3:] == ["refund", "add", "void"]
    assert again.refunded_lines(str(sale.sale_id)) == {1}


def test_raw_count_scale_weighs_only_with_its_sealed_calibration(tmp_path: Path) -> None:
    from firmware_bridge.audit import AuditLog
    from firmware_bridge.calibration import CalibrationStore
    from firmware_bridge.link import Link
    from firmware_bridge.sim import Simulator

    data = tmp_path / "S03"
    cfg = StallConfig(stall_id="S03", name="张氏", data_dir=data, seed=3,
                      catalogue=catalogue("S03", "20261128"),
                      scale={"port": "sim", "protocol": "hx711-raw"},  # type: ignore[arg-type]
                      screens={"enabled": False})  # type: ignore[arg-type]
    # Not calibrated: the stall starts, prices nothing and says so (both screens' faults).
    uncalibrated = StallApp(cfg)
    uncalibrated.start()
    try:
        flow, sim = uncalibrated.flow, uncalibrated.sim
        assert flow is not None and sim is not None and uncalibrated.link is None
        assert "calibrate first" in (uncalibrated.scale_fault or "")
        sim.place(800)
        time.sleep(0.5)
        snap = flow.snapshot()
        assert snap.state is FlowState.NOT_READY and snap.priceable_g is None
        assert [(f.kind, f.customer) for f in snap.faults] == [
            ("scale", "秤未标定，暂停计价 / scale not calibrated: no price")]
        assert not flow.confirm("3001").ok
        sim.remove()
    finally:
        uncalibrated.stop()

    # The technician calibrates the module (same make and model as the stall's).
    data.mkdir(exist_ok=True)
    audit = AuditLog(data / "scale-audit.jsonl")
    store = CalibrationStore(data / "calibration.json", audit)
    with Simulator("hx711-raw", seed=3) as sim, Link(sim.port, protocol="hx711-raw") as link, \
            store.calibration_mode("技术员") as cal:
        cal.capture_zero(link.collect_counts(16))
        sim.place(2000)
        time.sleep(0.8)
        cal.capture_span(link.collect_counts(16), 2000)
        cal.commit()
    assert audit.counter == 1

    app = StallApp(cfg)
    app.start()
    try:
        session, sim = app.session, app.sim
        assert session is not None and sim is not None
        assert wait_for(lambda: session.weigh_state.name == "STABLE_ZERO")
        session.select("3001")                  # 红薯 4.50 元/kg
        sim.place(1500)
        assert wait_for(lambda: session.current_line() is not None)
        line = session.add_weighed()
        assert line.weight_g is not None and abs(line.weight_g - 1500) <= 5
        assert line.amount_fen == (line.weight_g * 450 + 500) // 1000
    finally:
        app.stop()
    assert "calibration" in (data / "scale-audit.jsonl").read_text()
