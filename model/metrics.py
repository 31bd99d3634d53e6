"""Accuracy and detection figures, and the softmax they share with the stall.

numpy only, so evaluation needs no torch; the confusion picture imports
matplotlib (the ``train`` extra) only when it is drawn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def softmax(z: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Softmax of ``z / temperature`` along the last axis (one row of logits or a batch)."""
    z = z / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


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


def confusion_png(y: np.ndarray, pred: np.ndarray, classes: list[str], path: Path, title: str) -> None:
    """The row-normalised confusion matrix as a picture; needs matplotlib (ImportError without it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classes)
    cm = np.zeros((n, n), np.int64)
    for a, b in zip(y, pred, strict=True):
        cm[a, b] += 1
    fig, ax = plt.subplots(figsize=(13, 12))
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(n), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
