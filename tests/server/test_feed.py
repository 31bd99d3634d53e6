"""The stalls' feed (GET /api/v1/feed) through a real HTTP server on SQLite and PostgreSQL.

Rows are written through the ORM in one transaction with ``feedversion.bump``, as the
catalogue, inspection and specials services do.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from sqlalchemy import event
from sqlalchemy.orm import Session

from edge.feed import FeedDoc
from server import db, feedversion, inspections
from tests.conftest import LiveServer
from tests.server.conftest import StallSim, register_stall

UTC = dt.UTC


@contextmanager
def change(srv: LiveServer) -> Iterator[Session]:
    """One transaction on the live server's database that the stalls must apply."""
    with srv.app.state.sessionmaker.begin() as session:
        yield session
        feedversion.bump(session)


def add_item(session: Session, plu: str, name: str, unit: str, *, name_en: str = "",
             cap_fen: int | None = None, active: bool = True, label: str | None = None) -> None:
    now = dt.datetime.now(UTC)
    session.add(db.Item(plu=plu, name=name, name_en=name_en or name, category="蔬菜",
                        price_unit=unit, origin="上海崇明", label=label, cap_fen=cap_fen,
                        active=active, created_at=now, updated_at=now))
    session.flush()


def set_price(session: Session, stall_id: str, plu: str, fen: int) -> None:
    row = session.get(db.StallPrice, (stall_id, plu))
    if row is None:
        session.add(db.StallPrice(stall_id=stall_id, plu=plu, unit_price_fen=fen,
                                  updated_at=dt.datetime.now(UTC)))
    else:
        row.unit_price_fen = fen
    session.flush()


def add_special(session: Session, stall_id: str, plu: str, fen: int, starts: dt.datetime,
                ends: dt.datetime, *, title: str = "早市特价", cancelled: bool = False) -> int:
    row = db.Promotion(stall_id=stall_id, plu=plu, special_price_fen=fen, starts_at=starts,
                       ends_at=ends, title=title, created_by="admin", created_at=dt.datetime.now(UTC),
                       cancelled_at=dt.datetime.now(UTC) if cancelled else None)
    session.add(row)
    session.flush()
    return row.id


def add_inspection(session: Session, stall_id: str, batch: str, plu: str, result: str, *,
                   permille: int | None = 620, at: dt.datetime | None = None,
                   tester: str = "张检测") -> None:
    at = at or dt.datetime.now(UTC)
    session.add(db.Inspection(batch_code=batch, plu=plu, stall_id=stall_id, method="酶抑制率法",
                              inhibition_permille=permille, result=result, tester=tester,
                              tested_at=at, local_day=at.date(), recorded_by="admin",
                              recorded_at=dt.datetime.now(UTC)))
    session.flush()


def register(srv: LiveServer, stall_id: str) -> str:
    return register_stall(srv, StallSim(stall_id), name=f"摊位{stall_id}")


def get_feed(srv: LiveServer, token: str, **headers: str) -> httpx.Response:
    with srv.client(token) as c:
        return c.get("/api/v1/feed", headers=headers)


def test_feed_holds_what_this_stall_must_apply(server: LiveServer) -> None:
    s01, _ = register(server, "S01"), register(server, "S02")
    now = dt.datetime.now(UTC)
    with change(server) as s:
        add_item(s, "2001", "西红柿", "500g", name_en="Tomato", cap_fen=800, label="Regular-Tomato")
        add_item(s, "2002", "黄瓜", "500g")
        add_item(s, "2003", "胡萝卜", "kg")
        add_item(s, "9999", "停售菜", "kg", active=False)
        set_price(s, "S01", "2001", 300)
        set_price(s, "S01", "2003", 380)
        set_price(s, "S01", "9999", 100)          # an inactive item: not sold
        set_price(s, "S02", "2001", 500)
        set_price(s, "S02", "2002", 260)
        hour = dt.timedelta(hours=1)
        current = add_special(s, "S01", "2001", 250, now - hour, now + hour)
        upcoming = add_special(s, "S01", "2003", 300, now + 2 * hour, now + 3 * hour)
        add_special(s, "S01", "2003", 200, now - 3 * hour, now - hour)                # over
        add_special(s, "S01", "2001", 200, now - hour, now + hour, cancelled=True)   # cancelled
        add_special(s, "S02", "2002", 200, now - hour, now + hour)                   # another's
        earlier = now - dt.timedelta(days=1)
        add_inspection(s, "S01", "B20261201-03", "2001", "fail", at=now - hour)          # blocked
        add_inspection(s, "S01", "B20261201-04", "2002", "fail", at=earlier)
        add_inspection(s, "S01", "B20261201-04", "2002", "pass", at=now - hour)          # re-tested
        add_inspection(s, "S01", "B20261201-05", "2003", "pass", at=earlier)
        add_inspection(s, "S01", "B20261201-05", "2003", "fail", at=now - hour, permille=None)
        add_inspection(s, "S02", "B20261201-06", "2002", "fail")                         # another's
    r = get_feed(server, s01)
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == '"feed1-1-S01"'
    assert r.headers["cache-control"] == "private, no-cache"
    doc = FeedDoc.model_validate_json(r.content)  # the stall's own model takes it
    assert (doc.version, doc.stall_id, doc.timezone) == (1, "S01", "Asia/Shanghai")
    assert doc.server_time.utcoffset() == dt.timedelta(hours=8)
    assert abs((doc.server_time - dt.datetime.now(UTC)).total_seconds()) < 60
    assert [(i.plu, i.price_unit, i.cap_fen, i.market_median_fen) for i in doc.items] == [
        ("2001", "500g", 800, 300), ("2002", "500g", None, 260), ("2003", "kg", None, 380)]
    assert doc.items[0].label == "Regular-Tomato" and doc.items[0].name_en == "Tomato"
    assert [(p.plu, p.unit_price_fen) for p in doc.prices] == [("2001", 300), ("2003", 380)]
    assert [(sp.id, sp.plu, sp.special_price_fen) for sp in doc.specials] == [
        (current, "2001", 250), (upcoming, "2003", 300)]
    assert (doc.specials[1].starts_at, doc.specials[1].ends_at) == (now + 2 * hour, now + 3 * hour)
    assert doc.specials[1].starts_at.utcoffset() == dt.timedelta(hours=8)
    assert [(b.batch_code, b.plu) for b in doc.blocked] == [("B20261201-03", "2001"),
                                                             ("B20261201-05", "2003")]
    tomato, carrot = doc.blocked
    assert tomato.reason.startswith("批次 B20261201-03（西红柿）农残快检不合格（酶抑制率法，抑制率 62.0%，"
                                    "检测员 张检测，")
    assert "禁止销售 / batch B20261201-03 failed the rapid test (酶抑制率法, inhibition 62.0%" \
        in tomato.reason
    assert (tomato.inhibition_permille, tomato.tester) == (620, "张检测")
    assert "%" not in carrot.reason and carrot.inhibition_permille is None
    with server.app.state.sessionmaker() as s:  # the inspections API's rule, the same batches
        assert {b.inspection_id for b in doc.blocked} == {
            row.id for row in inspections.blocked_batches(s, "S01")}


