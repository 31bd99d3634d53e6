"""The manager pages /manage in a real Chromium (Debian's, through Playwright): sign in, stalls
and their tokens, alerts, items, prices and caps, rapid tests, specials; what they show is
escaped, a form without its CSRF token is refused, and they fit a phone."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from server import db, inspections
from tests.browser import chromium, manage_sign_in, submit
from tests.conftest import LiveServer
from tests.server.conftest import SHANGHAI, StallSim
from tests.server.manage_client import add_manager, signed_in

PASSWORD = "菜场-secret-1"
#: A stall name that would run if a page did not escape it (64 characters at most, as names are).
EVIL = "<script>window.__xss=1</script><img src=x onerror=__xss=2>"
#: The red of a failed test or an open alert (manage.css --bad).
RED = "rgb(185, 28, 28)"


def _sign_in(page: Page, server: LiveServer, password: str = PASSWORD) -> None:
    manage_sign_in(page, server.url, "wang", password)


@pytest.mark.browser
def test_a_manager_day_in_chromium(server: LiveServer) -> None:
    add_manager(server)
    sim = StallSim("S07")
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))

        _sign_in(page, server, password="wrong-password")
        expect(page.locator("#error")).to_have_text("用户名或密码错误")
        page.fill("input[name=username]", "wang")
        page.fill("input[name=password]", PASSWORD)
        page.click("#login button[type=submit]")
        expect(page.locator("h1")).to_contain_text("概览")

        # A stall whose name is markup: registered, its token shown once, its name shown as text.
        page.goto(f"{server.url}/manage/stalls")
        submit(page, "#register", stall_id="S07", name=EVIL, public_key=sim.public_key)
        token = page.locator("#token").inner_text().strip()
        assert len(token) >= 40
        page.goto(f"{server.url}/manage/stalls")
        expect(page.locator("tr[data-stall=S07] td.name")).to_have_text(EVIL)
        assert page.evaluate("window.__xss") is None

        # The stall sells, with receipts 2 and 3 lost on the way: a receipt-gap alert.
        line = [("1001", "西红柿", 1000, 690, "kg")]
        sales = [sim.sale(line) for _ in range(4)]
        with server.client(token) as c:
            assert c.post("/api/v1/sales", json={"sales": [sales[0], sales[3]]}).json()["accepted"] == 2
        page.goto(f"{server.url}/manage")
        expect(page.locator("#kpi-alerts")).to_have_text("1")
        expect(page.locator("#kpi-online")).to_have_text("1")
        expect(page.locator("#kpi-sales")).to_have_text("2")
        expect(page.locator("#ranking tbody tr td").nth(1)).to_have_text(EVIL)
        page.click("a.kpi.alarm")
        alert = page.locator("li.alert[data-kind=receipt_gap]")
        expect(alert).to_contain_text("#2–#3")
        assert alert.evaluate("e => getComputedStyle(e).borderLeftColor") == RED
        alert.locator("button").click()
        expect(page.locator("#flash")).to_have_text("告警已确认")
        expect(page.locator("li.alert")).to_have_count(0)
        page.goto(f"{server.url}/manage/alerts?show=all")
        expect(page.locator("li.alert.done .ack")).to_contain_text("manager:wang")

        # An item (its name markup too), a cap, a stall price over it refused, then one under.
        page.goto(f"{server.url}/manage/items")
        submit(page, "#add-item", plu="1001", name="<i>西红柿</i>", name_en="Tomato", category="蔬菜",
                price_unit="kg", cap="12.00")
        expect(page.locator("#flash")).to_have_text("商品已保存")
        expect(page.locator("#item-name")).to_have_text("<i>西红柿</i>")
        submit(page, "#set-price", stall_id="S07", price="13.50", why="涨价")
        expect(page.locator("#error")).to_contain_text("高于市场限价")
        page.goto(f"{server.url}/manage/items/1001")
        submit(page, "#set-price", stall_id="S07", price="6.90", why="开市定价")
        expect(page.locator("#flash")).to_have_text("价格已保存")
        expect(page.locator("#item-prices")).to_contain_text("6.90 元/kg")
        submit(page, "#set-cap", cap="6.50", why="平价菜")
        expect(page.locator("#error")).to_contain_text("lower_prices")
        page.check("#set-cap [name=lower_prices]")
        submit(page, "#set-cap", cap="6.50", why="平价菜")
        expect(page.locator("#cap")).to_have_text("6.50 元/kg")
        expect(page.locator("#item-prices")).to_contain_text("6.50 元/kg")
        history = page.locator("#history tbody tr")
        expect(history).to_have_count(4)  # the first cap, the price, the new cap, the price lowered
        expect(history.first).to_contain_text("manager:wang")

        # A failed rapid test: shown red, the batch blocked, an alert raised.
        page.goto(f"{server.url}/manage/inspections")
        submit(page, "#record-inspection", stall_id="S07", plu="1001", batch_code="B20261202-01",
                inhibition="62.5", tester="张检测")
        expect(page.locator("#flash")).to_have_text("快检已录入")
        row = page.locator("#inspections tr[data-batch=B20261202-01]")
        expect(row).to_have_attribute("data-result", "fail")
        assert row.locator("td").first.evaluate("e => getComputedStyle(e).color") == RED
        expect(page.locator("#blocked")).to_contain_text("B20261202-01")
        expect(page.locator("#kpi-failed")).to_have_text("1")
        with server.client(token) as c:
            blocked = c.get("/api/v1/inspections/blocked").json()
        assert [b["batch_code"] for b in blocked] == ["B20261202-01"]

        # A special under the stall's price, then cancelled.
        page.goto(f"{server.url}/manage/specials")
        now = dt.datetime.now(SHANGHAI)
        submit(page, "#add-special", stall_id="S07", plu="1001", price="5.00", title="晚市特价",
                starts_at=now.strftime("%Y-%m-%dT%H:%M"),
                ends_at=(now + dt.timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M"))
        expect(page.locator("#flash")).to_have_text("特价已创建")
        special = page.locator("#specials tbody tr[data-state=current]")
        expect(special).to_contain_text("5.00 元/kg")
        special.locator("button").click()
        expect(page.locator("#flash")).to_have_text("特价已取消")

        page.goto(f"{server.url}/manage/prices?lang=en")
        expect(page.locator("h1")).to_have_text("Prices")
        expect(page.locator("#nav a.here")).to_have_text("Prices")
        assert errors == []


@pytest.mark.browser
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_form_without_its_csrf_token_is_refused_in_chromium(server: LiveServer) -> None:
    add_manager(server)
    with chromium() as browser:
        page = browser.new_page()
        _sign_in(page, server)
        page.goto(f"{server.url}/manage/stalls")
        page.fill("#register [name=stall_id]", "S08")
        page.fill("#register [name=name]", "鱼档")
        page.evaluate("document.querySelector('#register [name=csrf_token]').remove()")
        with page.expect_response(f"{server.url}/manage/stalls") as answer:
            page.click("#register button[type=submit]")
        assert answer.value.status == 403
        expect(page.locator("#refused")).to_have_text("页面已过期，请刷新后重试")
        with server.client() as c:
            assert c.get("/api/v1/stalls").json() == []
        # The sign-out form is a state change too.
        page.goto(f"{server.url}/manage")
        page.evaluate("document.querySelector('header form [name=csrf_token]').value = 'forged'")
        page.click("header form button")
        expect(page.locator("#refused")).to_be_visible()
        page.goto(f"{server.url}/manage")
        expect(page.locator("h1")).to_contain_text("概览")  # still signed in


@pytest.mark.browser
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_every_page_fits_a_phone(server: LiveServer) -> None:
    add_manager(server)
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True,
                                has_touch=True, device_scale_factor=3)
        _sign_in(page, server)
        expect(page.locator("h1")).to_contain_text("概览")
        for path in ("", "/stalls", "/items", "/prices", "/inspections", "/specials", "/alerts",
                     "/managers", "/account", "/fair-scale"):
            page.goto(f"{server.url}/manage{path}")
            width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
            assert width[0] <= width[1], f"/manage{path} is {width[0]} px wide on a {width[1]} px phone"
            # Inputs big enough to hit with a thumb.
            heights = page.evaluate("[...document.querySelectorAll('main button')]"
                                    ".filter(b => b.offsetParent !== null)"
                                    ".map(b => b.getBoundingClientRect().height)")
            assert all(h >= 30 for h in heights), (path, heights)


def test_prices_page_shows_one_stall_unless_an_item_is_chosen(server: LiveServer) -> None:
    """A big market holds tens of thousands of prices: the page shows one stall's, or one item's."""
    add_manager(server)
    with signed_in(server) as (c, csrf):
        for sid in ("S01", "S02"):
            assert c.post("/manage/stalls", data={"stall_id": sid, "name": sid,
                                                  "csrf_token": csrf}).status_code == 200
        assert c.post("/manage/items", data={"plu": "1001", "name": "西红柿", "name_en": "Tomato",
                                             "category": "蔬菜", "price_unit": "kg",
                                             "csrf_token": csrf}).status_code == 303
        for sid, price in (("S01", "6.90"), ("S02", "7.10")):
            r = c.post("/manage/prices", data={"stall_id": sid, "plu": "1001", "price": price,
                                               "why": "开市", "csrf_token": csrf})
            assert r.status_code == 303, r.text
        bad = c.post("/manage/prices", data={"stall_id": "S01", "plu": "1001", "price": "6.999",
                                             "why": "x", "csrf_token": csrf})
        assert bad.status_code == 422 and "两位小数" in bad.text

        def shown(**params: str) -> list[str]:
            page = c.get("/manage/prices", params=params)
            assert page.status_code == 200, page.text
            table = page.text.split('id="prices"')[1].split("</table>")[0]
            return re.findall(r"<tr><td>(S0\d)</td>", table)

        assert shown() == ["S01"]
        assert shown(stall_id="S02", plu="") == ["S02"]
        assert shown(stall_id="", plu="1001") == ["S01", "S02"]
        assert shown(stall_id="", plu="") == ["S01"]


def test_rapid_test_page_lists_the_recent_blocks(server: LiveServer) -> None:
    """Batches blocked now among those failed in the last 14 days: a year of tests is not
    ranked for the page, and a batch retested since is not blocked."""
    add_manager(server)
    app = server.app
    now = dt.datetime.now(dt.UTC)
    with app.state.sessionmaker.begin() as s:
        s.add(db.Stall(stall_id="S01", name="x", token_sha256="a" * 64, created_at=now))
        s.add(db.Item(plu="1001", name="菠菜", name_en="Spinach", category="蔬菜", price_unit="kg",
                      active=True, created_at=now, updated_at=now))
        s.flush()
        for batch, days_ago, result in (("OLD", 30, "fail"), ("NEW", 1, "fail"),
                                        ("RETESTED", 2, "fail"), ("RETESTED", 1, "pass")):
            at = now - dt.timedelta(days=days_ago)
            s.add(db.Inspection(batch_code=batch, plu="1001", stall_id="S01", method="m",
                                inhibition_permille=None, result=result, tester="t", tested_at=at,
                                local_day=at.astimezone(SHANGHAI).date(), recorded_by="x",
                                recorded_at=now))
    with app.state.sessionmaker() as s:
        assert [r.batch_code for r in inspections.blocked_batches(s)] == ["NEW", "OLD"]
        since = (now - dt.timedelta(days=3)).astimezone(SHANGHAI).date()
        assert [r.batch_code for r in inspections.blocked_batches(s, since=since)] == ["NEW"]
    with signed_in(server) as (c, _):
        page = c.get("/manage/inspections")
    blocked = page.text.split('id="blocked"')[1].split("</ul>")[0]
    assert "NEW" in blocked and "OLD" not in blocked and "RETESTED" not in blocked


def test_every_word_has_its_english_and_every_alert_kind_a_label() -> None:
    from server.alerts import KINDS
    from server.routes.manage_text import EN, ZH

    assert set(ZH) == set(EN)
    assert all(f"kind_{kind}" in ZH for kind in KINDS)
    used: set[str] = set()
    for page in (Path(__file__).resolve().parents[2] / "server" / "templates" / "manage").glob("*.html"):
        used |= set(re.findall(r"t\('([a-z_]*[a-z])'\W", page.read_text()))  # not t('unit_' ~ u)
    assert {"sign_in", "unit", "kind", "acknowledge"} <= used  # the pattern finds the words
    assert used <= set(ZH), used - set(ZH)
