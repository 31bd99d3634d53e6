"""Figures for the big screen and their live stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from sse_starlette.sse import EventSourceResponse

from server import stats
from server.deps import BrokerDep, SessionDep, SettingsDep
from server.guard import GuardedRoute

router = APIRouter(prefix="/api/v1", tags=["stats"], route_class=GuardedRoute)


@router.get("/stats/today")
def stats_today(session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    """Today's sales (the market's local day): count, total, stall ranking, hours, items."""
    return stats.today(session, settings.tz)


@router.get("/sales-recent")
def sales_recent(session: SessionDep, settings: SettingsDep) -> list[dict[str, Any]]:
    """The last 10 sales received, ``sold_at`` in the market's time with its UTC offset."""
    return stats.recent_sales(session, settings.tz)


#: Each event of the stream (the schema describes one event, as OpenAPI 3.2 and FastAPI do).
SSE_EVENT = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["hello", "sales"]},
        "data": {"type": "string", "description": "JSON: `{}` for hello; for sales "
                 "`{type, stall_id, new, today, recent}`, today as /stats/today, recent as /sales-recent"},
    },
}


@router.get("/events", response_class=EventSourceResponse, responses={200: {
    "description": "Server-Sent Events: `hello` at once, then `sales` after each upload that "
                   "stored sales; a comment line every 10 s keeps the connection open",
    "content": {"text/event-stream": {"schema": SSE_EVENT}}}})
async def events(request: Request, broker: BrokerDep) -> EventSourceResponse:
    """Server-Sent Events: a ``sales`` event carrying today's figures after each upload."""
    queue = broker.subscribe()

    async def stream() -> AsyncIterator[dict[str, str]]:
        try:
            yield {"event": "hello", "data": "{}"}
            while True:
                try:
                    ev = await asyncio.wait_for(queue.get(), timeout=15)
                except TimeoutError:
                    if await request.is_disconnected():
                        break
                    continue
                yield {"event": ev["type"], "data": json.dumps(ev, ensure_ascii=False)}
        finally:
            broker.unsubscribe(queue)

    return EventSourceResponse(stream(), ping=10)
