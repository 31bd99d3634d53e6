"""The legal tolerance a fair-scale check (公平秤) judges a receipt's weight by.

Maximum permissible errors of a class III non-automatic weighing instrument (DOMAIN.md §2,
OIML R 76-1 table 6, mirrored by JJG 539), for a load ``m`` in verification intervals ``e``:

=====================  ==========================  ====================
load m                 MPE on initial verification  MPE in service (x2)
=====================  ==========================  ====================
0 <= m <= 500 e        ±0.5 e                       ±1 e
500 e < m <= 2000 e    ±1 e                         ±2 e
2000 e < m             ±1.5 e                       ±3 e
=====================  ==========================  ====================

The same table and the in-service factor stand in EU law (Directive 90/384/EEC; as UK law
SI 1995/1907, schedule 2 paragraph 4: table 3, and "the maximum permissible errors in service
are twice ...").  A stall's scale in use is held to the in-service MPE (R 76-1 3.5.2),
so a shopper's line is short beyond tolerance when the receipt's weight exceeds the fair
scale's stable reading by more than the in-service MPE of the stall's scale at the
receipt's load.  A receipt's whole weight was weighed line by line, so its tolerance is the
sum of its lines'.  Every figure is exact: MPEs are :class:`fractions.Fraction` grams
(0.5 e of a 5 g scale is 2.5 g), never floats.
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from typing import Literal

from edge import EdgeError

#: ``(upper bound in e, MPE in e on initial verification)``; above the last bound 1.5 e.
_STEPS: tuple[tuple[int, Fraction], ...] = ((500, Fraction(1, 2)), (2000, Fraction(1)))
_ABOVE = Fraction(3, 2)
IN_SERVICE_FACTOR = 2

Verdict = Literal["ok", "short"]


def mpe_g(load_g: int, e_g: int, *, in_service: bool = True) -> Fraction:
    """The class III MPE, in grams, at ``load_g`` on a scale of interval ``e_g``."""
    if isinstance(load_g, bool) or not isinstance(load_g, int) or load_g < 0:
        raise EdgeError(f"a load is a whole number of grams, 0 or more, not {load_g!r}")
    if isinstance(e_g, bool) or not isinstance(e_g, int) or e_g <= 0:
        raise EdgeError(f"the verification interval e is a whole number of grams above 0, not {e_g!r}")
    in_e = Fraction(load_g, e_g)
    mpe_e = next((mpe for bound, mpe in _STEPS if in_e <= bound), _ABOVE)
    return mpe_e * e_g * (IN_SERVICE_FACTOR if in_service else 1)


def receipt_tolerance_g(line_weights_g: Iterable[int], e_g: int) -> Fraction:
    """The tolerance of several lines weighed one by one: the sum of their in-service MPEs."""
    return sum((mpe_g(w, e_g) for w in line_weights_g), Fraction(0))


def judge(receipt_g: int, measured_g: int, tolerance_g: Fraction) -> Verdict:
    """``short`` when the goods weigh less than the receipt says by more than the tolerance.
    Goods heavier than the receipt are never the shopper's complaint."""
    return "short" if receipt_g - measured_g > tolerance_g else "ok"
