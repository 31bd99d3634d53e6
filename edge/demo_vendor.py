"""A simulated vendor for the demo: puts produce on the simulated scale, shows it to the
camera, takes the recognizer's guess when it is sure (else taps the right item and so
teaches the scale), and prints the receipt.  It goes through exactly the code a real
vendor's taps go through; only the hands are simulated."""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import TYPE_CHECKING

from edge import EdgeError
from edge.catalogue import Plu

if TYPE_CHECKING:
    from edge.stall import StallApp

logger = logging.getLogger(__name__)

#: Typical weights a shopper buys, in grams, per price unit.
_WEIGHT_RANGE = {"kg": (150, 2500), "500g": (150, 2000)}


class SimulatedVendor:
    def __init__(self, app: StallApp, seed: int | None = None,
                 pause_s: tuple[float, float] = (0.5, 2.0)) -> None:
        self.app = app
        self.rng = random.Random(seed)
        self.pause_s = pause_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: PLU code -> the recognizer's label (what the camera is shown)
        self.labels = {code: label for label, code in app.session.labels.items()} if app.session else {}
        self.recognized = 0
        self.corrected = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sim-vendor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.app.recognizer is not None:
            logger.warning("camera picks: %d taken as recognised, %d corrected by the vendor",
                           self.recognized, self.corrected)

    def _wait(self, cond, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self._stop.is_set() and time.monotonic() < deadline:
            if cond():
                return True
            self._stop.wait(0.05)
        return False

    def _choose(self, item: Plu) -> None:
        """Look at the camera's guesses; take a sure one, else tap the right item."""
        session = self.app.session
        assert session is not None
        cam, rec = self.app.camera, self.app.recognizer
        frame = None
        if cam is not None and hasattr(cam, "show") and cam.show(self.labels.get(item.code)):
            frame = cam.read()
        if frame is not None and rec is not None:
            try:
                result = rec.recognize(frame)
            except EdgeError:
                result = None
            except Exception as exc:  # noqa: BLE001 - recognition is a help, never a blocker
                logger.warning("recognizer failed: %s", exc)
                result = None
            if result is not None and result.top and not result.unknown:
                label, score = result.top[0]
                guess = session.item_for_label(label)
                if guess is not None and score >= self.app.cfg.camera.auto_confirm:
                    if guess.code == item.code:
                        self.recognized += 1
                    session.select(guess.code)
                    return
            if label_of := self.labels.get(item.code):
                self.corrected += 1
                try:
                    rec.teach(label_of, frame)
                except Exception as exc:  # noqa: BLE001
                    logger.warning("could not teach %s: %s", label_of, exc)
        session.select(item.code)

    def _one_line(self, item: Plu) -> bool:
        app, session = self.app, self.app.session
        assert session is not None and app.sim is not None
        if item.price_unit == "piece":
            session.add_pieces(item.code, self.rng.randint(1, 4))
            return True
        lo, hi = _WEIGHT_RANGE[item.price_unit]
        app.sim.place(self.rng.randint(lo, hi))
        self._choose(item)
        if not self._wait(lambda: session.current_line() is not None, 8.0):
            logger.warning("scale never settled to a legal weight; taking the item off")
            app.sim.remove()
            return False
        session.add_weighed()
        app.sim.remove()
        # A legal scale sells nothing more until it is back at zero.
        self._wait(lambda: session.priceable_g() is None and session.weigh_state.name == "STABLE_ZERO",
                   5.0)
        return True

    def _run(self) -> None:
        session = self.app.session
        assert session is not None
        self._wait(lambda: session.weigh_state.name == "STABLE_ZERO", 10.0)
        while not self._stop.is_set():
            # The feed may change the catalogue between baskets; a stopped item is not sold.
            items = [item for item in session.catalogue if item.block_reason is None]
            for _ in range(self.rng.choice((1, 1, 2, 2, 3)) if items else 0):
                if self._stop.is_set():
                    return
                try:
                    self._one_line(self.rng.choice(items))
                except EdgeError as exc:  # the feed removed or stopped it a moment ago
                    logger.warning("not sold: %s", exc)
                    if self.app.sim is not None:
                        self.app.sim.remove()
            if session.lines and not self._stop.is_set():
                try:
                    self.app.checkout()
                except EdgeError as exc:
                    logger.error("checkout failed: %s", exc)
            self._stop.wait(self.rng.uniform(*self.pause_s))
