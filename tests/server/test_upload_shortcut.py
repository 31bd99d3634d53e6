"""The upload shortcut (``server.routes.sales.UploadShortcut``) answers exactly as the
documented route: the same requests sent to a server with it and to one without it get the
same answers and store the same rows, and what it cannot take it hands on unchanged."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, text

from server.app import create_app
from server.guard import SALES_BODY_LIMIT
from server.routes.sales import MAX_BATCH, UploadShortcut
from server.settings import Settings
from tests.conftest import LiveServer
from tests.server.conftest import ADMIN, StallSim, register_stall


class Market:
    """A server on its own SQLite file, with or without the shortcut."""

    def __init__(self, path: Path, *, shortcut: bool) -> None:
        self.url = f"sqlite:///{path}"
        self.app = create_app(Settings(db_url=self.url, admin_token=ADMIN))
        first = self.app.router.routes[0]
        assert isinstance(first, UploadShortcut)  # registered before every other route
        self.shortcut = first
        if not shortcut:
            self.app.router.routes.remove(first)
        self.live = LiveServer(self.app)
        self.token = ""

    def rows(self) -> list[tuple[Any, ...]]:
        engine = create_engine(self.url)
        with engine.connect() as conn:
            out = [tuple(r) for r in conn.execute(text(
                "SELECT sale_id, stall_id, receipt_no, trace_code, sold_at, local_day, total_fen, "
                "digest, verified, flags, raw FROM sales ORDER BY sale_id"))]
            out += [tuple(r) for r in conn.execute(text(
                "SELECT * FROM sale_lines ORDER BY sale_id, idx"))]
            out += [tuple(r) for r in conn.execute(text(
                "SELECT * FROM rollup_stall_item_day ORDER BY plu"))]
        engine.dispose()
        return out


@pytest.fixture
def markets(tmp_path: Path) -> Iterator[tuple[Market, Market]]:
    fast = Market(tmp_path / "fast.db", shortcut=True)
    plain = Market(tmp_path / "plain.db", shortcut=False)
    with fast.live, plain.live:
        yield fast, plain


def _post(market: Market, body: bytes, *, token: str | None = None,
          content_type: str = "application/json") -> tuple[int, str, Any]:
    headers = {"content-type": content_type}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    r = httpx.post(f"{market.live.url}/api/v1/sales", content=body, headers=headers, timeout=10)
    return r.status_code, r.headers.get("content-type", ""), r.json()


def test_the_same_requests_get_the_same_answers_and_rows_either_way(markets: tuple[Market, Market]) -> None:
    fast, plain = markets
    sim = StallSim("S01")
    for m in markets:
        m.token = register_stall(m.live, copy.deepcopy(sim))
    sales = [sim.sale([("1001", "西红柿", 512, 300, "500g")]) for _ in range(4)]
    wrong = copy.deepcopy(sales[3])
    wrong["lines"][0]["amount_fen"] += 1
    # Each request: (body, content type, taken by the shortcut?).  Every upload of a token
    # the server does not know yet goes the documented way, which learns it.
    script: list[tuple[bytes, str, bool]] = [
        (json.dumps({"sales": [sales[0]]}).encode(), "application/json", False),  # learns the token
        (json.dumps({"sales": [sales[0]]}).encode(), "application/json", True),  # a duplicate
        (json.dumps({"sales": [sales[1], wrong, 7, {"sale_id": "x"}]}).encode(), "application/json", True),
        (json.dumps({"sales": [sales[2]]}, ensure_ascii=False).encode(), "application/json", True),
        (b'{"sales": [{"total_fen": NaN}]}', "application/json", True),  # JSON as Python reads it
        (b'{"sales": []}', "application/json", False),
        (json.dumps({"sales": [sales[3]], "more": 1}).encode(), "application/json", False),
        (b'{"sales": [', "application/json", False),
        (b'[{"sales": []}]', "application/json", False),
        (b'{"sales": "all of them"}', "application/json", False),
        (b"\xff\xfe not utf-8", "application/json", False),
        (json.dumps({"sales": [{}] * (MAX_BATCH + 1)}).encode(), "application/json", False),
        (json.dumps({"sales": [sales[3]]}).encode(), "application/json; charset=utf-8", False),
        (json.dumps({"sales": [sales[3]]}).encode(), "text/plain", False),
    ]
    for body, content_type, taken in script:
        before = fast.shortcut.taken
        answers = [_post(m, body, token=m.token, content_type=content_type) for m in markets]
        assert answers[0] == answers[1], body[:80]
        assert fast.shortcut.taken - before == int(taken), body[:80]
    assert plain.shortcut.taken == 0
    # Without a token, with an unknown one: both refused alike, neither taken.
    good = json.dumps({"sales": [sales[3]]}).encode()
    before = fast.shortcut.taken
    assert _post(fast, good)[:2] == _post(plain, good)[:2] == (401, "application/json")
    assert _post(fast, good, token="nope")[0] == _post(plain, good, token="nope")[0] == 401
    # A replaced token is refused at once, though the shortcut knew it a moment ago.
    old = {m: m.token for m in markets}
    for m in markets:
        with m.live.client(ADMIN) as c:
            r = c.post("/api/v1/stalls/S01/token")
        assert r.status_code == 200, r.text
        m.token = r.json()["token"]
    answers = [_post(m, good, token=old[m]) for m in markets]
    assert answers[0] == answers[1] and answers[0][0] == 401
    assert fast.shortcut.taken == before
    assert fast.rows() == plain.rows()
    # sales 0 to 2, and 3 from the request with a charset (FastAPI takes that JSON too)
    assert len([r for r in fast.rows() if len(r) == 11]) == 4


def test_a_group_the_database_refuses_twice_is_409_either_way(markets: tuple[Market, Market]) -> None:
    """``ConcurrentUpload`` (the database refused the group's insert, looked again, and refused
    it again) is the route's 409 from the shortcut too, through the app's own handler.  Here the
    stall's row is taken out of the database behind the process's back (as another process or
    a hand in the database would), while its token stays known: every insert of its sales then
    breaks the foreign key, as a concurrent insert of the same sales breaks the primary key."""
    fast, plain = markets
    sim = StallSim("S01")
    sales = [sim.sale([("1001", "西红柿", 512, 300, "500g")]) for _ in range(2)]
    for m in markets:
        m.token = register_stall(m.live, copy.deepcopy(sim))
        assert _post(m, json.dumps({"sales": [sales[0]]}).encode(), token=m.token)[0] == 200
        engine = create_engine(m.url)
        with engine.begin() as conn:
            conn.execute(text("PRAGMA foreign_keys=OFF"))
            conn.execute(text("DELETE FROM stalls WHERE stall_id = 'S01'"))
        engine.dispose()
    body = json.dumps({"sales": [sales[1]]}).encode()
    before = fast.shortcut.taken
    answers = [_post(m, body, token=m.token) for m in markets]
    assert fast.shortcut.taken == before + 1  # the token still known: the shortcut took it
    assert answers[0] == answers[1]
    assert answers[0] == (409, "application/json",
                          {"detail": "concurrent upload of the same sales; send again"})
    assert fast.rows() == plain.rows()
    assert len([r for r in fast.rows() if len(r) == 11]) == 1  # the first sale only


def _scope(headers: dict[bytes, bytes], *, path: str = "/api/v1/sales", method: str = "POST",
           app: Any = None) -> dict[str, Any]:
    return {"type": "http", "path": path, "method": method, "headers": list(headers.items()), "app": app}


def test_the_shortcut_takes_only_a_known_stall_s_plain_upload(tmp_path: Path) -> None:
    from starlette.routing import Match

    market = Market(tmp_path / "m.db", shortcut=True)
    sim = StallSim("S01")
    with market.live:
        token = register_stall(market.live, sim)
        route = market.shortcut
        plain = {b"content-type": b"application/json", b"content-length": b"120",
                 b"authorization": f"Bearer {token}".encode()}

        def match(headers: dict[bytes, bytes], **kw: Any) -> Match:
            return route.matches(_scope(headers, app=market.app, **kw))[0]

        assert match(plain) == Match.NONE  # not known to this process yet
        with market.live.client(token) as c:  # an upload teaches it (the guard's check)
            assert c.post("/api/v1/sales", json={"sales": [sim.sale([("1", "香蕉", 1000, 690, "kg")])]}
                          ).status_code == 200
        assert match(plain) == Match.FULL
        assert match({**plain, b"authorization": f"bearer   {token}".encode()}) == Match.FULL
        assert match(plain, method="PUT") == Match.NONE
        assert match(plain, path="/api/v1/sales/") == Match.NONE
        assert match(plain, path="/api/v1/refunds") == Match.NONE
        assert match({**plain, b"content-length": str(SALES_BODY_LIMIT).encode()}) == Match.FULL
        for changed in ({b"content-length": str(SALES_BODY_LIMIT + 1).encode()},
                        {b"content-length": b"-1"}, {b"content-length": b"12x"},
                        {b"content-type": b"application/json; charset=utf-8"},
                        {b"authorization": b"Basic czAxOnNlY3JldA=="},
                        {b"authorization": b"Bearer "},
                        {b"authorization": f"Bearer {token}x".encode()}):
            assert match({**plain, **changed}) == Match.NONE, changed
        without = {k: v for k, v in plain.items() if k != b"content-length"}  # chunked
        assert match(without) == Match.NONE


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12)
#: Bodies around what the shortcut takes: a "sales" list of anything (sales half right among
#: them), other keys beside it, other shapes, and bytes that are not JSON.
_BODIES = st.one_of(
    st.builds(lambda sales: json.dumps({"sales": sales}).encode(),
              st.lists(_JSON | st.fixed_dictionaries({"sale_id": st.uuids().map(str)}, optional={
                  "stall_id": st.just("S01"), "receipt_no": st.integers(-1, 3), "lines": _JSON,
                  "total_fen": _JSON, "trace_code": st.text("0123456789", max_size=21)}),
                  min_size=1, max_size=3)),
    st.builds(lambda doc: json.dumps(doc).encode(), st.dictionaries(st.sampled_from(["sales", "more"]),
                                                                   _JSON, max_size=2)),
    _JSON.map(lambda doc: json.dumps(doc).encode()),
    st.binary(max_size=40),
)


def test_any_body_gets_the_same_answer_either_way(tmp_path: Path) -> None:
    fast = Market(tmp_path / "fast.db", shortcut=True)
    plain = Market(tmp_path / "plain.db", shortcut=False)
    sim = StallSim("S01")
    first = copy.deepcopy(sim).sale([("1", "香蕉", 1000, 690, "kg")])
    with fast.live, plain.live:
        for m in (fast, plain):
            m.token = register_stall(m.live, copy.deepcopy(sim))
            with m.live.client(m.token) as c:  # the token known to the shortcut from here on
                assert c.post("/api/v1/sales", json={"sales": [first]}).status_code == 200

        @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(body=_BODIES)
        def same(body: bytes) -> None:
            answers = [_post(m, body, token=m.token) for m in (fast, plain)]
            assert answers[0] == answers[1]
            assert answers[0][0] != 500

        same()
        assert fast.shortcut.taken >= 20  # the shortcut took its share (about a third in trials)
        assert fast.rows() == plain.rows()
