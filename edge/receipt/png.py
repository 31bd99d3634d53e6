"""PNG preview of a receipt: the same blocks as the ESC/POS bytes, drawn 1 dot = 1 pixel.

For the vendor screen and for tests (a QR decoder reads the preview's QR
back).  Font A is 12 x 24 dots, and each character takes the cell the printer
gives it: 12 px for a one-byte code, 24 px for a multi-byte code in the
receipt's encoding (``layout.char_width``), whatever the font's own advance, so
the picture lines up exactly as the paper does.  A line longer than the paper
(the layout never makes one, but blocks built elsewhere may) wraps where the
printer wraps it: a character that does not fit the rest of the line starts
the next one.  Characters the encoding cannot encode show as ``?``, as printed.

The fonts are whichever CJK font fontconfig knows (``fc-list :lang=zh``), in
fontconfig's order of preference (``fc-match -s``): the first draws the
double-width cells, the first whose ASCII is monospaced the single-width ones
(WenQuanYi Micro Hei and its Mono face, from ``scripts/bootstrap.sh``).
Without a CJK font the preview is refused with a ReceiptError that says what
to install, rather than drawn with boxes.
"""

from __future__ import annotations

import functools
import io
import logging
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

import qrcode
from PIL import Image, ImageDraw, ImageFont

from edge import ReceiptError
from edge.receipt.layout import (
    COLUMNS,
    DOTS,
    Barcode,
    Block,
    Cut,
    Feed,
    Qr,
    Text,
    char_width,
    check_encoding,
    printable,
)

logger = logging.getLogger(__name__)

COLUMN_PX = 12
LINE_PX = 30  # 24-dot characters plus the printer's default line spacing
WIDE_PX, NARROW_PX = 24, 20  # a Han glyph fills 24 px; monospaced ASCII at 20 px is 12 px
_INSTALL_HINT = "install one, e.g. the Debian package fonts-wqy-microhei or fonts-noto-cjk"
_L_CODES = ("0001101", "0011001", "0010011", "0111101", "0100011",
            "0110001", "0101111", "0111011", "0110111", "0001011")
_PARITY = ("LLLLLL", "LLGLGG", "LLGGLG", "LLGGGL", "LGLLGG",
           "LGGLLG", "LGGGLL", "LGLGLG", "LGLGGL", "LGGLGL")


@dataclass(frozen=True, slots=True)
class FontFace:
    """One face of a font file, as fontconfig names it."""

    path: str
    index: int
    family: str


