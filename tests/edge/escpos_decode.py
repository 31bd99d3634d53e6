"""A strict ESC/POS reader for tests: bytes in, what the paper would show out.

Written from the Epson ESC/POS command reference, independently of
``edge.receipt.escpos_bytes``: every byte must belong to a known command or
to text; anything else is a ``DecodeError``, so a stray byte fails a test.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class DecodeError(ValueError):
    pass


@dataclass
class Line:
    text: str
    bold: bool = False
    width: int = 1   # character size multipliers from GS !
    height: int = 1
    align: int = 0
    columns: int = 0  # printer columns of the line's bytes (printed_columns), before width


def printed_columns(raw: bytes) -> int:
    """The columns a GBK / GB18030 printer gives these text bytes, read from the bytes
    alone: one per one-byte (ASCII) code, two per multi-byte code, i.e. a lead byte
    0x81-0xFE with one trail byte, or with three in GB18030's four-byte codes (whose
    second byte is a digit 0x30-0x39); the printer draws each from its 24-dot font."""
    columns = i = 0
    while i < len(raw):
        if raw[i] < 0x80:
            i += 1
            columns += 1
        else:
            if not 0x81 <= raw[i] <= 0xFE or i + 1 >= len(raw):
                raise DecodeError(f"byte {raw[i]:#04x} at {i} starts no GBK/GB18030 code")
            i += 4 if 0x30 <= raw[i + 1] <= 0x39 else 2
            columns += 2
    return columns


@dataclass
class QrCode:
    data: str
    model: int
    module: int
    level: str  # L M Q H


@dataclass
class BarcodePrint:
    system: int
    data: str
    height: int
    module: int
    hri: int


@dataclass
class Document:
    lines: list[Line] = field(default_factory=list)
    qr: list[QrCode] = field(default_factory=list)
    barcodes: list[BarcodePrint] = field(default_factory=list)
    images: list[tuple[int, int]] = field(default_factory=list)  # (width dots, height dots)
    events: list[str] = field(default_factory=list)  # "text", "qr", "barcode", "cut", ...
    cuts: int = 0
    feeds: int = 0
    chinese_mode: bool = False
    status_queries: list[int] = field(default_factory=list)

    @property
    def text(self) -> list[str]:
        return [line.text for line in self.lines]


def decode(data: bytes, encoding: str = "gb18030") -> Document:
    doc = Document()
    state = {"bold": False, "width": 1, "height": 1, "align": 0}
    qr_pending: dict[str, object] = {"model": 2, "module": 3, "level": "L", "data": None}
    bar = {"height": 162, "module": 3, "hri": 0}
    text = bytearray()
    i = 0

    def need(count: int) -> bytes:
        if i + count > len(data):
            raise DecodeError(f"truncated command at byte {i}: {data[i:i + 8]!r}")
        return data[i:i + count]

    def flush_line() -> None:
        doc.lines.append(Line(text.decode(encoding), bold=bool(state["bold"]),
                              width=int(state["width"]), height=int(state["height"]),
                              align=int(state["align"]), columns=printed_columns(bytes(text))))
        doc.events.append("text")
        text.clear()

    while i < len(data):
        byte = data[i]
        if byte == 0x0A:  # LF
            flush_line()
            i += 1
        elif byte == 0x1B:  # ESC
            cmd = need(2)[1:2]
            if cmd == b"@":
                state.update(bold=False, width=1, height=1, align=0)
                doc.events.append("init")
                i += 2
            elif cmd == b"E":
                state["bold"] = bool(need(3)[2] & 1)
                i += 3
            elif cmd == b"a":
                value = need(3)[2]
                if value not in (0, 1, 2, 48, 49, 50):
                    raise DecodeError(f"ESC a {value}")
                state["align"] = value % 48
                i += 3
            elif cmd == b"!":
                mode = need(3)[2]
                state.update(bold=bool(mode & 0x08), width=2 if mode & 0x20 else 1,
                             height=2 if mode & 0x10 else 1)
                i += 3
            elif cmd == b"d":
                doc.feeds += need(3)[2]
                doc.events.append("feed")
                i += 3
            elif cmd in (b"t", b"{", b"-", b"M"):  # code page, upside-down, underline, font
                need(3)
                i += 3
            else:
                raise DecodeError(f"unknown ESC {cmd!r} at byte {i}")
        elif byte == 0x1D:  # GS
            cmd = need(2)[1:2]
            if cmd == b"!":
                n = need(3)[2]
                state.update(width=(n >> 4) + 1, height=(n & 0x0F) + 1)
                i += 3
            elif cmd == b"V":
                mode = need(3)[2]
                i += 4 if mode in (65, 66) else 3
                doc.cuts += 1
                doc.events.append("cut")
            elif cmd in (b"b", b"B"):  # smoothing, reverse printing
                need(3)
                i += 3
            elif cmd in (b"h", b"w", b"H", b"f"):
                value = need(3)[2]
                key = {b"h": "height", b"w": "module", b"H": "hri"}.get(cmd)
                if key:
                    bar[key] = value
                i += 3
            elif cmd == b"k":
                system = need(3)[2]
                if system >= 65:  # function B: GS k m n d1..dn
                    length = need(4)[3]
                    digits = need(4 + length)[4:].decode("ascii")
                    i += 4 + length
                else:  # function A: NUL-terminated
                    end = data.index(b"\x00", i + 3)
                    digits = data[i + 3:end].decode("ascii")
                    i = end + 1
                doc.barcodes.append(BarcodePrint(system, digits, bar["height"], bar["module"],
                                                 bar["hri"]))
                doc.events.append("barcode")
            elif cmd == b"(":
                header = need(5)
                if header[2:3] != b"k":
                    raise DecodeError(f"unknown GS ( {header[2:3]!r}")
                length = header[3] | header[4] << 8
                body = need(5 + length)[5:]
                i += 5 + length
                cn, fn, rest = body[0:1], body[1], body[2:]
                if cn != b"1":
                    raise DecodeError(f"2D code type {cn!r} is not QR")
                if fn == 65:
                    qr_pending["model"] = rest[0] - 48
                elif fn == 67:
                    qr_pending["module"] = rest[0]
                elif fn == 69:
                    qr_pending["level"] = "LMQH"[rest[0] - 48]
                elif fn == 80:
                    if rest[0:1] != b"0":
                        raise DecodeError("QR store with m != '0'")
                    qr_pending["data"] = rest[1:].decode("utf-8")
                elif fn == 81:
                    if qr_pending["data"] is None:
                        raise DecodeError("QR print with no stored data")
                    doc.qr.append(QrCode(str(qr_pending["data"]), int(qr_pending["model"]),
                                         int(qr_pending["module"]), str(qr_pending["level"])))
                    doc.events.append("qr")
                else:
                    raise DecodeError(f"unknown QR function {fn}")
            elif cmd == b"v":  # GS v 0 m xL xH yL yH raster image
                head = need(8)
                width_bytes = head[4] | head[5] << 8
                height = head[6] | head[7] << 8
                need(8 + width_bytes * height)
                i += 8 + width_bytes * height
                doc.images.append((width_bytes * 8, height))
                doc.events.append("image")
            else:
                raise DecodeError(f"unknown GS {cmd!r} at byte {i}")
        elif byte == 0x1C:  # FS
            cmd = need(2)[1:2]
            if cmd == b"&":
                doc.chinese_mode = True
            elif cmd == b".":
                doc.chinese_mode = False
            else:
                raise DecodeError(f"unknown FS {cmd!r}")
            doc.events.append(f"FS {cmd.decode()}")
            i += 2
        elif byte == 0x10:  # DLE EOT n: real-time status request
            request = need(3)
            if request[1] != 0x04:
                raise DecodeError(f"unknown DLE {request[1]:#x}")
            doc.status_queries.append(request[2])
            i += 3
        elif byte < 0x20:
            raise DecodeError(f"stray control byte {byte:#04x} at {i}")
        else:
            text.append(byte)
            i += 1
    if text:
        raise DecodeError(f"text not ended by LF: {bytes(text)!r}")
    return doc
