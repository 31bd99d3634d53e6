"""The reprint queue: receipts that did not print wait here, durably, until they do.

A SQLite file (WAL), one row per sale.  The sale itself is already in the
journal; this queue keeps what is needed to print it again (the sale, the
receipt meta, width and encoding) and how often it failed.  A receipt printed
from the queue always says so on the paper ("重印 第n次"): the failed attempt
may have printed half a receipt, and the shopper must never hold two
"originals".

Public API::

    ReprintQueue(path)
    queue.add(sale, meta, *, width, encoding, error) -> None   (idempotent per sale)
    queue.pending() -> list[QueuedReceipt]
    queue.retry(printer) -> RetryResult(printed, failed)
    queue.reprint(sale, meta, printer) -> PrinterStatus        a shopper asks for a copy
    len(queue)                                                 receipts waiting
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import pathlib
import sqlite3
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edge import PrinterError
from edge.journal import bound_cache
from edge.receipt import ReceiptMeta, render_receipt
from edge.sale import Sale

if TYPE_CHECKING:
    from edge.printing import Printer, PrinterStatus

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS receipts (
    sale_id     TEXT PRIMARY KEY,
    receipt_no  INTEGER NOT NULL,
    sale        TEXT NOT NULL,
    meta        TEXT NOT NULL,
    width       INTEGER NOT NULL,
    encoding    TEXT NOT NULL,
    pending     INTEGER NOT NULL,   -- 1: waits to be printed
    attempts    INTEGER NOT NULL,   -- failed attempts so far
    reprints    INTEGER NOT NULL,   -- copies printed marked as reprints
    last_error  TEXT,
    updated_at  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS receipts_pending ON receipts(pending, receipt_no);
"""


@dataclass(frozen=True)
class QueuedReceipt:
    sale: Sale
    meta: ReceiptMeta
    width: int
    encoding: str
    attempts: int
    reprints: int
    last_error: str | None


@dataclass(frozen=True)
class RetryResult:
    printed: int
    failed: int


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class ReprintQueue:
    def __init__(self, path: pathlib.Path | str) -> None:
        self.path = pathlib.Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a queued receipt survives a power cut
        bound_cache(self._db)  # a printer offline for hours queues a receipt a sale
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM receipts WHERE pending = 1").fetchone()[0]

    def _upsert(self, sale: Sale, meta: ReceiptMeta, width: int, encoding: str, *,
                pending: bool, failed: bool, reprints: int, error: str | None) -> None:
        # One statement for every change of a row: it is the whole state machine.
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO receipts (sale_id, receipt_no, sale, meta, width, encoding, pending,"
                " attempts, reprints, last_error, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT(sale_id) DO UPDATE SET pending = excluded.pending,"
                " attempts = attempts + excluded.attempts,"
                " reprints = max(reprints, excluded.reprints),"
                " last_error = excluded.last_error, updated_at = excluded.updated_at",
                (str(sale.sale_id), sale.receipt_no,
                 json.dumps(sale.to_json(), ensure_ascii=False), meta.model_dump_json(),
                 width, encoding, int(pending), int(failed), reprints, error, _now()),
            )

    def add(self, sale: Sale, meta: ReceiptMeta, *, width: int, encoding: str,
            error: str) -> None:
        """Keep ``sale`` for printing later (once per sale; later failures count attempts)."""
        self._upsert(sale, meta, width, encoding, pending=True, failed=True, reprints=0,
                     error=error)
        logger.warning("receipt %d queued for reprint: %s", sale.receipt_no, error)

    def pending(self) -> list[QueuedReceipt]:
        with self._lock:
            rows = self._db.execute(
                "SELECT sale, meta, width, encoding, attempts, reprints, last_error"
                " FROM receipts WHERE pending = 1 ORDER BY receipt_no").fetchall()
        return [QueuedReceipt(Sale.model_validate(json.loads(sale)),
                              ReceiptMeta.model_validate_json(meta), width, encoding,
                              attempts, reprints, error)
                for sale, meta, width, encoding, attempts, reprints, error in rows]

    def retry(self, printer: Printer) -> RetryResult:
        """Print every waiting receipt, marked as a reprint; stop at the first failure."""
        printed = 0
        waiting = self.pending()
        for index, item in enumerate(waiting):
            number = item.reprints + 1
            meta = item.meta.model_copy(update={"reprint": number})
            data = render_receipt(item.sale, meta, item.width, item.encoding)
            try:
                printer.print_receipt(data, name=f"{item.sale.receipt_no:07d}-reprint{number}")
            except PrinterError as exc:
                # The printer is still down: the rest would fail the same way.
                self.add(item.sale, item.meta, width=item.width, encoding=item.encoding,
                         error=str(exc))
                return RetryResult(printed, len(waiting) - index)
            self._upsert(item.sale, item.meta, item.width, item.encoding, pending=False,
                         failed=False, reprints=number, error=None)
            printed += 1
            logger.info("receipt %d reprinted (%d)", item.sale.receipt_no, number)
        return RetryResult(printed, 0)

    def reprint(self, sale: Sale, meta: ReceiptMeta, printer: Printer) -> PrinterStatus:
        """A copy on request, numbered after the copies this queue already printed."""
        with self._lock:
            row = self._db.execute("SELECT reprints FROM receipts WHERE sale_id = ?",
                                   (str(sale.sale_id),)).fetchone()
        number = (row[0] if row else 0) + 1
        data = render_receipt(sale, meta.model_copy(update={"reprint": number}),
                              printer.settings.width, printer.settings.encoding)
        try:
            status = printer.print_receipt(data, name=f"{sale.receipt_no:07d}-reprint{number}")
        except PrinterError as exc:
            self.add(sale, meta, width=printer.settings.width,
                     encoding=printer.settings.encoding, error=str(exc))
            raise
        self._upsert(sale, meta, printer.settings.width, printer.settings.encoding,
                     pending=False, failed=False, reprints=number, error=None)
        return status
