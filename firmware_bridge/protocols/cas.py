"""CAS CI-200 / "A&D style" continuous stream, 9600 8N1, CR LF lines, in two real layouts.

* A&D standard / CAS 18-byte: ``ST,GS,`` + an 8-character data field **including**
  its sign and decimal point + a 2-character unit: ``ST,GS,+0123.45kg``,
  ``ST,NT,+0012.34kg``, ``ST,GS,000013.5kg`` (no sign), ``ST,GS,+  1.500kg``
  (space padded), overload ``OL,GS,+    .  kg``.
* CAS 22-byte: ``ST,GS,`` + a 2-byte device field + ``,`` + the 8-character data
  field + a space or the lamp byte + the unit.  The device field is two ASCII
  digits (``01``) or an ID byte and the lamp byte (``1\\xc4``); some CI-200A send
  the ID as a raw byte.  The lamp byte always has bit 7 set (b6 stable, b4 hold,
  b2 gross, b1 tare, b0 zero): ``ST,GS,1\\xc4,000013.5 kg``, ``ST,GS,01,000013.5\\x80kg``.

A&D balances send their standard format on the same line settings: ``ST,+00123.45  g``
(sign + 8 characters, a 3-character unit), overload ``OL,+9999999E+19`` (``-`` under):
read too.  Header ``ST`` stable, ``US`` unstable, ``OL`` overload; ``GS`` gross, ``NT`` net.  The
headers are what the host reads; the lamp bits only repeat them (they disagree on
some indicators, ``ST`` with lamp ``\\x80``).  Units ``kg``, `` g`` and ``t`` are
weights; ``lb``/``oz`` mean a module set to a unit not legal for trade here: an
error reading.  Zero: ``D<id>KZ CR LF``.  No checksum: the fixed field widths are
what refuses a line that lost or gained a character.
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
    decimal_to_g,
    grams_to_decimal,
)

LAMP, LAMP_STABLE, LAMP_GROSS, LAMP_TARE, LAMP_ZERO = 0x80, 0x40, 0x04, 0x02, 0x01


class Cas(Codec):
    name = "cas"
    polled = False
    has_stable_flag = True
    terminator = b"\n"
    max_frame = 40
    # 22-byte (the CAS factory default), its two-digit-ID form, then the 18-byte forms.
    variants = ("22", "22-id", "ad", "unsigned", "padded")
    pattern = re.compile(
        rb"(?P<head>ST|US|OL),(?:(?P<kind>GS|NT),"
        rb"(?:(?:[0-9]{2}|[^,\r\n][\x80-\xff]),(?P<d22>[0-9 .+\-]{8})[ \x80-\xff]|(?P<d18>[0-9 .+\-]{8}))"
        rb"(?P<unit>kg|KG| g|g |lb|LB|oz|OZ| t|t )"
        # A&D balances' standard format: sign + 8 characters, a 3-character unit.
        rb"|(?P<dbal>[+\-][0-9 .]{8})(?P<ubal>  g| kg| lb| oz)|(?P<olbal>[+\-]9999999E\+19))\r?",
        re.DOTALL,
    )
    host_commands: ClassVar[dict[Command, bytes]] = {"zero": b"D00KZ\r\n"}

    def _decode(self, m: re.Match[bytes]) -> Frame:
        head, net = m.group("head"), m.group("kind") == b"NT"
        if head == b"OL":
            under = (m.group("olbal") or b"").startswith(b"-")
            return Frame(None, False, "underload" if under else "overload", net=net)
        if m.group("olbal") is not None:
            raise FrameError("the overload value in a weight line")
        unit = (m.group("unit") or m.group("ubal")).decode("ascii").strip().lower()
        if unit in NON_LEGAL_UNITS:
            return Frame(None, False, "error", net=net)
        field = (m.group("d22") or m.group("d18") or m.group("dbal")).decode("ascii")
        grams = decimal_to_g(field, UNIT_GRAMS[unit])  # FrameError for blanks inside the digits
        return Frame(grams, head == b"ST", net=net)

    def encode(self, frame: Frame) -> bytes:
        kind = b"NT" if frame.net else b"GS"
        w = frame.weight_g
        if frame.status in ("overload", "error") or w is None:
            head, data = b"OL", b"+    .  "
        else:
            head = b"ST" if frame.stable else b"US"
            digits = grams_to_decimal(w, 3)
            sign = "-" if w < 0 else "+"
            if self.variant == "padded":
                data = (sign + digits.rjust(7)).encode()
            elif self.variant == "ad":
                data = (sign + digits.rjust(7, "0")).encode()
            else:  # CAS: no sign on positive weights
                data = (("-" + digits.rjust(7, "0")) if w < 0 else digits.rjust(8, "0")).encode()
        prefix = head + b"," + kind + b","
        if not self.variant.startswith("22"):
            return prefix + data + b"kg\r\n"
        lamp = LAMP | (LAMP_STABLE if head == b"ST" else 0) | (0 if frame.net else LAMP_GROSS)
        lamp |= (LAMP_TARE if frame.net else 0) | (LAMP_ZERO if w == 0 else 0)
        if self.variant == "22-id":
            return prefix + b"01," + data + bytes([lamp]) + b"kg\r\n"
        return prefix + b"1" + bytes([lamp]) + b"," + data + b" kg\r\n"
