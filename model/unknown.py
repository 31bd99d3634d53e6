"""The unknown flag: how sure the classifier is, and how near the photo lies to any known photo.

The top calibrated probability alone names a never-seen look-alike with
confidence when it sits between two catalogue labels' prototypes; the
nearest shipped exemplar (or taught photo) alone misses items close to one
photo of a session.  Each score is standardised on the catalogue's val photos
and the two are added; the threshold flags ``UNKNOWN_QUANTILE`` of those
photos, as the probability's threshold did.  Measured on classes held out of
training (``bench/unknown_scores_bench.py``, ``bench/teaching_bench.py``):
same AUROC as the probability, more never-seen produce flagged at the same
share of real produce, and every synthetic packaged good.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# Share of the catalogue's val photos flagged unknown by the exported thresholds: under the 10 %
# of real produce the stall can live with, with room for the difference between calibration
# photos and the stall's.
UNKNOWN_QUANTILE = 0.08
# A flag fitted on out-of-fold outputs (``wetmarket model cv``: photos each fold's network never
# saw, as the stall's) flags this share of them: the ceiling of produce flagged the recognizer
# is held to (issue 21), where the val-fitted models kept 8 %.
OUT_OF_FOLD_QUANTILE = 0.05
SCORE = "max calibrated probability + nearest exemplar cosine, each standardised on val"


def flag_threshold(scores: np.ndarray, share: float) -> float:
    """The score below which a new photo like these known ones is flagged with probability at
    most ``share``: the k-th smallest of the n scores, k = floor((n + 1) * share) (the
    split-conformal quantile: Angelopoulos & Bates, "A gentle introduction to conformal
    prediction", 2021).  A new photo exchangeable with these ranks uniformly among the n + 1, so
    it falls below the k-th with probability k / (n + 1).  ``np.quantile``'s interpolation sits
    above that order statistic and flags more: at a share of 5 % on the ~157 other-session photos
    of four folds, (0.05 * 156 + 1) / 158 = 5.6 % of the fifth fold's, which is what the
    cross-fitted flag measured.  With fewer than 1 / share - 1 photos no threshold can promise
    ``share``: the smallest score then (it flags 1 / (n + 1))."""
    s = np.sort(np.asarray(scores, np.float64).ravel())
    if not len(s):
        raise ValueError("no scores to fit a flag threshold on")
    k = int(np.floor((len(s) + 1) * share + 1e-9))  # 200 * 0.05 is 10.000000000000002 or 9.99...
    return float(s[min(max(k, 1), len(s)) - 1])


@dataclass(frozen=True)
class UnknownFlag:
    """``prob`` and ``near`` standardised and added; below ``threshold`` is unknown."""

    prob_mean: float
    prob_std: float
    near_mean: float
    near_std: float
    threshold: float

    @classmethod
    def fit(cls, prob: np.ndarray, near: np.ndarray, quantile: float = UNKNOWN_QUANTILE) -> UnknownFlag:
        """Standardise on these known photos and flag at most ``quantile`` of photos like them
        (``flag_threshold``)."""
        prob, near = np.asarray(prob, np.float64), np.asarray(near, np.float64)
        # a spread of zero (every photo alike, a toy set) would divide by zero: leave it unscaled
        flag = cls(float(prob.mean()), float(prob.std()) or 1.0, float(near.mean()), float(near.std()) or 1.0,
                   0.0)
        threshold = flag_threshold(flag.score(prob, near), quantile)
        return cls(flag.prob_mean, flag.prob_std, flag.near_mean, flag.near_std, threshold)

    def score(self, prob: Any, near: Any) -> Any:
        """Higher is more surely known (arrays, or a float for floats).  In float64 whatever the
        inputs' precision: the threshold is one of the fitting photos' scores, computed so, and a
        float32 reading of that very photo could fall on either side of it."""
        s = ((np.asarray(prob, np.float64) - self.prob_mean) / self.prob_std
             + (np.asarray(near, np.float64) - self.near_mean) / self.near_std)
        return s if s.ndim else float(s)

    def unknown(self, prob: Any, near: Any) -> Any:
        return self.score(prob, near) < self.threshold

    def to_json(self) -> dict[str, Any]:
        return {"score": SCORE, **asdict(self)}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> UnknownFlag:
        """Raises KeyError, TypeError or ValueError on a missing, garbled or non-finite field."""
        values = {k: float(raw[k]) for k in ("prob_mean", "prob_std", "near_mean", "near_std", "threshold")}
        spreads = (values["prob_std"], values["near_std"])
        if not all(np.isfinite(v) for v in values.values()) or min(spreads) <= 0:
            raise ValueError(f"unknown flag not finite or spread not positive: {values}")
        return cls(**values)


def nearest_cosine(queries: np.ndarray, bank: np.ndarray) -> np.ndarray:
    """Per query (unit rows), the cosine to its nearest row of ``bank`` (unit rows); -1 if empty."""
    q = np.atleast_2d(queries)
    if not len(bank):
        return np.full(len(q), -1.0, np.float32)
    return (q @ np.asarray(bank, q.dtype).T).max(1)
