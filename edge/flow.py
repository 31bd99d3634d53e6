"""The stall's weigh-recognise-price flow: one explicit state machine, owned by the stall.

States (:class:`FlowState`) and what moves between them::

    NOT_READY  no fresh reading from the scale: nothing is priced
    IDLE       plate empty: next item, items by the piece, void, discard, checkout
    SETTLING   a load that is not (yet) priceable; recognition already runs on the
               latest camera frame
    CHOOSING   a stable, priceable weight: the four best guesses wait for one confirm
               (taken by itself above ``auto_confirm``, never when the recogniser says
               unknown)
    PRICED     the load is a line in the basket; nothing more is priced until the scale
               is back at zero

The scale's reading is turned into one input (:class:`ScaleInput`) and the next state
is looked up in ``_NEXT``: the one place the transitions live.  Every transition is
logged.  A new weighing (a load appearing on an empty, offline or sold plate) clears
the last guesses and starts recognition.

Pricing stays where it is: a confirmed item goes through ``Session.select`` and
``Session.add_weighed`` (the weigher's legal rules, ``edge.basket``, ``edge.pricing``);
the flow never computes an amount.  Every vendor action is one method returning a
typed result (refusals carry the reason, never an exception), so an HTTP route or a
hardware keypad can drive it; :meth:`StallFlow.snapshot` is what a screen renders.

Threads: the flow's worker steps the machine after each scale reading (``wake``) and
every 0.1 s; the recogniser's worker recognises and teaches off the vendor's and the
link's threads.  Both end on the stall's one stop event.  Whoever shows the flow
registers with :meth:`StallFlow.on_change` and is called after every change (a
transition, guesses, a vendor action, the session's basket or catalogue, the camera's
fault), so a screen waits for news instead of polling.

Faults a vendor sees (:class:`Fault`, in the snapshot, each with what the vendor should
do and a short line for the customer): the scale offline or not calibrated (nothing is
priced), the camera missing or frozen (no recognition: items are picked by PLU, name or
pinyin), a receipt that did not print (kept, queued for reprint) and a basket restored
after a restart.  The screens add the server's and the reprint queue's.
"""

from __future__ import annotations

import datetime as dt
import enum
import itertools
import logging
import queue
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict

from edge import CatalogueError, EdgeError
from edge.basket import BasketLine
from edge.camera import Camera
from edge.catalogue import Catalogue, Plu
from edge.sale import Sale
from edge.session import Session
from edge.weighing import WeighState

logger = logging.getLogger(__name__)

#: Guesses shown to the vendor.
GUESSES = 4
#: Labels the recogniser ranks (its top-k is capped at its label count).
RANK_ALL = 10_000
#: Items a search answers at most.
SEARCH_LIMIT = 20
NO_FRAME = "摄像头没有画面，请手动选品 / camera gave no frame: choose the item by hand"


# -- the stall's parts, as the flow uses them -------------------------------------------
class RecognitionLike(Protocol):
    top: list[tuple[str, float]]
    unknown: bool


class RecognizerLike(Protocol):
    """``model.recognizer.Recognizer`` as the stall uses it."""

    def recognize(self, image: np.ndarray, top_k: int | None = None) -> Any: ...

    def teach(self, label: str, image: np.ndarray, *, offer: bool = True,
              tag: str | None = None) -> np.ndarray: ...

    def retag(self, old: str, new: str | None) -> int: ...

    def forget_tagged(self, tag: str) -> tuple[str | None, int]: ...

    def taught_under(self, tag: str) -> str | None: ...

    def forget_label(self, label: str) -> int: ...


class PrinterLike(Protocol):
    """``edge.printing.Printer`` as the stall uses it: raises ``EdgeError`` when a receipt
    could not be printed (it is queued for reprint then)."""

    def print_sale(self, sale: Sale) -> object: ...


# -- states and transitions ------------------------------------------------------------
class FlowState(enum.Enum):
    NOT_READY = "not_ready"
    IDLE = "idle"
    SETTLING = "settling"
    CHOOSING = "choosing"
    PRICED = "priced"


