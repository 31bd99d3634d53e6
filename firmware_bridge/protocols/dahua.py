"""Dahua (大华) ACS-A: polled, host ``P`` -> ``02 20 20 <5-char weight> " KG"``.

The weight is five characters of kg with the decimal point (``1.234``); a minus
sign may take the place of the first pad (a [check]).  No stable flag, no
terminator after the unit: the fixed width is the framing.
"""

from __future__ import annotations

import re
from typing import ClassVar

from firmware_bridge import FrameError
from firmware_bridge.protocols.base import Codec, Command, Frame, decimal_to_g, grams_to_decimal


class DahuaAcs(Codec):
    name = "dahua-acs"
    polled = True
    has_stable_flag = False
    max_frame = 11
    pattern = re.compile(rb"\x02([ \-]) ([0-9.]{5}) KG")
    host_commands: ClassVar[dict[Command, bytes]] = {"request": b"P"}

    def _decode(self, m: re.Match[bytes]) -> Frame:
        text = m.group(2).decode("ascii")
        if text.count(".") != 1:
            raise FrameError(f"weight {text!r}")
        sign = "-" if m.group(1) == b"-" else ""
        return Frame(decimal_to_g(sign + text, 1000), None)

    def encode(self, frame: Frame) -> bytes:
        w = frame.weight_g
        if frame.status == "error" or w is None or abs(w) > 99_990:
            return b"\x02  -.--- KG"  # no digits: dropped by the host
        # No overload flag: an overloaded module sends the number, the host blanks it.
        text = grams_to_decimal(w, 3)
        if len(text) > 5:
            text = grams_to_decimal(w, 2) if len(text) == 6 else grams_to_decimal(w, 1)
        return b"\x02" + (b"-" if w < 0 else b" ") + b" " + text.rjust(5, "0").encode() + b" KG"
