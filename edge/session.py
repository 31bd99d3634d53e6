"""The vendor's session at the scale: current weighing, chosen item, basket, checkout.

It joins the weighing states (``edge.weighing``), the catalogue and the legal
price rule (``edge.pricing``) and hands finished sales to the journal.  It is
driven by the link's readings, by the recognizer's guesses and by the vendor's
taps, from different threads, hence the lock.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge import PricingError
from edge.integrity import sign_sale
from edge.journal import Journal
from edge.pricing import line_amount_fen
from edge.sale import Sale, SaleLine
from edge.tracecode import make_trace_code, stall_number
from edge.weighing import Weigher, WeighState
from firmware_bridge.reading import Reading

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Item:
    """A catalogue item as the session needs it."""

    plu: str
    name: str
    unit_price_fen: int
    price_unit: str
    name_en: str = ""
    label: str | None = None  # the recognizer's label for this item
    batch_code: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Item:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass(slots=True)
class StallInfo:
    stall_id: str
    region: str
    market_no: int
    rounding: str
    tz: zoneinfo.ZoneInfo
    vendor: str = ""


@dataclass(slots=True)
class _State:
    weigh: WeighState = WeighState.NOT_READY
    reading: Reading | None = None
    item: Item | None = None
    lines: list[SaleLine] = field(default_factory=list)


class Session:
    def __init__(self, info: StallInfo, weigher: Weigher, catalogue: list[Item], journal: Journal,
                 key: Ed25519PrivateKey, on_change: Callable[[str], None] | None = None) -> None:
        self.info = info
        self.weigher = weigher
        self.catalogue = {it.plu: it for it in catalogue}
        self.by_label = {it.label: it for it in catalogue if it.label}
        self.journal = journal
        self.key = key
        self._on_change = on_change or (lambda _what: None)
        self._lock = threading.Lock()
        self._s = _State()

    # -- inputs -------------------------------------------------------------------
    def on_reading(self, reading: Reading) -> None:
        with self._lock:
            self._s.weigh = self.weigher.update(reading)
            self._s.reading = reading

    def select(self, plu: str) -> Item:
        """The vendor taps an item (or the recognizer's sure guess is taken)."""
        item = self.catalogue.get(plu)
        if item is None:
            raise PricingError(f"unknown PLU {plu!r}")
        with self._lock:
            self._s.item = item
        self._on_change("item")
        return item

    # -- what the screens show ------------------------------------------------------
    @property
    def weigh_state(self) -> WeighState:
        with self._lock:
            return self._s.weigh

    def priceable_g(self) -> int | None:
        with self._lock:
            return self.weigher.priceable_net_g

    def current_line(self) -> SaleLine | None:
        """The line the scale would add now: a priced item on a stable, legal weight."""
        with self._lock:
            return self._line_locked()

    def _line_locked(self) -> SaleLine | None:
        item = self._s.item
        if item is None:
            return None
        if item.price_unit == "piece":
            return None
        net = self.weigher.priceable_net_g
        if net is None:
            return None
        amount = line_amount_fen(unit_price_fen=item.unit_price_fen, price_unit=item.price_unit,
                                 weight_g=net, rule=self.info.rounding)
        return SaleLine(plu=item.plu, name=item.name, weight_g=net, unit_price_fen=item.unit_price_fen,
                        price_unit=item.price_unit, amount_fen=amount,
                        batch_code=item.batch_code)

    @property
    def lines(self) -> list[SaleLine]:
        with self._lock:
            return list(self._s.lines)

    # -- vendor actions -------------------------------------------------------------
    def add_weighed(self) -> SaleLine:
        """Put the current weighing in the basket; the scale must then return to zero."""
        with self._lock:
            if self._s.item is None:
                raise PricingError("choose an item first")
            line = self._line_locked()
            if line is None:
                raise PricingError(f"no stable legal weight to price (scale: {self._s.weigh.name})")
            self.weigher.mark_sold()
            self._s.lines.append(line)
            self._s.item = None
        self._on_change("basket")
        return line

    def add_pieces(self, plu: str, quantity: int) -> SaleLine:
        item = self.catalogue.get(plu)
        if item is None:
            raise PricingError(f"unknown PLU {plu!r}")
        if item.price_unit != "piece":
            raise PricingError(f"{item.name} is sold by weight, not by the piece")
        amount = line_amount_fen(unit_price_fen=item.unit_price_fen, price_unit="piece",
                                 quantity=quantity, rule=self.info.rounding)
        line = SaleLine(plu=item.plu, name=item.name, quantity=quantity,
                        unit_price_fen=item.unit_price_fen, price_unit="piece", amount_fen=amount,
                        batch_code=item.batch_code)
        with self._lock:
            self._s.lines.append(line)
        self._on_change("basket")
        return line

    def void_last(self) -> SaleLine | None:
        with self._lock:
            line = self._s.lines.pop() if self._s.lines else None
        if line is not None:
            logger.info("voided line %s %s", line.plu, line.amount_fen)
            self._on_change("basket")
        return line

    def checkout(self) -> Sale:
        """Journal the basket as one signed, chained sale (durable before anything else)."""
        with self._lock:
            lines = list(self._s.lines)
        if not lines:
            raise PricingError("the basket is empty")
        info = self.info

        def build(receipt_no: int, prev_hash: str) -> Sale:
            doc: dict[str, Any] = {
                "sale_id": str(uuid.uuid4()),
                "stall_id": info.stall_id,
                "receipt_no": receipt_no,
                "sold_at": dt.datetime.now(info.tz).isoformat(timespec="seconds"),
                "trace_code": make_trace_code(info.region, info.market_no,
                                              stall_number(info.stall_id), receipt_no),
                "lines": [ln.model_dump(mode="json") for ln in lines],
                "total_fen": sum(ln.amount_fen for ln in lines),
                "prev_hash": prev_hash,
                "signature": "",
            }
            if info.vendor:
                doc["vendor"] = info.vendor
            if info.rounding != "half-up":
                doc["rounding"] = info.rounding
            doc["signature"] = sign_sale(doc, self.key)
            return Sale.model_validate(doc)

        sale = self.journal.append(build)
        with self._lock:
            self._s.lines.clear()
        self._on_change("sale")
        return sale
