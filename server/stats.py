"""Figures for the big screen and the market's statistics, read from the rollups only.

``today`` and ``recent_sales`` feed the big screen's live view; the rest (average price
per item per day with its changes, risers and fallers, categories, stall rankings by
day, ISO week and month, price trends) feed ``/api/v1/stats/...``, the big screen's
charts and the commerce bureau's export (``server.export``).  Market days are local
days in ``Settings.tz``, as ingest writes them into the rollups.
"""

from __future__ import annotations

import datetime as dt
import decimal
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from pydantic import BaseModel, Field
from sqlalchemy import ColumnElement, bindparam, func, select
from sqlalchemy.orm import Session

from edge.pricing import GRAMS_PER_UNIT, PRICE_UNITS, round_fraction_fen
from server import ServerError, db


def local_today(tz: zoneinfo.ZoneInfo, now: dt.datetime | None = None) -> dt.date:
    """The market's day at ``now`` (default: this instant), whatever the machine's ``TZ``."""
    now = now or dt.datetime.now(dt.UTC)
    if now.utcoffset() is None:  # astimezone() would take it for the machine's local time
        raise ValueError(f"local_today needs an aware time, got {now.isoformat()}")
    return now.astimezone(tz).date()


# The live figures' statements, built once: the big screen's live view reads them after every
# few uploads, and building a statement costs more than SQLite running it.
_SH = db.StallHour
_DAY_RANKING = (select(_SH.stall_id, db.Stall.name, func.sum(_SH.sales), func.sum(_SH.total_fen))
                .join(db.Stall, db.Stall.stall_id == _SH.stall_id)
                .where(_SH.local_day == bindparam("day"))
                .group_by(_SH.stall_id, db.Stall.name)
                .order_by(func.sum(_SH.total_fen).desc(), _SH.stall_id))
_DAY_ITEMS = (select(db.ItemDay.plu, db.ItemDay.name, db.ItemDay.name_en, db.ItemDay.lines,
                     db.ItemDay.weight_g, db.ItemDay.quantity, db.ItemDay.amount_fen)
              .where(db.ItemDay.local_day == bindparam("day"))
              .order_by(db.ItemDay.amount_fen.desc())
              .limit(10))
_DAY_REFUNDS = (select(func.count(), func.coalesce(func.sum(db.Refund.amount_fen), 0))
                .where(db.Refund.local_day == bindparam("day")))
_DAY_HOURS = (select(_SH.hour, func.sum(_SH.sales), func.sum(_SH.total_fen))
              .where(_SH.local_day == bindparam("day"))
              .group_by(_SH.hour)
              .order_by(_SH.hour))


def today(session: Session, tz: zoneinfo.ZoneInfo, day: dt.date | None = None) -> dict[str, Any]:
    day = day or local_today(tz)
    conn = session.connection()
    ranking = [
        {"stall_id": sid, "name": name, "sales": int(n), "total_fen": int(total)}
        for sid, name, n, total in conn.execute(_DAY_RANKING, {"day": day})
    ]
    items = conn.execute(_DAY_ITEMS, {"day": day}).all()
    refunds, refunds_fen = conn.execute(_DAY_REFUNDS, {"day": day}).one()
    return {
        "day": day.isoformat(),
        "refunds": int(refunds),
        "refunds_fen": int(refunds_fen),
        "sales": sum(r["sales"] for r in ranking),
        "total_fen": sum(r["total_fen"] for r in ranking),
        "ranking": ranking,
        "hours": hours(session, day),
        "items": [
            {"plu": it.plu, "name": it.name, "name_en": it.name_en, "lines": it.lines,
             "weight_g": it.weight_g, "quantity": it.quantity, "amount_fen": it.amount_fen}
            for it in items
        ],
    }


def hours(session: Session, day: dt.date) -> list[dict[str, int]]:
    """A market day's sales and amount per local hour, the hours with sales only, in order
    (the big screen's trend, and its comparison with the day before and a week before)."""
    rows = session.connection().execute(_DAY_HOURS, {"day": day}).all()
    return [{"hour": h, "sales": int(n), "total_fen": int(t)} for h, n, t in rows]


def _names_en(raw: dict[str, object]) -> list[str | None]:
    """Each line's English name as the stall sent it (``name_en``, edge.basket), else None."""
    lines = raw.get("lines")
    names: list[str | None] = []
    for line in lines if isinstance(lines, list) else []:
        name = line.get("name_en") if isinstance(line, dict) else None
        names.append(name if isinstance(name, str) and name else None)
    return names


