"""Toledo 8217 (the protocol of Odoo's reference scale driver): polled, 9600 7E1.

Host ``W`` -> ``STX WW.WWW CR``: kg with three decimals and exactly two integer
digits (``01.234``; the DIVA manual writes ``WW.WWW``), ``N`` after the digits =
net; or, when the module cannot give a stable weight, ``STX ? <status> CR`` whose
bits are b0 motion, b1 over capacity, b2 negative, b3 outside zero range,
b4 centre of zero, b5 net, b6 always set (so ``?A`` = motion).  The module only
ever sends stable weights: a weight frame is stable by definition.

The frame has no checksum, so its fixed width is what catches a lost or an extra
digit: ``STX 071.234 CR`` is not 71.234 kg but a broken frame, refused.  A space
in place of the leading zero (`` 1.234``) keeps the width and is accepted.

Probe (Odoo's ``supported()``): host ``Ehello`` -> ``STX E CR hello``; after a
good answer Odoo's driver sends ``F``, and so do we (:attr:`probe_done`).
"""

from __future__ import annotations

import re
from typing import ClassVar

from firmware_bridge import FrameError
from firmware_bridge.protocols.base import (
    Codec,
    Command,
    Frame,
    LineSettings,
    decimal_to_g,
    grams_to_decimal,
)

MOTION, OVER, NEGATIVE, OUT_OF_ZERO, CENTRE_ZERO, NET, ALWAYS = (1 << i for i in range(7))
PROBE_ANSWER = b"\x02E\rhello"


class Toledo8217(Codec):
    name = "toledo-8217"
    line = LineSettings(9600, 7, "E", 1)
    polled = True
    has_stable_flag = True
    pattern = re.compile(rb"\x02(?:([0-9 ][0-9]\.[0-9]{3})(N?)\r|\?([\x40-\x7f])\r|E\r(hello))")
    max_frame = 12
    host_commands: ClassVar[dict[Command, bytes]] = {
        "request": b"W",
        "zero": b"Z",
        "tare": b"T",
        "clear_tare": b"C",
        "probe": b"Ehello",
    }
    probe_reply = "E hello"
    probe_done = b"F"

    def _decode(self, m: re.Match[bytes]) -> Frame:
        digits = m.group(1)
        if digits is not None:
            return Frame(decimal_to_g(digits.decode("ascii"), 1000), True, net=bool(m.group(2)))
        if m.group(4) is not None:
            return Frame(None, None, reply=self.probe_reply)
        bits = m.group(3)[0]
        if not bits & ALWAYS:
            raise FrameError(f"status byte {bits:#04x} without b6")
        if bits & OVER:
            return Frame(None, False, "overload")
        if bits & NEGATIVE:
            return Frame(None, False, "underload")
        if bits & OUT_OF_ZERO:
            return Frame(None, False, "error")
        return Frame(None, False, net=bool(bits & NET))

    def encode(self, frame: Frame) -> bytes:
        w = frame.weight_g
        bits = ALWAYS | (NET if frame.net else 0)
        if frame.status == "overload" or (w is not None and w > 99_999):
            bits |= OVER  # two integer digits: 99.999 kg is all the frame can say
        elif frame.status == "underload" or (w is not None and w < 0):
            bits |= NEGATIVE
        elif frame.status == "error" or w is None:
            bits |= OUT_OF_ZERO if frame.status == "error" else MOTION
        elif not frame.stable:
            bits |= MOTION
        else:
            text = grams_to_decimal(w, 3).rjust(6, "0")
            return b"\x02" + text.encode() + (b"N" if frame.net else b"") + b"\r"
        return b"\x02?" + bytes([bits]) + b"\r"

    def encode_reply(self, command: Command, ok: bool, frame: Frame) -> bytes:
        return PROBE_ANSWER if command == "probe" else b""
