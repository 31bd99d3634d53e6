"""The manager pages ``/manage``: server-rendered forms over the same service functions as
the JSON API (``server/stalls.py``, ``server/managers.py``, ``server/alerts.py``...).

Every page but the sign-in needs a signed-in manager: the request guard reads the
session cookie and, on a POST, its CSRF token (``server.sessions``); a page asked for
without a session redirects to the sign-in, a POST without the token is refused (403).
A form post that succeeds redirects (303) to its page with a short message code; one
that is refused shows the page again with the reason.  Jinja2 escapes everything it
shows; the Content-Security-Policy allows no inline script at all.
"""

from __future__ import annotations

import datetime as dt
import importlib
import logging
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import ValidationError
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool

from server import alerts, db, managers, sessions, stalls
from server.auth import ManagerDep
from server.deps import SessionDep, SettingsDep, write_lock
from server.refusals import Refused
from server.routes import manage_fair, manage_market
from server.routes.manage_common import (
    FormDep,
    PageRoute,
    done,
    field,
    first_error,
    render,
    texts,
    today,
)
from server.routes.stalls import StallCreate, StallKey
from server.settings import Settings

logger = logging.getLogger(__name__)

#: A stall seen within this many minutes counts as online on the dashboard.
ONLINE_MIN = 10

router = APIRouter(prefix="/manage", include_in_schema=False, route_class=PageRoute)
router.include_router(manage_market.router)  # items, prices and caps, rapid tests, specials
router.include_router(manage_fair.router)  # the fair scale's checks and complaint rates


# ---- sign-in --------------------------------------------------------------------------------

def _safe_next(target: str | None) -> str:
    """Only a path of these pages: never another site (an open redirect)."""
    if target and target.startswith("/manage") and not target.startswith("//") and "\\" not in target:
        return target
    return "/manage"


def _login_page(request: Request, next_path: str, error: str | None, status_code: int,
                no_manager: bool) -> HTMLResponse:
    nonce, token = sessions.sign_in_form(request)
    response = render(request, "login.html", {"next": next_path, "error": error,
                                               "no_manager": no_manager, "csrf": token}, status_code)
    sessions.set_sign_in_cookie(response, request, nonce)
    return response


def _manager_count(request: Request) -> int:
    with request.app.state.sessionmaker() as session:
        return managers.count(session)


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, next: str | None = None) -> Response:  # noqa: A002
    if await sessions.sign_in_by_cookie(request) is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    none = await run_in_threadpool(_manager_count, request) == 0
    return _login_page(request, _safe_next(next), None, 200, none)


def _sign_in(request: Request, username: str, password: str) -> db.Manager:
    address = request.client.host if request.client else "unknown"
    with write_lock(request), request.app.state.sessionmaker() as session:
        try:
            manager = managers.sign_in(session, username, password, address)
        finally:
            session.commit()  # a failure is counted even though the sign-in is refused
    return manager


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, form: FormDep) -> Response:
    t = texts(request)
    next_path = _safe_next(field(form, "next"))
    if not sessions.sign_in_form_ok(request, field(form, sessions.CSRF_FIELD)):
        return render(request, "error.html", {"message": t("form_expired"), "detail": ""}, 403)
    username = field(form, "username").lower()
    password = form.get("password")
    try:
        manager = await run_in_threadpool(_sign_in, request, username,
                                          password if isinstance(password, str) else "")
    except managers.SignInLocked as exc:
        locked = _login_page(request, next_path, t("locked", s=exc.retry_after_s), 429, False)
        locked.headers["Retry-After"] = str(exc.retry_after_s)
        return locked
    except managers.SignInFailed:
        return _login_page(request, next_path, t("bad_sign_in"), 401, False)
    response = RedirectResponse(next_path, status_code=303)
    sessions.set_session(response, request, manager)
    response.delete_cookie(sessions.SIGN_IN_COOKIE, path="/manage/login")
    return response


@router.post("/logout")
def logout(request: Request, _: ManagerDep) -> Response:
    response = RedirectResponse("/manage/login", status_code=303)
    sessions.clear_session(response, request)
    return response


# ---- dashboard ------------------------------------------------------------------------------

