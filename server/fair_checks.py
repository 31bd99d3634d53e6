"""The market's fair scale (公平秤): a shopper's receipt re-weighed and judged by the legal
tolerance (``edge.tolerance``), every check recorded, a short weight raised as an alert.

The fair scale is a device of the market, not a stall: it authenticates with the token a
manager issues it (``server.meta_token.FAIR_SCALE``).  It first looks the receipt up
(``lookup``: is it genuine, which lines, which are refunded), then sends its stable reading
(``record``).  A check queued while the server was away arrives later with the same
``check_id`` and its own ``checked_at``; sent twice, it is one row.
"""

from __future__ import annotations

import datetime as dt
import logging
from fractions import Fraction
from typing import Literal

from pydantic import AwareDatetime, BaseModel, Field, StrictInt
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from edge.tolerance import judge, receipt_tolerance_g
from server import alerts, db, stats
from server.receipts import ReceiptVerdict, check_receipt
from server.refusals import Refused

logger = logging.getLogger(__name__)

CheckVerdict = Literal["ok", "short", "refunded", "forged", "unverified"]
#: What the shopper is told of the receipt itself, whatever it weighs.
ReceiptState = Literal["genuine", "forged", "unverified"]
_STATE: dict[ReceiptVerdict, ReceiptState] = {
    "genuine": "genuine", "unverified": "unverified",
    "mismatch": "forged", "unknown": "forged", "invalid": "forged"}
MESSAGES: dict[str, tuple[str, str]] = {
    "genuine": ("收据真实", "Genuine receipt"),
    "forged": ("收据无效：市场没有这张收据，或收据被改动", "Not a receipt of this market, or altered"),
    "unverified": ("收据签名或收据链校验失败，已通知管理员", "The receipt's signature or chain fails; "
                   "the manager is told"),
    "refunded": ("此收据（此行）已退款", "This receipt (line) was refunded"),
    "ok": ("重量相符（在法定允差内）", "The weight agrees (within the legal tolerance)"),
    "short": ("短斤少两：已记录并通知市场管理员", "Short weight: recorded and the market manager "
              "alerted"),
}
_SIGNATURE = r"^[A-Za-z0-9_=-]*$"


class ReceiptLine(BaseModel):
    line_no: int = Field(description="1-based, as on the receipt")
    plu: str
    name: str
    weight_g: int | None
    quantity: int | None
    refunded: bool


class ReceiptView(BaseModel):
    """What the fair scale shows of a scanned receipt before the goods go on."""

    trace_code: str
    state: ReceiptState
    message_zh: str
    message_en: str
    stall_id: str | None = None
    stall_name: str | None = None
    sold_at: str | None = Field(None, description="market time with its offset")
    lines: list[ReceiptLine] = []


class FairCheckIn(BaseModel):
    check_id: str = Field(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
                          description="the fair scale's id of this check (a UUID): sent twice, stored once")
    trace_code: str = Field(min_length=1, max_length=64, description="as scanned from the receipt's QR")
    signature: str | None = Field(None, max_length=128, pattern=_SIGNATURE,
                                  description="the receipt QR's ?s= (the sale's signature)")
    line_no: int | None = Field(None, ge=1, le=500, description="the line weighed; none: the whole receipt")
    measured_g: StrictInt = Field(ge=0, le=100_000, description="the fair scale's stable net weight")
    e_g: StrictInt = Field(ge=1, le=100, description="verification interval e of the market's stall "
                           "scales (the fair scale's [check] vendor_e_g): the MPE is theirs")
    checked_at: AwareDatetime = Field(description="when the shopper checked (with its UTC offset)")


class FairCheckOut(BaseModel):
    check_id: str
    status: Literal["accepted", "duplicate"]
    verdict: CheckVerdict
    message_zh: str
    message_en: str
    trace_code: str
    stall_id: str | None
    line_no: int | None
    receipt_g: int | None
    measured_g: int
    diff_g: int | None = Field(description="measured minus receipt: negative is short")
    tolerance_mg: int | None = Field(description="the legal tolerance (in-service MPE) in milligrams")
    checked_at: dt.datetime
    alert_id: int | None


def _lines(session: Session, sale: db.Sale) -> list[ReceiptLine]:
    refunded = set(session.execute(select(db.Refund.line_no).where(db.Refund.sale_id == sale.sale_id))
                   .scalars())
    return [ReceiptLine(line_no=ln.idx + 1, plu=ln.plu, name=ln.name, weight_g=ln.weight_g,
                        quantity=ln.quantity, refunded=ln.idx + 1 in refunded) for ln in sale.lines]


