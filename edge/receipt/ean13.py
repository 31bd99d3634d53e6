"""EAN-13 in-store codes (prefix 20-29) with their check digit.

python-escpos does not compute the check digit (DOMAIN.md §4), so we do, and
always send all 13 digits.  The receipt's code is price-embedded, the way a
checkout reads a scale ticket::

    2 3 | s s s s s | t t t t t | c
    prefix  stall (5)   total in 分 (5)  check

so it only exists for totals up to 999.99 元; above, no barcode is printed.
"""

from __future__ import annotations

import logging
import re

from edge import ReceiptError

logger = logging.getLogger(__name__)

MAX_FIELD = 99_999


def ean13_check_digit(first12: str) -> int:
    """GS1 check digit: weights 1,3,1,3... from the left over 12 digits."""
    if not re.fullmatch(r"[0-9]{12}", first12):
        raise ReceiptError(f"EAN-13 needs 12 digits before its check digit, got {first12!r}")
    total = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(first12))
    return (10 - total % 10) % 10


def is_valid_ean13(code: str) -> bool:
    return bool(re.fullmatch(r"[0-9]{13}", code)) and ean13_check_digit(code[:12]) == int(code[12])


def in_store_ean13(prefix: str, item: int, value: int) -> str:
    """``prefix`` (20-29) + item (5 digits) + value (5 digits) + check digit."""
    if not re.fullmatch(r"2[0-9]", prefix):
        raise ReceiptError(f"in-store EAN-13 prefix must be 20..29, got {prefix!r}")
    for name, number in (("item", item), ("value", value)):
        if not 0 <= number <= MAX_FIELD:
            raise ReceiptError(f"in-store EAN-13 {name} must be 0..{MAX_FIELD}, got {number}")
    first12 = f"{prefix}{item:05d}{value:05d}"
    return first12 + str(ean13_check_digit(first12))


def receipt_ean13(stall: int, total_fen: int, prefix: str = "23") -> str | None:
    """The receipt's price-embedded code, or None when the total does not fit 5 digits."""
    if total_fen > MAX_FIELD:
        logger.info("total %d 分 does not fit an in-store EAN-13: no barcode", total_fen)
        return None
    return in_store_ean13(prefix, stall, total_fen)
