"""Scale audit logs: each stall uploads its own; managers read them."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from server import scale_events
from server.auth import Credentials, ManagerDep, stall_for_token
from server.deps import SessionDep, SettingsDep, write_lock
from server.fields import STALL_PATTERN
from server.guard import GuardedRoute, body_limit, errors

router = APIRouter(prefix="/api/v1/scale-events", tags=["scale events"], route_class=GuardedRoute)

#: 500 entries with a 2000-character detail written as JSON escapes would be 6 MB; the stall
#: sends 100 short ones (about 300 bytes each) at a time.
BODY_LIMIT = 1024 * 1024


class EntriesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Each entry is checked on its own, so one bad line never sinks the others.
    entries: list[Any] = Field(min_length=1, max_length=scale_events.MAX_BATCH,
                               description="audit log lines as the scale wrote them: seq, t, event, "
                               "counter, detail, prev, hash")


class UploadOut(BaseModel):
    accepted: int
    duplicates: int
    refused: int
    results: list[scale_events.Outcome]


class ScaleEventOut(BaseModel):
    stall_id: str
    seq: int
    counter: int
    kind: str
    detail: str
    at: str
    flags: list[str]
    received_at: str


class UploadStatusOut(BaseModel):
    stall_id: str
    name: str
    uploads: bool
    last_seq: int | None
    last_counter: int | None
    last_at: str | None
    last_received_at: str | None


@router.post("", response_model=UploadOut, openapi_extra=body_limit(BODY_LIMIT),
             responses=errors(400, 401, 413))
def upload(body: EntriesIn, session: SessionDep, cred: Credentials, settings: SettingsDep,
           request: Request) -> UploadOut:
    """A stall's audit log entries: each answered ``accepted``, ``duplicate`` or ``refused`` (and
    why), with the flags it was stored with."""
    with write_lock(request):
        stall = stall_for_token(session, cred)
        results = scale_events.ingest(session, stall, body.entries, settings.tz)
        session.commit()
    return UploadOut(accepted=sum(r.status == "accepted" for r in results),
                     duplicates=sum(r.status == "duplicate" for r in results),
                     refused=sum(r.status == "refused" for r in results), results=results)


def _local(t: dt.datetime | None, settings: Any) -> str | None:
    return None if t is None else t.astimezone(settings.tz).isoformat()


@router.get("", response_model=list[ScaleEventOut], responses=errors(401))
def list_events(
    session: SessionDep, settings: SettingsDep, _: ManagerDep,
    stall_id: Annotated[str | None, Query(pattern=STALL_PATTERN)] = None,
    kind: Annotated[str | None, Query(pattern=r"^[a-z][a-z_]{0,15}$")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> list[ScaleEventOut]:
    """Stored audit entries, the latest first; times in market time."""
    rows = scale_events.list_events(session, stall_id=stall_id, kind=kind, limit=limit, offset=offset)
    return [ScaleEventOut(stall_id=r.stall_id, seq=r.seq, counter=r.counter, kind=r.kind, detail=r.detail,
                          at=r.at.astimezone(settings.tz).isoformat(), flags=r.flags,
                          received_at=r.received_at.astimezone(settings.tz).isoformat()) for r in rows]


@router.get("/stalls", response_model=list[UploadStatusOut], responses=errors(401))
def upload_status(session: SessionDep, settings: SettingsDep, _: ManagerDep) -> list[UploadStatusOut]:
    """Which stalls' scales upload their audit logs, and their last entry."""
    return [UploadStatusOut(**{**r, "last_at": _local(r["last_at"], settings),
                               "last_received_at": _local(r["last_received_at"], settings)})
            for r in scale_events.upload_status(session)]
