"""What a receipt says, laid out in printer columns (legally relevant).

``layout_receipt(sale, meta, width)`` re-checks the sale (every amount and the
total against ``meta.rule``, the trace code against the stall and receipt
number) and returns a list of blocks: ``Text`` lines already padded to the
paper's columns, the ``Qr`` with the trace URL, an optional ``Barcode``,
``Feed`` and ``Cut``.  The ESC/POS encoder and the PNG preview both draw these
same blocks, so what the vendor sees is what the shopper gets.

Columns are those of font A (12 x 24 dots): 32 on 58 mm paper (384 dots),
48 on 80 mm (576 dots).  A character's width is the printer's, counted from its
code in the receipt's encoding (GB18030 or GBK), not from Unicode: a one-byte
(ASCII) code takes one column, every multi-byte code (two bytes, or four in
GB18030) two, because the printer draws it from its 24 x 24 Chinese font.  So
``·`` ``—`` ``×`` ``℃`` ``“”`` and accented Latin, which Unicode calls narrow or
ambiguous, take two columns like ``￥`` and a Han character.

A character the encoding has no code for (``𠮷`` in GBK, ``î`` in GBK) is
replaced by ``?`` here, when the text is laid out, and logged: the ``Text``
blocks then hold only printable characters, so the ESC/POS bytes and the PNG
preview show the same ``?`` in the same single column.
"""

from __future__ import annotations

import functools
import logging
import unicodedata
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edge import ReceiptError
from edge.legal import LEGAL_VERSION, legal_checksum
from edge.pricing import RULE_NOTES, RoundingRule, check_sale, format_weight, format_yuan
from edge.receipt.ean13 import receipt_ean13
from edge.sale import Sale, SaleLine
from edge.tracecode import check_sale_trace, trace_url

logger = logging.getLogger(__name__)

Width = Literal[58, 80]
#: The text encodings a receipt printer may be set to; the first is the default.
ENCODINGS = ("gb18030", "gbk")
#: What is printed for a character the encoding cannot encode (one column).
REPLACEMENT = "?"
COLUMNS: dict[int, int] = {58: 32, 80: 48}
DOTS: dict[int, int] = {58: 384, 80: 576}


