"""Receipt blocks to ESC/POS bytes (legally relevant: these bytes are the paper).

Only a small, fixed command set is used, so that a decoder (in the tests) can
read every byte back::

    ESC @            initialise            FS & / FS .   Chinese mode on / off
    ESC E n          bold on/off           GS ! n        character size
    ESC a n          alignment             ESC d n       feed n lines
    LF               print the line        GS V 1        partial cut
    GS ( k           native QR: model 2, module size, level M, store, print
    GS h/w/H/f, GS k 67 13 digits          EAN-13 with its check digit, HRI below

Text is encoded as GB18030 (default) or GBK, the encoding the layout counted
its columns in.  A character outside GBK is printed as ``?`` and logged, rather
than refusing a legally correct sale for a rare character in an item name; the
layout has already replaced it (``layout.printable``), and ``encode_text``
applies the same replacement to blocks made elsewhere, so bytes, layout and
preview agree column for column.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from edge import ReceiptError
from edge.receipt.ean13 import is_valid_ean13
from edge.receipt.layout import (
    Barcode,
    Block,
    Cut,
    Feed,
    Qr,
    Text,
    check_encoding,
    printable,
)

logger = logging.getLogger(__name__)


ESC, GS, FS, LF = b"\x1b", b"\x1d", b"\x1c", b"\n"
INIT = ESC + b"@"
CHINESE_ON, CHINESE_OFF = FS + b"&", FS + b"."
BOLD_ON, BOLD_OFF = ESC + b"E\x01", ESC + b"E\x00"
SIZES = {"normal": GS + b"!\x00", "tall": GS + b"!\x01", "big": GS + b"!\x11"}
ALIGN_LEFT, ALIGN_CENTER = ESC + b"a\x00", ESC + b"a\x01"
PARTIAL_CUT = GS + b"V\x01"
QR_LEVEL_M = 1


def _qr_function(fn: int, data: bytes, m: bytes = b"") -> bytes:
    # GS ( k pL pH cn fn [m] data, with cn = '1' (QR) and pL pH = len(cn fn m data).
    length = len(data) + len(m) + 2
    return GS + b"(k" + bytes((length & 0xFF, length >> 8)) + b"1" + bytes((fn,)) + m + data


def native_qr(data: str, size: int, level: int = QR_LEVEL_M) -> bytes:
    """The ``GS ( k`` sequence python-escpos sends for ``qr(native=True)``."""
    payload = data.encode("utf-8")
    if not 1 <= size <= 16 or len(payload) > 7089:
        raise ReceiptError("QR module size must be 1..16 and its content at most 7089 bytes")
    return (
        _qr_function(65, b"2\x00")                   # model 2
        + _qr_function(67, bytes((size,)))           # module size in dots
        + _qr_function(69, bytes((48 + level,)))     # error correction level
        + _qr_function(80, payload, b"0")            # store the data
        + _qr_function(81, b"", b"0")                # print the symbol
    )


def ean13_bytes(code: str) -> bytes:
    if not is_valid_ean13(code):
        raise ReceiptError(f"{code!r} is not a valid EAN-13 (13 digits, right check digit)")
    return (
        GS + b"h\x50"        # 80 dots high
        + GS + b"w\x02"      # module width 2 dots
        + GS + b"H\x02"      # human-readable digits below
        + GS + b"f\x00"      # in font A
        + GS + b"k\x43\x0d" + code.encode("ascii")  # function B, system 67 = EAN-13
    )


def encode_text(text: str, encoding: str) -> bytes:
    """``text`` in ``encoding``, each character it cannot encode as ``?``."""
    return printable(text, encoding).encode(encoding)


def to_escpos(blocks: Sequence[Block], encoding: str = "gb18030",
              chinese_mode: bool = False) -> bytes:
    check_encoding(encoding)
    out = [INIT]
    if chinese_mode:
        out.append(CHINESE_ON)
    for block in blocks:
        if isinstance(block, Text):
            styled = block.bold or block.size != "normal"
            if block.bold:
                out.append(BOLD_ON)
            if block.size != "normal":
                out.append(SIZES[block.size])
            out.append(encode_text(block.text, encoding) + LF)
            if styled:
                out.append((SIZES["normal"] if block.size != "normal" else b"")
                           + (BOLD_OFF if block.bold else b""))
        elif isinstance(block, Qr):
            out += [ALIGN_CENTER, native_qr(block.data, block.size), ALIGN_LEFT]
        elif isinstance(block, Barcode):
            out += [ALIGN_CENTER, ean13_bytes(block.ean13), ALIGN_LEFT]
        elif isinstance(block, Feed):
            out.append(ESC + b"d" + bytes((block.lines,)))
        elif isinstance(block, Cut):
            out.append(PARTIAL_CUT)
    if chinese_mode:
        out.append(CHINESE_OFF)
    return b"".join(out)