_RECENT = (select(db.Sale.sale_id, db.Sale.stall_id, db.Sale.trace_code, db.Sale.sold_at,
                  db.Sale.total_fen, db.Sale.verified, db.Sale.raw)
           .order_by(db.Sale.received_at.desc(), db.Sale.sale_id).limit(bindparam("limit")))
_RECENT_LINES = (select(db.SaleLine.sale_id, db.SaleLine.name)
                 .where(db.SaleLine.sale_id.in_(bindparam("ids", expanding=True)))
                 .order_by(db.SaleLine.sale_id, db.SaleLine.idx))


def recent_sales(session: Session, tz: zoneinfo.ZoneInfo, limit: int = 10) -> list[dict[str, Any]]:
    """The last sales received; ``sold_at`` in the market's time with its offset.

    Rows, not ORM objects: the big screen's live figures read this after every few uploads,
    and loading the sales and their lines as objects cost most of it."""
    conn = session.connection()
    rows = conn.execute(_RECENT, {"limit": limit}).all()
    names: dict[str, list[str]] = {row.sale_id: [] for row in rows}
    if names:
        for sale_id, name in conn.execute(_RECENT_LINES, {"ids": list(names)}):
            names[sale_id].append(name)
    return [
        {
            "stall_id": row.stall_id,
            "trace_code": row.trace_code,
            "sold_at": row.sold_at.astimezone(tz).isoformat(),
            "total_fen": row.total_fen,
            "items": names[row.sale_id],
            "items_en": _names_en(row.raw),
            "verified": row.verified,
        }
        for row in rows
    ]


# ---- statistics from the rollups (issue 17, item 5) -------------------------------------------
#
# Everything below reads rollup_item_day, rollup_stall_day and the small catalogue (items, for
# categories and legal units) only, never raw sales: with ten million sales stored a day is a
# few hundred item rows and a month a few thousand stall rows.

#: The first and last market day any figure may be asked for: the years a sale may be sold in
#: (edge.sale), so date arithmetic around them (a week back) can never leave Python's dates.
FIRST_DAY = dt.date(2000, 1, 1)
LAST_DAY = dt.date(2099, 12, 31)
#: The longest range the statistics answer at once (a quarter); the export takes a year.
MAX_STATS_DAYS = 92
MAX_EXPORT_DAYS = 366

PriceUnit = Literal["kg", "500g", "piece"]
Period = Literal["day", "week", "month"]

#: Percentages carry two decimals, rounded half-up as money is.
_CENT = decimal.Decimal("0.01")


