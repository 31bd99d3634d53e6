"""The stall process: weighing states, pricing, receipts, journal and outbox, screens.

Exception tree::

    EdgeError                   root of everything this package raises
     +-- ConfigError            a stall config that does not load or validate
     +-- PricingError           a sale line that cannot be legally priced
     +-- TraceCodeError         a trace code that is malformed or fails its check digit
     +-- JournalError           the durable sale journal cannot be written or read
     +-- PrinterError           the receipt printer failed (the sale is kept)
     |    +-- PrinterStatusError  it answered paper out / offline, or did not answer
     +-- IntegrityError         a sale or signing key fails the hash chain / signature rules
     +-- CatalogueError         an unknown PLU or an invalid catalogue item
     +-- BasketError            a void or refund that is not allowed
     +-- ReceiptError           a sale file that cannot be read or rendered as a receipt
"""

from __future__ import annotations


class EdgeError(Exception):
    """Root of all edge errors."""


class ConfigError(EdgeError):
    """A stall configuration that does not load or validate."""


class PricingError(EdgeError):
    """A sale line that cannot be legally priced."""


class TraceCodeError(EdgeError):
    """A trace code that is malformed or fails its check digit."""


class JournalError(EdgeError):
    """The durable sale journal cannot be written or read."""


class PrinterError(EdgeError):
    """The receipt printer failed; the sale stays journaled."""


class PrinterStatusError(PrinterError):
    """The printer said it cannot print (paper out, offline) or gave no status reply."""

    def __init__(self, message: str, status: str) -> None:
        super().__init__(message)
        self.status = status


class IntegrityError(EdgeError):
    """A sale or a signing key that breaks the hash-chain / signature rules."""


class CatalogueError(EdgeError):
    """An unknown PLU or an invalid catalogue item."""


class BasketError(EdgeError):
    """A void or refund that is not allowed (unknown line, twice, no reason, closed basket)."""


class ReceiptError(EdgeError):
    """A sale file that cannot be read or rendered as a receipt."""
