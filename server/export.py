"""The commerce bureau's export: daily item prices, stall daily sales, inspections.

Each kind is a table with documented columns (``COLUMNS``: name, unit, meaning in
Chinese and English), written as CSV or JSON by ``server.routes.export``.  Rows are
read from the rollups (``rollup_item_day``, ``rollup_stall_day``) and the small
refund and inspection tables, a month of market days at a time, each month in its
own short session, so a year's export is streamed without holding the database.

The bureau reads with its own token (``server.meta_token.EXPORT``): it reads the export and
nothing else, and a manager can replace or revoke it; only its SHA-256 is kept.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session, sessionmaker

from server import db, stats
from server.meta_token import EXPORT

logger = logging.getLogger(__name__)

Kind = Literal["item_prices", "stall_sales", "inspections"]
KINDS: tuple[Kind, ...] = ("item_prices", "stall_sales", "inspections")

#: Market days read per database session while streaming.
CHUNK_DAYS = 31


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    unit: str | None
    zh: str
    en: str


#: The columns of each kind, in order: the CSV header and each JSON row's keys.
COLUMNS: dict[Kind, tuple[Column, ...]] = {
    "item_prices": (
        Column("day", "date", "市场日", "market day, YYYY-MM-DD, in the market's time zone"),
        Column("plu", None, "商品编码", "the item's PLU code, the same at every stall"),
        Column("name", None, "品名", "Chinese name (the catalogue's, else as sold)"),
        Column("name_en", None, "英文名", "English name; empty if none"),
        Column("category", None, "品类", "the catalogue's category; empty if not in the catalogue"),
        Column("price_unit", None, "计价单位", "kg (元/kg), 500g (元/500g) or piece (元/件): "
               "the unit of avg_price_fen"),
        Column("lines", "lines", "成交笔数", "receipt lines sold"),
        Column("weight_g", "g", "成交重量", "grams sold on weighed lines"),
        Column("quantity", "pieces", "成交件数", "pieces sold on counted lines"),
        Column("amount_fen", "分", "成交金额", "amount sold"),
        Column("avg_price_fen", "分/price_unit", "均价", "amount_fen per price_unit, rounded half-up; "
               "empty if none sold in that unit"),
        Column("dod_fen", "分", "日环比", "avg_price_fen minus the day before's; empty if that day "
               "has no average"),
        Column("dod_pct", "%", "日环比(%)", "dod_fen in % of the day before's average, 2 decimals"),
        Column("wow_fen", "分", "周同比", "avg_price_fen minus that of the same weekday a week "
               "before; empty if that day has no average"),
        Column("wow_pct", "%", "周同比(%)", "wow_fen in % of the week before's average, 2 decimals"),
    ),
    "stall_sales": (
        Column("day", "date", "市场日", "market day, YYYY-MM-DD, in the market's time zone"),
        Column("stall_id", None, "摊位号", "the stall's id"),
        Column("stall_name", None, "摊位名称", "the stall's name"),
        Column("sales", "receipts", "成交单数", "receipts (sales) of the day"),
        Column("total_fen", "分", "成交金额", "amount of those receipts"),
        Column("refunds", "lines", "退款笔数", "receipt lines refunded that day"),
        Column("refunds_fen", "分", "退款金额", "amount refunded that day"),
        Column("net_fen", "分", "净成交额", "total_fen minus refunds_fen"),
    ),
    "inspections": (
        Column("day", "date", "检测日", "day of the test, YYYY-MM-DD, in the market's time zone"),
        Column("stall_id", None, "摊位号", "the stall whose batches were tested"),
        Column("stall_name", None, "摊位名称", "the stall's name"),
        Column("plu", None, "商品编码", "the tested item's PLU code"),
        Column("name", None, "品名", "the item's Chinese name; empty if not in the catalogue"),
        Column("tests", "tests", "检测次数", "rapid tests (农残快检) of the day"),
        Column("passed", "tests", "合格", "tests passed"),
        Column("failed", "tests", "不合格", "tests failed (the batch is blocked for sale)"),
        Column("max_inhibition_pct", "%", "最高抑制率", "highest enzyme inhibition measured, "
               "1 decimal; empty if no test measured one"),
        Column("failed_batches", None, "不合格批次", "batch codes that failed, separated by ';'"),
    ),
}


class ExportColumn(BaseModel):
    name: str
    unit: str | None = Field(description="分, g, %, date, ... ; null for text")
    zh: str = Field(description="Chinese column title")
    description: str


class StallSalesDay(BaseModel):
    day: dt.date
    stall_id: str
    stall_name: str
    sales: int
    total_fen: int
    refunds: int
    refunds_fen: int
    net_fen: int


class InspectionDay(BaseModel):
    day: dt.date
    stall_id: str
    stall_name: str
    plu: str
    name: str | None
    tests: int
    passed: int
    failed: int
    max_inhibition_pct: float | None
    failed_batches: str


class ExportDoc(BaseModel):
    """The JSON export (streamed): the columns, then the rows of one kind."""

    kind: Kind
    start: dt.date
    end: dt.date
    generated_at: dt.datetime = Field(description="in the market's time, with its UTC offset")
    columns: list[ExportColumn]
    rows: list[stats.ItemPriceDay] | list[StallSalesDay] | list[InspectionDay]


Row = stats.ItemPriceDay | StallSalesDay | InspectionDay


def columns(kind: Kind) -> list[ExportColumn]:
    return [ExportColumn(name=c.name, unit=c.unit, zh=c.zh, description=c.en) for c in COLUMNS[kind]]


def _stall_sales(session: Session, start: dt.date, end: dt.date) -> list[StallSalesDay]:
    sd, rf = db.StallDay, db.Refund
    refunds = {(d, sid): (int(n), int(fen)) for d, sid, n, fen in session.execute(
        select(rf.local_day, rf.stall_id, func.count(), func.sum(rf.amount_fen))
        .where(rf.local_day.between(start, end)).group_by(rf.local_day, rf.stall_id))}
    rows = session.execute(
        select(sd.local_day, sd.stall_id, db.Stall.name, sd.sales, sd.total_fen)
        .join(db.Stall, db.Stall.stall_id == sd.stall_id)
        .where(sd.local_day.between(start, end)).order_by(sd.local_day, sd.stall_id)).all()
    out = []
    for day, sid, name, n, total in rows:
        r_n, r_fen = refunds.get((day, sid), (0, 0))
        out.append(StallSalesDay(day=day, stall_id=sid, stall_name=name, sales=n, total_fen=total,
                                 refunds=r_n, refunds_fen=r_fen, net_fen=total - r_fen))
    return out


def _inspections(session: Session, start: dt.date, end: dt.date) -> list[InspectionDay]:
    ins = db.Inspection
    failed = case((ins.result == "fail", 1), else_=0)
    rows = session.execute(
        select(ins.local_day, ins.stall_id, db.Stall.name, ins.plu, db.Item.name, func.count(),
               func.sum(failed), func.max(ins.inhibition_permille))
        .join(db.Stall, db.Stall.stall_id == ins.stall_id)
        .outerjoin(db.Item, db.Item.plu == ins.plu)
        .where(ins.local_day.between(start, end))
        .group_by(ins.local_day, ins.stall_id, db.Stall.name, ins.plu, db.Item.name)
        .order_by(ins.local_day, ins.stall_id, ins.plu)).all()
    batches: dict[tuple[dt.date, str, str], list[str]] = {}
    for day, sid, plu, code in session.execute(
            select(ins.local_day, ins.stall_id, ins.plu, ins.batch_code)
            .where(ins.local_day.between(start, end), ins.result == "fail")
            .order_by(ins.tested_at, ins.id)):
        codes = batches.setdefault((day, sid, plu), [])
        if code not in codes:
            codes.append(code)
    return [InspectionDay(day=day, stall_id=sid, stall_name=sname, plu=plu, name=iname,
                          tests=int(n), passed=int(n) - int(bad), failed=int(bad),
                          max_inhibition_pct=None if top is None else int(top) / 10,
                          failed_batches=";".join(batches.get((day, sid, plu), [])))
            for day, sid, sname, plu, iname, n, bad, top in rows]


def _chunk(session: Session, kind: Kind, start: dt.date, end: dt.date) -> list[Row]:
    if kind == "item_prices":
        return list(stats.item_prices(session, start, end))
    if kind == "stall_sales":
        return list(_stall_sales(session, start, end))
    return list(_inspections(session, start, end))


def rows(maker: sessionmaker[Session], kind: Kind, start: dt.date, end: dt.date) -> Iterator[list[Row]]:
    """The rows of ``kind`` for market days ``start``..``end``, a month of days at a time,
    each read in its own session (so a slow reader never holds a connection long)."""
    first = start
    while first <= end:
        last = min(end, first + dt.timedelta(days=CHUNK_DAYS - 1))
        with maker() as session:
            chunk = _chunk(session, kind, first, last)
        yield chunk
        first = last + dt.timedelta(days=1)


# ---- the bureau's read token (server.meta_token) --------------------------------------------

is_bureau_token = EXPORT.matches
