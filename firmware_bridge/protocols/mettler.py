"""Mettler Toledo dialects: MT-SICS (polled, CR LF lines) and the continuous frame.

MT-SICS: host ``SI`` -> ``S S      4.08 kg``: the weight field is 10 characters,
right aligned, the sign right before the first digit (MT-SICS reference manual), so a
line that lost a digit (``S S     00.00 g``) no longer fits and is refused: the line
has no checksum.  2nd field ``S`` stable, ``D`` dynamic, ``I`` cannot execute, ``+``
overload, ``-`` underload; ``Z`` -> ``Z A``; ``T`` -> ``T S      0.100 kg`` (the tare
taken); ``TAC`` -> ``TAC A``; whole-line errors ``ES``, ``ET``, ``EL``.  The weight
lines do not say net or gross: the codec remembers the tare the module acknowledged,
so a frame is known to be net while a tare is set.

Continuous: ``STX SWA SWB SWC`` + 6-digit weight + 6-digit tare (right aligned,
leading zeros blanked or not) + ``CR`` [+ CHK], CHK = (-sum of the 17 bytes before
it) & 0x7F, **optional**: a terminal set without it sends 17 bytes (the IND245
firmware sends 17 or 18).  Every status byte has b5 set.  SWA b0-2 decimal position,
b3-4 increment (1, 2, 5); SWB b0 net, b1 negative, b2 over/under range, b3 motion,
b4 kg (else SWC b0-2 name the unit: 0 lb, 1 g, 2 t, 3 oz), b6 power-up zero not yet
captured: no valid weight until it clears, so such a frame is an error, never stable.
"""

from __future__ import annotations

import re
from typing import ClassVar

from firmware_bridge import FrameError
from firmware_bridge.protocols.base import (
    NON_LEGAL_UNITS,
    UNIT_GRAMS,
    Codec,
    Command,
    Frame,
    NeedMore,
    decimal_to_g,
    grams_to_decimal,
)

# A weight field is 10 characters, right aligned, the sign right in front of the first digit.
_SICS_WEIGHT = re.compile(rb" *-?[0-9]+(?:\.[0-9]+)?")


class MtSics(Codec):
    name = "mt-sics"
    polled = True
    has_stable_flag = True
    terminator = b"\n"
    max_frame = 48
    pattern = re.compile(
        rb"(?:(SI|S|ZI|Z|TI|TAC|TA|T) ([SDIAL+\-])(?: ([ \-0-9.]{10}) ([A-Za-z]{1,3}))?|(ES|ET|EL)) *\r?"
    )
    host_commands: ClassVar[dict[Command, bytes]] = {
        "request": b"SI\r\n",
        "zero": b"Z\r\n",
        "tare": b"T\r\n",
        "clear_tare": b"TAC\r\n",
    }

    def __init__(self, variant: str | None = None) -> None:
        super().__init__(variant)
        self._tare_g = 0

    def _decode(self, m: re.Match[bytes]) -> Frame:
        if m.group(5) is not None:
            return Frame(None, None, "error", reply=m.group(5).decode("ascii"))
        cmd = m.group(1).decode("ascii")
        st = m.group(2).decode("ascii")
        grams = None
        field = m.group(3)
        if field is not None:
            if _SICS_WEIGHT.fullmatch(field) is None:
                raise FrameError(f"weight field {field!r}")
            unit = m.group(4).decode("ascii")
            if unit not in UNIT_GRAMS:
                if unit.lower() in NON_LEGAL_UNITS and cmd in ("S", "SI"):
                    return Frame(None, False, "error")  # the module weighs in a non-legal unit
                raise FrameError(f"unit {unit!r}")
            grams = decimal_to_g(field.decode("ascii"), UNIT_GRAMS[unit])
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
STX, CR = 0x02, 0x0D
# SWB b4 = 0 (not kg): SWC b0-2 say which unit (the IND245 firmware's table).
_SWC_UNITS = {0: "lb", 1: "g", 2: "t", 3: "oz"}


def mt_checksum(body: bytes) -> int:
    return -sum(body) & 0x7F


