"""edge.receipt: exact text and bytes read back by the test decoder, QR, EAN-13, PNG, refusals."""

from __future__ import annotations

import hashlib
import pathlib
import sys
import urllib.parse

import cv2
import numpy as np
import pytest
from escpos.constants import QR_ECLEVEL_M
from escpos.printer import Dummy
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from edge import PricingError, ReceiptError, TraceCodeError
from edge.integrity import public_key_b64, verify_sale
from edge.legal import LEGAL_FILES, LEGAL_VERSION, legal_checksum, legal_id
from edge.receipt import COLUMNS, ReceiptMeta, layout_receipt, render_png, render_receipt
from edge.receipt.ean13 import (
    ean13_check_digit,
    in_store_ean13,
    is_valid_ean13,
    receipt_ean13,
)
from edge.receipt.escpos_bytes import native_qr
from edge.receipt.layout import Qr, qr_version, text_width, wrap
from edge.receipt.png import ean13_modules
from edge.sale import Sale
from edge.tracecode import parse_trace_code

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from escpos_decode import decode  # noqa: E402
from receipt_samples import EGGS, KEY, PORK, make_sale, sale_dict  # noqa: E402

META = ReceiptMeta(market_name="平顺菜市场", stall_name="老王蔬菜", vendor="王建国",
                   footer=("市场监管投诉 12315",))
SIGNATURE = make_sale().signature
URL = f"http://127.0.0.1:8000/t/31010600100100000425?s={SIGNATURE}"
CHECK = legal_checksum()[:8]


def test_58mm_chinese_receipt_reads_back_exactly() -> None:
    doc = decode(render_receipt(make_sale(), META, 58, "gb18030"))
    assert doc.text == [
        "   平顺菜市场",
        "摊位 S01 老王蔬菜  摊主 王建国",
        "时间 2026-11-28 08:15:02",
        "小票号 0000042",
        "-" * 32,
        "品名 重量x单价              金额",
        "1. 西红柿 (1001)",
        "  0.512kg x ￥3.00/500g   ￥3.07",
        "  批次 B20261127-07",
        "2. 鸡蛋 (2001)",
        "  6个 x ￥0.80/个         ￥4.80",
        "-" * 32,
        "共2项",
        "合计                      ￥7.87",
        "计价规则：金额四舍五入到分",
        "追溯码 31010600100100000425",
        "       扫码查验真伪与溯源",
        f"计价软件 v{LEGAL_VERSION} 校验码 {CHECK}",
        "市场监管投诉 12315",
    ]
    assert all(line.columns <= 32 for line in doc.lines)
    title, total = doc.lines[0], doc.lines[13]
    assert (title.bold, title.width, title.height) == (True, 2, 2)
    assert (total.bold, total.width, total.height) == (True, 1, 2)
    assert not doc.lines[1].bold and doc.lines[1].width == 1
    assert [(q.data, q.model, q.module, q.level) for q in doc.qr] == [(URL, 2, 6, "M")]
    assert doc.barcodes == [] and doc.cuts == 1 and doc.feeds == 4
    assert doc.events[0] == "init" and doc.events[-1] == "cut"
    assert "￥" in "".join(doc.text) and "¥" not in "".join(doc.text)
    assert "斤" not in "".join(doc.text) and "两" not in "".join(doc.text)


def test_exact_bytes_of_the_start_the_qr_and_the_end() -> None:
    data = render_receipt(make_sale(), META, 58, "gb18030")
    assert data.startswith(
        b"\x1b@" + b"\x1bE\x01\x1d!\x11" + "   平顺菜市场".encode("gb18030")
        + b"\n\x1d!\x00\x1bE\x00" + "摊位 S01".encode("gb18030")
    )
    # ￥ is A3 A4 in GB18030/GBK (U+00A5 would be 81 30 84 36).
    assert "￥3.07".encode("gb18030") == b"\xa3\xa43.07"
    assert b"\xa3\xa43.07\n" in data and b"\x810\x846" not in data
    assert b"\x1ba\x01" + native_qr(URL, 6) + b"\x1ba\x00" in data
    assert data.endswith(b"\x1bd\x04\x1dV\x01")


def test_native_qr_bytes_are_what_python_escpos_sends() -> None:
    printer = Dummy()
    printer.qr(URL, native=True, size=6, ec=QR_ECLEVEL_M)
    assert native_qr(URL, 6) == printer.output
    assert native_qr("AB", 3) == (
        b"\x1d(k\x04\x001A2\x00" b"\x1d(k\x03\x001C\x03" b"\x1d(k\x03\x001E1"
        b"\x1d(k\x05\x001P0AB" b"\x1d(k\x03\x001Q0"
    )


