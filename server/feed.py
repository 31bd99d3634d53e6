"""The stalls' feed: what one stall must apply, at one version (``GET /api/v1/feed``).

The document is ``edge.feed.FeedDoc`` (the stall validates it with the very same model):
the market's active items with their caps and the median of the stalls' current prices,
this stall's prices, its specials not yet over, and its blocked batches (a batch whose
latest rapid test failed), with ``version`` (``server.feedversion``) and the server's
time.  Nothing here reads sales: the feed costs the same with ten or ten million stored.

The ETag is the format, the version and the stall (``"feed1-17-S01"``).  A stall that
sends it back as ``If-None-Match`` gets 304 after one query (:func:`stall_and_version`);
the version is read before the content, so a feed is never older than its ETag says.
``VersionWatcher`` holds long polls: one shared check of the version every half second
while any stall waits, whatever the number of stalls (no thread per stall).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import statistics
import threading
import zoneinfo
from collections.abc import Callable

from sqlalchemy import Connection, bindparam, func, select
from sqlalchemy.orm import Session

from edge.feed import FORMAT, FeedBlock, FeedDoc, FeedItem, FeedPrice, FeedSpecial
from server import db, feedversion
from server.auth import token_hash

logger = logging.getLogger(__name__)


def etag(version: int, stall_id: str) -> str:
    return f'"feed{FORMAT}-{version}-{stall_id}"'


def etag_matches(if_none_match: str | None, tag: str) -> bool:
    """RFC 9110's weak comparison of ``If-None-Match`` (a list, or ``*``) with ``tag``."""
    if not if_none_match:
        return False
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == tag:
            return True
    return False


#: The stall of a token and the feed version, by the token's unique index and the key of
#: ``server_meta``: all a 304 reads (built once: every stall asks again and again).
_STALL_AND_VERSION = select(
    db.Stall.stall_id,
    select(db.Meta.value).where(db.Meta.key == feedversion.KEY).scalar_subquery(),
).where(db.Stall.token_sha256 == bindparam("token_sha256"))


def stall_and_version(conn: Connection, token: str) -> tuple[str, int] | None:
    """The stall of ``token`` and the feed version, in one query; None for an unknown token."""
    row = conn.execute(_STALL_AND_VERSION, {"token_sha256": token_hash(token)}).first()
    if row is None:
        return None
    return str(row[0]), int(row[1]) if row[1] is not None else 0


class MarketPart:
    """The items part, the same for every stall at one version: built once per version,
    since every stall asks for it right after a change."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cached: tuple[int, list[FeedItem]] | None = None

    def get(self, session: Session, version: int) -> list[FeedItem]:
        cached = self._cached
        if cached is not None and cached[0] == version:
            return cached[1]
        with self._lock:  # one builder; the stalls asking at once wait for its answer
            cached = self._cached
            if cached is not None and cached[0] == version:
                return cached[1]
            items = market_items(session)
            self._cached = (version, items)
            return items


def market_items(session: Session) -> list[FeedItem]:
    """Active items by PLU, each with its cap and the median of the stalls' current prices."""
    prices: dict[str, list[int]] = {}
    for plu, fen in session.execute(select(db.StallPrice.plu, db.StallPrice.unit_price_fen)):
        prices.setdefault(plu, []).append(fen)
    it = db.Item
    rows = session.execute(select(it.plu, it.name, it.name_en, it.category, it.price_unit, it.picture,
                                  it.origin, it.label, it.cap_fen)
                           .where(it.active.is_(True)).order_by(it.plu))
    return [FeedItem(**row._asdict(), market_median_fen=(
                statistics.median_low(prices[row.plu]) if row.plu in prices else None))
            for row in rows]


def _inhibition(permille: int | None) -> tuple[str, str]:
    if permille is None:
        return "", ""
    pct = f"{permille // 10}.{permille % 10}%"
    return f"，抑制率 {pct}", f", inhibition {pct}"


def block_reason(batch_code: str, name: str | None, method: str, inhibition_permille: int | None,
                 tester: str, tested_at: dt.datetime, tz: zoneinfo.ZoneInfo) -> str:
    """What the stall's screen says of a failed batch, in Chinese and English."""
    when = tested_at.astimezone(tz).strftime("%Y-%m-%d %H:%M")
    zh_pct, en_pct = _inhibition(inhibition_permille)
    item = f"（{name}）" if name else " "
    return (f"批次 {batch_code}{item}农残快检不合格（{method}{zh_pct}，检测员 {tester}，{when}），"
            f"禁止销售 / batch {batch_code} failed the rapid test ({method}{en_pct}, tester "
            f"{tester}, {when}): not for sale")


# The per-stall queries, built once (a stall's feed is asked for by every stall after each
# change); each reads by the stall's index.
_ACTIVE = select(db.Item.plu).where(db.Item.active.is_(True))
_PRICES = (select(db.StallPrice.plu, db.StallPrice.unit_price_fen)
           .where(db.StallPrice.stall_id == bindparam("stall_id"), db.StallPrice.plu.in_(_ACTIVE))
           .order_by(db.StallPrice.plu))
