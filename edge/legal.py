"""Identity of the legally relevant software: a version and a checksum.

The metrological part of the stall software (pricing, trace codes, integrity,
the sale model and the receipt content) is kept in the files of
``LEGAL_FILES``.  Their SHA-256, taken in that order over each file's name and
bytes, identifies exactly what is running; the first 8 hex digits are shown
on the vendor screen and printed on every receipt (DOMAIN.md §2), so an
inspector can compare it with the approved value.  Bump ``LEGAL_VERSION``
whenever one of these files changes on purpose.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import pathlib

logger = logging.getLogger(__name__)

LEGAL_VERSION = "1.2.0"

_EDGE = pathlib.Path(__file__).resolve().parent

#: Relative to the ``edge`` package; the PNG preview is deliberately not here
#: (it is a picture for the vendor, not what the shopper is given).
LEGAL_FILES: tuple[str, ...] = (
    "legal.py",
    "pricing.py",
    "tracecode.py",
    "integrity.py",
    "sale.py",
    "receipt/layout.py",
    "receipt/escpos_bytes.py",
    "receipt/ean13.py",
    "tolerance.py",
)


@functools.cache
def legal_checksum() -> str:
    """Hex SHA-256 over the legally relevant files (name, NUL, bytes, NUL for each)."""
    digest = hashlib.sha256()
    for name in LEGAL_FILES:
        digest.update(name.encode("ascii") + b"\0")
        digest.update((_EDGE / name).read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def legal_id() -> str:
    """What the receipt and the screen show: ``"1.1.0 3f2a9c1d"``."""
    return f"{LEGAL_VERSION} {legal_checksum()[:8]}"
