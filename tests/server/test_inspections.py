"""Rapid tests (农残快检) through the live server, on SQLite and PostgreSQL: recording, the
derived result, the latest-test-wins block, the day's figures, and the trace page."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from tests.browser import chromium
from tests.conftest import LiveServer
from tests.server.conftest import ADMIN, SHANGHAI, StallSim, register_stall
from tests.server.market_rows import add_item, alerts, feed_version

BATCH = "B20261127-07"  # StallSim's lines carry it


def _test(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"batch_code": BATCH, "plu": "1001", "stall_id": "S01", "tester": "张检测",
                            "tested_at": (dt.datetime.now(SHANGHAI) - dt.timedelta(hours=1)).isoformat()}
    body.update(over)
    return {k: v for k, v in body.items() if v is not None}


def _setup(server: LiveServer) -> tuple[StallSim, str]:
    sim = StallSim("S01")
    token = register_stall(server, sim)
    add_item(server, "1001", "西红柿")
    add_item(server, "1002", "青菜")
    return sim, token


def test_a_failed_batch_is_blocked_until_a_later_test_passes(server: LiveServer) -> None:
    _setup(server)
    before = feed_version(server)
    at = dt.datetime.now(SHANGHAI) - dt.timedelta(hours=2)
    with server.client(ADMIN) as c:
        r = c.post("/api/v1/inspections", json=_test(inhibition_percent=62.5, tested_at=at.isoformat()))
        assert r.status_code == 201, r.text
        failed = r.json()
        assert failed["result"] == "fail" and failed["inhibition_percent"] == 62.5
        assert failed["method"] == "酶抑制率法 (GB/T 5009.199)" and failed["recorded_by"] == "admin"
        assert failed["blocking"] is True and failed["name"] == "西红柿"
        assert failed["tested_at"] == at.isoformat()  # market time, with its offset
        assert feed_version(server) == before + 1
        assert [b["id"] for b in c.get("/api/v1/inspections/blocked").json()] == [failed["id"]]
        [alert] = alerts(server, "inspection_failed")
        assert alert.stall_id == "S01" and BATCH in alert.detail and "62.5%" in alert.detail

        # The retest passes: the batch is sold again; the failed test stays in the history.
        retest = c.post("/api/v1/inspections", json=_test(inhibition_percent=12.0,
                                                          tested_at=(at + dt.timedelta(hours=1)).isoformat()))
        assert retest.status_code == 201, retest.text
        assert retest.json()["result"] == "pass"
        assert feed_version(server) == before + 2
        assert c.get("/api/v1/inspections/blocked").json() == []
        history = c.get("/api/v1/inspections", params={"batch_code": BATCH}).json()
        assert [(h["result"], h["blocking"]) for h in history] == [("pass", False), ("fail", False)]

        # A test read earlier but entered later takes its place in time: the pass still counts.
        late = c.post("/api/v1/inspections", json=_test(result="fail", tested_at=(
            at + dt.timedelta(minutes=30)).isoformat(), note="纸质记录补录"))
        assert late.status_code == 201 and late.json()["blocking"] is False
        assert c.get("/api/v1/inspections/blocked").json() == []
        # ... and a later fail blocks it again, with an alert of its own.
        again = c.post("/api/v1/inspections", json=_test(inhibition_percent=50.0))
        assert again.json()["result"] == "fail" and again.json()["blocking"] is True
        assert len(alerts(server, "inspection_failed")) == 3


def test_the_result_follows_the_inhibition_and_bad_tests_are_refused(server: LiveServer) -> None:
    _, token = _setup(server)
    with server.client(ADMIN) as c:
        def post(**over: Any) -> Any:
            return c.post("/api/v1/inspections", json=_test(**over))

        assert post(inhibition_percent=49.9).json()["result"] == "pass"
        assert post(inhibition_percent=50).json()["result"] == "fail"  # DOMAIN.md §3: >= 50 %
        assert post(inhibition_percent=0, result="pass").status_code == 201
        assert post(result="fail", method="速测卡法").json()["inhibition_percent"] is None
        version = feed_version(server)
        for over, words in [
            ({"inhibition_percent": 55.0, "result": "pass"}, "is a fail"),
            ({"inhibition_percent": 20.0, "result": "fail"}, "is a pass"),
            ({"inhibition_percent": 12.34}, "one decimal"),
            ({"inhibition_percent": "50"}, "valid number"),
            ({"inhibition_percent": True}, "valid number"),
            ({"inhibition_percent": 100.1}, "less than or equal to 100"),
            ({"inhibition_percent": -1}, "greater than or equal to 0"),
            ({}, "give inhibition_percent"),
            ({"inhibition_percent": 10.0, "tested_at": "2026-12-01T10:00:00"}, "timezone"),
            ({"inhibition_percent": 10.0, "tested_at": "9999-12-31T23:00:00-12:00"}, "out of range"),
            ({"inhibition_percent": 10.0, "tester": "  "}, "at least 1 character"),
            ({"inhibition_percent": 10.0, "tester": "张\u202e三"}, "control or format"),
            ({"inhibition_percent": 10.0, "batch_code": "B 1"}, "pattern"),
            ({"inhibition_percent": 10.0, "colour": "red"}, "Extra inputs"),
        ]:
            r = post(**over)
            assert r.status_code == 422, (over, r.text)
            assert words in r.text, (over, r.text)
        future = (dt.datetime.now(SHANGHAI) + dt.timedelta(minutes=20)).isoformat()
        r = post(inhibition_percent=10.0, tested_at=future)
        assert r.status_code == 422 and "in the future" in r.json()["detail"]
        # A minute ahead is a tester's clock, not a typo.
        ahead = (dt.datetime.now(SHANGHAI) + dt.timedelta(minutes=1)).isoformat()
        assert post(inhibition_percent=10.0, tested_at=ahead).status_code == 201
        version += 1
        r = post(inhibition_percent=10.0, stall_id="S09")
        assert r.status_code == 404 and r.json()["detail"] == "no stall S09"
        r = post(inhibition_percent=10.0, plu="9999")
        assert r.status_code == 404 and "PLU 9999" in r.json()["detail"]
        r = post(inhibition_percent=10.0, plu="1002")  # this batch is 1001's
        assert r.status_code == 409 and "tested as PLU 1001" in r.json()["detail"]
        assert feed_version(server) == version  # nothing refused changed the feed
    with server.client() as c:
        assert c.post("/api/v1/inspections", json=_test(inhibition_percent=1.0)).status_code == 401
    with server.client(token) as c:  # a stall cannot record its own tests
        assert c.post("/api/v1/inspections", json=_test(inhibition_percent=1.0)).status_code == 401


def test_the_days_figures_count_each_batch_by_its_latest_test(server: LiveServer) -> None:
    _setup(server)
    register_stall(server, StallSim("S02"), "李家蔬菜")
    day = dt.datetime.now(SHANGHAI).replace(hour=0, minute=0, second=0, microsecond=0)
    if dt.datetime.now(SHANGHAI) - day < dt.timedelta(hours=1, minutes=1):
        day -= dt.timedelta(days=1)  # just after midnight: use yesterday, a whole day in the past
    yesterday = day - dt.timedelta(minutes=30)  # 23:30 the day before, in the market's zone
    def at(minutes: int) -> str:
        return (day + dt.timedelta(minutes=minutes)).isoformat()

    tests = [
        _test(batch_code="A1", inhibition_percent=10.0, tested_at=at(5)),
        _test(batch_code="A2", inhibition_percent=70.0, tested_at=at(10)),
        _test(batch_code="A3", inhibition_percent=80.0, tested_at=at(15)),
        _test(batch_code="A3", inhibition_percent=20.0, tested_at=at(45)),
        _test(batch_code="A1", stall_id="S02", plu="1002", inhibition_percent=30.0, tested_at=at(20)),
        _test(batch_code="A9", inhibition_percent=90.0, tested_at=yesterday.isoformat()),
    ]
    with server.client(ADMIN) as c:
        for body in tests:
            assert c.post("/api/v1/inspections", json=body).status_code == 201
        s = c.get("/api/v1/inspections/summary", params={"day": day.date().isoformat()}).json()
        assert (s["tests"], s["batches"], s["passed"], s["failed"]) == (5, 4, 3, 1)
        assert s["pass_rate_percent"] == 75.0
        assert [(b["stall_id"], b["batch_code"], b["stall_name"]) for b in s["failed_batches"]] == [
            ("S01", "A2", "王记鲜果")]
        prev = c.get("/api/v1/inspections/summary",
                     params={"day": (day.date() - dt.timedelta(days=1)).isoformat()}).json()
        assert (prev["batches"], prev["failed"], prev["pass_rate_percent"]) == (1, 1, 0.0)
        empty = c.get("/api/v1/inspections/summary", params={"day": "2001-01-01"}).json()
        assert (empty["batches"], empty["pass_rate_percent"]) == (0, None)

        listed = c.get("/api/v1/inspections", params={"day": day.date().isoformat()}).json()
        assert [i["batch_code"] for i in listed] == ["A3", "A1", "A3", "A2", "A1"]  # latest first
        fails = c.get("/api/v1/inspections", params={"result": "fail"}).json()
        assert {i["batch_code"] for i in fails} == {"A2", "A3", "A9"}
        s02 = c.get("/api/v1/inspections", params={"stall_id": "S02"}).json()
        assert [(i["stall_id"], i["plu"]) for i in s02] == [("S02", "1002")]
        page = c.get("/api/v1/inspections", params={"limit": 2, "offset": 1}).json()
        assert [i["id"] for i in page] == [i["id"] for i in c.get("/api/v1/inspections").json()[1:3]]
        blocked = c.get("/api/v1/inspections/blocked").json()
        assert {(b["batch_code"], b["inhibition_percent"]) for b in blocked} == {("A2", 70.0), ("A9", 90.0)}
        assert c.get("/api/v1/inspections", params={"result": "maybe"}).status_code == 422


def _sale_on_trace_page(server: LiveServer, sim: StallSim, token: str) -> dict[str, Any]:
    sale = sim.sale([("1001", "西红柿", 512, 300, "500g")])
    with server.client(token) as c:
        assert c.post("/api/v1/sales", json={"sales": [sale]}).json()["accepted"] == 1
    return sale


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_trace_page_shows_each_batchs_tests_and_a_failed_one_in_red(server: LiveServer) -> None:
    sim, token = _setup(server)
    sale = _sale_on_trace_page(server, sim, token)
    url = f"{server.url}/t/{sale['trace_code']}"
    with server.client() as c:
        page = c.get(url).text
        assert 'data-batch="B20261127-07" data-result="none"' in page and "未检" in page
    tested = dt.datetime(2026, 11, 27, 1, 5, tzinfo=dt.UTC)  # 09:05 in Shanghai
    with server.client(ADMIN) as c:
        assert c.post("/api/v1/inspections", json=_test(
            inhibition_percent=12.5, tested_at=tested.isoformat(), tester="<script>alert(1)</script>",
            method="酶抑制率法 <b>GB/T 5009.199</b>")).status_code == 201
        later = (tested + dt.timedelta(hours=2)).isoformat()
        assert c.post("/api/v1/inspections", json=_test(inhibition_percent=63.0,
                                                        tested_at=later)).status_code == 201
    with chromium() as browser:
        page = browser.new_page()
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(url)
        section = page.locator('#tests section[data-batch="B20261127-07"]')
        assert section.get_attribute("data-result") == "fail"
        assert "不合格" in section.locator("h3").inner_text() and "禁止销售" in section.inner_text()
        # Prominent: the failed batch's heading is red, its box bordered red.
        assert section.locator("h3").evaluate("e => getComputedStyle(e).color") == "rgb(204, 0, 0)"
        assert section.evaluate("e => getComputedStyle(e).borderTopColor") == "rgb(204, 0, 0)"
        rows = section.locator("tr.test")
        assert rows.count() == 2
        first, second = rows.nth(0).inner_text(), rows.nth(1).inner_text()
        assert "2026-11-27 11:05" in first and "63.0 %" in first and "不合格" in first  # latest first
        assert "2026-11-27 09:05" in second and "12.5 %" in second and "合格" in second
        # Text stays text: the tester's name and the method are shown, never run or rendered.
        assert "<script>alert(1)</script>" in second and "<b>GB/T 5009.199</b>" in second
        assert dialogs == [] and section.locator("b").count() == 0
        assert "不合格" in page.locator("#lines").inner_text()
