"""Uploads journaled sales to the market server, surviving outages.

Upload is idempotent by ``sale_id`` on the server, so a batch that timed out
after the server stored it is simply sent again and answered "duplicate".
A sale is only marked sent after the server's answer names it; a refused sale
stays in the journal (state ``refused``) for the market manager to see.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import httpx

from edge import JournalError
from edge.backoff import BackoffSender
from edge.journal import Journal, UploadState

logger = logging.getLogger(__name__)


class Outbox(BackoffSender):
    """``start``, ``notify`` (a new sale is in the journal), ``stop``: ``edge.backoff``."""

    kept = "sales stay in the journal"
    #: A journal that cannot mark a sale sent (a full disk) is retried as the server is: the
    #: sale stays pending and is sent again, answered "duplicate", once the disk has room.
    retry_errors = (*BackoffSender.retry_errors, JournalError)

    def __init__(self, journal: Journal, server_url: str, token: str, *, stall_id: str,
                 public_key: str | None = None, batch: int = 50, max_backoff_s: float = 30.0,
                 timeout_s: float = 5.0, stop_event: threading.Event | None = None) -> None:
        super().__init__(f"outbox-{stall_id}", server_url, token, poll_s=5.0,
                         max_backoff_s=max_backoff_s, timeout_s=timeout_s, stop_event=stop_event)
        self.journal = journal
        self.stall_id = stall_id
        self.public_key = public_key
        self.batch = batch
        self._key_registered = public_key is None

    def _register_key(self) -> None:
        assert self.public_key is not None
        register_key(self._client, self.stall_id, self.public_key)
        self._key_registered = True

    def flush_once(self) -> int:
        """Send one batch; returns how many sales were settled (sent or refused)."""
        if not self._key_registered:
            self._register_key()
        sales = self.journal.pending(self.batch)
        if not sales:
            return self._flush_refunds()
        r = self._client.post("/api/v1/sales", json={"sales": sales})
        r.raise_for_status()
        body: dict[str, Any] = r.json()
        settled = 0
        for res in body.get("results", []):
            sid = res.get("sale_id")
            if not sid:
                continue
            if res["status"] in ("accepted", "duplicate"):
                self.journal.mark(sid, "sent", ",".join(res.get("flags") or []) or None)
                settled += 1
            elif res["status"] == "refused":
                logger.error("server refused sale %s: %s", sid, res.get("reason"))
                self.journal.mark(sid, "refused", res.get("reason"))
                settled += 1
        return settled

    def _flush_refunds(self) -> int:
        """Send refunds of sales the server already holds (a refund never overtakes its sale)."""
        refunds = self.journal.pending_refunds(self.batch)
        if not refunds:
            return 0
        r = self._client.post("/api/v1/refunds", json={"refunds": refunds})
        r.raise_for_status()
        settled = 0
        for res in r.json().get("results", []):
            state: UploadState = "sent" if res["status"] in ("accepted", "duplicate") else "refused"
            if state == "refused":
                logger.error("server refused refund of %s line %s: %s", res["sale_id"], res["line_no"],
                             res.get("reason"))
            self.journal.mark_refund(res["sale_id"], res["line_no"], state, res.get("reason"))
            settled += 1
        return settled


def register_key(client: httpx.Client, stall_id: str, public_key: str) -> None:
    """Register the stall's signing key with the market server (``PUT /api/v1/stalls/{id}/key``,
    idempotent); a different key already there is logged, the manager resolves it."""
    r = client.put(f"/api/v1/stalls/{stall_id}/key", json={"public_key": public_key})
    if r.status_code == 409:
        logger.error("server holds a different signing key for stall %s: receipts and shared "
                     "items will be refused or flagged until the market manager resolves it", stall_id)
    else:
        r.raise_for_status()
