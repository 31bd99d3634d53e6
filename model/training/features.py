"""Embeddings of a dataset from a frozen trunk, cached on disk (torch; training only).

Training a head on frozen features is cheap once the trunk has seen every photo;
the trunk is the expensive part, so its outputs (clean centre views, augmented
plate-camera views and test-time views) are computed once per (backbone, size,
seed, views) and kept in an ``.npz`` under ``runs/``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from model.data import Dataset, Sample
from model.preprocess import read_image, square_resize, to_tensor, tta_views
from model.training.augment import augment

logger = logging.getLogger(__name__)

View = Callable[[np.ndarray, np.random.Generator, int], np.ndarray]


@torch.no_grad()
def embed_batches(
    embed: Callable[[torch.Tensor], torch.Tensor], crops: Sequence[np.ndarray], batch: int = 32
) -> np.ndarray:
    out = []
    for i in range(0, len(crops), batch):
        x = torch.from_numpy(to_tensor(list(crops[i : i + batch])))
        out.append(embed(x).numpy())
    return np.concatenate(out).astype(np.float32)


def embed_samples(
    embed: Callable[[torch.Tensor], torch.Tensor],
    samples: Sequence[Sample],
    size: int,
    aug_views: int,
    tta: bool,
    seed: int,
    desc: str,
    batch: int = 32,
) -> dict[str, np.ndarray]:
    """Per sample: the centre view, ``aug_views`` augmented views and (if tta) the TTA views."""
    centre: list[np.ndarray] = []
    augv: list[np.ndarray] = []
    ttav: list[np.ndarray] = []
    pending: list[np.ndarray] = []
    pending_kind: list[str] = []

    def flush() -> None:
        if not pending:
            return
        e = embed_batches(embed, pending, batch)
        for kind, v in zip(pending_kind, e, strict=True):
            {"c": centre, "a": augv, "t": ttav}[kind].append(v)
        pending.clear()
        pending_kind.clear()

    for i, s in enumerate(tqdm(samples, desc=desc, unit="img", mininterval=5)):
        rng = np.random.default_rng([seed, i])
        img = read_image(s.path, size)
        pending.append(square_resize(img, size))
        pending_kind.append("c")
        for _ in range(aug_views):
            pending.append(augment(img, rng, size))
            pending_kind.append("a")
        if tta:
            for v in tta_views(img, size)[1:]:
                pending.append(v)
                pending_kind.append("t")
        if len(pending) >= batch:
            flush()
    flush()
    n = len(samples)
    out = {"centre": np.stack(centre), "labels": np.array([s.label for s in samples])}
    if aug_views:
        out["aug"] = np.stack(augv).reshape(n, aug_views, -1)
    if tta:
        out["tta"] = np.stack(ttav).reshape(n, 3, -1)
    return out


def cache_key(ds: Dataset, backbone: str, size: int, aug_views: int, seed: int) -> str:
    h = hashlib.sha256(f"{backbone}|{size}|{aug_views}|{seed}|{ds.training_list_hash()}".encode())
    for s in ds.val:
        h.update(str(s.path).encode())
    return h.hexdigest()[:16]


def cached_features(
    ds: Dataset, backbone: str, size: int, aug_views: int, seed: int, cache_dir: Path
) -> dict[str, np.ndarray]:
    """train_* and val_* arrays of L2-normalised embeddings of the frozen trunk."""
    from model.training.network import RecognizerNet, build_trunk

    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(ds, backbone, size, aug_views, seed)
    path = cache_dir / f"feat-{backbone}-{size}-a{aug_views}-s{seed}-{key}.npz"
    if path.exists():
        logger.info("features from cache %s", path)
        with np.load(path) as z:
            return dict(z)
    torch.manual_seed(seed)
    net = RecognizerNet(build_trunk(backbone, size), len(ds.classes)).eval()
    tr = embed_samples(net.embed, ds.train, size, aug_views, True, seed, f"{backbone}@{size} train")
    va = embed_samples(net.embed, ds.val, size, 0, True, seed + 1, f"{backbone}@{size} val")
    out = {f"train_{k}": v for k, v in tr.items()} | {f"val_{k}": v for k, v in va.items()}
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **out)  # type: ignore[arg-type]
    tmp.replace(path)
    logger.info("features cached in %s", path)
    return out
