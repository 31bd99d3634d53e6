"""The manager pages of the market itself: items, prices and caps with their history, rapid
tests (农残快检) and specials (特价).

Every rule is the services' (``server/catalogue.py``, ``server/inspections.py``,
``server/promotions.py``), the same functions the JSON API calls; a page only turns form
fields into their models (prices typed in 元, times in the market's zone).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from server import catalogue, db, inspections, promotions
from server.auth import ManagerDep
from server.deps import SessionDep, SettingsDep, write_lock
from server.fields import PLU_PATTERN, STALL_PATTERN
from server.refusals import Refused
from server.routes.manage_common import (
    FormDep,
    PageRoute,
    done,
    fen,
    field,
    first_error,
    local_time,
    render,
    today,
)
from server.settings import Settings

router = APIRouter(include_in_schema=False, route_class=PageRoute)
T = TypeVar("T")

UNITS = ("kg", "500g", "piece")
#: Rows of price history a page shows at a time (``before`` pages further back).
HISTORY_ROWS = 50
#: The rapid-test page lists the batches blocked now among those failed in this many days
#: up to the day shown (a year of tests need not be ranked for it).
BLOCKED_DAYS = 14
ITEM_FIELDS = ("name", "name_en", "category", "origin", "label", "picture")


def _stalls(session: Session) -> list[tuple[str, str]]:
    return [(s, n) for s, n in session.execute(select(db.Stall.stall_id, db.Stall.name)
                                                   .order_by(db.Stall.stall_id))]


def _write(request: Request, session: Session, change: Callable[[], T]) -> T:
    """Run a change under the write lock and commit it (a refusal rolls it back)."""
    try:
        with write_lock(request):
            out = change()
            session.commit()
    except Refused:
        session.rollback()
        raise
    return out


# ---- items and caps -------------------------------------------------------------------------

def _items_page(request: Request, session: Session, error: str | None = None, status_code: int = 200,
                form: dict[str, str] | None = None) -> HTMLResponse:
    return render(request, "items.html", {"items": catalogue.list_items(session), "units": UNITS,
                                          "error": error, "form": form or {}}, status_code)


@router.get("/items", response_class=HTMLResponse)
def items_page(request: Request, session: SessionDep, _: ManagerDep) -> Response:
    return _items_page(request, session)


def _optional(fields: dict[str, str], *names: str) -> dict[str, str | None]:
    return {n: fields[n] or None for n in names}


@router.post("/items", response_class=HTMLResponse)
def item_create(request: Request, session: SessionDep, actor: ManagerDep, form: FormDep) -> Response:
    fields = {k: field(form, k) for k in ("plu", "price_unit", "cap", "why", *ITEM_FIELDS)}
    try:
        body = catalogue.ItemCreate.model_validate({
            "plu": fields["plu"], "name": fields["name"], "name_en": fields["name_en"],
            "category": fields["category"], "price_unit": fields["price_unit"],
            **_optional(fields, "origin", "label", "picture", "why"),
            "cap_fen": fen(fields["cap"], "限价 cap") if fields["cap"] else None})
        _write(request, session, lambda: catalogue.create_item(session, actor, body))
    except ValidationError as exc:
        return _items_page(request, session, first_error(exc), 422, fields)
    except Refused as exc:
        return _items_page(request, session, str(exc), exc.status, fields)
    return done(f"/manage/items/{body.plu}", "item_saved")


def _item_page(request: Request, session: Session, settings: Settings, plu: str,
               error: str | None = None, status_code: int = 200) -> HTMLResponse:
    try:
        item = catalogue.get_item(session, plu)
    except Refused as exc:
        raise HTTPException(exc.status, str(exc)) from exc
    return render(request, "item.html", {
        "item": item, "units": UNITS, "error": error, "stalls": _stalls(session),
        "prices": catalogue.current_prices(session, plu=plu),
        "history": catalogue.history(session, plu=plu, limit=HISTORY_ROWS)}, status_code)


@router.get("/items/{plu}", response_class=HTMLResponse)
def item_page(plu: str, request: Request, session: SessionDep, settings: SettingsDep,
              _: ManagerDep) -> Response:
    return _item_page(request, session, settings, plu)


def _item_change(request: Request, session: Session, settings: Settings, actor: Any, plu: str,
                 changes: dict[str, Any], ok: str) -> Response:
    try:
        body = catalogue.ItemUpdate.model_validate(changes)
        _write(request, session, lambda: catalogue.update_item(session, actor, plu, body))
    except ValidationError as exc:
        return _item_page(request, session, settings, plu, first_error(exc), 422)
    except Refused as exc:
        return _item_page(request, session, settings, plu, str(exc), exc.status)
    return done(f"/manage/items/{plu}", ok)


@router.post("/items/{plu}", response_class=HTMLResponse)
def item_update(plu: str, request: Request, session: SessionDep, settings: SettingsDep,
                actor: ManagerDep, form: FormDep) -> Response:
    fields = {k: field(form, k) for k in ("price_unit", "why", *ITEM_FIELDS)}
    changes: dict[str, Any] = {"name": fields["name"], "name_en": fields["name_en"],
                               "category": fields["category"], "price_unit": fields["price_unit"],
                               **_optional(fields, "origin", "label", "picture"),
                               "active": field(form, "active") == "on",
                               "remove_prices": field(form, "remove_prices") == "on"}
    if fields["why"]:
        changes["why"] = fields["why"]
    return _item_change(request, session, settings, actor, plu, changes, "item_saved")


@router.post("/items/{plu}/cap", response_class=HTMLResponse)
def item_cap(plu: str, request: Request, session: SessionDep, settings: SettingsDep,
             actor: ManagerDep, form: FormDep) -> Response:
    try:
        cap = fen(field(form, "cap"), "限价 cap") if field(form, "cap") else None
    except Refused as exc:
        return _item_page(request, session, settings, plu, str(exc), exc.status)
    changes: dict[str, Any] = {"cap_fen": cap, "lower_prices": field(form, "lower_prices") == "on"}
    if field(form, "why"):
        changes["why"] = field(form, "why")
    return _item_change(request, session, settings, actor, plu, changes, "cap_saved")


# ---- prices ---------------------------------------------------------------------------------

def _prices_page(request: Request, session: Session, stall_id: str | None, plu: str | None,
                 before: int | None, error: str | None = None, status_code: int = 200,
                 form: dict[str, str] | None = None) -> HTMLResponse:
    try:
        prices = catalogue.current_prices(session, stall_id=stall_id, plu=plu)
    except Refused:
        prices, stall_id = catalogue.current_prices(session, plu=plu), None
    history = catalogue.history(session, plu=plu, stall_id=stall_id, before=before, limit=HISTORY_ROWS)
    older = history[-1].id if len(history) == HISTORY_ROWS else None
    return render(request, "prices.html", {
        "prices": prices, "history": history, "stalls": _stalls(session),
        "items": catalogue.list_items(session, active=True), "stall_id": stall_id, "plu": plu,
        "older": urlencode({k: v for k, v in (("stall_id", stall_id), ("plu", plu), ("before", older))
                            if v}) if older else None,
        "error": error, "form": form or {}}, status_code)


@router.get("/prices", response_class=HTMLResponse)
def prices_page(request: Request, session: SessionDep, _: ManagerDep,
                stall_id: Annotated[str, Query(max_length=16)] = "",
                plu: Annotated[str, Query(max_length=16)] = "",
                before: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None) -> Response:
    """One stall's prices (the first stall's unless another or an item is chosen): every
    stall's prices of every item would be tens of thousands of rows in a big market."""
    stall = stall_id if re.fullmatch(STALL_PATTERN, stall_id) else None
    item = plu if re.fullmatch(PLU_PATTERN, plu) else None
    if stall is None and item is None:
        stall = session.execute(select(db.Stall.stall_id).order_by(db.Stall.stall_id).limit(1)).scalar()
    return _prices_page(request, session, stall, item, before)


