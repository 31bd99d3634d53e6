"""Legal-for-trade weighing states (OIML R76 / JJG 539, accuracy class III).

The link hands over :class:`~firmware_bridge.reading.Reading` s; the
:class:`Weigher` turns them into one of six states and decides, reading by
reading, whether a weight may be priced now.  The rules it enforces:

* only a fresh (``freshness_s``), stable, in-range net weight of at least
  Min = 20e is priceable, rounded to the scale interval e;
* nothing is priced below zero or above Max;
* after a sale (:meth:`Weigher.mark_sold`) the scale must show stable zero before
  the next weight is priceable (no phantom second sale of the same load);
* tare only when stable and positive; zero setting only when stable and within
  ``zero_range_pct`` of Max in total; zero tracking only near zero, while
  stable, at most 0.5e per second;
* dual range: the fine interval e1 up to Max1; once the load passes Max1 the
  coarse e holds until the scale returns to zero.
"""

from __future__ import annotations

import enum
import logging
import time
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge import EdgeError
from firmware_bridge.audit import AuditLog
from firmware_bridge.filters import MIN_SAMPLES, WINDOW_S, StabilityFilter
from firmware_bridge.reading import Reading

logger = logging.getLogger(__name__)


class WeighingError(EdgeError):
    """A zero or tare request the scale must refuse (motion, out of range)."""


class WeighState(enum.Enum):
    NOT_READY = "not_ready"
    MOTION = "motion"
    STABLE_ZERO = "stable_zero"
    STABLE_NET = "stable_net"
    UNDER_ZERO = "under_zero"
    OVER_CAPACITY = "over_capacity"


