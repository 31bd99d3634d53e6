"""Host-side stability detection, for modules that send no stable flag.

Only a stable weight may be priced (DOMAIN.md §2), so the rule is kept small:
a weight is stable when every sample over the window lies within ``band_g``
of the newest one **and** the window holds at least ``min_samples`` samples,
the window being the longer of ``window_s`` and the span of the last
``min_samples`` frames at whatever rate they arrive (5 to 50 frames/s: a
1200-baud XK3190-A9 streams about 10, the link polls at 40).

Why both limits:

* the time window rejects a slow swing (a hand pressing, a bag swinging on
  the hook, 1 to 6 Hz): around a crest a 1 Hz swing of ±3e stays inside ±1e
  for about a quarter of a second, but over any 0.5 s it moves by more than
  2e, which the display's rounding cannot hide (it hides up to about 1.2e);
* the frame count rejects what a slow stream makes of a fast swing: frames
  sample it, and a swing near the frame rate looks like a slow wave in them
  (6 Hz in a 5 Hz stream: 1 Hz; 5.6 Hz: 0.6 Hz).  The 0.5 s window holds only
  four frames of a 5 Hz stream, which can all sit on the crest of a 0.6 Hz
  wave; five frames (0.8 s) cannot;
* a gap of more than ``max_gap_s`` between samples (or time going backwards)
  starts the window afresh: time nobody observed is not stable time.

Limit (no rule on the samples can lift it): a swing at nearly the frame rate,
or at nearly half of it in an unlucky phase, is sampled at the same point of
every cycle and looks like a still load.  With the defaults and a ±3e swing
this blind band is about ±0.45/W Hz around the frame rate and ±0.2/W Hz
around half of it, W being the window (0.8 s at 5 frames/s, 0.5 s from 10
frames/s up); from 13 frames/s up no swing of 1 to 6 Hz falls in one.

Delay: once the readings stay on one value or two adjacent ones, the filter is
stable at the frame that completes both limits, at most
:meth:`StabilityFilter.delay_bound_s` after the load settled: one frame period
(for the first settled frame to come) plus the longer of ``min_samples - 1``
periods and ``window_s`` rounded up to whole periods (1.0 s at 5 frames/s,
0.6 s at 10, 0.55 s at 20, 0.525 s at 40).
"""

from __future__ import annotations

import math
from collections import deque

#: Default window: long enough that a ±3e swing of 1 Hz leaves the ±1e band.
WINDOW_S = 0.5
#: Default frame count: 5 frames span 0.8 s at 5 frames/s (see the module docstring).
MIN_SAMPLES = 5
#: Default longest gap between two samples of one window: a 5 frames/s stream that
#: lost one frame (0.4 s) keeps its window; a stream that stopped does not.
MAX_GAP_S = 0.5
#: A sample that arrived a few ms late still counts towards ``window_s``.
SLACK_S = 0.015


class StabilityFilter:
    def __init__(
        self,
        window_s: float = WINDOW_S,
        band_g: int = 5,
        min_samples: int = MIN_SAMPLES,
        *,
        max_gap_s: float = MAX_GAP_S,
    ) -> None:
        if window_s <= 0 or band_g < 0 or min_samples < 1 or max_gap_s <= 0:
            raise ValueError("window_s > 0, band_g >= 0, min_samples >= 1 and max_gap_s > 0 are required")
        self.window_s = window_s
        self.band_g = band_g
        self.min_samples = min_samples
        self.max_gap_s = max_gap_s
        self._samples: deque[tuple[float, int]] = deque()

    def update(self, t: float, grams: int) -> bool:
        """Add a sample taken at monotonic time ``t``; return whether the weight is stable."""
        samples = self._samples
        if samples and not 0.0 <= t - samples[-1][0] <= self.max_gap_s:
            samples.clear()
        samples.append((t, grams))
        # Keep the shortest run of newest samples that still meets both limits.
        cover = self.window_s - SLACK_S
        while len(samples) > self.min_samples and t - samples[1][0] >= cover:
            samples.popleft()
        if len(samples) < self.min_samples or t - samples[0][0] < cover:
            return False
        band = self.band_g
        return all(abs(g - grams) <= band for _, g in samples)

    def reset(self) -> None:
        self._samples.clear()

    def delay_bound_s(self, period_s: float) -> float:
        """The longest a settled load waits to be stable in a stream of one frame per
        ``period_s`` (frame times exact; a late frame adds its lateness)."""
        # The 1e-9 keeps a window of exactly whole periods from rounding up one more.
        periods = max(self.min_samples - 1, math.ceil((self.window_s - SLACK_S) / period_s - 1e-9))
        return period_s * (1 + periods)
