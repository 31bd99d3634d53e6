"""The 20-digit trace code (追溯码) of a receipt (ARCHITECTURE.md, "Sale JSON").

Layout, digit positions 0-based::

    [0:6]   GB/T 2260 region code      310106
    [6:9]   market number              001
    [9:12]  stall number               001
    [12:19] the stall's receipt number 0000042
    [19]    Luhn check digit over [0:19]

The code is validated wherever it is read (``parse_trace_code``): exactly 20
ASCII digits, a plausible region, non-zero market and stall, the check digit.

Public API::

    make_trace_code(region, market, stall, receipt_no) -> str
    parse_trace_code(code) -> TraceCode
    check_market(region, market) -> None   a market's region code and number fit a code
    stall_number(stall_id) -> int          "S01" -> 1
    stall_id_aliases(number) -> list[str]  the stall ids that share one number: S1, S01, S001...
    check_sale_trace(sale) -> TraceCode    the code matches the sale's stall and receipt_no
    trace_url(base_url, trace_code, signature) -> str
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, NamedTuple

from edge import TraceCodeError

if TYPE_CHECKING:
    from edge.sale import Sale

logger = logging.getLogger(__name__)

LENGTH = 20
MAX_MARKET = 999
MAX_STALL = 999
MAX_RECEIPT_NO = 9_999_999

#: GB/T 2260 province-level prefixes (first two digits of a region code).
_PROVINCES = frozenset(
    [11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46,
     50, 51, 52, 53, 54, 61, 62, 63, 64, 65, 71, 81, 82]
)
_DIGITS = re.compile(r"[0-9]+")
_STALL_ID = re.compile(r"[Ss]([0-9]{1,3})")
# The signature is urlsafe base64: safe in a query string without escaping.
_SIGNATURE = re.compile(r"[A-Za-z0-9_=-]*")


class TraceCode(NamedTuple):
    region: str
    market: int
    stall: int
    receipt_no: int

    @property
    def code(self) -> str:
        return make_trace_code(self.region, self.market, self.stall, self.receipt_no)

    def __str__(self) -> str:
        return self.code


def luhn_check_digit(digits: str) -> int:
    """The Luhn digit that makes ``digits + str(result)`` pass the Luhn test."""
    total = 0
    # From the rightmost payload digit, every first one is doubled (it will sit
    # in an even position once the check digit is appended).
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2 == 0:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return (10 - total % 10) % 10


def _check_region(region: object) -> str:
    if not isinstance(region, str) or len(region) != 6 or not _DIGITS.fullmatch(region):
        raise TraceCodeError(f"region code must be 6 digits (GB/T 2260), got {region!r}")
    if int(region[:2]) not in _PROVINCES:
        raise TraceCodeError(f"region code {region} does not start with a GB/T 2260 province")
    return region


def _check_number(name: str, value: object, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise TraceCodeError(f"{name} must be an integer {low}..{high}, got {value!r}")
    return value


def check_market(region: str, market: int) -> None:
    """TraceCodeError unless ``region`` and ``market`` can open a trace code."""
    _check_region(region)
    _check_number("market", market, 1, MAX_MARKET)


def make_trace_code(region: str, market: int, stall: int, receipt_no: int) -> str:
    """Build the 20-digit code; TraceCodeError when a field does not fit."""
    check_market(region, market)
    _check_number("stall", stall, 1, MAX_STALL)
    _check_number("receipt_no", receipt_no, 1, MAX_RECEIPT_NO)
    payload = f"{region}{market:03d}{stall:03d}{receipt_no:07d}"
    return payload + str(luhn_check_digit(payload))


def parse_trace_code(code: str) -> TraceCode:
    """Split and validate a code read from anywhere (a sale, a URL, a QR)."""
    if not isinstance(code, str):
        raise TraceCodeError(f"trace code must be a string, got {type(code).__name__}")
    # [0-9] and not str.isdigit(): full-width or Arabic-Indic digits are not ours.
    if len(code) != LENGTH or not _DIGITS.fullmatch(code):
        shown = code if len(code) <= 40 else code[:40] + "..."
        raise TraceCodeError(f"trace code must be exactly {LENGTH} digits, got {shown!r}")
    expected = luhn_check_digit(code[:19])
    if int(code[19]) != expected:
        raise TraceCodeError(f"trace code {code} fails its check digit (expected {expected})")
    region = _check_region(code[:6])
    market, stall, receipt_no = int(code[6:9]), int(code[9:12]), int(code[12:19])
    if market == 0 or stall == 0 or receipt_no == 0:
        raise TraceCodeError(f"trace code {code} has a zero market, stall or receipt number")
    return TraceCode(region, market, stall, receipt_no)


def stall_number(stall_id: str) -> int:
    """The stall's number in the trace code: ``"S01"`` -> 1, ``"S123"`` -> 123."""
    match = _STALL_ID.fullmatch(stall_id) if isinstance(stall_id, str) else None
    if match is None or int(match.group(1)) == 0:
        raise TraceCodeError(
            f"stall id {stall_id!r} cannot be put in a trace code (expected S1..S999)"
        )
    return int(match.group(1))


def stall_id_aliases(number: int) -> list[str]:
    """Every stall id that ``stall_number`` maps to ``number`` (``1`` -> S1, S01, S001, s1...).

    A market must give one trace-code stall number to one stall only: two ids of the
    same number could each take the other's receipt numbers.
    """
    _check_number("stall", number, 1, MAX_STALL)
    widths = range(len(str(number)), 4)
    return [f"{prefix}{number:0{width}d}" for prefix in "Ss" for width in widths]


def check_sale_trace(sale: Sale) -> TraceCode:
    """Parse ``sale.trace_code`` and check it carries the sale's stall and receipt number."""
    trace = parse_trace_code(sale.trace_code)
    if trace.stall != stall_number(sale.stall_id):
        raise TraceCodeError(
            f"trace code {sale.trace_code} names stall {trace.stall}, the sale is {sale.stall_id}"
        )
    if trace.receipt_no != sale.receipt_no:
        raise TraceCodeError(
            f"trace code {sale.trace_code} names receipt {trace.receipt_no}, "
            f"the sale is receipt {sale.receipt_no}"
        )
    return trace


def trace_url(base_url: str, trace_code: str, signature: str = "") -> str:
    """``{base_url}/t/{trace_code}?s={signature}`` (the QR content); no ``?s=`` if unsigned."""
    parse_trace_code(trace_code)
    if not isinstance(base_url, str) or not re.fullmatch(r"https?://[^\s?#]+", base_url):
        raise TraceCodeError(
            f"trace base URL must be http(s)://host[:port][/path], got {base_url!r}"
        )
    if not _SIGNATURE.fullmatch(signature):
        raise TraceCodeError("signature must be urlsafe base64")
    url = f"{base_url.rstrip('/')}/t/{trace_code}"
    return f"{url}?s={signature}" if signature else url
