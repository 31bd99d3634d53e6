"""CAS CI-200 / "A&D style" continuous stream, 9600 8N1, CR LF lines.

``ST,GS,+0001.234kg`` (the short form, what ``cas`` means on our command line) or
``ST,GS,<id>,<8-char weight><lamp><unit>`` (long form).  Header ``ST`` stable,
``US`` unstable, ``OL`` overload; ``GS`` gross, ``NT`` net.  A space-padded unit
(``  kg``) is accepted.  Zero: ``D<id>KZ CR LF``.  Field widths are fixed on
purpose: without a checksum, a line that lost a digit must not decode.
"""

from __future__ import annotations

import re
from typing import ClassVar

from firmware_bridge import FrameError
from firmware_bridge.protocols.base import (
    UNIT_GRAMS,
    Codec,
    Command,
    Frame,
    decimal_to_g,
    grams_to_decimal,
)


class Cas(Codec):
    name = "cas"
    polled = False
    has_stable_flag = True
    terminator = b"\n"
    max_frame = 40
    pattern = re.compile(
        rb"(ST|US|OL),(GS|NT),"
        rb"(?:([+-][0-9 .]{8})|([0-9]{2}),([+-][0-9 .]{7}|[0-9 .]{8})[\x20-\x7e])"
        rb" *(kg|g)\r?"
    )
    host_commands: ClassVar[dict[Command, bytes]] = {"zero": b"D00KZ\r\n"}

    def _decode(self, m: re.Match[bytes]) -> Frame:
        head, kind = m.group(1), m.group(2)
        net = kind == b"NT"
        if head == b"OL":
            return Frame(None, False, "overload", net=net)
        field = (m.group(3) or m.group(5)).decode("ascii")
        if field.count(".") > 1:
            raise FrameError(f"weight field {field!r}")
        body = field.lstrip("+-").strip()
        if " " in body:
            raise FrameError(f"weight field {field!r}")
        grams = decimal_to_g(field, UNIT_GRAMS[m.group(6).decode("ascii")])
        return Frame(grams, head == b"ST", net=net)

    def encode(self, frame: Frame) -> bytes:
        kind = b"NT" if frame.net else b"GS"
        if frame.status in ("overload", "error") or frame.weight_g is None:
            return b"OL," + kind + b",+9999.999kg\r\n"
        w = frame.weight_g
        text = ("-" if w < 0 else "+") + grams_to_decimal(w, 3).rjust(8, "0")
        head = b"ST" if frame.stable else b"US"
        return head + b"," + kind + b"," + text.encode() + b"kg\r\n"
