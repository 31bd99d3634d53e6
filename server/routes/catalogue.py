"""The market catalogue (``/api/v1/items``) and the stalls' prices with their history
(``/api/v1/prices``): thin routes over ``server.catalogue``."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel

from server import catalogue, db
from server.auth import ManagerDep, StallOrManagerDep
from server.catalogue import ItemCreate, ItemUpdate, PriceResult, PriceSet
from server.deps import SessionDep, SettingsDep, write_lock
from server.fields import PLU_PATTERN, STALL_PATTERN
from server.guard import GuardedRoute, errors
from server.refusals import as_http

router = APIRouter(prefix="/api/v1", route_class=GuardedRoute)

Plu = Annotated[str, Path(pattern=PLU_PATTERN, description="PLU code")]
StallId = Annotated[str, Path(pattern=STALL_PATTERN, description="stall id")]
#: No control characters in a filter: PostgreSQL refuses a NUL in a query's parameters.
PRINTABLE = r"^[^\x00-\x1f\x7f]+$"


class ItemOut(BaseModel):
    plu: str
    name: str
    name_en: str
    category: str
    price_unit: str
    picture: str | None
    origin: str | None
    label: str | None
    #: Whether the shipped recognizer knows ``label`` (None: no label or no model installed).
    label_known: bool | None
    cap_fen: int | None
    active: bool
    created_at: dt.datetime
    updated_at: dt.datetime


class ItemChange(BaseModel):
    changed: bool
    item: ItemOut


class PriceOut(BaseModel):
    stall_id: str
    plu: str
    name: str
    name_en: str
    price_unit: str
    unit_price_fen: int
    cap_fen: int | None
    updated_at: dt.datetime


class PriceSetOut(BaseModel):
    stall_id: str
    plu: str
    #: The price now held (null once removed).
    unit_price_fen: int | None
    #: False when the stall already had this price (or no price to remove): nothing recorded.
    changed: bool
    #: Over 1.5x the median of the other stalls' prices: a price_high alert was raised.
    price_high: bool


class ChangeOut(BaseModel):
    id: int
    at: dt.datetime
    plu: str
    stall_id: str | None
    kind: Literal["price", "cap"]
    #: The unit ``old_fen`` and ``new_fen`` are in.
    price_unit: str
    old_fen: int | None
    new_fen: int | None
    who: str
    why: str


class ChangePage(BaseModel):
    changes: list[ChangeOut]
    #: Pass as ``before`` for the next (older) page; null on the last page.
    next_before: int | None


@contextmanager
def answered(why_in: Literal["body", "query"] = "body") -> Iterator[None]:
    """A refusal as its status (``server.refusals.as_http``); a missing reason as FastAPI
    answers a bad field (422, ``detail: [{loc, msg, type}]``), the one 422 shape documented."""
    with as_http():
        try:
            yield
        except catalogue.ReasonMissing as exc:
            raise RequestValidationError([{"type": "value_error", "loc": (why_in, "why"),
                                           "msg": str(exc)}]) from exc


def _item_out(item: db.Item, tz: zoneinfo.ZoneInfo) -> ItemOut:
    return ItemOut(plu=item.plu, name=item.name, name_en=item.name_en, category=item.category,
                   price_unit=item.price_unit, picture=item.picture, origin=item.origin,
                   label=item.label, label_known=catalogue.label_known(item.label),
                   cap_fen=item.cap_fen, active=item.active,
                   created_at=item.created_at.astimezone(tz), updated_at=item.updated_at.astimezone(tz))


def _price_out(price: db.StallPrice, item: db.Item, tz: zoneinfo.ZoneInfo) -> PriceOut:
    return PriceOut(stall_id=price.stall_id, plu=price.plu, name=item.name, name_en=item.name_en,
                    price_unit=item.price_unit, unit_price_fen=price.unit_price_fen,
                    cap_fen=item.cap_fen, updated_at=price.updated_at.astimezone(tz))


def _set_out(result: PriceResult) -> PriceSetOut:
    return PriceSetOut(stall_id=result.stall_id, plu=result.plu,
                       unit_price_fen=result.unit_price_fen, changed=result.changed,
                       price_high=result.price_high)


# ---- items -----------------------------------------------------------------------------


@router.get("/items", tags=["items"], response_model=list[ItemOut])
def list_items(session: SessionDep, settings: SettingsDep,
               category: Annotated[str | None, Query(max_length=32, pattern=PRINTABLE)] = None,
               active: bool | None = None) -> list[ItemOut]:
    """The market catalogue (public), by PLU; filter by category and by active."""
    items = catalogue.list_items(session, category=category, active=active)
    return [_item_out(item, settings.tz) for item in items]


@router.get("/items/{plu}", tags=["items"], response_model=ItemOut, responses=errors(404))
def get_item(plu: Plu, session: SessionDep, settings: SettingsDep) -> ItemOut:
    with as_http():
        return _item_out(catalogue.get_item(session, plu), settings.tz)


@router.post("/items", tags=["items"], status_code=status.HTTP_201_CREATED, response_model=ItemOut,
             responses=errors(400, 401, 409, 413, e409="An item with this PLU exists"))
def create_item(body: ItemCreate, session: SessionDep, actor: ManagerDep, settings: SettingsDep,
                request: Request) -> ItemOut:
    """A manager adds an item; a cap given here is the first row of its price history."""
    with write_lock(request), answered():
        item = catalogue.create_item(session, actor, body)
        session.commit()
    return _item_out(item, settings.tz)


@router.patch("/items/{plu}", tags=["items"], response_model=ItemChange,
              responses=errors(400, 401, 404, 409, 413,
                               e409="Stall prices stand in the way: above a lowered cap, or in the "
                               "old price unit (see lower_prices, remove_prices)"))
def update_item(plu: Plu, body: ItemUpdate, session: SessionDep, actor: ManagerDep,
                settings: SettingsDep, request: Request) -> ItemChange:
    """A manager changes an item, its cap (with ``why``), or takes it off sale (``active``:
    false; items are never deleted)."""
    with write_lock(request), answered():
        changed = catalogue.update_item(session, actor, plu, body)
        session.commit()
        item = catalogue.get_item(session, plu)
    return ItemChange(changed=changed, item=_item_out(item, settings.tz))


# ---- prices ----------------------------------------------------------------------------


@router.get("/prices", tags=["prices"], response_model=list[PriceOut])
def list_prices(session: SessionDep, settings: SettingsDep,
                plu: Annotated[str | None, Query(pattern=PLU_PATTERN)] = None) -> list[PriceOut]:
    """Every stall's current price of every active item (明码标价: public)."""
    rows = catalogue.current_prices(session, plu=plu)
    return [_price_out(price, item, settings.tz) for price, item in rows]