def test_80mm_layout_uses_48_columns() -> None:
    doc = decode(render_receipt(make_sale(), META, 80))
    assert doc.text[5] == "品名 重量x单价" + " " * 30 + "金额"
    assert doc.text[7] == "  0.512kg x ￥3.00/500g" + " " * 19 + "￥3.07"
    assert max(line.columns for line in doc.lines) == 48 == COLUMNS[80]


def test_english_receipt() -> None:
    meta = ReceiptMeta(market_name="平顺菜市场", market_name_en="Pingshun Market",
                       language="en")
    doc = decode(render_receipt(make_sale([PORK, EGGS]), meta, 58))
    assert doc.text == [
        "Pingshun Market",
        "Stall S01",
        "Time 2026-11-28 08:15:02",
        "Receipt 0000042",
        "-" * 32,
        "Item weight x price       Amount",
        "1. Pork belly (3001)",
        "  1.234kg x ￥36.00/kg   ￥44.42",
        "2. 鸡蛋 (2001)",  # no English name given: the Chinese one
        "  6pc x ￥0.80/pc         ￥4.80",
        "-" * 32,
        "2 item(s)",
        "TOTAL                    ￥49.22",
        "Rounding: each amount half-up to",
        "0.01 yuan",
        "Trace 31010600100100000425",
        "    Scan to verify and trace",
        f"Software v{LEGAL_VERSION} check {CHECK}",
    ]


def test_shopper_friendly_rule_is_printed_and_enforced() -> None:
    sale = make_sale(rule="down-jiao")
    meta = META.model_copy(update={"rule": "down-jiao"})
    doc = decode(render_receipt(sale, meta))
    assert "  0.512kg x ￥3.00/500g   ￥3.00" in doc.text
    assert "合计                      ￥7.80" in doc.text
    assert doc.text[14:16] == ["计价规则：金额向下取整到角（让利", "顾客）"]
    # The same sale under the legal default does not add up: refused.
    with pytest.raises(PricingError, match=r"line 1 \(1001 西红柿\): amount_fen 300 but"):
        render_receipt(sale, META)


def test_gbk_and_gb18030_and_chinese_mode() -> None:
    rare = {**EGGS, "name": "𠮷野家¥饭团"}  # U+20BB7 is outside GBK
    sale = make_sale([rare])
    full = decode(render_receipt(sale, META, 58, "gb18030"))
    assert "1. 𠮷野家￥饭团 (2001)" in full.text
    gbk_bytes = render_receipt(sale, META, 58, "gbk")
    assert "1. ?野家￥饭团 (2001)" in decode(gbk_bytes, "gbk").text
    moded = render_receipt(make_sale(), META.model_copy(update={"chinese_mode": True}))
    assert moded.startswith(b"\x1b@\x1c&") and moded.endswith(b"\x1dV\x01\x1c.")
    assert decode(moded).events[1] == "FS &"
    with pytest.raises(ReceiptError, match="encoding must be one of"):
        render_receipt(make_sale(), META, 58, "utf-8")


def test_control_characters_in_names_cannot_inject_commands() -> None:
    sneaky = {**EGGS, "name": "葱\x1bd\x7f\x1dV\x01"}
    doc = decode(render_receipt(make_sale([sneaky]), META))
    assert "1. 葱dV (2001)" in doc.text and doc.cuts == 1


def test_reprint_says_so_on_the_paper() -> None:
    doc = decode(render_receipt(make_sale(), META.model_copy(update={"reprint": 2})))
    assert doc.text[1] == "       *** 重印 第2次 ***" and doc.lines[1].bold
    assert doc.text[-1] == "       *** 重印 第2次 ***"
    assert "重印" not in "".join(decode(render_receipt(make_sale(), META)).text)


def test_unsigned_sale_has_no_signature_in_its_qr() -> None:
    doc = decode(render_receipt(make_sale(signed=False), META))
    assert doc.qr[0].data == "http://127.0.0.1:8000/t/31010600100100000425"


def test_long_names_and_amounts_wrap_within_the_paper() -> None:
    long_line = {"plu": "9", "name": "新疆阿克苏冰糖心红富士苹果特级大果", "weight_g": 9_999,
                 "unit_price_fen": 4_999_999, "price_unit": "500g"}
    doc = decode(render_receipt(make_sale([long_line]), META))
    assert doc.text[6:9] == [
        "1. 新疆阿克苏冰糖心红富士苹果特",
        "级大果 (9)",
        "  9.999kg x ￥49999.99/500g",
    ]
    assert doc.text[9] == " " * 21 + "￥999899.80"  # 9.999 kg x 99999.98 元/kg = 999899.80002


