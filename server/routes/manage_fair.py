"""The manager's fair-scale page ``/manage/fair-scale``: the complaint (short-weight) rate per
stall, the newest checks, and the fair scale's token (``server.fair_checks``)."""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse

from server import fair_checks
from server.auth import ManagerDep
from server.deps import SessionDep, SettingsDep, write_lock
from server.meta_token import FAIR_SCALE
from server.routes.manage_common import PageRoute, render, today

router = APIRouter(include_in_schema=False, route_class=PageRoute)

#: The complaint rates' window, in market days up to today.
RATE_DAYS = 30


@router.get("/fair-scale", response_class=HTMLResponse)
def fair_scale_page(request: Request, session: SessionDep, settings: SettingsDep, _: ManagerDep,
                    verdict: str | None = None) -> Response:
    verdict = verdict if verdict in ("ok", "short", "refunded", "forged", "unverified") else None
    end = today(settings)
    start = end - dt.timedelta(days=RATE_DAYS - 1)
    return render(request, "fair_scale.html", {
        "rates": fair_checks.complaint_rates(session, start, end), "start": start, "end": end,
        "checks": fair_checks.recent(session, limit=200, verdict=verdict), "verdict": verdict,
        "token": FAIR_SCALE.info(session)})


@router.post("/fair-scale/token", response_class=HTMLResponse)
def fair_scale_token(request: Request, session: SessionDep, actor: ManagerDep) -> Response:
    with write_lock(request):
        issued = FAIR_SCALE.issue(session, actor)
        session.commit()
    return render(request, "fair_scale_token.html", {"token": issued.token})