def _statements(srv: LiveServer) -> tuple[list[str], Any]:
    seen: list[str] = []

    def record(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        seen.append(statement)

    event.listen(srv.app.state.engine, "before_cursor_execute", record)
    return seen, record


def test_etag_answers_304_without_touching_sales_and_a_change_answers_200(server: LiveServer) -> None:
    token = register(server, "S01")
    with change(server) as s:
        add_item(s, "2001", "西红柿", "500g")
        set_price(s, "S01", "2001", 300)
    first = get_feed(server, token)
    tag = first.headers["etag"]
    assert first.status_code == 200 and tag == '"feed1-1-S01"'

    seen, record = _statements(server)
    try:
        again = get_feed(server, token, **{"If-None-Match": tag})
        weak = get_feed(server, token, **{"If-None-Match": f'"other", W/{tag}'})
    finally:
        event.remove(server.app.state.engine, "before_cursor_execute", record)
    assert (again.status_code, again.content, again.headers["etag"]) == (304, b"", tag)
    assert weak.status_code == 304
    # Per 304: one query (stall + version); no sales.  The request guard knows the token from
    # the first request (server.auth.StallTokens) and reads nothing.
    selects = [q for q in seen if q.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 2, seen
    assert not any("sale" in q.lower() for q in seen), seen

    with change(server) as s:  # a price change: a new version, a new body
        set_price(s, "S01", "2001", 320)
    changed = get_feed(server, token, **{"If-None-Match": tag})
    assert changed.status_code == 200 and changed.headers["etag"] == '"feed1-2-S01"'
    assert FeedDoc.model_validate_json(changed.content).prices[0].unit_price_fen == 320
    # Another stall's ETag of the same version is not this stall's.
    other = register(server, "S02")
    assert get_feed(server, other, **{"If-None-Match": '"feed1-2-S01"'}).status_code == 200


def test_feed_needs_a_stall_token(server: LiveServer) -> None:
    register(server, "S01")
    with server.client() as c:
        assert c.get("/api/v1/feed").status_code == 401
    assert get_feed(server, "not-a-token").status_code == 401
    assert get_feed(server, "not-a-token", **{"If-None-Match": '"feed1-0-S01"'}).status_code == 401


def test_long_poll_answers_at_the_change_and_304_when_none_comes(server: LiveServer) -> None:
    token = register(server, "S01")
    tag = get_feed(server, token).headers["etag"]
    with server.client(token) as c:
        t0 = time.monotonic()
        r = c.get("/api/v1/feed", params={"wait": 1}, headers={"If-None-Match": tag})
        assert r.status_code == 304 and time.monotonic() - t0 >= 0.9
        assert c.get("/api/v1/feed", params={"wait": 31}).status_code == 422

    answer: list[httpx.Response] = []

    def long_poll() -> None:
        with server.client(token) as c:
            answer.append(c.get("/api/v1/feed", params={"wait": 25}, headers={"If-None-Match": tag},
                                timeout=40))

    poller = threading.Thread(target=long_poll)
    poller.start()
    watcher = None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # until the poll waits on the server
        watcher = getattr(server.app.state, "feed_watcher", None)
        if watcher is not None and watcher.waiters == 1:
            break
        time.sleep(0.02)
    assert watcher is not None and watcher.waiters == 1
    t0 = time.monotonic()
    with change(server) as s:
        add_inspection(s, "S01", "B1", "2001", "fail")
    poller.join(timeout=20)
    took = time.monotonic() - t0
    assert answer and answer[0].status_code == 200, answer
    assert took < 10, took  # at the change (checked every 0.5 s), not after the 25 s
    doc = FeedDoc.model_validate_json(answer[0].content)
    assert doc.version == 1 and [b.batch_code for b in doc.blocked] == ["B1"]
    assert watcher.waiters == 0
