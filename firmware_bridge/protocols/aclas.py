"""Aclas (顶尖) modules: PBX (polled, XOR check) and PS1X (polled, grams, 7E1).

PBX: host ``!0R`` -> ``01 02 F S w6 u2 CHK 03 04`` with F = ``S`` stable, ``U``
unstable, ``F`` over; S the sign; w6 six characters of weight with its decimal
point (``01.234``); u2 the unit (``kg``); CHK = XOR of the 12 bytes before it.
DOMAIN.md gives the frame as 16 bytes but its field list adds up to 15; the field
list is what is implemented (a ``[check]`` against a real module).

PS1X: host ``W`` -> ``02 ddddd 0D``, five digits of grams, no stable flag.
"""

from __future__ import annotations

import re
from functools import reduce
from operator import xor
from typing import ClassVar

from firmware_bridge import FrameError
from firmware_bridge.protocols.base import (
    UNIT_GRAMS,
    Codec,
    Command,
    Frame,
    LineSettings,
    decimal_to_g,
    grams_to_decimal,
)


def xor_all(data: bytes) -> int:
    return reduce(xor, data, 0)


class AclasPbx(Codec):
    name = "aclas-pbx"
    polled = True
    has_stable_flag = True
    max_frame = 15
    start = b"\x01\x02"
    pattern = re.compile(rb"\x01\x02([SUF])([+\-])([0-9.]{6})(kg|KG|g )([\x00-\xff])\x03\x04", re.DOTALL)
    host_commands: ClassVar[dict[Command, bytes]] = {"request": b"!0R"}

    def _decode(self, m: re.Match[bytes]) -> Frame:
        raw = m.group(0)
        if xor_all(raw[:12]) != raw[12]:
            raise FrameError("bad XOR check")
        flag = m.group(1)
        if flag == b"F":
            return Frame(None, False, "overload")
        text = m.group(3).decode("ascii")
        if text.count(".") > 1:
            raise FrameError(f"weight {text!r}")
        unit = m.group(4).decode("ascii").strip().lower()
        grams = decimal_to_g(m.group(2).decode("ascii") + text, UNIT_GRAMS[unit])
        return Frame(grams, flag == b"S")

    def encode(self, frame: Frame) -> bytes:
        w = frame.weight_g
        if frame.status == "overload" or w is None:
            flag, sign, text = b"F", b"+", b"99.999"
        else:
            flag = b"S" if frame.stable else b"U"
            sign = b"-" if w < 0 else b"+"
            text = grams_to_decimal(w, 3).rjust(6, "0").encode()
        body = b"\x01\x02" + flag + sign + text + b"kg"
        return body + bytes([xor_all(body)]) + b"\x03\x04"


class AclasPs1x(Codec):
    name = "aclas-ps1x"
    line = LineSettings(9600, 7, "E", 1)
    polled = True
    has_stable_flag = False
    max_frame = 7
    pattern = re.compile(rb"\x02([0-9]{5})\r")
    host_commands: ClassVar[dict[Command, bytes]] = {"request": b"W"}

    def _decode(self, m: re.Match[bytes]) -> Frame:
        return Frame(int(m.group(1)), None)

    def encode(self, frame: Frame) -> bytes:
        w = frame.weight_g
        if frame.status != "ok" or w is None or not 0 <= w <= 99999:
            # Five unsigned digits cannot say overload or negative: the module sends
            # a frame the host must drop rather than a wrong weight.
            return b"\x02?????\r"
        return b"\x02" + f"{w:05d}".encode() + b"\r"
