"""The fair scale's legal tolerance against OIML R 76-1's class III table (DOMAIN.md §2)."""

from __future__ import annotations

from fractions import Fraction

import pytest

from edge import EdgeError
from edge.tolerance import judge, mpe_g, receipt_tolerance_g


@pytest.mark.parametrize(("load_g", "e_g", "initial"), [
    # e = 5 g: 500 e = 2.5 kg, 2000 e = 10 kg
    (0, 5, Fraction(5, 2)), (1000, 5, Fraction(5, 2)), (2500, 5, Fraction(5, 2)),
    (2505, 5, Fraction(5)), (10000, 5, Fraction(5)), (10005, 5, Fraction(15, 2)),
    (15000, 5, Fraction(15, 2)),
    # e = 2 g (a dual-range scale's lower range): 500 e = 1 kg, 2000 e = 4 kg
    (1000, 2, Fraction(1)), (1001, 2, Fraction(2)), (4000, 2, Fraction(2)), (4001, 2, Fraction(3)),
    # e = 10 g: 500 e = 5 kg
    (5000, 10, Fraction(5)), (5001, 10, Fraction(10)), (20001, 10, Fraction(15)),
])
def test_class_iii_table(load_g: int, e_g: int, initial: Fraction) -> None:
    assert mpe_g(load_g, e_g, in_service=False) == initial
    assert mpe_g(load_g, e_g) == 2 * initial  # in service: twice the initial MPE


def test_a_line_of_1_kg_40_g_short_is_beyond_tolerance() -> None:
    tol = mpe_g(1000, 5)
    assert tol == 5
    assert judge(1000, 960, tol) == "short"
    assert judge(1000, 995, tol) == "ok"      # exactly the MPE: within
    assert judge(1000, 994, tol) == "short"
    assert judge(1000, 1040, tol) == "ok"     # heavier goods are no complaint


def test_a_receipts_tolerance_is_its_lines() -> None:
    assert receipt_tolerance_g([1000, 3000, 12000], 5) == 5 + 10 + 15
    assert receipt_tolerance_g([], 5) == 0


@pytest.mark.parametrize(("load", "e"), [(-1, 5), (1000, 0), (1000, -5), (1.5, 5), (True, 5), (1000, 2.5)])
def test_bad_figures_are_refused_with_the_reason(load: object, e: object) -> None:
    with pytest.raises(EdgeError, match="grams"):
        mpe_g(load, e)  # type: ignore[arg-type]
