"""Sale upload from the stalls (idempotent by sale_id) and sale look-up."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError

from server import db, stats
from server.auth import Credentials, stall_for_token
from server.deps import AdminDep, BrokerDep, SessionDep, SettingsDep, write_lock
from server.guard import SALES_BODY_LIMIT, GuardedRoute, body_limit, errors
from server.ingest import ingest_batch

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
def upload_sales(body: SalesBatch, session: SessionDep, cred: Credentials, settings: SettingsDep,
                 broker: BrokerDep, request: Request) -> BatchResult:
    with write_lock(request):
        stall = stall_for_token(session, cred)
        for attempt in (1, 2):
            try:
                results = ingest_batch(session, stall, body.sales, settings)
                session.commit()
                break
            except IntegrityError:
                # Another request stored some of these sales between our look-up and our
                # insert (PostgreSQL, several workers): look again, they are duplicates now.
                session.rollback()
                if attempt == 2:
                    raise HTTPException(status.HTTP_409_CONFLICT,
                                        "concurrent upload of the same sales; send again") from None
    accepted = [r for r in results if r.status == "accepted"]
    if accepted and broker.subscribers:
        figures = stats.today(session, settings.tz)
        broker.publish({"type": "sales", "stall_id": stall.stall_id, "new": len(accepted),
                        "today": figures, "recent": stats.recent_sales(session, settings.tz)})
    return BatchResult(
        accepted=len(accepted),
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
