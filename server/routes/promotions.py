"""Specials (特价): managers create and cancel them; the list is public (big screen, stalls)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, status
from pydantic import BaseModel

from server import promotions
from server.auth import ManagerDep
from server.deps import SessionDep, SettingsDep, write_lock
from server.fields import PLU_PATTERN, STALL_PATTERN
from server.guard import GuardedRoute, errors
from server.refusals import as_http

router = APIRouter(prefix="/api/v1/promotions", tags=["promotions"], route_class=GuardedRoute)


class PromotionOut(BaseModel):
    id: int
    stall_id: str
    stall_name: str
    plu: str
    name: str
    name_en: str
    price_unit: str
    special_price_fen: int
    #: The stall's regular price now (null if it has none any more).
    regular_price_fen: int | None
    starts_at: str
    ends_at: str
    title: str | None
    state: str  # upcoming, current, over, cancelled
    created_by: str
    created_at: str
    cancelled_at: str | None
    cancelled_by: str | None




@router.post("", status_code=status.HTTP_201_CREATED, response_model=PromotionOut,
             responses=errors(400, 401, 404, 409, 413, e404="No such stall, or no such item",
                              e409="Not below the stall's regular price, above the cap, the item "
                              "inactive, or overlapping another special of the item at the stall"))
def create_promotion(body: promotions.PromotionIn, session: SessionDep, actor: ManagerDep,
                     settings: SettingsDep, request: Request) -> PromotionOut:
    """A special of one item at one stall, inside its window only."""
    with write_lock(request), as_http():
        row = promotions.create(session, actor, body)
        session.commit()
    return PromotionOut(**promotions.describe(session, row, settings.tz))


@router.post("/{promotion_id}/cancel", response_model=PromotionOut,
             responses=errors(401, 404, 409, e409="Cancelled or over already"))
def cancel_promotion(promotion_id: Annotated[int, Path(ge=1, le=2**31 - 1)], session: SessionDep,
                     actor: ManagerDep, settings: SettingsDep, request: Request) -> PromotionOut:
    """Cancel a special that has not ended; it is kept, marked cancelled (never deleted)."""
    with write_lock(request), as_http():
        row = promotions.cancel(session, actor, promotion_id)
        session.commit()
    return PromotionOut(**promotions.describe(session, row, settings.tz))


@router.get("", response_model=list[PromotionOut])
def list_promotions(
    session: SessionDep, settings: SettingsDep,
    when: Annotated[promotions.When, Query(description="current (now inside the window), upcoming, "
                                           "past (over or cancelled) or all")] = "current",
    stall_id: Annotated[str | None, Query(pattern=STALL_PATTERN)] = None,
    plu: Annotated[str | None, Query(pattern=PLU_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> list[PromotionOut]:
    """Specials with item, stall and the stall's regular price; times in market time."""
    rows = promotions.list_promotions(session, settings.tz, when=when, stall_id=stall_id, plu=plu,
                                      limit=limit, offset=offset)
    return [PromotionOut(**r) for r in rows]
