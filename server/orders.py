"""Online orders (线上买菜): a shopper orders at a stall, the stall weighs, the sale settles it.

An order is an estimate: each line an estimated weight ("约 500 克") or a count, at the
stall's price when ordered (a special inside its window).  The stall accepts or declines
each line, weighs the accepted ones on its scale through the normal legal flow, and checks
out one signed sale that carries the order's id (``order_id``, an extra field of the sale,
``edge.sale``).  When that sale is stored (``server.ingest``) the order takes its final
amounts from it, line by line by PLU, so order and sale agree to the 分, and is ready.  A
second sale for the same order is refused by ingest: an order is never fulfilled twice.

States, each with its time: ``placed -> accepted -> weighing -> ready -> picked_up``, or
``cancelled`` (the shopper before the stall accepted, the stall when it declines every
line or cannot fulfil).  A line the stall declined leaves the order partly declined.

A weighed line that differs from its estimate by more than the order's tolerance
(``Settings.order_tolerance_pct``, 10 % by default, fixed on the order when placed) is
marked ``over_tolerance``: the shopper's page says so with both amounts.

The phone number is the shopper's only account.  It is never stored: orders carry an
HMAC of it under the server secret (``phone_key``) and a masked copy for the stall.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import re
import secrets
import zoneinfo
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import func, select
from sqlalchemy.orm import Session, joinedload, selectinload

from edge import PricingError
from edge.pricing import line_amount_fen
from edge.sale import Sale as SaleModel
from server import db
from server.fields import PLU, StallId, Text200
from server.refusals import Conflict, NotFound, Refused

logger = logging.getLogger(__name__)

State = Literal["placed", "accepted", "weighing", "ready", "picked_up", "cancelled"]
OPEN_STATES: tuple[str, ...] = ("placed", "accepted", "weighing", "ready")
STATE_TEXT: dict[str, tuple[str, str]] = {
    "placed": ("待摊位接单", "not yet accepted"),
    "accepted": ("已接单", "accepted"),
    "weighing": ("称重配货中", "being weighed"),
    "ready": ("已备好，可取货", "ready"),
    "picked_up": ("已取货", "picked up"),
    "cancelled": ("已取消", "cancelled"),
}
Payment = Literal["cash", "qr"]
#: A mainland mobile number: the shopper's account.
PHONE_PATTERN = r"^1[3-9][0-9]{9}$"
#: An estimated weight: at least a handful, at most what one shopper carries of one item.
MIN_EST_G, MAX_EST_G = 50, 20_000
MAX_PIECES = 99
MAX_LINES = 30
#: The stall must have been heard from this recently to be shown online.
ONLINE_WITHIN = dt.timedelta(seconds=90)


class OrderError(Refused):
    """An order refused, with the reason in Chinese and English."""


# -- the shopper's identity ------------------------------------------------------------------
def phone_key(secret: str, phone: str) -> str:
    return hmac.new(secret.encode(), b"shopper-phone:" + phone.encode(), hashlib.sha256).hexdigest()


def mask_phone(phone: str) -> str:
    return f"{phone[:3]}****{phone[-4:]}"


def check_phone(phone: str) -> str:
    phone = phone.strip().replace(" ", "").replace("-", "")
    if not re.fullmatch(PHONE_PATTERN, phone):
        raise OrderError("手机号应为 11 位数字，以 1 开头 / a phone number is 11 digits starting with 1")
    return phone


# -- pickup slots ----------------------------------------------------------------------------
def slots(tz: zoneinfo.ZoneInfo, opens: dt.time, closes: dt.time, *, lead_min: int, slot_min: int,
          days: int, now: dt.datetime | None = None) -> list[dt.datetime]:
    """The pickup slots a shopper may choose: every ``slot_min`` minutes inside market hours,
    starting at least ``lead_min`` minutes from now, today and the next ``days - 1`` days."""
    now = (now or dt.datetime.now(dt.UTC)).astimezone(tz)
    earliest = now + dt.timedelta(minutes=lead_min)
    out: list[dt.datetime] = []
    for d in range(days):
        day = now.date() + dt.timedelta(days=d)
        t = dt.datetime.combine(day, opens, tz)
        end = dt.datetime.combine(day, closes, tz)
        while t + dt.timedelta(minutes=slot_min) <= end:
            if t >= earliest:
                out.append(t)
            t += dt.timedelta(minutes=slot_min)
    return out


def check_slot(start: dt.datetime, allowed: list[dt.datetime]) -> dt.datetime:
    if start in allowed:
        return start
    if not allowed or start < allowed[0]:
        raise OrderError("取货时段已过或太近，请选择其他时段 / that pickup slot has passed or is too "
                         "soon: choose another")
    raise OrderError("没有这个取货时段（须在营业时间内）/ no such pickup slot: choose one the page "
                     "lists")


# -- the order's body ------------------------------------------------------------------------
class OrderLineIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    plu: PLU
    est_weight_g: int | None = Field(None, strict=True, description="an item sold by weight: the "
                                     f"estimate in grams ({MIN_EST_G}..{MAX_EST_G})")
    quantity: int | None = Field(None, strict=True, description="an item sold by the piece: "
                                 f"pieces (1..{MAX_PIECES})")


class OrderIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stall_id: StallId
    slot_start: dt.datetime = Field(description="a pickup slot's start, as GET /api/v1/shop/slots "
                                    "lists it (with its UTC offset)")
    lines: list[OrderLineIn] = Field(min_length=1, max_length=MAX_LINES)
    note: Text200 | None = None

    @model_validator(mode="after")
    def _aware(self) -> OrderIn:
        if self.slot_start.utcoffset() is None:
            raise ValueError("slot_start needs its UTC offset, e.g. 2026-12-02T17:30:00+08:00")
        return self


def _line_amount(unit_price_fen: int, price_unit: str, line: OrderLineIn) -> int:
    """The line's estimate, priced by the stalls' own pricing code (``edge.pricing``)."""
    name = f"PLU {line.plu}"
    if price_unit == "piece":
        if line.quantity is None or line.est_weight_g is not None:
            raise OrderError(f"{name} 按件卖，请填件数 / is sold by the piece: give quantity, not a weight")
        if not 1 <= line.quantity <= MAX_PIECES:
            raise OrderError(f"{name} 件数应为 1..{MAX_PIECES} / quantity must be 1..{MAX_PIECES}")
        weight, quantity = None, line.quantity
    else:
        if line.est_weight_g is None or line.quantity is not None:
            raise OrderError(f"{name} 按重量卖，请填预计克数 / is sold by weight: give est_weight_g, "
                             "not a quantity")
        if not MIN_EST_G <= line.est_weight_g <= MAX_EST_G:
            raise OrderError(f"{name} 预计重量应为 {MIN_EST_G}..{MAX_EST_G} 克 / est_weight_g must be "
                             f"{MIN_EST_G}..{MAX_EST_G} g")
        weight, quantity = line.est_weight_g, None
    try:
        return line_amount_fen(unit_price_fen=unit_price_fen, price_unit=price_unit, weight_g=weight,
                               quantity=quantity)
    except PricingError as exc:
        raise OrderError(f"{name}: {exc}") from exc


def desk_open(session: Session, stall_id: str) -> bool:
    desk = session.get(db.OrderDesk, stall_id)
    return desk is None or desk.open


def stall_prices(session: Session, stall_id: str, now: dt.datetime
                 ) -> dict[str, tuple[db.Item, int, int, db.Promotion | None]]:
    """The stall's active priced items: item, price now (a current special wins), regular
    price and the special."""
    rows = session.execute(select(db.Item, db.StallPrice.unit_price_fen)
                           .join(db.StallPrice, db.StallPrice.plu == db.Item.plu)
                           .where(db.StallPrice.stall_id == stall_id, db.Item.active.is_(True))
                           .order_by(db.Item.category, db.Item.plu)).all()
    p = db.Promotion
    specials = {s.plu: s for s in session.execute(select(p).where(
        p.stall_id == stall_id, p.cancelled_at.is_(None), p.starts_at <= now, p.ends_at > now)).scalars()}
    out: dict[str, tuple[db.Item, int, int, db.Promotion | None]] = {}
    for item, regular in rows:
        special = specials.get(item.plu)
        price = special.special_price_fen if special is not None and special.special_price_fen < regular \
            else regular
        out[item.plu] = (item, price, regular, special)
    return out


def latest_tests(session: Session, stall_id: str | None = None) -> dict[tuple[str, str], db.Inspection]:
    """The latest rapid test of each (stall, item): the shop's badge."""
    ins = db.Inspection
    ranked = select(ins.id, func.row_number().over(
        partition_by=(ins.stall_id, ins.plu), order_by=(ins.tested_at.desc(), ins.id.desc())).label("rank"))
    if stall_id is not None:
        ranked = ranked.where(ins.stall_id == stall_id)
    sub = ranked.subquery()
    rows = session.execute(select(ins).join(sub, sub.c.id == ins.id).where(sub.c.rank == 1)).scalars()
    return {(r.stall_id, r.plu): r for r in rows}


