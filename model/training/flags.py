"""Unknown-flag scores read from where a photo's embedding lies among the training photos'.

The shipped flag adds the calibrated top probability to the cosine to the nearest exemplar
(``model.unknown``).  These read more of the fold network's embedding, at a cost the stall could
pay (one product with a 1280 x 1280 matrix):

- ``MD``: minus the Mahalanobis distance to the nearest label's mean, one covariance shared by
  every label (Lee et al., "A simple unified framework for detecting out-of-distribution samples
  and adversarial attacks", NeurIPS 2018);
- ``RMD``: the same less the distance to one Gaussian of every training photo, minimum over labels
  (Ren et al., "A simple fix to Mahalanobis distance for improving near-OOD detection", 2021).

Fewer training photos (about 1,600 a fold) than embedding dimensions' worth of covariance: the
covariances are shrunk by Ledoit-Wolf (scikit-learn), which chooses its own shrinkage.  Each score
replaces the nearest-exemplar cosine in ``UnknownFlag`` and is fitted and measured by the same code
(``model.training.cv.summarise``, ``ood_figures``): higher is more surely known.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.training.folds import Folds
from model.unknown import Mahalanobis

logger = logging.getLogger(__name__)

#: the nearest-exemplar cosine the stall reads, then the candidates
SCORES = ("nearest exemplar", "MD", "RMD")


@dataclass(frozen=True)
class Gaussians:
    """Label means (C, d) with one shared precision, and one Gaussian of every training photo."""

    means: np.ndarray
    precision: np.ndarray
    mean0: np.ndarray
    precision0: np.ndarray


def fit_gaussians(emb: np.ndarray, labels: np.ndarray) -> Gaussians:
    """Fit on training embeddings ``emb`` (N, d) and their ``labels``; only the labels present get a
    mean (a label with no photo has nothing to be near)."""
    from sklearn.covariance import LedoitWolf

    x = np.asarray(emb, np.float64)
    present = np.unique(labels)
    means = np.stack([x[labels == c].mean(0) for c in present])
    within = x - means[np.searchsorted(present, labels)]
    shared = LedoitWolf(assume_centered=True, store_precision=False).fit(within)
    whole = LedoitWolf(store_precision=False).fit(x)
    return Gaussians(means, _precision(shared), whole.location_, _precision(whole))


def _precision(lw: Any) -> np.ndarray:
    """The inverse of a fitted Ledoit-Wolf covariance, as scikit-learn's ``precision_`` (``pinvh``).

    The shrunk covariance (1 - s) S + s mu I has every eigenvalue at least s mu and at most its trace,
    d mu; ``pinvh`` keeps every eigenvalue above d eps times the largest, so where s >= d^2 eps it
    keeps them all and is the plain inverse, which a Cholesky factor gives in 0.23 s against the
    eigendecomposition's 0.8 s at d = 1280 (two of them a fold; AMD EPYC, 2 cores).  Below that (a
    toy network whose embeddings do not vary: no shrinkage) ``pinvh`` itself.
    """
    from scipy.linalg import pinvh, solve_triangular

    cov = lw.covariance_
    d = len(cov)
    if float(lw.shrinkage_) >= 4 * d * d * np.finfo(np.float64).eps:  # a zero covariance fails Cholesky
        try:
            c = np.linalg.cholesky(cov)
        except np.linalg.LinAlgError:
            pass
        else:
            ci = solve_triangular(c, np.eye(d), lower=True, check_finite=False)
            return ci.T @ ci
    return np.asarray(pinvh(cov, check_finite=False))


def _squared(x: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """(N, M) squared Mahalanobis distances of rows ``x`` to rows ``means`` under ``precision``."""
    xp, mp = x @ precision, means @ precision
    return (np.einsum("nd,nd->n", xp, x)[:, None] - 2 * xp @ means.T
            + np.einsum("md,md->m", mp, means)[None, :])


def md_score(emb: np.ndarray, g: Gaussians) -> np.ndarray:
    """The stall's own arithmetic (``model.unknown.Mahalanobis``), in float64."""
    return Mahalanobis.from_precision(g.precision, g.means, np.arange(len(g.means))).score(emb)


def rmd_score(emb: np.ndarray, g: Gaussians) -> np.ndarray:
    x = np.asarray(emb, np.float64)
    background = _squared(x, g.mean0[None, :], g.precision0)
    return -(_squared(x, g.means, g.precision) - background).min(1)


def fold_scores(work: Path, folds: Folds, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None] | None:
    """Every score of every photo, read by the network of the fold that held it out: (scores
    (len(SCORES), N), the photos outside the catalogue under each fold's network (len(SCORES),
    folds, M) or None).  None where a fold ran before its embeddings were kept."""
    n = len(labels)
    held = np.zeros((len(SCORES), n))
    outside: list[np.ndarray] | None = []
    for k in range(folds.k):
        read = _fold_scores(work, k, labels[folds.training(k)])
        if read is None:
            return None
        te, scores, ood = read
        held[:, te] = scores
        if outside is not None and ood is not None:
            outside.append(ood)
        else:
            outside = None
    return held, None if outside is None else np.stack(outside, 1)