class ScaleInput(enum.Enum):
    """The weigher's state as the flow reads it."""

    OFFLINE = "offline"   # no fresh reading (link gone, module error)
    EMPTY = "empty"       # stable zero, or below zero under a tare
    LIGHT = "light"       # motion below Min: the plate ringing after a removal, a touch
    LOADED = "loaded"     # motion, over capacity, stable below Min
    STABLE = "stable"     # a priceable weight (stable, fresh, in range, back to zero since the last sale)
    SOLD = "sold"         # what is on the plate is in the basket: back to zero first


_S = FlowState
#: The transitions, all of them: input -> state before -> state after (absent: unchanged).
_NEXT: dict[ScaleInput, dict[FlowState, FlowState]] = {
    ScaleInput.OFFLINE: {s: _S.NOT_READY for s in FlowState},
    ScaleInput.EMPTY: {s: _S.IDLE for s in FlowState},
    ScaleInput.LIGHT: {_S.CHOOSING: _S.SETTLING},
    ScaleInput.LOADED: {_S.NOT_READY: _S.SETTLING, _S.IDLE: _S.SETTLING, _S.CHOOSING: _S.SETTLING},
    ScaleInput.STABLE: {_S.NOT_READY: _S.CHOOSING, _S.IDLE: _S.CHOOSING, _S.SETTLING: _S.CHOOSING},
    ScaleInput.SOLD: {s: _S.PRICED for s in FlowState},
}
#: Entering SETTLING or CHOOSING from these is a new weighing (new guesses).
_NEW_WEIGHING_FROM = {_S.NOT_READY, _S.IDLE, _S.PRICED}
_ON_PLATE = {_S.SETTLING, _S.CHOOSING}


def next_state(state: FlowState, scale: ScaleInput) -> FlowState:
    return _NEXT[scale].get(state, state)


# -- typed results ---------------------------------------------------------------------
class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class ItemView(_Model):
    code: str
    name_zh: str
    name_en: str
    price_unit: str
    unit_price_fen: int
    origin: str | None
    inspection: str
    batch_code: str | None
    label: str | None
    tare_presets_g: tuple[int, ...]
    blocked_reason: str | None


class Guess(_Model):
    item: ItemView
    label: str
    confidence: float


class ActionResult(_Model):
    """What one vendor action did: ``ok`` False carries the reason it was refused."""

    ok: bool
    state: FlowState
    reason: str | None = None
    line: BasketLine | None = None
    #: Confirmed on a weight that is not stable yet: priced as soon as it is.
    pending: bool = False
    #: The recogniser's label this tap taught (the photo of this weighing).
    taught: str | None = None
    #: The label whose teaching a void took back (the voided line's tap had taught it).
    untaught: str | None = None
    auto: bool = False


class TareResult(_Model):
    ok: bool
    tare_g: int
    reason: str | None = None


class CheckoutResult(_Model):
    ok: bool
    reason: str | None = None
    sale: Sale | None = None
    printed: bool = False
    print_error: str | None = None


class SearchResult(_Model):
    query: str
    items: list[ItemView]


class Fault(_Model):
    """Something a vendor must know: ``vendor`` says what to do, ``customer`` is short."""

    kind: str          # scale, camera, printer, server, basket, disk
    vendor: str
    customer: str


class Snapshot(_Model):
    """Everything a vendor's or a customer's screen shows, as one consistent value."""

    state: FlowState
    weigh_state: str
    gross_g: int | None
    net_g: int | None
    tare_g: int
    priceable_g: int | None
    recognizing: bool
    unknown: bool | None
    guesses: list[Guess]
    chosen: ItemView | None
    basket: list[BasketLine]
    total_fen: int
    warnings: list[str]
    faults: list[Fault]
    taught: int
    last_receipt: str | None
    #: The online order the open basket fulfils (``edge.orders``), if any.
    order_id: int | None = None


# -- pinyin initials ---------------------------------------------------------------------
def pinyin_initials(name: str, limit: int = 8) -> set[str]:
    """Every reading's initials of ``name`` (多音字 give several: 长 -> c or z), lower case;
    letters and digits in the name stay as they are."""
    from pypinyin import Style, pinyin

    per_char = pinyin(name, style=Style.FIRST_LETTER, heteronym=True, errors="default")
    choices = [sorted({c.lower() for c in chars if c})[:3] or [""] for chars in per_char]
    return {"".join(combo) for combo in itertools.islice(itertools.product(*choices), limit)}