def place(session: Session, body: OrderIn, *, key: str, masked: str, tz: zoneinfo.ZoneInfo,
          allowed_slots: list[dt.datetime], slot_min: int, tolerance_pct: int,
          now: dt.datetime | None = None) -> db.Order:
    """Check and store a shopper's order (the caller commits); ``key`` and ``masked`` name the
    shopper (:func:`phone_key`, :func:`mask_phone`)."""
    now = now or dt.datetime.now(dt.UTC)
    stall = session.get(db.Stall, body.stall_id)
    if stall is None:
        raise NotFound(f"没有摊位 {body.stall_id} / no stall {body.stall_id}")
    if not desk_open(session, stall.stall_id):
        raise Conflict(f"摊位 {stall.stall_id} {stall.name} 暂停接单 / stall {stall.stall_id} is "
                       "closed for online orders now")
    start = check_slot(body.slot_start.astimezone(tz), allowed_slots)
    plus = [ln.plu for ln in body.lines]
    if len(set(plus)) != len(plus):
        raise OrderError("同一商品请合并为一行 / one line per item: merge the repeated item")
    priced = stall_prices(session, stall.stall_id, now)
    tests = latest_tests(session, stall.stall_id)
    order = db.Order(stall_id=stall.stall_id, phone_key=key, phone_masked=masked, state="placed",
                     pickup_code=f"{secrets.randbelow(10_000):04d}", slot_start=start,
                     slot_end=start + dt.timedelta(minutes=slot_min), note=body.note,
                     estimate_fen=0, tolerance_pct=tolerance_pct, placed_at=now)
    for no, line in enumerate(body.lines, start=1):
        found = priced.get(line.plu)
        if found is None:
            if session.get(db.Item, line.plu) is None:
                raise NotFound(f"市场没有商品 {line.plu} / no item {line.plu} in the market")
            raise Conflict(f"摊位 {stall.stall_id} 不卖 {line.plu} / stall {stall.stall_id} does not "
                           f"sell {line.plu}")
        item, price, _regular, _special = found
        test = tests.get((stall.stall_id, item.plu))
        if test is not None and test.result == "fail":
            raise Conflict(f"{item.name} 农残快检不合格，禁止销售 / {item.name_en} failed the rapid "
                           "test: not for sale")
        amount = _line_amount(price, item.price_unit, line)
        order.lines.append(db.OrderLine(
            line_no=no, plu=item.plu, name=item.name, name_en=item.name_en, price_unit=item.price_unit,
            unit_price_fen=price, est_weight_g=line.est_weight_g, quantity=line.quantity,
            est_amount_fen=amount, state="pending", over_tolerance=False))
        order.estimate_fen += amount
    session.add(order)
    session.flush()
    logger.info("order %d placed at stall %s: %d lines, about %d 分, slot %s", order.id,
                order.stall_id, len(order.lines), order.estimate_fen, start.isoformat())
    return order


