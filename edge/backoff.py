"""A worker thread that sends what is pending to the market server, surviving its outages.

The sale outbox (``edge/outbox.py``) and the scale audit uploader (``edge/scale_upload.py``)
share this loop: send a batch (``flush_once``), go on at once while batches settle, wait
for a nudge (``notify``) or ``poll_s`` when nothing is left, and after a failure wait
with exponential back-off and jitter, so that stalls coming back online at once do not
hit the server together.  ``stop`` makes one last attempt, bounded in time.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable

import httpx

logger = logging.getLogger(__name__)


class BackoffSender:
    """Subclasses implement :meth:`flush_once`; ``kept`` says where unsent items wait."""

    #: Failures that mean "try again later" (the server away, or an answer not understood).
    retry_errors: tuple[type[BaseException], ...] = (httpx.HTTPError, ValueError, KeyError)
    kept = "items stay queued"

    def __init__(self, name: str, server_url: str, token: str, *, poll_s: float, max_backoff_s: float,
                 timeout_s: float, stop_event: threading.Event | None = None) -> None:
        self.name = name
        self.poll_s = poll_s
        self.max_backoff_s = max_backoff_s
        self._client = httpx.Client(base_url=server_url.rstrip("/"), timeout=timeout_s,
                                    headers={"Authorization": f"Bearer {token}"})
        self._wake = threading.Event()
        # The stall's one stop event when it passes it (every worker ends on it), else its own.
        self._stop = stop_event if stop_event is not None else threading.Event()
        self._thread: threading.Thread | None = None
        self.online = False
        self.last_error: str | None = None
        self._listeners: list[Callable[[], None]] = []

    def listen(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` (on this sender's thread) when it settled items or the server came or
        went, or when a subclass announces a change of its own (an order): a screen showing it
        says so at once, not at its next poll."""
        self._listeners.append(fn)

    def _changed(self) -> None:
        for fn in list(self._listeners):
            try:
                fn()
            except Exception:  # noqa: BLE001 - a listener's fault must not stop the uploads
                logger.exception("%s: a listener failed", self.name)

    def flush_once(self) -> int:
        """Send one batch; how many items the server settled (0: nothing left to send)."""
        raise NotImplementedError

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def notify(self) -> None:
        """Something new is pending: send it now rather than at the next poll."""
        self._wake.set()

    def stop(self, drain_s: float = 2.0) -> None:
        """Stop, after one last attempt (bounded by ``drain_s``) to send what is pending."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=drain_s + self._client.timeout.read + 1)  # type: ignore[operator]
        self._client.close()

    def stop_now(self, drain_s: float = 2.0) -> None:
        """Stop without a last attempt and without waiting for a long poll in flight (nothing
        waits to be sent): the thread, a daemon, ends with the server's answer; its client
        closes then."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=drain_s)
        if self._thread is None or not self._thread.is_alive():
            self._client.close()

    def _run(self) -> None:
        backoff = 0.5
        while True:
            # Clear before reading what is pending, so a notify() that races with this
            # pass is never lost (it makes the wait below return at once).
            self._wake.clear()
            try:
                settled = self.flush_once()
                came = not self.online
                if came:
                    logger.info("%s: market server reachable", self.name)
                self.online, self.last_error, backoff = True, None, 0.5
                if settled or came:
                    self._changed()
                if settled:
                    continue  # more may be pending
                if self._stop.is_set():
                    return
                self._wake.wait(timeout=self.poll_s)
            except self.retry_errors as exc:
                went = self.online or self.last_error is None
                if went:
                    logger.warning("%s: upload failed, %s: %s", self.name, self.kept, exc)
                self.online, self.last_error = False, str(exc)
                if went:
                    self._changed()
                if self._stop.is_set():
                    return
                self._stop.wait(timeout=backoff * random.uniform(0.5, 1.5))
                backoff = min(backoff * 2, self.max_backoff_s)
