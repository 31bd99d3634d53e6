"""Yaohua XK3190-A9 indicator: continuous 12-byte frames, no unit, no stable flag.

``STX ±dddddd p X1 X2 ETX``: p = number of decimals (ASCII digit); X1 X2 = the XOR
of the 8 bytes sign..p, high and low nibble each as an upper-case hex digit
(``0``-``9``, ``A``-``F``, as the Yaohua manuals say).  Real captures:
``02 +000000 0 1B 03`` (empty platform), ``02 +003260 0 1C 03`` (3260 kg).  Some
clones send each nibble + 0x30, so ``:``-``?`` for 10-15: accepted too, but not a
mix of both forms in one frame.  The unit is configured on the indicator (kg on
market scales); stability is the host's job.  At 1200 baud it streams about 10
frames a second.
"""

from __future__ import annotations

import re
from functools import reduce
from operator import xor

from firmware_bridge import FrameError
from firmware_bridge.protocols.base import Codec, Frame, LineSettings

_HEX = b"0123456789ABCDEF"


def a9_check(body: bytes, clone: bool = False) -> bytes:
    """The two check characters of ``body`` (sign..p): upper-case hex, or the clones' nibble + 0x30."""
    x = reduce(xor, body, 0)
    if clone:
        return bytes([0x30 + (x >> 4), 0x30 + (x & 0x0F)])
    return bytes([_HEX[x >> 4], _HEX[x & 0x0F]])


class Xk3190A9(Codec):
    name = "xk3190-a9"
    line = LineSettings(9600, 8, "N", 1)
    polled = False
    has_stable_flag = False
    max_frame = 12
    variants = ("hex", "clone")
    pattern = re.compile(rb"\x02([+\-])([0-9]{6})([0-9])([0-9A-F:-?]{2})\x03")

    def __init__(self, variant: str | None = None, grams_per_unit: int = 1000, decimals: int = 3) -> None:
        super().__init__(variant)
        self.grams_per_unit = grams_per_unit  # the indicator's configured unit
        self.decimals = decimals  # module side: what the simulator sends

    def _decode(self, m: re.Match[bytes]) -> Frame:
        raw = m.group(0)
        body, check = raw[1:9], m.group(4)
        if check != a9_check(body) and check != a9_check(body, clone=True):
            raise FrameError("bad XOR check")
        p = raw[8] - 0x30
        if p > 4:
            raise FrameError(f"{p} decimals")
        value = int(m.group(2)) * self.grams_per_unit
        den = 10**p
        grams = (2 * value + den) // (2 * den)
        return Frame(-grams if m.group(1) == b"-" else grams, None)

    def encode(self, frame: Frame) -> bytes:
        w = frame.weight_g
        clone = self.variant == "clone"
        if frame.status == "error" or w is None or abs(w) * 10**self.decimals // self.grams_per_unit > 999999:
            # Nothing sensible to send: a frame with a deliberately broken check, dropped.
            body = b"+9999993"
            return b"\x02" + body + bytes(reversed(a9_check(body, clone))) + b"\x03"
        # No overload flag on this line: an overloaded indicator sends the number and
        # the host blanks it (Link's max_g).
        value = abs(w) * 10**self.decimals // self.grams_per_unit
        body = (b"-" if w < 0 else b"+") + f"{value:06d}{self.decimals}".encode()
        return b"\x02" + body + a9_check(body, clone) + b"\x03"
