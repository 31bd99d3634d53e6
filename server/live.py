"""The big screen's live figures, computed off the upload path.

The screen (``/api/v1/events``) gets a ``sales`` event carrying today's figures and the
recent sales after sales are stored.  Computing them used to be part of every upload: with
a screen subscribed, each single-sale upload paid ``stats.today`` and ``stats.recent_sales``
(the second one a scan of every stored sale), so uploads slowed down as the history grew.

Now an upload only says that it stored sales (``LiveFigures.stored``, a few microseconds)
and a thread of the process computes the figures and publishes them: at once when it was
idle, so one sale reaches the screen as fast as before, and then at most once per
``min_interval`` however many uploads come in between (each event carries the whole
figures, so the newest one is all a screen needs; its ``new`` counts the sales its figures
show that the event before did not).  Nothing is computed while no screen is subscribed.

With several server processes on one PostgreSQL database (``wetmarket server --workers``)
a screen is connected to one of them: every group commit NOTIFYs ``SALES_CHANNEL`` with what it
stored (``server.groupcommit``), and each process LISTENs (``server.events.PgListener``,
handler :meth:`LiveFigures.noted`) and publishes to its own screens.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from server import stats
from server.events import Broker
from server.ingest import SALES_CHANNEL
from server.settings import Settings

logger = logging.getLogger(__name__)


class LiveFigures:
    """Publishes today's figures to the broker's subscribers after sales are stored."""

    def __init__(self, maker: sessionmaker[Session], settings: Settings, broker: Broker, *,
                 min_interval: float = 0.2, origin: str = "") -> None:
        self._maker = maker
        #: This server's name in the notices (``GroupCommit.origin``): its own are skipped.
        self._origin = origin
        self._settings = settings
        self._broker = broker
        self._min_interval = min_interval
        self._mutex = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._new = 0
        self._stall: str | None = None
        #: The last event's figures while a screen listens: the next one's ``new`` is read
        #: against them.
        self._shown: dict[str, Any] | None = None
        self._threads: list[threading.Thread] = []
        #: Events published (tests and benchmarks read it).
        self.published = 0

    def stored(self, stall_id: str, n: int) -> None:
        """``n`` sales of ``stall_id`` were just committed."""
        with self._mutex:
            self._new += n
            self._stall = stall_id
        self._wake.set()

    def start(self) -> None:
        self._stop.clear()
        self._threads = [threading.Thread(target=self._publish_loop, name="live-figures", daemon=True)]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout=5)
        self._threads = []

    def figures(self, new: int, stall_id: str | None) -> dict[str, Any]:
        """The ``sales`` event: ``today`` as /api/v1/stats/today, ``recent`` as /sales-recent."""
        with self._maker() as session:
            tz = self._settings.tz
            return {"type": "sales", "stall_id": stall_id, "new": new,
                    "today": stats.today(session, tz), "recent": stats.recent_sales(session, tz)}

    def _publish_loop(self) -> None:
        while True:
            self._wake.wait()
            if self._stop.is_set():
                return
            self._wake.clear()
            with self._mutex:
                new, stall, self._new = self._new, self._stall, 0
            if not self._broker.subscribers:
                self._shown = None
                continue
            started = time.monotonic()
            try:
                event = self._counted(self.figures(new, stall))
                if event is not None:
                    self._broker.publish(event)
                    self.published += 1
            except Exception:  # noqa: BLE001 - the screen misses one update, uploads go on
                logger.exception("cannot compute the live figures")
            # Later uploads wait for the next round: at most one computation per interval.
            self._stop.wait(max(0.0, self._min_interval - (time.monotonic() - started)))

    def _counted(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """``event`` with ``new`` the sales its figures show that the last event's did not (the
        screen marks that many of the recent sales as new), or None when it shows nothing new.

        Counted from the figures, not from the uploads told since the last event: a sale
        committed between taking that count and reading the figures was in the figures and
        counted in the next event, so the screen showed it unmarked, then marked it an event
        later (and a test summing ``new`` read one short).  The uploads' count serves only
        when no earlier event of the day was sent to a screen still listening."""
        last, self._shown = self._shown, event
        if last is None or last["today"]["day"] != event["today"]["day"]:
            return event
        new = event["today"]["sales"] - last["today"]["sales"]
        if new <= 0 and event["today"] == last["today"] and event["recent"] == last["recent"]:
            return None
        return {**event, "new": max(0, new)}

    def noted(self, payload: str) -> None:
        """A notice on ``SALES_CHANNEL``: another server process stored sales."""
        try:
            note = json.loads(payload)
            if note.get("origin") == self._origin:
                return  # this server's own upload: stored() was told already
            for stall_id, n in dict(note["stored"]).items():
                self.stored(str(stall_id), int(n))
        except (ValueError, KeyError, TypeError, AttributeError):
            logger.warning("live figures: a notice on %s that is not ours: %.100r", SALES_CHANNEL, payload)
