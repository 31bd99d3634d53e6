"""The Mahalanobis flag scores (``model.training.flags``) against a direct reading of their papers'
formulas, and on photos that lie away from every label."""

from __future__ import annotations

from pathlib import Path

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


def test_the_stalls_stored_nearness_reads_as_the_fitted_one() -> None:
    """What the stall reads back (stored and scored in float32) orders photos as the float64 fit
    does and moves no score by more than a ten-thousandth of the scores' spread, on
    unit embeddings in many dimensions as the network's are."""
    import tempfile
    from pathlib import Path

    from model.training.flags import fit_mahalanobis
    from model.unknown import Mahalanobis

    rng = np.random.default_rng(2)
    d, c = 256, 10
    centres = rng.normal(size=(c, d))
    labels = np.repeat(np.arange(c), 40)
    x = centres[labels] + rng.normal(0, 1.5, size=(len(labels), d)) * rng.uniform(0.2, 1.0, size=d)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    fitted = fit_mahalanobis(x[::2], labels[::2], "space")
    q = x[1::2]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.mahalanobis.npz"
        fitted.write(path)
        back = Mahalanobis.read(path, c, d, "space")
    assert back.whiten.dtype == np.float32 and np.array_equal(back.labels, np.arange(c))
    exact, stored = fitted.score(q), back.score(q.astype(np.float32))
    assert np.max(np.abs(stored - exact)) < 1e-4 * exact.std()
    assert np.array_equal(np.argsort(exact)[:20], np.argsort(stored)[:20])
    # a taught centre: a photo's own mean is at distance zero
    assert back.score(q[:1], back.whitened(q[:1]))[0] == pytest.approx(0, abs=1e-6)


def test_a_singular_precision_still_measures_its_distances() -> None:
    """A toy network's embeddings may barely vary: its precision can be singular to working
    precision, where Cholesky fails; the distances are still (x - m)^T P (x - m)."""
    from model.unknown import Mahalanobis

    rng = np.random.default_rng(3)
    a = rng.normal(size=(6, 3))
    precision = a @ a.T  # rank 3 of 6
    means = rng.normal(size=(2, 6))
    md = Mahalanobis.from_precision(precision, means, np.arange(2))
    q = rng.normal(size=(5, 6))
    direct = np.array([min((v - m) @ precision @ (v - m) for m in means) for v in q])
    np.testing.assert_allclose(md.score(q), -direct, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("spread", [1.0, 1e-6, 0.0], ids=["regular", "barely-varying", "constant"])
def test_the_precision_is_scikit_learns_in_more_dimensions_than_photos(spread: float) -> None:
    """More dimensions than photos, as in the tests' tiny folds (about 100 photos of 1,280 numbers;
    here 120 of 200): the precision taken by a Cholesky factor is scikit-learn's ``pinvh`` one, where
    the embeddings barely vary too, and where they do not vary at all (a toy network: no shrinkage,
    ``pinvh`` itself) the same zero."""
    rng = np.random.default_rng(4)
    d = 200
    x = 1 + spread * rng.normal(size=(120, d)) @ rng.normal(size=(d, d))
    labels = np.repeat(np.arange(6), 20)
    g = fit_gaussians(x, labels)
    within = x - g.means[labels]
    want = LedoitWolf(assume_centered=True).fit(within).precision_
    whole = LedoitWolf().fit(x).precision_
    np.testing.assert_allclose(g.precision, want, rtol=0, atol=1e-9 * np.abs(want).max())
    np.testing.assert_allclose(g.precision0, whole, rtol=0, atol=1e-9 * np.abs(whole).max())
    assert (np.abs(want).max() > 0) == (spread > 0)


def test_each_folds_scores_are_read_once_and_again_when_its_fold_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every report of a cv run reads each fold's scores: they are kept beside the fold file they
    came from, read back as computed, and computed again from a fold file written since."""
    from model.training import flags
    from model.training.folds import Folds

    rng = np.random.default_rng(3)
    x, labels = _clusters(rng, n=30)
    fold = np.arange(len(labels)) % 2
    folds = Folds(fold=fold, block=fold, k=2)

    def write_fold(k: int, shift: float = 0.0) -> None:
        tr, te = folds.training(k), folds.held_out(k)
        np.savez(tmp_path / f"fold-{k}.npz", held_out=te, near=rng.random(len(te)),
                 embedding=x[te] + shift, train_embedding=x[tr], ood_near=rng.random(5),
                 ood_embedding=rng.normal(0, 9, size=(5, x.shape[1])))

    for k in range(2):
        write_fold(k)
    fits: list[int] = []
    fit = flags.fit_gaussians
    monkeypatch.setattr(flags, "fit_gaussians", lambda e, y: fits.append(len(y)) or fit(e, y))
    first = flags.fold_scores(tmp_path, folds, labels)
    assert first is not None and len(fits) == 2
    held, outside = first
    assert outside is not None and outside.shape == (len(flags.SCORES), 2, 5)
    with np.load(tmp_path / "fold-1.npz") as z:  # each photo scored by its own fold's fit
        g = fit(z["train_embedding"], labels[folds.training(1)])
        assert np.allclose(held[1, z["held_out"]], md_score(z["embedding"], g))
    again = flags.fold_scores(tmp_path, folds, labels)
    assert again is not None and len(fits) == 2  # nothing fitted again
    assert np.array_equal(again[0], held) and np.array_equal(again[1], outside)
    write_fold(0, shift=5.0)  # fold 0 run again: its scores read again, fold 1's kept
    changed = flags.fold_scores(tmp_path, folds, labels)
    assert changed is not None and len(fits) == 3
    te0, te1 = folds.held_out(0), folds.held_out(1)
    assert not np.allclose(changed[0][1, te0], held[1, te0])
    assert np.array_equal(changed[0][:, te1], held[:, te1])