@router.get("/prices/history", tags=["prices"], response_model=ChangePage)
def price_history(session: SessionDep, settings: SettingsDep,
                  plu: Annotated[str | None, Query(pattern=PLU_PATTERN)] = None,
                  stall_id: Annotated[str | None, Query(pattern=STALL_PATTERN)] = None,
                  kind: Literal["price", "cap"] | None = None,
                  before: Annotated[int | None, Query(ge=1, le=2**31 - 1,
                                                      description="a change's id: older ones")] = None,
                  limit: Annotated[int, Query(ge=1, le=500)] = 50) -> ChangePage:
    """Every price and cap change, newest first (public, like the prices themselves)."""
    rows = catalogue.history(session, plu=plu, stall_id=stall_id, kind=kind, before=before, limit=limit)
    changes = [ChangeOut(id=r.id, at=r.at.astimezone(settings.tz), plu=r.plu, stall_id=r.stall_id,
                         kind=r.kind, price_unit=r.price_unit, old_fen=r.old_fen, new_fen=r.new_fen,
                         who=r.who, why=r.why) for r in rows]
    return ChangePage(changes=changes, next_before=changes[-1].id if len(changes) == limit else None)


@router.get("/prices/{stall_id}", tags=["prices"], response_model=list[PriceOut],
            responses=errors(404))
def stall_prices(stall_id: StallId, session: SessionDep, settings: SettingsDep) -> list[PriceOut]:
    """One stall's current prices."""
    with as_http():
        rows = catalogue.current_prices(session, stall_id=stall_id)
    return [_price_out(price, item, settings.tz) for price, item in rows]


@router.put("/prices/{stall_id}/{plu}", tags=["prices"], response_model=PriceSetOut,
            responses=errors(400, 401, 403, 404, 409, 413, e403="The token is another stall's",
                             e409="Above the item's cap, or the item is deactivated"))
def set_price(stall_id: StallId, plu: Plu, body: PriceSet, session: SessionDep,
              actor: StallOrManagerDep, request: Request) -> PriceSetOut:
    """A stall sets its own price (its token), a manager any stall's (``why`` required);
    recorded in the price history unless it is the price the stall already has."""
    with write_lock(request), answered():
        result = catalogue.set_price(session, actor, stall_id, plu, body.unit_price_fen, body.why)
        session.commit()
    return _set_out(result)


@router.delete("/prices/{stall_id}/{plu}", tags=["prices"], response_model=PriceSetOut,
               responses=errors(401, 403, 404, e403="The token is another stall's"))
def remove_price(stall_id: StallId, plu: Plu, session: SessionDep, actor: StallOrManagerDep,
                 request: Request,
                 why: Annotated[catalogue.Why | None,
                                Query(description="required from a manager")] = None) -> PriceSetOut:
    """The stall no longer prices the item (recorded); a manager says why."""
    with write_lock(request), answered("query"):
        result = catalogue.remove_price(session, actor, stall_id, plu, why)
        session.commit()
    return _set_out(result)
