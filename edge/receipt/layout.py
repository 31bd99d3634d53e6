"""What a receipt says, laid out in printer columns (legally relevant).

``layout_receipt(sale, meta, width)`` re-checks the sale (every amount and the
total against ``meta.rule``, the trace code against the stall and receipt
number) and returns a list of blocks: ``Text`` lines already padded to the
paper's columns, the ``Qr`` with the trace URL, an optional ``Barcode``,
``Feed`` and ``Cut``.  The ESC/POS encoder and the PNG preview both draw these
same blocks, so what the vendor sees is what the shopper gets.

Columns are those of font A (12 x 24 dots): 32 on 58 mm paper (384 dots),
48 on 80 mm (576 dots).  A Han character or ``￥`` takes two columns.
"""

from __future__ import annotations

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
COLUMNS: dict[int, int] = {58: 32, 80: 48}
DOTS: dict[int, int] = {58: 384, 80: 576}


class ReceiptMeta(BaseModel):
    """What the receipt needs besides the sale (from the stall's config)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    market_name: str = Field(default="菜市场", min_length=1, max_length=40, title="Market name")
    market_name_en: str | None = Field(default=None, max_length=60, title="Market name in English")
    stall_name: str | None = Field(default=None, max_length=40, title="Stall name")
    vendor: str | None = Field(default=None, max_length=40, title="Vendor's name")
    base_url: str = Field(default="http://127.0.0.1:8000", pattern=r"^https?://[^\s?#]+$",
                          title="Base URL of the trace page (QR)")
    rule: RoundingRule = Field(default="half-up", title="The market's rounding rule")
    language: Literal["zh", "en"] = Field(default="zh", title="Receipt language")
    ean13: bool = Field(default=False, title="Print the price-embedded in-store EAN-13")
    ean13_prefix: str = Field(default="23", pattern=r"^2[0-9]$", title="In-store EAN-13 prefix")
    chinese_mode: bool = Field(default=False, title="Send FS & (Chinese character mode) first")
    qr_size: int = Field(default=6, ge=1, le=16, title="QR module size in dots")
    reprint: int = Field(default=0, ge=0, le=999, title="0 for the original, n for the n-th reprint")
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
        "reprint": "*** 重印 第{n}次 ***",
    },
    "en": {
        "stall": "Stall", "vendor": "Vendor", "time": "Time", "receipt": "Receipt",
        "head_item": "Item weight x price", "head_amount": "Amount", "piece": "pc",
        "batch": "Batch", "total": "TOTAL", "count": "{n} item(s)", "trace": "Trace",
        "scan": "Scan to verify and trace", "software": "Software v{version} check {checksum}",
        "reprint": "*** REPRINT {n} ***",
    },
}

#: QR byte-mode capacity at error correction M, versions 1..20 (ISO/IEC 18004).
_QR_BYTES_M = (14, 26, 42, 62, 84, 106, 122, 152, 180, 213,
               251, 287, 331, 362, 412, 450, 504, 560, 624, 666)


def char_width(char: str) -> int:
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def text_width(text: str) -> int:
    return sum(char_width(c) for c in text)


def clean(text: str) -> str:
    """Printable text only: a control byte in an item name must not become a command."""
    text = text.replace("\u00a5", "￥")  # GBK printers garble U+00A5 (DOMAIN.md §4)
    return "".join(c for c in text if unicodedata.category(c)[0] != "C")


def _tokens(text: str) -> list[str]:
    # A Han character may break anywhere; a run of other non-space characters is a word.
    tokens: list[str] = []
    for char in text:
        if char == " " or char_width(char) == 2 or not tokens or tokens[-1] == " " \
                or char_width(tokens[-1][-1]) == 2:
            tokens.append(char)
        else:
            tokens[-1] += char
    return tokens


def wrap(text: str, columns: int) -> list[str]:
    """Break ``text`` into lines of at most ``columns`` display columns."""
    lines: list[str] = []
    line, used = "", 0
    for token in _tokens(text):
        width = text_width(token)
        if used + width > columns and line.strip():
            lines.append(line.rstrip())
            line, used = "", 0
            if token == " ":
                continue
        while width > columns:  # a word longer than the line: split it by characters
            head, head_width = "", 0
            for char in token:
                if head_width + char_width(char) > columns - used:
                    break
                head, head_width = head + char, head_width + char_width(char)
            lines.append(line + head)
            token, width, line, used = token[len(head):], width - head_width, "", 0
        line, used = line + token, used + width
    if line.strip() or not lines:
        lines.append(line.rstrip())
    return lines


def fit(text: str, columns: int) -> str:
    """Cut ``text`` to ``columns`` without splitting a double-width character."""
    out, used = "", 0
    for char in text:
        if used + char_width(char) > columns:
            break
        out, used = out + char, used + char_width(char)
    return out


def spread(left: str, right: str, columns: int) -> list[str]:
    """``left`` and ``right`` on one line, right-aligned; on two lines if they do not fit."""
    gap = columns - text_width(left) - text_width(right)
    if gap >= 1:
        return [left + " " * gap + right]
    return [*wrap(left, columns), " " * max(0, columns - text_width(right)) + right]


def center(text: str, columns: int) -> str:
    return " " * max(0, (columns - text_width(text)) // 2) + text


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


def _line_blocks(number: int, line: SaleLine, meta: ReceiptMeta, columns: int) -> list[Text]:
    labels = LABELS[meta.language]
    extra = line.model_extra or {}
    name = clean(str(extra.get("name_en") or line.name) if meta.language == "en" else line.name)
    if line.price_unit == "piece":
        amount_text = f"{line.quantity}{labels['piece']}"
        unit = labels["piece"]
    else:
        assert line.weight_g is not None  # SaleLine guarantees it for kg and 500g
        amount_text = format_weight(line.weight_g)
        unit = line.price_unit
    detail = f"  {amount_text} x {format_yuan(line.unit_price_fen)}/{unit}"
    rows = [Text(row) for row in wrap(f"{number}. {name} ({clean(line.plu)})", columns)]
    rows += [Text(row) for row in spread(detail, format_yuan(line.amount_fen), columns)]
    if line.batch_code:
        rows += [Text(row) for row in wrap(f"  {labels['batch']} {clean(line.batch_code)}",
                                           columns)]
    return rows


def layout_receipt(sale: Sale, meta: ReceiptMeta, width: int = 58) -> list[Block]:
    """Check ``sale`` and lay it out; PricingError / TraceCodeError / ReceiptError refuse it."""
    if width not in COLUMNS:
        raise ReceiptError(f"paper width must be 58 or 80 mm, got {width}")
    check_sale(sale, meta.rule)
    trace = check_sale_trace(sale)
    columns = COLUMNS[width]
    labels = LABELS[meta.language]
    rule_line = "-" * columns

    title = meta.market_name_en if meta.language == "en" and meta.market_name_en \
        else meta.market_name
    blocks: list[Block] = [
        Text(center(row, columns // 2), bold=True, size="big")
        for row in wrap(clean(title), columns // 2)
    ]
    reprint = labels["reprint"].format(n=meta.reprint)
    if meta.reprint:
        blocks.append(Text(center(reprint, columns), bold=True))
    stall = f"{labels['stall']} {sale.stall_id}"
    if meta.stall_name:
        stall += f" {clean(meta.stall_name)}"
    if meta.vendor:
        stall += f"  {labels['vendor']} {clean(meta.vendor)}"
    blocks += [Text(row) for row in wrap(stall, columns)]
    blocks.append(Text(f"{labels['time']} {sale.sold_at:%Y-%m-%d %H:%M:%S}"))
    blocks.append(Text(f"{labels['receipt']} {sale.receipt_no:07d}"))
    blocks.append(Text(rule_line))
    blocks += [Text(row) for row in spread(labels["head_item"], labels["head_amount"], columns)]
    for number, line in enumerate(sale.lines, start=1):
        blocks += _line_blocks(number, line, meta, columns)
    blocks.append(Text(rule_line))
    blocks.append(Text(labels["count"].format(n=len(sale.lines))))
    blocks += [Text(row, bold=True, size="tall")
               for row in spread(labels["total"], format_yuan(sale.total_fen), columns)]
    note_zh, note_en = RULE_NOTES[meta.rule]
    blocks += [Text(row) for row in wrap(note_zh if meta.language == "zh" else note_en, columns)]
    blocks += [Text(row) for row in wrap(f"{labels['trace']} {sale.trace_code}", columns)]
    url = trace_url(meta.base_url, sale.trace_code, sale.signature)
    if not sale.signature:
        logger.warning("receipt %s is unsigned: its QR cannot prove it genuine", sale.trace_code)
    blocks.append(Qr(url, qr_module_size(url, meta.qr_size, width)))
    blocks.append(Text(center(labels["scan"], columns)))
    if meta.ean13:
        code = receipt_ean13(trace.stall, sale.total_fen, meta.ean13_prefix)
        if code is not None:
            blocks.append(Barcode(code))
    blocks += [Text(row) for row in wrap(
        labels["software"].format(version=LEGAL_VERSION, checksum=legal_checksum()[:8]), columns)]
    for extra in meta.footer:
        blocks += [Text(row) for row in wrap(clean(extra), columns)]
    if meta.reprint:
        blocks.append(Text(center(reprint, columns), bold=True))
    blocks += [Feed(4), Cut()]
    return blocks
