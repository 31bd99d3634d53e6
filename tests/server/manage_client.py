"""Signing in to ``/manage`` as a browser does (cookies, the forms' tokens), for the tests."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from tests.conftest import LiveServer
from tests.server.conftest import ADMIN

_FORM_TOKEN = re.compile(r'name="csrf_token" value="([^"]*)"')
_META_TOKEN = re.compile(r'<meta name="csrf-token" content="([^"]*)">')


def add_manager(server: LiveServer, username: str = "wang", password: str = "菜场-secret-1",
                name: str = "王经理", token: str = ADMIN) -> None:
    """The first manager, with the admin token (or another manager's client: ``token`` '')."""
    with server.client(token) as c:
        r = c.post("/api/v1/managers", json={"username": username, "display_name": name,
                                             "password": password})
    assert r.status_code == 201, r.text


def form_token(page: httpx.Response) -> str:
    match = _FORM_TOKEN.search(page.text)
    assert match, page.text[:2000]
    return match.group(1)


def page_token(page: httpx.Response) -> str:
    """The session's CSRF token, as every signed-in page carries it."""
    match = _META_TOKEN.search(page.text)
    assert match and match.group(1), page.text[:2000]
    return match.group(1)


def try_sign_in(client: httpx.Client, username: str, password: str,
                next_path: str = "/manage") -> httpx.Response:
    form = client.get("/manage/login")
    assert form.status_code == 200, form.text
    return client.post("/manage/login", data={"username": username, "password": password,
                                              "csrf_token": form_token(form), "next": next_path})


@contextmanager
def signed_in(server: LiveServer, username: str = "wang",
              password: str = "菜场-secret-1") -> Iterator[tuple[httpx.Client, str]]:
    """A client holding the session cookie, and the session's CSRF token."""
    with httpx.Client(base_url=server.url, timeout=15) as client:
        r = try_sign_in(client, username, password)
        assert r.status_code == 303 and r.headers["location"] == "/manage", r.text
        yield client, page_token(client.get("/manage"))
