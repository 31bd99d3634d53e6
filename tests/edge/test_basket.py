"""edge.basket: lines, tare, promotions, voids, refunds, the audit trail, bad weights."""

from __future__ import annotations

import datetime as dt
import pathlib
import sys

import pytest

from edge import BasketError, CatalogueError, PricingError
from edge.basket import Basket, refund
from edge.catalogue import Catalogue
from edge.pricing import check_sale
from edge.receipt import ReceiptMeta, render_receipt
from edge.sale import Sale

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from escpos_decode import decode  # noqa: E402
from receipt_samples import sale_dict  # noqa: E402

CST = dt.timezone(dt.timedelta(hours=8))
NOON = dt.datetime(2026, 11, 28, 12, 0, tzinfo=CST)
EVENING = dt.datetime(2026, 11, 28, 18, 0, tzinfo=CST)
CATALOGUE = [
    {"code": "1001", "name_zh": "西红柿", "name_en": "Tomato", "price_unit": "500g",
     "unit_price_fen": 300, "batch_code": "B20261127-07", "inspection": "passed",
     "tare_presets_g": [15], "promotion": {"unit_price_fen": 250,
                                           "starts_at": "2026-11-28T17:00:00+08:00",
                                           "ends_at": "2026-11-28T19:00:00+08:00"}},
    {"code": "2001", "name_zh": "鸡蛋", "name_en": "Egg", "price_unit": "piece",
     "unit_price_fen": 80},
    {"code": "3001", "name_zh": "五花肉", "name_en": "Pork belly", "price_unit": "kg",
     "unit_price_fen": 3600},
    {"code": "4001", "name_zh": "菠菜", "name_en": "Spinach", "price_unit": "kg",
     "unit_price_fen": 800, "inspection": "failed", "batch_code": "B9"},
]


def basket(when: dt.datetime = NOON, rule: str = "half-up") -> Basket:
    return Basket(Catalogue.from_list(CATALOGUE), max_g=15_000, e_g=5, rule=rule,
                  clock=lambda: when, operator="王建国")


def test_lines_tare_and_total() -> None:
    b = basket()
    tomato = b.add_weighed("1001", gross_g=527, stable=True, tare_preset=0)
    assert (tomato.weight_g, tomato.tare_g, tomato.amount_fen) == (512, 15, 307)
    eggs = b.add_pieces("2001", 6)
    pork = b.add_weighed("3001", gross_g=1234, stable=True)
    assert (eggs.amount_fen, pork.amount_fen) == (480, 4442)
    assert b.total_fen == 307 + 480 + 4442
    assert [e.detail for e in b.audit] == [
        "1001 512 g (tare 15 g) x 300 分/500g = 307 分",
        "2001 6 x 80 分/piece = 480 分",
        "3001 1234 g (tare 0 g) x 3600 分/kg = 4442 分",
    ]


def test_promotion_price_applies_in_its_window() -> None:
    line = basket(EVENING).add_weighed("1001", gross_g=512, stable=True)
    assert (line.unit_price_fen, line.amount_fen, line.promotion) == (250, 256, True)


def test_void_keeps_the_trail_and_sale_adds_up() -> None:
    b = basket()
    b.add_weighed("1001", gross_g=512, stable=True)
    b.add_pieces("2001", 6)
    b.void(1, "顾客不要了")
    assert [line.plu for line in b.lines] == ["2001"]
    assert [line.voided for line in b.all_lines] == [True, False]
    lines = b.sale_lines()
    assert [(e.action, e.line_no, e.operator) for e in b.audit] == [
        ("add", 1, "王建国"), ("add", 2, "王建国"), ("void", 1, "王建国"),
        ("checkout", None, "王建国")]
    assert b.audit[2].detail == "1001 307 分: 顾客不要了"
    sale = Sale.model_validate(sale_dict(lines=None) | {"lines": lines, "total_fen": 480})
    check_sale(sale)
    text = decode(render_receipt(sale, ReceiptMeta(language="en"))).text
    assert "1. Egg (2001)" in text
    with pytest.raises(BasketError, match="checked out"):
        b.add_pieces("2001", 1)


def test_void_refusals() -> None:
    b = basket()
    b.add_pieces("2001", 1)
    with pytest.raises(BasketError, match="needs a reason"):
        b.void(1, " ")
    with pytest.raises(BasketError, match="no line 2"):
        b.void(2, "x")
    b.void(1, "x")
    with pytest.raises(BasketError, match="already void"):
        b.void(1, "x")
    with pytest.raises(BasketError, match="empty"):
        b.sale_lines()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"gross_g": 512, "stable": False}, PricingError, "not stable"),
        ({"gross_g": 0, "stable": True}, PricingError, "0 g is not above zero"),
        ({"gross_g": -20, "stable": True}, PricingError, "-20 g is not above zero"),
        ({"gross_g": 15_001, "stable": True}, PricingError, r"over capacity \(Max 15000 g\)"),
        ({"gross_g": 99, "stable": True}, PricingError, r"below the scale's minimum"),
        ({"gross_g": 512.5, "stable": True}, PricingError, "integer grams"),
        ({"gross_g": 30, "stable": True, "tare_preset": 0}, PricingError,
         "15 g is below the scale's minimum"),
        ({"gross_g": 512, "stable": True, "tare_preset": 3}, CatalogueError,
         "no tare preset 3"),
        ({"gross_g": 512, "stable": True, "tare_g": -1}, PricingError, "tare must be"),
    ],
)
def test_bad_weights_are_refused_and_nothing_is_added(kwargs: dict, error: type,
                                                       message: str) -> None:
    b = basket()
    with pytest.raises(error, match=message):
        b.add_weighed("1001", **kwargs)
    assert b.all_lines == [] and b.audit == []


def test_other_refusals() -> None:
    b = basket()
    with pytest.raises(CatalogueError, match="unknown PLU '9999'"):
        b.add_pieces("9999", 1)
    with pytest.raises(CatalogueError, match="failed its rapid test"):
        b.add_weighed("4001", gross_g=500, stable=True)
    with pytest.raises(PricingError, match="sold by the piece"):
        b.add_weighed("2001", gross_g=500, stable=True)
    with pytest.raises(PricingError, match="sold by weight"):
        b.add_pieces("3001", 2)
    with pytest.raises(PricingError, match="quantity must be 1..10000"):
        b.add_pieces("2001", 0)
    assert b.all_lines == []


def test_refunds() -> None:
    sale = Sale.model_validate(sale_dict())
    first = refund(sale, [2], reason="鸡蛋破损", operator="王建国", at=NOON)
    assert (first.line_numbers, first.amount_fen, first.trace_code) == (
        (2,), 480, "31010600100100000425")
    assert first.audit.detail == "31010600100100000425 lines [2] 480 分: 鸡蛋破损"
    with pytest.raises(BasketError, match="line 2 of receipt 31010600100100000425 is already"):
        refund(sale, [1, 2], reason="x", operator="o", at=NOON, already=first.line_numbers)
    with pytest.raises(BasketError, match="has no line 3"):
        refund(sale, [3], reason="x", operator="o", at=NOON)
    with pytest.raises(BasketError, match="needs a reason"):
        refund(sale, [1], reason="", operator="o", at=NOON)
    assert refund(sale, [1], reason="x", operator="o", at=NOON,
                  already=[2]).amount_fen == 307
