"""Host-side stability detection, for modules that send no stable flag.

A weight is stable when every sample of the last ``window_s`` lies within
``band_g`` of the newest one and there are at least ``min_samples`` of them.
At the 40 Hz the link polls flagless modules, the default window holds five
samples over 100 ms, so a settled load is declared stable within about 125 ms;
a swinging load is not: 100 ms is over half a period of a loaded platform's
oscillation (~6 Hz), over which a residual swing of 1e already leaves the band.
"""

from __future__ import annotations

from collections import deque


class StabilityFilter:
    def __init__(self, window_s: float = 0.1, band_g: int = 5, min_samples: int = 3) -> None:
        if window_s <= 0 or band_g < 0 or min_samples < 1:
            raise ValueError("window_s > 0, band_g >= 0 and min_samples >= 1 are required")
        self.window_s = window_s
        self.band_g = band_g
        self.min_samples = min_samples
        self._samples: deque[tuple[float, int]] = deque()

    def update(self, t: float, grams: int) -> bool:
        """Add a sample taken at monotonic time ``t``; return whether the weight is stable."""
        samples = self._samples
        samples.append((t, grams))
        # A little slack so a sample that arrived a few ms late still counts.
        oldest = t - self.window_s - 0.015
        while samples[0][0] < oldest:
            samples.popleft()
        if len(samples) < self.min_samples:
            return False
        band = self.band_g
        return all(abs(g - grams) <= band for _, g in samples)

    def reset(self) -> None:
        self._samples.clear()
