"""The entrance big screen's data: everything ``/display`` shows, in one cheap response."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from server import display, stats
from server.deps import ReadSessionDep, SettingsDep
from server.guard import GuardedRoute
from server.routes.inspections import InspectionOut, SummaryOut
from server.routes.promotions import PromotionOut

router = APIRouter(prefix="/api/v1", tags=["display"], route_class=GuardedRoute)


class StallToday(BaseModel):
    stall_id: str
    name: str
    sales: int
    total_fen: int


class HourFigures(BaseModel):
    hour: int = Field(description="local hour of the market day, 0..23")
    sales: int
    total_fen: int


class ItemToday(BaseModel):
    plu: str
    name: str
    name_en: str | None
    lines: int
    weight_g: int
    quantity: int
    amount_fen: int


class Today(BaseModel):
    """As ``GET /api/v1/stats/today`` answers."""

    day: dt.date
    refunds: int
    refunds_fen: int
    sales: int
    total_fen: int
    ranking: list[StallToday] = Field(description="every stall that sold today, largest amount first")
    hours: list[HourFigures] = Field(description="the hours with sales, in order")
    items: list[ItemToday] = Field(description="the day's 10 best sellers by amount")


class DayHours(BaseModel):
    day: dt.date
    hours: list[HourFigures]


class Compare(BaseModel):
    yesterday: DayHours
    last_week: DayHours = Field(description="the same weekday a week before")


class PeriodRankings(BaseModel):
    week: stats.StallRanking = Field(description="this ISO week, the first 5 stalls")
    month: stats.StallRanking = Field(description="this month, the first 5 stalls")


class DisplayInspections(SummaryOut):
    latest: list[InspectionOut] = Field(description="the day's latest tests, newest first")


class RecentSale(BaseModel):
    """One sale of the live ticker: no trace code, nothing of the shopper."""

    stall_id: str
    stall_name: str
    sold_at: str = Field(description="in the market's time, with its UTC offset")
    total_fen: int
    items: list[str]
    items_en: list[str | None]


class DisplayOut(BaseModel):
    market: str
    now: str = Field(description="the server's time, in the market's zone with its offset")
    day: dt.date = Field(description="the market day shown")
    today: Today
    compare: Compare
    ranking: PeriodRankings
    specials: list[PromotionOut] = Field(description="the specials on now, the first to end first")
    specials_later: list[PromotionOut] = Field(description="specials starting later today")
    next_change_at: str | None = Field(description="when a special shown starts or ends next: "
                                       "fetch again then")
    inspections: DisplayInspections
    price_trend: stats.PriceTrend
    main_items: list[stats.ItemPriceDay] = Field(description="each trend item's latest average "
                                                 "price (today's, else yesterday's) and its changes")
    movers: stats.Movers
    categories: stats.Categories
    recent: list[RecentSale] = Field(description="the latest sales received, newest first")


def _periods(request: Request) -> display.PeriodCache:
    cache: display.PeriodCache | None = getattr(request.app.state, "display_periods", None)
    if cache is None:  # made on first use: one per app, so one per database
        cache = request.app.state.display_periods = display.PeriodCache()
    return cache


@router.get("/display", response_model=DisplayOut)
def display_figures(request: Request, session: ReadSessionDep, settings: SettingsDep,
                    trend_days: Annotated[int, Query(ge=7, le=30, description="days of the price "
                                                     "trend, up to today")] = display.DEFAULT_TREND_DAYS,
                    ) -> DisplayOut:
    """Everything the entrance big screen shows (public, as the screen is): today's sales,
    hours against yesterday and a week before, stall rankings of the day, week and month,
    the current specials, the day's rapid tests with the failed batches, the main items'
    price trend with their changes, risers and fallers, hot categories and the latest
    sales.  Read from the rollups and indexes only; the week's and the month's ranking may
    lag new sales by up to 30 s, everything of today is exact."""
    return DisplayOut.model_validate(display.figures(session, settings.market_name, settings.tz,
                                                     trend_days=trend_days, periods=_periods(request)))
