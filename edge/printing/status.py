"""Printer status from ``DLE EOT`` replies: pure functions, bytes in, status out.

``DLE EOT 1`` (printer status) and ``DLE EOT 4`` (roll paper sensor) each
answer one byte whose bits 1 and 4 are always 1 and bits 0 and 7 always 0
(Epson ESC/POS reference).  A byte that breaks that rule is not a status
reply, and no reply at all is ``UNKNOWN``: python-escpos 3.1 reports "paper
OK" when nothing comes back (DOMAIN.md §4), which would print into a dead
printer and lose the receipt.
"""

from __future__ import annotations

import enum

QUERY_ONLINE = b"\x10\x04\x01"
QUERY_PAPER = b"\x10\x04\x04"

_FIXED_MASK, _FIXED_BITS = 0x93, 0x12
_OFFLINE = 0x08
_PAPER_NEAR_END = 0x0C
_PAPER_END = 0x60


class PrinterStatus(enum.StrEnum):
    OK = "ok"
    PAPER_LOW = "paper-low"    # near-end sensor: prints, the vendor is told
    PAPER_OUT = "paper-out"
    OFFLINE = "offline"        # cover open, feed button held, error...
    UNKNOWN = "unknown"        # no reply or a garbled one: never taken as OK

    @property
    def can_print(self) -> bool:
        return self in (PrinterStatus.OK, PrinterStatus.PAPER_LOW)


def _valid(reply: bytes) -> bool:
    return len(reply) == 1 and reply[0] & _FIXED_MASK == _FIXED_BITS


def online_status(reply: bytes) -> PrinterStatus:
    """Meaning of the reply to ``DLE EOT 1``."""
    if not _valid(reply):
        return PrinterStatus.UNKNOWN
    return PrinterStatus.OFFLINE if reply[0] & _OFFLINE else PrinterStatus.OK


def paper_status(reply: bytes) -> PrinterStatus:
    """Meaning of the reply to ``DLE EOT 4``."""
    if not _valid(reply):
        return PrinterStatus.UNKNOWN
    if reply[0] & _PAPER_END:
        return PrinterStatus.PAPER_OUT
    if reply[0] & _PAPER_NEAR_END:
        return PrinterStatus.PAPER_LOW
    return PrinterStatus.OK


def combine(online: PrinterStatus, paper: PrinterStatus) -> PrinterStatus:
    """One status from both replies; paper out explains an offline printer best."""
    if paper is PrinterStatus.PAPER_OUT:
        return paper
    if online is not PrinterStatus.OK:
        return online
    return paper
