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

A model cross-validated with its embeddings kept (``wetmarket model cv``) ships a
second nearness beside it, ``Mahalanobis``: the distance to the nearest label's
mean under the training photos' shared covariance.  It takes the cosine's place
in the same flag (``UnknownFlag``, fitted out of fold) and the stall reads it
where the model has it.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model import ModelFileError

# Share of the catalogue's val photos flagged unknown by the exported thresholds: under the 10 %
# of real produce the stall can live with, with room for the difference between calibration
# photos and the stall's.
UNKNOWN_QUANTILE = 0.08
# A flag fitted on out-of-fold outputs (``wetmarket model cv``: photos each fold's network never
# saw, as the stall's) flags this share of them: the ceiling of produce flagged the recognizer
# is held to (issue 21), where the val-fitted models kept 8 %.
OUT_OF_FOLD_QUANTILE = 0.05
SCORE = "max calibrated probability + nearest exemplar cosine, each standardised on val"
MAHALANOBIS_SCORE = ("max calibrated probability + minus the squared Mahalanobis distance to the nearest "
                     "label's mean under one shared covariance, each standardised on the out-of-fold outputs "
                     "of the other-session photos")


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


class Mahalanobis:
    """Where an embedding lies among the training photos': minus its squared Mahalanobis distance to
    the nearest label's mean, one precision shared by every label (Lee et al., NeurIPS 2018).  Read
    by the unknown flag in place of the nearest exemplar's cosine where the model ships one
    (``unknown.mahalanobis``): on real packaged goods it took 93 to 98 % where the cosine took 82 to
    94 %, at the same share of produce (docs/benchmarks.md).

    Kept whitened: with the precision P = L L^T (Cholesky), (x - m)^T P (x - m) = |x L - m L|^2, so a
    photo costs one product with L (0.15 ms for 1,280 dimensions on one core), a taught item's mean
    is whitened once when it is taught, and the squared differences are summed as such rather than
    expanded (the expanded form cancels large terms in float32).
    """

    def __init__(self, whiten: np.ndarray, means: np.ndarray, labels: np.ndarray,
                 embedding_space: str) -> None:
        self.whiten = whiten  # (d, d) L, lower triangular (Cholesky) where the precision is regular
        self.means = means  # (C, d) each label's training embeddings averaged
        self.labels = labels  # (C,) index into the model's labels
        self.embedding_space = embedding_space
        self.centres = self.whitened(means)

    @classmethod
    def from_precision(cls, precision: np.ndarray, means: np.ndarray, labels: np.ndarray,
                       embedding_space: str = "") -> Mahalanobis:
        """From a symmetric positive definite ``precision`` (d, d) and label ``means`` (C, d), in
        float64 (``write`` stores them smaller)."""
        p = np.asarray(precision, np.float64)
        try:
            whiten = np.linalg.cholesky(p)
        except np.linalg.LinAlgError:
            # singular to working precision (a network whose embeddings barely vary: a toy run): any
            # factor with L L^T = P measures the same distances; this one is not triangular
            w, v = np.linalg.eigh((p + p.T) / 2)
            whiten = v * np.sqrt(np.clip(w, 0, None))
        return cls(whiten, np.asarray(means, np.float64), np.asarray(labels, np.int64), embedding_space)

    def whitened(self, emb: np.ndarray) -> np.ndarray:
        """Rows ``emb`` (N, d) in the whitened space (N, d), in the whitening's precision."""
        return np.atleast_2d(np.asarray(emb, self.whiten.dtype)) @ self.whiten

    def score(self, emb: np.ndarray, extra: np.ndarray | None = None) -> np.ndarray:
        """(N,) minus the squared distance of each row of ``emb`` to the nearest label's mean, or to
        the nearest of the ``extra`` whitened centres (taught items: ``whitened`` of their means)."""
        z = self.whitened(emb)
        centres = self.centres if extra is None or not len(extra) else np.concatenate([self.centres, extra])
        out = np.empty(len(z), np.float64)
        step = max(1, 4_000_000 // max(1, centres.size))  # rows at a time: a (rows, C, d) block
        for i in range(0, len(z), step):
            out[i : i + step] = np.square(z[i : i + step, None, :] - centres[None]).sum(-1).min(1)
        return -out

    def write(self, path: Path) -> str:
        """Write (float32: the whitening's zero upper triangle compressed, about 3.3 MB for 1,280
        dimensions; float16 moved scores by 0.2 % of their spread) and return the file's sha256."""
        with path.open("wb") as fh:
            np.savez_compressed(fh, whiten=self.whiten.astype(np.float32),
                                means=self.means.astype(np.float32), labels=self.labels.astype(np.int16),
                                embedding_space=self.embedding_space)
        return hashlib.sha256(path.read_bytes()).hexdigest()

    @classmethod
    def read(cls, path: Path, n_labels: int, dim: int, embedding_space: str) -> Mahalanobis:
        try:
            with np.load(path, allow_pickle=False) as z:
                whiten, means = np.asarray(z["whiten"], np.float32), np.asarray(z["means"], np.float32)
                labels, space = np.asarray(z["labels"], np.int64), str(z["embedding_space"])
        except FileNotFoundError as exc:
            raise ModelFileError(f"{path}: Mahalanobis flag missing") from exc
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise ModelFileError(f"{path}: Mahalanobis flag unreadable ({exc})") from exc
        if space != embedding_space:
            raise ModelFileError(f"{path}: Mahalanobis flag of {space}, model is {embedding_space}")
        fits = (whiten.shape == (dim, dim) and means.ndim == 2 and means.shape[1] == dim and len(means)
                and labels.shape == (len(means),) and bool(np.all((labels >= 0) & (labels < n_labels)))
                and bool(np.all(np.isfinite(whiten))) and bool(np.all(np.isfinite(means))))
        if not fits:
            raise ModelFileError(f"{path}: Mahalanobis flag does not fit a model of {n_labels} labels "
                                 f"x {dim}")
        return cls(whiten, means, labels, space)
