"""Aclas (顶尖) modules: PBX (polled or active, XOR check) and PS1X (polled, grams, 7E1).

PBX (the Aclas OS2X OEM / Pinnacle OS2CX manual): ``01 02 F S w6 u2 CHK 03 04`` =
15 bytes, what the module answers a poll (``!0R``); in active mode (the power-on
default, 10 frames/s) it streams the same frame plus a trailing Flag2 byte, 16 bytes.
F = ``S`` stable, ``U`` unstable, ``F`` beyond the range (or zero not yet captured);
S = the sign: a **space for positive**, ``-`` negative; w6 six characters of weight
with its decimal point (``01.234``, `` 1.234``); u2 the unit (``kg``, ``KG``, `` g``;
``lb`` is not legal for trade: an error reading); CHK = XOR of the 12 bytes before it
(one parser seen also folds ETX in: both are accepted).  Flag2 (b4 zero, b5 tare,
b6 out of range) is outside the check, so nothing is read from it: it only repeats
what the checked bytes say.

PS1X: host ``W`` -> ``02 ddddd 0D``, five digits of grams, no stable flag.
"""

from __future__ import annotations

import re
from functools import reduce
from operator import xor
from typing import ClassVar

from firmware_bridge import FrameError
from firmware_bridge.protocols.base import (
    NON_LEGAL_UNITS,
    UNIT_GRAMS,
    Codec,
    Command,
    Frame,
    LineSettings,
    decimal_to_g,
    grams_to_decimal,
)

SOH, ETX = 0x01, 0x03
FLAG2_ZERO, FLAG2_TARE, FLAG2_RANGE = 0x10, 0x20, 0x40


def xor_all(data: bytes) -> int:
    return reduce(xor, data, 0)


class AclasPbx(Codec):
    name = "aclas-pbx"
    polled = True
    has_stable_flag = True
    max_frame = 16
    variants = ("polled", "active")
    start = b"\x01\x02"
    pattern = re.compile(
        rb"\x01\x02([SUF])([ +\-])([0-9 .]{6})(kg|KG|Kg| g|g |lb|LB)([\x00-\xff])\x03\x04([^\x01])?",
        re.DOTALL,
    )
    host_commands: ClassVar[dict[Command, bytes]] = {"request": b"!0R"}

    def __init__(self, variant: str | None = None) -> None:
        super().__init__(variant)
        self._flag2_due = False  # the last frame ended a read: its Flag2 may start the next

    @property
    def streams(self) -> bool:
        return self.variant == "active"

    def feed(self, data: bytes) -> list[Frame]:
        if self._flag2_due and data:
            self._flag2_due = False
            if data[0] != SOH and not self._buf:
                data = data[1:]  # the Flag2 byte of the frame decoded last time
        return super().feed(data)

    def reset(self, resync: bool = False) -> None:
        super().reset(resync)
        self._flag2_due = False

    def _frame_at(self, m: re.Match[bytes], buf: bytearray) -> tuple[Frame, int]:
        frame = self._decode(m)
        self._flag2_due = m.group(6) is None and m.end() == len(buf)
        return frame, m.end()

    def _decode(self, m: re.Match[bytes]) -> Frame:
        raw = m.group(0)
        check = xor_all(raw[:12])
        if raw[12] not in (check, check ^ ETX):
            raise FrameError("bad XOR check")
        flag, sign = m.group(1), m.group(2)
        if flag == b"F":
            return Frame(None, False, "underload" if sign == b"-" else "overload")
        unit = m.group(4).decode("ascii").strip().lower()
        if unit in NON_LEGAL_UNITS:
            return Frame(None, False, "error")
        text = m.group(3).decode("ascii")
        if text.count(".") > 1:
            raise FrameError(f"weight {text!r}")
        grams = decimal_to_g(("-" if sign == b"-" else "") + text, UNIT_GRAMS[unit])
        return Frame(grams, flag == b"S")

    def encode(self, frame: Frame) -> bytes:
        w = frame.weight_g
        if frame.status in ("overload", "underload", "error") or w is None:
            flag, sign, text = b"F", b"-" if frame.status == "underload" else b" ", b" 0.000"
        else:
            flag = b"S" if frame.stable else b"U"
            sign = b"-" if w < 0 else b" "
            text = grams_to_decimal(w, 3).rjust(6, "0").encode()
        body = b"\x01\x02" + flag + sign + text + b"kg"
        out = body + bytes([xor_all(body)]) + b"\x03\x04"
        if self.variant != "active":
            return out
        flag2 = (FLAG2_ZERO if w == 0 else 0) | (FLAG2_TARE if frame.net else 0)
        return out + bytes([flag2 | (FLAG2_RANGE if flag == b"F" else 0)])


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
