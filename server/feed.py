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

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

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


def stall_and_version(session: Session, token: str) -> tuple[str, int] | None:
    """The stall of ``token`` and the feed version, in one query; None for an unknown token."""
    version = select(db.Meta.value).where(db.Meta.key == feedversion.KEY).scalar_subquery()
    row = session.execute(select(db.Stall.stall_id, version)
                          .where(db.Stall.token_sha256 == token_hash(token))).first()
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
    rows = session.execute(select(db.Item).where(db.Item.active.is_(True))
                           .order_by(db.Item.plu)).scalars()
    return [FeedItem(plu=i.plu, name=i.name, name_en=i.name_en, category=i.category,
                     price_unit=i.price_unit,  # type: ignore[arg-type]
                     picture=i.picture, origin=i.origin, label=i.label, cap_fen=i.cap_fen,
                     market_median_fen=(statistics.median_low(prices[i.plu])
                                        if i.plu in prices else None))
            for i in rows]


def _inhibition(permille: int | None) -> tuple[str, str]:
    if permille is None:
        return "", ""
    pct = f"{permille // 10}.{permille % 10}%"
    return f"，抑制率 {pct}", f", inhibition {pct}"


def block_reason(ins: db.Inspection, name: str | None, tz: zoneinfo.ZoneInfo) -> str:
    """What the stall's screen says of a failed batch, in Chinese and English."""
    when = ins.tested_at.astimezone(tz).strftime("%Y-%m-%d %H:%M")
    zh_pct, en_pct = _inhibition(ins.inhibition_permille)
    item = f"（{name}）" if name else " "
    return (f"批次 {ins.batch_code}{item}农残快检不合格（{ins.method}{zh_pct}，检测员 {ins.tester}，"
            f"{when}），禁止销售 / batch {ins.batch_code} failed the rapid test ({ins.method}"
            f"{en_pct}, tester {ins.tester}, {when}): not for sale")


def blocked_batches(session: Session, stall_id: str, tz: zoneinfo.ZoneInfo) -> list[FeedBlock]:
    """The stall's batches whose latest test (by test time, then record) failed: the rule of
    ``server.inspections.blocked_batches``, with the stall's own tests ranked only."""
    ins = db.Inspection
    ranked = select(ins, func.row_number().over(
        partition_by=ins.batch_code, order_by=(ins.tested_at.desc(), ins.id.desc())).label("rank")
    ).where(ins.stall_id == stall_id).subquery()
    latest = aliased(ins, ranked)
    rows = session.execute(
        select(latest, db.Item.name).outerjoin(db.Item, db.Item.plu == latest.plu)
        .where(ranked.c.rank == 1, latest.result == "fail")
        .order_by(latest.tested_at, latest.id)).all()
    return [FeedBlock(batch_code=row.batch_code, plu=row.plu, reason=block_reason(row, name, tz),
                      method=row.method, inhibition_permille=row.inhibition_permille,
                      tester=row.tester, tested_at=row.tested_at.astimezone(tz),
                      inspection_id=row.id)
            for row, name in rows]


def build_feed(session: Session, stall_id: str, tz: zoneinfo.ZoneInfo, market: MarketPart,
               now: dt.datetime | None = None) -> tuple[int, FeedDoc]:
    """The stall's feed and its version (read first: the content is at least that new)."""
    version = feedversion.current(session)
    now = now or dt.datetime.now(dt.UTC)
    items = market.get(session, version)
    active = select(db.Item.plu).where(db.Item.active.is_(True))
    prices = session.execute(
        select(db.StallPrice.plu, db.StallPrice.unit_price_fen)
        .where(db.StallPrice.stall_id == stall_id, db.StallPrice.plu.in_(active))
        .order_by(db.StallPrice.plu)).all()
    p = db.Promotion
    specials = session.execute(
        select(p).where(p.stall_id == stall_id, p.cancelled_at.is_(None), p.ends_at > now,
                        p.plu.in_(active))
        .order_by(p.starts_at, p.id)).scalars()
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
