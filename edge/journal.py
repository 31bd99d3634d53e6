"""The durable sale journal of a stall (SQLite, WAL, synchronous=FULL).

A sale is committed here before its receipt prints and before it is uploaded;
the receipt number and the hash chain are allocated in the same transaction as
the insert, so a crash can neither reuse a number nor break the chain.  The
journal doubles as the upload outbox: each row carries its upload state.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from edge import JournalError
from edge.integrity import GENESIS_HASH, sale_digest
from edge.sale import Sale

logger = logging.getLogger(__name__)

UploadState = Literal["pending", "sent", "refused"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sales (
    receipt_no   INTEGER PRIMARY KEY,
    sale_id      TEXT NOT NULL UNIQUE,
    doc          TEXT NOT NULL,
    digest       TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    upload_state TEXT NOT NULL DEFAULT 'pending',
    upload_note  TEXT,
    uploaded_at  TEXT
);
CREATE INDEX IF NOT EXISTS sales_pending ON sales(upload_state, receipt_no);
"""


class Journal:
    def __init__(self, path: Path | str, first_receipt_no: int = 1) -> None:
        self.path = Path(path)
        self.first_receipt_no = first_receipt_no
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise JournalError(f"cannot open sale journal {self.path}: {exc}") from exc
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def append(self, build: Callable[[int, str], Sale]) -> Sale:
        """Allocate the next receipt number and chain hash, build the sale, commit it.

        ``build(receipt_no, prev_hash)`` returns the signed sale.  Nothing is
        written if it raises.
        """
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                row = self._db.execute(
                    "SELECT receipt_no, digest FROM sales ORDER BY receipt_no DESC LIMIT 1"
                ).fetchone()
                receipt_no = row[0] + 1 if row else self.first_receipt_no
                prev_hash = row[1] if row else GENESIS_HASH
                try:
                    sale = build(receipt_no, prev_hash)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                if sale.receipt_no != receipt_no or sale.prev_hash != prev_hash:
                    self._db.execute("ROLLBACK")
                    raise JournalError("sale builder ignored the allocated receipt_no/prev_hash")
                doc = sale.to_json()
                self._db.execute(
                    "INSERT INTO sales (receipt_no, sale_id, doc, digest, created_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (receipt_no, str(sale.sale_id), json.dumps(doc, ensure_ascii=False),
                     sale_digest(doc), dt.datetime.now(dt.UTC).isoformat()),
                )
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise JournalError(f"cannot write sale journal {self.path}: {exc}") from exc
        logger.info("journaled receipt %d (%s)", receipt_no, sale.sale_id)
        return sale

    def pending(self, limit: int = 50) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT doc FROM sales WHERE upload_state = 'pending' ORDER BY receipt_no LIMIT ?",
                (limit,),
            ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def mark(self, sale_id: str, state: UploadState, note: str | None = None) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE sales SET upload_state = ?, upload_note = ?, uploaded_at = ? "
                "WHERE sale_id = ?",
                (state, note, dt.datetime.now(dt.UTC).isoformat(), sale_id),
            )

    def get(self, receipt_no: int) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT doc FROM sales WHERE receipt_no = ?", (receipt_no,)
            ).fetchone()
        return json.loads(row[0]) if row else None

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT upload_state, COUNT(*) FROM sales GROUP BY upload_state"
            ).fetchall()
        out = {"pending": 0, "sent": 0, "refused": 0}
        out.update({state: n for state, n in rows})
        return out

    def all_sales(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT doc FROM sales ORDER BY receipt_no").fetchall()
        return [json.loads(r[0]) for r in rows]