# -- what the stall and the shopper do ------------------------------------------------------
def _get(session: Session, order_id: int, *, stall_id: str | None = None,
         phone: str | None = None) -> db.Order:
    # its lines read now, under the order's row lock that every change of them takes: the
    # answer after the commit shows this change's lines, never a later commit's
    order = session.get(db.Order, order_id, with_for_update=True, options=[selectinload(db.Order.lines)])
    if order is None or (stall_id is not None and order.stall_id != stall_id) or \
            (phone is not None and order.phone_key != phone):
        raise NotFound(f"没有订单 {order_id} / no order {order_id}")
    return order


def _refuse_state(order: db.Order, doing: tuple[str, str]) -> Conflict:
    zh, en = STATE_TEXT[order.state]
    return Conflict(f"订单 {order.id} {zh}，不能{doing[0]} / order {order.id} is {en}: cannot {doing[1]}")


def accept(session: Session, order_id: int, stall_id: str, declined: Iterable[int],
           now: dt.datetime | None = None) -> db.Order:
    """The stall accepts the order, declining the lines it cannot supply; every line declined
    cancels the order."""
    now = now or dt.datetime.now(dt.UTC)
    order = _get(session, order_id, stall_id=stall_id)
    if order.state != "placed":
        raise _refuse_state(order, ("接单", "accept it"))
    out = set(declined)
    unknown = out - {ln.line_no for ln in order.lines}
    if unknown:
        raise OrderError(f"订单 {order.id} 没有第 {sorted(unknown)} 行 / order {order.id} has no "
                         f"line {sorted(unknown)}")
    for ln in order.lines:
        ln.state = "declined" if ln.line_no in out else "accepted"
    order.accepted_at = now
    if all(ln.state == "declined" for ln in order.lines):
        order.state, order.cancelled_at = "cancelled", now
        order.cancel_reason = "摊位无法供货 / the stall cannot supply it"
        order.cancelled_by = f"stall:{stall_id}"
    else:
        order.state = "accepted"
    logger.info("order %d %s by stall %s (%d lines declined)", order.id, order.state, stall_id, len(out))
    return order


