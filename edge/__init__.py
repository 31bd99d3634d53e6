"""The stall process: weighing states, pricing, receipts, journal and outbox, screens.

Exception tree::

    EdgeError                   root of everything this package raises
     +-- ConfigError            a stall config that does not load or validate
     +-- PricingError           a sale line that cannot be legally priced
     +-- TraceCodeError         a trace code that is malformed or fails its check digit
     +-- JournalError           the durable sale journal cannot be written or read
     +-- PrinterError           the receipt printer failed (the sale is kept)
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