class ReceiptMeta(BaseModel):
    """What the receipt needs besides the sale (from the stall's config).

    Integers and booleans are strict: ``"reprint": "2"`` in a settings file is
    refused, not read as 2 (a typo must not silently become a receipt setting).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    market_name: str = Field(default="菜市场", min_length=1, max_length=40, title="Market name")
    market_name_en: str | None = Field(default=None, max_length=60, title="Market name in English")
    stall_name: str | None = Field(default=None, max_length=40, title="Stall name")
    vendor: str | None = Field(default=None, max_length=40, title="Vendor's name")
    base_url: str = Field(default="http://127.0.0.1:8000", pattern=r"^https?://[^\s?#]+$",
                          title="Base URL of the trace page (QR)")
    rule: RoundingRule = Field(default="half-up", title="The market's rounding rule")
    language: Literal["zh", "en"] = Field(default="zh", title="Receipt language")
    ean13: bool = Field(default=False, strict=True,
                        title="Print the price-embedded in-store EAN-13")
    ean13_prefix: str = Field(default="23", pattern=r"^2[0-9]$", title="In-store EAN-13 prefix")
    chinese_mode: bool = Field(default=False, strict=True,
                               title="Send FS & (Chinese character mode) first")
    qr_size: int = Field(default=6, strict=True, ge=1, le=16, title="QR module size in dots")
    reprint: int = Field(default=0, strict=True, ge=0, le=999,
                         title="0 for the original, n for the n-th reprint")
    footer: tuple[str, ...] = Field(default=(), max_length=5, title="Extra lines, e.g. 市场监管电话")


@dataclass(frozen=True, slots=True)
class Text:
    text: str
    bold: bool = False
    size: Literal["normal", "tall", "big"] = "normal"  # tall: double height; big: double both


@dataclass(frozen=True, slots=True)
class Qr:
    data: str
    size: int  # module size in dots


@dataclass(frozen=True, slots=True)
class Barcode:
    ean13: str


@dataclass(frozen=True, slots=True)
class Feed:
    lines: int


@dataclass(frozen=True, slots=True)
class Cut:
    pass


Block = Text | Qr | Barcode | Feed | Cut

LABELS: dict[str, dict[str, str]] = {
    "zh": {
        "stall": "摊位", "vendor": "摊主", "time": "时间", "receipt": "小票号",
        "head_item": "品名 重量x单价", "head_amount": "金额", "piece": "个",
        "batch": "批次", "total": "合计", "count": "共{n}项", "trace": "追溯码",
        "scan": "扫码查验真伪与溯源", "software": "计价软件 v{version} 校验码 {checksum}",
        "reprint": "*** 重印 第{n}次 ***", "order": "网上订单 #{n}",
    },
    "en": {
        "stall": "Stall", "vendor": "Vendor", "time": "Time", "receipt": "Receipt",
        "head_item": "Item weight x price", "head_amount": "Amount", "piece": "pc",
        "batch": "Batch", "total": "TOTAL", "count": "{n} item(s)", "trace": "Trace",
        "scan": "Scan to verify and trace", "software": "Software v{version} check {checksum}",
        "reprint": "*** REPRINT {n} ***", "order": "Online order #{n}",
    },
}

#: QR byte-mode capacity at error correction M, versions 1..20 (ISO/IEC 18004).
_QR_BYTES_M = (14, 26, 42, 62, 84, 106, 122, 152, 180, 213,
               251, 287, 331, 362, 412, 450, 504, 560, 624, 666)


def check_encoding(encoding: str) -> None:
    if encoding not in ENCODINGS:
        raise ReceiptError(f"receipt encoding must be one of {ENCODINGS}, got {encoding!r}")


@functools.lru_cache(maxsize=16384)
def _code_width(char: str, encoding: str) -> int:
    """Columns of ``char``'s code in ``encoding``: 1 or 2, or 0 when it has no code."""
    try:
        code = char.encode(encoding)
    except UnicodeEncodeError:
        return 0
    # GBK and GB18030 code every non-ASCII character in 2 or 4 bytes; the printer
    # gives any multi-byte code one double-width (24-dot) cell.
    return 1 if len(code) == 1 else 2


def char_width(char: str, encoding: str = "gb18030") -> int:
    """Printer columns of ``char`` in ``encoding`` (that of ``?`` if it cannot be encoded)."""
    if char < "\x80":  # ASCII: one byte in both encodings (the common case, kept fast)
        return 1
    return _code_width(char, encoding) or 1


def text_width(text: str, encoding: str = "gb18030") -> int:
    """Printer columns of ``text``, i.e. the width of its bytes on paper."""
    if text.isascii():
        return len(text)
    return sum(char_width(c, encoding) for c in text)


def printable(text: str, encoding: str = "gb18030") -> str:
    """``text`` with every character ``encoding`` cannot encode replaced by ``?``."""
    if text.isascii():
        return text
    out = "".join(c if c < "\x80" or _code_width(c, encoding) else REPLACEMENT for c in text)
    if out != text:
        logger.warning("%r has characters outside %s: printed as %r", text, encoding, REPLACEMENT)
    return out


def clean(text: str, encoding: str = "gb18030") -> str:
    """Printable text only: a control byte in an item name must not become a command,
    and a character the printer has no code for becomes ``?`` (see the module doc)."""
    text = text.replace("\u00a5", "￥")  # GBK printers garble U+00A5 (DOMAIN.md §4)
    return printable("".join(c for c in text if unicodedata.category(c)[0] != "C"), encoding)


