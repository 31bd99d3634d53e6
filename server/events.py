"""Fan-out of live events to Server-Sent-Events subscribers, within a process and across them.

Publishers may be worker threads (sync request handlers), subscribers live on
the event loop, so publishing hops onto the loop with ``call_soon_threadsafe``.
A slow subscriber loses old events (bounded queue) rather than slowing ingest:
every event carries the full figures, so the newest one is enough.

Several server processes on one PostgreSQL database (``wetmarket server --workers N``, or
servers on several machines) each hold their own screens' streams: a process tells the
others through PostgreSQL ``NOTIFY`` in the very transaction that made the change (so a
notice leaves with the commit, never for a rollback), and each process ``LISTEN``s
(:class:`PgListener`) and publishes to its own subscribers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Hashable, Iterable
from itertools import chain
from typing import Any

from sqlalchemy import event, text
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
#: The PostgreSQL channel of market changes: ``{"origin": ..., "changed": [topics]}``.
MARKET_CHANNEL = "wetmarket_market"


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


def watch_commits(maker: sessionmaker[Session], pending_key: str,
                  collect: Callable[[object], Iterable[Hashable]],
                  on_commit: Callable[[set[Any]], None],
                  notice: Callable[[set[Any]], tuple[str, str]] | None = None) -> None:
    """After each commit by a session of ``maker``, ``on_commit(what)`` with what
    ``collect(obj)`` found in the objects its flushes wrote; with ``notice`` (PostgreSQL),
    ``SELECT pg_notify(*notice(what))`` in that very transaction, so other server processes
    hear of it with the commit and never of a rollback.  A savepoint released is not a
    commit; a transaction that rolls back leaves nothing behind.
    """

    def flushed(session: Session, _context: object) -> None:
        # after_flush still lists what the flush wrote in new, dirty and deleted.
        for obj in chain(session.new, session.dirty, session.deleted):
            found = collect(obj)
            if found:
                session.info.setdefault(pending_key, set()).update(found)

    def committing(session: Session) -> None:
        assert notice is not None
        if session.in_nested_transaction():
            return
        session.flush()  # what the commit would flush next belongs in this one notice
        what = session.info.get(pending_key)
        if what:
            channel, payload = notice(what)
            session.execute(text("SELECT pg_notify(:channel, :payload)"),
                            {"channel": channel, "payload": payload})

    def committed(session: Session) -> None:
        if session.in_nested_transaction():
            return  # a savepoint released (after_commit fires for those too): not committed yet
        what = session.info.pop(pending_key, None)
        if what:
            on_commit(what)

    def ended(session: Session, transaction: SessionTransaction) -> None:
        if transaction.parent is None:  # the whole transaction: what it did not commit is gone
            session.info.pop(pending_key, None)

    event.listen(maker, "after_flush", flushed)
    if notice is not None:
        event.listen(maker, "before_commit", committing)
    event.listen(maker, "after_commit", committed)
    event.listen(maker, "after_transaction_end", ended)


def watch_market_changes(maker: sessionmaker[Session], broker: Broker, *, origin: str = "",
                         notify: bool = False) -> None:
    """Publish ``{"type": "market", "changed": [topics]}`` after each commit, by any session
    of ``maker``, that touched a :data:`WATCHED` table; with ``notify`` (PostgreSQL) also
    ``NOTIFY`` :data:`MARKET_CHANNEL` in that transaction, for the other server processes
    (:func:`market_noted` on their side; ``origin`` names this one).

    Watching the session rather than each route means every path that changes specials,
    inspections, prices or the catalogue (the API, the manager pages, a CLI) reaches the
    big screen, which then fetches its figures again; a transaction that rolls back
    publishes nothing.
    """

    def collect(obj: object) -> tuple[str, ...]:
        topic = WATCHED.get(type(obj))  # type: ignore[arg-type]
        return (topic,) if topic is not None else ()

    def published(changed: set[Any]) -> None:
        if broker.subscribers:
            broker.publish({"type": "market", "changed": sorted(changed)})

    def notice(changed: set[Any]) -> tuple[str, str]:
        return MARKET_CHANNEL, json.dumps({"origin": origin, "changed": sorted(changed)})

    watch_commits(maker, _PENDING, collect, published, notice if notify else None)


def market_noted(broker: Broker, origin: str) -> Callable[[str], None]:
    """The handler of :data:`MARKET_CHANNEL` notices: another process's changes, published
    to this process's subscribers as its own would be (its own were published already)."""

    def noted(payload: str) -> None:
        try:
            note = json.loads(payload)
            if note.get("origin") == origin:
                return
            changed = sorted({str(topic) for topic in note["changed"]})
        except (ValueError, KeyError, TypeError, AttributeError):
            logger.warning("a notice on %s that is not ours: %.100r", MARKET_CHANNEL, payload)
            return
        if changed and broker.subscribers:
            broker.publish({"type": "market", "changed": changed})

    return noted


#: libpq's keepalive settings of the listening connection (seconds): first probe after 10 s
#: of silence, then every 5 s, given up after 3 unanswered.
KEEPALIVES: dict[str, Any] = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
                              "keepalives_count": 3}


class PgListener:
    """One thread that ``LISTEN``s on PostgreSQL channels and hands each notice's payload to
    its channel's handler (on that thread: handlers are quick or hop elsewhere).  It comes
    back by itself after a lost connection; notices sent meanwhile are lost, which the
    screens survive (their next event carries whole figures, and they fetch again on
    reconnecting).  ``on_listening(True)`` is called each time a connection listens on every
    channel, ``on_listening(False)`` each time one is lost: what cannot afford a lost notice
    (``server.auth.StallTokens``) trusts itself only in between."""

    def __init__(self, url: str, handlers: dict[str, Callable[[str], None]],
                 on_listening: Callable[[bool], None] | None = None) -> None:
        self._conninfo = url.replace("postgresql+psycopg://", "postgresql://")
        self._handlers = dict(handlers)
        self._on_listening = on_listening
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Set once the first connection listens (tests wait for it).
        self.listening = threading.Event()
        #: The listening connection, None while there is none (tests and diagnostics).
        self.connection: Any = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="pg-listen", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                # TCP keepalives: a connection whose peer vanished without a reset (a network
                # cut) would otherwise look alive for ever while every notice is lost; probed,
                # it fails within about 25 s and the listener says so and comes back.
                with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5,
                                     **KEEPALIVES) as conn:
                    self.connection = conn
                    for channel in self._handlers:
                        conn.execute(f"LISTEN {channel}")
                    if self._on_listening is not None:
                        self._on_listening(True)
                    self.listening.set()
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            handler = self._handlers.get(note.channel)
                            if handler is not None:
                                handler(note.payload)
            except Exception as exc:  # noqa: BLE001 - the listener must come back
                self.connection = None
                if self._on_listening is not None:
                    self._on_listening(False)
                logger.warning("listening on %s failed (%s); again in 1 s",
                               ", ".join(self._handlers), exc)
                self._stop.wait(1.0)
        self.connection = None
        if self._on_listening is not None:
            self._on_listening(False)
