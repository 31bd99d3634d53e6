"""A shopper's basket at one stall: several lines, voids and refunds, with an audit trail.

Public API::

    Basket(catalogue, *, max_g, e_g, rule="half-up", clock=now, operator="vendor")
    basket.add_weighed(code, gross_g=..., stable=..., tare_g=0 | tare_preset=i) -> BasketLine
    basket.add_pieces(code, quantity) -> BasketLine
    basket.void(line_no, reason) -> BasketLine
    basket.lines / basket.total_fen / basket.audit
    basket.sale_lines() -> list[dict]      SaleLine fields, for building the Sale
    refund(sale, line_numbers, reason=..., operator=..., at=..., already=()) -> Refund

Nothing here is priced except through ``edge.pricing`` (the legal rule), and
nothing is weighed except a stable weight within the scale's range.  Every
change (add, void, refund, checkout) appends an ``AuditEvent``; a voided line
stays in the basket, marked, so the trail shows it.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from edge import BasketError, CatalogueError, PricingError
from edge.catalogue import Catalogue
from edge.pricing import check_weighing, line_amount_fen
from edge.sale import Sale

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BasketLine:
    line_no: int
    plu: str
    name: str
    name_en: str
    unit_price_fen: int
    price_unit: str
    amount_fen: int
    weight_g: int | None = None
    quantity: int | None = None
    tare_g: int = 0
    batch_code: str | None = None
    promotion: bool = False
    voided: bool = False


@dataclass(frozen=True)
class AuditEvent:
    at: dt.datetime
    operator: str
    action: str  # add, void, checkout, refund
    line_no: int | None
    detail: str


@dataclass(frozen=True)
class Refund:
    sale_id: str
    trace_code: str
    line_numbers: tuple[int, ...]
    amount_fen: int
    reason: str
    operator: str
    at: dt.datetime
    audit: AuditEvent


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Basket:
    catalogue: Catalogue
    max_g: int
    e_g: int
    rule: str = "half-up"
    clock: Callable[[], dt.datetime] = _now
    operator: str = "vendor"
    _lines: list[BasketLine] = field(default_factory=list)
    audit: list[AuditEvent] = field(default_factory=list)
    closed: bool = False

    def _log(self, action: str, line_no: int | None, detail: str) -> None:
        self.audit.append(AuditEvent(self.clock(), self.operator, action, line_no, detail))

    def _open(self) -> None:
        if self.closed:
            raise BasketError("the basket is checked out; start a new one")

    def _append(self, code: str, **measure: Any) -> BasketLine:
        self._open()
        item = self.catalogue.get(code)
        item.check_sellable()
        now = self.clock()
        price = item.price_at(now)
        amount = line_amount_fen(unit_price_fen=price, price_unit=item.price_unit,
                                 weight_g=measure.get("weight_g"),
                                 quantity=measure.get("quantity"), rule=self.rule)
        line = BasketLine(line_no=len(self._lines) + 1, plu=item.code, name=item.name_zh,
                          name_en=item.name_en, unit_price_fen=price,
                          price_unit=item.price_unit, amount_fen=amount,
                          batch_code=item.batch_code, promotion=price != item.unit_price_fen,
                          **measure)
        self._lines.append(line)
        what = (f"{line.quantity} x" if line.quantity else f"{line.weight_g} g (tare "
                f"{line.tare_g} g) x")
        self._log("add", line.line_no, f"{item.code} {what} {price} 分/{item.price_unit} "
                                       f"= {amount} 分")
        return line

    def add_weighed(self, code: str, *, gross_g: int, stable: bool, tare_g: int = 0,
                    tare_preset: int | None = None) -> BasketLine:
        """Price a weighed item: stable, within Max, net of tare, at least Min."""
        item = self.catalogue.get(code)
        if item.price_unit == "piece":
            raise PricingError(f"PLU {code} is sold by the piece, not by weight")
        if tare_preset is not None:
            if not 0 <= tare_preset < len(item.tare_presets_g):
                raise CatalogueError(f"PLU {code} has no tare preset {tare_preset}")
            tare_g = item.tare_presets_g[tare_preset]
        if isinstance(gross_g, int) and gross_g > self.max_g:
            # Capacity is about the load on the platter, container included.
            raise PricingError(f"weight {gross_g} g is over capacity (Max {self.max_g} g)")
        if isinstance(tare_g, bool) or not isinstance(tare_g, int) or tare_g < 0:
            raise PricingError(f"tare must be non-negative grams, got {tare_g!r}")
        net = check_weighing(gross_g - tare_g if isinstance(gross_g, int) else gross_g,
                             stable=stable, max_g=self.max_g, e_g=self.e_g)
        return self._append(code, weight_g=net, tare_g=tare_g)

    def add_pieces(self, code: str, quantity: int) -> BasketLine:
        if self.catalogue.get(code).price_unit != "piece":
            raise PricingError(f"PLU {code} is sold by weight, not by the piece")
        return self._append(code, quantity=quantity)

    def void(self, line_no: int, reason: str) -> BasketLine:
        """Take a line out before checkout; it stays in the trail, marked void."""
        self._open()
        if not reason.strip():
            raise BasketError("a void needs a reason")
        if not 1 <= line_no <= len(self._lines):
            raise BasketError(f"there is no line {line_no} in the basket")
        line = self._lines[line_no - 1]
        if line.voided:
            raise BasketError(f"line {line_no} is already void")
        self._lines[line_no - 1] = replace(line, voided=True)
        self._log("void", line_no, f"{line.plu} {line.amount_fen} 分: {reason.strip()}")
        return self._lines[line_no - 1]

    @property
    def lines(self) -> list[BasketLine]:
        """Lines that will be sold (not void)."""
        return [line for line in self._lines if not line.voided]

    @property
    def all_lines(self) -> list[BasketLine]:
        return list(self._lines)

    @property
    def total_fen(self) -> int:
        return sum(line.amount_fen for line in self.lines)

    def sale_lines(self) -> list[dict[str, Any]]:
        """The lines as Sale JSON (ARCHITECTURE.md), ``name_en`` added; closes the basket."""
        if not self.lines:
            raise BasketError("the basket is empty")
        self._open()
        self.closed = True
        self._log("checkout", None, f"{len(self.lines)} lines, {self.total_fen} 分")
        return [
            {"plu": line.plu, "name": line.name, "weight_g": line.weight_g,
             "quantity": line.quantity, "unit_price_fen": line.unit_price_fen,
             "price_unit": line.price_unit, "amount_fen": line.amount_fen,
             "batch_code": line.batch_code, "name_en": line.name_en}
            for line in self.lines
        ]


def refund(sale: Sale, line_numbers: Iterable[int], *, reason: str, operator: str,
           at: dt.datetime, already: Iterable[int] = ()) -> Refund:
    """A refund of some lines of a printed sale (1-based), never twice the same line."""
    numbers = tuple(sorted(set(line_numbers)))
    done = set(already)
    if not reason.strip():
        raise BasketError("a refund needs a reason")
    if not numbers:
        raise BasketError("a refund needs at least one line")
    for number in numbers:
        if not 1 <= number <= len(sale.lines):
            raise BasketError(f"receipt {sale.trace_code} has no line {number}")
        if number in done:
            raise BasketError(f"line {number} of receipt {sale.trace_code} is already refunded")
    amount = sum(sale.lines[n - 1].amount_fen for n in numbers)
    event = AuditEvent(at, operator, "refund", None,
                       f"{sale.trace_code} lines {list(numbers)} {amount} 分: {reason.strip()}")
    logger.info("refund %s", event.detail)
    return Refund(str(sale.sale_id), sale.trace_code, numbers, amount, reason.strip(),
                  operator, at, event)
