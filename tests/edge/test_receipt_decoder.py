"""The test decoder itself, checked against python-escpos as an independent encoder."""

from __future__ import annotations

import pathlib
import sys

import pytest
from escpos.constants import QR_ECLEVEL_H
from escpos.printer import Dummy

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from escpos_decode import BarcodePrint, DecodeError, QrCode, decode  # noqa: E402


def test_reads_what_python_escpos_writes() -> None:
    printer = Dummy()
    printer.set(align="center", bold=True, double_height=True, double_width=True)
    printer.textln("ABC")
    printer.set_with_default()
    printer._raw("西红柿 ￥3.07\n".encode("gb18030"))
    printer.qr("hello", native=True, size=4, ec=QR_ECLEVEL_H)
    printer.barcode("4006381333931", "EAN13", function_type="B")
    printer.cut()
    doc = decode(printer.output)
    assert [(line.text, line.bold, line.width, line.height, line.align)
            for line in doc.lines] == [("ABC", True, 2, 2, 1), ("西红柿 ￥3.07", False, 1, 1, 0)]
    assert doc.qr == [QrCode("hello", model=2, module=4, level="H")]
    assert doc.barcodes == [BarcodePrint(67, "4006381333931", height=64, module=3, hri=2)]
    assert (doc.feeds, doc.cuts) == (6, 1)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"abc", "text not ended by LF"),
        (b"\x1b", "truncated command"),
        (b"\x1bZ\x00", "unknown ESC"),
        (b"\x07\n", "stray control byte 0x07"),
        (b"\x1d(k\x03\x001Q0", "QR print with no stored data"),
        (b"\x1d(k\x05\x000P0ab", "2D code type b'0' is not QR"),
    ],
)
def test_refuses_what_it_does_not_know(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode(data)
