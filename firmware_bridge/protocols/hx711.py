"""Raw counts from an HX711-type board: one signed decimal count per line.

The board's sketch prints ``scale.read()`` (``-123456 CR LF``).  The counts are
24-bit two's complement, so anything outside [-2**23, 2**23 - 1] is impossible and
dropped; the two rails mean the ADC is saturated (over- or underload).  No stable
flag, no tare, no weight: the host filters, detects stability and calibrates.
"""

from __future__ import annotations

import re

from firmware_bridge import FrameError
from firmware_bridge.protocols.base import Codec, Frame, LineSettings

COUNTS_MAX = 2**23 - 1
COUNTS_MIN = -(2**23)


class Hx711Raw(Codec):
    name = "hx711-raw"
    line = LineSettings(38400, 8, "N", 1)
    polled = False
    has_stable_flag = False
    raw_counts = True
    terminator = b"\n"
    noise_prefix = False  # noise in front of a line may be digits of the count: no way to tell
    max_frame = 12
    pattern = re.compile(rb"(-?[0-9]{1,8})\r?")

    def _decode(self, m: re.Match[bytes]) -> Frame:
        counts = int(m.group(1))
        if counts > COUNTS_MAX or counts < COUNTS_MIN:
            raise FrameError(f"{counts} counts is outside 24 bits")
        if counts == COUNTS_MAX:
            return Frame(None, None, "overload", counts=counts)
        if counts == COUNTS_MIN:
            return Frame(None, None, "underload", counts=counts)
        return Frame(None, None, counts=counts)

    def encode(self, frame: Frame) -> bytes:
        counts = frame.counts
        if frame.status == "overload" or counts is None:
            counts = COUNTS_MAX
        counts = max(COUNTS_MIN, min(COUNTS_MAX, counts))
        return f"{counts}\r\n".encode()