@router.post("/prices", response_class=HTMLResponse)
def price_set(request: Request, session: SessionDep, actor: ManagerDep, form: FormDep) -> Response:
    """Set (or with an empty price, remove) a stall's price; a manager always says why."""
    fields = {k: field(form, k) for k in ("stall_id", "plu", "price", "why", "back")}
    why = fields["why"] or None
    try:
        if fields["price"]:
            body = catalogue.PriceSet.model_validate({"unit_price_fen": fen(fields["price"], "单价 price"),
                                                      "why": why})
            _write(request, session, lambda: catalogue.set_price(
                session, actor, fields["stall_id"], fields["plu"], body.unit_price_fen, body.why))
        else:
            _write(request, session, lambda: catalogue.remove_price(
                session, actor, fields["stall_id"], fields["plu"], why))
    except ValidationError as exc:
        return _prices_page(request, session, None, None, None, first_error(exc), 422, fields)
    except Refused as exc:
        return _prices_page(request, session, None, None, None, str(exc), exc.status, fields)
    back = fields["back"] if fields["back"].startswith("/manage/") else "/manage/prices"
    return done(back, "price_saved")


# ---- rapid tests ----------------------------------------------------------------------------

def _inspections_page(request: Request, session: Session, settings: Settings, day: dt.date,
                      error: str | None = None, status_code: int = 200,
                      form: dict[str, str] | None = None) -> HTMLResponse:
    rows = inspections.list_inspections(session, day=day, limit=300)
    return render(request, "inspections.html", {
        "day": day, "summary": inspections.summary(session, settings.tz, day),
        "rows": inspections.describe(session, rows, settings.tz),
        "blocked": inspections.describe(session, inspections.blocked_batches(
            session, since=day - dt.timedelta(days=BLOCKED_DAYS - 1)), settings.tz),
        "blocked_days": BLOCKED_DAYS,
        "stalls": _stalls(session), "items": catalogue.list_items(session, active=True),
        "default_method": inspections.DEFAULT_METHOD,
        "now": dt.datetime.now(settings.tz).strftime("%Y-%m-%dT%H:%M"),
        "error": error, "form": form or {}}, status_code)


