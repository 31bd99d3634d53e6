"""Specials (特价): a stall's lower price of an item inside a time window, entered by managers.

The issue has managers enter specials (the market office runs them; a vendor lowers
its own regular price through ``/api/v1/prices`` instead), so creating and cancelling
one is a manager action; the rules below hold for whoever calls these functions.

A special must be a special: its price is above 0, below the stall's regular price
of the item (``stall_prices``) and never above the market's cap of the item.  Its
window has UTC offsets, ends after it starts, lasts at most :data:`MAX_WINDOW`, ends
in the future and starts within :data:`MAX_LEAD`; two live specials of one item at
one stall never overlap (the stall could not know which to price).  A special is
cancelled, never deleted: receipts priced with it refer to it.  Every change bumps
the feed version; the stalls price a special inside its window only.
"""

from __future__ import annotations

import datetime as dt
import logging
import zoneinfo
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from edge.sale import MAX_AMOUNT_FEN
from server import db, feedversion
from server.auth import Actor
from server.fields import PLU, Instant, StallId, Text64
from server.refusals import Conflict, NotFound, Refused

logger = logging.getLogger(__name__)

#: Specials run for hours or days; a window longer than a month is a typo.
MAX_WINDOW = dt.timedelta(days=31)
#: How far ahead a special may be entered.
MAX_LEAD = dt.timedelta(days=92)

When = Literal["current", "upcoming", "past", "all"]
UNIT_TEXT = {"kg": "元/kg", "500g": "元/500g", "piece": "元/件"}


class PromotionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stall_id: StallId
    plu: PLU
    special_price_fen: int = Field(strict=True, gt=0, le=MAX_AMOUNT_FEN,
                                   description="the special price in 分 per the item's price unit")
    starts_at: Instant = Field(description="first instant of the special, with its UTC offset")
    ends_at: Instant = Field(description="first instant after the special, with its UTC offset")
    title: Text64 | None = Field(None, description="e.g. 晚市特价")

    @model_validator(mode="after")
    def _window(self) -> PromotionIn:
        if self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        if self.ends_at - self.starts_at > MAX_WINDOW:
            raise ValueError(f"a special lasts at most {MAX_WINDOW.days} days")
        return self


def _price(fen: int, unit: str) -> str:
    return f"{fen // 100}.{fen % 100:02d} {UNIT_TEXT.get(unit, unit)}"


def create(session: Session, actor: Actor, body: PromotionIn, *,
           now: dt.datetime | None = None) -> db.Promotion:
    """Store a special in the caller's transaction (which commits it) and bump the feed version."""
    now = now or dt.datetime.now(dt.UTC)
    if body.ends_at <= now:
        raise Refused("the special would be over already: ends_at is in the past")
    if body.starts_at > now + MAX_LEAD:
        raise Refused(f"a special starts within {MAX_LEAD.days} days")
    if session.get(db.Stall, body.stall_id) is None:
        raise NotFound(f"no stall {body.stall_id}")
    item = session.get(db.Item, body.plu)
    if item is None:
        raise NotFound(f"no item with PLU {body.plu} in the market catalogue")
    if not item.active:
        raise Conflict(f"item {body.plu} {item.name} is no longer sold (inactive)")
    # Locked (PostgreSQL) so that two specials of this item at this stall are checked for
    # overlap one after the other; SQLite's writers are serialised already.
    regular = session.execute(select(db.StallPrice).where(
        db.StallPrice.stall_id == body.stall_id, db.StallPrice.plu == body.plu).with_for_update()
    ).scalar_one_or_none()
    special = _price(body.special_price_fen, item.price_unit)
    if regular is None:
        raise Conflict(f"stall {body.stall_id} has no regular price for {body.plu} {item.name}: a "
                       f"special must be below it, so set the regular price first")
    if body.special_price_fen >= regular.unit_price_fen:
        raise Conflict(f"特价 {special} 不低于摊位原价 {_price(regular.unit_price_fen, item.price_unit)}: "
                       f"no special / the special price must be below the stall's regular price")
    if item.cap_fen is not None and body.special_price_fen > item.cap_fen:
        raise Conflict(f"特价 {special} 高于市场限价 {_price(item.cap_fen, item.price_unit)} / above "
                       f"the market's price cap")
    clash = session.execute(select(db.Promotion).where(
        db.Promotion.stall_id == body.stall_id, db.Promotion.plu == body.plu,
        db.Promotion.cancelled_at.is_(None),
        db.Promotion.starts_at < body.ends_at, db.Promotion.ends_at > body.starts_at).limit(1)
    ).scalar_one_or_none()
    if clash is not None:
        raise Conflict(f"overlaps special {clash.id} of {body.plu} at stall {body.stall_id} "
                       f"({clash.starts_at.isoformat()} .. {clash.ends_at.isoformat()}); cancel it first")
    row = db.Promotion(stall_id=body.stall_id, plu=body.plu, special_price_fen=body.special_price_fen,
                       starts_at=body.starts_at, ends_at=body.ends_at, title=body.title,
                       created_by=actor.who, created_at=now)
    session.add(row)
    session.flush()
    feedversion.bump(session)
    logger.info("special %d: stall %s PLU %s at %d 分 (by %s)", row.id, row.stall_id, row.plu,
                row.special_price_fen, actor.who)
    return row


