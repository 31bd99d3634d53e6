"""Distillation: an ensemble of frozen EfficientNet-Lite teachers taught to the shipped Lite0.

Why: on this dataset a linear head on any single frozen trunk (Lite0/1/2, 224 to
288 px) stops near 80 % val top-1, and fine-tuning Lite0 on hard labels gets
no further; the ensemble is a little better but five trunks cost five times the
latency.  Fine-tuning the one shipped trunk on the ensemble's soft labels
(plus a share of hard labels) beats both (docs/benchmarks.md, "Recognizer").

The pipeline, all seeded and cached under the run folder:

1. ``ViewBank``: each train photo as its centre crop plus ``views`` plate-camera
   augmentations, each val photo as its four TTA views, stored once as uint8 at
   the largest size any network needs (a memory-mapped ``.npy``).
2. Teachers: each ``backbone@size`` trunk is exported to ONNX (pooled features)
   and run with onnxruntime over the bank: ~5x the speed of torch on this CPU.
3. Soft labels: for each teacher, cosine heads trained on blocked folds of the
   train photos label the held-out fold's views (out of fold, so the labels are
   not the memorised training labels); the teachers' tempered probabilities are
   averaged.
4. The student (the shipped network) is fine-tuned on the bank's views with
   ``alpha * KL(teacher || student) + (1 - alpha) * cross-entropy``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from tqdm import tqdm

from model.data import Dataset
from model.preprocess import read_image, square_resize, to_tensor, tta_views
from model.training.augment import augment

if TYPE_CHECKING:
    from model.training.network import RecognizerNet
    from model.training.train import TrainConfig

logger = logging.getLogger(__name__)

DEFAULT_TEACHERS = (
    "efficientnet-lite0@224",
    "efficientnet-lite1@240",
    "efficientnet-lite2@260",
    "efficientnet-lite2@288",
    "efficientnet-lite0@288",
)


def parse_teacher(spec: str) -> tuple[str, int]:
    """``backbone@size`` -> (backbone, size); ValueError for anything else."""
    from model.training.network import BACKBONES

    name, sep, size = spec.partition("@")
    if not sep or name not in BACKBONES or not size.isdigit() or int(size) < 32:
        raise ValueError(f"teacher {spec!r}: expected BACKBONE@SIZE, BACKBONE one of "
                         f"{', '.join(BACKBONES)}, SIZE at least 32")
    return name, int(size)


@dataclass
class ViewBank:
    """uint8 BGR views: ``train`` (N, 1 + V, S, S, 3), ``val`` (M, 4, S, S, 3)."""

    train: np.ndarray
    val: np.ndarray
    train_labels: np.ndarray
    val_labels: np.ndarray
    size: int
    key: str

    @property
    def views(self) -> int:
        return int(self.train.shape[1])


def _bank_key(ds: Dataset, size: int, views: int, seed: int) -> str:
    h = hashlib.sha256(f"bank|{size}|{views}|{seed}|{ds.training_list_hash()}".encode())
    for s in ds.val:
        h.update(str(s.path).encode())
    return h.hexdigest()[:16]


def build_bank(ds: Dataset, size: int, views: int, seed: int, cache_dir: Path) -> ViewBank:
    """The view bank of ``ds``, computed once and memory-mapped from ``cache_dir``."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = _bank_key(ds, size, views, seed)
    tr_path, va_path = cache_dir / f"bank-{key}-train.npy", cache_dir / f"bank-{key}-val.npy"
    ytr = np.array([s.label for s in ds.train], np.int64)
    yva = np.array([s.label for s in ds.val], np.int64)
    if not (tr_path.exists() and va_path.exists()):
        tmp = tr_path.with_suffix(".tmp.npy")
        tr = np.lib.format.open_memmap(tmp, "w+", np.uint8, (len(ds.train), 1 + views, size, size, 3))
        for i, s in enumerate(tqdm(ds.train, desc="view bank", unit="img", mininterval=10)):
            img = read_image(s.path, size)
            tr[i, 0] = square_resize(img, size)
            for v in range(views):
                tr[i, 1 + v] = augment(img, np.random.default_rng([seed, i, v]), size)
        tr.flush()
        del tr
        va = np.zeros((len(ds.val), 4, size, size, 3), np.uint8)
        for i, s in enumerate(ds.val):
            va[i] = np.stack(tta_views(read_image(s.path, size), size))
        np.save(va_path, va)
        tmp.replace(tr_path)
        logger.info("view bank cached in %s", tr_path)
    return ViewBank(np.load(tr_path, mmap_mode="r"), np.load(va_path), ytr, yva, size, key)