def test_refusals_write_nothing() -> None:
    bad_amount = Sale.model_validate(sale_dict(lines=None) | {
        "lines": [{**sale_dict()["lines"][0], "amount_fen": 308}], "total_fen": 308})
    with pytest.raises(PricingError, match="amount_fen 308 but 512 g x 300 分/500g = 307 分"):
        render_receipt(bad_amount, META)
    # Sale itself may refuse this too; model_copy skips validation, so render's own check
    # is what is tested here.
    wrong_stall = make_sale(signed=False).model_copy(update={"stall_id": "S02"})
    with pytest.raises(TraceCodeError, match="names stall 1, the sale is S02"):
        render_receipt(wrong_stall, META)
    with pytest.raises(ReceiptError, match="58 or 80"):
        render_receipt(make_sale(), META, 76)
    with pytest.raises(TraceCodeError, match="base URL"):
        render_receipt(make_sale(), META.model_copy(update={"base_url": "javascript:alert(1)"}))


def test_meta_validation() -> None:
    with pytest.raises(ValidationError, match="base_url"):
        ReceiptMeta(base_url="javascript:alert(1)")
    with pytest.raises(ValidationError, match="ean13_prefix"):
        ReceiptMeta(ean13_prefix="30")
    with pytest.raises(ValidationError, match="Extra inputs"):
        ReceiptMeta(colour="red")  # type: ignore[call-arg]


def test_qr_modules_shrink_to_fit_the_paper() -> None:
    long_base = "https://trace.example.cn/" + "m" * 170
    meta = META.model_copy(update={"base_url": long_base})
    [qr] = [b for b in layout_receipt(make_sale(), meta, 58) if isinstance(b, Qr)]
    # 309 bytes need version 13 (69 modules) at level M: 6 dots would be 414 > 384.
    assert (len(qr.data), qr_version(qr.data), qr.size) == (309, 13, 5)
    [wide] = [b for b in layout_receipt(make_sale(), meta, 80) if isinstance(b, Qr)]
    assert wide.size == 6
    assert qrcode_version(qr.data) == 13  # the table agrees with the qrcode library


def qrcode_version(data: str) -> int:
    import qrcode

    code = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M)
    code.add_data(data)
    code.make(fit=True)
    return int(code.version)


def test_ean13_check_digits() -> None:
    assert ean13_check_digit("400638133393") == 1  # GS1's worked example 4006381333931
    assert ean13_check_digit("590123412345") == 7
    assert is_valid_ean13("4006381333931") and not is_valid_ean13("4006381333932")
    assert in_store_ean13("23", 1, 787) == "2300001007878"
    assert receipt_ean13(1, 100_000) is None
    with pytest.raises(ReceiptError, match="prefix must be 20..29"):
        in_store_ean13("30", 1, 1)
    with pytest.raises(ReceiptError, match="item must be 0..99999"):
        in_store_ean13("21", 100_000, 1)


def test_receipt_barcode_bytes() -> None:
    doc = decode(render_receipt(make_sale(), META.model_copy(update={"ean13": True})))
    assert [(b.system, b.data, b.height, b.module, b.hri) for b in doc.barcodes] == [
        (67, "2300001007878", 80, 2, 2)]
    assert doc.events.index("qr") < doc.events.index("barcode")
    big = make_sale([{**PORK, "weight_g": 100_000}])  # 3600.00 元: no 5-digit price field
    assert decode(render_receipt(big, META.model_copy(update={"ean13": True}))).barcodes == []


def _gray(png: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)


# EAN-13 left-half codes (GS1 General Specifications, figure 5.2.2.4-1), by digit: L, G.
GS1_LEFT = {"0001101": ("0", "L"), "0011001": ("1", "L"), "0010011": ("2", "L"),
            "0111101": ("3", "L"), "0100011": ("4", "L"), "0110001": ("5", "L"),
            "0101111": ("6", "L"), "0111011": ("7", "L"), "0110111": ("8", "L"),
            "0001011": ("9", "L"), "0100111": ("0", "G"), "0110011": ("1", "G"),
            "0011011": ("2", "G"), "0100001": ("3", "G"), "0011101": ("4", "G"),
            "0111001": ("5", "G"), "0000101": ("6", "G"), "0010001": ("7", "G"),
            "0001001": ("8", "G"), "0010111": ("9", "G")}
GS1_RIGHT = {"1110010": "0", "1100110": "1", "1101100": "2", "1000010": "3", "1011100": "4",
             "1001110": "5", "1010000": "6", "1000100": "7", "1001000": "8", "1110100": "9"}
GS1_FIRST = {"LLLLLL": "0", "LLGLGG": "1", "LLGGLG": "2", "LLGGGL": "3", "LGLLGG": "4",
             "LGGLLG": "5", "LGGGLL": "6", "LGLGLG": "7", "LGLGGL": "8", "LGGLGL": "9"}