def _fontconfig(*args: str) -> list[FontFace]:
    """The faces an ``fc-list`` / ``fc-match`` command line prints, in its order."""
    tool = shutil.which(args[0])
    if tool is None:
        raise ReceiptError(f"the receipt preview finds its Chinese font with fontconfig, but "
                           f"{args[0]} is not installed (Debian package fontconfig)")
    try:
        done = subprocess.run([tool, "--format", "%{file}\t%{index}\t%{family[0]}\n", *args[1:]],
                              capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ReceiptError(f"{' '.join(args)} failed: {exc}") from exc
    faces = []
    for row in done.stdout.splitlines():
        path, index, family = (row.split("\t") + ["", "", ""])[:3]
        if path and index.isdigit():
            faces.append(FontFace(path, int(index), family))
    return faces


def find_cjk_faces() -> list[FontFace]:
    """Every installed face that covers Chinese, best first; ReceiptError if there is none.

    ``fc-list :lang=zh`` says which faces cover Chinese; ``fc-match -s :lang=zh``
    ranks them as this machine's font settings prefer.
    """
    chinese = _fontconfig("fc-list", ":lang=zh")
    if not chinese:
        raise ReceiptError("the receipt preview needs a Chinese font, and fontconfig knows none "
                           f"(fc-list :lang=zh lists nothing): {_INSTALL_HINT}")
    rank = {face: n for n, face in enumerate(_fontconfig("fc-match", "-s", ":lang=zh"))}
    return sorted(chinese, key=lambda face: (rank.get(face, len(rank)), face.path, face.index))


def _load(face: FontFace, size: int) -> ImageFont.FreeTypeFont | None:
    try:
        return ImageFont.truetype(face.path, size, index=face.index)
    except OSError as exc:  # a format FreeType cannot read, or an unreadable file
        logger.info("font %s (face %d) cannot be loaded: %s", face.path, face.index, exc)
        return None


def _monospaced(font: ImageFont.FreeTypeFont) -> bool:
    return font.getlength("i") == font.getlength("W") == font.getlength("0")


@functools.cache
def _fonts() -> tuple[ImageFont.FreeTypeFont, ImageFont.FreeTypeFont]:
    """(font for double-width cells at 24 px, font for single-width cells at 20 px)."""
    faces = find_cjk_faces()
    wide_face = next((face for face in faces if _load(face, WIDE_PX) is not None), None)
    if wide_face is None:
        raise ReceiptError("none of the Chinese fonts fontconfig lists can be loaded "
                           f"({', '.join(sorted({face.path for face in faces}))}): "
                           f"{_INSTALL_HINT}")
    wide = _load(wide_face, WIDE_PX)
    narrow = next((font for face in faces
                   if (font := _load(face, NARROW_PX)) is not None and _monospaced(font)),
                  None) or _load(wide_face, NARROW_PX)  # proportional: glyphs centred
    assert wide is not None and narrow is not None
    logger.info("receipt preview font: %s (%s, face %d)", wide_face.family, wide_face.path,
                wide_face.index)
    return wide, narrow


def ean13_modules(code: str) -> str:
    """The 95 bars and spaces ("1"/"0") of an EAN-13 symbol."""
    first, left, right = int(code[0]), code[1:7], code[7:]
    bits = "101"
    for digit, parity in zip(left, _PARITY[first], strict=True):
        pattern = _L_CODES[int(digit)]
        if parity == "G":  # G = the R code reversed; R = L inverted
            pattern = "".join("1" if b == "0" else "0" for b in pattern)[::-1]
        bits += pattern
    bits += "01010"
    bits += "".join("".join("1" if b == "0" else "0" for b in _L_CODES[int(d)]) for d in right)
    return bits + "101"


@functools.lru_cache(maxsize=4096)
def _glyph(char: str, bold: bool, encoding: str) -> Image.Image:
    """One character cell, drawn once: glyph rendering is most of a preview's time."""
    wide, narrow = _fonts()
    columns = char_width(char, encoding)
    cell = Image.new("L", (columns * COLUMN_PX, LINE_PX), 255)
    if char.isspace():
        return cell
    font, dy = (wide, 2) if columns == 2 else (narrow, 4)
    _draw(cell, char, font, dy, bold)
    if _blank(cell):  # the CJK font has no drawing for it: another font's, if any
        fallback = _font_for(char, font.size)
        if fallback is not None:
            _draw(cell, char, fallback, dy, bold)
    return cell


def _draw(cell: Image.Image, char: str, font: ImageFont.FreeTypeFont, dy: int,
          bold: bool) -> None:
    # Centred in the cell, as the printer's Chinese font draws · or é in the middle of a
    # full-width cell (a Han glyph or monospaced ASCII fills its cell: dx = 0).
    dx = max(0, (cell.width - round(font.getlength(char))) // 2)
    draw = ImageDraw.Draw(cell)
    for bold_dx in ((0, 1) if bold else (0,)):
        draw.text((dx + bold_dx, dy), char, font=font, fill=0)


def _blank(cell: Image.Image) -> bool:
    darkest = cell.getextrema()[0]  # an "L" image: (min, max)
    return not isinstance(darkest, (int, float)) or darkest == 255


@functools.lru_cache(maxsize=256)
def _font_for(char: str, size: float) -> ImageFont.FreeTypeFont | None:
    """Another installed font that draws ``char``, for a glyph the CJK font leaves blank
    (WenQuanYi Micro Hei lists ℃ but draws nothing); asked only when that happens."""
    faces = _fontconfig("fc-match", f":charset={ord(char):x}")
    return _load(faces[0], round(size)) if faces else None


def printed_rows(text: str, columns: int, encoding: str = "gb18030") -> list[str]:
    """``text`` cut where the printer wraps a line of more than ``columns`` columns:
    a character that does not fit the rest of the line starts the next one."""
    rows, row, used = [], "", 0
    for char in text:
        width = char_width(char, encoding)
        if used + width > columns and row:
            rows.append(row)
            row, used = "", 0
        row, used = row + char, used + width
    rows.append(row)
    return rows


def _text_image(text: str, bold: bool, encoding: str) -> Image.Image:
    columns = sum(char_width(c, encoding) for c in text)
    image = Image.new("L", (max(1, columns * COLUMN_PX), LINE_PX), 255)
    x = 0
    for char in text:
        cell = _glyph(char, bold, encoding)
        image.paste(cell, (x, 0))
        x += cell.width
    return image


def _qr_image(data: str, size: int) -> Image.Image:
    code = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M,
                         box_size=size, border=4)
    code.add_data(data)
    code.make(fit=True)
    matrix = code.get_matrix()
    image = Image.new("L", (len(matrix) * size, len(matrix) * size), 255)
    draw = ImageDraw.Draw(image)
    for y, row in enumerate(matrix):
        for x, dark in enumerate(row):
            if dark:
                draw.rectangle((x * size, y * size, (x + 1) * size - 1, (y + 1) * size - 1), 0)
    return image


def _barcode_image(code: str) -> Image.Image:
    module, height = 2, 80
    bits = ean13_modules(code)
    image = Image.new("L", ((len(bits) + 20) * module, height + LINE_PX + 8), 255)
    draw = ImageDraw.Draw(image)
    for index, bit in enumerate(bits):
        if bit == "1":
            x = (index + 10) * module
            draw.rectangle((x, 4, x + module - 1, 4 + height), 0)
    digits = _text_image(code, False, "gb18030")  # digits: ASCII in both
    image.paste(digits, ((image.width - digits.width) // 2, height + 8))
    return image


def to_png(blocks: Sequence[Block], width: int = 58, encoding: str = "gb18030") -> bytes:
    """Draw the blocks on a paper ``DOTS[width]`` pixels wide, each character in the
    cell its code in ``encoding`` takes on the printer; return PNG bytes."""
    check_encoding(encoding)
    paper = DOTS[width]
    pieces: list[tuple[Image.Image, bool]] = []  # (image, centred)
    for block in blocks:
        if isinstance(block, Text):
            scale_x, scale_y = {"normal": (1, 1), "tall": (1, 2), "big": (2, 2)}[block.size]
            text = printable(block.text, encoding)
            for row in printed_rows(text, COLUMNS[width] // scale_x, encoding):
                image = _text_image(row, block.bold, encoding)
                if (scale_x, scale_y) != (1, 1):
                    image = image.resize((image.width * scale_x, image.height * scale_y),
                                         Image.Resampling.NEAREST)
                pieces.append((image, False))
        elif isinstance(block, Qr):
            pieces.append((_qr_image(block.data, block.size), True))
        elif isinstance(block, Barcode):
            pieces.append((_barcode_image(block.ean13), True))
        elif isinstance(block, Feed):
            pieces.append((Image.new("L", (1, LINE_PX * block.lines), 255), False))
        elif isinstance(block, Cut):
            cut = Image.new("L", (paper, 3), 255)
            ImageDraw.Draw(cut).line((0, 1, paper, 1), fill=128)
            pieces.append((cut, False))
    canvas = Image.new("L", (paper, sum(image.height for image, _ in pieces)), 255)
    y = 0
    for image, centred in pieces:
        canvas.paste(image, ((paper - image.width) // 2 if centred else 0, y))
        y += image.height
    out = io.BytesIO()
    canvas.save(out, format="PNG")
    return out.getvalue()
