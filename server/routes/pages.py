"""Read-only pages: the big screen and the shopper's trace page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy import select

from edge import EdgeError
from edge.integrity import verify_sale
from edge.tracecode import parse_trace_code
from server import db
from server.deps import SessionDep, SettingsDep

router = APIRouter(tags=["pages"])
templates = Jinja2Templates(directory=Path(__file__).resolve().parent.parent / "templates")


def yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


templates.env.filters["yuan"] = yuan


@router.get("/display", response_class=HTMLResponse)
def display(request: Request, settings: SettingsDep) -> HTMLResponse:
    return templates.TemplateResponse(request, "display.html", {"market": settings.market_name,
                                                                 "timezone": settings.timezone})


@router.get("/t/{trace_code}", response_class=HTMLResponse, responses={404: {
    "description": "No such receipt, or not a trace code (the page says which)",
    "content": {"text/html": {"schema": {"type": "string"}}}}})
def trace_page(trace_code: str, request: Request, session: SessionDep, settings: SettingsDep,
               s: str | None = None) -> HTMLResponse:
    """What a shopper sees after scanning a receipt: the sale, and whether it is genuine."""
    ctx: dict[str, Any] = {"market": settings.market_name, "trace_code": trace_code}
    try:
        parse_trace_code(trace_code)
    except EdgeError as exc:
        ctx.update(verdict="invalid", reason=str(exc))
        return templates.TemplateResponse(request, "trace.html", ctx, status_code=404)
    row = session.execute(select(db.Sale).where(db.Sale.trace_code == trace_code)).scalar_one_or_none()
    if row is None:
        ctx.update(verdict="unknown")
        return templates.TemplateResponse(request, "trace.html", ctx, status_code=404)
    stall = session.get(db.Stall, row.stall_id)
    genuine = bool(stall and stall.public_key and verify_sale(row.raw, stall.public_key))
    if s is not None and s != row.signature:
        verdict = "mismatch"  # the paper's signature is not the stored one: altered receipt
    elif genuine and row.verified:
        verdict = "genuine"
    else:
        verdict = "unverified"
    # Stored in UTC (server.db.UTCDateTime), shown in the market's zone: never the machine's TZ.
    sold_at = row.sold_at.astimezone(settings.tz)
    ctx.update(verdict=verdict, sale=row, stall=stall, flags=row.flags,
               sold_at=sold_at.strftime("%Y-%m-%d %H:%M:%S"), sold_at_iso=sold_at.isoformat())
    return templates.TemplateResponse(request, "trace.html", ctx)
