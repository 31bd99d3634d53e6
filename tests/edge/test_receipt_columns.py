"""Receipt columns as the printer counts them (issue 16, item 8).

A GBK / GB18030 printer gives a one-byte (ASCII) code one 12-dot column and any
multi-byte code a 24-dot double column, so ``·`` ``—`` ``×`` ``℃`` ``“”`` and
accented Latin take two columns although Unicode calls them narrow.  The
layout, the ESC/POS bytes (read back by our decoder and by npm's ``npos``,
which nobody here wrote) and the PNG preview must agree column for column.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from edge import ReceiptError
from edge.pricing import RULE_NOTES
from edge.receipt import COLUMNS, ReceiptMeta, Text, layout_receipt, render_png, render_receipt
from edge.receipt.layout import LABELS, char_width, clean, text_width, wrap
from edge.receipt.png import LINE_PX, find_cjk_faces, printed_rows, to_png

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from escpos_decode import decode, printed_columns  # noqa: E402
from receipt_samples import EGGS, TOMATO, make_sale  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
NPOS = HERE / "npos_decoder"
# 3 + 15 x 2 = 33 columns if ``·`` counts one: the overrun on a 32-column roll.
DOTTED = {**TOMATO, "name": "西红柿·普罗旺斯沙瓤大果自然熟透"}
META = ReceiptMeta(market_name="平顺菜市场", stall_name="老王·蔬菜", vendor="王建国",
                   footer=("冷藏2-8℃ “当日鲜” — 谢谢惠顾", "Crème fraîche 2×200g"))
ENCODINGS = ("gb18030", "gbk")


def columns_of(text: str, encoding: str) -> int:
    """The printer's columns of decoded text, from each character's code length alone."""
    return sum(1 if len(c.encode(encoding)) == 1 else 2 for c in text)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_the_receipt_with_a_middle_dot_fits_its_paper(encoding: str) -> None:
    doc = decode(render_receipt(make_sale([DOTTED, EGGS]), META, 58, encoding), encoding)
    assert doc.text[1] == "摊位 S01 老王·蔬菜  摊主 王建国"
    assert doc.text[6:8] == ["1. 西红柿·普罗旺斯沙瓤大果自然", "熟透 (1001)"]
    assert doc.lines[6].columns == 31  # 熟 would have been columns 32-33
    crème = "Crème fraîche 2×200g" if encoding == "gb18030" else "Crème fra?che 2×200g"
    assert doc.text[-2:] == ["冷藏2-8℃ “当日鲜” — 谢谢惠顾", crème]
    # 32 columns exactly (Unicode's widths said 28); î is a double cell or a '?'.
    assert [line.columns for line in doc.lines[-2:]] == [32, 23 if encoding == "gb18030" else 22]
    for line in doc.lines:
        assert line.columns * line.width <= COLUMNS[58], line


def test_80mm_columns_are_counted_the_same_way() -> None:
    doc = decode(render_receipt(make_sale([DOTTED, EGGS]), META, 80))
    assert doc.text[6] == "1. 西红柿·普罗旺斯沙瓤大果自然熟透 (1001)"
    assert doc.text[-2] == "冷藏2-8℃ “当日鲜” — 谢谢惠顾"
    assert max(line.columns * line.width for line in doc.lines) <= 48


def test_char_width_is_the_printers() -> None:
    for char in "·—×℃“”éü￥西":
        assert char_width(char, "gb18030") == char_width(char, "gbk") == 2, char
    assert char_width("a") == char_width(" ") == 1
    # Outside GBK: four bytes in GB18030 (still one double cell), '?' in GBK.
    assert [char_width(c, "gb18030") for c in "î𠮷"] == [2, 2]
    assert [char_width(c, "gbk") for c in "î𠮷"] == [1, 1]
    assert text_width("2×200g ℃", "gbk") == 10
    assert clean("𠮷野家 fraîche", "gbk") == "?野家 fra?che"
    assert clean("𠮷野家 fraîche", "gb18030") == "𠮷野家 fraîche"


def test_words_with_accents_stay_whole_and_wrap_by_printer_columns() -> None:
    # "Crème" is 6 printer columns (è is a double-width code) and is not broken at the è.
    assert wrap("Crème fraîche 2×200g", 10) == ["Crème", "fraîche", "2×200g"]
    assert wrap("··········", 8) == ["····", "····", "··"]
    # A word longer than what an indent leaves is split at the paper's edge.
    assert wrap("  ·" + "x" * 30, 32) == ["  ·" + "x" * 28, "xx"]


def test_fixed_receipt_text_is_printable_in_gbk() -> None:
    # The layout replaces what the encoding lacks only in the sale's and settings' text.
    fixed = [*(v for labels in LABELS.values() for v in labels.values()),
             *(note for notes in RULE_NOTES.values() for note in notes)]
    for text in fixed:
        text.encode("gbk")


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_unencodable_characters_are_the_same_question_mark_everywhere(encoding: str) -> None:
    sale = make_sale([{**EGGS, "name": "𠮷野家 fraîche"}])
    texts = [b.text for b in layout_receipt(sale, META, 58, encoding) if isinstance(b, Text)]
    doc = decode(render_receipt(sale, META, 58, encoding), encoding)
    assert doc.text == texts
    expected = "1. 𠮷野家 fraîche (2001)" if encoding == "gb18030" else "1. ?野家 fra?che (2001)"
    assert expected in texts
    line = doc.lines[texts.index(expected)]
    assert line.columns == text_width(expected, encoding) == columns_of(expected, encoding)


def test_the_test_decoder_counts_columns_from_bytes() -> None:
    assert printed_columns(b"ab") == 2
    assert printed_columns("·".encode("gbk")) == 2
    assert printed_columns("𠮷a".encode("gb18030")) == 3  # a four-byte code, then ASCII


# -- an ESC/POS parser nobody here wrote: npm's npos ---------------------------------------


def npos_decode(data: bytes, encoding: str, tmp_path: pathlib.Path) -> dict:
    node = shutil.which("node")
    if node is None or not (NPOS / "node_modules" / "npos").is_dir():
        pytest.fail("the outside decoder is not installed: scripts/bootstrap.sh runs "
                    "`npm ci` in tests/edge/npos_decoder (needs node and npm)")
    path = tmp_path / "receipt.bin"
    path.write_bytes(data)
    done = subprocess.run([node, str(NPOS / "decode.js"), str(path), encoding],
                          capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_npos_reads_the_same_lines_within_the_paper(encoding: str,
                                                    tmp_path: pathlib.Path) -> None:
    meta = META.model_copy(update={"ean13": True, "chinese_mode": True})
    sale = make_sale([DOTTED, {**EGGS, "name": "𠮷野家 fraîche"}])
    data = render_receipt(sale, meta, 58, encoding)
    outside = npos_decode(data, encoding, tmp_path)
    assert "error" not in outside and outside["unprinted"] == ""
    assert outside["commands"][:2] == ["ESC @", "FS &"]
    assert outside["commands"].count("GS (k") == 5 and "GS k" in outside["commands"]
    ours = decode(data, encoding)
    assert [line["text"] for line in outside["lines"]] == ours.text
    assert [(line["width"], line["height"]) for line in outside["lines"]] == [
        (line.width, line.height) for line in ours.lines]
    widths = [columns_of(line["text"], encoding) * line["width"] for line in outside["lines"]]
    assert max(widths) == 32 and all(width <= 32 for width in widths)
    assert "1. 西红柿·普罗旺斯沙瓤大果自然" in ours.text


# -- the PNG preview draws each character in its printer cell ------------------------------


def _gray(png: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)


def _bars(band: np.ndarray) -> list[float]:
    """x centres of the '|' glyphs in a text band: columns of 19 or more dark pixels."""
    tall = np.flatnonzero((band < 128).sum(axis=0) >= 19)
    runs = np.split(tall, np.flatnonzero(np.diff(tall) > 1) + 1)
    return [float(run.mean()) for run in runs if len(run)]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_preview_cells_are_the_encoded_columns(encoding: str) -> None:
    text = "|·|—|×|℃|“|”|é|î|a|𠮷|"
    image = _gray(to_png([Text(text)], 58, encoding))
    assert image.shape == (LINE_PX, 384)  # one row: 31 or 29 columns fit the paper
    printed = clean(text, encoding)  # î and 𠮷 are '?' in GBK
    expected, column = [], 0
    for char in printed:
        if char == "|":
            expected.append(column * 12 + 6)
        column += 1 if len(char.encode(encoding)) == 1 else 2
    assert len(expected) == 11
    assert _bars(image) == pytest.approx(expected, abs=1.5)
    ink = np.flatnonzero((image < 128).any(axis=0))
    assert ink[-1] < column * 12  # the line's drawn width is its encoded columns


def test_a_glyph_the_cjk_font_leaves_blank_is_drawn_from_another_font() -> None:
    # WenQuanYi Micro Hei lists ℃ in its character set but draws nothing for it.
    image = _gray(to_png([Text("℃")], 58))
    ink = np.flatnonzero((image < 128).any(axis=0))
    assert ink.size and ink[-1] < 24  # drawn, inside its double cell


def test_preview_overruns_as_the_paper_does() -> None:
    image = _gray(to_png([Text("·" * 16)], 58))
    ink = np.flatnonzero((image < 128).any(axis=0))
    assert image.shape[0] == LINE_PX and 360 <= ink[-1] < 384  # 16 double cells fill 384 dots
    # One more does not fit: the printer prints it at the start of the next line.
    image = _gray(to_png([Text("·" * 17)], 58))
    assert image.shape[0] == 2 * LINE_PX
    second = np.flatnonzero((image[LINE_PX:] < 128).any(axis=0))
    assert second.size and second[-1] < 24  # the 17th · is in the first cell of row 2
    assert printed_rows("a" * 31 + "西", 32) == ["a" * 31, "西"]
    assert printed_rows("平顺菜市场" * 4, 16) == ["平顺菜市场平顺菜", "市场平顺菜市场平", "顺菜市场"]
    big = _gray(to_png([Text("平顺菜市场" * 4, size="big")], 58))
    assert big.shape[0] == 3 * 2 * LINE_PX  # 40 columns at double width: rows of 16


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_the_receipt_preview_has_no_overrun_row(encoding: str) -> None:
    sale = make_sale([DOTTED, EGGS])
    blocks = layout_receipt(sale, META, 58, encoding)
    texts = [b for b in blocks if isinstance(b, Text)]
    # Each text block is one row in the preview, as on paper; a wrapped overrun would add one.
    rows = sum({"normal": 1, "tall": 2, "big": 2}[b.size] for b in texts)
    alone = _gray(to_png(texts, 58, encoding))
    assert alone.shape[0] == rows * LINE_PX
    full = _gray(render_png(sale, META, 58, encoding))
    assert full.shape[1] == 384


# -- fonts: whatever CJK font fontconfig knows ---------------------------------------------


def _fontconfig_with(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
                     fonts: dict[str, str]) -> pathlib.Path:
    folder = tmp_path / "fonts"
    folder.mkdir()
    for name, target in fonts.items():
        (folder / name).symlink_to(target)
    conf = tmp_path / "fonts.conf"
    conf.write_text('<?xml version="1.0"?>\n<!DOCTYPE fontconfig SYSTEM "urn:fontconfig:fonts.dtd">\n'
                    f"<fontconfig><dir>{folder}</dir><cachedir>{tmp_path / 'cache'}</cachedir>"
                    "</fontconfig>\n", encoding="utf-8")
    monkeypatch.setenv("FONTCONFIG_FILE", str(conf))
    return folder


def test_the_installed_cjk_font_is_found() -> None:
    listed = subprocess.run(["fc-list", ":lang=zh", "file"], capture_output=True, text=True,
                            check=True).stdout
    faces = find_cjk_faces()
    assert faces and all(face.path in listed for face in faces)


def test_a_cjk_font_under_any_name_is_found(tmp_path: pathlib.Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    wqy = next(face.path for face in find_cjk_faces() if "wqy" in face.path.lower())
    folder = _fontconfig_with(tmp_path, monkeypatch, {"market-font.ttc": wqy})
    faces = find_cjk_faces()
    assert {(face.path, face.index) for face in faces} == {
        (str(folder / "market-font.ttc"), 0), (str(folder / "market-font.ttc"), 1)}


def test_no_cjk_font_is_a_clear_error(tmp_path: pathlib.Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    latin = subprocess.run(["fc-match", "-f", "%{file}", "DejaVu Sans"], capture_output=True,
                           text=True, check=True).stdout
    _fontconfig_with(tmp_path, monkeypatch, {"latin.ttf": latin})
    with pytest.raises(ReceiptError, match=r"needs a Chinese font, and fontconfig knows none "
                                           r"\(fc-list :lang=zh lists nothing\): install one"):
        find_cjk_faces()
