"""Read-only pages: the big screen and the shopper's trace page."""

from __future__ import annotations

import zoneinfo
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session

from server import db, inspections
from server.deps import SessionDep, SettingsDep
from server.receipts import check_receipt

router = APIRouter(tags=["pages"])
templates = Jinja2Templates(directory=Path(__file__).resolve().parent.parent / "templates")


def yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


templates.env.filters["yuan"] = yuan

#: The public pages run the package's own scripts only: a tag or an event handler injected
#: into a name would not run even if escaping failed (no 'unsafe-inline' for scripts).
#: 'unsafe-eval' stays: the pages never call eval, but the browser tests' polling
#: (Playwright's wait_for_function) does, in the page.  Inline style stays allowed (the
#: trace page's own <style>).
PUBLIC_CSP = ("default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
              "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
              "frame-ancestors 'self'; base-uri 'none'")


def _public(response: HTMLResponse) -> HTMLResponse:
    response.headers["Content-Security-Policy"] = PUBLIC_CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    # The trace page's address carries the receipt's signature: not for other sites.
    response.headers["Referrer-Policy"] = "same-origin"
    return response


@router.get("/display", response_class=HTMLResponse)
def display(request: Request, settings: SettingsDep) -> HTMLResponse:
    return _public(templates.TemplateResponse(request, "display.html", {
        "market": settings.market_name, "timezone": settings.timezone}))


@router.get("/t/{trace_code}", response_class=HTMLResponse, responses={404: {
    "description": "No such receipt, or not a trace code (the page says which)",
    "content": {"text/html": {"schema": {"type": "string"}}}}})
def trace_page(trace_code: str, request: Request, session: SessionDep, settings: SettingsDep,
               s: str | None = None) -> HTMLResponse:
    """What a shopper sees after scanning a receipt: the sale, and whether it is genuine."""
    ctx: dict[str, Any] = {"market": settings.market_name, "trace_code": trace_code}
    found = check_receipt(session, trace_code, s)
    if found.sale is None:
        ctx.update(verdict=found.verdict, reason=found.reason)
        return _public(templates.TemplateResponse(request, "trace.html", ctx, status_code=404))
    row, stall, verdict = found.sale, found.stall, found.verdict
    # Stored in UTC (server.db.UTCDateTime), shown in the market's zone: never the machine's TZ.
    sold_at = row.sold_at.astimezone(settings.tz)
    ctx.update(verdict=verdict, sale=row, stall=stall, flags=row.flags,
               sold_at=sold_at.strftime("%Y-%m-%d %H:%M:%S"), sold_at_iso=sold_at.isoformat(),
               tests=_batch_tests(session, row, settings.tz))
    return _public(templates.TemplateResponse(request, "trace.html", ctx))


def _batch_tests(session: Session, sale: db.Sale, tz: zoneinfo.ZoneInfo) -> dict[str, dict[str, Any]]:
    """Each line's batch at the sale's stall: its rapid tests, the latest first, and whether the
    latest failed (the batch is blocked: server.inspections), for the trace page."""
    batches = [ln.batch_code for ln in sale.lines if ln.batch_code]
    found = inspections.for_batches(session, [(sale.stall_id, b) for b in batches])
    out: dict[str, dict[str, Any]] = {}
    for (_, batch), rows in found.items():
        tests = []
        for r in rows:
            at = r.tested_at.astimezone(tz)  # in the market's zone, as every page shows times
            tests.append({"result": r.result, "method": r.method, "tester": r.tester,
                          "inhibition": None if r.inhibition_permille is None
                          else f"{r.inhibition_permille / 10:.1f}",
                          "tested_at": at.strftime("%Y-%m-%d %H:%M"), "tested_at_iso": at.isoformat()})
        out[batch] = {"tests": tests, "failed": bool(rows) and rows[0].result == "fail"}
    return out
