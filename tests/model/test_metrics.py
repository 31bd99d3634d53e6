"""Figures the reports rest on: AUROC, top-k, blocked folds, calibration, augmentation."""

from __future__ import annotations

import numpy as np
import pytest

from model.metrics import auroc, topk_accuracy


def test_auroc_known_values() -> None:
    assert auroc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert auroc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0
    assert auroc(np.array([1.0]), np.array([1.0])) == 0.5
    assert auroc(np.array([2.0, 0.0]), np.array([1.0])) == 0.5
    assert np.isnan(auroc(np.array([]), np.array([1.0])))


def test_topk_accuracy() -> None:
    logits = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    acc = topk_accuracy(logits, np.array([1, 2, 0]), ks=(1, 2))
    assert acc[1] == pytest.approx(1 / 3) and acc[2] == pytest.approx(1 / 3)


def test_blocked_folds_keep_neighbours_together() -> None:
    from model.training.train import blocked_folds

    paths = [f"c{c}/{i:03d}.jpg" for c in range(2) for i in range(10)]
    labels = np.array([c for c in range(2) for _ in range(10)])
    folds = blocked_folds(paths, labels, 5)
    assert sorted(np.concatenate(folds).tolist()) == list(range(20))
    for te in folds:
        for c in range(2):
            idx = te[labels[te] == c]
            assert len(idx) == 2 and idx[1] - idx[0] == 1  # contiguous photos


def test_calibration_flags_the_chosen_share() -> None:
    from model.training.train import UNKNOWN_QUANTILE, calibrate

    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 400)
    logits = rng.normal(0, 1, (400, 5))
    logits[np.arange(400), y] += 3
    t, thr = calibrate(logits, y)
    assert 0.1 < t < 10
    z = logits / t
    p = np.exp(z - z.max(1, keepdims=True))
    p = (p / p.sum(1, keepdims=True)).max(1)
    assert np.mean(p < thr) == pytest.approx(UNKNOWN_QUANTILE, abs=0.01)


def test_augment_is_seeded_and_sized() -> None:
    from model.training.augment import augment

    img = np.random.default_rng(0).integers(0, 256, (120, 90, 3), dtype=np.uint8)
    a = augment(img, np.random.default_rng(5), 64)
    b = augment(img, np.random.default_rng(5), 64)
    c = augment(img, np.random.default_rng(6), 64)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