@router.get("", response_class=HTMLResponse)
def dashboard(request: Request, session: SessionDep, settings: SettingsDep, _: ManagerDep) -> Response:
    day = today(settings)
    sales, total = session.execute(select(
        func.coalesce(func.sum(db.StallDay.sales), 0), func.coalesce(func.sum(db.StallDay.total_fen), 0))
        .where(db.StallDay.local_day == day)).one()
    since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=ONLINE_MIN)
    registered = session.execute(select(func.count()).select_from(db.Stall)).scalar_one()
    online = set(session.execute(select(db.StallContact.stall_id).where(
        db.StallContact.last_seen_at >= since)).scalars())
    online |= {sid for sid, at in request.app.state.contacts.peek().items() if at >= since}
    counts = alerts.open_counts(session)
    ranking = session.execute(
        select(db.StallDay.stall_id, db.Stall.name, db.StallDay.sales, db.StallDay.total_fen)
        .join(db.Stall, db.Stall.stall_id == db.StallDay.stall_id)
        .where(db.StallDay.local_day == day)
        .order_by(db.StallDay.total_fen.desc(), db.StallDay.stall_id).limit(10)).all()
    return render(request, "dashboard.html", {
        "day": day, "sales": int(sales), "total": int(total), "registered": int(registered),
        "online": len(online), "online_min": ONLINE_MIN, "counts": counts,
        "open_total": sum(counts.values()), "ranking": ranking,
        "recent": alerts.listing(session, open_only=True, limit=5)})


# ---- stalls ---------------------------------------------------------------------------------

def _stalls_page(request: Request, session: SessionDep, settings: Settings,
                 error: str | None = None, status_code: int = 200,
                 form: dict[str, str] | None = None) -> HTMLResponse:
    rows = stalls.overview(session, today(settings))
    recent = request.app.state.contacts.peek()
    seen = {r.stall_id: max(filter(None, (r.last_seen_at, recent.get(r.stall_id))), default=None)
            for r in rows}
    return render(request, "stalls.html", {"rows": rows, "seen": seen, "error": error,
                                            "form": form or {}}, status_code)


@router.get("/stalls", response_class=HTMLResponse)
def stalls_page(request: Request, session: SessionDep, settings: SettingsDep, _: ManagerDep) -> Response:
    return _stalls_page(request, session, settings)


def _token_page(request: Request, stall_id: str, token: str) -> HTMLResponse:
    return render(request, "stall_token.html", {"stall_id": stall_id, "token": token})


@router.post("/stalls", response_class=HTMLResponse)
def stall_register(request: Request, session: SessionDep, settings: SettingsDep, actor: ManagerDep,
                   form: FormDep) -> Response:
    fields = {k: field(form, k) for k in ("stall_id", "name", "public_key")}
    try:
        body = StallCreate(stall_id=fields["stall_id"], name=fields["name"],
                           public_key=fields["public_key"] or None)
        with write_lock(request):
            token = stalls.register(session, actor, body.stall_id, body.name, body.public_key)
            session.commit()
    except ValidationError as exc:
        return _stalls_page(request, session, settings, first_error(exc), 422, fields)
    except Refused as exc:
        session.rollback()
        return _stalls_page(request, session, settings, str(exc), exc.status, fields)
    return _token_page(request, body.stall_id, token)


@router.post("/stalls/{stall_id}/token", response_class=HTMLResponse)
def stall_token(stall_id: str, request: Request, session: SessionDep, settings: SettingsDep,
                actor: ManagerDep) -> Response:
    try:
        with write_lock(request):
            token = stalls.rotate_token(session, actor, stall_id)
            session.commit()
    except Refused as exc:
        session.rollback()
        return _stalls_page(request, session, settings, str(exc), exc.status)
    return _token_page(request, stall_id, token)


@router.post("/stalls/{stall_id}/key", response_class=HTMLResponse)
def stall_key(stall_id: str, request: Request, session: SessionDep, settings: SettingsDep,
              actor: ManagerDep, form: FormDep) -> Response:
    key = field(form, "public_key")
    try:
        checked = StallKey(public_key=key).public_key if key else None
        with write_lock(request):
            stalls.replace_key(session, actor, stall_id, checked)
            session.commit()
    except ValidationError as exc:
        return _stalls_page(request, session, settings, first_error(exc), 422)
    except Refused as exc:
        session.rollback()
        return _stalls_page(request, session, settings, str(exc), exc.status)
    return done("/manage/stalls", "key_saved" if checked else "key_cleared")


# ---- alerts ---------------------------------------------------------------------------------

