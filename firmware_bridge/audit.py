"""The scale's audit trail (the market's anti-cheat record).

Every zero, tare, calibration and error event is appended to a JSON-lines file,
each entry stamped with the *audit counter* (bumped by every calibration, like
the event counter of a legal-for-trade scale) and chained to the previous entry
by a SHA-256 hash, so an edited or deleted line breaks :meth:`AuditLog.verify`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Literal

from firmware_bridge import AuditError

logger = logging.getLogger(__name__)

AuditEvent = Literal["zero", "tare", "clear_tare", "calibration", "calibration_mode", "error"]
GENESIS = "0" * 64
__all__ = ["AuditError", "AuditEvent", "AuditLog"]


def entry_hash(entry: dict[str, object]) -> str:
    """An entry's chained hash: SHA-256 of its fields but ``hash``, as sorted-key JSON (the
    server checks uploaded logs with this very rule)."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class AuditLog:
    """Append-only, hash-chained audit log; ``path=None`` keeps it in memory (tests, sims)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self.entries: list[dict[str, object]] = []
        if self.path is not None and self.path.exists():
            with self.path.open(encoding="utf-8") as fh:
                self.entries = [json.loads(line) for line in fh if line.strip()]
            self.verify()

    @property
    def counter(self) -> int:
        return int(self.entries[-1]["counter"]) if self.entries else 0  # type: ignore[call-overload]

    def record(self, event: AuditEvent, detail: str = "", *, bump: bool = False) -> int:
        """Append one event; ``bump`` increments the audit counter first.  Returns the counter."""
        with self._lock:
            counter = self.counter + (1 if bump else 0)
            entry: dict[str, object] = {
                "seq": len(self.entries) + 1,
                "t": round(time.time(), 3),
                "event": event,
                "counter": counter,
                "detail": detail,
                "prev": self.entries[-1]["hash"] if self.entries else GENESIS,
            }
            entry["hash"] = entry_hash(entry)
            if self.path is not None:
                try:
                    with self.path.open("a", encoding="utf-8") as fh:
                        fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
                        fh.flush()
                        os.fsync(fh.fileno())
                except OSError as exc:
                    raise AuditError(f"cannot write audit log {self.path}: {exc}") from exc
            self.entries.append(entry)
        logger.info("audit #%s %s (counter %d): %s", entry["seq"], event, counter, detail)
        return counter

    def verify(self) -> None:
        """Raise AuditError unless every entry is intact and chained to the one before."""
        prev = GENESIS
        last_counter = 0
        for i, entry in enumerate(self.entries, 1):
            if entry.get("seq") != i or entry.get("prev") != prev:
                raise AuditError(f"audit log broken at entry {i}: chain does not follow")
            if entry_hash(entry) != entry.get("hash"):
                raise AuditError(f"audit log broken at entry {i}: entry was altered")
            counter = int(entry["counter"])  # type: ignore[call-overload]
            if counter < last_counter:
                raise AuditError(f"audit log broken at entry {i}: counter went back")
            last_counter = counter
            prev = str(entry["hash"])
