"""Sale ingest through a real HTTP server on SQLite and PostgreSQL."""

from __future__ import annotations

import copy

from tests.conftest import LiveServer
from tests.server.conftest import ADMIN, StallSim


def _register(server: LiveServer, sim: StallSim, name: str = "王记鲜果") -> str:
    with server.client(ADMIN) as c:
        r = c.post("/api/v1/stalls", json={"stall_id": sim.stall_id, "name": name,
                                           "public_key": sim.public_key})
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def test_sale_from_contract_example_becomes_stats(server: LiveServer) -> None:
    sim = StallSim("S01")
    token = _register(server, sim)
    sale = sim.sale([("1001", "西红柿", 512, 300, "500g")])
    assert sale["lines"][0]["amount_fen"] == 307  # 0.512 kg at 3.00 元/500g = 3.072 -> 3.07
    with server.client(token) as c:
        r = c.post("/api/v1/sales", json={"sales": [sale]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["accepted"] == 1 and body["refused"] == 0
        assert body["results"][0] == {"sale_id": sale["sale_id"], "status": "accepted",
                                      "reason": None, "flags": []}
        today = c.get("/api/v1/stats/today").json()
    assert today["sales"] == 1
    assert today["total_fen"] == 307
    assert today["ranking"] == [{"stall_id": "S01", "name": "王记鲜果", "sales": 1, "total_fen": 307}]
    assert today["items"][0]["weight_g"] == 512


def test_upload_is_idempotent_and_ranks_stalls(server: LiveServer) -> None:
    a, b = StallSim("S01"), StallSim("S02")
    ta, tb = _register(server, a, "甲"), _register(server, b, "乙")
    sales_a = [a.sale([("1", "香蕉", 1000, 690, "kg")]) for _ in range(3)]
    sales_b = [b.sale([("2", "黄瓜", 500, 260, "500g"), ("3", "土豆", 2000, 280, "kg")])]
    with server.client(ta) as c:
        assert c.post("/api/v1/sales", json={"sales": sales_a[:2]}).json()["accepted"] == 2
        again = c.post("/api/v1/sales", json={"sales": sales_a}).json()
        assert [r["status"] for r in again["results"]] == ["duplicate", "duplicate", "accepted"]
    with server.client(tb) as c:
        assert c.post("/api/v1/sales", json={"sales": sales_b}).json()["accepted"] == 1
        today = c.get("/api/v1/stats/today").json()
    assert today["sales"] == 4
    assert today["total_fen"] == 3 * 690 + 260 + 560
    assert [r["stall_id"] for r in today["ranking"]] == ["S01", "S02"]
    assert [r["total_fen"] for r in today["ranking"]] == [2070, 820]


def test_bad_sales_are_refused_one_by_one(server: LiveServer) -> None:
    sim = StallSim("S01")
    token = _register(server, sim)
    good = sim.sale([("1", "香蕉", 1000, 690, "kg")])
    wrong_amount = sim.sale([("1", "香蕉", 1000, 690, "kg")])
    wrong_amount["lines"][0]["amount_fen"] += 1
    wrong_amount["total_fen"] += 1
    other_stall = StallSim("S02").sale([("1", "香蕉", 1000, 690, "kg")])
    garbage = {"sale_id": "not-a-uuid", "lines": "nope"}
    with server.client(token) as c:
        body = c.post("/api/v1/sales", json={"sales": [good, wrong_amount, other_stall, garbage, 7]}).json()
    statuses = [r["status"] for r in body["results"]]
    assert statuses == ["accepted", "refused", "refused", "refused", "refused"]
    assert "amount" in body["results"][1]["reason"]
    assert "S02" in body["results"][2]["reason"]
    assert body["results"][3]["sale_id"] == "not-a-uuid"


def test_forged_and_unchained_sales_are_kept_and_flagged(server: LiveServer) -> None:
    sim = StallSim("S01")
    token = _register(server, sim)
    first = sim.sale([("1", "香蕉", 1000, 690, "kg")])
    forged = sim.sale([("1", "香蕉", 2000, 690, "kg")])
    forged["signature"] = sim.sale([("1", "香蕉", 1, 690, "kg")])["signature"]  # someone else's
    sim.prev = "f" * 64  # a deleted receipt breaks the chain
    sim.receipt_no += 1
    unchained = sim.sale([("1", "香蕉", 500, 690, "kg")])
    with server.client(token) as c:
        res = c.post("/api/v1/sales", json={"sales": [first, forged]}).json()["results"]
        assert res[0]["flags"] == [] and res[1]["flags"] == ["bad_signature"]
        res = c.post("/api/v1/sales", json={"sales": [unchained]}).json()["results"]
        assert res[0]["status"] == "accepted"
    with server.client(ADMIN) as c:
        stored = c.get(f"/api/v1/sales/{forged['sale_id']}").json()
    assert stored["verified"] is False and stored["flags"] == ["bad_signature"]


def test_changed_sale_with_same_id_is_refused(server: LiveServer) -> None:
    sim = StallSim("S01")
    token = _register(server, sim)
    sale = sim.sale([("1", "香蕉", 1000, 690, "kg")])
    altered = copy.deepcopy(sale)
    altered["sold_at"] = "2026-01-01T08:00:00+08:00"
    with server.client(token) as c:
        c.post("/api/v1/sales", json={"sales": [sale]})
        r = c.post("/api/v1/sales", json={"sales": [altered]}).json()["results"][0]
    assert r["status"] == "refused" and "different sale" in r["reason"]


def test_auth_and_malformed_bodies(server: LiveServer) -> None:
    sim = StallSim("S01")
    token = _register(server, sim)
    with server.client() as anon:
        assert anon.post("/api/v1/sales", json={"sales": [{}]}).status_code == 401
        assert anon.post("/api/v1/stalls", json={"stall_id": "S09", "name": "x"}).status_code == 401
    with server.client("wrong") as c:
        assert c.post("/api/v1/sales", json={"sales": [{}]}).status_code == 401
    with server.client(token) as c:
        r = c.post("/api/v1/sales", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 422
        assert c.post("/api/v1/sales", json={"sales": []}).status_code == 422
        assert c.post("/api/v1/sales", json={"sales": [{}] * 501}).status_code == 422
        assert c.post("/api/v1/sales", json=[1, 2]).status_code == 422
    with server.client(ADMIN) as c:
        dup = c.post("/api/v1/stalls", json={"stall_id": "S01", "name": "again"})
        assert dup.status_code == 409
        bad = c.post("/api/v1/stalls", json={"stall_id": "S 1", "name": "x"})
        assert bad.status_code == 422
        badkey = c.post("/api/v1/stalls", json={"stall_id": "S05", "name": "x", "public_key": "abc"})
        assert badkey.status_code == 422


def test_stall_registers_its_key_once(server: LiveServer) -> None:
    sim = StallSim("S01")
    with server.client(ADMIN) as c:
        token = c.post("/api/v1/stalls", json={"stall_id": "S01", "name": "甲"}).json()["token"]
    other = StallSim("S01")
    with server.client(token) as c:
        assert c.put("/api/v1/stalls/S01/key", json={"public_key": sim.public_key}).status_code == 200
        assert c.put("/api/v1/stalls/S01/key", json={"public_key": sim.public_key}).status_code == 200
        assert c.put("/api/v1/stalls/S01/key", json={"public_key": other.public_key}).status_code == 409
        assert c.put("/api/v1/stalls/S02/key", json={"public_key": sim.public_key}).status_code == 403
        assert c.get("/api/v1/stalls").json() == [{"stall_id": "S01", "name": "甲", "has_key": True}]


def test_generated_admin_token_is_shown_once_and_kept(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from server.app import create_app
    from server.settings import Settings

    url = f"sqlite:///{tmp_path / 'm.db'}"
    first = create_app(Settings(db_url=url))
    token = first.state.generated_admin_token
    assert token and len(token) >= 32
    again = create_app(Settings(db_url=url))
    assert again.state.generated_admin_token is None
    with LiveServer(again) as srv:
        with srv.client(token) as c:
            assert c.post("/api/v1/stalls", json={"stall_id": "S01", "name": "甲"}).status_code == 201
        with srv.client("not-it") as c:
            assert c.post("/api/v1/stalls", json={"stall_id": "S02", "name": "乙"}).status_code == 401


def test_same_sale_twice_in_one_batch_counts_once(server: LiveServer) -> None:
    sim = StallSim("S01")
    token = _register(server, sim)
    sale = sim.sale([("1", "香蕉", 1000, 690, "kg")])
    nxt = sim.sale([("1", "香蕉", 500, 690, "kg")])
    with server.client(token) as c:
        body = c.post("/api/v1/sales", json={"sales": [sale, sale, nxt]}).json()
        today = c.get("/api/v1/stats/today").json()
    assert [r["status"] for r in body["results"]] == ["accepted", "duplicate", "accepted"]
    assert [r["flags"] for r in body["results"]] == [[], [], []]
    assert today["sales"] == 2 and today["total_fen"] == 690 + 345
    assert today["items"] == [{"plu": "1", "name": "香蕉", "lines": 2, "weight_g": 1500, "quantity": 0,
                               "amount_fen": 1035}]


def test_concurrent_uploads_of_the_same_sales_store_each_once(server: LiveServer) -> None:
    from concurrent.futures import ThreadPoolExecutor

    sim = StallSim("S01")
    token = _register(server, sim)
    batch = [sim.sale([("1", "香蕉", 100 + i, 690, "kg")]) for i in range(20)]

    def upload(_: int) -> dict:  # type: ignore[type-arg]
        with server.client(token) as c:
            r = c.post("/api/v1/sales", json={"sales": batch})
            assert r.status_code in (200, 409), r.text
            return r.json() if r.status_code == 200 else {"accepted": 0}

    with ThreadPoolExecutor(6) as pool:
        bodies = list(pool.map(upload, range(6)))
    assert sum(b["accepted"] for b in bodies) == 20
    with server.client() as c:
        assert c.get("/api/v1/stats/today").json()["sales"] == 20


def test_sale_on_the_shopper_friendly_rule(server: LiveServer) -> None:
    from edge.integrity import sign_sale

    sim = StallSim("S01")
    token = _register(server, sim)
    sale = sim.sale([("1", "香蕉", 1234, 690, "kg")])   # 8.5146 元: half-up 851, down-jiao 850
    assert sale["lines"][0]["amount_fen"] == 851
    sale["lines"][0]["amount_fen"] = sale["total_fen"] = 850
    unsigned = {**sale, "signature": ""}
    sale["signature"] = sign_sale(unsigned, sim.key)
    claimed = {**sale, "rounding": "down-jiao"}
    claimed["signature"] = sign_sale({**claimed, "signature": ""}, sim.key)
    bogus = {**claimed, "rounding": "up-yuan"}
    with server.client(token) as c:
        res = c.post("/api/v1/sales", json={"sales": [sale, bogus, claimed]}).json()["results"]
    assert res[0]["status"] == "refused" and "amount" in res[0]["reason"]
    assert res[1]["status"] == "refused" and "rounding" in res[1]["reason"]
    assert res[2]["status"] == "accepted"


def test_refunds_are_checked_and_counted_once(server: LiveServer) -> None:
    a, b = StallSim("S01"), StallSim("S02")
    ta, tb = _register(server, a, "甲"), _register(server, b, "乙")
    sale = a.sale([("1", "香蕉", 1000, 690, "kg"), ("2", "黄瓜", 500, 260, "500g")])
    with server.client(ta) as c:
        c.post("/api/v1/sales", json={"sales": [sale]})
    import datetime as dt

    from tests.server.conftest import SHANGHAI

    at = dt.datetime.now(SHANGHAI).isoformat(timespec="seconds")
    good = {"sale_id": sale["sale_id"], "line_no": 2, "amount_fen": 260, "reason": "坏了",
            "operator": "甲", "at": at}
    wrong_amount = {**good, "line_no": 1, "amount_fen": 1}
    no_line = {**good, "line_no": 3}
    naive_time = {**good, "line_no": 1, "amount_fen": 690, "at": at[:19]}
    with server.client(ta) as c:
        res = c.post("/api/v1/refunds", json={"refunds": [good, good, wrong_amount, no_line, naive_time,
                                                           "junk"]}).json()["results"]
        assert [r["status"] for r in res] == ["accepted", "duplicate", "refused", "refused", "refused",
                                              "refused"]
        assert "690" in res[2]["reason"] and "no line 3" in res[3]["reason"]
        assert c.post("/api/v1/refunds", json={"refunds": []}).status_code == 422
    with server.client(tb) as c:  # another stall cannot refund S01's sale
        res = c.post("/api/v1/refunds", json={"refunds": [{**good, "line_no": 1, "amount_fen": 690}]})
        assert res.json()["results"][0]["status"] == "refused"
    with server.client() as c:
        assert c.post("/api/v1/refunds", json={"refunds": [good]}).status_code == 401
        today = c.get("/api/v1/stats/today").json()
    assert today["refunds"] == 1 and today["refunds_fen"] == 260
