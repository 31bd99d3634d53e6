"""Figures for the big screen and their live stream."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from sse_starlette.sse import EventSourceResponse

from server import stats
from server.deps import BrokerDep, ReadSessionDep, SettingsDep
from server.guard import GuardedRoute

router = APIRouter(prefix="/api/v1", tags=["stats"], route_class=GuardedRoute)


@router.get("/stats/today")
def stats_today(session: ReadSessionDep, settings: SettingsDep) -> dict[str, Any]:
    """Today's sales (the market's local day): count, total, stall ranking, hours, items."""
    return stats.today(session, settings.tz)


@router.get("/sales-recent")
def sales_recent(session: ReadSessionDep, settings: SettingsDep) -> list[dict[str, Any]]:
    """The last 10 sales received, ``sold_at`` in the market's time with its UTC offset."""
    return stats.recent_sales(session, settings.tz)


#: Each event of the stream (the schema describes one event, as OpenAPI 3.2 and FastAPI do).
SSE_EVENT = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["hello", "sales", "market"]},
        "data": {"type": "string", "description": "JSON: `{}` for hello; for sales "
                 "`{type, stall_id, new, today, recent}`, today as /stats/today, recent as /sales-recent; "
                 "for market `{type, changed}`, changed naming what a commit changed (inspections, "
                 "promotions, prices, items: fetch /api/v1/display again)"},
    },
}


@router.get("/events", response_class=EventSourceResponse, responses={200: {
    "description": "Server-Sent Events: `hello` at once, then `sales` after each upload that "
                   "stored sales and `market` after each change of specials, rapid tests, prices "
                   "or the catalogue; a comment line every 10 s keeps the connection open",
    "content": {"text/event-stream": {"schema": SSE_EVENT}}}})
async def events(request: Request, broker: BrokerDep) -> EventSourceResponse:
    """Server-Sent Events: a ``sales`` event carrying today's figures after each upload."""
    queue = broker.subscribe()

    async def stream() -> AsyncIterator[dict[str, str]]:
        try:
            yield {"event": "hello", "data": "{}"}
            while True:
                try:
                    ev = await asyncio.wait_for(queue.get(), timeout=15)
                except TimeoutError:
                    if await request.is_disconnected():
                        break
                    continue
                yield {"event": ev["type"], "data": json.dumps(ev, ensure_ascii=False)}
        finally:
            broker.unsubscribe(queue)

    return EventSourceResponse(stream(), ping=10)


# ---- statistics from the rollups ---------------------------------------------------------------

@contextmanager
def refused_as_422() -> Iterator[None]:
    """A day or range the statistics refuse, answered as FastAPI answers a bad parameter
    (422 with ``detail: [{loc, msg, type}]``), so one error shape is documented."""
    try:
        yield
    except stats.RangeError as exc:
        raise RequestValidationError([{"type": "value_error", "loc": ("query", exc.field),
                                       "msg": str(exc)}]) from exc


Day = Annotated[dt.date | None, Query(description="market day (YYYY-MM-DD, the market's zone); "
                                      "default today")]
Plus = Annotated[list[str] | None, Query(max_length=50, description="PLU codes (repeat the parameter)")]


@router.get("/stats/item-prices", response_model=stats.ItemPrices)
def item_prices(session: ReadSessionDep, settings: SettingsDep,
                start: Annotated[dt.date | None, Query(description="first market day; default "
                                                       "end minus 6 days")] = None,
                end: Annotated[dt.date | None, Query(description="last market day (included); "
                                                     "default today")] = None,
                plu: Plus = None) -> stats.ItemPrices:
    """The average price of each item per market day, in the item's legal unit (元/kg,
    元/500g or per piece, integer 分 rounded half-up), with the change from the day before
    (dod) and from the same weekday a week before (wow), in 分 and %; at most 92 days."""
    with refused_as_422():
        last = stats.check_day(end, "end") if end else stats.local_today(settings.tz)
        first, last = stats.check_range(start or last - dt.timedelta(days=6), last,
                                        stats.MAX_STATS_DAYS)
    return stats.ItemPrices(start=first, end=last, rows=stats.item_prices(session, first, last, plu or ()))


@router.get("/stats/movers", response_model=stats.Movers)
def movers(session: ReadSessionDep, settings: SettingsDep, day: Day = None,
           limit: Annotated[int, Query(ge=1, le=50, description="items per list")] = 5,
           min_lines: Annotated[int, Query(ge=1, le=100_000, description="lines sold an item needs "
                                           "on both days to count")] = 5) -> stats.Movers:
    """Top risers and fallers of a market day by the % change of their average price from
    the day before; an item counts only with ``min_lines`` lines sold on both days."""
    with refused_as_422():
        day = stats.check_day(day) if day else stats.local_today(settings.tz)
    return stats.movers(session, day, limit=limit, min_lines=min_lines)


@router.get("/stats/categories", response_model=stats.Categories)
def categories(session: ReadSessionDep, settings: SettingsDep, day: Day = None) -> stats.Categories:
    """Hot categories of a market day: amount, weight, pieces, share of the day's amount and
    the change from the day before."""
    with refused_as_422():
        day = stats.check_day(day) if day else stats.local_today(settings.tz)
    return stats.categories(session, day)


@router.get("/stats/stall-ranking", response_model=stats.StallRanking)
def stall_ranking(session: ReadSessionDep, settings: SettingsDep, day: Day = None,
                  period: Annotated[stats.Period, Query(description="the market day, the ISO "
                                                        "week (Monday to Sunday) or the calendar "
                                                        "month holding `day`")] = "day",
                  ) -> stats.StallRanking:
    """Stalls ranked by amount sold in a market day, week or month, with each one's change
    from the period before."""
    with refused_as_422():
        day = stats.check_day(day) if day else stats.local_today(settings.tz)
    return stats.stall_ranking(session, period, day)


@router.get("/stats/price-trend", response_model=stats.PriceTrend)
def price_trend(session: ReadSessionDep, settings: SettingsDep,
                end: Annotated[dt.date | None, Query(description="last market day; default today")] = None,
                days: Annotated[int, Query(ge=1, le=stats.MAX_STATS_DAYS)] = 7,
                plu: Plus = None,
                top: Annotated[int, Query(ge=1, le=20, description="without plu: this many best "
                                          "sellers of the window")] = 6) -> stats.PriceTrend:
    """The main items' average price per market day over the last ``days`` days (the big
    screen's chart): the items in ``plu``, else the window's best sellers by amount."""
    with refused_as_422():
        last = stats.check_day(end, "end") if end else stats.local_today(settings.tz)
        if last - dt.timedelta(days=days - 1) < stats.FIRST_DAY:
            raise stats.RangeError("days", f"{days} days up to {last.isoformat()} start before "
                                   f"{stats.FIRST_DAY.isoformat()}")
    return stats.price_trend(session, last, days, plus=plu or (), top=top)
