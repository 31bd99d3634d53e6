"""The fair scale's part of the market server (issue 19 item 4): its token, the receipt look-up,
checks judged by the legal tolerance and recorded either way, the short-weight alert, refunded,
forged and unverified receipts, bad input, the manager's list and the complaint rate per stall.
A real server on 127.0.0.1, SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from tests.conftest import LiveServer
from tests.server.conftest import ADMIN, SHANGHAI, StallSim, register_stall


def _check(trace_code: str, measured_g: int, line_no: int | None = 1, **more: Any) -> dict[str, Any]:
    return {"check_id": str(uuid.uuid4()), "trace_code": trace_code, "line_no": line_no,
            "measured_g": measured_g, "e_g": 5,
            "checked_at": dt.datetime.now(SHANGHAI).isoformat(timespec="seconds"), **more}


def test_a_check_is_judged_recorded_and_a_short_weight_alerted(server: LiveServer) -> None:
    a = StallSim("S01")
    token = register_stall(server, a, name="王记蔬菜")
    sale = a.sale([("1001", "西红柿", 1000, 600, "kg"), ("1002", "黄瓜", 500, 260, "500g")])
    with server.client(token) as c:
        assert c.post("/api/v1/sales", json={"sales": [sale]}).json()["accepted"] == 1
    code, sig = sale["trace_code"], sale["signature"]

    # only the fair scale's own token: none, a stall's, the admin's are refused before the body
    with server.client() as c:
        assert c.post("/api/v1/fair-checks", json=_check(code, 960)).status_code == 401
    for other in (token, ADMIN):
        with server.client(other) as c:
            assert c.post("/api/v1/fair-checks", json=_check(code, 960)).status_code == 401
            assert c.get("/api/v1/fair-checks/receipt", params={"trace_code": code}).status_code == 401
    with server.client(ADMIN) as c:
        assert c.get("/api/v1/fair-scale/token").json() == {"issued": False, "issued_by": None,
                                                             "issued_at": None}
        fair = c.put("/api/v1/fair-scale/token").json()["token"]

    with server.client(fair) as c:
        view = c.get("/api/v1/fair-checks/receipt", params={"trace_code": code, "s": sig}).json()
        assert view["state"] == "genuine" and view["stall_id"] == "S01" and view["stall_name"] == "王记蔬菜"
        assert [(ln["line_no"], ln["name"], ln["weight_g"], ln["refunded"]) for ln in view["lines"]] == [
            (1, "西红柿", 1000, False), (2, "黄瓜", 500, False)]

        short = _check(code, 960, signature=sig)
        r = c.post("/api/v1/fair-checks", json=short)
        assert r.status_code == 201, r.text
        out = r.json()
        assert (out["verdict"], out["receipt_g"], out["measured_g"], out["diff_g"], out["tolerance_mg"]) == (
            "short", 1000, 960, -40, 5000)
        assert out["alert_id"] is not None and "短斤少两" in out["message_zh"]
        again = c.post("/api/v1/fair-checks", json=short)  # the answer was lost: sent again
        assert again.status_code == 200 and again.json()["status"] == "duplicate"
        assert again.json()["alert_id"] == out["alert_id"]

        # within the in-service MPE (2 x 0.5 e = 5 g at 1 kg), heavier, the whole receipt (5 + 5 g)
        assert c.post("/api/v1/fair-checks", json=_check(code, 995)).json()["verdict"] == "ok"
        assert c.post("/api/v1/fair-checks", json=_check(code, 994)).json()["verdict"] == "short"
        assert c.post("/api/v1/fair-checks", json=_check(code, 1030)).json()["verdict"] == "ok"
        whole = c.post("/api/v1/fair-checks", json=_check(code, 1490, line_no=None)).json()
        assert (whole["verdict"], whole["receipt_g"], whole["tolerance_mg"]) == ("ok", 1500, 10000)

        # bad input: a clear reason, nothing stored
        no_line = c.post("/api/v1/fair-checks", json=_check(code, 500, line_no=3))
        assert no_line.status_code == 422 and "no line 3" in no_line.json()["detail"]
        for bad in ({"measured_g": "960"}, {"measured_g": -1}, {"e_g": 0}, {"check_id": "x"},
                    {"checked_at": "2026-12-02T10:00:00"}, {"signature": "not base64!"}):
            assert c.post("/api/v1/fair-checks", json={**_check(code, 960), **bad}).status_code == 422, bad

    with server.client(ADMIN) as c:
        alerts = c.get("/api/v1/alerts", params={"kind": "short_weight"}).json()
    # one alert per receipt line, however often it is found short
    assert [(x["stall_id"], x["plu"]) for x in alerts] == [("S01", "1001")]
    detail = alerts[0]["detail"]
    assert "1000 g" in detail and "960 g" in detail and "40 g short" in detail and "实称 960 克" in detail

    # refunded line 2: that line and the whole receipt are said so, not weighed
    at = dt.datetime.now(SHANGHAI).isoformat(timespec="seconds")
    refund = {"sale_id": sale["sale_id"], "line_no": 2, "amount_fen": sale["lines"][1]["amount_fen"],
              "reason": "坏了", "operator": "王", "at": at}
    with server.client(token) as c:
        answer = c.post("/api/v1/refunds", json={"refunds": [refund]}).json()
        assert answer["results"][0]["status"] == "accepted"
    with server.client(fair) as c:
        view = c.get("/api/v1/fair-checks/receipt", params={"trace_code": code}).json()
        assert [ln["refunded"] for ln in view["lines"]] == [False, True]
        for line in (2, None):
            out = c.post("/api/v1/fair-checks", json=_check(code, 400, line_no=line)).json()
            assert (out["verdict"], out["receipt_g"]) == ("refunded", None)
            assert "退款" in out["message_zh"]

    with server.client(ADMIN) as c:
        rows = c.get("/api/v1/fair-checks", params={"stall_id": "S01"}).json()
        rates = c.get("/api/v1/stats/complaints").json()["rows"]
    assert sorted(r["verdict"] for r in rows) == ["ok", "ok", "ok", "refunded", "refunded", "short", "short"]
    assert rates == [{"stall_id": "S01", "stall_name": "王记蔬菜", "checks": 5, "short": 2, "short_pct": 40.0,
                      "sales": 1, "short_per_1000_sales": 2000.0}]
    with server.client() as c:
        assert c.get("/api/v1/stats/complaints").status_code == 401


def test_forged_and_unverified_receipts_are_said_so_and_recorded(server: LiveServer) -> None:
    a, b = StallSim("S01"), StallSim("S02")
    ta, tb = register_stall(server, a), register_stall(server, b, name="李记")
    good = a.sale([("1001", "西红柿", 1000, 600, "kg")])
    forger = StallSim("S02")  # signs S02's receipt with a key that is not the one S02 registered
    bad = forger.sale([("1001", "西红柿", 1000, 600, "kg")])
    with server.client(ta) as c:
        c.post("/api/v1/sales", json={"sales": [good]})
    with server.client(tb) as c:
        assert c.post("/api/v1/sales", json={"sales": [bad]}).json()["results"][0]["flags"]
    with server.client(ADMIN) as c:
        fair = c.put("/api/v1/fair-scale/token").json()["token"]
    unknown = good["trace_code"][:-2] + "9" + good["trace_code"][-1]  # another receipt number
    with server.client(fair) as c:
        for code, sig in ((unknown, None), ("hello", None), (good["trace_code"], "AAAA")):
            params = {"trace_code": code} | ({"s": sig} if sig else {})
            view = c.get("/api/v1/fair-checks/receipt", params=params)
            assert (view.status_code, view.json()["state"], view.json()["lines"]) == (200, "forged", []), code
            out = c.post("/api/v1/fair-checks", json=_check(code, 900, signature=sig)).json()
            assert (out["verdict"], out["stall_id"], out["alert_id"]) == ("forged", None, None)
            assert "无效" in out["message_zh"]
        out = c.post("/api/v1/fair-checks", json=_check(bad["trace_code"], 900)).json()
        assert (out["verdict"], out["stall_id"], out["alert_id"]) == ("unverified", "S02", None)
    with server.client(ADMIN) as c:
        assert len(c.get("/api/v1/fair-checks").json()) == 4  # recorded, every one
        assert c.get("/api/v1/alerts", params={"kind": "short_weight"}).json() == []
        assert c.delete("/api/v1/fair-scale/token").status_code == 204
        assert c.delete("/api/v1/fair-scale/token").status_code == 404
    with server.client(fair) as c:  # revoked
        assert c.post("/api/v1/fair-checks", json=_check(good["trace_code"], 900)).status_code == 401
