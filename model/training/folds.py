"""Blocked cross-validation folds over train + val (stdlib and numpy only; no torch).

Why blocked, and why these blocks.  The Grocery Store photos of one item were
taken in sessions, one after the other, and numbered in that order
(``Golden-Delicious_001.jpg``, ``_002`` ...): neighbours in name order are
often near duplicates (cosine 0.7 to 0.9 between frozen Lite0 embeddings of
``_008`` and ``_009``, against a class mean of 0.3).  A random fold puts one
neighbour in training and the other in the held-out part and measures recall
of a photo already seen: ~97 % top-1 for a model that reads ~80 % on photos
of another occasion.  So:

* the unit a fold takes is a **block**: a run of consecutive photos of one
  class in one split, in file-name order; blocks never straddle folds, so the
  only neighbours split between training and held-out parts are the ones at
  the (folds - 1) cuts of each class's train run;
* each class's **val photos form one block** (the dataset's val photos come
  from other sessions than its train photos: keeping them whole keeps one
  other-occasion session held out together, and ``other_session`` figures
  are read on them alone);
* each class's **train photos are cut into ``folds`` contiguous blocks**, block
  ``k`` in fold ``k``; the val block of class ``c`` goes to fold ``c mod folds``
  so that every fold holds some whole other-occasion sessions.

Every photo is held out exactly once; the training part of a fold is every
other photo.  What blocking cannot do: an item's train photos come from one or
a few occasions, so the train blocks of a fold share them with its training
part; measured, the pooled figure is ~17 points over the one on the val blocks
(other occasions), which is the figure that tracks photos a stall will see.
Choices (epochs, temperature, unknown threshold) are read off the pooled
out-of-fold outputs, never off val alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.data import Dataset, Sample


@dataclass(frozen=True)
class Pool:
    """Train and val photos of a dataset in one list, with where each came from."""

    samples: list[Sample]
    split: np.ndarray  # "train" or "val" per photo
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.samples)


def pooled(ds: Dataset) -> Pool:
    samples = [*ds.train, *ds.val]
    split = np.array(["train"] * len(ds.train) + ["val"] * len(ds.val))
    return Pool(samples, split, np.array([s.label for s in samples], np.int64))


@dataclass(frozen=True)
class Folds:
    """``fold[i]``: the fold photo ``i`` is held out in; ``block[i]``: its block."""

    fold: np.ndarray
    block: np.ndarray
    k: int

    def held_out(self, f: int) -> np.ndarray:
        return np.where(self.fold == f)[0]

    def training(self, f: int) -> np.ndarray:
        return np.where(self.fold != f)[0]


def blocked_folds(pool: Pool, k: int) -> Folds:
    """``k`` folds of whole blocks (module docstring); ValueError if ``k`` < 2."""
    if k < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {k}")
    n = len(pool)
    fold = np.full(n, -1, np.int64)
    block = np.full(n, -1, np.int64)
    names = [s.path.as_posix() for s in pool.samples]
    next_block = 0
    for c in np.unique(pool.labels):
        for split in ("train", "val"):
            idx = np.array(sorted(np.where((pool.labels == c) & (pool.split == split))[0],
                                  key=lambda i: names[i]), np.int64)
            if not len(idx):
                continue
            if split == "val":
                fold[idx] = int(c) % k
                block[idx] = next_block
                next_block += 1
                continue
            for j, chunk in enumerate(np.array_split(idx, k)):
                if len(chunk):
                    fold[chunk] = j
                    block[chunk] = next_block
                    next_block += 1
    return Folds(fold, block, k)
