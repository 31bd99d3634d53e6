"""The fair scale (公平秤): its receipt look-up and checks (its own token), the manager's list,
the complaint rate per stall and the fair scale's token (``server.fair_checks``)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from server import fair_checks, stats
from server.auth import ManagerDep, require_fair_scale
from server.deps import SessionDep, SettingsDep, write_lock
from server.fair_checks import FairCheckIn, FairCheckOut, ReceiptView
from server.guard import GuardedRoute, errors
from server.meta_token import FAIR_SCALE
from server.refusals import as_http
from server.routes.stats import refused_as_422
from server.routes.tokens import add_token_routes

router = APIRouter(prefix="/api/v1", tags=["fair scale"], route_class=GuardedRoute)
FairScaleDep = Annotated[None, Depends(require_fair_scale)]


@router.get("/fair-checks/receipt", response_model=ReceiptView, responses=errors(401))
def receipt(session: SessionDep, settings: SettingsDep, _: FairScaleDep,
            trace_code: Annotated[str, Query(min_length=1, max_length=64,
                                             description="the trace code scanned")],
            s: Annotated[str | None, Query(max_length=128, pattern=r"^[A-Za-z0-9_=-]*$",
                                           description="the QR's signature (?s=)")] = None) -> ReceiptView:
    """A scanned receipt as the fair scale shows it: genuine, forged (no such receipt of this
    market, or its paper altered) or unverified (its signature or chain fails), its lines and
    which are refunded."""
    return fair_checks.lookup(session, trace_code, s, settings.tz)


@router.post("/fair-checks", status_code=status.HTTP_201_CREATED, response_model=FairCheckOut,
             responses={200: {"model": FairCheckOut, "description": "Stored before (same check_id)"},
                        **errors(400, 401, 413)})
def record_check(body: FairCheckIn, session: SessionDep, settings: SettingsDep, _: FairScaleDep,
                 request: Request, response: Response) -> FairCheckOut:
    """One check: the receipt's weight (a line, or the whole receipt) against the fair scale's
    stable reading.  Recorded whatever it finds; short beyond the legal tolerance (the class III
    in-service MPE at the receipt's load, ``edge.tolerance``) raises a ``short_weight`` alert
    against the stall.  Idempotent by ``check_id``."""
    with write_lock(request), as_http():
        out = fair_checks.record(session, body, settings.tz)
        session.commit()
    if out.status == "duplicate":
        response.status_code = status.HTTP_200_OK
    return out


class FairCheckRow(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    check_id: str
    checked_at: dt.datetime = Field(description="in the market's zone")
    trace_code: str
    stall_id: str | None
    line_no: int | None
    receipt_g: int | None
    measured_g: int
    diff_g: int | None
    tolerance_mg: int | None
    e_g: int
    verdict: str
    alert_id: int | None


@router.get("/fair-checks", response_model=list[FairCheckRow], responses=errors(401))
def list_checks(session: SessionDep, settings: SettingsDep, _: ManagerDep,
                stall_id: Annotated[str | None, Query(max_length=16)] = None,
                verdict: fair_checks.CheckVerdict | None = None,
                limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[FairCheckRow]:
    """The newest fair-scale checks first (a manager's)."""
    rows = fair_checks.recent(session, limit=limit, stall_id=stall_id, verdict=verdict)
    return [FairCheckRow.model_validate(r).model_copy(
        update={"checked_at": r.checked_at.astimezone(settings.tz)}) for r in rows]


class ComplaintRates(BaseModel):
    start: dt.date
    end: dt.date
    rows: list[fair_checks.ComplaintRate]


@router.get("/stats/complaints", response_model=ComplaintRates, responses=errors(401))
def complaints(session: SessionDep, settings: SettingsDep, _: ManagerDep,
               start: Annotated[dt.date | None, Query(description="first market day; default end "
                                                      "minus 29 days")] = None,
               end: Annotated[dt.date | None, Query(description="last market day; default today")] = None,
               ) -> ComplaintRates:
    """The complaint (short-weight) rate per stall: fair-scale checks of its genuine receipts,
    how many were short beyond the legal tolerance, in % of checks and per 1,000 receipts
    sold (a manager's; at most 92 days)."""
    with refused_as_422():
        last = stats.check_day(end, "end") if end else stats.local_today(settings.tz)
        first, last = stats.check_range(start or last - dt.timedelta(days=29), last, stats.MAX_STATS_DAYS)
    return ComplaintRates(start=first, end=last, rows=fair_checks.complaint_rates(session, first, last))


add_token_routes(router, "/fair-scale/token", FAIR_SCALE, "the fair scale",
                 "put it in the fair scale's config, [server] token")
