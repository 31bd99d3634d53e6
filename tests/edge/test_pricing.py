"""edge.pricing: exact amounts, both rounding rules, every refusal; Decimal oracle."""

from __future__ import annotations

import uuid
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from edge import PricingError
from edge.pricing import (
    MAX_WEIGHT_G,
    RULE_NOTES,
    check_sale,
    check_unit_price,
    check_weighing,
    format_weight,
    format_yuan,
    line_amount_fen,
)
from edge.sale import MAX_AMOUNT_FEN, Sale


def oracle(weight_or_qty: int, unit_price_fen: int, price_unit: str, rule: str) -> int:
    """Independent Decimal computation in 元, the way a clerk would write it."""
    per = {"kg": Decimal(1000), "500g": Decimal(500), "piece": Decimal(1)}[price_unit]
    yuan = Decimal(weight_or_qty) / per * (Decimal(unit_price_fen) / Decimal(100))
    if rule == "half-up":
        rounded = yuan.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    else:
        rounded = yuan.quantize(Decimal("0.1"), rounding=ROUND_DOWN)
    return int(rounded * 100)


def test_domain_example_512g_at_3_yuan_per_500g_is_3_07() -> None:
    assert line_amount_fen(unit_price_fen=300, price_unit="500g", weight_g=512) == 307
    assert line_amount_fen(unit_price_fen=300, price_unit="500g", weight_g=512,
                           rule="down-jiao") == 300


@pytest.mark.parametrize(
    ("weight_g", "price", "unit", "half_up", "down_jiao"),
    [
        (1, 1, "kg", 0, 0),            # 0.001 分
        (500, 1, "kg", 1, 0),          # exactly half a 分 rounds up
        (499, 1, "kg", 0, 0),
        (1500, 1299, "kg", 1949, 1940),  # 1948.5 -> 1949
        (250, 999, "500g", 500, 490),   # 499.5 -> 500
        (1000, 1000, "kg", 1000, 1000),
    ],
)
def test_exact_amounts(weight_g: int, price: int, unit: str, half_up: int, down_jiao: int) -> None:
    assert line_amount_fen(unit_price_fen=price, price_unit=unit, weight_g=weight_g) == half_up
    assert line_amount_fen(unit_price_fen=price, price_unit=unit, weight_g=weight_g,
                           rule="down-jiao") == down_jiao


def test_piece_lines() -> None:
    assert line_amount_fen(unit_price_fen=250, price_unit="piece", quantity=3) == 750
    assert line_amount_fen(unit_price_fen=155, price_unit="piece", quantity=3,
                           rule="down-jiao") == 460


@settings(max_examples=400, deadline=None)
@given(
    amount=st.integers(1, MAX_WEIGHT_G),
    price=st.integers(1, 1_000_000),
    unit=st.sampled_from(["kg", "500g", "piece"]),
    rule=st.sampled_from(["half-up", "down-jiao"]),
)
def test_matches_decimal_oracle(amount: int, price: int, unit: str, rule: str) -> None:
    quantity = min(amount, 10_000)
    kwargs = {"quantity": quantity} if unit == "piece" else {"weight_g": amount}
    expected = oracle(quantity if unit == "piece" else amount, price, unit, rule)
    if expected > MAX_AMOUNT_FEN:  # an overflowing amount is refused, never wrapped or capped
        with pytest.raises(PricingError, match=f"amount {expected} 分 is above the limit"):
            line_amount_fen(unit_price_fen=price, price_unit=unit, rule=rule, **kwargs)
    else:
        assert line_amount_fen(unit_price_fen=price, price_unit=unit, rule=rule,
                               **kwargs) == expected


@settings(max_examples=200, deadline=None)
@given(weight=st.integers(1, MAX_WEIGHT_G), price=st.integers(1, 10_000_000))
def test_down_jiao_never_charges_more(weight: int, price: int) -> None:
    assume(weight * price <= MAX_AMOUNT_FEN * 1000)
    half_up = line_amount_fen(unit_price_fen=price, price_unit="kg", weight_g=weight)
    down = line_amount_fen(unit_price_fen=price, price_unit="kg", weight_g=weight,
                           rule="down-jiao")
    assert down <= half_up and down % 10 == 0 and half_up - down <= 10


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"unit_price_fen": 300, "price_unit": "kg", "weight_g": 0}, "weight must be above 0 g"),
        ({"unit_price_fen": 300, "price_unit": "kg", "weight_g": -5}, "weight must be above 0 g"),
        ({"unit_price_fen": 300, "price_unit": "kg", "weight_g": 1_000_001},
         "weight 1000001 g is above the limit 1000000 g"),
        ({"unit_price_fen": 0, "price_unit": "kg", "weight_g": 500},
         "unit price must be above 0 分, got 0"),
        ({"unit_price_fen": 300, "price_unit": "斤", "weight_g": 500}, "never per 斤 or 两"),
        ({"unit_price_fen": 300, "price_unit": "lb", "weight_g": 500}, "unknown price unit 'lb'"),
        ({"unit_price_fen": 300, "price_unit": "kg", "weight_g": 1.5},
         "weight must be an integer number of grams, got 1.5"),
        ({"unit_price_fen": 3.0, "price_unit": "kg", "weight_g": 15},
         "unit price must be an integer number of 分, got 3.0"),
        ({"unit_price_fen": 300, "price_unit": "kg", "weight_g": True},
         "weight must be an integer number of grams, got True"),
        ({"unit_price_fen": 300, "price_unit": "kg"}, "got None"),
        ({"unit_price_fen": 300, "price_unit": "kg", "weight_g": 5, "quantity": 1},
         "takes a weight, not a quantity"),
        ({"unit_price_fen": 300, "price_unit": "piece", "weight_g": 5}, "not a weight"),
        ({"unit_price_fen": 300, "price_unit": "piece", "quantity": 0},
         "quantity must be 1..10000"),
        ({"unit_price_fen": 300, "price_unit": "kg", "weight_g": 5, "rule": "up"},
         "unknown rounding rule 'up'"),
        # overflow: 1 t at 1,000,000 元/kg would be 10^11 分
        ({"unit_price_fen": 100_000_000, "price_unit": "kg", "weight_g": 1_000_000},
         "amount 100000000000 分 is above the limit"),
    ],
)
def test_refusals(kwargs: dict, message: str) -> None:
    with pytest.raises(PricingError, match=message.replace(".", r"\.").replace("(", r"\(")):
        line_amount_fen(**kwargs)


