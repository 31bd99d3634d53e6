"""What a route refuses before it reads a request body: too large (413), no valid token (401).

FastAPI reads and parses a request's whole body before it resolves the route's
dependencies, so a token checked by a dependency is checked only once the body
sits in memory, parsed: four 50 MB bodies without a token took the server to
396 MB.  ``GuardedRoute`` runs two checks first, in the route itself (so FastAPI's
own routing decides which route it is, and the answer is the usual JSON error):

1. the body's size: a declared ``Content-Length`` over the route's limit is refused
   at once, and a body sent without one (chunked) is counted as it is read and
   refused as soon as it passes the limit, so at most the limit is ever held;
2. the bearer token of a route that needs one (found in its dependencies:
   ``require_admin`` means the manager's, ``require_stall_or_manager`` a stall's or the
   manager's, ``require_fair_scale`` the fair scale's, ``Credentials`` alone a stall's), with the
   same checks as the handler's own (``server.auth``); for a manager's route, a
   ``/manage`` session cookie instead, with its CSRF token on anything that changes
   state (``server.sessions``: 403 without it).

FastAPI's ``max_body_size`` is not used: behind it Starlette replaces any answer
to a request whose ``Content-Length`` is over the limit with a plain-text 413.
"""

from __future__ import annotations

import http
import logging
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Request, Response, status
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.types import Message, Receive

from server.auth import (
    bearer,
    check_token,
    require_admin,
    require_fair_scale,
    require_manager,
    require_stall_or_manager,
)
from server.sessions import sign_in_by_cookie

logger = logging.getLogger(__name__)

#: Every route's limit unless it declares its own: a stall's registration or key is
#: well under 1 KiB.
DEFAULT_BODY_LIMIT = 64 * 1024
#: ``POST /api/v1/sales``: at most 500 sales of at most 100 lines.  A line as a stall
#: sends it (``edge.basket``: nine fields, a five-character Chinese and a 13-character
#: English name) is about 190 bytes of JSON, so 500 sales of 100 lines are 9.4 MB;
#: 16 MiB leaves room for longer names.  The stall's outbox sends 50 sales at a time.
SALES_BODY_LIMIT = 16 * 1024 * 1024
#: ``POST /api/v1/refunds``: 500 refunds with every field at its longest (a 200-character
#: reason written as JSON escapes) are about 900 KB.
REFUNDS_BODY_LIMIT = 1024 * 1024

#: The key a route's ``openapi_extra`` carries its limit under; it is also what the
#: OpenAPI document shows clients.
LIMIT_KEY = "x-max-body-bytes"

TokenKind = Literal["admin", "manager", "stall", "stall_or_manager", "fair_scale"]


class ErrorOut(BaseModel):
    """Every refusal but 422: ``{"detail": "why"}``."""

    detail: str


_DESCRIPTIONS = {
    400: "The body is not JSON",
    401: "No bearer token, or not a valid one",
    403: "The token is not allowed to do this",
    404: "No such resource",
    409: "Conflicts with what the server holds",
    413: "The body is larger than this route accepts (see x-max-body-bytes)",
}


def errors(*codes: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a route that may answer ``codes``; ``descriptions`` are
    keyed ``e409=...`` where a route says more than the usual phrase."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        why = descriptions.get(f"e{code}", _DESCRIPTIONS.get(code, http.HTTPStatus(code).phrase))
        out[code] = {"model": ErrorOut, "description": why}
    return out


def document_refusals(app: FastAPI) -> None:
    """Document every 422 as what it may be: FastAPI's list of field errors when the request
    does not fit its model, or one reason (:class:`ErrorOut`) when it fits but breaks a rule
    of the market (``server.refusals.Refused``: a special already over, a test in the future)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.setdefault("ErrorOut", ErrorOut.model_json_schema())
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                answer = operation.get("responses", {}).get("422")
                if answer is None:
                    continue
                body = answer.setdefault("content", {}).setdefault("application/json", {})
                kinds = [{"$ref": "#/components/schemas/ErrorOut"}]
                if "schema" in body:
                    kinds.insert(0, body["schema"])
                body["schema"] = {"anyOf": kinds}
                answer["description"] = "The request does not fit the model (a list of field errors), " \
                    "or breaks a rule of the market (one reason)"
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def body_limit(limit: int) -> dict[str, Any]:
    """A route's ``openapi_extra`` declaring a body limit other than the default."""
    return {LIMIT_KEY: limit}


def _calls(dependant: Dependant) -> Iterator[Any]:
    for dep in dependant.dependencies:
        yield dep.call
        yield from _calls(dep)


def token_kind(dependant: Dependant) -> TokenKind | None:
    """Which token a route checks, read from its dependencies."""
    calls = list(_calls(dependant))
    if require_stall_or_manager in calls:  # before the stall's: it reads the bearer too
        return "stall_or_manager"
    if require_fair_scale in calls:  # before the stall's: it reads the bearer too
        return "fair_scale"
    if require_admin in calls:
        return "admin"
    if require_manager in calls:
        return "manager"
    if bearer in calls:
        return "stall"
    return None


def _counting(receive: Receive, limit: int) -> Receive:
    """``receive`` that refuses the body once more than ``limit`` bytes have come."""
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _too_large(limit)
        return message

    return counted


def _too_large(limit: int) -> HTTPException:
    return HTTPException(status.HTTP_413_CONTENT_TOO_LARGE,
                         f"request body over {limit} bytes; send less at a time")


def _declared_length(request: Request) -> int | None:
    try:
        return int(request.headers["content-length"])
    except (KeyError, ValueError):
        return None  # none (chunked), or malformed: the server's HTTP parser refuses that


class GuardedRoute(APIRoute):
    """An ``APIRoute`` that checks body size and token before it reads the body."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        if self.body_field is not None:  # tell clients the limit of each route that takes a body
            self.openapi_extra = {LIMIT_KEY: DEFAULT_BODY_LIMIT, **(self.openapi_extra or {})}

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()
        limit = int((self.openapi_extra or {}).get(LIMIT_KEY, DEFAULT_BODY_LIMIT))
        kind = token_kind(self.dependant)

        async def guarded(request: Request) -> Response:
            length = _declared_length(request)
            if length is not None and length > limit:
                raise _too_large(limit)
            counted = Request(request.scope, _counting(request.receive, limit))
            if kind in ("manager", "stall_or_manager"):
                # A manager signed in to /manage: the session cookie, and its CSRF token on
                # what changes state (server.sessions); a bearer token goes on as before.
                await sign_in_by_cookie(counted)
            if kind is not None:
                await check_token(counted, kind)
            return await handle(counted)

        return guarded
