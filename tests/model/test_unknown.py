"""The unknown flag of model.unknown: the top probability plus the nearest exemplar."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from model.unknown import UNKNOWN_QUANTILE, UnknownFlag, flag_threshold, nearest_cosine


def test_fit_flags_the_quantile_of_known_photos_and_standardises_both_scores() -> None:
    rng = np.random.default_rng(0)
    prob = rng.uniform(0.3, 1.0, 500)
    near = rng.uniform(0.5, 0.95, 500)
    flag = UnknownFlag.fit(prob, near)
    assert np.mean(flag.unknown(prob, near)) == pytest.approx(UNKNOWN_QUANTILE, abs=0.005)
    assert flag.prob_mean == pytest.approx(prob.mean()) and flag.near_std == pytest.approx(near.std())
    z = flag.score(prob, near)
    np.testing.assert_allclose(z, (prob - prob.mean()) / prob.std() + (near - near.mean()) / near.std())
    # far from every exemplar is unknown even when the classifier is sure; near and sure is known
    assert flag.unknown(0.99, 0.05) and not flag.unknown(0.99, 0.9)
    # either score alone moves the flag: the same probability, nearer, scores higher
    assert flag.score(0.6, 0.9) > flag.score(0.6, 0.6)


def test_the_threshold_flags_at_most_the_share_of_new_photos_like_the_known_ones() -> None:
    """Fitted on 157 photos (four folds' other sessions) at 5 %, then applied to new photos of the
    same kind, over many draws: the order statistic flags k / (n + 1) = 7 / 158 of them, at most
    the share; np.quantile's interpolation flags 5.6 %, over it, as the cross-fitted flag saw."""
    rng = np.random.default_rng(1)
    ours, interpolated = [], []
    for _ in range(4000):
        known, new = rng.normal(size=157), rng.normal(size=200)
        ours.append(np.mean(new < flag_threshold(known, 0.05)))
        interpolated.append(np.mean(new < np.quantile(known, 0.05)))
    assert np.mean(ours) == pytest.approx(7 / 158, abs=0.001) and np.mean(ours) <= 0.05
    assert np.mean(interpolated) == pytest.approx(8.8 / 158, abs=0.001)
    # the k-th smallest exactly, even where (n + 1) * share is a whole number in floating point
    scores = np.arange(199.0)[::-1]
    assert flag_threshold(scores, 0.05) == 9.0  # k = 10 of 199
    # too few photos to promise the share: the smallest; none: refused
    assert flag_threshold(np.array([3.0, 1.0, 2.0]), 0.05) == 1.0
    with pytest.raises(ValueError, match="no scores"):
        flag_threshold(np.array([]), 0.05)


def test_float32_readings_of_the_fitting_photos_fall_where_the_threshold_put_them() -> None:
    """The threshold is the k-th fitting photo's score; a network's outputs are float32.  Scored in
    float32, that very photo fell below its own score in about a quarter of random draws, and the
    flag took one photo more than its order statistic says."""
    k = int(np.floor((157 + 1) * 0.05 + 1e-9))
    for seed in range(40):
        rng = np.random.default_rng(seed)
        prob = rng.uniform(0.2, 1.0, 157).astype(np.float32)
        near = rng.uniform(0.3, 0.9, 157).astype(np.float32)
        flag = UnknownFlag.fit(prob, near, 0.05)
        assert int(flag.unknown(prob, near).sum()) == k - 1, seed
        assert isinstance(flag.score(float(prob[0]), float(near[0])), float)  # one photo: a float


def test_identical_known_photos_do_not_divide_by_zero() -> None:
    flag = UnknownFlag.fit(np.full(10, 0.8), np.full(10, 0.7))
    assert flag.prob_std == 1.0 and flag.near_std == 1.0 and math.isfinite(flag.threshold)


def test_json_round_trip_and_garbled_sections_are_refused() -> None:
    flag = UnknownFlag(0.8, 0.2, 0.7, 0.1, -2.5)
    raw = json.loads(json.dumps(flag.to_json()))
    assert UnknownFlag.from_json(raw) == flag and "nearest exemplar" in raw["score"]
    for bad in ({**raw, "near_std": 0.0}, {**raw, "threshold": "nan"}, {**raw, "prob_std": -1}):
        with pytest.raises(ValueError):
            UnknownFlag.from_json(bad)
    with pytest.raises(KeyError):
        UnknownFlag.from_json({k: v for k, v in raw.items() if k != "prob_mean"})
    with pytest.raises((TypeError, ValueError)):
        UnknownFlag.from_json({**raw, "near_mean": [1, 2]})


def test_nearest_cosine() -> None:
    bank = np.eye(3, dtype=np.float32)
    q = np.array([[0.6, 0.8, 0.0], [0.0, 0.0, -1.0]], np.float32)
    np.testing.assert_allclose(nearest_cosine(q, bank), [0.8, 0.0], atol=1e-6)
    np.testing.assert_allclose(nearest_cosine(q[0], bank), [0.8], atol=1e-6)
    assert nearest_cosine(q, np.zeros((0, 3), np.float32)).tolist() == [-1.0, -1.0]
