"""Accuracy and detection figures (numpy only, so evaluation needs no torch)."""

from __future__ import annotations

import numpy as np


def topk_accuracy(logits: np.ndarray, y: np.ndarray, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    order = np.argsort(-logits, axis=1)
    y = np.asarray(y)
    return {k: float(np.mean([y[i] in order[i, :k] for i in range(len(y))])) for k in ks}


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half."""
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    allv = np.concatenate([pos, neg])
    ranks = allv.argsort().argsort().astype(np.float64) + 1
    _, inv, counts = np.unique(allv, return_inverse=True, return_counts=True)
    ranks = (np.bincount(inv, weights=ranks) / counts)[inv]
    r_pos = ranks[: len(pos)].sum()
    return float((r_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))
