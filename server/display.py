"""Everything the entrance big screen (``/display``) shows, in one response.

The figures come from the services that own them, never from rules of this module:
today's sales, hours, ranking and best sellers (``server.stats.today``), the same
hours a day and a week before (``stats.hours``), the week's and the month's ranking
(``stats.stall_ranking``), the main items' price trend, their day-on-day and
week-on-week change, risers and fallers and the hot categories (``server.stats``,
all from the rollups), the current specials (``server.promotions``), the day's rapid
tests (``server.inspections.summary``) and the latest sales received
(``stats.recent_sales``).  Every query reads a rollup, the small management tables or
an index (``sales.received_at``), so the answer costs the same with ten million sales
stored as with ten.

The screen fetches this once, then follows ``/api/v1/events``: ``sales`` events carry
today's figures and the recent sales; a ``market`` event (``server.events``: a special,
a test, a price or the catalogue changed) makes it fetch this again; and it fetches
again when a special starts or ends (``next_change_at``) and once a minute, for the new
market day and for anything it missed.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import zoneinfo
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from server import db, inspections, promotions, stats

#: Stalls shown in the week's and the month's ranking (the day's shows every stall).
PERIOD_TOP = 5
#: The main items of the price trend: the window's best sellers by amount.
TREND_ITEMS = 6
DEFAULT_TREND_DAYS = 14
#: Tests of the day listed besides the failed batches (the newest first).
LATEST_TESTS = 8
#: Specials shown: the current ones, then those starting later today.
MAX_SPECIALS = 30
RECENT_SALES = 12


#: How long the week's and the month's ranking are reused (see :class:`PeriodCache`).
PERIOD_TTL_S = 30.0


class PeriodCache:
    """The week's and the month's stall ranking, reused for ``ttl`` seconds.

    They are the dearest figures of the screen (every stall's days of the period and of
    the period before, half the answer's time with 200 stalls) and move least: a few
    sales more among a month's.  Everything of today stays exact and live; these lag
    new sales by at most ``ttl``.  One per app (``app.state``), so each database has its own.
    """

    def __init__(self, ttl: float = PERIOD_TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._kept: dict[tuple[str, dt.date], tuple[float, stats.StallRanking]] = {}

    def ranking(self, session: Session, period: stats.Period, day: dt.date) -> stats.StallRanking:
        now = self._clock()
        with self._lock:
            kept = self._kept.get((period, day))
        if kept is not None and now - kept[0] < self._ttl:
            return kept[1]
        r = stats.stall_ranking(session, period, day)
        r = r.model_copy(update={"ranking": r.ranking[:PERIOD_TOP]})
        with self._lock:  # only the latest day's are worth keeping
            self._kept = {k: v for k, v in self._kept.items() if k[1] == day}
            self._kept[(period, day)] = (now, r)
        return r


def _local(t: dt.datetime, tz: zoneinfo.ZoneInfo) -> str:
    return t.astimezone(tz).isoformat(timespec="seconds")


def recent(session: Session, tz: zoneinfo.ZoneInfo, limit: int = RECENT_SALES) -> list[dict[str, Any]]:
    """The ticker: the latest sales as ``stats.recent_sales`` gives them, with each stall's
    name and without the trace code (the screen shows what sold, not who bought it or
    how to open their receipt)."""
    sales = stats.recent_sales(session, tz, limit)
    ids = {s["stall_id"] for s in sales}
    names: dict[str, str] = {sid: name for sid, name in session.execute(
        select(db.Stall.stall_id, db.Stall.name).where(db.Stall.stall_id.in_(ids)))} if ids else {}
    return [{"stall_id": s["stall_id"], "stall_name": names.get(s["stall_id"], ""),
             "sold_at": s["sold_at"], "total_fen": s["total_fen"], "items": s["items"],
             "items_en": s["items_en"]} for s in sales]


def _specials(session: Session, tz: zoneinfo.ZoneInfo, now: dt.datetime,
              day_ends: dt.datetime) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    current = promotions.list_promotions(session, tz, when="current", limit=MAX_SPECIALS, now=now)
    upcoming = promotions.list_promotions(session, tz, when="upcoming",
                                          limit=MAX_SPECIALS - len(current) or 1, now=now)
    later_today = [p for p in upcoming if dt.datetime.fromisoformat(p["starts_at"]) < day_ends]
    return current, later_today[:MAX_SPECIALS - len(current)]


def _next_change(current: list[dict[str, Any]], upcoming: list[dict[str, Any]]) -> str | None:
    """The next instant a special starts or ends: the screen fetches again then."""
    times = [p["ends_at"] for p in current] + [p["starts_at"] for p in upcoming]
    return min(times, key=dt.datetime.fromisoformat) if times else None


def _main_items(session: Session, day: dt.date, trend: stats.PriceTrend) -> list[stats.ItemPriceDay]:
    """Each trend item's latest average price (today's, else the day before's) with its
    day-on-day and week-on-week change, in the trend's order."""
    plus = [it.plu for it in trend.items]
    if not plus:
        return []
    latest: dict[str, stats.ItemPriceDay] = {}
    for row in stats.item_prices(session, day - dt.timedelta(days=1), day, plus):
        if row.avg_price_fen is not None:
            latest[row.plu] = row  # by day: today's comes last
    return [latest[p] for p in plus if p in latest]


def figures(session: Session, market: str, tz: zoneinfo.ZoneInfo, *,
            trend_days: int = DEFAULT_TREND_DAYS, now: dt.datetime | None = None,
            periods: PeriodCache | None = None) -> dict[str, Any]:
    """What ``GET /api/v1/display`` answers (``server.routes.display.DisplayOut``); the week's
    and month's ranking from ``periods`` when given (else computed now)."""
    now = now or dt.datetime.now(dt.UTC)
    periods = periods or PeriodCache(ttl=0)
    day = stats.local_today(tz, now)
    day_ends = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tz)
    yesterday, week_ago = day - dt.timedelta(days=1), day - dt.timedelta(days=7)
    current, upcoming = _specials(session, tz, now, day_ends)
    trend = stats.price_trend(session, day, trend_days, top=TREND_ITEMS)
    ranking = {period: periods.ranking(session, period, day) for period in ("week", "month")}
    checks = inspections.summary(session, tz, day)
    checks["latest"] = inspections.describe(
        session, inspections.list_inspections(session, day=day, limit=LATEST_TESTS), tz)
    return {
        "market": market,
        "now": _local(now, tz),
        "day": day,
        "today": stats.today(session, tz, day),
        "compare": {"yesterday": {"day": yesterday, "hours": stats.hours(session, yesterday)},
                    "last_week": {"day": week_ago, "hours": stats.hours(session, week_ago)}},
        "ranking": ranking,
        "specials": current,
        "specials_later": upcoming,
        "next_change_at": _next_change(current, upcoming),
        "inspections": checks,
        "price_trend": trend,
        "main_items": _main_items(session, day, trend),
        "movers": stats.movers(session, day),
        "categories": stats.categories(session, day),
        "recent": recent(session, tz),
    }
