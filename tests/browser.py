"""Headless Debian Chromium through Playwright (no browser download), and what the tests
do with it on the manager pages: sign in, fill and send a form."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

from playwright.sync_api import Browser, Page, expect, sync_playwright

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise RuntimeError("Chromium is not installed: run scripts/bootstrap.sh (apt package chromium)")
    return path


@contextmanager
def chromium() -> Iterator[Browser]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def manage_sign_in(page: Page, base_url: str, username: str, password: str) -> None:
    """Open /manage signed out (it sends the browser to the sign-in form) and send the form."""
    page.goto(f"{base_url}/manage")
    expect(page).to_have_url(re.compile(r"/manage/login\?next=/manage$"))
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("#login button[type=submit]")


def submit(page: Page, form: str, **fields: str) -> None:
    """Fill the ``form``'s fields by name (a select by option value) and press its button."""
    for name, value in fields.items():
        target = page.locator(f"{form} [name={name}]")
        if target.evaluate("e => e.tagName") == "SELECT":
            target.select_option(value)
        else:
            target.fill(value)
    page.click(f"{form} button[type=submit]")