def resize_views(views: np.ndarray, size: int) -> list[np.ndarray]:
    """Bank views (at the bank's size) at a network's size."""
    if views.shape[1] == size:
        return [np.asarray(v) for v in views]
    interp = cv2.INTER_AREA if views.shape[1] > size else cv2.INTER_LINEAR
    return [cv2.resize(np.asarray(v), (size, size), interpolation=interp) for v in views]


def _export_pooled_trunk(backbone: str, size: int, path: Path) -> None:
    import torch

    from model.training.network import build_trunk

    class Pooled(torch.nn.Module):
        def __init__(self, trunk: Any) -> None:
            super().__init__()
            self.trunk = trunk

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.trunk.extract_features(x).mean(dim=(2, 3))

    net = Pooled(build_trunk(backbone, size)).eval()
    tmp = path.with_suffix(".tmp.onnx")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 3, size, size),), str(tmp), input_names=["image"],
                          output_names=["features"],
                          dynamic_axes={"image": {0: "batch"}, "features": {0: "batch"}},
                          opset_version=17, dynamo=False)
    tmp.replace(path)


def teacher_features(bank: ViewBank, spec: str, cache_dir: Path, threads: int) -> dict[str, np.ndarray]:
    """Pooled frozen-trunk features of every bank view: ``train`` (N, 1+V, D), ``val`` (M, 4, D)."""
    import onnxruntime as ort

    backbone, size = parse_teacher(spec)
    path = cache_dir / f"teacher-{backbone}-{size}-{bank.key}.npz"
    if path.exists():
        with np.load(path) as z:
            return dict(z)
    onnx_path = cache_dir / f"trunk-{backbone}-{size}.onnx"
    if not onnx_path.exists():
        _export_pooled_trunk(backbone, size, onnx_path)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    out: dict[str, np.ndarray] = {}
    for split, arr in (("train", bank.train), ("val", bank.val)):
        n, v = arr.shape[:2]
        flat = arr.reshape(n * v, *arr.shape[2:])
        feats: list[np.ndarray] = []
        for i in tqdm(range(0, n * v, 32), desc=f"{spec} {split}", unit="batch", mininterval=10):
            x = to_tensor(resize_views(flat[i : i + 32], size))
            feats.append(sess.run(None, {"image": x})[0])
        out[split] = np.concatenate(feats).reshape(n, v, -1).astype(np.float32)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **out)  # type: ignore[arg-type]
    tmp.replace(path)
    return out


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)


