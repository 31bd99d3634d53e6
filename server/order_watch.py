"""Who waits for orders to change: the shoppers' live pages and the stalls' long polls.

Every commit, by any session of the server's sessionmaker, that adds or changes an
order (``server.orders``: placed, accepted, fulfilled by an uploaded sale...) wakes the
waiters of its stall and of its shopper (her phone's key) after the commit, never
before, and never for a transaction that rolled back.  Waiters live on the server's
event loop; commits happen on worker threads, so waking hops onto the loop.

On PostgreSQL the commit also carries a ``NOTIFY`` on :data:`ORDERS_CHANNEL` (sent in the
transaction itself: delivered with the commit, never for a rollback), and every server
process on the database hands the notices it hears (``server.events.PgListener``) to its
own watch: an order placed through one process wakes a stall waiting on another.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from server import db
from server.events import watch_commits

logger = logging.getLogger(__name__)

_PENDING = "orders_changed"
#: The PostgreSQL channel of order changes: ``[[stall_id, phone_key], ...]``.
ORDERS_CHANNEL = "wetmarket_orders"


class Waiter:
    def __init__(self, loop: asyncio.AbstractEventLoop, stall_id: str | None, phone_key: str | None) -> None:
        self.loop = loop
        self.stall_id = stall_id
        self.phone_key = phone_key
        self.event = asyncio.Event()

    def wake(self) -> None:
        with contextlib.suppress(RuntimeError):  # its loop closed: the server stopped
            self.loop.call_soon_threadsafe(self.event.set)


class OrderWatch:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: set[Waiter] = set()

    def subscribe(self, *, stall_id: str | None = None, phone_key: str | None = None) -> Waiter:
        """Register before reading the orders, so a change between the read and the wait is
        not missed."""
        waiter = Waiter(asyncio.get_running_loop(), stall_id, phone_key)
        with self._lock:
            self._waiters.add(waiter)
        return waiter

    def unsubscribe(self, waiter: Waiter) -> None:
        with self._lock:
            self._waiters.discard(waiter)

    def changed(self, keys: set[tuple[str, str]]) -> None:
        """Orders of these (stall, phone key) pairs changed: wake their waiters."""
        with self._lock:
            waiters = list(self._waiters)
        stalls = {s for s, _ in keys}
        phones = {p for _, p in keys}
        for w in waiters:
            if (w.stall_id is not None and w.stall_id in stalls) or \
                    (w.phone_key is not None and w.phone_key in phones):
                w.wake()

    def noted(self, payload: str) -> None:
        """A notice on :data:`ORDERS_CHANNEL` (this process's own too: a second wake only
        makes a waiter read once more)."""
        try:
            keys = {(str(s), str(p)) for s, p in json.loads(payload)}
        except (ValueError, TypeError):
            logger.warning("a notice on %s that is not ours: %.100r", ORDERS_CHANNEL, payload)
            return
        self.changed(keys)

    def watch(self, maker: sessionmaker[Session], *, notify: bool = False) -> None:
        """Wake waiters after each commit of ``maker``'s sessions that touched an order; with
        ``notify`` (PostgreSQL) also ``NOTIFY`` the other server processes in that commit."""

        def collect(obj: object) -> tuple[tuple[str, str], ...]:
            order = obj.order if isinstance(obj, db.OrderLine) else obj
            return ((order.stall_id, order.phone_key),) if isinstance(order, db.Order) else ()

        def notice(keys: set[Any]) -> tuple[str, str]:
            return ORDERS_CHANNEL, json.dumps(sorted(keys))

        watch_commits(maker, _PENDING, collect, self.changed, notice if notify else None)