class RangeError(ServerError):
    """A day or range the statistics refuse; ``field`` names the query parameter at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def check_day(day: dt.date, field: str = "day") -> dt.date:
    if not FIRST_DAY <= day <= LAST_DAY:
        raise RangeError(field, f"{field} {day.isoformat()} is outside {FIRST_DAY}..{LAST_DAY}")
    return day


def check_range(start: dt.date, end: dt.date, max_days: int) -> tuple[dt.date, dt.date]:
    """``start``..``end`` (market days, both included) if it is a range the server answers."""
    check_day(start, "start")
    check_day(end, "end")
    if start > end:
        raise RangeError("start", f"start {start.isoformat()} is after end {end.isoformat()}")
    days = (end - start).days + 1
    if days > max_days:
        raise RangeError("end", f"{start.isoformat()}..{end.isoformat()} is {days} days; "
                         f"at most {max_days} days at a time")
    return start, end


def percent(diff: int, base: int) -> float | None:
    """``diff`` as a percentage of ``base``, two decimals rounded half-up; None if base is 0."""
    if base == 0:
        return None
    exact = decimal.Decimal(diff) * 100 / decimal.Decimal(base)
    return float(exact.quantize(_CENT, rounding=decimal.ROUND_HALF_UP))


def unit_of(catalogue_unit: str | None, weight_g: int, quantity: int) -> PriceUnit:
    """The legal unit an item's average is given in: its catalogue unit; for an item not in
    the catalogue, per kg if it was weighed, else per piece."""
    if catalogue_unit in PRICE_UNITS:
        return cast(PriceUnit, catalogue_unit)
    return "piece" if quantity and not weight_g else "kg"


def average_price_fen(amount_fen: int, weight_g: int, quantity: int, unit: str) -> int | None:
    """What one ``unit`` cost on average, in 分 rounded half-up: amount / weight scaled to the
    unit (1000 g or 500 g), or amount / pieces.  None when nothing was sold in that unit, or
    when weighed and counted lines were summed together (the rollup cannot part them)."""
    if unit == "piece":
        if quantity <= 0 or weight_g:
            return None
        return round_fraction_fen(amount_fen, quantity)
    if weight_g <= 0 or quantity:
        return None
    return round_fraction_fen(amount_fen * GRAMS_PER_UNIT[unit], weight_g)


class ItemPriceDay(BaseModel):
    """One item on one market day: what sold, its average price, its change."""

    day: dt.date = Field(description="market day (the market's zone)")
    plu: str
    name: str = Field(description="Chinese name (the catalogue's, else as the stalls sold it)")
    name_en: str | None
    category: str | None = Field(description="the catalogue's category; null if not in the catalogue")
    price_unit: PriceUnit = Field(description="the unit of avg_price_fen: 元/kg, 元/500g or per piece")
    lines: int = Field(description="receipt lines sold")
    weight_g: int = Field(description="grams sold (weighed lines)")
    quantity: int = Field(description="pieces sold (counted lines)")
    amount_fen: int = Field(description="amount sold, 分")
    avg_price_fen: int | None = Field(description="amount_fen per price_unit, 分, rounded half-up")
    dod_fen: int | None = Field(description="avg_price_fen minus the day before's; null if that day "
                                "has no average")
    dod_pct: float | None = Field(description="dod_fen in % of the day before's average")
    wow_fen: int | None = Field(description="avg_price_fen minus the same weekday's a week before")
    wow_pct: float | None = Field(description="wow_fen in % of the week before's average")


class ItemPrices(BaseModel):
    start: dt.date
    end: dt.date
    rows: list[ItemPriceDay] = Field(description="by day, then PLU")


@dataclass(frozen=True, slots=True)
class _Sold:
    """One rollup_item_day row with what the catalogue says of its item."""

    day: dt.date
    plu: str
    name: str
    name_en: str | None
    category: str | None
    unit: PriceUnit
    lines: int
    weight_g: int
    quantity: int
    amount_fen: int

    @property
    def avg(self) -> int | None:
        return average_price_fen(self.amount_fen, self.weight_g, self.quantity, self.unit)


def _items_sold(session: Session, *where: ColumnElement[bool]) -> dict[tuple[dt.date, str], _Sold]:
    it, cat = db.ItemDay, db.Item
    rows = session.execute(
        select(it.local_day, it.plu, it.name, it.name_en, it.lines, it.weight_g, it.quantity,
               it.amount_fen, cat.name, cat.name_en, cat.category, cat.price_unit)
        .outerjoin(cat, cat.plu == it.plu).where(*where)
    ).all()
    out: dict[tuple[dt.date, str], _Sold] = {}
    for day, plu, name, name_en, lines, weight, qty, amount, c_name, c_name_en, category, unit in rows:
        out[(day, plu)] = _Sold(day, plu, c_name or name, c_name_en or name_en, category,
                                unit_of(unit, int(weight), int(qty)), int(lines), int(weight),
                                int(qty), int(amount))
    return out


def _change(now: _Sold, then: _Sold | None) -> tuple[int | None, float | None]:
    """Average price change from ``then`` to ``now``; none when either has no average."""
    if then is None or then.unit != now.unit:
        return None, None
    new, old = now.avg, then.avg
    if new is None or old is None:
        return None, None
    return new - old, percent(new - old, old)


def _price_day(sold: _Sold, by_key: dict[tuple[dt.date, str], _Sold]) -> ItemPriceDay:
    dod = _change(sold, by_key.get((sold.day - dt.timedelta(days=1), sold.plu)))
    wow = _change(sold, by_key.get((sold.day - dt.timedelta(days=7), sold.plu)))
    return ItemPriceDay(day=sold.day, plu=sold.plu, name=sold.name, name_en=sold.name_en,
                        category=sold.category, price_unit=sold.unit, lines=sold.lines,
                        weight_g=sold.weight_g, quantity=sold.quantity, amount_fen=sold.amount_fen,
                        avg_price_fen=sold.avg, dod_fen=dod[0], dod_pct=dod[1], wow_fen=wow[0],
                        wow_pct=wow[1])


def item_prices(session: Session, start: dt.date, end: dt.date,
                plus: Sequence[str] = ()) -> list[ItemPriceDay]:
    """Each item's average price per market day of ``start``..``end`` (of ``plus`` only, when
    given), with its day-on-day and week-on-week change; by day, then PLU."""
    it = db.ItemDay
    where = [it.local_day.between(start - dt.timedelta(days=7), end)]
    if plus:
        where.append(it.plu.in_(list(plus)))
    by_key = _items_sold(session, *where)
    return [_price_day(sold, by_key) for key, sold in sorted(by_key.items())
            if start <= key[0] <= end]


class Movers(BaseModel):
    day: dt.date
    min_lines: int = Field(description="an item counts only with at least this many lines sold on "
                           "the day and on the day before")
    risers: list[ItemPriceDay] = Field(description="largest rise of the average price first (dod_pct)")
    fallers: list[ItemPriceDay] = Field(description="largest fall first (dod_pct)")


def movers(session: Session, day: dt.date, *, limit: int = 5, min_lines: int = 5) -> Movers:
    """The items whose average price rose and fell most from the day before, in %; an item
    needs ``min_lines`` lines on both days, so one odd sale makes no trend."""
    week_ago, yesterday = day - dt.timedelta(days=7), day - dt.timedelta(days=1)
    by_key = _items_sold(session, db.ItemDay.local_day.in_([week_ago, yesterday, day]))
    moved: list[ItemPriceDay] = []
    for (d, plu), sold in by_key.items():
        before = by_key.get((yesterday, plu))
        if d != day or before is None or min(sold.lines, before.lines) < min_lines:
            continue
        row = _price_day(sold, by_key)
        if row.dod_pct is not None:
            moved.append(row)
    risers = sorted((r for r in moved if r.dod_pct is not None and r.dod_pct > 0),
                    key=lambda r: (-(r.dod_pct or 0), r.plu))
    fallers = sorted((r for r in moved if r.dod_pct is not None and r.dod_pct < 0),
                     key=lambda r: (r.dod_pct or 0, r.plu))
    return Movers(day=day, min_lines=min_lines, risers=risers[:limit], fallers=fallers[:limit])


class CategoryDay(BaseModel):
    category: str | None = Field(description="the catalogue's category; null: items not in the catalogue")
    lines: int
    weight_g: int = Field(description="grams sold (weighed lines)")
    quantity: int = Field(description="pieces sold (counted lines)")
    amount_fen: int
    share_pct: float = Field(description="amount_fen in % of the day's amount")
    prev_amount_fen: int | None = Field(description="the day before's amount; null if none sold")
    change_fen: int | None
    change_pct: float | None


class Categories(BaseModel):
    day: dt.date
    amount_fen: int = Field(description="the day's amount, all categories")
    categories: list[CategoryDay] = Field(description="largest amount first")


def categories(session: Session, day: dt.date) -> Categories:
    """The day's categories by amount, with their share of the day and change from the day
    before."""
    it, cat = db.ItemDay, db.Item
    yesterday = day - dt.timedelta(days=1)
    rows = session.execute(
        select(it.local_day, cat.category, func.sum(it.lines), func.sum(it.weight_g),
               func.sum(it.quantity), func.sum(it.amount_fen))
        .outerjoin(cat, cat.plu == it.plu)
        .where(it.local_day.in_([yesterday, day]))
        .group_by(it.local_day, cat.category)
    ).all()
    before = {c: int(amount) for d, c, _, _, _, amount in rows if d == yesterday}
    today_rows = [(c, int(n), int(w), int(q), int(a)) for d, c, n, w, q, a in rows if d == day]
    total = sum(a for *_, a in today_rows)
    out = []
    for c, n, w, q, a in sorted(today_rows, key=lambda r: (-r[4], r[0] is None, r[0] or "")):
        prev = before.get(c)
        out.append(CategoryDay(
            category=c, lines=n, weight_g=w, quantity=q, amount_fen=a,
            share_pct=percent(a, total) or 0.0, prev_amount_fen=prev,
            change_fen=None if prev is None else a - prev,
            change_pct=None if prev is None else percent(a - prev, prev)))
    return Categories(day=day, amount_fen=total, categories=out)


def period_bounds(period: Period, day: dt.date) -> tuple[dt.date, dt.date, str]:
    """The market day, ISO week (Monday to Sunday) or calendar month holding ``day``:
    first day, last day, label (``2026-11-30``, ``2026-W49``, ``2026-11``)."""
    if period == "day":
        return day, day, day.isoformat()
    if period == "week":
        monday = day - dt.timedelta(days=day.weekday())
        year, week, _ = day.isocalendar()
        return monday, monday + dt.timedelta(days=6), f"{year}-W{week:02d}"
    first = day.replace(day=1)
    next_first = (first + dt.timedelta(days=31)).replace(day=1)
    return first, next_first - dt.timedelta(days=1), f"{day.year}-{day.month:02d}"


class StallRank(BaseModel):
    rank: int = Field(description="1 for the largest amount; equal amounts by stall id")
    stall_id: str
    name: str
    sales: int = Field(description="receipts")
    total_fen: int
    share_pct: float = Field(description="total_fen in % of the market's total of the period")
    prev_total_fen: int | None = Field(description="the previous period's total; null if none sold")
    change_pct: float | None = Field(description="change from prev_total_fen, %")


class StallRanking(BaseModel):
    period: Period
    label: str = Field(description="the day, ISO week (2026-W49) or month (2026-11)")
    start: dt.date
    end: dt.date
    sales: int
    total_fen: int
    ranking: list[StallRank]


def _stall_totals(session: Session, start: dt.date, end: dt.date) -> list[tuple[str, str, int, int]]:
    sd = db.StallDay
    total = func.sum(sd.total_fen)
    rows = session.execute(
        select(sd.stall_id, db.Stall.name, func.sum(sd.sales), total)
        .join(db.Stall, db.Stall.stall_id == sd.stall_id)
        .where(sd.local_day.between(start, end))
        .group_by(sd.stall_id, db.Stall.name)
        .order_by(total.desc(), sd.stall_id)
    ).all()
    return [(sid, name, int(n), int(t)) for sid, name, n, t in rows]


def stall_ranking(session: Session, period: Period, day: dt.date) -> StallRanking:
    """Stalls by amount sold in the market day, ISO week or month holding ``day``, each with
    the change from the period before."""
    start, end, label = period_bounds(period, day)
    prev_start, prev_end, _ = period_bounds(period, start - dt.timedelta(days=1))
    rows = _stall_totals(session, start, end)
    before = {sid: t for sid, _, _, t in _stall_totals(session, prev_start, prev_end)}
    total = sum(t for *_, t in rows)
    ranking = []
    for rank, (sid, name, n, t) in enumerate(rows, start=1):
        prev = before.get(sid)
        ranking.append(StallRank(rank=rank, stall_id=sid, name=name, sales=n, total_fen=t,
                                 share_pct=percent(t, total) or 0.0, prev_total_fen=prev,
                                 change_pct=None if prev is None else percent(t - prev, prev)))
    return StallRanking(period=period, label=label, start=start, end=end,
                        sales=sum(r.sales for r in ranking), total_fen=total, ranking=ranking)


class TrendItem(BaseModel):
    plu: str
    name: str
    name_en: str | None
    price_unit: PriceUnit
    prices: list[int | None] = Field(description="avg_price_fen per day of `days`; null: none sold")


class PriceTrend(BaseModel):
    start: dt.date
    end: dt.date
    days: list[dt.date]
    items: list[TrendItem] = Field(description="the items asked for, else the window's best "
                                   "sellers by amount, largest first")


def price_trend(session: Session, end: dt.date, days: int, *, plus: Sequence[str] = (),
                top: int = 6) -> PriceTrend:
    """The average price per day of the main items over the ``days`` market days up to
    ``end``: the items in ``plus``, else the ``top`` best sellers of those days by amount."""
    it = db.ItemDay
    start = end - dt.timedelta(days=days - 1)
    window = it.local_day.between(start, end)
    if plus:
        chosen = list(dict.fromkeys(plus))
    else:
        amount = func.sum(it.amount_fen)
        chosen = list(session.execute(select(it.plu).where(window).group_by(it.plu)
                                      .order_by(amount.desc(), it.plu).limit(top)).scalars())
    by_key = _items_sold(session, window, it.plu.in_(chosen)) if chosen else {}
    day_list = [start + dt.timedelta(days=i) for i in range(days)]
    items = []
    for plu in chosen:
        sold = [by_key[(d, plu)] for d in day_list if (d, plu) in by_key]
        if not sold:
            continue
        last = sold[-1]
        items.append(TrendItem(
            plu=plu, name=last.name, name_en=last.name_en, price_unit=last.unit,
            prices=[s.avg if s is not None and s.unit == last.unit else None
                    for s in (by_key.get((d, plu)) for d in day_list)]))
    return PriceTrend(start=start, end=end, days=day_list, items=items)
