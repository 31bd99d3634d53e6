"""A small durable queue of JSON documents, one file each, sent one at a time to one endpoint
of the market server on the back-off loop (``edge.backoff``).

A document is written atomically (``edge.files.write_atomic``) before anything is sent, so a
crash or the server's absence loses nothing; it leaves the folder only when the server
settled it: stored (2xx) or refused for good (4xx but 401/408/429: set aside as
``.refused``, not sent again, for a look).  The stall's shared taught items
(``edge.gallery_share``) and the fair scale's checks (``edge.fair_scale``) queue this way.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from pathlib import Path
from typing import Any

import httpx

from edge.backoff import BackoffSender
from edge.files import write_atomic

logger = logging.getLogger(__name__)

#: Answers that mean "not now" rather than "never": the token, a timeout, too many requests.
_RETRY = (401, 408, 429)


def detail(r: httpx.Response) -> str:
    """The server's reason (``detail``), else the start of its body."""
    try:
        why = r.json().get("detail")
    except ValueError:
        why = None
    return str(why if why is not None else r.text[:300])


class FolderOutbox(BackoffSender):
    retry_errors = (httpx.HTTPError, OSError, ValueError)

    def __init__(self, name: str, folder: Path, endpoint: str, server_url: str, token: str, *,
                 poll_s: float = 30.0, max_backoff_s: float = 60.0, timeout_s: float = 10.0,
                 stop_event: threading.Event | None = None) -> None:
        super().__init__(name, server_url, token, poll_s=poll_s, max_backoff_s=max_backoff_s,
                         timeout_s=timeout_s, stop_event=stop_event)
        self.folder, self.endpoint = folder, endpoint
        self.folder.mkdir(parents=True, exist_ok=True)
        #: One sender at a time: the loop, or a caller sending its document at once (``send``).
        self._sending = threading.Lock()

    def put(self, name: str, doc: bytes) -> Path:
        """Queue ``doc`` durably; oldest first (the file name starts with the time)."""
        path = self.folder / f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S%f}-{name}.json"
        write_atomic(path, doc)
        return path

    def pending(self) -> list[Path]:
        return sorted(self.folder.glob("*.json"))

    def before_send(self) -> None:
        """Anything the server needs first (the stall's key); raises a retry error if not yet."""

    def endpoint_for(self, path: Path) -> str:
        """Where ``path``'s document goes: one endpoint, unless a subclass queues kinds that go
        to several in one order."""
        return self.endpoint

    def settled(self, path: Path, answer: dict[str, Any]) -> None:
        """The server stored ``path``'s document and answered ``answer``."""
        logger.info("%s: %s sent (%s)", self.name, path.stem, answer.get("status"))

    def send(self, path: Path) -> dict[str, Any] | None:
        """Send one queued document now; the server's answer if it settled it (a refusal is
        ``{"refused": reason}``), None if it is still queued (the server away)."""
        with self._sending:
            if not path.exists():
                return None  # the loop sent it meanwhile
            self.before_send()
            r = self._client.post(self.endpoint_for(path), content=path.read_bytes(),
                                  headers={"Content-Type": "application/json"})
            if r.is_success:
                answer: dict[str, Any] = r.json()
                path.unlink()
                self.settled(path, answer)
                return answer
            if 400 <= r.status_code < 500 and r.status_code not in _RETRY:
                # Sending it again would be refused again: kept aside for a look, not retried.
                path.rename(path.with_suffix(".refused"))
                logger.error("%s: the market server refused %s (%d): %s", self.name, path.stem,
                             r.status_code, detail(r))
                return {"refused": detail(r)}
            r.raise_for_status()
            return None

    def try_send(self, path: Path) -> dict[str, Any] | None:
        """``send``, with the server's absence answered None (the loop sends it later)."""
        try:
            answer = self.send(path)
        except self.retry_errors as exc:
            self.online, self.last_error = False, str(exc)
            self.notify()
            return None
        self.online, self.last_error = True, None
        return answer

    def flush_once(self) -> int:
        """Send the oldest queued document; 1 when the server settled it (stored or refused)."""
        queued = self.pending()
        if not queued:
            return 0
        return 1 if self.send(queued[0]) is not None else 0
