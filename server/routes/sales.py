"""Sale upload from the stalls (idempotent by sale_id) and sale look-up."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from server import db
from server.auth import Credentials, stall_for_token
from server.deps import AdminDep, SessionDep
from server.groupcommit import ConcurrentUpload, GroupCommit
from server.guard import SALES_BODY_LIMIT, GuardedRoute, body_limit, errors
from server.ingest import prepare
from server.live import LiveFigures
from server.settings import Settings

router = APIRouter(prefix="/api/v1/sales", tags=["sales"], route_class=GuardedRoute)

MAX_BATCH = 500


class SalesBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Each sale is validated on its own so one bad sale never sinks the batch.
    sales: list[Any] = Field(min_length=1, max_length=MAX_BATCH)


class SaleResult(BaseModel):
    sale_id: str | None
    status: str
    reason: str | None
    flags: list[str]


class BatchResult(BaseModel):
    accepted: int
    duplicates: int
    refused: int
    results: list[SaleResult]


@router.post("", response_model=BatchResult, openapi_extra=body_limit(SALES_BODY_LIMIT),
             responses=errors(400, 401, 409, 413, e409="Another upload stored the same sales at once; "
                              "send again"))
async def upload_sales(body: SalesBatch, cred: Credentials, request: Request) -> Response:
    # All that blocks in one trip to a worker thread (FastAPI makes one for each sync
    # dependency and one for a sync handler); the answer is serialised once, by its model.
    result = await run_in_threadpool(_upload, request, cred, body.sales)
    return Response(result.model_dump_json(), media_type="application/json")


def _upload(request: Request, cred: HTTPAuthorizationCredentials | None, sales: list[Any]) -> BatchResult:
    settings: Settings = request.app.state.settings
    with request.app.state.sessionmaker() as session:
        # The request guard found the stall by its token before the body was read
        # (server.auth.check_token); look it up only if it did not.
        stall = getattr(request.state, "stall", None) or stall_for_token(session, cred)
        # Checked and verified here, in parallel with other uploads (this session only
        # reads); stored with whatever else arrives meanwhile, in one transaction
        # (server.groupcommit), answered once that is committed.
        prepared = prepare(session, stall, sales, settings)
    group: GroupCommit = request.app.state.group_commit
    try:
        results = group.store(stall, prepared)
    except ConcurrentUpload as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    accepted = sum(r.status == "accepted" for r in results)
    if accepted:
        live: LiveFigures = request.app.state.live
        live.stored(stall.stall_id, accepted)  # the big screen's figures (server.live)
    return BatchResult(
        accepted=accepted,
        duplicates=sum(r.status == "duplicate" for r in results),
        refused=sum(r.status == "refused" for r in results),
        results=[SaleResult(**r.to_json()) for r in results],
    )


@router.get("/{sale_id}", responses=errors(401, 404))
def get_sale(sale_id: str, session: SessionDep, _: AdminDep) -> dict[str, Any]:
    row = session.get(db.Sale, sale_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no sale {sale_id}")
    return {"sale": row.raw, "verified": row.verified, "flags": row.flags,
            "received_at": row.received_at.isoformat()}