def start_weighing(session: Session, order_id: int, stall_id: str,
                   now: dt.datetime | None = None) -> db.Order:
    order = _get(session, order_id, stall_id=stall_id)
    if order.state == "weighing":
        return order  # the vendor tapped twice, or the answer was lost
    if order.state != "accepted":
        raise _refuse_state(order, ("开始称重", "start weighing it"))
    order.state, order.weighing_at = "weighing", now or dt.datetime.now(dt.UTC)
    return order


def picked_up(session: Session, order_id: int, stall_id: str, payment: Payment, pickup_code: str,
              now: dt.datetime | None = None) -> db.Order:
    """The shopper collected the order: she gave the pickup code her page shows, the vendor typed
    it.  The stall's view of an order never carries the code, so a bag is handed to the one who
    ordered it, not to whoever names the stall and the slot."""
    order = _get(session, order_id, stall_id=stall_id)
    if order.state != "ready":
        raise _refuse_state(order, ("取货", "hand it over (it is ready once its sale is stored)"))
    if not secrets.compare_digest(pickup_code.encode(), order.pickup_code.encode()):
        logger.info("order %d: a wrong pickup code typed at stall %s", order.id, stall_id)
        raise OrderError(f"取货码不对，请顾客出示下单页上的取货码 / that is not order {order.id}'s pickup "
                         "code: ask the shopper for the code her order page shows")
    order.state, order.payment = "picked_up", payment
    order.picked_up_at = now or dt.datetime.now(dt.UTC)
    return order


def cancel(session: Session, order_id: int, *, reason: str, who: str, stall_id: str | None = None,
           phone: str | None = None, now: dt.datetime | None = None) -> db.Order:
    """The shopper cancels before the stall accepted; the stall before its sale."""
    order = _get(session, order_id, stall_id=stall_id, phone=phone)
    allowed = ("placed",) if phone is not None else ("placed", "accepted", "weighing")
    if order.state not in allowed:
        raise _refuse_state(order, ("取消", "cancel it"))
    order.state, order.cancelled_at = "cancelled", now or dt.datetime.now(dt.UTC)
    order.cancel_reason, order.cancelled_by = reason, who
    return order