@router.get("/inspections", response_class=HTMLResponse)
def inspections_page(request: Request, session: SessionDep, settings: SettingsDep, _: ManagerDep,
                     day: dt.date | None = None) -> Response:
    return _inspections_page(request, session, settings, day or today(settings))


@router.post("/inspections", response_class=HTMLResponse)
def inspection_record(request: Request, session: SessionDep, settings: SettingsDep, actor: ManagerDep,
                      form: FormDep) -> Response:
    fields = {k: field(form, k) for k in ("stall_id", "plu", "batch_code", "method", "inhibition",
                                          "result", "tester", "tested_at", "note")}
    try:
        inhibition = float(fields["inhibition"]) if fields["inhibition"] else None
    except ValueError:
        return _inspections_page(request, session, settings, today(settings),
                                 "抑制率须为数字 — inhibition must be a number", 422, fields)
    try:
        body = inspections.InspectionIn.model_validate({
            "stall_id": fields["stall_id"], "plu": fields["plu"], "batch_code": fields["batch_code"],
            "method": fields["method"] or inspections.DEFAULT_METHOD,
            "inhibition_percent": inhibition, "result": fields["result"] or None,
            "tester": fields["tester"], "note": fields["note"] or None,
            "tested_at": local_time(fields["tested_at"], settings.tz, "检测时间 tested_at")})
        row = _write(request, session, lambda: inspections.record(session, actor, body, settings.tz))
    except ValidationError as exc:
        return _inspections_page(request, session, settings, today(settings), first_error(exc), 422,
                                 fields)
    except Refused as exc:
        return _inspections_page(request, session, settings, today(settings), str(exc), exc.status,
                                 fields)
    query = urlencode({"ok": "inspection_saved", "day": row.local_day.isoformat()})
    return RedirectResponse(f"/manage/inspections?{query}", status_code=303)


# ---- specials -------------------------------------------------------------------------------

When = Literal["current", "upcoming", "past", "all"]


def _specials_page(request: Request, session: Session, settings: Settings, when: When,
                   error: str | None = None, status_code: int = 200,
                   form: dict[str, str] | None = None) -> HTMLResponse:
    now = dt.datetime.now(settings.tz)
    return render(request, "specials.html", {
        "rows": promotions.list_promotions(session, settings.tz, when=when, limit=200),
        "when": when, "stalls": _stalls(session), "items": catalogue.list_items(session, active=True),
        "start": now.strftime("%Y-%m-%dT%H:%M"),
        "end": (now + dt.timedelta(hours=4)).strftime("%Y-%m-%dT%H:%M"),
        "error": error, "form": form or {}}, status_code)


@router.get("/specials", response_class=HTMLResponse)
def specials_page(request: Request, session: SessionDep, settings: SettingsDep, _: ManagerDep,
                  when: When = "current") -> Response:
    return _specials_page(request, session, settings, when)


@router.post("/specials", response_class=HTMLResponse)
def special_create(request: Request, session: SessionDep, settings: SettingsDep, actor: ManagerDep,
                   form: FormDep) -> Response:
    fields = {k: field(form, k) for k in ("stall_id", "plu", "price", "starts_at", "ends_at", "title")}
    try:
        body = promotions.PromotionIn.model_validate({
            "stall_id": fields["stall_id"], "plu": fields["plu"],
            "special_price_fen": fen(fields["price"], "特价 price"), "title": fields["title"] or None,
            "starts_at": local_time(fields["starts_at"], settings.tz, "开始 starts_at"),
            "ends_at": local_time(fields["ends_at"], settings.tz, "结束 ends_at")})
        row = _write(request, session, lambda: promotions.create(session, actor, body))
    except ValidationError as exc:
        return _specials_page(request, session, settings, "current", first_error(exc), 422, fields)
    except Refused as exc:
        return _specials_page(request, session, settings, "current", str(exc), exc.status, fields)
    when = "current" if promotions.state(row, dt.datetime.now(dt.UTC)) == "current" else "upcoming"
    return RedirectResponse(f"/manage/specials?{urlencode({'ok': 'special_saved', 'when': when})}",
                            status_code=303)


@router.post("/specials/{promotion_id}/cancel", response_class=HTMLResponse)
def special_cancel(promotion_id: int, request: Request, session: SessionDep, settings: SettingsDep,
                   actor: ManagerDep) -> Response:
    try:
        _write(request, session, lambda: promotions.cancel(session, actor, promotion_id))
    except Refused as exc:
        return _specials_page(request, session, settings, "current", str(exc), exc.status)
    return done("/manage/specials", "special_cancelled")