@functools.lru_cache(maxsize=16384)
def _breaks_anywhere(char: str) -> bool:
    # Where a line may break is a matter of script, not of bytes: Han (and other wide)
    # characters break anywhere, while "café" or "Crème" stays one word although é
    # and è are double-width on the printer.
    return unicodedata.east_asian_width(char) in ("W", "F")


def _tokens(text: str) -> list[str]:
    # A Han character may break anywhere; a run of other non-space characters is a word.
    tokens: list[str] = []
    for char in text:
        if char == " " or _breaks_anywhere(char) or not tokens or tokens[-1] == " " \
                or _breaks_anywhere(tokens[-1][-1]):
            tokens.append(char)
        else:
            tokens[-1] += char
    return tokens


def wrap(text: str, columns: int, encoding: str = "gb18030") -> list[str]:
    """Break ``text`` into lines of at most ``columns`` printer columns."""
    lines: list[str] = []
    line, used = "", 0
    for token in _tokens(text):
        width = text_width(token, encoding)
        if used + width > columns and line.strip():
            lines.append(line.rstrip())
            line, used = "", 0
            if token == " ":
                continue
        # A word longer than the room left (the whole line, or what an indent leaves):
        # split it by characters.
        while width > columns - used:
            head, head_width = "", 0
            for char in token:
                if head_width + char_width(char, encoding) > columns - used:
                    break
                head, head_width = head + char, head_width + char_width(char, encoding)
            if head:
                lines.append(line + head)
            token, width, line, used = token[len(head):], width - head_width, "", 0
        line, used = line + token, used + width
    if line.strip() or not lines:
        lines.append(line.rstrip())
    return lines


def fit(text: str, columns: int, encoding: str = "gb18030") -> str:
    """Cut ``text`` to ``columns`` without splitting a double-width character."""
    out, used = "", 0
    for char in text:
        if used + char_width(char, encoding) > columns:
            break
        out, used = out + char, used + char_width(char, encoding)
    return out


def spread(left: str, right: str, columns: int, encoding: str = "gb18030") -> list[str]:
    """``left`` and ``right`` on one line, right-aligned; on two lines if they do not fit."""
    gap = columns - text_width(left, encoding) - text_width(right, encoding)
    if gap >= 1:
        return [left + " " * gap + right]
    return [*wrap(left, columns, encoding),
            " " * max(0, columns - text_width(right, encoding)) + right]


