"""The stall's order desk (``edge.orders``) against a live market server: it long-polls this
stall's open orders, counts the new ones (the vendor's chime), sends the vendor's decisions
with the server's refusals as they are, and says when the server is away (nothing changed)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edge.orders import OrderDesk
from server.app import create_app
from server.settings import Settings
from tests.conftest import LiveServer, free_port
from tests.server.conftest import ADMIN, StallSim, register_stall
from tests.server.test_orders import PHONE_A, first_slot, set_up_order_stall, signed_in_shopper


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    with LiveServer(create_app(Settings(db_url=f"sqlite:///{tmp_path / 'm.db'}", admin_token=ADMIN))) as srv:
        yield srv


def test_the_desk_follows_the_orders_and_sends_the_vendors_decisions(server: LiveServer) -> None:
    sim, token = set_up_order_stall(server)
    stop = threading.Event()
    desk = OrderDesk(server.url, token, stall_id=sim.stall_id, wait_s=0, stop_event=stop)
    assert desk.poll_once() and desk.view()["list"] == [] and desk.arrived == 0
    assert not desk.poll_once()  # unchanged: 304 with the ETag
    shopper = signed_in_shopper(server, PHONE_A)
    r = shopper.post("/api/v1/orders", json={"stall_id": sim.stall_id, "slot_start": first_slot(shopper),
                                              "lines": [{"plu": "1001", "est_weight_g": 500},
                                                        {"plu": "3001", "quantity": 2}]})
    oid = r.json()["id"]
    assert desk.poll_once()
    view = desk.view()
    assert (desk.arrived, view["waiting"], view["tolerance_pct"]) == (1, 1, 10)
    assert [(o["id"], o["phone_masked"]) for o in view["list"]] == [(oid, "138****8000")]

    done = desk.accept(oid, [2])
    assert done.ok and done.order is not None and done.order.state == "accepted"
    assert [ln.state for ln in done.order.lines] == ["accepted", "declined"]
    again = desk.accept(oid, [])
    assert not again.ok and not again.offline and "cannot accept" in (again.reason or "")
    assert desk.start_weighing(oid).order.state == "weighing"  # type: ignore[union-attr]
    paused = desk.set_open(False)
    assert paused.ok and desk.view()["open"] is False
    assert shopper.get("/api/v1/shop/stalls").json()[0]["open"] is False
    assert desk.arrived == 1  # an order seen again is no new arrival
    desk.poll_once()
    assert desk.arrived == 1

    # Another stall's token sees none of it, and cannot decide for it.
    other_token = register_stall(server, StallSim("S03"), name="张记")
    other = OrderDesk(server.url, other_token, stall_id="S03", wait_s=0)
    assert other.poll_once() and other.view()["list"] == []
    refused = other.cancel(oid, "不是我的 / not mine")
    assert not refused.ok and "no order" in (refused.reason or "")

    away = OrderDesk(f"http://127.0.0.1:{free_port()}", token, stall_id=sim.stall_id, wait_s=0,
                     stop_event=stop, timeout_s=1)
    result = away.accept(oid, [])
    assert not result.ok and result.offline and "server away" in (result.reason or "")
    try:
        away.poll_once()
    except httpx.HTTPError:
        pass
    else:
        raise AssertionError("a server away must raise for the back-off loop")


def test_an_order_attached_to_the_basket_survives_a_restart_and_goes_into_the_sale(tmp_path: Path) -> None:
    """The open basket fulfils order 7 (no server needed): kept with the basket across a
    restart, its sale carries ``order_id`` and its receipt the order's number."""
    from tests.edge.test_faults import config, start

    cfg = config(tmp_path, screens={"enabled": False})
    app = start(cfg)
    try:
        assert app.flow is not None and app.orders is None  # no token: no order desk
        assert app.flow.attach_order(7).ok and app.flow.snapshot().order_id == 7
        assert app.flow.add_pieces("2011", 2).ok
        refused = app.flow.attach_order(8)  # a basket with lines takes no other order
        assert not refused.ok and "check out or discard" in (refused.reason or "")
    finally:
        app.stop()
    again = start(cfg)
    try:
        assert again.flow is not None
        snap = again.flow.snapshot()
        assert snap.order_id == 7 and [ln.plu for ln in snap.basket] == ["2011"]
        result = again.flow.checkout()
        assert result.ok and result.sale is not None
        assert (result.sale.model_extra or {})["order_id"] == 7
        receipt = sorted((cfg.data_dir / "receipts").glob("*.bin"))[-1].read_bytes()
        assert "网上订单 #7".encode("gb18030") in receipt
        assert again.flow.snapshot().order_id is None  # the next basket is a walk-in's
    finally:
        again.stop()