def _fold_scores(work: Path, k: int, train_labels: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
    """Fold ``k``'s held-out rows, their scores (len(SCORES), n) and the outside photos' (or None).

    Kept beside the fold (``fold-K.flags.npz``) with the digest of the fold file they were read
    from and of the training labels: every report of a run reads every fold's scores again (each
    resumed run, each recipe added), and the two Ledoit-Wolf fits and their inverses were most of
    a report's time."""
    source = work / f"fold-{k}.npz"
    with source.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256")
    digest.update(np.ascontiguousarray(train_labels, np.int64).tobytes())
    key = np.frombuffer(digest.digest(), np.uint8)
    kept = work / f"fold-{k}.flags.npz"
    try:
        with np.load(kept) as c:
            if np.array_equal(c["key"], key):
                return c["held_out"], c["scores"], c.get("outside")
    except (OSError, ValueError, KeyError, EOFError):
        pass  # none yet, or written by other code: read again
    with np.load(source) as z:
        if "train_embedding" not in z:
            logger.info("%s fold %d kept no embeddings: no other flag scores", work.name, k)
            return None
        g = fit_gaussians(z["train_embedding"], train_labels)
        te = z["held_out"]
        emb = z["embedding"]
        scores = np.stack([z["near"], md_score(emb, g), rmd_score(emb, g)])
        ood = None
        if "ood_embedding" in z:
            o = z["ood_embedding"]
            ood = np.stack([z["ood_near"], md_score(o, g), rmd_score(o, g)])
    arrays = {"key": key, "held_out": te, "scores": scores}
    if ood is not None:
        arrays["outside"] = ood
    tmp = kept.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(kept)
    return te, scores, ood


def flag_score_figures(work: Path, oof: np.ndarray, ood_logits: np.ndarray | None, labels: np.ndarray,
                       folds: Folds, split: np.ndarray) -> dict[str, Any] | None:
    """Per score, the unknown flag fitted and measured as the shipped one is: produce flagged
    (fixed share, cross-fitted, nested) and, with the photos outside the catalogue (``ood_logits``
    (folds, M, C), the chosen epoch's), what it takes of them nested and its AUROC."""
    from model.training.cv import ood_figures, summarise

    read = fold_scores(work, folds, labels)
    if read is None:
        return None
    held, outside = read
    out: dict[str, Any] = {}
    for i, name in enumerate(SCORES):
        s = summarise(oof, labels, folds, split, held[i].astype(np.float32))
        # the flag fitted on every other-session photo's score, as the shipped one is (``ship``)
        fig = {k: s[k] for k in ("unknown_flag", "unknown_flag_share",
                                 "unknown_flag_flagged_other_session_crossfit",
                                 "unknown_flag_flagged_other_session_nested")}
        if outside is not None and ood_logits is not None:
            o = ood_figures(oof, held[i].astype(np.float32), ood_logits, outside[i].astype(np.float32),
                            labels, folds, split)
            fig.update(outside_nested=o["nested"], auroc=o["auroc"])
        out[name] = fig
    return out


def fit_mahalanobis(emb: np.ndarray, labels: np.ndarray, embedding_space: str) -> Mahalanobis:
    """The stall's Mahalanobis nearness from every training photo's embedding under the shipped
    network: label means and the shared Ledoit-Wolf precision, as each fold's were fitted."""
    g = fit_gaussians(emb, labels)
    return Mahalanobis.from_precision(g.precision, g.means, np.unique(labels), embedding_space)


def write_mahalanobis(model: Path, photos: list[Any], n_classes: int, size: int, embedding_space: str,
                      crop: float = 1.0, exact_int8: bool = True) -> dict[str, Any]:
    """Embed every one of ``photos`` (``model.data.Sample``: train + val, what the network learnt
    from) with ``model`` itself (int8 or float, as its exemplars are), fit, write
    ``<model>.mahalanobis.npz`` and return what the metadata's ``unknown.mahalanobis`` names of it."""
    from model.preprocess import preprocess, read_photo
    from model.recognizer import ModelRunner

    runner = ModelRunner(model, size, exact_int8=exact_int8)
    emb = np.concatenate([runner.run(preprocess(read_photo(p.path, size, crop), size))[1] for p in photos])
    labels = np.array([p.label for p in photos])
    md = fit_mahalanobis(emb, labels, embedding_space)
    path = model.with_name(model.stem + ".mahalanobis.npz")
    digest = md.write(path)
    logger.info("%s: %d label means over %d photos", path.name, len(md.means), len(photos))
    if len(md.means) < n_classes:
        logger.warning("%s: %d of %d labels have no photo to fit a mean on", path.name,
                       n_classes - len(md.means), n_classes)
    return {"file": path.name, "sha256": digest, "photos": len(photos)}