def center(text: str, columns: int, encoding: str = "gb18030") -> str:
    return " " * max(0, (columns - text_width(text, encoding)) // 2) + text


def qr_version(data: str) -> int:
    """The smallest QR version holding ``data`` in byte mode at level M."""
    size = len(data.encode("utf-8"))
    for version, capacity in enumerate(_QR_BYTES_M, start=1):
        if size <= capacity:
            return version
    raise ReceiptError(f"QR content of {size} bytes is too long for a receipt")


def qr_module_size(data: str, wanted: int, width: int) -> int:
    """``wanted`` dots per module, less if the symbol would not fit the paper."""
    modules = 17 + 4 * qr_version(data)
    return max(1, min(wanted, DOTS[width] // modules))


def _line_blocks(number: int, line: SaleLine, meta: ReceiptMeta, columns: int,
                 encoding: str) -> list[Text]:
    labels = LABELS[meta.language]
    extra = line.model_extra or {}
    name = clean(str(extra.get("name_en") or line.name) if meta.language == "en" else line.name,
                 encoding)
    if line.price_unit == "piece":
        amount_text = f"{line.quantity}{labels['piece']}"
        unit = labels["piece"]
    else:
        assert line.weight_g is not None  # SaleLine guarantees it for kg and 500g
        amount_text = format_weight(line.weight_g)
        unit = line.price_unit
    detail = f"  {amount_text} x {format_yuan(line.unit_price_fen)}/{unit}"
    rows = [Text(row) for row in wrap(f"{number}. {name} ({clean(line.plu, encoding)})",
                                      columns, encoding)]
    rows += [Text(row) for row in spread(detail, format_yuan(line.amount_fen), columns, encoding)]
    if line.batch_code:
        rows += [Text(row) for row in wrap(
            f"  {labels['batch']} {clean(line.batch_code, encoding)}", columns, encoding)]
    return rows


def layout_receipt(sale: Sale, meta: ReceiptMeta, width: int = 58,
                   encoding: str = "gb18030") -> list[Block]:
    """Check ``sale`` and lay it out in the printer columns of ``encoding``;
    PricingError / TraceCodeError / ReceiptError refuse it."""
    if width not in COLUMNS:
        raise ReceiptError(f"paper width must be 58 or 80 mm, got {width}")
    check_encoding(encoding)
    check_sale(sale, meta.rule)
    trace = check_sale_trace(sale)
    columns = COLUMNS[width]
    labels = LABELS[meta.language]
    rule_line = "-" * columns

    def rows(text: str) -> list[Text]:
        return [Text(row) for row in wrap(text, columns, encoding)]

    def centred(text: str) -> Text:
        return Text(center(text, columns, encoding), bold=True)

    title = meta.market_name_en if meta.language == "en" and meta.market_name_en \
        else meta.market_name
    blocks: list[Block] = [  # double width: half the columns
        Text(center(row, columns // 2, encoding), bold=True, size="big")
        for row in wrap(clean(title, encoding), columns // 2, encoding)
    ]
    reprint = labels["reprint"].format(n=meta.reprint)
    if meta.reprint:
        blocks.append(centred(reprint))
    stall = f"{labels['stall']} {sale.stall_id}"
    if meta.stall_name:
        stall += f" {clean(meta.stall_name, encoding)}"
    if meta.vendor:
        stall += f"  {labels['vendor']} {clean(meta.vendor, encoding)}"
    blocks += rows(stall)
    blocks.append(Text(f"{labels['time']} {sale.sold_at:%Y-%m-%d %H:%M:%S}"))
    blocks.append(Text(f"{labels['receipt']} {sale.receipt_no:07d}"))
    order_id = (sale.model_extra or {}).get("order_id")
    if isinstance(order_id, int):  # an online order (edge.orders): the shopper's number
        blocks.append(Text(labels["order"].format(n=order_id), bold=True))
    blocks.append(Text(rule_line))
    blocks += [Text(row) for row in spread(labels["head_item"], labels["head_amount"], columns,
                                           encoding)]
    for number, line in enumerate(sale.lines, start=1):
        blocks += _line_blocks(number, line, meta, columns, encoding)
    blocks.append(Text(rule_line))
    blocks.append(Text(labels["count"].format(n=len(sale.lines))))
    blocks += [Text(row, bold=True, size="tall")
               for row in spread(labels["total"], format_yuan(sale.total_fen), columns, encoding)]
    note_zh, note_en = RULE_NOTES[meta.rule]
    blocks += rows(note_zh if meta.language == "zh" else note_en)
    blocks += rows(f"{labels['trace']} {sale.trace_code}")
    url = trace_url(meta.base_url, sale.trace_code, sale.signature)
    if not sale.signature:
        logger.warning("receipt %s is unsigned: its QR cannot prove it genuine", sale.trace_code)
    blocks.append(Qr(url, qr_module_size(url, meta.qr_size, width)))
    blocks.append(Text(center(labels["scan"], columns, encoding)))
    if meta.ean13:
        code = receipt_ean13(trace.stall, sale.total_fen, meta.ean13_prefix)
        if code is not None:
            blocks.append(Barcode(code))
    blocks += rows(labels["software"].format(version=LEGAL_VERSION, checksum=legal_checksum()[:8]))
    for extra in meta.footer:
        blocks += rows(clean(extra, encoding))
    if meta.reprint:
        blocks.append(centred(reprint))
    blocks += [Feed(4), Cut()]
    return blocks
