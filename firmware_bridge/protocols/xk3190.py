"""Yaohua XK3190-A9 indicator: continuous 12-byte frames, no unit, no stable flag.

``STX ±dddddd p X1 X2 ETX``: p = number of decimals (ASCII digit); X1 X2 = the
XOR of the 8 bytes sign..p, high and low nibble each + 0x30.  The unit is
configured on the indicator (kg on market scales); stability is the host's job.
"""

from __future__ import annotations

import re
from functools import reduce
from operator import xor

from firmware_bridge import FrameError
from firmware_bridge.protocols.base import Codec, Frame, LineSettings


def a9_check(body: bytes) -> bytes:
    x = reduce(xor, body, 0)
    return bytes([0x30 + (x >> 4), 0x30 + (x & 0x0F)])


class Xk3190A9(Codec):
    name = "xk3190-a9"
    line = LineSettings(9600, 8, "N", 1)
    polled = False
    has_stable_flag = False
    max_frame = 12
    pattern = re.compile(rb"\x02([+\-])([0-9]{6})([0-9])([0-?])([0-?])\x03")

    def __init__(self, grams_per_unit: int = 1000, decimals: int = 3) -> None:
        super().__init__()
        self.grams_per_unit = grams_per_unit  # the indicator's configured unit
        self.decimals = decimals  # module side: what the simulator sends

    def _decode(self, m: re.Match[bytes]) -> Frame:
        raw = m.group(0)
        if a9_check(raw[1:9]) != raw[9:11]:
            raise FrameError("bad XOR check")
        p = raw[8] - 0x30
        value = int(m.group(2)) * self.grams_per_unit
        den = 10**p
        grams = (2 * value + den) // (2 * den)
        if p > 4:
            raise FrameError(f"{p} decimals")
        return Frame(-grams if m.group(1) == b"-" else grams, None)

    def encode(self, frame: Frame) -> bytes:
        w = frame.weight_g
        if frame.status == "error" or w is None or abs(w) * 10**self.decimals // self.grams_per_unit > 999999:
            # Nothing sensible to send: a frame with a deliberately broken check, dropped.
            return b"\x02+9999993??\x03"
        # No overload flag on this line: an overloaded indicator sends the number and
        # the host blanks it (Link's max_g).
        value = abs(w) * 10**self.decimals // self.grams_per_unit
        body = (b"-" if w < 0 else b"+") + f"{value:06d}{self.decimals}".encode()
        return b"\x02" + body + a9_check(body) + b"\x03"
