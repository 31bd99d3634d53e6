"""Figures for the big screen, read from the rollups only."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from server import db


def local_today(tz: zoneinfo.ZoneInfo, now: dt.datetime | None = None) -> dt.date:
    """The market's day at ``now`` (default: this instant), whatever the machine's ``TZ``."""
    now = now or dt.datetime.now(dt.UTC)
    if now.utcoffset() is None:  # astimezone() would take it for the machine's local time
        raise ValueError(f"local_today needs an aware time, got {now.isoformat()}")
    return now.astimezone(tz).date()


def today(session: Session, tz: zoneinfo.ZoneInfo, day: dt.date | None = None) -> dict[str, Any]:
    day = day or local_today(tz)
    sh = db.StallHour
    ranking_rows = session.execute(
        select(sh.stall_id, db.Stall.name, func.sum(sh.sales), func.sum(sh.total_fen))
        .join(db.Stall, db.Stall.stall_id == sh.stall_id)
        .where(sh.local_day == day)
        .group_by(sh.stall_id, db.Stall.name)
        .order_by(func.sum(sh.total_fen).desc(), sh.stall_id)
    ).all()
    ranking = [
        {"stall_id": sid, "name": name, "sales": int(n), "total_fen": int(total)}
        for sid, name, n, total in ranking_rows
    ]
    hours = session.execute(
        select(sh.hour, func.sum(sh.sales), func.sum(sh.total_fen))
        .where(sh.local_day == day)
        .group_by(sh.hour)
        .order_by(sh.hour)
    ).all()
    items = session.execute(
        select(db.ItemDay)
        .where(db.ItemDay.local_day == day)
        .order_by(db.ItemDay.amount_fen.desc())
        .limit(10)
    ).scalars().all()
    refunds, refunds_fen = session.execute(
        select(func.count(), func.coalesce(func.sum(db.Refund.amount_fen), 0))
        .where(db.Refund.local_day == day)
    ).one()
    return {
        "day": day.isoformat(),
        "refunds": int(refunds),
        "refunds_fen": int(refunds_fen),
        "sales": sum(r["sales"] for r in ranking),
        "total_fen": sum(r["total_fen"] for r in ranking),
        "ranking": ranking,
        "hours": [{"hour": h, "sales": int(n), "total_fen": int(t)} for h, n, t in hours],
        "items": [
            {"plu": it.plu, "name": it.name, "name_en": it.name_en, "lines": it.lines,
             "weight_g": it.weight_g, "quantity": it.quantity, "amount_fen": it.amount_fen}
            for it in items
        ],
    }


def _names_en(raw: dict[str, object]) -> list[str | None]:
    """Each line's English name as the stall sent it (``name_en``, edge.basket), else None."""
    lines = raw.get("lines")
    names: list[str | None] = []
    for line in lines if isinstance(lines, list) else []:
        name = line.get("name_en") if isinstance(line, dict) else None
        names.append(name if isinstance(name, str) and name else None)
    return names


def recent_sales(session: Session, tz: zoneinfo.ZoneInfo, limit: int = 10) -> list[dict[str, Any]]:
    """The last sales received; ``sold_at`` in the market's time with its offset."""
    rows = session.execute(
        select(db.Sale).options(selectinload(db.Sale.lines))
        .order_by(db.Sale.received_at.desc(), db.Sale.sale_id).limit(limit)
    ).scalars().all()
    return [
        {
            "stall_id": s.stall_id,
            "trace_code": s.trace_code,
            "sold_at": s.sold_at.astimezone(tz).isoformat(),
            "total_fen": s.total_fen,
            "items": [ln.name for ln in s.lines],
            "items_en": _names_en(s.raw),
            "verified": s.verified,
        }
        for s in rows
    ]