def lookup(session: Session, trace_code: str, signature: str | None, tz: dt.tzinfo) -> ReceiptView:
    found = check_receipt(session, trace_code, signature)
    state = _STATE[found.verdict]
    zh, en = MESSAGES[state]
    view = ReceiptView(trace_code=trace_code, state=state, message_zh=zh, message_en=en)
    if found.sale is not None and state != "forged":
        view.stall_id = found.sale.stall_id
        view.stall_name = found.stall.name if found.stall is not None else None
        view.sold_at = found.sale.sold_at.astimezone(tz).isoformat()
        view.lines = _lines(session, found.sale)
    return view


def _out(row: db.FairCheck, status: Literal["accepted", "duplicate"]) -> FairCheckOut:
    zh, en = MESSAGES[row.verdict]
    return FairCheckOut(check_id=row.check_id, status=status, verdict=row.verdict,
                        message_zh=zh, message_en=en, trace_code=row.trace_code, stall_id=row.stall_id,
                        line_no=row.line_no, receipt_g=row.receipt_g, measured_g=row.measured_g,
                        diff_g=row.diff_g, tolerance_mg=row.tolerance_mg, checked_at=row.checked_at,
                        alert_id=row.alert_id)


def _weighed(lines: list[ReceiptLine], line_no: int | None) -> list[ReceiptLine] | None:
    """The lines the goods on the plate stand for; None when one of them was refunded."""
    if line_no is not None:
        if line_no > len(lines):
            raise Refused(f"收据只有 {len(lines)} 行，没有第 {line_no} 行 — the receipt has "
                          f"{len(lines)} lines, no line {line_no}")
        chosen = [lines[line_no - 1]]
    else:
        chosen = lines
    if any(ln.refunded for ln in chosen):
        return None
    if line_no is not None and chosen[0].weight_g is None:
        raise Refused(f"第 {line_no} 行按件计价，请点数 — line {line_no} is sold by the piece: count it")
    weighed = [ln for ln in chosen if ln.weight_g is not None]
    if not weighed:
        raise Refused("此收据没有称重的商品 — the receipt has no weighed line")
    return weighed


def _alert_detail(row: db.FairCheck, stall: str, names: str, tolerance: Fraction) -> str:
    short = -(row.diff_g or 0)
    which = f"第 {row.line_no} 行" if row.line_no else "整单"
    which_en = f"line {row.line_no}" if row.line_no else "whole receipt"
    return (f"公平秤复核 {stall} 收据 {row.trace_code} {which} {names}：收据 {row.receipt_g} 克，实称 "
            f"{row.measured_g} 克，短少 {short} 克（法定允差 {float(tolerance):g} 克） — fair scale: "
            f"{stall} receipt {row.trace_code} {which_en}: receipt {row.receipt_g} g, measured "
            f"{row.measured_g} g, {short} g short (legal tolerance {float(tolerance):g} g)")


