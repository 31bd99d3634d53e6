"""Mettler Toledo dialects: MT-SICS (polled, CR LF lines) and the 18-byte continuous frame.

MT-SICS: host ``SI`` -> ``S S     4.08 kg`` (2nd field ``S`` stable, ``D`` dynamic,
``I`` cannot execute, ``+`` overload, ``-`` underload); ``Z`` -> ``Z A``; ``T`` ->
``T S  0.100 kg`` (the tare taken); ``TAC`` -> ``TAC A``; whole-line errors ``ES``,
``ET``, ``EL``.  The weight lines do not say net or gross: the codec remembers the
tare the module acknowledged, so a frame is known to be net while a tare is set.

Continuous: ``STX SWA SWB SWC`` + 6-digit weight + 6-digit tare + ``CR`` + CHK, where
CHK = (-sum of the 17 bytes before it) & 0x7F and every status byte has b5 set.
SWA b0-2 decimal position, b3-4 increment (1, 2, 5); SWB b0 net, b1 negative,
b2 over/under range, b3 motion, b4 kg.
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


class MtSics(Codec):
    name = "mt-sics"
    polled = True
    has_stable_flag = True
    terminator = b"\n"
    max_frame = 48
    pattern = re.compile(
        rb"(SI|S|ZI|Z|TI|TAC|TA|T|ES|ET|EL)(?: ([SDIA+\-]))?(?: +(-?[0-9]*\.?[0-9]+) (kg|g))? *\r?"
    )
    host_commands: ClassVar[dict[Command, bytes]] = {
        "request": b"SI\r\n",
        "zero": b"Z\r\n",
        "tare": b"T\r\n",
        "clear_tare": b"TAC\r\n",
    }

    def __init__(self) -> None:
        super().__init__()
        self._tare_g = 0

    def _decode(self, m: re.Match[bytes]) -> Frame:
        cmd = m.group(1).decode("ascii")
        st = (m.group(2) or b"").decode("ascii")
        grams = None
        if m.group(3) is not None:
            grams = decimal_to_g(m.group(3).decode("ascii"), UNIT_GRAMS[m.group(4).decode()])
        if cmd in ("ES", "ET", "EL"):
            if st or grams is not None:
                raise FrameError(f"{cmd} with a status")
            return Frame(None, None, "error", reply=cmd)
        if not st:
            raise FrameError(f"{cmd} without a status")
        if cmd in ("S", "SI"):
            if st in ("S", "D"):
                if grams is None:
                    raise FrameError("weight line without a weight")
                tare = self._tare_g
                return Frame(grams, st == "S", net=tare != 0, tare_g=tare or None)
            if grams is not None:
                raise FrameError(f"status {st!r} with a weight")
            status = {"+": "overload", "-": "underload"}.get(st, "error")
            return Frame(None, False, status)  # type: ignore[arg-type]
        # Replies to zero / tare / clear tare.
        ok = st in ("A", "S")
        if ok and cmd in ("T", "TI", "TA"):
            if grams is None:
                raise FrameError("tare reply without the tare")
            self._tare_g = grams
        elif ok and cmd == "TAC":
            self._tare_g = 0
        return Frame(None, None, "ok" if ok else "error", tare_g=grams, reply=f"{cmd} {st}")

    def encode(self, frame: Frame) -> bytes:
        if frame.status == "overload":
            return b"S +\r\n"
        if frame.status == "underload":
            return b"S -\r\n"
        if frame.status == "error" or frame.weight_g is None:
            return b"S I\r\n"
        w = frame.weight_g
        text = ("-" if w < 0 else "") + grams_to_decimal(w, 3)
        return f"S {'S' if frame.stable else 'D'} {text:>10} kg\r\n".encode()

    def encode_reply(self, command: Command, ok: bool, frame: Frame) -> bytes:
        if command == "zero":
            return b"Z A\r\n" if ok else b"Z I\r\n"
        if command == "tare":
            if not ok:
                return b"T I\r\n"
            return f"T S {grams_to_decimal(frame.tare_g or 0, 3):>10} kg\r\n".encode()
        if command == "clear_tare":
            return b"TAC A\r\n" if ok else b"TAC I\r\n"
        return b""


_INCREMENTS = {1: 1, 2: 2, 3: 5}
_INCREMENT_CODES = {v: k for k, v in _INCREMENTS.items()}


def mt_checksum(body: bytes) -> int:
    return -sum(body) & 0x7F


class MtContinuous(Codec):
    name = "mt-continuous"
    polled = False
    has_stable_flag = True
    max_frame = 18
    _status = rb"[\x20-\x3f\x60-\x7f]"
    pattern = re.compile(
        rb"\x02(" + _status + rb")(" + _status + rb")(" + _status + rb")"
        rb"([0-9 ]{6})([0-9 ]{6})\r([\x00-\x7f])",
        re.DOTALL,
    )

    def __init__(self, increment_g: int = 5) -> None:
        super().__init__()
        self.increment_g = increment_g  # module side: what the simulator encodes

    def _decode(self, m: re.Match[bytes]) -> Frame:
        raw = m.group(0)
        if mt_checksum(raw[:17]) != raw[17]:
            raise FrameError("bad checksum")
        swa, swb = raw[1], raw[2]
        code = swa & 0x07
        if (swa >> 3) & 0x03 == 0:
            raise FrameError(f"SWA {swa:#04x}: no increment")
        if not swb & 0x10:
            # Legal-for-trade scales here weigh in kg; a pound reading is a misconfigured module.
            return Frame(None, None, "error")
        negative = bool(swb & 0x02)
        if swb & 0x04:
            return Frame(None, False, "underload" if negative else "overload")
        weight = self._digits(m.group(4), code)
        tare = self._digits(m.group(5), code)
        if negative:
            weight = -weight
        net = bool(swb & 0x01)
        return Frame(weight, not swb & 0x08, net=net, tare_g=tare if net else None)

    @staticmethod
    def _digits(field: bytes, code: int) -> int:
        text = field.strip()
        if not text or b" " in text:
            raise FrameError(f"digits {field!r}")
        value = int(text)
        exp = 5 - code  # code 2 = whole kg = 10**3 g; each code step is one decade
        if exp >= 0:
            return value * 10**exp
        den = 10**-exp
        return (2 * value + den) // (2 * den)

    def encode(self, frame: Frame) -> bytes:
        swa = 0x20 | (_INCREMENT_CODES.get(self.increment_g, 1) << 3) | 5
        swb = 0x20 | 0x10
        weight = frame.weight_g or 0
        if frame.net:
            swb |= 0x01
        if weight < 0 or frame.status == "underload":
            swb |= 0x02
        if frame.status in ("overload", "underload"):
            swb |= 0x04
            weight = 0
        if not frame.stable:
            swb |= 0x08
        body = bytes([0x02, swa, swb, 0x20]) + f"{abs(weight):06d}{frame.tare_g or 0:06d}".encode() + b"\r"
        return body + bytes([mt_checksum(body)])
