"""In-process fan-out of live events to Server-Sent-Events subscribers.

Publishers may be worker threads (sync request handlers), subscribers live on
the event loop, so publishing hops onto the loop with ``call_soon_threadsafe``.
A slow subscriber loses old events (bounded queue) rather than slowing ingest:
every event carries the full figures, so the newest one is enough.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

logger = logging.getLogger(__name__)


class Broker:
    def __init__(self, maxsize: int = 32) -> None:
        self._subs: set[asyncio.Queue[dict[str, Any]]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._maxsize = maxsize

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self._maxsize)
        self._subs.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[dict[str, Any]]) -> None:
        self._subs.discard(q)

    def _deliver(self, event: dict[str, Any]) -> None:
        for q in list(self._subs):
            if q.full():
                q.get_nowait()
            q.put_nowait(event)

    def publish(self, event: dict[str, Any]) -> None:
        if self._loop is None or self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._deliver, event)

    @property
    def subscribers(self) -> int:
        return len(self._subs)
