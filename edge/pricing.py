"""Legal price computation (legally relevant: keep small, integer only).

Price to pay = weight x unit price, rounded to the market's rule (DOMAIN.md §2).
Money is integer 分 (fen) and weight integer grams everywhere; the exact
product is kept as a fraction ``numerator / denominator`` of 分 and rounded
once, so no float ever touches a price.

Rounding rules (``RoundingRule``), applied to every line's exact amount:

``half-up``
    to the nearest 分, halves up (the legal default: "nearest price interval").
``down-jiao``
    shopper-friendly: down to a whole 角 (10 分), never more than ``half-up``.
    A market that chooses it must say so on the receipt (``RULE_NOTES``).

Public API (imported by the stall process and the server)::

    line_amount_fen(*, unit_price_fen, price_unit, weight_g=None, quantity=None,
                    rule="half-up") -> int
    check_sale(sale, rule="half-up") -> None
    check_weighing(net_g, *, stable, max_g, e_g) -> int
    check_unit_price(unit_price_fen, price_unit, *, market_median_fen=None) -> PriceWarning | None

Every refusal is an ``edge.PricingError`` with a one-line message.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

from edge import PricingError
from edge.sale import MAX_AMOUNT_FEN

if TYPE_CHECKING:
    from edge.sale import Sale

logger = logging.getLogger(__name__)

RoundingRule = Literal["half-up", "down-jiao"]
ROUNDING_RULES: tuple[str, ...] = get_args(RoundingRule)

#: What the receipt prints under the total, per rule: (Chinese, English).
RULE_NOTES: dict[str, tuple[str, str]] = {
    "half-up": ("计价规则：金额四舍五入到分", "Rounding: each amount half-up to 0.01 yuan"),
    "down-jiao": ("计价规则：金额向下取整到角（让利顾客）",
                  "Rounding: each amount down to 0.10 yuan (in the shopper's favour)"),
}

#: Grams per price unit; "piece" is priced by count (see DOMAIN.md §2: never 斤 or 两).
GRAMS_PER_UNIT: dict[str, int] = {"kg": 1000, "500g": 500}
PRICE_UNITS: tuple[str, ...] = ("kg", "500g", "piece")

#: Same bounds as edge.sale.SaleLine, so a priced line is always a valid SaleLine.
MAX_WEIGHT_G = 1_000_000
MAX_QUANTITY = 10_000

#: Units that are forbidden on a posted price (a Shanghai enforcement case).
_FORBIDDEN_UNITS = {"斤", "jin", "两", "liang", "g", "500克", "公斤", "千克"}


def _is_int(value: object) -> bool:
    # bool is an int subclass: True as a weight is a bug, not 1 gram.
    return isinstance(value, int) and not isinstance(value, bool)


def _check_rule(rule: str) -> None:
    if rule not in ROUNDING_RULES:
        raise PricingError(f"unknown rounding rule {rule!r}; expected one of {ROUNDING_RULES}")


def _check_unit(price_unit: str) -> None:
    if price_unit in PRICE_UNITS:
        return
    if price_unit in _FORBIDDEN_UNITS:
        raise PricingError(
            f"price unit {price_unit!r} is not allowed: post prices per kg (元/kg) "
            "or per 500 g (元/500g), never per 斤 or 两"
        )
    raise PricingError(f"unknown price unit {price_unit!r}; expected one of {PRICE_UNITS}")


def round_fraction_fen(numerator: int, denominator: int, rule: str = "half-up") -> int:
    """Round the non-negative amount ``numerator / denominator`` 分 by ``rule``."""
    _check_rule(rule)
    if numerator < 0 or denominator <= 0:
        raise PricingError("a price fraction must be non-negative with a positive denominator")
    if rule == "half-up":
        return (2 * numerator + denominator) // (2 * denominator)
    # down-jiao: floor of the exact amount to 10 分 (not of an already rounded one,
    # so it can never exceed half-up).
    return numerator // (10 * denominator) * 10


def line_amount_fen(
    *,
    unit_price_fen: int,
    price_unit: str,
    weight_g: int | None = None,
    quantity: int | None = None,
    rule: str = "half-up",
) -> int:
    """The amount of one line in 分: weight (or count) x unit price, rounded by ``rule``."""
    _check_rule(rule)
    _check_unit(price_unit)
    if not _is_int(unit_price_fen):
        raise PricingError(f"unit price must be an integer number of 分, got {unit_price_fen!r}")
    if unit_price_fen <= 0:
        raise PricingError(f"unit price must be above 0 分, got {unit_price_fen}")
    if unit_price_fen > MAX_AMOUNT_FEN:
        raise PricingError(f"unit price {unit_price_fen} 分 is above the limit {MAX_AMOUNT_FEN} 分")
    if price_unit == "piece":
        if weight_g is not None:
            raise PricingError("a per-piece line takes a quantity, not a weight")
        if not _is_int(quantity):
            raise PricingError(f"a per-piece line needs an integer quantity, got {quantity!r}")
        assert quantity is not None  # for the type checker; _is_int(None) is False
        if not 0 < quantity <= MAX_QUANTITY:
            raise PricingError(f"quantity must be 1..{MAX_QUANTITY}, got {quantity}")
        numerator, denominator = quantity * unit_price_fen, 1
    else:
        if quantity is not None:
            raise PricingError(f"a per-{price_unit} line takes a weight, not a quantity")
        if not _is_int(weight_g):
            raise PricingError(f"weight must be an integer number of grams, got {weight_g!r}")
        assert weight_g is not None
        if weight_g <= 0:
            raise PricingError(f"weight must be above 0 g, got {weight_g} g")
        if weight_g > MAX_WEIGHT_G:
            raise PricingError(f"weight {weight_g} g is above the limit {MAX_WEIGHT_G} g")
        numerator, denominator = weight_g * unit_price_fen, GRAMS_PER_UNIT[price_unit]
    amount = round_fraction_fen(numerator, denominator, rule)
    if amount > MAX_AMOUNT_FEN:
        raise PricingError(f"amount {amount} 分 is above the limit {MAX_AMOUNT_FEN} 分")
    return amount


def check_sale(sale: Sale, rule: str = "half-up") -> None:
    """Re-price every line of ``sale`` and its total; PricingError names the first bad one."""
    _check_rule(rule)
    total = 0
    for number, line in enumerate(sale.lines, start=1):
        label = f"line {number} ({line.plu} {line.name})"
        try:
            expected = line_amount_fen(
                unit_price_fen=line.unit_price_fen,
                price_unit=line.price_unit,
                weight_g=line.weight_g,
                quantity=line.quantity,
                rule=rule,
            )
        except PricingError as exc:
            raise PricingError(f"{label}: {exc}") from exc
        if line.amount_fen != expected:
            what = (f"{line.quantity} x {line.unit_price_fen} 分" if line.price_unit == "piece"
                    else f"{line.weight_g} g x {line.unit_price_fen} 分/{line.price_unit}")
            raise PricingError(
                f"{label}: amount_fen {line.amount_fen} but {what} = {expected} 分 ({rule})"
            )
        total += expected
    if sale.total_fen != total:
        raise PricingError(f"total_fen {sale.total_fen} but the lines add up to {total} 分")


def check_weighing(net_g: int, *, stable: bool, max_g: int, e_g: int) -> int:
    """Return ``net_g`` if it may be priced: stable, positive, at least Min and at most Max.

    Class III retail: Min = 20 e (DOMAIN.md §2); nothing is priced in motion,
    at or below zero, or above Max.
    """
    if not (_is_int(net_g) and _is_int(max_g) and _is_int(e_g)) or e_g <= 0 or max_g <= 0:
        raise PricingError("weights and scale limits must be integer grams")
    if not stable:
        raise PricingError(f"weight {net_g} g is not stable; wait for the scale to settle")
    if net_g <= 0:
        raise PricingError(f"weight {net_g} g is not above zero")
    if net_g > max_g:
        raise PricingError(f"weight {net_g} g is over capacity (Max {max_g} g)")
    if net_g < 20 * e_g:
        raise PricingError(f"weight {net_g} g is below the scale's minimum (Min {20 * e_g} g)")
    return net_g


@dataclass(frozen=True)
class PriceWarning:
    """A unit price far from the market median: ask the vendor to confirm it."""

    unit_price_fen: int
    median_fen: int
    message_zh: str
    message_en: str


#: A price under 1/5 or above 5x the market median is most likely a typing error
#: (3 分/kg typed for 300); it is a warning, not a refusal, because prices move.
MEDIAN_FACTOR = 5


def check_unit_price(
    unit_price_fen: int,
    price_unit: str,
    *,
    market_median_fen: int | None = None,
    factor: int = MEDIAN_FACTOR,
) -> PriceWarning | None:
    """Refuse a zero or absurd unit price; warn when it is far from the market median.

    ``market_median_fen`` is the median in the same ``price_unit``.
    """
    _check_unit(price_unit)
    if not _is_int(unit_price_fen) or unit_price_fen <= 0:
        raise PricingError(f"unit price must be a positive integer of 分, got {unit_price_fen!r}")
    if unit_price_fen > MAX_AMOUNT_FEN:
        raise PricingError(f"unit price {unit_price_fen} 分 is above the limit {MAX_AMOUNT_FEN} 分")
    if market_median_fen is None or market_median_fen <= 0:
        return None
    # Integer comparison of price/median against 1/factor and factor.
    if unit_price_fen * factor < market_median_fen or unit_price_fen > market_median_fen * factor:
        unit = "个" if price_unit == "piece" else price_unit
        warning = PriceWarning(
            unit_price_fen=unit_price_fen,
            median_fen=market_median_fen,
            message_zh=(f"单价 {format_yuan(unit_price_fen)}/{unit} 与市场中位价 "
                        f"{format_yuan(market_median_fen)}/{unit} 相差过大，请确认"),
            message_en=(f"unit price {format_yuan(unit_price_fen)}/{price_unit} is far from "
                        f"the market median {format_yuan(market_median_fen)}/{price_unit}; "
                        "please confirm"),
        )
        logger.warning("%s", warning.message_en)
        return warning
    return None


def format_yuan(fen: int) -> str:
    """``307`` -> ``"￥3.07"`` (U+FFE5: GBK printers garble U+00A5)."""
    sign = "-" if fen < 0 else ""
    fen = abs(fen)
    return f"{sign}￥{fen // 100}.{fen % 100:02d}"


def format_weight(weight_g: int) -> str:
    """``512`` -> ``"0.512kg"``."""
    return f"{weight_g // 1000}.{weight_g % 1000:03d}kg"
