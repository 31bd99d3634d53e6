"""Rapid tests (农残快检): managers record them; the results are public (big screen, trace pages)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Query, Request, status
from pydantic import BaseModel

from server import inspections, stats
from server.auth import ManagerDep
from server.deps import SessionDep, SettingsDep, write_lock
from server.fields import BATCH_PATTERN, STALL_PATTERN
from server.guard import GuardedRoute, errors
from server.refusals import as_http

router = APIRouter(prefix="/api/v1/inspections", tags=["inspections"], route_class=GuardedRoute)


class InspectionOut(BaseModel):
    id: int
    batch_code: str
    plu: str
    name: str | None
    name_en: str | None
    stall_id: str
    stall_name: str | None
    method: str
    inhibition_percent: float | None
    result: inspections.Result
    tester: str
    tested_at: str
    local_day: str
    recorded_by: str
    recorded_at: str
    note: str | None
    #: The latest test of its batch at its stall, and a fail: the batch is blocked for sale now.
    blocking: bool


class SummaryOut(BaseModel):
    day: str
    tests: int
    batches: int
    passed: int
    failed: int
    pass_rate_percent: float | None
    failed_batches: list[InspectionOut]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=InspectionOut,
             responses=errors(400, 401, 404, 409, 413, e404="No such stall, or no such item in the "
                              "catalogue", e409="The batch was tested before as another item"))
def record_inspection(body: inspections.InspectionIn, session: SessionDep, actor: ManagerDep,
                      settings: SettingsDep, request: Request) -> InspectionOut:
    """Record one test.  A fail blocks the batch at its stall until a later test passes (the
    latest test decides; the history stays) and raises an ``inspection_failed`` alert."""
    with write_lock(request), as_http():
        row = inspections.record(session, actor, body, settings.tz)
        session.commit()
    return InspectionOut(**inspections.describe(session, [row], settings.tz)[0])


@router.get("", response_model=list[InspectionOut])
def list_inspections(
    session: SessionDep, settings: SettingsDep,
    day: Annotated[dt.date | None, Query(description="market day (in the market's zone)")] = None,
    stall_id: Annotated[str | None, Query(pattern=STALL_PATTERN)] = None,
    batch_code: Annotated[str | None, Query(pattern=BATCH_PATTERN)] = None,
    result: inspections.Result | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> list[InspectionOut]:
    """Tests, the latest first."""
    rows = inspections.list_inspections(session, day=day, stall_id=stall_id, batch_code=batch_code,
                                        result=result, limit=limit, offset=offset)
    return [InspectionOut(**d) for d in inspections.describe(session, rows, settings.tz)]


@router.get("/summary", response_model=SummaryOut)
def summary(session: SessionDep, settings: SettingsDep,
            day: Annotated[dt.date | None, Query(description="market day; today by default")] = None,
            ) -> SummaryOut:
    """A market day's results: batches tested, passed, failed (each batch by its latest test
    that day), the pass rate in %, and the failed batches."""
    return SummaryOut(**inspections.summary(session, settings.tz, day or stats.local_today(settings.tz)))


@router.get("/blocked", response_model=list[InspectionOut])
def blocked(session: SessionDep, settings: SettingsDep,
            stall_id: Annotated[str | None, Query(pattern=STALL_PATTERN)] = None) -> list[InspectionOut]:
    """The batches blocked for sale now: each one's failed latest test."""
    rows = inspections.blocked_batches(session, stall_id)
    return [InspectionOut(**d) for d in inspections.describe(session, rows, settings.tz)]
