"""``GET /api/v1/feed``: the stall's catalogue, prices, specials and blocked batches."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from edge.feed import MAX_WAIT_S, FeedDoc
from server import feed, feedversion
from server.auth import Credentials
from server.feed import VersionWatcher
from server.guard import GuardedRoute, errors

router = APIRouter(prefix="/api/v1", tags=["feed"], route_class=GuardedRoute)

#: A stall must ask again rather than keep a copy from a cache (the ETag says if it changed).
NO_CACHE = "private, no-cache"


def _watcher(request: Request) -> VersionWatcher:
    state = request.app.state
    watcher: VersionWatcher | None = getattr(state, "feed_watcher", None)
    if watcher is None:  # made on the event loop's thread: no race
        def read() -> int:
            with state.sessionmaker() as session:
                return feedversion.current(session)

        watcher = state.feed_watcher = VersionWatcher(read)
    return watcher


def _market_part(request: Request) -> feed.MarketPart:
    state = request.app.state
    part: feed.MarketPart | None = getattr(state, "feed_market", None)
    if part is None:
        part = state.feed_market = feed.MarketPart()
    return part


async def _disconnected(request: Request) -> None:
    """Returns when the client hangs up (a stall stopped while its long poll waits)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


@router.get(
    "/feed", response_model=FeedDoc,
    responses={
        200: {"description": "The stall's feed; the ETag header carries its version",
              "headers": {"ETag": {"schema": {"type": "string"}}}},
        304: {"description": "Unchanged since the ETag sent as If-None-Match (no body)"},
        **errors(401)},
)
async def get_feed(
    request: Request, cred: Credentials,
    wait: Annotated[int, Query(ge=0, le=MAX_WAIT_S, description=(
        "long poll: with a current If-None-Match, answer when the feed changes or after this "
        "many seconds (304)"))] = 0,
    if_none_match: Annotated[str | None, Header(max_length=1024)] = None,
) -> Response:
    """What this stall must apply: the market's active items (caps, median price), this
    stall's prices, its specials not yet over and its blocked batches, at one version."""
    assert cred is not None  # the guard answered 401 without one
    maker, engine = request.app.state.sessionmaker, request.app.state.engine

    def look_up() -> tuple[str, int]:
        with engine.connect() as conn:
            found = feed.stall_and_version(conn, cred.credentials)
        if found is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "unknown stall token",
                                headers={"WWW-Authenticate": "Bearer"})
        return found

    stall_id, version = await run_in_threadpool(look_up)
    if feed.etag_matches(if_none_match, feed.etag(version, stall_id)) and wait > 0:
        changed = asyncio.ensure_future(_watcher(request).wait(version, wait))
        gone = asyncio.ensure_future(_disconnected(request))
        await asyncio.wait({changed, gone}, return_when=asyncio.FIRST_COMPLETED)
        for task in (changed, gone):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if gone.done() and not gone.cancelled():
            return Response(status_code=status.HTTP_304_NOT_MODIFIED)  # nobody listens
        stall_id, version = await run_in_threadpool(look_up)
    tag = feed.etag(version, stall_id)
    if feed.etag_matches(if_none_match, tag):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED,
                        headers={"ETag": tag, "Cache-Control": NO_CACHE})

    def build() -> tuple[int, FeedDoc]:
        with maker() as session:
            return feed.build_feed(session, stall_id, request.app.state.settings.tz,
                                   _market_part(request))

    version, doc = await run_in_threadpool(build)
    return Response(doc.model_dump_json(), media_type="application/json",
                    headers={"ETag": feed.etag(version, stall_id), "Cache-Control": NO_CACHE})