def cancel(session: Session, actor: Actor, promotion_id: int, *,
           now: dt.datetime | None = None) -> db.Promotion:
    """Cancel a special that has not ended (it stays, marked cancelled) and bump the feed version."""
    now = now or dt.datetime.now(dt.UTC)
    row = session.get(db.Promotion, promotion_id, with_for_update=True)
    if row is None:
        raise NotFound(f"no special {promotion_id}")
    if row.cancelled_at is not None:
        raise Conflict(f"special {promotion_id} was cancelled already (by {row.cancelled_by})")
    if row.ends_at <= now:
        raise Conflict(f"special {promotion_id} is over already")
    row.cancelled_at, row.cancelled_by = now, actor.who
    session.flush()
    feedversion.bump(session)
    logger.info("special %d cancelled (by %s)", row.id, actor.who)
    return row


def state(row: db.Promotion, now: dt.datetime) -> str:
    if row.cancelled_at is not None:
        return "cancelled"
    if now < row.starts_at:
        return "upcoming"
    return "current" if now < row.ends_at else "over"


def _select(when: When, now: dt.datetime) -> Select[db.Promotion, db.Item, str, int]:
    p = db.Promotion
    stmt = (select(p, db.Item, db.Stall.name, db.StallPrice.unit_price_fen)
            .join(db.Item, db.Item.plu == p.plu).join(db.Stall, db.Stall.stall_id == p.stall_id)
            .outerjoin(db.StallPrice, (db.StallPrice.stall_id == p.stall_id) & (db.StallPrice.plu == p.plu)))
    live = p.cancelled_at.is_(None)
    if when == "current":
        return stmt.where(live, p.starts_at <= now, p.ends_at > now).order_by(p.ends_at, p.id)
    if when == "upcoming":
        return stmt.where(live, p.starts_at > now).order_by(p.starts_at, p.id)
    if when == "past":
        return stmt.where((p.ends_at <= now) | p.cancelled_at.is_not(None)).order_by(
            p.ends_at.desc(), p.id.desc())
    return stmt.order_by(p.starts_at.desc(), p.id.desc())


def list_promotions(session: Session, tz: zoneinfo.ZoneInfo, *, when: When = "current",
                    stall_id: str | None = None, plu: str | None = None, limit: int = 100,
                    offset: int = 0, now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """Specials with their item, stall and the stall's regular price, times in market time."""
    now = now or dt.datetime.now(dt.UTC)
    stmt = _select(when, now)
    if stall_id is not None:
        stmt = stmt.where(db.Promotion.stall_id == stall_id)
    if plu is not None:
        stmt = stmt.where(db.Promotion.plu == plu)
    rows = session.execute(stmt.limit(limit).offset(offset)).all()
    return [to_json(p, item, stall_name, regular, tz, now) for p, item, stall_name, regular in rows]


def describe(session: Session, row: db.Promotion, tz: zoneinfo.ZoneInfo,
             now: dt.datetime | None = None) -> dict[str, Any]:
    item = session.get(db.Item, row.plu)
    stall = session.get(db.Stall, row.stall_id)
    regular = session.get(db.StallPrice, (row.stall_id, row.plu))
    assert item is not None and stall is not None  # foreign keys
    return to_json(row, item, stall.name, regular.unit_price_fen if regular else None, tz,
                   now or dt.datetime.now(dt.UTC))


def to_json(row: db.Promotion, item: db.Item, stall_name: str, regular_fen: int | None,
            tz: zoneinfo.ZoneInfo, now: dt.datetime) -> dict[str, Any]:
    def local(t: dt.datetime | None) -> str | None:
        return None if t is None else t.astimezone(tz).isoformat()

    return {
        "id": row.id, "stall_id": row.stall_id, "stall_name": stall_name, "plu": row.plu,
        "name": item.name, "name_en": item.name_en, "price_unit": item.price_unit,
        "special_price_fen": row.special_price_fen, "regular_price_fen": regular_fen,
        "starts_at": local(row.starts_at), "ends_at": local(row.ends_at), "title": row.title,
        "state": state(row, now), "created_by": row.created_by, "created_at": local(row.created_at),
        "cancelled_at": local(row.cancelled_at), "cancelled_by": row.cancelled_by,
    }
