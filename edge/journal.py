"""The durable sale journal of a stall (SQLite, WAL, synchronous=FULL).

A sale is committed here before its receipt prints and before it is uploaded;
the receipt number and the hash chain are allocated in the same transaction as
the insert, so a crash can neither reuse a number nor break the chain.  The
journal doubles as the upload outbox: each row carries its upload state.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from edge import JournalError
from edge.basket import AuditEvent, Refund
from edge.integrity import GENESIS_HASH, sale_digest
from edge.sale import Sale

logger = logging.getLogger(__name__)

UploadState = Literal["pending", "sent", "refused"]

#: SQLite's page cache for each file the stall keeps open (the journal, the reprint queue), in
#: KiB.  SQLite keeps every page it reads or writes until its cache is full, 2,000 KiB by
#: default: at one sale a second the journal's cache grew about 1 KB a sale for the first
#: 2,000 sales (half an hour to an hour of a busy stall), which was the growth left in the
#: stall's RSS once warm (docs/benchmarks.md, "Stall screens").  What a sale touches (the
#: tables' last pages, the indexes' paths, the upload counts' index) fits in far less; a miss
#: is read again from the operating system's cache, not from the disk.
CACHE_KIB = 256


def bound_cache(db: sqlite3.Connection) -> None:
    """Hold ``db``'s page cache to ``CACHE_KIB`` (negative ``cache_size``: KiB, not pages)."""
    db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")

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
-- The basket's trail (add, void, checkout, discard, refund): the market's anti-cheat
-- record of what happened at the scale, including what never became a sale.
CREATE TABLE IF NOT EXISTS audit (
    id        INTEGER PRIMARY KEY,
    at        TEXT NOT NULL,
    operator  TEXT NOT NULL,
    action    TEXT NOT NULL,
    sale_id   TEXT,
    line_no   INTEGER,
    detail    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS refunds (
    id           INTEGER PRIMARY KEY,
    sale_id      TEXT NOT NULL REFERENCES sales(sale_id),
    line_no      INTEGER NOT NULL,
    amount_fen   INTEGER NOT NULL,
    reason       TEXT NOT NULL,
    operator     TEXT NOT NULL,
    at           TEXT NOT NULL,
    upload_state TEXT NOT NULL DEFAULT 'pending',
    upload_note  TEXT,
    UNIQUE (sale_id, line_no)
);
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
            bound_cache(self._db)
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise JournalError(f"cannot open sale journal {self.path}: {exc}") from exc
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def append(self, build: Callable[[int, str], Sale],
               audit: Iterable[AuditEvent] = ()) -> Sale:
        """Allocate the next receipt number and chain hash, build the sale, commit it.

        ``build(receipt_no, prev_hash)`` returns the signed sale.  The basket's
        ``audit`` events are committed in the same transaction.  Nothing is
        written if anything raises.
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
                self._insert_audit(audit, str(sale.sale_id))
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise JournalError(f"cannot write sale journal {self.path}: {exc}") from exc
        logger.info("journaled receipt %d (%s)", receipt_no, sale.sale_id)
        return sale

    def _insert_audit(self, events: Iterable[AuditEvent], sale_id: str | None) -> None:
        self._db.executemany(
            "INSERT INTO audit (at, operator, action, sale_id, line_no, detail) VALUES (?, ?, ?, ?, ?, ?)",
            [(e.at.isoformat(), e.operator, e.action, sale_id, e.line_no, e.detail) for e in events],
        )

    def record_audit(self, events: Iterable[AuditEvent], sale_id: str | None = None) -> None:
        """Keep events that belong to no new sale (a discarded basket's lines)."""
        with self._lock:
            try:
                with self._db:
                    self._db.execute("BEGIN IMMEDIATE")
                    self._insert_audit(events, sale_id)
            except sqlite3.Error as exc:
                raise JournalError(f"cannot write audit trail to {self.path}: {exc}") from exc

    def audit_trail(self, sale_id: str | None = None) -> list[dict[str, Any]]:
        query = "SELECT at, operator, action, sale_id, line_no, detail FROM audit"
        args: tuple[str, ...] = ()
        if sale_id is not None:
            query, args = query + " WHERE sale_id = ?", (sale_id,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY id", args).fetchall()
        keys = ("at", "operator", "action", "sale_id", "line_no", "detail")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def refunded_lines(self, sale_id: str) -> set[int]:
        with self._lock:
            rows = self._db.execute("SELECT line_no FROM refunds WHERE sale_id = ?", (sale_id,)).fetchall()
        return {r[0] for r in rows}

    def record_refund(self, refund: Refund) -> None:
        """Store a refund and its audit event together; a line is refunded at most once."""
        with self._lock:
            try:
                with self._db:
                    self._db.execute("BEGIN IMMEDIATE")
                    for n in refund.line_numbers:
                        self._db.execute(
                            "INSERT INTO refunds (sale_id, line_no, amount_fen, reason, operator, at) "
                            "SELECT ?, ?, json_extract(doc, '$.lines[' || ? || '].amount_fen'), ?, ?, ? "
                            "FROM sales WHERE sale_id = ?",
                            (refund.sale_id, n, n - 1, refund.reason, refund.operator,
                             refund.at.isoformat(), refund.sale_id))
                    self._insert_audit([refund.audit], refund.sale_id)
            except sqlite3.IntegrityError as exc:
                raise JournalError(f"receipt {refund.trace_code}: a line is already refunded") from exc
            except sqlite3.Error as exc:
                raise JournalError(f"cannot write refund to {self.path}: {exc}") from exc

    def pending_refunds(self, limit: int = 50) -> list[dict[str, Any]]:
        """Refunds not yet acknowledged by the server, only for sales it already has."""
        with self._lock:
            rows = self._db.execute(
                "SELECT r.sale_id, r.line_no, r.amount_fen, r.reason, r.operator, r.at FROM refunds r "
                "JOIN sales s ON s.sale_id = r.sale_id "
                "WHERE r.upload_state = 'pending' AND s.upload_state = 'sent' ORDER BY r.id LIMIT ?",
                (limit,),
            ).fetchall()
        keys = ("sale_id", "line_no", "amount_fen", "reason", "operator", "at")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def mark_refund(self, sale_id: str, line_no: int, state: UploadState, note: str | None = None) -> None:
        with self._lock, self._writing():
            self._db.execute("UPDATE refunds SET upload_state = ?, upload_note = ? "
                             "WHERE sale_id = ? AND line_no = ?", (state, note, sale_id, line_no))

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """An upload state's write: a full or failing disk is a JournalError, which the outbox
        retries (a raw sqlite3 error would end its thread, and every upload with it)."""
        try:
            yield
        except sqlite3.Error as exc:
            raise JournalError(f"cannot write sale journal {self.path}: {exc}") from exc

    def find(self, *, receipt_no: int | None = None, trace_code: str | None = None,
             sale_id: str | None = None) -> Sale | None:
        with self._lock:
            if sale_id is not None:
                row = self._db.execute("SELECT doc FROM sales WHERE sale_id = ?", (sale_id,)).fetchone()
            elif receipt_no is not None:
                row = self._db.execute("SELECT doc FROM sales WHERE receipt_no = ?", (receipt_no,)).fetchone()
            else:
                row = self._db.execute("SELECT doc FROM sales WHERE json_extract(doc, '$.trace_code') = ?",
                                       (trace_code,)).fetchone()
        return Sale.model_validate_json(row[0]) if row else None

    def pending(self, limit: int = 50) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT doc FROM sales WHERE upload_state = 'pending' ORDER BY receipt_no LIMIT ?",
                (limit,),
            ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def mark(self, sale_id: str, state: UploadState, note: str | None = None) -> None:
        with self._lock, self._writing():
            self._db.execute(
                "UPDATE sales SET upload_state = ?, upload_note = ?, uploaded_at = ? "
                "WHERE sale_id = ?",
                (state, note, dt.datetime.now(dt.UTC).isoformat(), sale_id),
            )

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT upload_state, COUNT(*) FROM sales GROUP BY upload_state"
            ).fetchall()
        out = {"pending": 0, "sent": 0, "refused": 0}
        out.update({state: n for state, n in rows})
        return out

    #: The screens' count of what still waits: a range of the upload-state index per state,
    #: so its cost follows the sales waiting, not the journal's age (``counts`` reads every sale
    #: ever journaled, and the screens ask once a second).
    _WAITING = ("SELECT 'pending', COUNT(*) FROM sales WHERE upload_state = 'pending' "
                "UNION ALL SELECT 'refused', COUNT(*) FROM sales WHERE upload_state = 'refused'")

    def waiting(self) -> dict[str, int]:
        """The sales not yet stored at the server: ``pending`` and ``refused``."""
        with self._lock:
            return {state: n for state, n in self._db.execute(self._WAITING).fetchall()}

    def all_sales(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT doc FROM sales ORDER BY receipt_no").fetchall()
        return [json.loads(r[0]) for r in rows]