class MtContinuous(Codec):
    name = "mt-continuous"
    polled = False
    has_stable_flag = True
    max_frame = 18
    variants = ("checksum", "no-checksum")
    _status = rb"[\x20-\x3f\x60-\x7f]"
    pattern = re.compile(
        rb"\x02(" + _status + rb")(" + _status + rb")(" + _status + rb")([0-9 ]{6})([0-9 ]{6})\r"
    )

    def __init__(self, variant: str | None = None, increment_g: int = 5) -> None:
        super().__init__(variant)
        self.increment_g = increment_g  # module side: what the simulator encodes
        # Host side: whether this terminal sends the checksum, learnt from the stream
        # (None until a frame has shown it).  Once known to be on, a frame without a
        # valid one is refused, so a lost checksum byte cannot pass a corrupted frame.
        self._checksummed: bool | None = None

    def reset(self, resync: bool = False) -> None:
        super().reset(resync)
        self._checksummed = None

    def _frame_at(self, m: re.Match[bytes], buf: bytearray) -> tuple[Frame, int]:
        # The checksum is optional: after CR comes either the checksum or the next STX.
        end = m.end()
        mode = self._checksummed
        if end == len(buf):
            if mode is False:
                return self._decode(m), end
            raise NeedMore  # the checksum may still be on its way
        nxt, chk = buf[end], mt_checksum(m.group(0))
        if nxt == chk:
            if chk != STX:
                self._checksummed = True
            elif mode is False:  # a checksum that looks like STX: trust what we learnt
                return self._decode(m), end
            return self._decode(m), end + 1
        if nxt == STX and mode is not True:
            self._checksummed = False
            return self._decode(m), end
        if mode is False:
            return self._decode(m), end  # a terminal without checksum; noise follows the frame
        raise FrameError("bad checksum" if nxt != STX else "checksum missing")

    def _decode(self, m: re.Match[bytes]) -> Frame:
        raw = m.group(0)
        swa, swb, swc = raw[1], raw[2], raw[3]
        code = swa & 0x07
        if (swa >> 3) & 0x03 == 0:
            raise FrameError(f"SWA {swa:#04x}: no increment")
        if swb & 0x40:
            # Power-up zero not captured yet: the terminal has no valid weight (IND245 firmware).
            return Frame(None, False, "error")
        unit = "kg" if swb & 0x10 else _SWC_UNITS.get(swc & 0x07, "other")
        if unit not in UNIT_GRAMS:
            # Legal-for-trade scales here weigh in SI units: lb or oz is a misconfigured module.
            return Frame(None, None, "error")
        negative = bool(swb & 0x02)
        if swb & 0x04:
            return Frame(None, False, "underload" if negative else "overload")
        per_unit = UNIT_GRAMS[unit]
        weight = self._digits(m.group(4), code, per_unit)
        tare = self._digits(m.group(5), code, per_unit, blank_ok=True)
        if negative:
            weight = -weight
        net = bool(swb & 0x01)
        return Frame(weight, not swb & 0x08, net=net, tare_g=tare if net else None)

    @staticmethod
    def _digits(field: bytes, code: int, grams_per_unit: int, blank_ok: bool = False) -> int:
        # Six digits without point or sign, right aligned; leading zeros may be blanked.
        text = field.lstrip(b" ")
        if not text:
            if blank_ok:
                return 0  # no tare
            raise FrameError(f"digits {field!r}")
        if b" " in text:
            raise FrameError(f"digits {field!r}")
        num = int(text) * grams_per_unit
        exp = 2 - code  # code 2 = whole units; each code step is one decade
        if exp >= 0:
            return num * 10**exp
        den = 10**-exp
        return (2 * num + den) // (2 * den)

    def encode(self, frame: Frame) -> bytes:
        swa = 0x20 | (_INCREMENT_CODES.get(self.increment_g, 1) << 3) | 5
        swb = 0x20 | 0x10
        weight = frame.weight_g or 0
        if frame.status == "error":
            swb |= 0x40  # the only "no valid weight" this frame can say: power-up zero
            weight = 0
        if frame.net:
            swb |= 0x01
        if weight < 0 or frame.status == "underload":
            swb |= 0x02
        if frame.status in ("overload", "underload"):
            swb |= 0x04
            weight = 0
        if not frame.stable:
            swb |= 0x08
        body = bytes([0x02, swa, swb, 0x20]) + f"{abs(weight):6d}{frame.tare_g or 0:06d}".encode() + b"\r"
        if self.variant == "no-checksum":
            return body
        return body + bytes([mt_checksum(body)])
