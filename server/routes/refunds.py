"""Refunds from the stalls: a line of a stored sale, refunded at most once."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from server import db
from server.auth import Credentials, stall_for_token
from server.deps import SessionDep, SettingsDep, write_lock
from server.guard import REFUNDS_BODY_LIMIT, GuardedRoute, body_limit, errors

router = APIRouter(prefix="/api/v1/refunds", tags=["refunds"], route_class=GuardedRoute)


class RefundIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sale_id: str = Field(max_length=36)
    line_no: int = Field(ge=1, le=100, description="1-based line of the receipt")
    amount_fen: int = Field(ge=0)
    reason: str = Field(min_length=1, max_length=200)
    operator: str = Field(min_length=1, max_length=64)
    at: dt.datetime

    @field_validator("at")
    @classmethod
    def _with_offset(cls, v: dt.datetime) -> dt.datetime:
        if v.tzinfo is None:
            raise ValueError("at needs a UTC offset")
        return v


class RefundBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    refunds: list[Any] = Field(min_length=1, max_length=500)


def _one(session: Any, stall: db.Stall, raw: Any, tz: Any) -> dict[str, Any]:
    key = {"sale_id": raw.get("sale_id") if isinstance(raw, dict) else None,
           "line_no": raw.get("line_no") if isinstance(raw, dict) else None}
    try:
        ref = RefundIn.model_validate(raw)
    except ValidationError as exc:
        return {**key, "status": "refused", "reason": exc.errors()[0]["msg"]}
    sale = session.get(db.Sale, ref.sale_id)
    if sale is None or sale.stall_id != stall.stall_id:
        return {**key, "status": "refused", "reason": f"no sale {ref.sale_id} of stall {stall.stall_id}"}
    if ref.line_no > len(sale.lines):
        return {**key, "status": "refused", "reason": f"sale {ref.sale_id} has no line {ref.line_no}"}
    line = sale.lines[ref.line_no - 1]
    if ref.amount_fen != line.amount_fen:
        return {**key, "status": "refused",
                "reason": f"line {ref.line_no} is {line.amount_fen} 分, not {ref.amount_fen}"}
    if session.get(db.Refund, (ref.sale_id, ref.line_no)) is not None:
        return {**key, "status": "duplicate", "reason": None}
    session.add(db.Refund(sale_id=ref.sale_id, line_no=ref.line_no, stall_id=stall.stall_id,
                          amount_fen=ref.amount_fen, reason=ref.reason, operator=ref.operator,
                          refunded_at=ref.at, local_day=ref.at.astimezone(tz).date()))
    session.flush()
    return {**key, "status": "accepted", "reason": None}


@router.post("", openapi_extra=body_limit(REFUNDS_BODY_LIMIT), responses=errors(400, 401, 413))
def upload_refunds(body: RefundBatch, session: SessionDep, cred: Credentials, settings: SettingsDep,
                   request: Request) -> dict[str, Any]:
    """Answers per refund: accepted, duplicate or refused (and why)."""
    with write_lock(request):
        stall = stall_for_token(session, cred)
        results = [_one(session, stall, raw, settings.tz) for raw in body.refunds]
        session.commit()
    return {"results": results}