def _sale(lines: list[dict], total: int | None = None) -> Sale:
    return Sale.model_validate({
        "sale_id": str(uuid.UUID(int=1)), "stall_id": "S01", "receipt_no": 42,
        "sold_at": "2026-11-28T08:15:02+08:00", "trace_code": "31010600100100000425",
        "lines": lines, "total_fen": sum(line["amount_fen"] for line in lines)
        if total is None else total, "prev_hash": "0" * 64,
    })


TOMATO = {"plu": "1001", "name": "西红柿", "weight_g": 512, "quantity": None,
          "unit_price_fen": 300, "price_unit": "500g", "amount_fen": 307}
EGGS = {"plu": "2001", "name": "鸡蛋", "weight_g": None, "quantity": 2,
        "unit_price_fen": 150, "price_unit": "piece", "amount_fen": 300}


def test_check_sale_accepts_a_correct_sale() -> None:
    check_sale(_sale([TOMATO, EGGS]))
    check_sale(_sale([{**TOMATO, "amount_fen": 300}, EGGS]), rule="down-jiao")


def test_check_sale_names_the_bad_line() -> None:
    with pytest.raises(PricingError) as info:
        check_sale(_sale([EGGS, {**TOMATO, "amount_fen": 308}]))
    assert str(info.value) == (
        "line 2 (1001 西红柿): amount_fen 308 but 512 g x 300 分/500g = 307 分 (half-up)"
    )


def test_check_sale_names_a_bad_total() -> None:
    # model_construct skips the model's own sum check: check_sale must still catch it.
    good = _sale([TOMATO])
    bad = Sale.model_construct(**{**dict(good), "total_fen": 999})
    with pytest.raises(PricingError, match="^total_fen 999 but the lines add up to 307 分$"):
        check_sale(bad)


def test_check_sale_under_the_wrong_rule() -> None:
    with pytest.raises(PricingError, match=r"= 300 分 \(down-jiao\)"):
        check_sale(_sale([TOMATO]), rule="down-jiao")


def test_check_weighing() -> None:
    assert check_weighing(512, stable=True, max_g=15_000, e_g=5) == 512
    for net, stable, message in [
        (512, False, "weight 512 g is not stable"),
        (0, True, "weight 0 g is not above zero"),
        (-10, True, "weight -10 g is not above zero"),
        (15_005, True, r"weight 15005 g is over capacity \(Max 15000 g\)"),
        (99, True, r"below the scale's minimum \(Min 100 g\)"),
    ]:
        with pytest.raises(PricingError, match=message):
            check_weighing(net, stable=stable, max_g=15_000, e_g=5)


def test_unit_price_against_market_median() -> None:
    assert check_unit_price(300, "kg", market_median_fen=320) is None
    warning = check_unit_price(3, "kg", market_median_fen=300)
    assert warning is not None
    assert warning.message_zh == "单价 ￥0.03/kg 与市场中位价 ￥3.00/kg 相差过大，请确认"
    assert check_unit_price(1600, "kg", market_median_fen=300) is not None
    assert check_unit_price(1500, "kg", market_median_fen=300) is None
    assert check_unit_price(3, "kg") is None  # no median known: nothing to compare
    with pytest.raises(PricingError, match="got 0"):
        check_unit_price(0, "kg", market_median_fen=300)


def test_formats_and_notes() -> None:
    assert format_yuan(307) == "￥3.07"
    assert format_yuan(5) == "￥0.05"
    assert format_yuan(-120) == "-￥1.20"
    assert format_weight(512) == "0.512kg"
    assert format_weight(15_005) == "15.005kg"
    assert set(RULE_NOTES) == {"half-up", "down-jiao"}