def read_ean13(row: np.ndarray, module: int) -> str:
    """Decode one pixel row crossing an EAN-13 symbol (independent of edge.receipt.png)."""
    dark = np.flatnonzero(row < 128)
    bits = "".join("1" if row[x] < 128 else "0"
                   for x in range(dark[0], dark[-1] + 1, module))
    assert len(bits) == 95 and bits[:3] == "101" and bits[45:50] == "01010"
    left = [GS1_LEFT[bits[3 + 7 * i:10 + 7 * i]] for i in range(6)]
    right = [GS1_RIGHT[bits[50 + 7 * i:57 + 7 * i]] for i in range(6)]
    return GS1_FIRST["".join(p for _, p in left)] + "".join(d for d, _ in left) + "".join(right)


def test_png_preview_qr_and_barcode_decode() -> None:
    image = _gray(render_png(make_sale(), META.model_copy(update={"ean13": True}), 58))
    assert image.shape[1] == 384
    # The Aruco-based detector finds a QR among text lines; the classic one often does not.
    data, _, _ = cv2.QRCodeDetectorAruco().detectAndDecode(image)
    assert data == URL
    # What the trace page gets from a scan proves the receipt: code and signature.
    parts = urllib.parse.urlsplit(data)
    code = parts.path.removeprefix("/t/")
    signature = urllib.parse.parse_qs(parts.query)["s"][0]
    assert parse_trace_code(code).receipt_no == 42
    assert verify_sale(make_sale().to_json() | {"signature": signature}, public_key_b64(KEY))
    # The barcode: the rows crossing exactly 30 bars, read back by the GS1 tables.
    rows = [y for y in range(image.shape[0])
            if np.count_nonzero(np.diff((image[y] < 128).astype(np.int8)) == 1) == 30]
    assert len(rows) >= 70
    assert read_ean13(image[rows[len(rows) // 2]], module=2) == "2300001007878"
    wide = _gray(render_png(make_sale(), META, 80))
    assert wide.shape[1] == 576
    assert cv2.QRCodeDetectorAruco().detectAndDecode(wide)[0] == URL


def test_ean13_modules_match_the_standard() -> None:
    bits = ean13_modules("4006381333931")
    assert len(bits) == 95 and bits.startswith("101") and bits.endswith("101")
    assert bits[45:50] == "01010"
    # First digit 4 -> parities LGLLGG: "0" in L, then "0" in G.
    assert bits[3:10] == "0001101" and bits[10:17] == "0100111"


def test_wrap() -> None:
    assert wrap("abc def ghi", 7) == ["abc def", "ghi"]
    assert wrap("计价规则：金额", 6) == ["计价规", "则：金", "额"]
    assert wrap("x" * 10, 4) == ["xxxx", "xxxx", "xx"]
    assert wrap("", 4) == [""]


def test_legal_checksum_covers_the_legal_files() -> None:
    edge_dir = pathlib.Path(__file__).resolve().parents[2] / "edge"
    digest = hashlib.sha256()
    for name in LEGAL_FILES:
        digest.update(name.encode() + b"\0" + (edge_dir / name).read_bytes() + b"\0")
    assert legal_checksum() == digest.hexdigest()
    assert {"pricing.py", "tracecode.py", "integrity.py", "sale.py",
            "receipt/layout.py", "receipt/escpos_bytes.py"} <= set(LEGAL_FILES)
    assert legal_id() == f"{LEGAL_VERSION} {CHECK}"


# Any character, and often those Unicode calls narrow but a GBK printer prints double.
name_chars = st.one_of(st.characters(codec="utf-8", exclude_categories=("Cs",)),
                       st.sampled_from("·—×℃“”éèîü¥￥𠮷西 a1"))


@settings(max_examples=60, deadline=None)
@given(
    names=st.lists(st.text(name_chars, min_size=1, max_size=40), min_size=1, max_size=6),
    weights=st.lists(st.integers(1, 100_000), min_size=6, max_size=6),
    prices=st.lists(st.integers(1, 100_000), min_size=6, max_size=6),
    width=st.sampled_from([58, 80]),
    encoding=st.sampled_from(["gb18030", "gbk"]),
)
def test_any_sale_reads_back_as_laid_out(names: list[str], weights: list[int],
                                         prices: list[int], width: int, encoding: str) -> None:
    lines = [{"plu": str(i + 1), "name": name, "weight_g": weights[i],
              "unit_price_fen": prices[i], "price_unit": "kg"} for i, name in enumerate(names)]
    sale = make_sale(lines)
    laid_out = layout_receipt(sale, META, width, encoding)
    doc = decode(render_receipt(sale, META, width, encoding), encoding)
    expected = [b.text for b in laid_out if hasattr(b, "text")]
    assert doc.text == expected
    assert [q.data for q in doc.qr] == [b.data for b in laid_out if isinstance(b, Qr)]
    columns = COLUMNS[width]
    for line in doc.lines:  # columns counted from the bytes, as the printer does
        assert line.columns * line.width <= columns
        assert line.columns == text_width(line.text, encoding)
