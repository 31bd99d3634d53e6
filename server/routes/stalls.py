"""Stalls: registration by the manager, key registration by the stall."""

from __future__ import annotations

import base64
import binascii

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.json_schema import JsonDict
from sqlalchemy import select

from edge import TraceCodeError
from edge.tracecode import stall_number
from server import db, stalls
from server.auth import Credentials, ManagerDep, stall_for_token
from server.deps import SessionDep, write_lock
from server.guard import GuardedRoute, errors
from server.refusals import as_http

router = APIRouter(prefix="/api/v1/stalls", tags=["stalls"], route_class=GuardedRoute)

#: What ``edge.integrity.public_key_b64`` writes: 32 bytes as urlsafe base64, unpadded or
#: padded; shown in the OpenAPI document (``_check_key`` says what is wrong with a bad one).
KEY_SCHEMA: JsonDict = {"pattern": "^[A-Za-z0-9_-]{43}=?$"}


def _check_key(v: str | None) -> str | None:
    if v is None:
        return v
    try:
        raw = base64.urlsafe_b64decode(v + "=" * (-len(v) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("public_key is not urlsafe base64") from exc
    if len(raw) != 32:
        raise ValueError("public_key must be a raw 32-byte Ed25519 key")
    return v


class StallCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stall_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,16}$")
    name: str = Field(min_length=1, max_length=64)
    public_key: str | None = Field(None, description="urlsafe base64 Ed25519 public key",
                                   json_schema_extra=KEY_SCHEMA)

    _key = field_validator("public_key")(_check_key)

    @field_validator("stall_id")
    @classmethod
    def _has_trace_number(cls, v: str) -> str:
        # Every receipt's trace code carries the stall's number (S1..S999); a stall
        # whose id has none could register but never sell.
        try:
            stall_number(v)
        except TraceCodeError as exc:
            raise ValueError(str(exc)) from exc
        return v


class StallToken(BaseModel):
    stall_id: str
    token: str


class StallPublic(BaseModel):
    stall_id: str
    name: str
    has_key: bool


class StallKey(BaseModel):
    model_config = ConfigDict(extra="forbid")
    public_key: str = Field(description="urlsafe base64 Ed25519 public key", json_schema_extra=KEY_SCHEMA)

    _key = field_validator("public_key")(_check_key)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=StallToken,
             responses=errors(400, 401, 403, 409, 413, e403="CSRF token missing (a signed-in manager)",
                              e409="A stall with this id, or with its trace-code stall number, exists"))
def create_stall(body: StallCreate, session: SessionDep, actor: ManagerDep,
                 request: Request) -> StallToken:
    with write_lock(request), as_http():
        token = stalls.register(session, actor, body.stall_id, body.name, body.public_key)
        session.commit()
    return StallToken(stall_id=body.stall_id, token=token)


@router.get("", response_model=list[StallPublic])
def list_stalls(session: SessionDep) -> list[StallPublic]:
    rows = session.execute(select(db.Stall).order_by(db.Stall.stall_id)).scalars()
    return [StallPublic(stall_id=s.stall_id, name=s.name, has_key=bool(s.public_key)) for s in rows]


@router.put("/{stall_id}/key", response_model=StallPublic,
            responses=errors(400, 401, 403, 409, 413, e403="The token is another stall's",
                             e409="The stall has a different key; the manager must act"))
def set_key(stall_id: str, body: StallKey, session: SessionDep, cred: Credentials,
            request: Request) -> StallPublic:
    """A stall registers its receipt-signing key once; changing it needs the manager."""
    with write_lock(request):
        stall = stall_for_token(session, cred)
        if stall.stall_id != stall_id:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "a stall may only set its own key")
        if stall.public_key and stall.public_key != body.public_key:
            raise HTTPException(status.HTTP_409_CONFLICT,
                                "stall already has a different key; ask the market manager")
        stall.public_key = body.public_key
        session.commit()
    return StallPublic(stall_id=stall.stall_id, name=stall.name, has_key=True)


@router.post("/{stall_id}/token", response_model=StallToken,
             responses=errors(401, 403, 404, e403="CSRF token missing (a signed-in manager)"))
def rotate_token(stall_id: str, session: SessionDep, actor: ManagerDep, request: Request) -> StallToken:
    """A new bearer token for the stall (shown only now); the old one stops working."""
    with write_lock(request), as_http():
        token = stalls.rotate_token(session, actor, stall_id)
        session.commit()
    return StallToken(stall_id=stall_id, token=token)


@router.delete("/{stall_id}/key", response_model=StallPublic,
               responses=errors(401, 403, 404, e403="CSRF token missing (a signed-in manager)"))
def clear_key(stall_id: str, session: SessionDep, actor: ManagerDep, request: Request) -> StallPublic:
    """Forget the stall's signing key, so the stall registers its new one (a replaced scale
    or a lost key file): until then its sales are stored flagged ``no_stall_key``."""
    with write_lock(request), as_http():
        stall = stalls.replace_key(session, actor, stall_id, None)
        session.commit()
    return StallPublic(stall_id=stall.stall_id, name=stall.name, has_key=False)
