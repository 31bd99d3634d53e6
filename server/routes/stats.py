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

router = APIRouter(prefix="/api/v1", tags=["stats"])


@router.get("/stats/today")
def stats_today(session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    """Today's sales (the market's local day): count, total, stall ranking, hours, items."""
    return stats.today(session, settings.tz)


@router.get("/sales-recent")
def sales_recent(session: SessionDep) -> list[dict[str, Any]]:
    return stats.recent_sales(session)


@router.get("/events")
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
