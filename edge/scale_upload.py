"""Uploads the scale's audit log (``DATA_DIR/scale-audit.jsonl``) to the market server.

The log (``firmware_bridge.audit``) is append-only JSON lines numbered by ``seq``; this
sends the lines after the last one the server answered for, as written (the server
checks their hashes and chain), and remembers that ``seq`` durably in
``DATA_DIR/scale-audit.sent.json`` (written to a temporary file, fsynced, renamed), so a
restart neither resends everything nor skips anything.  The server is idempotent by
(stall, ``seq``): a batch whose answer was lost is sent again and answered
``duplicate``.  While the server is away the lines wait in the log; the uploader retries
with exponential back-off and jitter, on the sale outbox's loop (``edge/backoff.py``).

A line being written (no newline yet) waits for the next pass; a line that is not JSON
is skipped with an error in the log (the server then sees a gap in ``seq`` and alerts
the manager).  A log that no longer holds the remembered entry (replaced, or a new
data folder with an old state file) is sent again from its start: the server refuses
entries that differ from those it holds and alerts.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import httpx

from edge import EdgeError
from edge.backoff import BackoffSender

logger = logging.getLogger(__name__)

#: Entries per upload (the server takes up to 500).
BATCH = 100


class ScaleAuditUploader(BackoffSender):
    """``start``, ``notify``, ``stop`` (after a last attempt): ``edge.backoff``."""

    retry_errors = (httpx.HTTPError, ValueError, KeyError, TypeError, EdgeError)
    kept = "entries stay in the scale's audit log"

    def __init__(self, log_path: str | os.PathLike[str], server_url: str, token: str, *, stall_id: str,
                 state_path: str | os.PathLike[str] | None = None, batch: int = BATCH,
                 poll_s: float = 5.0, max_backoff_s: float = 30.0, timeout_s: float = 5.0,
                 stop_event: threading.Event | None = None) -> None:
        self.log_path = Path(log_path)
        self.state_path = Path(state_path) if state_path is not None else \
            self.log_path.with_name(self.log_path.stem + ".sent.json")
        super().__init__(f"scale-audit-{stall_id}", server_url, token, poll_s=poll_s,
                         max_backoff_s=max_backoff_s, timeout_s=timeout_s, stop_event=stop_event)
        self.stall_id = stall_id
        self.batch = batch
        self.sent_seq, self._sent_hash = self._load_state()
        #: Byte offset in the log just after the line of ``sent_seq`` (None: not found yet).
        self._offset: int | None = None
        self._skipped: set[int] = set()

    # -- the remembered position ---------------------------------------------------------------
    def _load_state(self) -> tuple[int, str | None]:
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
            seq, digest = state["seq"], state.get("hash")
            if not isinstance(seq, int) or seq < 0:
                raise ValueError(f"bad seq {seq!r}")
            return seq, digest
        except FileNotFoundError:
            return 0, None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Sending everything again costs duplicates, never a lost entry.
            logger.error("scale audit upload state %s unreadable (%s): sending the log from its start",
                         self.state_path, exc)
            return 0, None

    def _save_state(self) -> None:
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        data = json.dumps({"seq": self.sent_seq, "hash": self._sent_hash})
        try:
            with tmp.open("w", encoding="utf-8") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.state_path)
            dir_fd = os.open(self.state_path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise EdgeError(f"cannot write {self.state_path}: {exc}") from exc

    # -- reading the log ----------------------------------------------------------------------
    def _lines(self, start: int) -> list[tuple[int, bytes]]:
        """Complete lines from byte ``start``: (offset after the line, the line)."""
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(start)
                data = fh.read()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise EdgeError(f"cannot read {self.log_path}: {exc}") from exc
        out, pos = [], start
        for raw in data.splitlines(keepends=True):
            if not raw.endswith(b"\n"):
                break  # being written: the next pass reads it whole
            pos += len(raw)
            out.append((pos, raw))
        return out

    def _find_position(self) -> int:
        """Where the remembered entry ends in the log; from the start if the log lost it."""
        if self.sent_seq == 0:
            return 0
        for end, raw in self._lines(0):
            entry = _parse(raw)
            if entry is not None and entry["seq"] == self.sent_seq:
                if self._sent_hash is None or entry.get("hash") == self._sent_hash:
                    return end
                break
        logger.error("scale audit log %s no longer holds entry %d as sent: sending it from its start "
                     "(the server keeps what it has and alerts the manager)", self.log_path, self.sent_seq)
        self.sent_seq, self._sent_hash = 0, None
        return 0

    def pending(self, limit: int | None = None) -> list[tuple[int, dict[str, Any]]]:
        """Up to ``limit`` entries after the last one sent: (offset after its line, entry)."""
        size = self.log_path.stat().st_size if self.log_path.exists() else 0
        if self._offset is None or size < self._offset:  # first pass, or the log was cut/replaced
            self._offset = self._find_position()
        start = self._offset
        out: list[tuple[int, dict[str, Any]]] = []
        for end, raw in self._lines(start):
            entry = _parse(raw)
            if entry is None:
                if end not in self._skipped:  # once, not at every poll
                    self._skipped.add(end)
                    logger.error("scale audit log %s: the line ending at byte %d is not an entry; "
                                 "skipped", self.log_path, end)
                continue
            if entry["seq"] <= self.sent_seq:
                continue
            out.append((end, entry))
            if limit is not None and len(out) >= limit:
                break
        return out

    # -- sending --------------------------------------------------------------------------------
    def flush_once(self) -> int:
        """Send one batch; returns how many entries the server answered for."""
        batch = self.pending(self.batch)
        if not batch:
            return 0
        r = self._client.post("/api/v1/scale-events", json={"entries": [e for _, e in batch]})
        r.raise_for_status()
        answered = {res.get("seq"): res for res in r.json().get("results", [])}
        settled = 0
        for end, entry in batch:  # in log order: stop at the first one the answer does not name
            res = answered.get(entry.get("seq"))
            if res is None:
                break
            if res.get("status") == "refused":
                logger.error("server refused scale audit entry %s: %s", entry.get("seq"), res.get("reason"))
            elif res.get("flags"):
                logger.warning("server flagged scale audit entry %s: %s", entry.get("seq"),
                               ", ".join(res["flags"]))
            self.sent_seq, self._sent_hash, self._offset = int(entry["seq"]), entry.get("hash"), end
            settled += 1
        if settled:
            self._save_state()
        return settled


def _parse(raw: bytes) -> dict[str, Any] | None:
    """An entry with its number, or None for a line that is not one."""
    try:
        entry = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(entry, dict):
        return None
    seq = entry.get("seq")
    return entry if isinstance(seq, int) and not isinstance(seq, bool) else None