class ScaleSpec(BaseModel):
    """The metrological data plate of a scale (single or dual range)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_g: int = Field(gt=0, title="Max", description="maximum capacity in grams")
    e_g: int = Field(gt=0, title="e", description="verification interval (of the upper range)")
    max1_g: int | None = Field(None, gt=0, title="Max1", description="dual range: capacity of the fine range")
    e1_g: int | None = Field(None, gt=0, title="e1", description="dual range: fine interval")
    zero_range_pct: float = Field(
        4.0, ge=0, le=4.0, description="zero setting range, % of Max in total (R76: 4 %)"
    )
    zero_tracking: bool = Field(True, description="track zero drift near zero (<= 0.5e/s)")
    freshness_s: float = Field(1.0, gt=0, description="a reading older than this is not ready")
    stability: Literal["module", "filter", "both"] = Field(
        "module",
        description="module: trust the reading's stable flag (the link filters flagless"
        " modules); filter: our own window filter; both: require both",
    )
    filter_window_s: float = Field(WINDOW_S, gt=0, description="stability window of our filter")
    filter_min_frames: int = Field(
        MIN_SAMPLES, ge=1, description="our filter also needs this many frames (slow streams)"
    )
    filter_band_e: float = Field(1.0, ge=0, description="stability band, ± this many e")

    @model_validator(mode="after")
    def _dual_range(self) -> ScaleSpec:
        if (self.max1_g is None) != (self.e1_g is None):
            raise ValueError("dual range needs both max1_g and e1_g")
        dual = self.max1_g is not None and self.e1_g is not None
        if dual and not (self.max1_g < self.max_g and self.e1_g < self.e_g):  # type: ignore[operator]
            raise ValueError("dual range needs max1_g < max_g and e1_g < e_g")
        return self

    @property
    def dual(self) -> bool:
        return self.max1_g is not None

    @property
    def min_g(self) -> int:
        """Min = 20e (of the fine range on a dual-range scale)."""
        return 20 * (self.e1_g if self.e1_g is not None else self.e_g)


def round_to(grams: int, e: int) -> int:
    """Round to a multiple of e, halves away from zero (integers only)."""
    q = (2 * abs(grams) + e) // (2 * e) * e
    return q if grams >= 0 else -q


class Weighed(NamedTuple):
    """What the scale shows after one reading, published in one assignment so a reader on
    another thread never pairs a new weight with an old state."""

    state: WeighState
    gross_g: int | None  # zeroed, rounded to e
    tare_g: int
    net_g: int | None
    reading: Reading | None


_NOT_READY = Weighed(WeighState.NOT_READY, None, 0, None, None)


class Weigher:
    """The weighing state machine of one stall scale; feed it every reading (from one thread;
    the properties may be read from any)."""

    def __init__(self, spec: ScaleSpec, audit: AuditLog | None = None) -> None:
        self.spec = spec
        self.audit = audit
        self._now: Weighed = _NOT_READY
        self.zero_offset_g = 0
        self._host_tare_g = 0
        self._upper_range = False
        self._need_zero = False
        self._last_track: float | None = None
        self._filter = StabilityFilter(
            spec.filter_window_s, int(spec.filter_band_e * spec.e_g), min_samples=spec.filter_min_frames
        )

    # ---- what the scale shows --------------------------------------------------------
    @property
    def shown(self) -> Weighed:
        """State and weights of the last update, as one consistent value; NOT_READY once its
        reading is older than ``freshness_s``, even if no update came since (link gone)."""
        now = self._now
        r = now.reading
        if r is not None and time.time() - r.t > self.spec.freshness_s:
            return Weighed(WeighState.NOT_READY, None, now.tare_g, None, r)
        return now

    @property
    def state(self) -> WeighState:
        return self.shown.state

    @property
    def gross_g(self) -> int | None:
        return self.shown.gross_g

    @property
    def tare_g(self) -> int:
        return self.shown.tare_g

    @property
    def net_g(self) -> int | None:
        return self.shown.net_g

    # ---- the state machine ---------------------------------------------------------
    def e_now(self) -> int:
        spec = self.spec
        if spec.e1_g is not None and not self._upper_range:
            return spec.e1_g
        return spec.e_g

    def update(self, reading: Reading | None, now: float | None = None) -> WeighState:
        now = time.time() if now is None else now
        shown = self._classify(reading, now)
        if shown.state is not self._now.state:
            logger.debug("weigh state %s -> %s", self._now.state.name, shown.state.name)
        self._now = shown
        if shown.state is WeighState.STABLE_ZERO:
            self._need_zero = False
        return shown.state

    def _classify(self, r: Reading | None, now: float) -> Weighed:
        spec = self.spec

        def blank(state: WeighState) -> Weighed:
            return Weighed(state, None, self._host_tare_g, None, r)

        if r is None or now - r.t > spec.freshness_s or r.status == "error":
            self._filter.reset()
            return blank(WeighState.NOT_READY)
        if r.status == "overload":
            return blank(WeighState.OVER_CAPACITY)
        if r.status == "underload":
            return blank(WeighState.UNDER_ZERO)
        if r.gross_g is None:
            return blank(WeighState.MOTION)
        gross_raw = r.gross_g - self.zero_offset_g
        if spec.max1_g is not None and gross_raw > spec.max1_g:
            self._upper_range = True
        stable = self._stable(r, gross_raw)
        if stable:
            self._track_zero(gross_raw, r, now)
            gross_raw = r.gross_g - self.zero_offset_g
        e = self.e_now()
        tare = self._host_tare_g or r.tare_g
        gross, net = round_to(gross_raw, e), round_to(gross_raw - tare, e)
        if gross_raw > spec.max_g:
            state = WeighState.OVER_CAPACITY
        elif gross < 0 or net < 0:
            state = WeighState.UNDER_ZERO
        elif not stable:
            state = WeighState.MOTION
        elif net == 0:
            if gross == 0:
                self._upper_range = False
            state = WeighState.STABLE_ZERO
        else:
            state = WeighState.STABLE_NET
        return Weighed(state, gross, tare, net, r)

    def _stable(self, r: Reading, gross: int) -> bool:
        mode = self.spec.stability
        # A reading that says stable but also motion is contradictory: take the safe half.
        flag = r.stable and r.status == "ok"
        if mode == "module":
            return flag
        own = self._filter.update(r.t, gross)
        return own if mode == "filter" else own and flag

    def _track_zero(self, gross_raw: int, r: Reading, now: float) -> None:
        last, self._last_track = self._last_track, now
        spec = self.spec
        if not spec.zero_tracking or self._host_tare_g or r.tare_g or last is None:
            return
        half_e = self.e_now() / 2
        if gross_raw == 0 or abs(gross_raw) > half_e:
            return
        allowed = int(half_e * min(now - last, 1.0))  # 0.5e per second, whole grams
        step = max(-allowed, min(allowed, gross_raw))
        if step and abs(self.zero_offset_g + step) <= spec.max_g * spec.zero_range_pct / 100:
            self.zero_offset_g += step

    # ---- what the stall may do -------------------------------------------------------
    @property
    def priceable_net_g(self) -> int | None:
        """A stable, fresh, in-range net weight >= Min, if the scale returned to zero since the
        last sale; else ``None``."""
        now, spec = self.shown, self.spec
        if now.state is not WeighState.STABLE_NET or self._need_zero:
            return None
        net = now.net_g
        if net is None or net < spec.min_g or net > spec.max_g:
            return None
        return net

    def mark_sold(self) -> None:
        """The current weight was sold: the scale must return to zero before the next sale."""
        self._need_zero = True

    @property
    def needs_return_to_zero(self) -> bool:
        return self._need_zero

    def zero(self) -> None:
        """Zero setting: only when stable, without tare, within the zero range."""
        spec, r = self.spec, self.shown.reading
        if self.state not in (WeighState.STABLE_ZERO, WeighState.STABLE_NET, WeighState.UNDER_ZERO):
            raise WeighingError(f"zero refused: scale is {self.state.value}")
        if r is None or r.gross_g is None or not r.stable:
            raise WeighingError("zero refused: the weight is not stable")
        if self._host_tare_g or r.tare_g:
            raise WeighingError("zero refused: clear the tare first")
        new_offset = r.gross_g
        limit = spec.max_g * spec.zero_range_pct / 100
        if abs(new_offset) > limit:
            self._audit("error", f"zero refused: {new_offset} g outside ±{limit:g} g")
            raise WeighingError(f"zero refused: {new_offset} g is outside the zero range")
        self.zero_offset_g = new_offset
        self._audit("zero", f"zero offset {new_offset} g")

    def tare(self) -> int:
        """Tare the current stable gross weight; returns the tare in grams."""
        now = self.shown
        if now.state is not WeighState.STABLE_NET or now.gross_g is None:
            raise WeighingError(f"tare refused: scale is {now.state.value}, not stable with a load")
        if now.gross_g <= 0 or now.gross_g > self.spec.max_g:
            raise WeighingError("tare refused: weight out of range")
        self._host_tare_g = now.gross_g
        self._audit("tare", f"tare {self._host_tare_g} g")
        return self._host_tare_g

    def preset_tare(self, grams: int) -> int:
        """A preset tare (a known container's weight), set before the container is placed."""
        if isinstance(grams, bool) or not 0 < grams < self.spec.max_g:
            raise WeighingError(f"tare refused: preset {grams!r} g out of range")
        self._host_tare_g = grams
        self._audit("tare", f"preset tare {grams} g")
        return grams

    @property
    def host_tare_g(self) -> int:
        """The tare set at the stall (a tare or a preset), not the module's own."""
        return self._host_tare_g

    def clear_tare(self) -> None:
        self._host_tare_g = 0
        self._audit("clear_tare", "tare cleared")

    def _audit(self, event: Literal["zero", "tare", "clear_tare", "error"], detail: str) -> None:
        logger.info("weigher %s: %s", event, detail)
        if self.audit is not None:
            self.audit.record(event, detail)
