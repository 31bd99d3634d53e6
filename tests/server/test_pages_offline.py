"""Pages in a real Chromium that may reach nothing but 127.0.0.1: /docs, /redoc, the favicon,
and the big screen in English."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit
from xml.etree import ElementTree

import pytest
from playwright.sync_api import Page, Route

from tests.browser import chromium
from tests.conftest import LiveServer
from tests.server.conftest import StallSim, register_stall

pytestmark = [pytest.mark.browser, pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]


@contextmanager
def offline_page(width: int = 1400) -> Iterator[tuple[Page, list[str]]]:
    """A page whose requests to anything but 127.0.0.1 fail; the list collects them."""
    outside: list[str] = []

    def only_local(route: Route) -> None:
        url = route.request.url
        if urlsplit(url).hostname == "127.0.0.1" or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    with chromium() as browser:
        context = browser.new_context(viewport={"width": width, "height": 900})
        context.route("**/*", only_local)
        yield context.new_page(), outside
        context.close()


def _operations(server: LiveServer) -> list[tuple[str, str]]:
    with server.client() as c:
        paths = c.get("/openapi.json").json()["paths"]
    return [(method.upper(), path) for path, ops in paths.items() for method in ops]


def test_swagger_ui_renders_every_operation_offline(server: LiveServer) -> None:
    operations = _operations(server)
    assert ("POST", "/api/v1/sales") in operations
    with offline_page() as (page, outside):
        page.goto(f"{server.url}/docs")
        page.wait_for_selector(".opblock", timeout=20_000)
        shown = page.eval_on_selector_all(
            ".opblock-summary", "els => els.map(e => [e.querySelector('.opblock-summary-method')"
            ".textContent, e.querySelector('.opblock-summary-path').dataset.path])")
        assert sorted(map(tuple, shown)) == sorted(operations)
        assert outside == []


def test_redoc_is_off(server: LiveServer) -> None:
    """ReDoc's bundle fetches its maker's logo from a CDN on every view; /docs is the reference."""
    with server.client() as c:
        assert c.get("/redoc").status_code == 404


def test_the_favicon_is_served(server: LiveServer) -> None:
    with server.client() as c:
        r = c.get("/favicon.ico")
    assert r.status_code == 200 and r.headers["content-type"] == "image/svg+xml"
    assert ElementTree.fromstring(r.content).tag == "{http://www.w3.org/2000/svg}svg"
    # Not offline_page: Playwright's request interception drops requests for /favicon.ico.
    with chromium() as browser:
        page = browser.new_page()
        page.goto(f"{server.url}/display")
        # The browser loads the page's icon as an image: its width, or -1 when it cannot.
        width = page.evaluate("""new Promise(done => {
            const img = new Image();
            img.onload = () => done(img.naturalWidth);
            img.onerror = () => done(-1);
            img.src = document.querySelector("link[rel=icon]").href;
        })""")
        assert width > 0
        assert page.evaluate("document.querySelector('link[rel=icon]').href") == f"{server.url}/favicon.ico"


def test_the_big_screen_in_english_names_items_and_counts_in_english(server: LiveServer) -> None:
    a, b = StallSim("S01"), StallSim("S02")
    ta, tb = register_stall(server, a, "王记鲜果"), register_stall(server, b, "李家蔬菜")
    # name_en as a stall's basket adds it to each line (edge.basket); S02's line has none.
    with server.client(ta) as c:
        r = c.post("/api/v1/sales", json={"sales": [
            a.sale([("1001", "西红柿", 512, 300, "500g")], line_extra={"name_en": "Tomato"}),
            a.sale([("1002", "土豆", 2000, 280, "kg")], line_extra={"name_en": "Potato"})]})
        assert r.json()["accepted"] == 2, r.text
    with server.client(tb) as c:
        assert c.post("/api/v1/sales", json={"sales": [
            b.sale([("2001", "香菜", 100, 1600, "kg")])]}).json()["accepted"] == 1
    with offline_page(width=1600) as (page, outside):
        page.goto(f"{server.url}/display?lang=en")
        page.wait_for_function("document.querySelectorAll('#ranking li').length === 2")
        ranking = [page.locator("#ranking li").nth(i).inner_text() for i in range(2)]
        assert "S01 王记鲜果" in ranking[0] and "2 sales" in ranking[0]
        assert "S02 李家蔬菜" in ranking[1] and "1 sale" in ranking[1] and "1 sales" not in ranking[1]
        items = page.inner_text("#items tbody")
        assert "Tomato" in items and "Potato" in items and "香菜" in items  # no name_en: Chinese
        assert "西红柿" not in items and "土豆" not in items
        recent = page.inner_text("#recent")
        assert "Tomato" in recent and "Potato" in recent and "香菜" in recent
        assert "西红柿" not in recent

        page.goto(f"{server.url}/display")
        page.wait_for_function("document.querySelectorAll('#ranking li').length === 2")
        assert "2笔" in page.locator("#ranking li").nth(0).inner_text()
        assert "西红柿" in page.inner_text("#items tbody") and "Tomato" not in page.inner_text("#items")
        assert outside == []