def set_desk(session: Session, stall_id: str, open_: bool, who: str) -> db.OrderDesk:
    desk = session.get(db.OrderDesk, stall_id, with_for_update=True)
    now = dt.datetime.now(dt.UTC)
    if desk is None:
        desk = db.OrderDesk(stall_id=stall_id, open=open_, updated_at=now, updated_by=who)
        session.add(desk)
    else:
        desk.open, desk.updated_at, desk.updated_by = open_, now, who
    return desk


# -- the sale that fulfils an order (server.ingest) ------------------------------------------
def order_id_of(sale: SaleModel) -> int | None:
    """The order a sale fulfils (its ``order_id`` extra field), or None."""
    value = (sale.model_extra or {}).get("order_id")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def claims(session: Session, order_ids: list[int]) -> dict[int, db.Order]:
    """The orders the sales being stored name (``order_id_of``; one query, locked on
    PostgreSQL)."""
    ids = sorted(set(order_ids))
    if not ids:
        return {}
    rows = session.execute(select(db.Order).where(db.Order.id.in_(ids)).with_for_update()).scalars()
    return {o.id: o for o in rows}


def refusal(order: db.Order | None, order_id: int, stall_id: str, sale_id: str) -> str | None:
    """Why a sale naming ``order_id`` may not be stored, or None."""
    if order is None or order.stall_id != stall_id:
        return f"order {order_id} is not an order of stall {stall_id}"
    if order.sale_id is not None and order.sale_id != sale_id:
        return f"order {order_id} was fulfilled already by sale {order.sale_id}: never twice"
    if order.state == "cancelled":
        return f"order {order_id} was cancelled ({order.cancel_reason}): it cannot be fulfilled"
    return None


def _over(line: db.OrderLine, tolerance_pct: int) -> bool:
    if line.price_unit == "piece":
        return line.final_quantity != line.quantity
    est, got = line.est_weight_g or 0, line.final_weight_g or 0
    return abs(got - est) * 100 > tolerance_pct * est


def fulfil(order: db.Order, sale: SaleModel, local_day: dt.date, now: dt.datetime) -> None:
    """The order's final amounts from its stored sale, line by line by PLU; ready."""
    by_plu: dict[str, list[Any]] = {}
    for sl in sale.lines:
        by_plu.setdefault(sl.plu, []).append(sl)
    for line in order.lines:
        if line.state == "declined":
            continue
        got = by_plu.get(line.plu)
        if not got:
            line.state, line.final_amount_fen = "missing", 0
            continue
        line.state = "weighed"
        line.final_amount_fen = sum(s.amount_fen for s in got)
        if line.price_unit == "piece":
            line.final_quantity = sum(s.quantity or 0 for s in got)
        else:
            line.final_weight_g = sum(s.weight_g or 0 for s in got)
        line.over_tolerance = _over(line, order.tolerance_pct)
    order.sale_id, order.trace_code = str(sale.sale_id), sale.trace_code
    order.final_fen, order.local_day = sale.total_fen, local_day
    order.state, order.ready_at = "ready", now
    order.accepted_at = order.accepted_at or now
    logger.info("order %d ready: sale %s, %d 分 (estimate %d 分)", order.id, order.sale_id,
                order.final_fen, order.estimate_fen)


# -- views -----------------------------------------------------------------------------------
def stall_online(session: Session, contacts: dict[str, dt.datetime], stall_ids: Iterable[str],
                 now: dt.datetime | None = None) -> dict[str, bool]:
    now = now or dt.datetime.now(dt.UTC)
    ids = list(stall_ids)
    stored = dict(session.execute(select(db.StallContact.stall_id, db.StallContact.last_seen_at)
                                  .where(db.StallContact.stall_id.in_(ids))).all())
    out = {}
    for sid in ids:
        seen = max((t for t in (stored.get(sid), contacts.get(sid)) if t is not None), default=None)
        out[sid] = seen is not None and now - seen <= ONLINE_WITHIN
    return out


