"""Manager accounts and alerts over JSON (the ``/manage`` pages call the same functions)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from server import alerts, db, managers
from server.auth import ManagerDep
from server.deps import SessionDep, SettingsDep, write_lock
from server.guard import GuardedRoute, errors
from server.refusals import as_http

router = APIRouter(prefix="/api/v1", tags=["managers"], route_class=GuardedRoute)

USERNAME = Field(pattern=managers.USERNAME_RE.pattern)
PASSWORD = Field(min_length=managers.PASSWORD_MIN, max_length=managers.PASSWORD_MAX)
AlertId = Annotated[int, Path(ge=1, le=2**31 - 1)]
FORBIDDEN = ("The admin token once a manager exists (it only creates the first), a manager "
             "disabling their own account, a wrong current password, or no CSRF token")


class ManagerCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = USERNAME
    display_name: str = Field(min_length=1, max_length=64)
    password: str = PASSWORD


class ManagerOut(BaseModel):
    username: str
    display_name: str
    disabled: bool
    created_at: str
    created_by: str


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    current_password: str | None = Field(None, max_length=managers.PASSWORD_MAX * 4,
                                         description="required to change your own password")
    new_password: str = PASSWORD


class AlertOut(BaseModel):
    id: int
    kind: str
    key: str
    stall_id: str | None
    plu: str | None
    detail: str
    raised_at: str
    acknowledged_at: str | None
    acknowledged_by: str | None


def _manager_out(m: db.Manager, tz: dt.tzinfo) -> ManagerOut:
    return ManagerOut(username=m.username, display_name=m.display_name, disabled=m.disabled,
                      created_at=m.created_at.astimezone(tz).isoformat(), created_by=m.created_by)


def alert_out(a: db.Alert, tz: dt.tzinfo) -> AlertOut:
    return AlertOut(id=a.id, kind=a.kind, key=a.key, stall_id=a.stall_id, plu=a.plu, detail=a.detail,
                    raised_at=a.raised_at.astimezone(tz).isoformat(),
                    acknowledged_at=a.acknowledged_at.astimezone(tz).isoformat()
                    if a.acknowledged_at else None, acknowledged_by=a.acknowledged_by)


@router.post("/managers", status_code=status.HTTP_201_CREATED, response_model=ManagerOut,
             responses=errors(400, 401, 403, 409, 413, e403=FORBIDDEN,
                              e409="A manager with this username exists"))
def create_manager(body: ManagerCreate, session: SessionDep, actor: ManagerDep, settings: SettingsDep,
                   request: Request) -> ManagerOut:
    """Add a manager account: with the admin token while none exists (the first), then only
    by a signed-in manager."""
    with write_lock(request), as_http():
        manager = managers.create(session, actor, body.username, body.display_name, body.password)
        session.commit()
    return _manager_out(manager, settings.tz)


@router.get("/managers", response_model=list[ManagerOut], responses=errors(401))
def list_managers(session: SessionDep, _: ManagerDep, settings: SettingsDep) -> list[ManagerOut]:
    return [_manager_out(m, settings.tz) for m in managers.list_all(session)]


def _set_disabled(username: str, disabled: bool, session: SessionDep, actor: ManagerDep,
                  settings: SettingsDep, request: Request) -> ManagerOut:
    with write_lock(request), as_http():
        manager = managers.set_disabled(session, actor, username, disabled)
        session.commit()
    return _manager_out(manager, settings.tz)


@router.post("/managers/{username}/disable", response_model=ManagerOut,
             responses=errors(401, 403, 404, e403=FORBIDDEN))
def disable_manager(username: str, session: SessionDep, actor: ManagerDep, settings: SettingsDep,
                    request: Request) -> ManagerOut:
    """Disable an account (never deleted): its sessions end at their next request."""
    return _set_disabled(username, True, session, actor, settings, request)


@router.post("/managers/{username}/enable", response_model=ManagerOut,
             responses=errors(401, 403, 404, e403=FORBIDDEN))
def enable_manager(username: str, session: SessionDep, actor: ManagerDep, settings: SettingsDep,
                   request: Request) -> ManagerOut:
    return _set_disabled(username, False, session, actor, settings, request)


@router.put("/managers/{username}/password", status_code=status.HTTP_204_NO_CONTENT,
            responses=errors(400, 401, 403, 404, 413, e403=FORBIDDEN))
def change_password(username: str, body: PasswordChange, session: SessionDep, actor: ManagerDep,
                    request: Request) -> Response:
    """Your own password (with the current one), or another manager's (a reset); every
    session of that account ends."""
    with write_lock(request), as_http():
        managers.change_password(session, actor, username, body.new_password, body.current_password)
        session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/alerts", response_model=list[AlertOut], responses=errors(401))
def list_alerts(session: SessionDep, _: ManagerDep, settings: SettingsDep,
                open_only: Annotated[bool, Query(alias="open")] = True,
                kind: Annotated[str | None, Query(max_length=24)] = None,
                limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> list[AlertOut]:
    """The newest alerts first; ``open=false`` includes acknowledged ones."""
    return [alert_out(a, settings.tz)
            for a in alerts.listing(session, open_only=open_only, kind=kind, limit=limit)]


@router.post("/alerts/{alert_id}/ack", response_model=AlertOut,
             responses=errors(401, 403, 404, e403="CSRF token missing (a signed-in manager)"))
def acknowledge_alert(alert_id: AlertId, session: SessionDep, actor: ManagerDep,
                      settings: SettingsDep, request: Request) -> AlertOut:
    """Mark an alert seen; a second acknowledgement keeps the first's time and name."""
    with write_lock(request), as_http():
        alert = alerts.acknowledge(session, actor, alert_id)
        session.commit()
    return alert_out(alert, settings.tz)
