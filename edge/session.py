"""The vendor's session at the scale: current weighing, chosen item, basket, checkout.

It joins the weighing states (``edge.weighing``) and the basket
(``edge.basket``, which prices through ``edge.pricing``) and hands finished
sales to the journal.  It is driven by the link's readings, by the
recognizer's guesses and by the vendor's taps, from different threads, hence
the lock.

A new catalogue from the market's feed (``edge.feed``) is applied between baskets
only: offered while a basket holds lines, it waits until that basket is checked out
or discarded, so every line of one basket is priced from one catalogue.

The open basket is saved on every change (``edge.open_basket``) when a store is given:
:meth:`Session.restore` takes it back after a crash, with the catalogue its lines were
priced under, and the scale must return to zero before it prices again (the load on the
plate may be the line last priced).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge import BasketError, EdgeError, JournalError, PricingError
from edge.basket import Basket, BasketLine, Refund, refund
from edge.catalogue import Catalogue, Plu
from edge.feed import FeedState
from edge.integrity import sign_sale
from edge.journal import Journal
from edge.open_basket import OpenBasketStore, SavedBasket
from edge.sale import Sale, SaleContext
from edge.tracecode import make_trace_code, stall_number
from edge.weighing import Weigher, WeighState
from firmware_bridge.reading import Reading

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class StallInfo:
    stall_id: str
    region: str
    market_no: int
    rounding: str
    tz: zoneinfo.ZoneInfo
    vendor: str = ""


class Session:
    def __init__(self, info: StallInfo, weigher: Weigher, catalogue: Catalogue,
                 labels: dict[str, str], journal: Journal, key: Ed25519PrivateKey,
                 on_change: Callable[[str], None] | None = None,
                 basket_store: OpenBasketStore | None = None) -> None:
        self.info = info
        self.weigher = weigher
        self.catalogue = catalogue
        #: recognizer label -> PLU code
        self.labels = labels
        self.journal = journal
        self.key = key
        self._listeners: list[Callable[[str], None]] = [on_change] if on_change else []
        self._lock = threading.Lock()
        self._item: Plu | None = None
        self._store = basket_store
        self._basket = self._new_basket()
        #: The id the open basket's sale will carry (its saved copy names it too).
        self._basket_id = str(uuid.uuid4())
        #: The basket restored after a restart, while it is the open one.
        self._restored_id: str | None = None
        #: Why the stall's disk could not be written (full, failing), until a write succeeds:
        #: the screens say it, and checkout is refused by the journal before any receipt.
        self.disk_error: str | None = None
        #: A catalogue from the feed waiting for the open basket to close, and its labels.
        self._pending: tuple[Catalogue, dict[str, str], FeedState | None] | None = None
        #: The feed version the catalogue in use came from (None: the config's seed).
        self.feed_state: FeedState | None = None
        #: The online order the open basket fulfils (``edge.orders``): its sale carries the id.
        self._order_id: int | None = None

    def _new_basket(self) -> Basket:
        spec = self.weigher.spec
        return Basket(self.catalogue, max_g=spec.max_g, e_g=spec.e_g, rule=self.info.rounding)

    def _next_basket(self) -> None:
        """A fresh basket for the next shopper (lock held)."""
        self._basket = self._new_basket()
        self._basket_id = str(uuid.uuid4())
        self._order_id = None

    def listen(self, fn: Callable[[str], None]) -> None:
        """``fn(what)`` after each change: item, basket, tare, sale, catalogue."""
        self._listeners.append(fn)

    def _on_change(self, what: str) -> None:
        for fn in list(self._listeners):
            fn(what)

    # -- the open basket on disk -------------------------------------------------------
    def _persist(self) -> None:
        """Save the open basket, or remove the copy once it holds nothing (lock held)."""
        if self._store is None:
            return
        basket = self._basket
        try:
            if not basket.all_lines or basket.closed:
                self._store.clear()
                return
            self._store.save(SavedBasket(
                basket_id=self._basket_id, saved_at=dt.datetime.now(dt.UTC), lines=basket.all_lines,
                audit=basket.audit, catalogue=list(self.catalogue), labels=self.labels,
                feed=self.feed_state, order_id=self._order_id))
        except OSError as exc:
            # A full or failing disk: the line stays in the basket (the vendor sees it and the
            # screens say why), only its crash copy is missing; checkout will be refused.
            if self.disk_error is None:
                logger.error("open basket not saved to %s: %s", self._store.path, exc)
            self.disk_error = f"{self._store.path.name}: {exc.strerror or exc}"
            return
        self.disk_error = None

    def restore(self) -> int:
        """Take back the basket that was open when the stall stopped; its live lines (0: none).
        Its lines keep their prices and the basket goes on under its own catalogue; the one
        the stall started with waits for it to close."""
        if self._store is None:
            return 0
        saved = self._store.load()
        if saved is None:
            return 0
        if self.journal.find(sale_id=saved.basket_id) is not None:
            logger.info("open basket %s was sold before the stop: not restored", saved.basket_id)
            self._store.clear()
            return 0
        then = Catalogue(saved.catalogue)
        with self._lock:
            if [i.model_dump() for i in then] != [i.model_dump() for i in self.catalogue] \
                    or saved.labels != self.labels:
                self._pending = (self.catalogue, self.labels, self.feed_state)
                self.catalogue, self.labels, self.feed_state = then, saved.labels, saved.feed
            self._basket = self._new_basket()
            self._basket._lines = list(saved.lines)
            self._basket.audit = list(saved.audit)
            self._basket_id = self._restored_id = saved.basket_id
            self._order_id = saved.order_id
            # What lies on the plate may be the line last priced: back to zero first.
            self.weigher.mark_sold()
            live = len(self._basket.lines)
        logger.warning("open basket restored after a restart: %d lines, %d 分 (saved %s)",
                       live, self._basket.total_fen, saved.saved_at.isoformat(timespec="seconds"))
        self._on_change("basket")
        return live

    @property
    def basket_id(self) -> str:
        """The id the open basket's sale will carry; kept across a restart with the basket."""
        return self._basket_id

    @property
    def restored(self) -> bool:
        """The open basket is the one restored after a restart."""
        return self._restored_id is not None and self._restored_id == self._basket_id

    # -- inputs -------------------------------------------------------------------
    def on_reading(self, reading: Reading) -> None:
        with self._lock:
            self.weigher.update(reading)

    def select(self, code: str) -> Plu:
        """The vendor taps an item (or the recognizer's sure guess is taken); an item the
        market stopped is refused with the reason (``CatalogueError``)."""
        item = self.catalogue.get(code)
        item.check_sellable()
        with self._lock:
            self._item = item
        self._on_change("item")
        return item

    def item_for_label(self, label: str) -> Plu | None:
        code = self.labels.get(label)
        return self.catalogue.get(code) if code is not None else None

    # -- an online order ----------------------------------------------------------------
    @property
    def order_id(self) -> int | None:
        """The online order the open basket fulfils, if any."""
        with self._lock:
            return self._order_id

    def attach_order(self, order_id: int | None) -> None:
        """The open basket fulfils online order ``order_id`` (None: no order); an empty
        basket only, so every line of its sale is weighed for the order."""
        with self._lock:
            if order_id is not None and self._basket.lines:
                raise BasketError("本单已有商品，请先结账或作废 / the basket holds lines: check out or "
                                  "discard it first")
            self._order_id = order_id
            self._persist()
        self._on_change("order")

    # -- the market's feed -----------------------------------------------------------
    def offer_catalogue(self, catalogue: Catalogue, labels: dict[str, str],
                        state: FeedState | None = None) -> bool:
        """A new catalogue (feed thread): applied now if no basket is open, else when the
        open one is checked out or discarded.  True when it was applied now."""
        with self._lock:
            self._pending = (catalogue, labels, state)
            applied = self._apply_pending()
        if applied:
            self._on_change("catalogue")
        return applied

    def _apply_pending(self) -> bool:
        """Swap in the waiting catalogue if the basket holds no line (lock held)."""
        if self._pending is None or self._basket.all_lines:
            return False
        self.catalogue, self.labels, self.feed_state = self._pending
        self._pending = None
        self._basket = self._new_basket()  # empty: it keeps its id
        # The chosen item is taken again from the new catalogue (its price may have
        # changed), or dropped when the market removed or stopped it.
        if self._item is not None:
            try:
                self._item = self.catalogue.get(self._item.code)
                self._item.check_sellable()
            except EdgeError:
                self._item = None
        logger.info("catalogue of feed version %s in use (%d items)",
                    self.feed_state.version if self.feed_state else None, len(self.catalogue))
        return True

    @property
    def catalogue_pending(self) -> bool:
        """A newer catalogue waits for the open basket to close."""
        with self._lock:
            return self._pending is not None

    # -- what the screens show ------------------------------------------------------
    def block_reason(self, code: str) -> str | None:
        """Why the item may not be sold (a failed batch, a price above the cap), for the
        vendor's screen; None when it may."""
        return self.catalogue.get(code).block_reason

    @property
    def weigh_state(self) -> WeighState:
        return self.weigher.state

    def priceable_g(self) -> int | None:
        with self._lock:
            return self.weigher.priceable_net_g

    def _weighed_line(self, basket: Basket) -> BasketLine | None:
        """Price the chosen item on the scale's weight into ``basket`` (lock held)."""
        item = self._item
        if item is None or item.price_unit == "piece" or self.weigher.priceable_net_g is None:
            return None
        shown = self.weigher.shown
        assert shown.gross_g is not None
        return basket.add_weighed(item.code, gross_g=shown.gross_g, stable=True, tare_g=shown.tare_g)

    def current_line(self) -> BasketLine | None:
        """The line the scale would add now: the chosen item on a stable, legal weight."""
        with self._lock:
            try:
                return self._weighed_line(self._new_basket())
            except EdgeError:
                return None

    @property
    def lines(self) -> list[BasketLine]:
        with self._lock:
            return self._basket.lines

    # -- vendor actions -------------------------------------------------------------
    def add_weighed(self) -> BasketLine:
        """Put the current weighing in the basket; the scale must then return to zero."""
        with self._lock:
            if self._item is None:
                raise PricingError("choose an item first")
            line = self._weighed_line(self._basket)
            if line is None:
                raise PricingError(f"no stable legal weight to price (scale: {self.weigher.state.name})")
            self.weigher.mark_sold()
            self._item = None
            self._persist()
        self._on_change("basket")
        return line

    def tare(self) -> int:
        """Tare the container on the plate (``WeighingError`` when the scale must refuse)."""
        with self._lock:
            grams = self.weigher.tare()
        self._on_change("tare")
        return grams

    def preset_tare(self, grams: int) -> int:
        with self._lock:
            grams = self.weigher.preset_tare(grams)
        self._on_change("tare")
        return grams

    def clear_tare(self) -> None:
        with self._lock:
            self.weigher.clear_tare()
        self._on_change("tare")

    def add_pieces(self, code: str, quantity: int) -> BasketLine:
        with self._lock:
            line = self._basket.add_pieces(code, quantity)
            self._persist()
        self._on_change("basket")
        return line

    def void(self, line_no: int, reason: str) -> BasketLine:
        with self._lock:
            line = self._basket.void(line_no, reason)
            self._persist()
        self._on_change("basket")
        return line

    def discard(self, reason: str) -> None:
        """The shopper walks away: void every line, and keep the trail of what was weighed."""
        with self._lock:
            basket = self._basket
            self._next_basket()
            applied = self._apply_pending()
        for line in basket.lines:
            basket.void(line.line_no, reason)
        if basket.audit:
            self.journal.record_audit(basket.audit)
        with self._lock:
            # After the trail is kept: a crash in between shows the basket again, never loses it.
            self._persist()
        self._on_change("basket")
        if applied:
            self._on_change("catalogue")

    def refund(self, trace_code: str, line_numbers: list[int], *, reason: str,
               operator: str = "vendor") -> Refund:
        """Refund lines of a journaled sale, once each, durably with its audit event."""
        sale = self.journal.find(trace_code=trace_code)
        if sale is None:
            raise BasketError(f"no receipt {trace_code} in this stall's journal")
        done = self.journal.refunded_lines(str(sale.sale_id))
        ref = refund(sale, line_numbers, reason=reason, operator=operator,
                     at=dt.datetime.now(self.info.tz), already=done)
        self.journal.record_refund(ref)
        return ref

    def checkout(self) -> Sale:
        """Journal the basket as one signed, chained sale (durable before anything else)."""
        info = self.info
        with self._lock:
            basket, sale_id, order_id = self._basket, self._basket_id, self._order_id
            lines = basket.sale_lines()  # closes the basket; refuses an empty one

        def build(receipt_no: int, prev_hash: str) -> Sale:
            doc: dict[str, Any] = {
                "sale_id": sale_id,
                "stall_id": info.stall_id,
                "receipt_no": receipt_no,
                "sold_at": dt.datetime.now(info.tz).isoformat(timespec="seconds"),
                "trace_code": make_trace_code(info.region, info.market_no,
                                              stall_number(info.stall_id), receipt_no),
                "lines": lines,
                "total_fen": sum(ln["amount_fen"] for ln in lines),
                "prev_hash": prev_hash,
                "signature": "",
            }
            if info.vendor:
                doc["vendor"] = info.vendor
            if info.rounding != "half-up":
                doc["rounding"] = info.rounding
            if order_id is not None:
                doc["order_id"] = order_id  # the server settles the order from this sale
            doc["signature"] = sign_sale(doc, self.key)
            # The checks the market server runs (its market, this stall's own trace code,
            # a time it can take): what could never upload is never journaled.
            return Sale.model_validate(doc, context=SaleContext(
                region=info.region, market=info.market_no, stall_id=info.stall_id))

        try:
            sale = self.journal.append(build, audit=basket.audit)
        except BaseException as exc:
            basket.closed = False  # nothing was journaled: the shopper's lines stay
            if isinstance(exc, JournalError):
                self.disk_error = str(exc)
            raise
        self.disk_error = None
        with self._lock:
            self._next_basket()
            applied = self._apply_pending()
            self._persist()
        self._on_change("sale")
        if applied:
            self._on_change("catalogue")
        return sale
