"""The big screen (in a real Chromium) and the shopper's trace page."""

from __future__ import annotations

import pytest

from tests.browser import chromium
from tests.conftest import LiveServer
from tests.server.conftest import ADMIN, StallSim


def _stall(server: LiveServer, sim: StallSim, name: str) -> str:
    with server.client(ADMIN) as c:
        r = c.post("/api/v1/stalls", json={"stall_id": sim.stall_id, "name": name,
                                           "public_key": sim.public_key})
    return str(r.json()["token"])


@pytest.mark.browser
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_display_updates_live_without_reload(server: LiveServer) -> None:
    a, b = StallSim("S01"), StallSim("S02")
    ta, tb = _stall(server, a, "王记鲜果"), _stall(server, b, "李家蔬菜")
    with server.client(ta) as c:
        c.post("/api/v1/sales", json={"sales": [a.sale([("1", "香蕉", 1000, 690, "kg")])]})
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1600, "height": 900})
        page.goto(f"{server.url}/display")
        page.wait_for_function("document.getElementById('total').textContent === '￥6.90'")
        page.wait_for_function("document.getElementById('live').classList.contains('on')")
        page.evaluate("window.__marker = 1")  # survives only if the page is not reloaded
        with server.client(tb) as c:
            c.post("/api/v1/sales", json={"sales": [
                b.sale([("2", "西红柿", 512, 300, "500g"), ("3", "土豆", 2000, 280, "kg")])]})
        page.wait_for_function("document.getElementById('count').textContent === '2'", timeout=10_000)
        assert page.inner_text("#total") == "￥15.57"  # 6.90 + 3.07 + 5.60
        ranking = page.locator("#ranking li")
        assert ranking.count() == 2
        assert "S02" in ranking.nth(0).inner_text() and "￥8.67" in ranking.nth(0).inner_text()
        assert "西红柿" in page.inner_text("#recent")
        assert "0.51 kg" in page.inner_text("#items")
        assert page.evaluate("window.__marker") == 1
        page.goto(f"{server.url}/display?lang=en")
        page.wait_for_function("document.getElementById('count').textContent === '2'")
        assert page.inner_text("#ranking-panel h2") == "Stall ranking"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_trace_page_proves_a_receipt_genuine_or_not(server: LiveServer) -> None:
    sim = StallSim("S01")
    token = _stall(server, sim, "王记鲜果")
    sale = sim.sale([("1001", "西红柿", 512, 300, "500g")])
    with server.client(token) as c:
        c.post("/api/v1/sales", json={"sales": [sale]})
        code = sale["trace_code"]
        ok = c.get(f"/t/{code}", params={"s": sale["signature"]})
        assert ok.status_code == 200
        assert 'data-verdict="genuine"' in ok.text
        assert "西红柿" in ok.text and "0.512 kg" in ok.text and "￥3.07" in ok.text
        assert "3.00 元/500g" in ok.text
        forged = c.get(f"/t/{code}", params={"s": "AAAA"})
        assert 'data-verdict="mismatch"' in forged.text
        unknown_code = code[:12] + "0000099"
        from edge.tracecode import luhn_check_digit

        unknown_code = unknown_code[:19] + str(luhn_check_digit(unknown_code[:19]))
        missing = c.get(f"/t/{unknown_code}")
        assert missing.status_code == 404 and 'data-verdict="unknown"' in missing.text
        bad = c.get(f"/t/{code[:19]}{(int(code[19]) + 1) % 10}")
        assert bad.status_code == 404 and 'data-verdict="invalid"' in bad.text
        assert "check digit" in bad.text