def to_json(order: db.Order, stall_name: str, tz: zoneinfo.ZoneInfo, *, online: bool | None = None,
            for_stall: bool = False) -> dict[str, Any]:
    def local(t: dt.datetime | None) -> str | None:
        return None if t is None else t.astimezone(tz).isoformat()

    zh, en = STATE_TEXT[order.state]
    lines = [{
        "line_no": ln.line_no, "plu": ln.plu, "name": ln.name, "name_en": ln.name_en,
        "price_unit": ln.price_unit, "unit_price_fen": ln.unit_price_fen,
        "est_weight_g": ln.est_weight_g, "quantity": ln.quantity, "est_amount_fen": ln.est_amount_fen,
        "state": ln.state, "final_weight_g": ln.final_weight_g, "final_quantity": ln.final_quantity,
        "final_amount_fen": ln.final_amount_fen, "over_tolerance": ln.over_tolerance,
    } for ln in order.lines]
    out: dict[str, Any] = {
        "id": order.id, "stall_id": order.stall_id, "stall_name": stall_name, "state": order.state,
        "state_zh": zh, "state_en": en,
        # the shopper's proof at the stall: the stall's own view never shows it (``picked_up``)
        "pickup_code": None if for_stall else order.pickup_code,
        "slot_start": local(order.slot_start), "slot_end": local(order.slot_end), "note": order.note,
        "estimate_fen": order.estimate_fen, "final_fen": order.final_fen,
        "tolerance_pct": order.tolerance_pct,
        "partly_declined": any(ln.state == "declined" for ln in order.lines),
        "over_tolerance": any(ln.over_tolerance for ln in order.lines),
        "sale_id": order.sale_id, "trace_code": order.trace_code, "payment": order.payment,
        "cancel_reason": order.cancel_reason,
        "placed_at": local(order.placed_at), "accepted_at": local(order.accepted_at),
        "weighing_at": local(order.weighing_at), "ready_at": local(order.ready_at),
        "picked_up_at": local(order.picked_up_at), "cancelled_at": local(order.cancelled_at),
        "stall_online": online, "lines": lines,
    }
    if for_stall:
        out["phone_masked"] = order.phone_masked
    return out


#: Orders read with their lines in the same statement.  On PostgreSQL each statement of a READ
#: COMMITTED transaction reads what was committed when it began: lines loaded later, on first
#: use, could be a later commit's (a stall's long poll once answered an order still "placed"
#: whose lines were already accepted; its ETag changed, so it woke for a state never stored).
WITH_LINES = joinedload(db.Order.lines)


def read_order(session: Session, order_id: int) -> db.Order | None:
    """One order with its lines, read together (``WITH_LINES``)."""
    return session.get(db.Order, order_id, options=[WITH_LINES])


def list_for_phone(session: Session, key: str, limit: int = 20) -> list[db.Order]:
    return list(session.scalars(select(db.Order).options(WITH_LINES).where(db.Order.phone_key == key)
                                .order_by(db.Order.id.desc()).limit(limit)).unique())


def open_for_stall(session: Session, stall_id: str) -> list[db.Order]:
    return list(session.scalars(select(db.Order).options(WITH_LINES).where(
        db.Order.stall_id == stall_id, db.Order.state.in_(OPEN_STATES)).order_by(db.Order.id)).unique())


def stall_names(session: Session, ids: Iterable[str]) -> dict[str, str]:
    return dict(session.execute(select(db.Stall.stall_id, db.Stall.name)
                                .where(db.Stall.stall_id.in_(set(ids)))).all())


def online_share(session: Session, day: dt.date) -> dict[str, Any]:
    """A market day's sales that fulfilled online orders, against all its sales (the day rollup)."""
    row = session.execute(select(func.count(db.Order.id), func.coalesce(func.sum(db.Order.final_fen), 0))
                          .where(db.Order.local_day == day)).one()
    online_n, online_fen = int(row[0] or 0), int(row[1] or 0)
    row = session.execute(select(func.coalesce(func.sum(db.StallDay.sales), 0),
                                 func.coalesce(func.sum(db.StallDay.total_fen), 0))
                          .where(db.StallDay.local_day == day)).one()
    all_n, all_fen = int(row[0] or 0), int(row[1] or 0)
    return {"day": day.isoformat(), "online_sales": online_n, "online_fen": online_fen,
            "sales": all_n, "total_fen": all_fen,
            "share_pct": round(100 * online_fen / all_fen, 1) if all_fen else None}
