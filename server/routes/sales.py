"""Sale upload from the stalls (idempotent by sale_id) and sale look-up."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.security.utils import get_authorization_scheme_param
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import State
from starlette.routing import BaseRoute, Match
from starlette.types import Message, Receive, Scope, Send

from server import db
from server.auth import Credentials, StallAuth, known_stall, stall_for_token, token_hash
from server.checkpool import CheckPool
from server.deps import AdminDep, SessionDep
from server.groupcommit import ConcurrentUpload
from server.guard import SALES_BODY_LIMIT, GuardedRoute, body_limit, errors
from server.ingest import number_owner
from server.live import LiveFigures
from server.writeprocess import WriteProcess

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
    # The request guard found the stall by its token before the body was read
    # (server.auth.check_token); look it up only if it did not.
    stall = getattr(request.state, "stall", None)
    if stall is None:
        with request.app.state.sessionmaker() as session:
            stall = stall_for_token(session, cred)
    return upload(request.app.state, stall, sales)


def upload(state: State, stall: StallAuth | db.Stall, sales: list[Any]) -> BatchResult:
    """Store a stall's sales; the answer (``POST /api/v1/sales``, either way in)."""
    with state.sessionmaker() as session:
        owner = number_owner(session, stall)  # the one read before the checks
    # Checked and verified here, in parallel with other uploads, or for a batch in a check
    # process (server.checkpool); stored with whatever else arrives meanwhile, in one
    # transaction (server.groupcommit; on PostgreSQL in a process of its own,
    # server.writeprocess), answered once that is committed.
    pool: CheckPool = state.check_pool
    prepared = pool.check(stall, sales, owner)
    group: WriteProcess = state.writer
    try:
        results = group.store(stall, prepared)
    except ConcurrentUpload as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    accepted = sum(r.status == "accepted" for r in results)
    if accepted:
        live: LiveFigures = state.live
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


#: Set in the scope of a request the shortcut handed on, so that it does not take it again.
_HANDED_ON = "wetmarket.upload_handed_on"


class UploadShortcut(BaseRoute):
    """``POST /api/v1/sales`` from a stall whose token this process knows, past FastAPI's layers.

    Under 8 stalls' single-sale uploads FastAPI's handling of this one route on the event
    loop (the guard, the body read and validated against :class:`SalesBatch`, the
    dependencies solved, the answer) held the GIL for 44 % of the server's samples, more
    than the upload's checks and storing (38 %); and the group commit's writer, the one
    serial stage, spent half its time waiting for the GIL (``docs/benchmarks.md``).

    This route is registered first and takes only the plain case, judged from the headers:
    ``Content-Type: application/json``, a ``Content-Length`` within :data:`SALES_BODY_LIMIT`,
    and a bearer token of a stall this process already knows (``server.auth.known_stall``, the
    guard's own check, which forgets at every change of a stall).  Its body must then be
    what the route takes, checked by the route's own model (:class:`SalesBatch`).  The sales
    go to :func:`upload`, the route's own work, and the answer is the route's.

    Everything else, and any body it cannot take, goes on to the documented route
    (:func:`upload_sales`) exactly as it came, the body replayed: every refusal (401, 413,
    422...) and the OpenAPI document stay FastAPI's.  ``tests/server/test_upload_shortcut.py``
    sends the same requests both ways and compares the answers.
    """

    path = path_format = "/api/v1/sales"
    include_in_schema = False

    def __init__(self) -> None:
        #: Uploads this route answered itself (tests read it).
        self.taken = 0

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["path"] != self.path or scope["type"] != "http" or scope["method"] != "POST" \
                or _HANDED_ON in scope:
            return Match.NONE, {}
        length = authorization = content_type = None
        for name, value in scope["headers"]:  # the first of each, as Starlette's Headers.get
            if name == b"content-length" and length is None:
                length = value
            elif name == b"authorization" and authorization is None:
                authorization = value
            elif name == b"content-type" and content_type is None:
                content_type = value
        if content_type != b"application/json" or length is None or authorization is None \
                or not length.isdigit() or int(length) > SALES_BODY_LIMIT:
            return Match.NONE, {}
        scheme, token = get_authorization_scheme_param(authorization.decode("latin-1"))
        if scheme.lower() != "bearer" or not token:
            return Match.NONE, {}
        # Its contact counted here, as the guard's check counts it before the body is read.
        stall = known_stall(scope["app"].state, token_hash(token))
        if stall is None:
            return Match.NONE, {}
        return Match.FULL, {"wetmarket.stall": stall}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        chunks = []
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the stall hung up: nothing was read, so nothing is stored
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        sales = _sales_of(body)
        if sales is None:
            await self._hand_on(scope, receive, send, body)
            return
        state: State = scope["app"].state
        stall: StallAuth = scope["wetmarket.stall"]
        self.taken += 1
        # HTTPException (409) goes up to the app's handler, as it does from the route
        # (test_a_group_the_database_refuses_twice_is_409_either_way).
        result = await run_in_threadpool(upload, state, stall, sales)
        await Response(result.model_dump_json(), media_type="application/json")(scope, receive, send)

    @staticmethod
    async def _hand_on(scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        handed = dict(scope)
        handed[_HANDED_ON] = True
        await scope["router"].app(handed, replay, send)


def _sales_of(body: bytes) -> list[Any] | None:
    """The sales of a body the route takes, read and validated as FastAPI reads and validates
    it (``json.loads``, then :class:`SalesBatch`), else None: the route will say why."""
    try:
        return SalesBatch.model_validate(json.loads(body)).sales
    except Exception:  # noqa: BLE001 - not JSON, or not a batch: handed on, refused there
        return None