_p = db.Promotion
_SPECIALS = (select(_p.id, _p.plu, _p.special_price_fen, _p.starts_at, _p.ends_at, _p.title)
             .where(_p.stall_id == bindparam("stall_id"), _p.cancelled_at.is_(None),
                    _p.ends_at > bindparam("now", type_=db.UTCDateTime()), _p.plu.in_(_ACTIVE))
             .order_by(_p.starts_at, _p.id))
_ins = db.Inspection
#: The stall's tests ranked inside each batch, 1 the latest (by test time, then record): the
#: rule of ``server.inspections.blocked_batches``, with only this stall's tests ranked.
_RANKED = select(
    _ins.id, _ins.batch_code, _ins.plu, _ins.method, _ins.inhibition_permille, _ins.result,
    _ins.tester, _ins.tested_at,
    func.row_number().over(partition_by=_ins.batch_code,
                           order_by=(_ins.tested_at.desc(), _ins.id.desc())).label("rank"),
).where(_ins.stall_id == bindparam("stall_id")).subquery()
_BLOCKED = (select(_RANKED, db.Item.name).outerjoin(db.Item, db.Item.plu == _RANKED.c.plu)
            .where(_RANKED.c.rank == 1, _RANKED.c.result == "fail")
            .order_by(_RANKED.c.tested_at, _RANKED.c.id))


def blocked_batches(session: Session, stall_id: str, tz: zoneinfo.ZoneInfo) -> list[FeedBlock]:
    """The stall's batches whose latest test failed, each with the reason for its screen."""
    return [FeedBlock(batch_code=r.batch_code, plu=r.plu, method=r.method, tester=r.tester,
                      reason=block_reason(r.batch_code, r.name, r.method, r.inhibition_permille,
                                          r.tester, r.tested_at, tz),
                      inhibition_permille=r.inhibition_permille,
                      tested_at=r.tested_at.astimezone(tz), inspection_id=r.id)
            for r in session.execute(_BLOCKED, {"stall_id": stall_id})]


def build_feed(session: Session, stall_id: str, tz: zoneinfo.ZoneInfo, market: MarketPart,
               now: dt.datetime | None = None) -> tuple[int, FeedDoc]:
    """The stall's feed and its version (read first: the content is at least that new)."""
    version = feedversion.current(session)
    now = now or dt.datetime.now(dt.UTC)
    items = market.get(session, version)
    prices = session.execute(_PRICES, {"stall_id": stall_id})
    specials = session.execute(_SPECIALS, {"stall_id": stall_id, "now": now})
    doc = FeedDoc(
        format=FORMAT, version=version, stall_id=stall_id, server_time=now.astimezone(tz),
        timezone=tz.key, items=items,
        prices=[FeedPrice(plu=plu, unit_price_fen=fen) for plu, fen in prices],
        specials=[FeedSpecial(id=s.id, plu=s.plu, special_price_fen=s.special_price_fen,
                              starts_at=s.starts_at.astimezone(tz), ends_at=s.ends_at.astimezone(tz),
                              title=s.title) for s in specials],
        blocked=blocked_batches(session, stall_id, tz),
    )
    return version, doc


class VersionWatcher:
    """Long polls wait here for the version to pass the one they hold.

    One task reads the version every ``interval_s`` while anyone waits (a primary-key
    read of one row), and wakes every waiter when it grows; at most ``max_waiters`` wait
    at once, beyond that :meth:`wait` answers at once.
    """

    def __init__(self, read: Callable[[], int], interval_s: float = 0.5,
                 max_waiters: int = 2000) -> None:
        self._read = read
        self.interval_s = interval_s
        self.max_waiters = max_waiters
        self._latest = -1
        self._waiters = 0
        self._changed: asyncio.Condition | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def waiters(self) -> int:
        return self._waiters

    async def wait(self, known: int, timeout_s: float) -> bool:
        """True once the version is above ``known``; False after ``timeout_s`` (or at once
        when too many wait)."""
        if self._waiters >= self.max_waiters:
            return False
        if self._changed is None:
            self._changed = asyncio.Condition()
        self._waiters += 1
        try:
            if self._task is None or self._task.done():
                self._task = asyncio.create_task(self._poll())
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(lambda: self._latest > known),
                                       timeout_s)
            return True
        except TimeoutError:
            return False
        finally:
            self._waiters -= 1

    async def _poll(self) -> None:
        assert self._changed is not None
        while self._waiters > 0:
            try:
                version = await asyncio.to_thread(self._read)
            except Exception:  # noqa: BLE001 - a database hiccup: waiters time out, try again
                logger.exception("reading the feed version failed")
            else:
                if version != self._latest:
                    self._latest = version
                    async with self._changed:
                        self._changed.notify_all()
            await asyncio.sleep(self.interval_s)
        self._latest = -1  # nobody watches: the next waiter starts from a fresh read
