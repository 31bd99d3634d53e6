"""The Mahalanobis flag scores (``model.training.flags``) against a direct reading of their papers'
formulas, and on photos that lie away from every label."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.covariance import LedoitWolf

from model.training.flags import fit_gaussians, md_score, rmd_score


def _clusters(rng: np.random.Generator, n: int = 60, d: int = 8) -> tuple[np.ndarray, np.ndarray]:
    centres = rng.normal(0, 3, size=(4, d))
    labels = np.repeat(np.arange(4), n)
    # one label missing from the training part: it gets no mean
    labels[labels == 3] = 4
    spread = np.diag(rng.uniform(0.3, 1.5, size=d))
    x = centres[np.minimum(labels, 3)] + rng.normal(size=(len(labels), d)) @ spread
    return x, labels


def test_scores_are_the_papers_distances_under_ledoit_wolf_covariances() -> None:
    rng = np.random.default_rng(0)
    x, labels = _clusters(rng)
    g = fit_gaussians(x, labels)
    assert g.means.shape == (4, x.shape[1])  # labels 0, 1, 2 and 4
    q = rng.normal(0, 3, size=(7, x.shape[1]))
    present = [0, 1, 2, 4]
    means = np.stack([x[labels == c].mean(0) for c in present])
    p = LedoitWolf(assume_centered=True).fit(x - means[[present.index(c) for c in labels]]).precision_
    whole = LedoitWolf().fit(x)
    for i, v in enumerate(q):
        d = [(v - m) @ p @ (v - m) for m in means]
        d0 = (v - whole.location_) @ whole.precision_ @ (v - whole.location_)
        assert md_score(q, g)[i] == pytest.approx(-min(d), rel=1e-9)
        assert rmd_score(q, g)[i] == pytest.approx(-(min(d) - d0), rel=1e-9, abs=1e-9)


def test_a_photo_away_from_every_label_scores_lower_than_the_labels_own() -> None:
    rng = np.random.default_rng(1)
    x, labels = _clusters(rng)
    g = fit_gaussians(x[::2], labels[::2])
    known = x[1::2]
    far = known.mean(0) + rng.normal(0, 12, size=(40, x.shape[1]))
    for score in (md_score, rmd_score):
        assert np.median(score(far, g)) < np.quantile(score(known, g), 0.05)
