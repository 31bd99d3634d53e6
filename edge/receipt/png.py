"""PNG preview of a receipt: the same blocks as the ESC/POS bytes, drawn 1 dot = 1 pixel.

For the vendor screen and for tests (a QR decoder reads the preview's QR
back).  Font A is 12 x 24 dots: each column is 12 px, a double-width
character 24 px, whatever the font's own advance, so the picture lines up
exactly as the paper does.  The CJK font is WenQuanYi Micro Hei (installed by
``scripts/bootstrap.sh``); without it the preview still renders, with a
warning, but Chinese shows as boxes.
"""

from __future__ import annotations

import functools
import io
import logging
import pathlib
from collections.abc import Sequence

import qrcode
from PIL import Image, ImageDraw, ImageFont

from edge.receipt.layout import DOTS, Barcode, Block, Cut, Feed, Qr, Text, char_width

logger = logging.getLogger(__name__)

COLUMN_PX = 12
LINE_PX = 30  # 24-dot characters plus the printer's default line spacing
_FONT_PATHS = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/wqy-microhei/wqy-microhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
)
_L_CODES = ("0001101", "0011001", "0010011", "0111101", "0100011",
            "0110001", "0101111", "0111011", "0110111", "0001011")
_PARITY = ("LLLLLL", "LLGLGG", "LLGGLG", "LLGGGL", "LGLLGG",
           "LGGLLG", "LGGGLL", "LGLGLG", "LGLGGL", "LGGLGL")

FontType = ImageFont.FreeTypeFont | ImageFont.ImageFont


@functools.cache
def _fonts() -> tuple[FontType, FontType]:
    """(font for double-width characters at 24 px, font for ASCII fitting 12 px)."""
    for candidate in _FONT_PATHS:
        if pathlib.Path(candidate).exists():
            # Face 1 of WenQuanYi's collection is its monospaced one: ASCII is then
            # 0.6 em wide, i.e. 12 px at 20 px, exactly one column of font A.
            mono = 1 if "wqy" in candidate else 0
            return (ImageFont.truetype(candidate, 24, index=0),
                    ImageFont.truetype(candidate, 20, index=mono))
    logger.warning("no CJK font found: the receipt preview shows Chinese as boxes")
    return ImageFont.load_default(24), ImageFont.load_default(20)


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
def _glyph(char: str, bold: bool) -> Image.Image:
    """One character cell, drawn once: glyph rendering is most of a preview's time."""
    wide, narrow = _fonts()
    width = char_width(char)
    cell = Image.new("L", (width * COLUMN_PX, LINE_PX), 255)
    if char != " ":
        font, dy = (wide, 2) if width == 2 else (narrow, 4)
        draw = ImageDraw.Draw(cell)
        for dx in ((0, 1) if bold else (0,)):
            draw.text((dx, dy), char, font=font, fill=0)
    return cell


def _text_image(text: str, bold: bool) -> Image.Image:
    columns = sum(char_width(c) for c in text)
    image = Image.new("L", (max(1, columns * COLUMN_PX), LINE_PX), 255)
    x = 0
    for char in text:
        cell = _glyph(char, bold)
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
    digits = _text_image(code, bold=False)
    image.paste(digits, ((image.width - digits.width) // 2, height + 8))
    return image


def to_png(blocks: Sequence[Block], width: int = 58) -> bytes:
    """Draw the blocks on a paper ``DOTS[width]`` pixels wide; return PNG bytes."""
    paper = DOTS[width]
    pieces: list[tuple[Image.Image, bool]] = []  # (image, centred)
    for block in blocks:
        if isinstance(block, Text):
            image = _text_image(block.text, block.bold)
            scale_x, scale_y = {"normal": (1, 1), "tall": (1, 2), "big": (2, 2)}[block.size]
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
