"""A simulated vendor for the demo: shows produce to the camera, puts it on the simulated
scale, takes the stall's sure guess (the flow confirms it by itself), else taps the right
item among the guesses or by its PLU code (a correction teaches the stall), and prints the
receipt.

Only the hands are simulated: the scale and the camera are the demo's physical world,
and every tap is a public call of :class:`~edge.flow.StallFlow`, the same a screen or a
keypad makes."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from edge.camera import Camera, ImageFolderCamera
from edge.flow import FlowState, ItemView, StallFlow

if TYPE_CHECKING:
    from firmware_bridge.sim import Simulator

logger = logging.getLogger(__name__)

#: Typical weights a shopper buys, in grams, per price unit.
_WEIGHT_RANGE = {"kg": (150, 2500), "500g": (150, 2000)}


class SimulatedVendor:
    def __init__(self, flow: StallFlow, scale: Simulator, *, camera: Camera | None = None,
                 stop: threading.Event | None = None, seed: int | None = None,
                 pause_s: tuple[float, float] = (0.5, 2.0)) -> None:
        self.flow = flow
        self.scale = scale
        self.camera = camera
        self.rng = random.Random(seed)
        self.pause_s = pause_s
        self._stop = stop if stop is not None else threading.Event()
        self._thread: threading.Thread | None = None
        self.recognized = 0
        self.corrected = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sim-vendor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.recognized or self.corrected:
            logger.warning("camera picks: %d taken as recognised, %d corrected by the vendor",
                           self.recognized, self.corrected)

    def _wait(self, cond: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self._stop.is_set() and time.monotonic() < deadline:
            if cond():
                return True
            self._stop.wait(0.05)
        return False

    def _state_in(self, *states: FlowState) -> Callable[[], bool]:
        return lambda: self.flow.state in states

    def _weigh(self, item: ItemView) -> bool:
        """One weighed line: show, place, confirm (or let the stall confirm), take it off."""
        flow = self.flow
        if isinstance(self.camera, ImageFolderCamera):
            self.camera.show(item.label)  # held in front of the lens as it goes on the plate
        lo, hi = _WEIGHT_RANGE[item.price_unit]
        self.scale.place(self.rng.randint(lo, hi))
        try:
            if not self._wait(self._state_in(FlowState.CHOOSING, FlowState.PRICED), 8.0):
                logger.warning("scale never settled to a legal weight; taking the item off")
                return False
            # Give the recogniser its moment (it started while the weight settled).
            self._wait(lambda: not flow.snapshot().recognizing, 2.0)
            snap = flow.snapshot()
            if snap.state is FlowState.PRICED:
                line = snap.basket[-1] if snap.basket else None
                if line is not None and line.plu != item.code:
                    # Confirmed by itself, and wrong: the vendor voids the line.
                    flow.void(line.line_no, "识别错误 / recognised wrongly")
                    return False
                self.recognized += 1
                return True
            guesses = [g.item.code for g in snap.guesses]
            if guesses and guesses[0] == item.code:
                self.recognized += 1
            elif guesses:
                self.corrected += 1
            result = flow.confirm(item.code)
            if not result.ok:
                logger.warning("not sold: %s", result.reason)
                return False
            return self._wait(self._state_in(FlowState.PRICED), 5.0)
        finally:
            self.scale.remove()
            # A legal scale sells nothing more until it is back at zero.
            self._wait(self._state_in(FlowState.IDLE), 5.0)

    def _one_line(self, item: ItemView) -> bool:
        if item.price_unit == "piece":
            result = self.flow.add_pieces(item.code, self.rng.randint(1, 4))
            if not result.ok:
                logger.warning("not sold: %s", result.reason)
            return result.ok
        return self._weigh(item)

    def _run(self) -> None:
        flow = self.flow
        self._wait(self._state_in(FlowState.IDLE), 10.0)
        while not self._stop.is_set():
            # The feed may change the catalogue between baskets; a stopped item is not sold.
            items = [item for item in flow.items() if item.blocked_reason is None]
            for _ in range(self.rng.choice((1, 1, 2, 2, 3)) if items else 0):
                if self._stop.is_set():
                    return
                self._one_line(self.rng.choice(items))
            if flow.snapshot().basket and not self._stop.is_set():
                result = flow.checkout()
                if not result.ok:
                    logger.error("checkout failed: %s", result.reason)
            self._stop.wait(self.rng.uniform(*self.pause_s))