def record(session: Session, body: FairCheckIn, tz: dt.tzinfo) -> FairCheckOut:
    """Judge and store one check, raising ``short_weight`` when it is short beyond the
    tolerance (the caller commits).  A check already stored is answered as it was."""
    stored = session.execute(select(db.FairCheck).where(db.FairCheck.check_id == body.check_id)).scalar()
    if stored is not None:
        return _out(stored, "duplicate")
    if not 2000 <= body.checked_at.astimezone(dt.UTC).year <= 2099:
        raise Refused("checked_at must lie in the years 2000..2099 — 检查时间超出范围")
    now = dt.datetime.now(dt.UTC)
    row = db.FairCheck(check_id=body.check_id, checked_at=body.checked_at, received_at=now,
                       local_day=body.checked_at.astimezone(tz).date(), trace_code=body.trace_code,
                       line_no=body.line_no, measured_g=body.measured_g, e_g=body.e_g, verdict="forged")
    found = check_receipt(session, body.trace_code, body.signature)
    state = _STATE[found.verdict]
    sale = found.sale
    if sale is not None and state != "forged":
        row.sale_id, row.stall_id = sale.sale_id, sale.stall_id
        row.verdict = state  # unverified, unless weighed below
    if sale is not None and state == "genuine":
        weighed = _weighed(_lines(session, sale), body.line_no)
        if weighed is None:
            row.verdict = "refunded"
        else:
            row.receipt_g = sum(ln.weight_g or 0 for ln in weighed)
            tolerance = receipt_tolerance_g([ln.weight_g or 0 for ln in weighed], body.e_g)
            row.diff_g = body.measured_g - row.receipt_g
            row.tolerance_mg = int(tolerance * 1000)  # 0.5 e of whole grams: exact in mg
            row.verdict = judge(row.receipt_g, body.measured_g, tolerance)
            if row.verdict == "short":
                stall = found.stall.name if found.stall is not None else sale.stall_id
                names = "、".join(ln.name for ln in weighed)
                alert = alerts.raise_alert(
                    session, "short_weight", f"{sale.trace_code}:{body.line_no or 'all'}",
                    _alert_detail(row, f"{sale.stall_id} {stall}", names, tolerance),
                    stall_id=sale.stall_id, plu=weighed[0].plu if len(weighed) == 1 else None)
                if alert is not None:
                    session.flush()
                    row.alert_id = alert.id
    try:
        with session.begin_nested():  # the same check from a second server process at once
            session.add(row)
    except IntegrityError:
        again = select(db.FairCheck).where(db.FairCheck.check_id == body.check_id)
        return _out(session.execute(again).scalar_one(), "duplicate")
    logger.info("fair-scale check %s of %s line %s: %s (receipt %s g, measured %d g)", body.check_id,
                body.trace_code, body.line_no or "all", row.verdict, row.receipt_g, body.measured_g)
    return _out(row, "accepted")


def recent(session: Session, *, limit: int = 100, stall_id: str | None = None,
           verdict: str | None = None) -> list[db.FairCheck]:
    """The newest checks first."""
    q = select(db.FairCheck).order_by(db.FairCheck.checked_at.desc(), db.FairCheck.id.desc()).limit(limit)
    if stall_id is not None:
        q = q.where(db.FairCheck.stall_id == stall_id)
    if verdict is not None:
        q = q.where(db.FairCheck.verdict == verdict)
    return list(session.execute(q).scalars())


class ComplaintRate(BaseModel):
    """One stall's fair-scale checks over market days: how often its receipts were short."""

    stall_id: str
    stall_name: str | None
    checks: int = Field(description="checks of its genuine, unrefunded receipts (ok or short)")
    short: int = Field(description="of those, short beyond the legal tolerance")
    short_pct: float | None = Field(description="short in % of checks, 2 decimals half-up; null "
                                    "without checks")
    sales: int = Field(description="its receipts sold in the period")
    short_per_1000_sales: float | None = Field(description="short checks per 1,000 receipts sold, "
                                             "2 decimals; null without sales")


def complaint_rates(session: Session, start: dt.date, end: dt.date) -> list[ComplaintRate]:
    """Per stall with a check or a sale in ``start``..``end``: most short checks first."""
    checks = session.execute(
        select(db.FairCheck.stall_id, db.FairCheck.verdict, func.count())
        .where(db.FairCheck.local_day.between(start, end), db.FairCheck.stall_id.is_not(None),
               db.FairCheck.verdict.in_(("ok", "short")))
        .group_by(db.FairCheck.stall_id, db.FairCheck.verdict)).all()
    counted: dict[str, dict[str, int]] = {}
    for stall_id, verdict, n in checks:
        counted.setdefault(str(stall_id), {})[str(verdict)] = int(n)
    sales = {str(s): int(n or 0) for s, n in session.execute(
        select(db.StallDay.stall_id, func.sum(db.StallDay.sales))
        .where(db.StallDay.local_day.between(start, end)).group_by(db.StallDay.stall_id))}
    names = {str(s): str(n) for s, n in session.execute(select(db.Stall.stall_id, db.Stall.name))}
    out = []
    for stall_id in sorted(set(counted) | set(sales)):
        c = counted.get(stall_id, {})
        short, sold = c.get("short", 0), sales.get(stall_id, 0)
        total = c.get("ok", 0) + short
        out.append(ComplaintRate(stall_id=stall_id, stall_name=names.get(stall_id), checks=total, short=short,
                                 short_pct=stats.percent(short, total), sales=sold,
                                 short_per_1000_sales=stats.percent(short * 10, sold)))
    out.sort(key=lambda r: (-r.short, -r.checks, r.stall_id))
    return out
