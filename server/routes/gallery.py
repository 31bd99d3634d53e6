"""Shared taught items: a stall uploads its own and reads the others' of its model; a manager
lists and withdraws them (``server.gallery``, ``edge.gallery_share``)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request, Response, status
from pydantic import BaseModel

from edge.gallery_share import (
    BODY_LIMIT,
    MODEL_PATTERN,
    SharedItemDoc,
    SharedItemsDoc,
    ShareResult,
    WithdrawalDoc,
    WithdrawalResult,
)
from server import db, gallery
from server.auth import Credentials, ManagerDep, stall_for_token
from server.deps import SessionDep, SettingsDep, write_lock
from server.feed import etag_matches
from server.guard import GuardedRoute, body_limit, errors
from server.refusals import as_http
from server.settings import Settings

router = APIRouter(prefix="/api/v1/gallery", tags=["gallery"], route_class=GuardedRoute)

NO_CACHE = "private, no-cache"


class SharedItemRow(BaseModel):
    """A shared item as the manager lists it (without its exemplars)."""

    id: int
    stall_id: str
    label: str
    plu: str | None
    name: str | None
    model: str
    count: int
    taught_at: str
    received_at: str
    withdrawn_at: str | None
    withdrawn_by: str | None


def _row(row: db.SharedItem, settings: Settings) -> SharedItemRow:
    def local(t: dt.datetime | None) -> str | None:
        return None if t is None else t.astimezone(settings.tz).isoformat()

    return SharedItemRow(id=row.id, stall_id=row.stall_id, label=row.label, plu=row.plu, name=row.name,
                         model=row.model, count=row.count, taught_at=local(row.taught_at) or "",
                         received_at=local(row.received_at) or "", withdrawn_at=local(row.withdrawn_at),
                         withdrawn_by=row.withdrawn_by)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ShareResult,
             openapi_extra=body_limit(BODY_LIMIT),
             responses={200: {"model": ShareResult, "description": "Stored before (same item_id)"},
                        **errors(400, 401, 403, 409, 413,
                                 e403="The item is another stall's, or its signature does not verify "
                                 "with this stall's registered key",
                                 e409="No signing key registered for this stall, or the model is "
                                 "known with another embedding size")})
def share_item(body: SharedItemDoc, session: SessionDep, cred: Credentials, request: Request,
               response: Response) -> ShareResult:
    """An item taught at this stall, signed with its receipt key, offered to the market's other
    stalls of the same model.  Idempotent by ``item_id``."""
    with write_lock(request), as_http():
        stall = stall_for_token(session, cred)
        stored = gallery.share(session, stall, body)
        session.commit()
    if stored.duplicate:
        response.status_code = status.HTTP_200_OK
    return ShareResult(id=stored.id, status="duplicate" if stored.duplicate else "accepted")


@router.post("/withdrawals", response_model=WithdrawalResult,
             responses=errors(400, 401, 404, e404="This stall shared no item of that item_id"))
def withdraw_own_item(body: WithdrawalDoc, session: SessionDep, cred: Credentials,
                      request: Request) -> WithdrawalResult:
    """The stall takes back an item it shared (the sale line whose tap taught it was voided):
    no longer handed out, and the stalls that imported it take it out, as after a manager's
    withdrawal.  Idempotent."""
    with write_lock(request), as_http():
        stall = stall_for_token(session, cred)
        row, now = gallery.withdraw_own(session, stall, body.item_id)
        session.commit()
    return WithdrawalResult(id=row.id, status="withdrawn" if now else "already")


@router.get("", response_model=SharedItemsDoc,
            responses={200: {"description": "The items; the ETag header names this answer",
                             "headers": {"ETag": {"schema": {"type": "string"}}}},
                       304: {"description": "Unchanged since the ETag sent as If-None-Match"},
                       **errors(401)})
def shared_items(
    session: SessionDep, cred: Credentials,
    model: Annotated[str, Query(pattern=MODEL_PATTERN, description="the stall's model (its recogniser's "
                                "embedding space)")],
    if_none_match: Annotated[str | None, Header(max_length=1024)] = None,
) -> Response:
    """The market's shared items of ``model`` (not this stall's, not withdrawn), each with its
    stall's registered signing key, and the ids of those withdrawn."""
    stall = stall_for_token(session, cred)
    tag = gallery.etag(session, stall.stall_id, model)
    if etag_matches(if_none_match, tag):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED,
                        headers={"ETag": tag, "Cache-Control": NO_CACHE})
    doc = gallery.shared_for(session, stall.stall_id, model)
    return Response(doc.model_dump_json(), media_type="application/json",
                    headers={"ETag": tag, "Cache-Control": NO_CACHE})


@router.get("/all", response_model=list[SharedItemRow], responses=errors(401))
def all_items(session: SessionDep, settings: SettingsDep, _: ManagerDep,
              limit: Annotated[int, Query(ge=1, le=500)] = 100,
              offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0) -> list[SharedItemRow]:
    """Every shared item, the newest first, withdrawn ones included (manager)."""
    return [_row(r, settings) for r in gallery.listing(session, limit, offset)]


@router.delete("/{shared_id}", response_model=SharedItemRow,
               responses=errors(401, 403, 404, e403="CSRF token missing (a signed-in manager)"))
def withdraw_item(shared_id: Annotated[int, Path(ge=1, le=2**31 - 1)], session: SessionDep,
                  actor: ManagerDep, settings: SettingsDep, request: Request) -> SharedItemRow:
    """Withdraw a shared item (manager): no longer handed out, and stalls that imported it take
    it out of their galleries.  Kept, marked withdrawn."""
    with write_lock(request), as_http():
        row = gallery.withdraw(session, actor, shared_id)
        session.commit()
    return _row(row, settings)
