"""Receipts: a checked sale laid out once, then encoded as ESC/POS bytes or drawn as a PNG.

Public API (the stall calls it after journaling the sale)::

    ReceiptMeta(market_name=..., stall_name=..., vendor=..., base_url=..., rule=...,
                language="zh"|"en", ean13=False, chinese_mode=False, reprint=0, ...)
    render_receipt(sale, meta, width=58|80, encoding="gb18030"|"gbk") -> bytes
    render_png(sale, meta, width=58|80, encoding="gb18030"|"gbk") -> bytes
    layout_receipt(sale, meta, width, encoding) -> list[Block]   (Text, Qr, Barcode, Feed, Cut)

The encoding is the printer's, and the layout needs it: a character's width in
printer columns is that of its code (one column per one-byte code, two per
multi-byte code), so the same sale lays out to the same columns in the bytes
and in the preview only when both are made for the same encoding.

Every render re-checks the sale first (``edge.pricing.check_sale`` under
``meta.rule`` and the trace code), so a sale that does not add up is refused
with a PricingError / TraceCodeError before a byte exists.

Modules: ``layout`` (content, legally relevant), ``escpos_bytes`` (the bytes,
legally relevant), ``ean13`` (in-store barcode), ``png`` (preview only).
"""

from __future__ import annotations

from edge.receipt.escpos_bytes import to_escpos
from edge.receipt.layout import (
    COLUMNS,
    ENCODINGS,
    Barcode,
    Block,
    Cut,
    Feed,
    Qr,
    ReceiptMeta,
    Text,
    layout_receipt,
)
from edge.sale import Sale

__all__ = [
    "COLUMNS", "ENCODINGS", "Barcode", "Block", "Cut", "Feed", "Qr", "ReceiptMeta", "Text",
    "layout_receipt", "render_png", "render_receipt",
]


def render_receipt(sale: Sale, meta: ReceiptMeta | None = None, width: int = 58,
                   encoding: str = "gb18030") -> bytes:
    """The ESC/POS bytes of ``sale``'s receipt."""
    meta = meta or ReceiptMeta()
    return to_escpos(layout_receipt(sale, meta, width, encoding), encoding, meta.chinese_mode)


def render_png(sale: Sale, meta: ReceiptMeta | None = None, width: int = 58,
               encoding: str = "gb18030") -> bytes:
    """The PNG preview of the same receipt as ``render_receipt`` with the same arguments
    (Pillow is imported only when asked for)."""
    from edge.receipt.png import to_png

    return to_png(layout_receipt(sale, meta or ReceiptMeta(), width, encoding), width, encoding)
