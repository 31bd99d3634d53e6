"""The stall follows the market's feed: a real market server on 127.0.0.1, changed through
its own API (items, prices, specials, rapid tests), and a real stall (simulated scale on a
pty, journal, file printer)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edge import CatalogueError, PricingError
from edge.catalogue import Plu, Promotion
from edge.config import StallConfig
from edge.demo_data import catalogue
from edge.feed import FEED_FILE, PREV_FILE, FeedClient, FeedDoc, build_catalogue, save_feed
from edge.stall import StallApp
from server.app import create_app
from server.settings import Settings
from tests.conftest import LiveServer
from tests.edge.test_stall import wait_for
from tests.server.conftest import ADMIN

UTC = dt.UTC
HOUR = dt.timedelta(hours=1)
#: The demo's S02 seed: batch B<day>-<last two digits of the PLU>, 西红柿 2001 at 3.00 元/500g.
DAY = "20261128"
TOMATO_BATCH = f"B{DAY}-01"


def start_market(db: Path) -> tuple[LiveServer, str]:
    srv = LiveServer(create_app(Settings(db_url=f"sqlite:///{db}", admin_token=ADMIN))).__enter__()
    with srv.client(ADMIN) as c:
        token = c.post("/api/v1/stalls", json={"stall_id": "S02", "name": "李家蔬菜"}).json()["token"]
    return srv, token


@pytest.fixture
def market(tmp_path: Path) -> Iterator[tuple[LiveServer, str]]:
    srv, token = start_market(tmp_path / "market.db")
    try:
        yield srv, token
    finally:
        srv.__exit__(None, None, None)


def stall_config(tmp_path: Path, url: str, token: str, **feed: Any) -> StallConfig:
    # A short long poll, so that a test's server stops without waiting for an open poll.
    return StallConfig(stall_id="S02", name="李家蔬菜", data_dir=tmp_path / "S02",
                       catalogue=catalogue("S02", DAY), seed=3,
                       server={"url": url, "token": token},  # type: ignore[arg-type]
                       feed={"wait_s": 2, **feed},  # type: ignore[arg-type]
                       printer={"type": "file"},  # type: ignore[arg-type]
                       screens={"enabled": False})  # type: ignore[arg-type]


@contextmanager
def running(cfg: StallConfig) -> Iterator[StallApp]:
    app = StallApp(cfg)
    app.start()
    try:
        yield app
    finally:
        app.stop()


def version_of(app: StallApp) -> int | None:
    assert app.session is not None
    return app.session.feed_state.version if app.session.feed_state else None


def post(srv: LiveServer, path: str, body: dict[str, Any], token: str = ADMIN) -> None:
    with srv.client(token) as c:
        r = c.post(path, json=body)
    assert r.status_code == 201, r.text


def add_item(srv: LiveServer, plu: str, name: str, name_en: str, unit: str, **more: Any) -> None:
    post(srv, "/api/v1/items", {"plu": plu, "name": name, "name_en": name_en, "category": "蔬菜",
                                "price_unit": unit, **more})


def set_price(srv: LiveServer, token: str, plu: str, fen: int) -> None:
    """The stall's vendor sets its own price (with the stall's token)."""
    with srv.client(token) as c:
        r = c.put(f"/api/v1/prices/S02/{plu}", json={"unit_price_fen": fen})
    assert r.status_code == 200, r.text


def add_special(srv: LiveServer, plu: str, fen: int, starts: dt.datetime, ends: dt.datetime) -> None:
    post(srv, "/api/v1/promotions", {"stall_id": "S02", "plu": plu, "special_price_fen": fen,
                                     "starts_at": starts.isoformat(), "ends_at": ends.isoformat(),
                                     "title": "早市特价"})


def add_inspection(srv: LiveServer, batch: str, plu: str, percent: float, tester: str = "王检测") -> None:
    post(srv, "/api/v1/inspections", {
        "batch_code": batch, "plu": plu, "stall_id": "S02", "inhibition_percent": percent,
        "tester": tester, "tested_at": dt.datetime.now(UTC).isoformat()})


def price_market(srv: LiveServer, token: str) -> None:
    """The market prices stall S02: 西红柿 at 3.20 元/500g and corn by the piece."""
    add_item(srv, "2001", "西红柿", "Tomato", "500g", cap_fen=1000, label="Regular-Tomato")
    add_item(srv, "2099", "玉米", "Corn", "piece")
    set_price(srv, token, "2001", 320)
    set_price(srv, token, "2099", 150)


def weigh(app: StallApp, code: str, grams: int) -> int:
    """Put ``grams`` of ``code`` on the simulated scale and in the basket; its amount."""
    session, sim = app.session, app.sim
    assert session is not None and sim is not None
    assert wait_for(lambda: session.weigh_state.name == "STABLE_ZERO")
    session.select(code)
    sim.place(grams)
    assert wait_for(lambda: session.current_line() is not None)
    amount = session.add_weighed().amount_fen
    sim.remove()
    return amount


def test_a_price_change_reaches_the_stall_between_baskets_not_inside_one(
        market: tuple[LiveServer, str], tmp_path: Path) -> None:
    srv, token = market
    price_market(srv, token)
    with running(stall_config(tmp_path, srv.url, token)) as app:
        session = app.session
        assert session is not None
        assert wait_for(lambda: version_of(app) == 4)
        # The market's catalogue, with what only the stall knows kept (its batch code).
        tomato = session.catalogue.get("2001")
        assert (tomato.unit_price_fen, tomato.price_cap_fen, tomato.batch_code, tomato.label) == (
            320, 1000, TOMATO_BATCH, "Regular-Tomato")
        assert sorted(item.code for item in session.catalogue) == ["2001", "2099"]
        with pytest.raises(CatalogueError, match="unknown PLU '2003'"):  # the seed's, not priced
            session.select("2003")

        assert session.add_pieces("2099", 2).amount_fen == 300
        set_price(srv, token, "2099", 180)  # while the shopper's basket is open
        set_price(srv, token, "2001", 360)
        assert wait_for(lambda: session.catalogue_pending and version_of(app) == 4)
        assert wait_for(lambda: app.feed is not None and app.feed.state.version == 6)
        # The open basket keeps the prices it was started with, weighed lines too.
        assert session.add_pieces("2099", 1).unit_price_fen == 150
        assert weigh(app, "2001", 1000) == 640
        sale = app.checkout()
        assert [(ln.plu, ln.unit_price_fen, ln.amount_fen) for ln in sale.lines] == [
            ("2099", 150, 300), ("2099", 150, 150), ("2001", 320, 640)]
        # Checked out: the new prices apply to the next basket.
        assert not session.catalogue_pending and version_of(app) == 6
        assert session.add_pieces("2099", 1).unit_price_fen == 180
        assert weigh(app, "2001", 1000) == 720
        session.discard("shopper left")

        set_price(srv, token, "2099", 170)  # with no basket open the change applies at once
        assert wait_for(lambda: session.catalogue.get("2099").unit_price_fen == 170)
        assert version_of(app) == 7


def test_with_the_server_away_the_stall_sells_on_its_last_copy_and_restarts_from_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    srv, token = start_market(tmp_path / "market.db")
    try:
        price_market(srv, token)
        cfg = stall_config(tmp_path, srv.url, token)
        app = StallApp(cfg)
        app.start()
        assert wait_for(lambda: version_of(app) == 4)
    finally:
        srv.__exit__(None, None, None)  # the market server goes away
    try:
        assert app.feed is not None
        assert wait_for(lambda: app.feed is not None and not app.feed.online)
        session = app.session
        assert session is not None
        session.add_pieces("2099", 2)
        assert weigh(app, "2001", 500) == 320
        sale = app.checkout()
        assert sale.total_fen == 300 + 320
    finally:
        app.stop()
    saved = (cfg.data_dir / FEED_FILE).read_bytes()

    caplog.set_level(logging.INFO, logger="edge.feed")
    with running(cfg) as again:  # a restart while the server is still away
        session = again.session
        assert session is not None
        assert version_of(again) == 4
        assert "starting from the saved feed, version 4" in caplog.text
        assert session.catalogue.get("2001").unit_price_fen == 320  # not the seed's 300
        assert session.add_pieces("2099", 1).amount_fen == 150
        assert again.checkout().receipt_no == 2
    assert (cfg.data_dir / FEED_FILE).read_bytes() == saved


def test_a_failed_inspection_on_the_server_stops_that_batch_at_the_stall(
        market: tuple[LiveServer, str], tmp_path: Path) -> None:
    srv, token = market
    add_item(srv, "2001", "西红柿", "Tomato", "500g")  # no price of S02: it sells its config's items
    add_item(srv, "2003", "胡萝卜", "Carrot", "kg")
    with running(stall_config(tmp_path, srv.url, token)) as app:
        session = app.session
        assert session is not None
        assert wait_for(lambda: version_of(app) == 2)
        session.select("2001")  # chosen before the block arrives
        add_inspection(srv, TOMATO_BATCH, "2001", 62.0)
        add_inspection(srv, f"B{DAY}-99", "2003", 70.0)  # not the batch it sells
        assert wait_for(lambda: session.block_reason("2001") is not None)
        reason = session.block_reason("2001")
        assert reason is not None and reason.startswith(
            f"批次 {TOMATO_BATCH}（西红柿）农残快检不合格（酶抑制率法 (GB/T 5009.199)，抑制率 62.0%，"
            "检测员 王检测，")
        assert "禁止销售 / batch" in reason and "failed the rapid test" in reason
        with pytest.raises(CatalogueError) as refused:
            session.select("2001")
        assert str(refused.value) == reason
        with pytest.raises(PricingError, match="choose an item first"):  # the choice was dropped
            session.add_weighed()
        assert session.block_reason("2003") is None
        assert weigh(app, "2003", 1000) == 380  # its other batches still sell

        add_inspection(srv, TOMATO_BATCH, "2001", 12.5)  # re-tested and passed: it sells again
        app.checkout()
        assert wait_for(lambda: session.block_reason("2001") is None)
        assert weigh(app, "2001", 500) == 300


def test_specials_are_priced_inside_their_window_only(
        market: tuple[LiveServer, str], tmp_path: Path) -> None:
    srv, token = market
    now = dt.datetime.now(UTC)
    add_item(srv, "2098", "鸡蛋", "Egg", "piece")
    add_item(srv, "2099", "玉米", "Corn", "piece")
    set_price(srv, token, "2098", 100)
    set_price(srv, token, "2099", 150)
    add_special(srv, "2099", 120, now - HOUR, now + HOUR)          # now
    add_special(srv, "2098", 80, now + HOUR, now + 2 * HOUR)       # later today
    with running(stall_config(tmp_path, srv.url, token)) as app:
        session = app.session
        assert session is not None
        assert wait_for(lambda: version_of(app) == 6)
        corn = session.add_pieces("2099", 2)
        egg = session.add_pieces("2098", 3)
        assert (corn.unit_price_fen, corn.amount_fen, corn.promotion) == (120, 240, True)
        assert (egg.unit_price_fen, egg.amount_fen, egg.promotion) == (100, 300, False)
        assert len(session.catalogue.get("2098").specials) == 1  # the upcoming one only
        sale = app.checkout()
    assert [ln.unit_price_fen for ln in sale.lines] == [120, 100]
    receipt = (app.cfg.data_dir / "receipts" / f"0000001-{sale.trace_code}.bin").read_bytes()
    assert "2个 x ￥1.20/个".encode("gb18030") in receipt  # the special is the unit price
    assert "￥1.50".encode("gb18030") not in receipt


def test_price_at_takes_a_special_from_its_first_instant_until_before_its_end() -> None:
    start = dt.datetime(2026, 12, 2, 8, 0, tzinfo=dt.timezone(dt.timedelta(hours=8)))
    corn = Plu(code="2099", name_zh="玉米", name_en="Corn", price_unit="piece", unit_price_fen=150,
               specials=(Promotion(unit_price_fen=120, starts_at=start, ends_at=start + HOUR),
                         Promotion(unit_price_fen=110, starts_at=start + HOUR / 2,
                                   ends_at=start + 2 * HOUR)))
    tick = dt.timedelta(microseconds=1)
    assert corn.price_at(start - tick) == 150
    assert corn.price_at(start) == 120
    assert corn.price_at(start + HOUR / 2) == 110  # overlapping: the lower one
    assert corn.price_at(start + 2 * HOUR - tick) == 110
    assert corn.price_at(start + 2 * HOUR) == 150


# ---- the saved copy --------------------------------------------------------------------


def feed_doc(version: int, prices: dict[str, int], **extra: Any) -> FeedDoc:
    now = dt.datetime.now(UTC)
    items = [{"plu": "2001", "name": "西红柿", "name_en": "Tomato", "category": "蔬菜",
              "price_unit": "500g"},
             {"plu": "2099", "name": "玉米", "name_en": "Corn", "category": "粮油",
              "price_unit": "piece"}]
    return FeedDoc.model_validate({
        "format": 1, "version": version, "stall_id": "S02", "server_time": now,
        "timezone": "Asia/Shanghai", "items": items,
        "prices": [{"plu": plu, "unit_price_fen": fen} for plu, fen in prices.items()],
        "specials": [], "blocked": [], **extra}, strict=False)


def test_a_damaged_saved_feed_at_start_is_named_and_the_seed_is_used(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = stall_config(tmp_path, "http://127.0.0.1:9", "")  # no token: offline
    cfg.data_dir.mkdir(parents=True)
    (cfg.data_dir / FEED_FILE).write_bytes(b'{"etag": "\\"feed1-4-S02\\"", "saved_at": "2026-')
    with running(cfg) as app:
        assert app.session is not None
        assert version_of(app) is None
        assert app.session.catalogue.get("2001").unit_price_fen == 300  # the config's
    assert f"saved feed {cfg.data_dir / FEED_FILE} is damaged" in caplog.text
    assert "no usable saved feed: starting from the config's catalogue" in caplog.text


def test_a_damaged_saved_feed_falls_back_to_the_copy_before_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "S02"
    folder.mkdir()
    save_feed(folder, '"feed1-4-S02"', feed_doc(4, {"2001": 330}))
    save_feed(folder, '"feed1-5-S02"', feed_doc(5, {"2001": 340}))
    assert (folder / PREV_FILE).exists()
    # Another stall's feed is refused as surely as a garbled one.
    (folder / FEED_FILE).write_text((folder / FEED_FILE).read_text().replace('"S02"', '"S03"'))
    client = FeedClient(folder, "http://127.0.0.1:9", "t", stall_id="S02",
                        seed=catalogue_items())
    items, _labels = client.initial()
    assert items.get("2001").unit_price_fen == 330 and client.state.version == 4
    assert f"saved feed {folder / FEED_FILE} is stall S03's, not S02's: not used" in caplog.text


def catalogue_items() -> list[Plu]:
    return list(stall_config(Path("/nonexistent"), "http://x", "").catalogue)


# ---- what a feed may not do -------------------------------------------------------------


class HostileServer:
    """A real HTTP server that answers GET /api/v1/feed with whatever a test sets."""

    def __init__(self) -> None:
        self.body = b""
        self.headers: dict[str, str] = {}
        self.status = 200

        async def feed(_request: Request) -> Response:
            return Response(self.body, status_code=self.status, headers=self.headers,
                            media_type="application/json")

        self.live = LiveServer(Starlette(routes=[Route("/api/v1/feed", feed)]))


def _bad_bodies(good: str) -> dict[str, bytes]:
    def edit(old: str, new: str) -> bytes:
        assert old in good, old
        return good.replace(old, new, 1).encode()

    return {
        "not JSON": b"<html>502 Bad Gateway</html>",
        "cut short": good[: len(good) // 2].encode(),
        "a price as text": edit('"unit_price_fen":320', '"unit_price_fen":"320"'),
        "a price as a float": edit('"unit_price_fen":320', '"unit_price_fen":320.0'),
        "a zero price": edit('"unit_price_fen":320', '"unit_price_fen":0'),
        "a price over the limit": edit('"unit_price_fen":320', '"unit_price_fen":100000001'),
        "per 斤": edit('"price_unit":"500g"', '"price_unit":"斤"'),
        "another stall's": edit('"stall_id":"S02"', '"stall_id":"S03"'),
        "a format to come": edit('"format":1', '"format":2'),
        "a price of an unknown item": edit('"prices":[', '"prices":[{"plu":"7777","unit_price_fen":1},'),
        "an item twice": edit('"items":[', '"items":[{"plu":"2099","name":"玉米","name_en":"",'
                              '"category":"","price_unit":"piece"},'),
        "a right-to-left override in a name": edit('"西红柿"', '"西红\\u202e柿"'),
        "an escape sequence in a name": edit('"西红柿"', '"\\u001b[2J西红柿"'),
        "no items": edit('"items":', '"things":'),
        "not an object": b"[1, 2, 3]",
        "over 16 MiB": b" " * (16 * 1024 * 1024 + 1) + good.encode(),
    }


def test_a_malformed_feed_is_refused_with_a_log_line_and_changes_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    hostile = HostileServer()
    applied: list[int | None] = []
    folder = tmp_path / "S02"
    folder.mkdir()
    good = feed_doc(7, {"2001": 320, "2099": 150}).model_dump_json()
    with hostile.live as live:
        client = FeedClient(folder, live.url, "token", stall_id="S02", seed=catalogue_items())
        client.on_catalogue = lambda _c, _l, state: applied.append(state.version)
        hostile.body, hostile.headers = good.encode(), {"ETag": '"feed1-7-S02"'}
        assert client.poll_once() is True
        assert applied == [7] and client.state.etag == '"feed1-7-S02"'
        saved = (folder / FEED_FILE).read_bytes()

        for n, (why, body) in enumerate(_bad_bodies(good).items()):
            caplog.clear()
            hostile.body, hostile.headers = body, {"ETag": f'"feed1-{8 + n}-S02"'}
            assert client.poll_once() is False, why
            assert client.refused, why
            assert "feed from the market server refused, the stall keeps version 7" in caplog.text, why
            assert applied == [7] and client.state.version == 7, why
            assert (folder / FEED_FILE).read_bytes() == saved, why

        caplog.clear()
        for _ in range(3):  # the same bad feed again and again: logged once, above
            assert client.poll_once() is False
        assert "refused" not in caplog.text
        hostile.body, hostile.headers = good.encode(), {}
        assert client.poll_once() is False and "without a usable ETag" in str(client.refused)
        hostile.status = 500
        with pytest.raises(Exception, match="500"):
            client.poll_once()
        assert applied == [7]
        client.stop()


# ---- how a feed maps onto the stall's catalogue --------------------------------------------


def test_a_price_above_the_cap_or_an_unknown_batch_of_a_blocked_item_is_not_for_sale() -> None:
    now = dt.datetime.now(UTC)
    blocked = {"batch_code": "B9", "plu": "2099", "reason": "批次 B9 农残快检不合格 / failed",
               "method": "酶抑制率法", "inhibition_permille": 700, "tester": "t",
               "tested_at": now, "inspection_id": 1}
    doc = feed_doc(3, {"2001": 320, "2099": 150}, blocked=[blocked])
    doc = doc.model_copy(update={"items": [doc.items[0].model_copy(update={"cap_fen": 300}),
                                           doc.items[1]]})
    items, _ = build_catalogue(doc, [])
    tomato, corn = items.get("2001"), items.get("2099")
    assert tomato.block_reason is not None and "高于市场限价 ￥3.00/500g" in tomato.block_reason
    # The stall does not know which batch of corn it sells: the blocked one may be it.
    assert corn.batch_code is None and corn.block_reason == blocked["reason"]


def test_before_the_market_prices_the_stall_its_config_sells_with_the_markets_rules() -> None:
    now = dt.datetime.now(UTC)
    seed = catalogue_items()
    special = {"id": 1, "plu": "2001", "special_price_fen": 250, "starts_at": now - HOUR,
               "ends_at": now + HOUR, "title": None}
    doc = feed_doc(2, {}, specials=[special])
    doc = doc.model_copy(update={"items": [doc.items[0].model_copy(update={"cap_fen": 900}),
                                           doc.items[1]]})
    items, labels = build_catalogue(doc, seed)
    assert [i.code for i in items] == [i.code for i in seed]
    tomato = items.get("2001")
    assert (tomato.unit_price_fen, tomato.price_cap_fen, tomato.price_at(now)) == (300, 900, 250)
    assert labels["Regular-Tomato"] == "2001"
    # A special in another unit than the stall's own price is not applied.
    kg = doc.model_copy(update={"items": [doc.items[0].model_copy(update={"price_unit": "kg"}),
                                          doc.items[1]]})
    assert build_catalogue(kg, seed)[0].get("2001").price_at(now) == 300