def centred(feats: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Unit features minus the train centre views' mean, renormalised (as RecognizerNet.embed)."""
    tr, va = _unit(feats["train"]), _unit(feats["val"])
    center = tr[:, 0].mean(0)
    return {"train": _unit(tr - center), "val": _unit(va - center)}, center


def as_feature_dict(feats: dict[str, np.ndarray], bank: ViewBank) -> dict[str, np.ndarray]:
    """Raw unit features in the layout of ``model.training.features.cached_features``."""
    tr, va = _unit(feats["train"]), _unit(feats["val"])
    return {"train_centre": tr[:, 0], "train_aug": tr[:, 1:], "train_labels": bank.train_labels,
            "val_centre": va[:, 0], "val_tta": va[:, 1:], "val_labels": bank.val_labels}


def soft_labels(teachers: dict[str, dict[str, np.ndarray]], y: np.ndarray, val_labels: np.ndarray,
                paths: list[str], n_classes: int, temperature: float, folds: int, seed: int
                ) -> tuple[np.ndarray, dict[str, Any]]:
    """Out-of-fold tempered log-probabilities (N, 1+V, C) averaged over teachers, and a report.

    ``teachers``: each teacher's features of the train views (N, 1+V, D) and
    of val; ``y`` and ``val_labels`` their labels.
    """
    import torch

    from model.metrics import topk_accuracy
    from model.training.head import HeadConfig, head_logits, train_head
    from model.training.train import blocked_folds

    n = len(y)
    views = next(iter(teachers.values()))["train"].shape[1]
    probs = np.zeros((n, views, n_classes), np.float64)
    val_probs = np.zeros((len(val_labels), n_classes), np.float64)
    report: dict[str, Any] = {}
    fold_sets = blocked_folds(paths, y, folds) if folds >= 2 and n >= 2 * folds else [np.arange(n)]
    for t, (spec, raw) in enumerate(teachers.items()):
        f, _ = centred(raw)
        tr = f["train"]
        d = tr.shape[-1]
        oof = np.zeros((n, views, n_classes), np.float32)
        for k, te in enumerate(fold_sets):
            fit_idx = np.setdiff1d(np.arange(n), te) if len(fold_sets) > 1 else te
            head = train_head(tr[fit_idx].reshape(-1, d), np.repeat(y[fit_idx], views), n_classes,
                              HeadConfig(seed=seed + 10 * t + k))
            oof[te] = head_logits(head, tr[te].reshape(-1, d)).reshape(len(te), views, n_classes)
        probs += torch.softmax(torch.from_numpy(oof) / temperature, -1).numpy()
        full = train_head(tr.reshape(-1, d), np.repeat(y, views), n_classes, HeadConfig(seed=seed))
        lv = head_logits(full, f["val"][:, 0]) if len(val_labels) else np.zeros((0, n_classes))
        val_probs += torch.softmax(torch.from_numpy(lv) / temperature, -1).numpy()
        report[spec] = {"val": topk_accuracy(lv, val_labels) if len(lv) else {},
                        "out_of_fold_views_top1": float(np.mean(oof.argmax(-1) == y[:, None]))}
        logger.info("teacher %s: %s", spec, report[spec])
    probs /= len(teachers)
    val_probs /= len(teachers)
    if len(val_labels):
        report["ensemble_val"] = topk_accuracy(np.log(np.maximum(val_probs, 1e-12)), val_labels)
    report["ensemble_out_of_fold_views_top1"] = float(np.mean(probs.argmax(-1) == y[:, None]))
    logger.info("teacher ensemble: val %s", report.get("ensemble_val"))
    return np.log(np.maximum(probs, 1e-8)).astype(np.float32), report


def distill(net: RecognizerNet, bank: ViewBank, teacher_logprob: np.ndarray, cfg: TrainConfig,
            rows: np.ndarray | None = None) -> tuple[RecognizerNet, list[dict[str, Any]]]:
    """Fine-tune ``net`` on the bank's views against the teachers' soft labels.

    ``rows``: train only on these photos of the bank (a fold student).
    Returns the network after the last epoch (choosing the best epoch on val
    would leak val into the model) and the per-epoch log.
    """
    import torch
    import torch.nn.functional as F

    from model.metrics import topk_accuracy
    from model.training.finetune import frozen_forward, trainable_forward, warmup_cosine

    torch.manual_seed(cfg.seed)
    with torch.no_grad():
        # A cosine head at the linear head's scale (~120) gives gradients that
        # wreck the trunk in the first batches; at 32 the classes still separate.
        net.log_scale.fill_(math.log(cfg.distill_scale))
    net.log_scale.requires_grad_(False)
    if cfg.weight_bits == 7:
        from model.training.qat import train_on_grid

        logger.info("distill: %d convolutions trained on the 7-bit weight grid", train_on_grid(net))
    # ~1.7x faster depthwise convs on this CPU (Module.to takes memory_format; its stubs do not say so)
    net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    n_frozen = min(cfg.freeze_blocks, len(net.trunk._blocks))
    for m in [net.trunk._conv_stem, net.trunk._bn0, *net.trunk._blocks[:n_frozen]]:
        for p in m.parameters():
            p.requires_grad_(False)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        [{"params": [p for p in params if p.ndim > 1], "weight_decay": 1e-4},
         {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}],
        lr=cfg.lr,
    )
    pool = np.arange(len(bank.train_labels)) if rows is None else np.asarray(rows)
    n = len(pool)
    steps_per_epoch = math.ceil(n / cfg.batch)
    total = cfg.epochs * steps_per_epoch
    warm = max(1, steps_per_epoch // 2)

    def lr_at(step: int) -> float:
        return warmup_cosine(step, cfg.lr, warm, total)

    def batch_tensor(views: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(to_tensor(resize_views(views, cfg.size)))
        return x.contiguous(memory_format=torch.channels_last)

    def val_logits() -> np.ndarray:
        net.eval()
        out = []
        with torch.no_grad():
            for i in range(0, len(bank.val), 32):
                out.append(net(batch_tensor(bank.val[i : i + 32, 0]))[0].numpy())
        return np.concatenate(out) if out else np.zeros((0, net.prototypes.shape[0]), np.float32)

    log: list[dict[str, Any]] = []
    step = 0
    alpha = cfg.kd_alpha
    for epoch in range(cfg.epochs):
        net.train()
        # Batch-norm statistics stay ImageNet's: batches of 32 are too small to re-estimate them.
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
        rng = np.random.default_rng([cfg.seed, epoch])
        order = pool[rng.permutation(n)]
        view_of = np.zeros(len(bank.train_labels), np.int64)
        view_of[pool] = rng.integers(0, bank.views, size=n)
        t0 = time.time()
        total_loss = 0.0
        bar = tqdm(range(0, n, cfg.batch), desc=f"distill {epoch + 1}/{cfg.epochs}", unit="batch",
                   mininterval=10)
        for b in bar:
            idx = np.sort(order[b : b + cfg.batch])  # sorted: the memory map reads forward
            v = view_of[idx]
            x = batch_tensor(bank.train[idx, v])
            y = torch.from_numpy(bank.train_labels[idx])
            target = torch.from_numpy(teacher_logprob[idx, v])
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            logits, _ = trainable_forward(net, frozen_forward(net, x, n_frozen), n_frozen)
            kd = F.kl_div(F.log_softmax(logits, 1), target, log_target=True, reduction="batchmean")
            loss = alpha * kd + (1 - alpha) * F.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            step += 1
            total_loss += float(loss.detach()) * len(idx)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        entry: dict[str, Any] = {"epoch": epoch + 1, "loss": total_loss / max(1, n),
                                 "seconds": time.time() - t0}
        if len(bank.val_labels):
            entry["val"] = topk_accuracy(val_logits(), bank.val_labels)
        log.append(entry)
        logger.info("distill epoch %d/%d: %s", epoch + 1, cfg.epochs, entry)
    net = net.to(memory_format=torch.contiguous_format).eval()  # type: ignore[call-overload]
    if cfg.weight_bits == 7:
        from model.training.qat import bake

        bake(net)
    return net, log


def distill_soup(net: RecognizerNet, bank: ViewBank, teacher_logprob: np.ndarray, cfg: TrainConfig,
                 rows: np.ndarray | None = None) -> tuple[RecognizerNet, list[dict[str, Any]]]:
    """``cfg.students`` students distilled from the same start with seeds ``seed``, ``seed + 1``...,
    averaged weight by weight (a uniform model soup: one network at the stall, the
    accuracy of a small ensemble).  Every student counts the same: weighting or
    picking them on val would leak val into the model.
    """
    import copy
    from dataclasses import replace

    import torch

    if cfg.students <= 1:
        return distill(net, bank, teacher_logprob, cfg, rows)
    states, log = [], []
    for k in range(cfg.students):
        student, slog = distill(copy.deepcopy(net), bank, teacher_logprob, replace(cfg, seed=cfg.seed + k),
                                 rows)
        states.append(student.state_dict())
        log += [{"student": k + 1, **e} for e in slog]
    soup = {name: (torch.stack([s[name].float() for s in states]).mean(0).to(t.dtype)
                   if t.is_floating_point() else t)
            for name, t in states[0].items()}
    net.load_state_dict(soup)
    net.eval()
    if len(bank.val_labels):
        from model.metrics import topk_accuracy

        with torch.no_grad():
            logits = np.concatenate([net(torch.from_numpy(to_tensor(resize_views(bank.val[i : i + 32, 0],
                                                                                 cfg.size))))[0].numpy()
                                     for i in range(0, len(bank.val), 32)])
        log.append({"soup": cfg.students, "val": topk_accuracy(logits, bank.val_labels)})
        logger.info("soup of %d students: %s", cfg.students, log[-1])
    return net, log


def held_out_student(ds: Dataset, bank: ViewBank, teachers: dict[str, dict[str, np.ndarray]],
                     own_feats: dict[str, np.ndarray], cfg: TrainConfig, group: int, groups: int = 5,
                     shots: int = 5) -> dict[str, Any]:
    """The honest teaching figure: a student distilled without one group of classes, then taught them.

    The classes of ``group`` (the same groups as ``held_out_classes``) are left
    out of the teachers' heads and of the student; each is then taught from
    ``shots`` consecutive train photos (one session, as a vendor would) and
    the val photos of every class (another session) are recognised with the
    catalogue competing (``model.training.teaching.teach_group``).  The figures are kept
    for every taught-item bias: ``bench/teaching_bench.py`` chooses each
    group's on the other groups.
    """
    import torch
    import torch.nn.functional as F

    from model.training.features import embed_batches
    from model.training.head import HeadConfig, train_head
    from model.training.teaching import teach_group
    from model.training.train import build_net

    n = len(ds.classes)
    if not 0 <= group < groups:
        raise ValueError(f"held-out group {group}: expected 0 to {groups - 1}")
    perm = np.random.default_rng(cfg.seed).permutation(n)
    out = sorted(perm[group::groups].tolist())
    keep = np.array([c for c in range(n) if c not in out])
    remap = np.full(n, -1)
    remap[keep] = np.arange(len(keep))
    tri = np.where(np.isin(bank.train_labels, keep))[0]
    vai = np.where(np.isin(bank.val_labels, keep))[0]
    sub_train_labels, sub_val_labels = remap[bank.train_labels[tri]], remap[bank.val_labels[vai]]
    tsub = {k: {"train": v["train"][tri], "val": v["val"][vai]} for k, v in teachers.items()}
    f, center = centred({"train": own_feats["train"][tri], "val": own_feats["val"][vai]})
    d = f["train"].shape[-1]
    head = train_head(f["train"].reshape(-1, d), np.repeat(sub_train_labels, bank.views), len(keep),
                      HeadConfig(seed=cfg.seed))
    net = build_net(cfg, len(keep), head.prototypes.detach().numpy(), float(head.log_scale.detach()),
                     center)
    soft_sub, _ = soft_labels(tsub, sub_train_labels, sub_val_labels, [str(ds.train[i].path) for i in tri],
                              len(keep), cfg.kd_temperature, cfg.folds, cfg.seed)
    # The student reads the kept rows of the memory-mapped bank in place (a copy would be ~5 GB);
    # held-out rows are never drawn (their labels are -1, their soft labels never read).
    soft = np.zeros((len(bank.train_labels), *soft_sub.shape[1:]), np.float32)
    soft[tri] = soft_sub
    sub = ViewBank(bank.train, bank.val[vai], remap[bank.train_labels], sub_val_labels, bank.size,
                   f"{bank.key}-g{group}")
    net, log = distill_soup(net, sub, soft, cfg, rows=tri)
    taught_photos = np.where(np.isin(bank.train_labels, out))[0]
    if not len(taught_photos) or not np.isin(bank.val_labels, out).any():
        raise ValueError(f"held-out group {group}: its classes have no train photos to teach "
                         "or no val photos to test")
    with torch.no_grad():
        etr = embed_batches(net.embed, [square_resize(read_image(s.path, cfg.size), cfg.size)
                                        for s in ds.train])
        eva = embed_batches(net.embed, [square_resize(read_image(s.path, cfg.size), cfg.size)
                                        for s in ds.val])
        # the stall teaches each photo with its mirror and two quarter turns (Recognizer.teach)
        eviews = embed_batches(net.embed, [v for i in taught_photos
                                           for v in tta_views(read_image(ds.train[i].path, cfg.size),
                                                              cfg.size)])
        eviews = eviews.reshape(len(taught_photos), -1, eviews.shape[-1])
        protos = F.normalize(net.prototypes.detach(), dim=1).numpy()
        scale = float(net.log_scale.detach().exp())
    kept: dict[str, Any] = {
        "train": etr, "val": eva, "train_labels": bank.train_labels, "val_labels": bank.val_labels,
        "taught_photos": taught_photos, "taught_views": eviews, "prototypes": protos,
        "scale": np.array(scale, np.float32), "keep": keep, "out": np.array(out)}
    # Kept so that teaching can be studied again without distilling again.
    np.savez_compressed(cfg.run_dir / f"held-out-group-{group}.npz", **kept)
    torch.save(net.state_dict(), cfg.run_dir / f"held-out-group-{group}.pt")
    result = {"group": group, "groups": groups, "held_out": [ds.classes[c] for c in out],
              "student_val_known": log[-1].get("val") if log else None,
              **teach_group(kept, shots, draws=10, seed=cfg.seed)}
    logger.info("held-out group %d: %s", group, result)
    return result