@router.get("/alerts", response_class=HTMLResponse)
def alerts_page(request: Request, session: SessionDep, _: ManagerDep, show: str = "open",
                kind: str | None = None) -> Response:
    kind = kind if kind in alerts.KINDS else None
    rows = alerts.listing(session, open_only=show != "all", kind=kind, limit=300)
    uploads = _scale_uploads(session)
    return render(request, "alerts.html", {"rows": rows, "show": show, "kind": kind,
                                            "kinds": alerts.KINDS, "uploads": uploads})


def _scale_uploads(session: SessionDep) -> list[dict[str, Any]]:
    """Which stalls upload their scale audit log, and how recently (``server.scale_events``)."""
    try:  # the scale audit upload is another part of the server, possibly not built yet
        scale_events = importlib.import_module("server.scale_events")
    except ImportError:
        return []
    status = getattr(scale_events, "upload_status", None)
    return list(status(session)) if status is not None else []


@router.post("/alerts/{alert_id}/ack")
def alert_ack(alert_id: int, request: Request, session: SessionDep, actor: ManagerDep) -> Response:
    show = request.query_params.get("show", "open")
    try:
        with write_lock(request):
            alerts.acknowledge(session, actor, alert_id)
            session.commit()
    except Refused as exc:
        raise HTTPException(exc.status, str(exc)) from exc
    return RedirectResponse(f"/manage/alerts?{urlencode({'ok': 'alert_acked', 'show': show})}",
                            status_code=303)


# ---- managers and the account ---------------------------------------------------------------

def _managers_page(request: Request, session: SessionDep, error: str | None = None,
                   status_code: int = 200, form: dict[str, str] | None = None) -> HTMLResponse:
    return render(request, "managers.html", {"rows": managers.list_all(session), "error": error,
                                              "form": form or {}}, status_code)


@router.get("/managers", response_class=HTMLResponse)
def managers_page(request: Request, session: SessionDep, _: ManagerDep) -> Response:
    return _managers_page(request, session)


@router.post("/managers", response_class=HTMLResponse)
def manager_add(request: Request, session: SessionDep, actor: ManagerDep, form: FormDep) -> Response:
    fields = {k: field(form, k) for k in ("username", "display_name")}
    password = form.get("password")
    try:
        with write_lock(request):
            managers.create(session, actor, fields["username"].lower(), fields["display_name"],
                            password if isinstance(password, str) else "")
            session.commit()
    except Refused as exc:
        session.rollback()
        return _managers_page(request, session, str(exc), exc.status, fields)
    return done("/manage/managers", "manager_added")


def _set_disabled(request: Request, session: SessionDep, actor: ManagerDep, username: str,
                  disabled: bool) -> Response:
    try:
        with write_lock(request):
            managers.set_disabled(session, actor, username, disabled)
            session.commit()
    except Refused as exc:
        session.rollback()
        return _managers_page(request, session, str(exc), exc.status)
    return done("/manage/managers", "manager_disabled" if disabled else "manager_enabled")


@router.post("/managers/{username}/disable", response_class=HTMLResponse)
def manager_disable(username: str, request: Request, session: SessionDep, actor: ManagerDep) -> Response:
    return _set_disabled(request, session, actor, username, True)


@router.post("/managers/{username}/enable", response_class=HTMLResponse)
def manager_enable(username: str, request: Request, session: SessionDep, actor: ManagerDep) -> Response:
    return _set_disabled(request, session, actor, username, False)


@router.get("/account", response_class=HTMLResponse)
def account_page(request: Request, _: ManagerDep) -> Response:
    return render(request, "account.html", {"error": None})


@router.post("/account/password", response_class=HTMLResponse)
def account_password(request: Request, session: SessionDep, actor: ManagerDep,
                     form: FormDep) -> Response:
    current, new = form.get("current_password"), form.get("new_password")
    try:
        with write_lock(request):
            manager = managers.change_password(session, actor, actor.name,
                                               new if isinstance(new, str) else "",
                                               current if isinstance(current, str) else "")
            session.commit()
    except Refused as exc:
        session.rollback()
        return render(request, "account.html", {"error": str(exc)}, exc.status)
    response = done("/manage/account", "password_changed")
    sessions.set_session(response, request, manager)  # this browser stays signed in
    return response


@router.post("/account/sessions", response_class=HTMLResponse)
def account_end_sessions(request: Request, session: SessionDep, actor: ManagerDep) -> Response:
    with write_lock(request):
        manager = managers.end_sessions(session, actor)
        session.commit()
    response = done("/manage/account", "sessions_ended")
    sessions.set_session(response, request, manager)
    return response
