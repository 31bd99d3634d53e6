"""In-process fan-out of live events to Server-Sent-Events subscribers.

Publishers may be worker threads (sync request handlers), subscribers live on
the event loop, so publishing hops onto the loop with ``call_soon_threadsafe``.
A slow subscriber loses old events (bounded queue) rather than slowing ingest:
every event carries the full figures, so the newest one is enough.
"""

from __future__ import annotations

import asyncio
import logging
from itertools import chain
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

from server import db

logger = logging.getLogger(__name__)

#: What the big screen shows of each market-management table: a commit that adds, changes or
#: deletes such a row publishes a ``market`` event naming these topics.
WATCHED: dict[type[db.Base], str] = {
    db.Inspection: "inspections",
    db.Promotion: "promotions",
    db.PriceChange: "prices",  # every stall price and cap change adds one (server.catalogue)
    db.StallPrice: "prices",
    db.Item: "items",
}
_PENDING = "market_changed"


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


def watch_market_changes(maker: sessionmaker[Session], broker: Broker) -> None:
    """Publish ``{"type": "market", "changed": [topics]}`` after each commit, by any session
    of ``maker``, that touched a :data:`WATCHED` table.

    Watching the session rather than each route means every path that changes specials,
    inspections, prices or the catalogue (the API, the manager pages, a CLI) reaches the
    big screen, which then fetches its figures again; a transaction that rolls back
    publishes nothing.
    """

    def flushed(session: Session, _context: object) -> None:
        # after_flush still lists what the flush wrote in new, dirty and deleted.
        for obj in chain(session.new, session.dirty, session.deleted):
            topic = WATCHED.get(type(obj))
            if topic is not None:
                session.info.setdefault(_PENDING, set()).add(topic)

    def committed(session: Session) -> None:
        if session.in_nested_transaction():
            return  # a savepoint released (after_commit fires for those too): not committed yet
        changed = session.info.pop(_PENDING, None)
        if changed and broker.subscribers:
            broker.publish({"type": "market", "changed": sorted(changed)})

    def ended(session: Session, transaction: SessionTransaction) -> None:
        if transaction.parent is None:  # the whole transaction: what it did not commit is gone
            session.info.pop(_PENDING, None)

    event.listen(maker, "after_flush", flushed)
    event.listen(maker, "after_commit", committed)
    event.listen(maker, "after_transaction_end", ended)