@dataclass
class _Taught:
    """One tap's teaching, kept while its line can still be voided.  Its photo is taught under
    ``tag`` (the basket line's, or the tap's until a tap made while settling is priced), saved
    with the gallery's rows: a void after a restart finds it by the line alone."""

    label: str
    tag: str
    line_no: int | None = None       # None until a tap made while settling is priced


# -- the flow ---------------------------------------------------------------------------------
class StallFlow:
    def __init__(self, session: Session, *, stop: threading.Event,
                 camera: Camera | None = None, recognizer: RecognizerLike | None = None,
                 printer: PrinterLike | None = None, auto_confirm: float = 0.9,
                 teach: Literal["corrections", "taps", "off"] = "taps",
                 on_sale: Callable[[Sale], None] | None = None,
                 scale_fault: str | None = None, gallery_aside: str | None = None) -> None:
        self.session = session
        self.camera = camera
        self.recognizer = recognizer
        self.printer = printer
        self.auto_confirm = auto_confirm
        #: Which taps teach (``[camera] teach``).  A tap is the vendor's word on the item; a guess
        #: taken by itself is only the recogniser's, and teaching it would teach the model its own
        #: mistakes, so it never teaches.  Every tap by default: on photos of occasions the
        #: network never saw, the stall then reads 4.6 points more over a day than when it learns
        #: from corrections only (``bench/onsite_bench.py``, docs/benchmarks.md).
        self.teach = teach
        self._on_sale = on_sale or (lambda _sale: None)
        #: Where the taught items the stall could not read at its start were kept: the vendor is
        #: told, until the first sale, that the scale learns them again from the taps.
        self.gallery_aside = gallery_aside
        #: Why the stall has no scale at all (not calibrated): nothing is priced.
        self.scale_fault = scale_fault
        self._listeners: list[Callable[[], None]] = []
        session.listen(lambda _what: self.changed())
        self._stop = stop
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._jobs: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._state = FlowState.NOT_READY
        self._weighing = 0              # id of the current weighing (stale recognitions are dropped)
        self._frame: np.ndarray | None = None
        self._recognition: RecognitionLike | None = None
        self._recognizing = False
        self._guesses: list[Guess] = []
        self._chosen: str | None = None  # confirmed before the weight was stable
        self._auto_tried = False
        self._hold = False               # a piece item confirmed on the plate: back to zero first
        self._taught = 0
        # The basket's taught taps by line number, and the one waiting for its line (a tap
        # made while the weight settled): a voided line takes its teaching back.
        self._taught_lines: dict[int, _Taught] = {}
        self._pending_taught: _Taught | None = None
        self._last_error: str | None = None
        self._last_receipt: str | None = None
        self._search_cache: tuple[int, dict[str, set[str]]] | None = None

    # -- life -----------------------------------------------------------------------
    def start(self) -> None:
        for name, target in (("flow", self._run), ("recognize", self._recognize_loop)):
            thread = threading.Thread(target=target, name=f"{name}:{self.session.info.stall_id}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Join the workers; the stall's stop event (set first) ends them."""
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()

    def wake(self) -> None:
        """A new scale reading arrived (the link's thread): step the machine now."""
        self._wake.set()

    def on_change(self, fn: Callable[[], None]) -> None:
        """``fn()`` after every change of what :meth:`snapshot` shows but the weight (the
        link's readings come at their own pace).  Called on the thread that made the change,
        sometimes with the flow's lock held: ``fn`` must only signal, never call back."""
        self._listeners.append(fn)

    def changed(self) -> None:
        for fn in list(self._listeners):
            fn()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.1)
            self._wake.clear()
            try:
                self.step()
            except Exception:  # noqa: BLE001 - the flow thread must outlive one bad step
                logger.exception("flow step failed")

    # -- the machine ------------------------------------------------------------------
    @property
    def state(self) -> FlowState:
        return self._state

    def _scale_input(self) -> ScaleInput:
        weigher = self.session.weigher
        shown = weigher.shown
        if shown.state is WeighState.NOT_READY:
            return ScaleInput.OFFLINE
        empty = shown.state in (WeighState.STABLE_ZERO, WeighState.UNDER_ZERO)
        if (weigher.needs_return_to_zero and shown.state is not WeighState.STABLE_ZERO) or \
                (self._hold and not empty):
            return ScaleInput.SOLD
        if empty:
            return ScaleInput.EMPTY
        if self.session.priceable_g() is not None:
            return ScaleInput.STABLE
        if shown.state is WeighState.MOTION and shown.net_g is not None and \
                abs(shown.net_g) < weigher.spec.min_g:
            return ScaleInput.LIGHT
        return ScaleInput.LOADED

    def step(self) -> FlowState:
        """Read the scale, take the transition, price what waits for a stable weight."""
        with self._lock:
            scale = self._scale_input()
            old = self._state
            new = next_state(old, scale)
            if new is not old:
                self._enter(old, new, scale)
            if self._state is FlowState.CHOOSING:
                self._price_waiting()
            return self._state

    def _enter(self, old: FlowState, new: FlowState, scale: ScaleInput) -> None:
        logger.info("flow %s: %s -> %s (scale %s)", self.session.info.stall_id, old.value,
                    new.value, scale.value)
        self._state = new
        self.changed()
        if new is FlowState.IDLE or new is FlowState.NOT_READY and old in _ON_PLATE:
            self._hold = False
            self._forget_weighing()
        elif new in _ON_PLATE and old in _NEW_WEIGHING_FROM:
            self._forget_weighing()
            self._start_recognition()

    def _forget_weighing(self) -> None:
        self._weighing += 1
        self._frame = self._recognition = None
        self._recognizing = False
        self._guesses = []
        self._chosen = None
        self._pending_taught = None
        self._auto_tried = False

    def _start_recognition(self) -> None:
        if self.camera is None or self.recognizer is None or self.camera.fault is not None:
            return  # manual mode: the vendor picks by hand
        self._recognizing = True
        self._jobs.put(("recognize", self._weighing))

    def _price_waiting(self) -> None:
        """CHOOSING: price the item confirmed while settling, else take a sure guess."""
        code, auto = self._chosen, False
        if code is None and not self._auto_tried and self._recognition is not None:
            code = self._sure_guess()
            auto = code is not None
            self._auto_tried = True
        if code is not None:
            result = self._price(code, auto=auto)
            if not result.ok:
                if self._moved():  # tried again at the next stable frame
                    if auto:
                        self._auto_tried = False
                    return
                logger.warning("not priced: %s", result.reason)
                self._chosen = None

    def _moved(self) -> bool:
        """The weight is no longer priceable: it moved after this flow last looked at it.  The
        link's thread updates the scale while this one prices, so a reading in motion can land
        between the look and the pricing; the vendor's tap (or a sure guess) then waits for the
        next stable frame, as one made while settling, instead of being lost."""
        return self.session.priceable_g() is None

    def _sure_guess(self) -> str | None:
        rec = self._recognition
        if rec is None or rec.unknown or not rec.top or not self._guesses:
            return None
        best = self._guesses[0]
        # Only the recogniser's own first label, above the configured confidence.
        if best.label != rec.top[0][0] or best.confidence < self.auto_confirm:
            return None
        if best.item.blocked_reason is not None or best.item.price_unit == "piece":
            return None
        return best.item.code

    def _price(self, code: str, *, auto: bool) -> ActionResult:
        """The confirmed item on the scale's stable weight, through the session (lock held)."""
        try:
            self.session.select(code)
            line = self.session.add_weighed()
        except EdgeError as exc:
            return self._refused(str(exc))
        self._chosen = None
        if not auto and self._pending_taught is not None:
            taught, self._pending_taught = self._pending_taught, None
            tag = self._line_tag(line.line_no)
            # the recogniser's thread runs its jobs in order: the tap's photo is taught (under the
            # tap's tag) before this renames it, and renamed before a void of the line takes it
            self._jobs.put(("retag", (taught.tag, tag)))
            taught.line_no, taught.tag = line.line_no, tag
            self._taught_lines[line.line_no] = taught
        if self.session.weigher.host_tare_g:
            # The tare belonged to this item's container: the next item starts without it.
            self.session.clear_tare()
        self._enter(self._state, FlowState.PRICED, ScaleInput.SOLD)
        logger.info("priced %s line %d: %s %s g = %d 分", "auto" if auto else "confirmed",
                    line.line_no, line.plu, line.weight_g, line.amount_fen)
        return ActionResult(ok=True, state=self._state, line=line, auto=auto)

    def _refused(self, reason: str) -> ActionResult:
        return ActionResult(ok=False, state=self._state, reason=reason)

    # -- the recogniser's thread -------------------------------------------------------
    def _recognize_loop(self) -> None:
        while not self._stop.is_set():
            try:
                job, arg = self._jobs.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                if job == "recognize":
                    self._recognize(arg)
                elif job == "teach":
                    taught, frame, why = arg
                    assert self.recognizer is not None
                    with self._lock:
                        tag = taught.tag
                    # Only a correction is offered to the market's other stalls: a tap that agreed
                    # with the guess teaches them nothing they would miss, and every sale's photo
                    # would flood their galleries.
                    self.recognizer.teach(taught.label, frame, offer=why == "correction", tag=tag)
                    with self._lock:
                        self._taught += 1
                    self.changed()
                    logger.info("taught %s from a %s", taught.label, why)
                elif job == "retag":
                    assert self.recognizer is not None
                    self.recognizer.retag(*arg)
                else:
                    self._forget_tap(arg)
            except Exception as exc:  # noqa: BLE001 - recognition helps, it never blocks a sale
                logger.warning("recogniser %s failed: %s", job, exc)
                with self._lock:
                    self._recognizing = False
                self.changed()

    def _recognize(self, weighing: int) -> None:
        assert self.camera is not None and self.recognizer is not None
        frame = self.camera.read()
        # Every label ranked: the four best guesses are those among this stall's items.
        result = self.recognizer.recognize(frame, top_k=RANK_ALL) if frame is not None else None
        with self._lock:
            if weighing != self._weighing:
                return  # the plate was emptied meanwhile
            self._recognizing = False
            if result is None:
                self._last_error = NO_FRAME
                self.changed()
                return
            if self._last_error == NO_FRAME:
                self._last_error = None  # frames come again
            self._frame, self._recognition = frame, result
            self._guesses = self._guesses_of(result)
            logger.info("guesses %s%s", [(g.item.code, round(g.confidence, 3)) for g in self._guesses],
                        " (unknown)" if result.unknown else "")
        self.changed()
        self.step()

    # -- items -------------------------------------------------------------------------
    def _catalogue(self) -> Catalogue:
        return self.session.catalogue

    def _label_of(self, code: str) -> str | None:
        return next((lab for lab, c in self.session.labels.items() if c == code), None)

    def _item_for_label(self, label: str) -> Plu | None:
        item = self.session.item_for_label(label)
        if item is None:
            # Items taught at the stall without a model label are taught under their PLU code.
            try:
                item = self._catalogue().get(label)
            except CatalogueError:
                return None
        return item

    def _view(self, item: Plu) -> ItemView:
        now = dt.datetime.now(self.session.info.tz)
        return ItemView(code=item.code, name_zh=item.name_zh, name_en=item.name_en,
                        price_unit=item.price_unit, unit_price_fen=item.price_at(now),
                        origin=item.origin, inspection=item.inspection, batch_code=item.batch_code,
                        label=self._label_of(item.code), tare_presets_g=item.tare_presets_g,
                        blocked_reason=item.block_reason)

    def _guesses_of(self, rec: RecognitionLike) -> list[Guess]:
        guesses: list[Guess] = []
        for label, score in rec.top:
            item = self._item_for_label(label)
            if item is None or any(g.item.code == item.code for g in guesses):
                continue
            guesses.append(Guess(item=self._view(item), label=label, confidence=float(score)))
            if len(guesses) == GUESSES:
                break
        return guesses

    def items(self) -> list[ItemView]:
        """The stall's catalogue as the screen lists it (stopped items with their reason)."""
        return [self._view(item) for item in self._catalogue()]

    def search(self, query: str) -> SearchResult:
        """Manual pick: by PLU code, by name (Chinese or English) or by pinyin initials
        (西红柿: ``xhs``); best matches first."""
        q = query.strip().lower()
        if not q:
            return SearchResult(query=query, items=[])
        catalogue = self._catalogue()
        if self._search_cache is None or self._search_cache[0] != id(catalogue):
            self._search_cache = (id(catalogue), {i.code: pinyin_initials(i.name_zh) for i in catalogue})
        initials = self._search_cache[1]

        def rank(item: Plu) -> int | None:
            code, inits = item.code.lower(), initials.get(item.code, set())
            if code == q:
                return 0
            if code.startswith(q):
                return 1
            if any(i.startswith(q) for i in inits):
                return 2
            if q in item.name_zh or item.name_en.lower().startswith(q):
                return 3
            if q in item.name_en.lower() or any(q in i for i in inits):
                return 4
            return None

        ranked = sorted((r, item.code, item) for item in catalogue if (r := rank(item)) is not None)
        return SearchResult(query=query, items=[self._view(item) for *_, item in ranked[:SEARCH_LIMIT]])

    # -- vendor actions ------------------------------------------------------------------
    def confirm(self, code: str, quantity: int | None = None) -> ActionResult:
        """One tap: a guess, or an item picked by hand.  A weighed item is priced on the
        stable weight (now, or as soon as the weight settles); an item by the piece takes
        ``quantity``.  The pick teaches the recogniser this weighing's photo (under ``teach =
        "corrections"`` only a pick other than the top guess; under ``"off"`` none)."""
        with self._lock:
            item = self._sellable(code)
            if isinstance(item, ActionResult):
                return item
            if item.price_unit == "piece":
                result = self._add_pieces(item, quantity or 1)
            elif self._state is FlowState.CHOOSING:
                result = self._price(code, auto=False)
                if not result.ok and self._moved():
                    self._chosen = code
                    result = ActionResult(ok=True, state=self._state, pending=True)
            elif self._state is FlowState.SETTLING:
                self._chosen = code
                result = ActionResult(ok=True, state=self._state, pending=True)
            elif self._state is FlowState.PRICED:
                return self._refused("称盘上的商品已计价，请先清盘归零 / "
                                     "the load is priced: empty the scale first")
            elif self._state is FlowState.NOT_READY:
                return self._refused("秤未就绪，不能计价 / the scale is not ready: nothing can be priced")
            else:
                return self._refused("请先把商品放上秤 / put the item on the scale first")
            if result.ok:
                taught = self._teach_from_tap(item, result.line)
                if taught:
                    result = result.model_copy(update={"taught": taught})
                self.changed()
            return result

    def _teach_from_tap(self, item: Plu, line: BasketLine | None) -> str | None:
        rec, frame = self._recognition, self._frame
        if rec is None or frame is None or self.recognizer is None or self.teach == "off":
            return None
        top_code = self._guesses[0].item.code if self._guesses and not rec.unknown else None
        corrected = top_code != item.code
        if not corrected and self.teach != "taps":
            return None
        label = self._label_of(item.code) or item.code
        if line is not None:
            taught = _Taught(label, self._line_tag(line.line_no), line.line_no)
            self._taught_lines[line.line_no] = taught
        else:
            # unique, not counted: a restart restores the basket and would count again
            taught = _Taught(label, f"{self.session.basket_id}/tap-{uuid.uuid4().hex[:12]}")
            self._pending_taught = taught
        self._jobs.put(("teach", (taught, frame, "correction" if corrected else "tap")))
        self._frame = None  # one photo teaches once
        return label

    def _line_tag(self, line_no: int) -> str:
        """What a basket line's tap taught is saved under: the basket's id (kept across a
        restart with the basket) and the line's number."""
        return f"{self.session.basket_id}/{line_no}"

    def add_pieces(self, code: str, quantity: int) -> ActionResult:
        """An item sold by the piece: no weight needed."""
        with self._lock:
            item = self._sellable(code)
            return item if isinstance(item, ActionResult) else self._add_pieces(item, quantity)

    def _sellable(self, code: str) -> Plu | ActionResult:
        """The item, or the refusal saying why it may not be sold (unknown, blocked batch,
        price above the cap)."""
        self.step()
        try:
            item = self._catalogue().get(code)
            item.check_sellable()
        except CatalogueError as exc:
            return self._refused(str(exc))
        return item

    def _add_pieces(self, item: Plu, quantity: int) -> ActionResult:
        if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 1:
            return self._refused(f"quantity must be a whole number of pieces, got {quantity!r}")
        try:
            line = self.session.add_pieces(item.code, quantity)
        except EdgeError as exc:
            return self._refused(str(exc))
        if self._state in _ON_PLATE:
            # The pieces lie on the plate: take them off before the next weighing.
            self._hold = True
            self._enter(self._state, FlowState.PRICED, ScaleInput.SOLD)
        return ActionResult(ok=True, state=self._state, line=line)

    def tare(self) -> TareResult:
        """Tare what lies on the plate now (a container)."""
        return self._tare(self.session.tare)

    def tare_preset(self, grams: int) -> TareResult:
        """A preset tare: one of the catalogue's container weights, nothing typed freely."""
        presets = {g for item in self._catalogue() for g in item.tare_presets_g}
        if grams not in presets:
            return TareResult(ok=False, tare_g=self.session.weigher.tare_g,
                              reason=f"{grams} g is not one of this stall's tare presets {sorted(presets)}")
        return self._tare(lambda: self.session.preset_tare(grams))

    def clear_tare(self) -> TareResult:
        def clear() -> int:
            self.session.clear_tare()
            return 0

        return self._tare(clear)

    def _tare(self, fn: Callable[[], int]) -> TareResult:
        with self._lock:
            try:
                grams = fn()
            except EdgeError as exc:
                return TareResult(ok=False, tare_g=self.session.weigher.tare_g, reason=str(exc))
            return TareResult(ok=True, tare_g=grams)

    def void(self, line_no: int, reason: str) -> ActionResult:
        """Void a basket line.  A line whose tap taught the recogniser takes that teaching
        back: a vendor voids a line mostly because the tap was on the wrong item, and its photo
        taught under that item would keep misleading the guesses."""
        with self._lock:
            try:
                line = self.session.void(line_no, reason)
            except EdgeError as exc:
                return self._refused(str(exc))
            taught = self._taught_lines.pop(line_no, None)
            tag = self._line_tag(line_no)
            # A line of a basket restored after a restart: what its tap taught is in the gallery
            # under the line's tag, and nowhere in memory.
            label = (taught.label if taught is not None
                     else self.recognizer.taught_under(tag) if self.recognizer is not None else None)
            if label is not None:
                # queued behind the tap's own teaching if that has not run yet
                self._jobs.put(("forget", tag))
            return ActionResult(ok=True, state=self._state, line=line, untaught=label)

    def _forget_tap(self, tag: str) -> None:
        """The recogniser's thread: take a voided tap's exemplars out of the gallery."""
        assert self.recognizer is not None
        label, removed = self.recognizer.forget_tagged(tag)
        logger.info("took back %s taught from a voided line (%d exemplars)", label, removed)

    def attach_order(self, order_id: int | None) -> ActionResult:
        """The open basket (empty) fulfils online order ``order_id``: each of its lines is then
        weighed as any other, and its sale carries the order's id.  None detaches it."""
        with self._lock:
            try:
                self.session.attach_order(order_id)
            except EdgeError as exc:
                return ActionResult(ok=False, state=self._state, reason=str(exc))
        self.changed()
        return ActionResult(ok=True, state=self._state)

    def discard(self, reason: str) -> ActionResult:
        """The shopper walks away: every line void, the trail kept."""
        with self._lock:
            if not reason.strip():
                return self._refused("a discarded basket needs a reason")
            if not self.session.lines:
                return self._refused("the basket is empty")
            self.session.discard(reason)
            # the shopper walked away; the vendor's taps were right: their teaching stays
            self._taught_lines.clear()
            return ActionResult(ok=True, state=self._state)

    def checkout(self) -> CheckoutResult:
        """Journal the basket as a signed sale, then print and upload; a failed print keeps
        the sale (queued for reprint)."""
        with self._lock:
            self.step()
            try:
                sale = self.session.checkout()
            except EdgeError as exc:
                return CheckoutResult(ok=False, reason=str(exc))
            self._taught_lines.clear()  # a sold line is not voided: its teaching stays
            self.gallery_aside = None  # the vendor has had a basket's time to read it
            printed, error = True, None
            if self.printer is None:
                printed = False
            else:
                try:
                    self.printer.print_sale(sale)
                except EdgeError as exc:
                    printed, error = False, str(exc)
                    logger.error("receipt %d not printed, queued for reprint: %s", sale.receipt_no, exc)
            self._last_error = error
            self._last_receipt = sale.trace_code
        self.changed()
        self._on_sale(sale)
        return CheckoutResult(ok=True, sale=sale, printed=printed, print_error=error)

    # -- what the screens show -----------------------------------------------------------
    def snapshot(self) -> Snapshot:
        with self._lock:
            self.step()
            session, weigher = self.session, self.session.weigher
            shown = weigher.shown
            lines = session.lines
            chosen = None
            if self._chosen is not None:
                try:
                    chosen = self._view(self._catalogue().get(self._chosen))
                except CatalogueError:
                    chosen = None
            return Snapshot(
                state=self._state, weigh_state=shown.state.value, gross_g=shown.gross_g,
                net_g=shown.net_g, tare_g=shown.tare_g, priceable_g=session.priceable_g(),
                recognizing=self._recognizing,
                unknown=self._recognition.unknown if self._recognition is not None else None,
                guesses=list(self._guesses), chosen=chosen, basket=lines,
                total_fen=sum(ln.amount_fen for ln in lines),
                warnings=self._warnings(shown.state, shown.net_g),
                faults=self._faults(shown.state),
                taught=self._taught, last_receipt=self._last_receipt, order_id=session.order_id)

    def _warnings(self, weigh: WeighState, net_g: int | None) -> list[str]:
        out: list[str] = []
        spec = self.session.weigher.spec
        if weigh is WeighState.NOT_READY:
            pass  # a fault: said with what to do (_faults)
        elif weigh is WeighState.OVER_CAPACITY:
            out.append(f"超过最大称量 {spec.max_g} g / over capacity")
        elif weigh is WeighState.UNDER_ZERO and not self.session.weigher.tare_g:
            out.append("秤低于零点 / scale below zero")
        elif weigh is WeighState.STABLE_NET and net_g is not None and net_g < spec.min_g:
            out.append(f"低于最小称量 {spec.min_g} g / below Min: not priced")
        if self._state is FlowState.PRICED:
            out.append("请清盘归零 / empty the scale before the next item")
        if (self.camera is None or self.recognizer is None) and (self.camera is None or
                                                                 self.camera.fault is None):
            out.append("无识别，手动选品 / no recognition: choose items by hand")
        if self._chosen is not None:
            out.append("等待稳定后计价 / priced once the weight is stable")
        if self._last_error:
            out.append(self._last_error)
        if self.session.catalogue_pending:
            out.append("新价目表在本单结束后生效 / new prices apply after this basket")
        if self.gallery_aside is not None:
            out.append(f"已学的商品读不出，已另存（{self.gallery_aside}）：请照常点选，秤会重新学会 / "
                       f"the items this scale was taught could not be read and were kept aside "
                       f"({self.gallery_aside}): tap items as usual, it learns them again")
        return out

    def _faults(self, weigh: WeighState) -> list[Fault]:
        out: list[Fault] = []
        if self.scale_fault is not None:
            out.append(Fault(kind="scale", vendor=f"秤未标定，不能计价：请计量技术员标定（wetmarket "
                             f"scale-calibrate）/ scale not calibrated, nothing is priced: call the "
                             f"technician ({self.scale_fault})",
                             customer="秤未标定，暂停计价 / scale not calibrated: no price"))
        elif weigh is WeighState.NOT_READY:
            out.append(Fault(kind="scale", vendor="秤无读数，不能计价：请检查秤的连线和电源 / "
                             "scale offline, nothing is priced: check the scale's cable and power",
                             customer="秤未就绪，暂停计价 / scale not ready: no price"))
        fault = self.camera.fault if self.camera is not None else None
        if fault is not None:
            zh, en = (("摄像头未连接", "camera missing") if fault == "missing"
                      else ("摄像头画面冻结", "camera frozen"))
            out.append(Fault(kind="camera", vendor=f"{zh}：无识别，请按 PLU、品名或拼音首字母选品，"
                             f"并检查摄像头 / {en}, no recognition: pick items by PLU, name or "
                             "pinyin initials, and check the camera",
                             customer="摊主手动选品 / the vendor picks items by hand"))
        if self.session.disk_error is not None:
            out.append(Fault(kind="disk", vendor="本机存储写不进（磁盘已满或故障）：不能结账，本单未保存，"
                             "请清理空间或联系技术员 / the stall's disk cannot be written (full or "
                             "failing): no sale can be kept, so checkout is refused and nothing prints; "
                             f"free space or call the technician ({self.session.disk_error})",
                             customer="暂停结账，请稍候 / checkout paused, please wait"))
        if self.session.restored:
            n = len(self.session.lines)
            out.append(Fault(kind="basket", vendor=f"已恢复重启前未结账的本单（{n} 行），请核对后"
                             f"结账或作废 / open basket restored after a restart ({n} lines): check "
                             "it, then check out or discard",
                             customer="本单已恢复 / your basket was restored"))
        return out

