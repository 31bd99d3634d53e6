"""Online orders on the market server (issue 19): a shopper signs in with her phone, orders at a
stall with estimates and a pickup slot; the stall accepts, declines a line, weighs; the sale
that carries the order's id settles it to the 分, once.  A real server on 127.0.0.1, SQLite
and PostgreSQL; a second shopper never sees the first one's orders."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from typing import Any

import httpx
import pytest

from edge.pricing import line_amount_fen
from server import orders
from server.app import create_app
from server.settings import Settings
from tests.conftest import LiveServer
from tests.server.conftest import ADMIN, SHANGHAI, StallSim, register_stall

PHONE_A, PHONE_B = "13800138000", "13900139000"


def set_up_order_stall(srv: LiveServer) -> tuple[StallSim, str]:
    sim = StallSim("S01")
    token = register_stall(srv, sim, name="李家蔬菜")
    with srv.client(ADMIN) as c:
        for plu, name, en, unit in (("1001", "西红柿", "Tomato", "kg"), ("1002", "黄瓜", "Cucumber", "500g"),
                                    ("3001", "玉米", "Corn", "piece"), ("1003", "青菜", "Greens", "kg")):
            assert c.post("/api/v1/items", json={"plu": plu, "name": name, "name_en": en, "category": "蔬菜",
                                                 "price_unit": unit, "cap_fen": 5000}).status_code == 201
        for plu, fen in (("1001", 800), ("1002", 350), ("3001", 250), ("1003", 600)):
            r = c.put(f"/api/v1/prices/S01/{plu}", json={"unit_price_fen": fen, "why": "开市定价"})
            assert r.status_code == 200, r.text
        r = c.post("/api/v1/inspections", json={
            "batch_code": "B-1003", "plu": "1003", "stall_id": "S01", "inhibition_percent": 62.5,
            "tester": "张检", "tested_at": dt.datetime.now(SHANGHAI).isoformat()})
        assert r.status_code == 201, r.text
        now = dt.datetime.now(SHANGHAI)
        r = c.post("/api/v1/promotions", json={  # cucumbers on special: 3.00 instead of 3.50 元/500g
            "stall_id": "S01", "plu": "1002", "special_price_fen": 300, "title": "晚市特价",
            "starts_at": (now - dt.timedelta(hours=1)).isoformat(),
            "ends_at": (now + dt.timedelta(hours=3)).isoformat()})
        assert r.status_code == 201, r.text
    return sim, token


def signed_in_shopper(srv: LiveServer, phone: str) -> httpx.Client:
    c = httpx.Client(base_url=srv.url, timeout=10)
    sent = c.post("/api/v1/shop/code", json={"phone": phone})
    assert sent.status_code == 200, sent.text
    r = c.post("/api/v1/shop/sign-in", json={"phone": phone, "code": sent.json()["shown_code"]})
    assert r.status_code == 200, r.text
    assert r.json() == {"phone": f"{phone[:3]}****{phone[-4:]}"}
    return c


def first_slot(c: httpx.Client) -> str:
    slots = c.get("/api/v1/shop/slots").json()["slots"]
    assert slots
    return str(slots[0]["start"])


def test_an_order_is_placed_accepted_weighed_and_settled_by_its_sale(server: LiveServer) -> None:
    sim, token = set_up_order_stall(server)
    stalls = httpx.get(f"{server.url}/api/v1/shop/stalls").json()
    assert [(s["stall_id"], s["open"], s["online"], s["items"]) for s in stalls] == [("S01", True, False, 4)]
    assert httpx.get(f"{server.url}/api/v1/shop/stalls/S77").status_code == 404
    items = {i["plu"]: i for i in httpx.get(f"{server.url}/api/v1/shop/stalls/S01").json()["items"]}
    assert items["1001"]["unit_price_fen"] == 800 and items["1001"]["price_unit"] == "kg"
    assert items["1003"]["inspection"] == "fail" and not items["1003"]["orderable"]
    cucumber = items["1002"]
    assert (cucumber["unit_price_fen"], cucumber["regular_price_fen"], cucumber["special_title"],
            cucumber["price_unit"]) == (300, 350, "晚市特价", "500g")

    a, b = signed_in_shopper(server, PHONE_A), signed_in_shopper(server, PHONE_B)
    slot = first_slot(a)
    body = {"stall_id": "S01", "slot_start": slot, "lines": [
        {"plu": "1001", "est_weight_g": 1000}, {"plu": "1002", "est_weight_g": 500},
        {"plu": "3001", "quantity": 3}]}
    r = a.post("/api/v1/orders", json=body)
    assert r.status_code == 201, r.text
    order = r.json()
    oid = order["id"]
    assert order["state"] == "placed" and order["state_zh"] == "待摊位接单"
    assert order["estimate_fen"] == 800 + 300 + 750  # the special's price while it runs
    assert len(order["pickup_code"]) == 4 and order["stall_online"] is False
    assert "phone_masked" not in order or order["phone_masked"] is None
    # Her own only: the other shopper sees none of it, and no order by its number.
    assert b.get("/api/v1/orders").json() == []
    assert b.get(f"/api/v1/orders/{oid}").status_code == 404
    assert [o["id"] for o in a.get("/api/v1/orders").json()] == [oid]
    assert httpx.get(f"{server.url}/api/v1/orders").status_code == 401

    # The stall, offline until now, finds it waiting; a long poll with its ETag answers on a change.
    with server.client(token) as st:
        first = st.get("/api/v1/stall/orders")
        assert first.status_code == 200
        assert [(o["id"], o["state"], o["phone_masked"]) for o in first.json()["orders"]] == \
            [(oid, "placed", "138****8000")]
        # the stall never sees the pickup code: the shopper shows it, the vendor types it
        assert first.json()["orders"][0]["pickup_code"] is None
        tag = first.headers["etag"]
        assert st.get("/api/v1/stall/orders", headers={"If-None-Match": tag}).status_code == 304
        answer: dict[str, Any] = {}

        def poll() -> None:
            with server.client(token) as c2:
                answer["r"] = c2.get("/api/v1/stall/orders", params={"wait": 20},
                                     headers={"If-None-Match": tag})

        waiter = threading.Thread(target=poll)
        waiter.start()
        r = st.post(f"/api/v1/stall/orders/{oid}/accept", json={"declined": [2]})
        assert r.status_code == 200, r.text
        waiter.join(15)
        assert answer["r"].status_code == 200
        assert answer["r"].json()["orders"][0]["state"] == "accepted"
        assert st.post(f"/api/v1/stall/orders/{oid}/accept", json={}).status_code == 409
        code = order["pickup_code"]
        assert st.post(f"/api/v1/stall/orders/{oid}/picked-up",
                       json={"payment": "cash", "pickup_code": code}).status_code == 409
        assert st.post(f"/api/v1/stall/orders/{oid}/weighing").json()["state"] == "weighing"
        # The shopper can no longer cancel: the stall accepted it.
        assert a.post(f"/api/v1/orders/{oid}/cancel").status_code == 409

        # Weighed: 1.088 kg of tomatoes (8.8 % over: inside 10 %), three corn cobs.
        sale = sim.sale([("1001", "西红柿", 1088, 800, "kg")], extra={"order_id": oid})
        corn = {"plu": "3001", "name": "玉米", "weight_g": None, "quantity": 3, "unit_price_fen": 250,
                "price_unit": "piece", "amount_fen": 750, "batch_code": None}
        sale = _resign(sim, sale, extra_line=corn)
        up = st.post("/api/v1/sales", json={"sales": [sale]})
        assert up.json()["results"][0]["status"] == "accepted", up.text
        # A second sale for the same order is refused: never fulfilled twice.
        twice = sim.sale([("1001", "西红柿", 500, 800, "kg")], extra={"order_id": oid})
        res = st.post("/api/v1/sales", json={"sales": [twice]}).json()["results"][0]
        assert res["status"] == "refused" and "fulfilled already" in res["reason"]
        # Sent again as is (its answer lost): a duplicate, the order unchanged.
        assert st.post("/api/v1/sales", json={"sales": [sale]}).json()["results"][0]["status"] == "duplicate"

        done = a.get(f"/api/v1/orders/{oid}").json()
        assert done["state"] == "ready" and done["ready_at"] and done["sale_id"] == sale["sale_id"]
        assert done["final_fen"] == sale["total_fen"] == line_amount_fen(
            unit_price_fen=800, price_unit="kg", weight_g=1088) + 750
        lines = {ln["plu"]: ln for ln in done["lines"]}
        assert (lines["1001"]["state"], lines["1001"]["final_weight_g"], lines["1001"]["over_tolerance"]) == \
            ("weighed", 1088, False)
        assert lines["1002"]["state"] == "declined" and done["partly_declined"]
        assert (lines["3001"]["final_quantity"], lines["3001"]["final_amount_fen"]) == (3, 750)

        # handed over only against the shopper's code: a wrong one, or none, is refused and changes nothing
        wrong = f"{(int(code) + 1) % 10_000:04d}"
        r = st.post(f"/api/v1/stall/orders/{oid}/picked-up", json={"payment": "qr", "pickup_code": wrong})
        assert r.status_code == 422 and "取货码不对" in r.json()["detail"], r.text
        assert st.post(f"/api/v1/stall/orders/{oid}/picked-up", json={"payment": "qr"}).status_code == 422
        assert a.get(f"/api/v1/orders/{oid}").json()["state"] == "ready"
        r = st.post(f"/api/v1/stall/orders/{oid}/picked-up", json={"payment": "qr", "pickup_code": code})
        assert (r.json()["state"], r.json()["payment"]) == ("picked_up", "qr")
        assert st.get("/api/v1/stall/orders").json()["orders"] == []

    share = httpx.get(f"{server.url}/api/v1/stats/online-share").json()
    assert (share["online_sales"], share["online_fen"], share["sales"]) == (1, sale["total_fen"], 1)
    assert share["share_pct"] == 100.0
    with server.client(ADMIN) as m:
        listed = m.get("/api/v1/orders-all").json()
        assert [(o["id"], o["state"], o["phone_masked"]) for o in listed] == \
            [(oid, "picked_up", "138****8000")]
        page = m.get("/manage/orders")  # the manager's page: the order and the day's online share
    assert page.status_code == 200, page.text
    assert f'data-id="{oid}" data-state="picked_up"' in page.text and "138****8000" in page.text
    assert '<span class="num" id="share-pct">100.0 %</span>' in page.text


def _resign(sim: StallSim, sale: dict[str, Any], *, extra_line: dict[str, Any]) -> dict[str, Any]:
    """The sale with one more line, signed again as the stall would have (same receipt)."""
    from edge.integrity import sale_digest, sign_sale

    sale = json.loads(json.dumps(sale))
    sale["lines"].append(extra_line)
    sale["total_fen"] = sum(ln["amount_fen"] for ln in sale["lines"])
    sale["signature"] = ""
    sale["signature"] = sign_sale(sale, sim.key)
    sim.prev = sale_digest(sale)
    return sale


def test_an_order_is_read_with_its_lines_as_one_commit_left_them(server: LiveServer) -> None:
    """A read of open orders takes each order's lines in the same statement: an accept committed
    between the order's row and its lines once made a stall's long poll answer an order still
    "placed" with its lines already accepted (PostgreSQL: each statement reads its own snapshot).
    Here the accept commits after the read and before the lines are looked at."""
    _, token = set_up_order_stall(server)
    a = signed_in_shopper(server, PHONE_A)
    r = a.post("/api/v1/orders", json={"stall_id": "S01", "slot_start": first_slot(a), "lines": [
        {"plu": "1001", "est_weight_g": 1000}, {"plu": "3001", "quantity": 3}]})
    assert r.status_code == 201, r.text
    oid = r.json()["id"]
    with server.app.state.sessionmaker() as reading:
        (order,) = orders.open_for_stall(reading, "S01")
        with server.client(token) as st:
            assert st.post(f"/api/v1/stall/orders/{oid}/accept", json={"declined": [2]}).status_code == 200
        assert (order.state, [ln.state for ln in order.lines]) == ("placed", ["pending", "pending"])
    with server.app.state.sessionmaker() as reading:
        (order,) = orders.open_for_stall(reading, "S01")
        assert (order.state, [ln.state for ln in order.lines]) == ("accepted", ["accepted", "declined"])
        mine = orders.list_for_phone(reading, order.phone_key)
        assert [(o.id, len(o.lines)) for o in mine] == [(oid, 2)]


def test_weighed_far_from_the_estimate_and_other_refusals(server: LiveServer) -> None:
    sim, token = set_up_order_stall(server)
    a = signed_in_shopper(server, PHONE_A)
    slot = first_slot(a)

    def order(**change: Any) -> httpx.Response:
        return a.post("/api/v1/orders", json={"stall_id": "S01", "slot_start": slot,
                                              "lines": [{"plu": "1001", "est_weight_g": 500}], **change})

    refusals = {
        "invalid weight": (order(lines=[{"plu": "1001", "est_weight_g": 5}]), 422, "预计重量"),
        "a count for a weighed item": (order(lines=[{"plu": "1001", "quantity": 2}]), 422, "按重量卖"),
        "a weight for a piece item": (order(lines=[{"plu": "3001", "est_weight_g": 500}]), 422, "按件卖"),
        "unknown item": (order(lines=[{"plu": "9999", "est_weight_g": 500}]), 404, "no item 9999"),
        "unknown stall": (order(stall_id="S77"), 404, "no stall S77"),
        "failed batch": (order(lines=[{"plu": "1003", "est_weight_g": 500}]), 409, "rapid test"),
        "expired slot": (order(slot_start=(dt.datetime.now(SHANGHAI) - dt.timedelta(hours=1)).replace(
            minute=0, second=0, microsecond=0).isoformat()), 422, "has passed"),
        "repeated item": (order(lines=[{"plu": "1001", "est_weight_g": 500}] * 2), 422, "one line per item"),
    }
    for what, (r, code, text) in refusals.items():
        assert r.status_code == code, (what, r.text)
        assert text in r.json()["detail"], (what, r.text)
    assert a.get("/api/v1/orders").json() == []  # nothing stored by a refusal

    a = signed_in_shopper(server, PHONE_B)  # the refusals counted against the first phone's rate limit
    with server.client(token) as st:  # the vendor pauses orders: the stall is closed
        assert st.put("/api/v1/stall/orders-desk", json={"open": False}).json() == {"open": False}
        closed = order()
        assert closed.status_code == 409 and "暂停接单" in closed.json()["detail"]
        st.put("/api/v1/stall/orders-desk", json={"open": True})
        oid = order().json()["id"]
        st.post(f"/api/v1/stall/orders/{oid}/accept", json={"declined": []})
        # 560 g against an estimate of 500 g: 12 % over, beyond the 10 % tolerance.
        sale = sim.sale([("1001", "西红柿", 560, 800, "kg")], extra={"order_id": oid})
        assert st.post("/api/v1/sales", json={"sales": [sale]}).json()["results"][0]["status"] == "accepted"
        other = order().json()["id"]
        # A sale naming another stall's order, or a cancelled one, is refused.
        a.post(f"/api/v1/orders/{other}/cancel")
        res = st.post("/api/v1/sales", json={"sales": [sim.sale([("1001", "西红柿", 500, 800, "kg")],
                                                                extra={"order_id": other})]}).json()
        assert res["results"][0]["status"] == "refused" and "cancelled" in res["results"][0]["reason"]
    done = a.get(f"/api/v1/orders/{oid}").json()
    assert done["over_tolerance"] and done["lines"][0]["over_tolerance"]
    assert (done["estimate_fen"], done["final_fen"]) == (400, 448)
    cancelled = a.get(f"/api/v1/orders/{other}").json()
    assert cancelled["state"] == "cancelled" and cancelled["cancelled_at"]


def test_order_endpoints_are_rate_limited_per_phone_and_address(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(db_url=f"sqlite:///{tmp_path / 'm.db'}", admin_token=ADMIN,
                        order_rate_phone="3/minute", order_rate_addr="7/minute")
    with LiveServer(create_app(settings)) as srv:
        set_up_order_stall(srv)
        a = signed_in_shopper(srv, PHONE_A)  # one sign-in counted against the address (codes sent: their own)
        slot = first_slot(a)
        body = {"stall_id": "S01", "slot_start": slot, "lines": [{"plu": "1001", "est_weight_g": 500}]}
        codes = [a.post("/api/v1/orders", json=body).status_code for _ in range(4)]
        assert codes == [201, 201, 201, 429]  # the phone's limit
        last = a.post("/api/v1/orders", json=body)
        assert last.status_code == 429 and int(last.headers["retry-after"]) >= 1
        assert "太频繁" in last.json()["detail"] and "phone" in last.json()["detail"]
        # Another phone from the same address: its own phone limit is fresh, the address's is not.
        b = signed_in_shopper(srv, PHONE_B)
        r = b.post("/api/v1/orders", json=body)
        assert r.status_code == 429 and "address" in r.json()["detail"]
        assert len(a.get("/api/v1/orders").json()) == 3


def test_a_phone_number_that_is_not_one_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with LiveServer(create_app(Settings(db_url=f"sqlite:///{tmp_path / 'm.db'}", admin_token=ADMIN))) as srv:
        for phone in ("12345678901", "2380013800x", "138 0013 80001", "abcdefghijk", "12"):
            r = httpx.post(f"{srv.url}/api/v1/shop/code", json={"phone": phone})
            assert r.status_code == 422, (phone, r.text)
            text = json.dumps(r.json(), ensure_ascii=False)
            assert "手机号" in text or r.json()["detail"][0]["loc"] == ["body", "phone"], text
            assert "set-cookie" not in r.headers


@pytest.mark.postgres
def test_an_order_placed_on_one_server_process_wakes_the_stall_waiting_on_another(postgres_url: str) -> None:
    """Two servers on one PostgreSQL database (``--workers 2``): the stall's long poll on one
    is woken by an order placed through the other (NOTIFY in the order's own transaction),
    and the shopper's live page on the first by the stall's accept on the second."""
    from tests.server.conftest import reset_postgres

    reset_postgres(postgres_url)
    a = create_app(Settings(db_url=postgres_url, admin_token=ADMIN))
    b = create_app(Settings(db_url=postgres_url, admin_token=ADMIN))
    with LiveServer(a) as srv_a, LiveServer(b) as srv_b:
        _, token = set_up_order_stall(srv_a)
        assert a.state.listener.listening.wait(10) and b.state.listener.listening.wait(10)
        with srv_b.client(token) as st:
            tag = st.get("/api/v1/stall/orders").headers["etag"]
            shopper = signed_in_shopper(srv_a, PHONE_A)
            answer: dict[str, Any] = {}

            def poll() -> None:
                with srv_b.client(token) as c2:
                    answer["r"] = c2.get("/api/v1/stall/orders", params={"wait": 20},
                                         headers={"If-None-Match": tag})
                    answer["at"] = time.monotonic()

            waiter = threading.Thread(target=poll)
            waiter.start()
            time.sleep(0.5)  # the long poll waits on server b
            r = shopper.post("/api/v1/orders", json={"stall_id": "S01", "slot_start": first_slot(shopper),
                                                     "lines": [{"plu": "1001", "est_weight_g": 500}]})
            placed = time.monotonic()
            assert r.status_code == 201, r.text
            waiter.join(20)
            assert answer["r"].status_code == 200 and answer["at"] - placed < 5  # not the 20 s timeout
            oid = r.json()["id"]
            assert [o["id"] for o in answer["r"].json()["orders"]] == [oid]

            with shopper.stream("GET", "/api/v1/shop/events") as events:  # on server a
                lines = events.iter_lines()
                first = next(line for line in lines if line.startswith("data: "))
                assert json.loads(first[6:])[0]["state"] == "placed"
                accepted = time.monotonic()
                assert st.post(f"/api/v1/stall/orders/{oid}/accept", json={}).status_code == 200
                later = next(line for line in lines if line.startswith("data: "))
                assert json.loads(later[6:])[0]["state"] == "accepted"
                assert time.monotonic() - accepted < 5  # woken, not the 15 s keep-alive
