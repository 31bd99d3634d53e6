"""Cross-validated recipes: fine-tuned teachers measured on blocked folds over train + val.

``wetmarket model cv`` (``run_cv``).  For each teacher ``BACKBONE@SIZE`` (seed
``seed + index``):

1. **Activation cache**: every photo of train + val as its centre crop plus
   ``views`` plate-camera augmentations, run once through the frozen part of
   the trunk (the stem and every block before the last stride-32 stages) and
   kept as float16 in a memory-mapped ``.npy`` (Lite0 at 224 px: 112x14x14 per
   view, ~0.4 GB for 4 views).  Filled in chunks with its progress on disk, so a
   stopped run goes on where it stopped.
2. Per fold (``model.training.folds``): a linear cosine head on the frozen
   embeddings of the fold's training part (the *linear* recipe, measured on
   the held-out part), then the last blocks, the 1x1 head convolution and the
   prototypes fine-tuned on the cached views (one random view per photo per
   epoch, cosine schedule over ``epochs``), the held-out part's logits kept after
   every epoch.  Each fold's result is its own ``fold-K.npz`` and each epoch a
   checkpoint: a stopped run repeats at most one epoch.
3. Choices read off the folds, never off val's photos as seen in training: the epoch to
   stop at (the best mean top-1 over folds), then the temperature and the unknown
   thresholds fitted on the out-of-fold outputs at that epoch of the other-session rows
   (val's photos, each predicted by the fold network that held out its whole session).
4. The out-of-fold ensemble of all teachers (tempered probabilities averaged)
   on the same folds.
5. Teachers of one ``BACKBONE@SIZE``: their weight soup, each fold's networks
   averaged weight by weight into one network of one teacher's cost, read on the
   fold's held-out photos as a teacher is (``weight_soup``).

The report gives per-fold and mean +- sd top-1/top-5, and the top-1 on the
held-out val blocks alone (``other_session``: whole sessions of other
occasions, the nearest thing here to the photos a stall will see).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from model import ModelError
from model.data import IMAGE_SUFFIXES, Dataset, Sample, images_under, load_dataset
from model.metrics import softmax, topk_accuracy
from model.recognizer import mirror_average, mirror_wanted
from model.training.folds import Folds, Pool, blocked_folds, pooled
from model.unknown import MAHALANOBIS_SCORE, OUT_OF_FOLD_QUANTILE, UnknownFlag, flag_threshold

if TYPE_CHECKING:
    import torch

    from model.training.network import RecognizerNet

logger = logging.getLogger(__name__)

CHUNK = 64  # photos per step of the activation cache (its progress is saved after each)
#: Weight-space ensembles measured per fold (WiSE-FT, Wortsman et al. 2022): the network at
#: ``start + alpha * (fine-tuned - start)``, ``start`` the pretrained trunk with the linear head.
WISE_ALPHAS = (0.25, 0.5, 0.75)
#: ``--mirror unsure``: the share of the other-session photos read with their mirror too (the least
#: sure ones).  A cost, not a fit: below half, the photo in the middle of a stall's morning is still
#: read once, and the mean cost of the mirror falls to a quarter of it.
MIRROR_UNSURE_SHARE = 0.25
#: The shares of other-session produce an unknown flag is fitted to take at which ``ood_figures``
#: reads what it takes of photos outside the catalogue: the shipped one and two costlier ones (the
#: issue's first measurement of packaged goods was at 7.1 % of produce).
OOD_SHARES = (OUT_OF_FOLD_QUANTILE, 0.075, 0.10)
#: The shares of the other-session produce the shipped flag may be fitted to take
#: (``choose_flag_share``): up to the ceiling itself, down to 2 %, in steps of about half a photo
#: of the ~197 other-session ones.  Fitted at the ceiling, the flag takes more than it of a fold it
#: was not fitted on (the folds are whole sessions, not exchangeable with each other).
FLAG_SHARES = tuple(round(0.02 + 0.0025 * i, 4) for i in range(13))


@dataclass
class CvConfig:
    data: Path
    run_dir: Path
    teachers: tuple[str, ...] = ("efficientnet-lite0@224",)
    seed: int = 0
    folds: int = 5
    epochs: int = 6
    views: int = 4
    # the blocks whose outputs are at the trunk's ``scales`` smallest scales are fine-tuned (1: the
    # last stages, blocks 11-15 of Lite0; 2: from block 5, 2.2x the compute of an epoch)
    scales: int = 1
    # or fine-tune from this block on (overrides ``scales``; the number of blocks: the head only)
    from_block: int | None = None
    lr: float = 2e-4
    batch: int = 32
    # a cosine head at the linear head's scale (~90-120) wrecks the trunk in the first batches
    train_scale: float = 32.0
    threads: int = 2
    max_images: int | None = None  # a tiny slice per split (tests)
    only_folds: tuple[int, ...] | None = None  # run these folds only (split a run over sessions)
    # a student (BACKBONE@SIZE, seed ``seed``) distilled on the same folds from the teachers above
    student: str | None = None
    kd_temperature: float = 2.0
    kd_alpha: float = 0.7
    # the chosen recipe trained on all of train + val and exported here (``ship``)
    final: Path | None = None
    # ship the weight-space ensemble at the alpha the folds chose instead of the plain fine-tune
    wise: bool = False
    # manifold mixup (Verma et al. 2019) at the trainable part's input, the cached activations:
    # each batch mixed with a shuffle of itself at a Beta(a, a) weight, labels alike; 0: off
    mixup: float = 0.0
    # MixStyle (Zhou et al. 2021, "Domain generalization with MixStyle") at the same input: in half
    # of the batches each photo's per-channel mean and spread are mixed with another photo's at a
    # Beta(a, a) weight, its content and label kept.  Those statistics carry light, camera and
    # background, what another occasion changes; 0: off
    mixstyle: float = 0.0
    # the student matches its teachers' outputs on its own input, batch by batch (function
    # matching, Beyer et al. 2022, "Knowledge distillation: A good teacher is patient and
    # consistent"): the teachers run on the very view (and mixture) the student sees instead of
    # teaching each photo by their average over their own views; its inputs mixed at a Beta(a, a)
    # weight (0: views only).  The teachers must be the student's backbone and size: they read
    # its cached activations.  None: off
    match: float | None = None
    # the student's schedule when it differs from the teachers' (a matched student does not run
    # out of targets: the paper's point is a long one)
    student_epochs: int | None = None
    # each photo's centre square, this fraction of its shorter side, before resizing and
    # augmenting (the shipped model's ``input.crop``, applied after the stall's plate region)
    crop: float = 1.0
    # each held-out photo also read with its mirror, the two outputs averaged (test-time flip):
    # figures, temperature and flag of that reading beside the plain one, and ``--final`` ships it
    # (the model's ``input.mirror``); what a fold learns is the same, so its folder is too
    mirror: bool = False
    # ``--final`` ships the mirror read only for the unsure photos (``unsure_mirror_reading``)
    mirror_unsure: bool = False
    # photos of things outside the catalogue (packaged goods): each fold network reads their centre
    # view after each epoch, and the report gives the share of them its unknown flag takes, fitted
    # as the produce figure is (``ood_figures``); what a fold learns is the same, so its folder is too
    ood: Path | None = None

    def __post_init__(self) -> None:
        if self.mirror and self.wise:
            # the weight-space ensembles' outputs are recorded for the plain reading only
            raise ModelError("--mirror with --wise: the weight-space ensembles are read without the mirror")
        if self.mirror_unsure and not self.mirror:
            raise ModelError("the mirror read when unsure needs the mirrored reading (--mirror unsure)")


def slice_dataset(ds: Dataset, n: int | None) -> Dataset:
    """The first ``n`` photos of each class in name order, per split: neighbours stay neighbours."""
    if n is None:
        return ds

    def take(samples: list[Any]) -> list[Any]:
        per: dict[int, list[Any]] = {}
        for s in sorted(samples, key=lambda s: s.path.as_posix()):
            per.setdefault(s.label, []).append(s)
        k = max(1, n // max(1, len(per)))
        return [s for c in sorted(per) for s in per[c][:k]]

    return Dataset(ds.root, ds.classes, take(ds.train), take(ds.val))


def first_trainable_block(trunk: Any, size: int, scales: int = 1) -> int:
    """Index of the first block whose output is at one of the trunk's ``scales`` smallest scales
    (1: the last stages)."""
    import torch

    x = torch.zeros(1, 3, size, size)
    sizes = []
    with torch.no_grad():
        x = trunk._swish(trunk._bn0(trunk._conv_stem(x)))
        for b in trunk._blocks:
            x = b(x)
            sizes.append(int(x.shape[-1]))
    kept = sorted(set(sizes))[:scales]
    return sizes.index(max(kept))


def _pool_key(pool: Pool) -> str:
    h = hashlib.sha256()
    for s in pool.samples:
        h.update(f"{s.path.as_posix()}\t{s.label}\n".encode())
    return h.hexdigest()[:12]


def activation_cache(pool: Pool, net: RecognizerNet, backbone: str, n_frozen: int, size: int, views: int,
                     seed: int, cache_dir: Path, crop: float = 1.0, mirror: bool = False) -> np.ndarray:
    """Frozen-part activations (N, 1 + views, C, H, W) float16 of every photo's views, memory-mapped;
    with ``mirror`` (N, 1, C, H, W) of each photo's mirrored centre view only.

    Resumable: filled ``CHUNK`` photos at a time with the count done beside it.
    """
    import torch

    from model.preprocess import read_photo, square_resize, to_tensor
    from model.training.augment import augment
    from model.training.finetune import frozen_forward

    cache_dir.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        shape = tuple(frozen_forward(net, torch.zeros(1, 3, size, size), n_frozen).shape[1:])
    spec = f"{_pool_key(pool)}|{backbone}|{size}|{views}|{seed}|{n_frozen}"
    spec += f"|c{crop:g}" if crop < 1 else ""  # the caches of whole photos keep their names
    if mirror:
        spec, views = spec + "|mirror", 0
    key = hashlib.sha256(spec.encode()).hexdigest()[:12]
    path = cache_dir / f"acts-{key}.npy"
    if path.exists():
        return np.load(path, mmap_mode="r")
    tmp, progress = path.with_suffix(".tmp.npy"), path.with_suffix(".done")
    full = (len(pool), 1 + views, *shape)
    done = int(progress.read_text()) if progress.exists() and tmp.exists() else 0
    acts = (np.load(tmp, mmap_mode="r+") if done else
            np.lib.format.open_memmap(tmp, "w+", np.float16, full))
    t0 = time.time()
    for start in range(done, len(pool), CHUNK):
        crops = []
        for i in range(start, min(len(pool), start + CHUNK)):
            img = read_photo(pool.samples[i].path, size, crop)
            centre = square_resize(img, size)
            crops.append(np.ascontiguousarray(centre[:, ::-1]) if mirror else centre)
            crops += [augment(img, np.random.default_rng([seed, i, v]), size) for v in range(views)]
        with torch.no_grad():
            out = [frozen_forward(net, torch.from_numpy(to_tensor(crops[j : j + 32])), n_frozen)
                   for j in range(0, len(crops), 32)]
        acts[start : start + len(crops) // (1 + views)] = (
            torch.cat(out).reshape(-1, 1 + views, *shape).numpy().astype(np.float16))
        acts.flush()
        progress.write_text(str(min(len(pool), start + CHUNK)))
        logger.info("activation cache: %d/%d photos (%.0f s)", min(len(pool), start + CHUNK), len(pool),
                    time.time() - t0)
    del acts
    tmp.replace(path)
    progress.unlink(missing_ok=True)
    return np.load(path, mmap_mode="r")


def _forward_rest(net: RecognizerNet, acts: np.ndarray, n_frozen: int) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    from model.training.finetune import trainable_forward

    return trainable_forward(net, torch.from_numpy(np.asarray(acts, np.float32)), n_frozen)


def frozen_embeddings(net: RecognizerNet, acts: np.ndarray, n_frozen: int) -> np.ndarray:
    """Unit pooled features (N, V, D) of every cached view through the pretrained last blocks."""
    import torch

    n, v = acts.shape[:2]
    t: Any = net.trunk
    out = []
    net.eval()
    with torch.no_grad():
        for i in range(0, n, 16):
            x = torch.from_numpy(np.asarray(acts[i : i + 16], np.float32).reshape(-1, *acts.shape[2:]))
            for b in t._blocks[n_frozen:]:
                x = b(x)
            f = t._swish(t._bn1(t._conv_head(x))).mean(dim=(2, 3))
            out.append(torch.nn.functional.normalize(f, dim=1).numpy())
    return np.concatenate(out).reshape(n, v, -1)


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)


def mix_style(x: np.ndarray, rng: np.random.Generator, a: float) -> np.ndarray:
    """A batch of activations (B, C, H, W) with each photo's per-channel mean and spread mixed
    with a shuffled mate's at a Beta(a, a) weight per photo (MixStyle); the normalised content
    is the photo's own."""
    mu = x.mean((2, 3), keepdims=True)
    sig = np.sqrt(x.var((2, 3), keepdims=True) + 1e-6)
    lam = rng.beta(a, a, size=(len(x), 1, 1, 1)).astype(np.float32)
    mate = rng.permutation(len(x))
    mixed_mu = lam * mu + (1 - lam) * mu[mate]
    mixed_sig = lam * sig + (1 - lam) * sig[mate]
    return ((x - mu) / sig * mixed_sig + mixed_mu).astype(np.float32)


def run_fold(net: RecognizerNet, acts: np.ndarray, feats: np.ndarray, labels: np.ndarray,
             tr: np.ndarray, te: np.ndarray, k: int, n_frozen: int, n_classes: int, cfg: CvConfig,
             seed: int, work: Path, soft: np.ndarray | None = None, stop: int | None = None,
             name: str | None = None, wise_alpha: float | None = None,
             matchers: list[RecognizerNet] | None = None,
             mirrored: np.ndarray | None = None,
             ood_acts: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """One fold (training rows ``tr``, held-out rows ``te``): linear head, then the last blocks
    fine-tuned; held-out logits after each epoch, and each held-out photo's cosine to the nearest
    of the fold's exemplars (``refit.exemplar_rows`` of its training part, as shipped), which the
    unknown flag is fitted on.

    ``soft``: per-photo teacher log-probabilities (N, C) to distil from, ``cfg.kd_alpha``
    KL + the rest cross-entropy (only the fold's training rows are read).  ``stop``: end after
    this many epochs of the ``cfg.epochs`` schedule (the final model stops where the folds chose).
    With ``te`` empty (the final model, on every photo) nothing is measured.  ``wise_alpha``: the
    network ends as the weight-space ensemble of its start (the linear head) and its last epoch.
    ``matchers``: teacher networks run on each batch the student sees (``cfg.match``); their
    tempered probabilities, averaged, are the soft labels instead of ``soft``.  ``mirrored``: the
    mirrored centre views' activations (``activation_cache(..., mirror=True)``); the held-out
    photos are also read with them after each epoch (``finetuned_mirror``, ``near_mirror``).
    ``ood_acts``: the centre views' activations of photos outside the catalogue (``cfg.ood``), read
    after each epoch too (``ood_finetuned``, ``ood_near``).
    """
    import torch
    import torch.nn.functional as F

    from model.training.finetune import warmup_cosine
    from model.training.head import HeadConfig, head_logits, train_head
    from model.unknown import nearest_cosine

    center = _unit(feats[tr, 0]).mean(0)
    cf = _unit(_unit(feats) - center)
    head = train_head(cf[tr].reshape(-1, cf.shape[-1]), np.repeat(labels[tr], cf.shape[1]), n_classes,
                      HeadConfig(seed=seed + k))
    linear = head_logits(head, cf[te, 0]) if len(te) else np.zeros((0, n_classes), np.float32)
    with torch.no_grad():
        net.prototypes.copy_(head.prototypes.detach())
        net.center.copy_(torch.from_numpy(center.astype(np.float32)))
        net.log_scale.fill_(math.log(cfg.train_scale))
    net.log_scale.requires_grad_(False)
    for p in [*net.trunk._conv_stem.parameters(), *net.trunk._bn0.parameters(),
              *(q for b in net.trunk._blocks[:n_frozen] for q in b.parameters())]:
        p.requires_grad_(False)
    params = [p for p in net.parameters() if p.requires_grad]
    head_start = {n: p.detach().clone() for n, p in net.named_parameters()}  # the weight-space ensembles' end
    opt = torch.optim.AdamW([{"params": [p for p in params if p.ndim > 1], "weight_decay": 1e-4},
                             {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}],
                            lr=cfg.lr)
    steps = math.ceil(len(tr) / cfg.batch)
    total, warm = cfg.epochs * steps, max(1, steps // 2)
    ckpt = work / f"{name or f'fold-{k}'}.pt"
    per_epoch: list[np.ndarray] = []
    per_epoch_mirror: list[np.ndarray] = []
    per_epoch_ood: list[np.ndarray] = []
    start = 0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        per_epoch, start = list(state["per_epoch"]), state["epoch"]
        per_epoch_mirror = list(state.get("per_epoch_mirror", []))
        per_epoch_ood = list(state.get("per_epoch_ood", []))
        if mirrored is not None and len(per_epoch_mirror) != len(per_epoch):
            raise ModelError(f"{ckpt}: saved before the mirrored reading was asked for; delete it to run "
                             "the fold again")
        if ood_acts is not None and (len(per_epoch_ood) != len(per_epoch) or any(
                len(o) != len(ood_acts) for o in per_epoch_ood)):
            raise ModelError(f"{ckpt}: saved without these photos outside the catalogue (--ood); delete "
                             "it to run the fold again")
        logger.info("fold %d: resuming after epoch %d", k, start)
    torch.manual_seed(seed + k)
    mixup = cfg.match if matchers is not None and cfg.match is not None else cfg.mixup
    for epoch in range(start, cfg.epochs if stop is None else min(stop, cfg.epochs)):
        net.train()
        for m in net.modules():  # ImageNet's batch-norm statistics: batches of 32 are too small
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
        rng = np.random.default_rng([seed, k, epoch])
        order = tr[rng.permutation(len(tr))]
        view = rng.integers(0, acts.shape[1], size=len(tr))
        t0, loss_sum = time.time(), 0.0
        for b in range(0, len(order), cfg.batch):
            sel = np.argsort(order[b : b + cfg.batch])  # forward reads of the memory map
            idx, v = order[b : b + cfg.batch][sel], view[b : b + cfg.batch][sel]
            for g in opt.param_groups:
                g["lr"] = warmup_cosine(epoch * steps + b // cfg.batch, cfg.lr, warm, total)
            x = np.asarray(acts[idx, v], np.float32)
            y = torch.from_numpy(labels[idx])
            mate: np.ndarray | None = None
            if mixup > 0:
                # never exactly 0 or 1: the soft labels below take its logarithm
                lam = float(np.clip(rng.beta(mixup, mixup), 1e-4, 1 - 1e-4))
                mate = rng.permutation(len(idx))
                x = lam * x + (1 - lam) * x[mate]
            if cfg.mixstyle > 0 and rng.random() < 0.5:
                x = mix_style(x, rng, cfg.mixstyle)
            logits, _ = _forward_rest(net, x, n_frozen)
            loss = (F.cross_entropy(logits, y) if mate is None else
                    lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[mate]))
            if matchers is not None:
                with torch.no_grad():
                    probs = torch.stack([F.softmax(_forward_rest(m, x, n_frozen)[0] / cfg.kd_temperature, 1)
                                         for m in matchers]).mean(0)
                target = torch.log(torch.clamp(probs, min=1e-8))
            elif soft is not None:
                target = torch.from_numpy(soft[idx])
                if mate is not None:  # the mixed photo's soft label: the same mixture of the two
                    target = torch.logaddexp(target + math.log(lam), target[mate] + math.log(1 - lam))
            if matchers is not None or soft is not None:
                kd = F.kl_div(F.log_softmax(logits, 1), target, log_target=True, reduction="batchmean")
                loss = cfg.kd_alpha * kd + (1 - cfg.kd_alpha) * loss
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            loss_sum += float(loss.detach()) * len(idx)
        net.eval()
        if len(te):
            held = _rest_outputs(net, acts, te, n_frozen)[0]
            per_epoch.append(held)
            if mirrored is not None:
                per_epoch_mirror.append(mirror_average(held, _rest_outputs(net, mirrored, te, n_frozen)[0]))
            if ood_acts is not None:
                per_epoch_ood.append(_rest_outputs(net, ood_acts, np.arange(len(ood_acts)), n_frozen)[0])
            acc = topk_accuracy(held, labels[te])
            logger.info("fold %d epoch %d/%d: loss %.3f, held-out top-1 %.3f top-5 %.3f (%.0f s)", k,
                        epoch + 1, cfg.epochs, loss_sum / len(tr), acc[1], acc[5], time.time() - t0)
        else:
            logger.info("%s epoch %d/%d: loss %.3f (%.0f s)", name or f"fold {k}", epoch + 1, cfg.epochs,
                        loss_sum / len(tr), time.time() - t0)
        torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "per_epoch": per_epoch,
                    "per_epoch_mirror": per_epoch_mirror, "per_epoch_ood": per_epoch_ood,
                    "epoch": epoch + 1}, ckpt)
    if wise_alpha is not None:
        wise_blend(net, head_start, wise_alpha)
    with torch.no_grad():
        # every view of every photo after the last epoch: a student of this fold learns from these
        # (the fold's held-out part is unseen by the teacher, so by the student too)
        views = np.concatenate([_forward_rest(net, acts[i : i + 16].reshape(-1, *acts.shape[2:]),
                                              n_frozen)[0].numpy().reshape(-1, acts.shape[1], n_classes)
                                for i in range(0, len(acts), 16)])
    out = {"held_out": te, "linear": linear.astype(np.float32), "views": views.astype(np.float16)}
    if len(te):
        ex, bank = exemplar_bank(net, acts, labels, tr, n_classes, n_frozen)
        out["finetuned"] = np.stack(per_epoch).astype(np.float32)
        emb = _rest_outputs(net, acts, te, n_frozen)[1]
        out["near"] = nearest_cosine(emb, bank).astype(np.float32)
        # the unit embeddings themselves, of the held-out photos and of the training part the
        # fold's network learnt from: other unknown-flag scores (``model.training.flags``) are
        # read from them without running the fold again (10 MB a fold in float16)
        out["embedding"] = emb.astype(np.float16)
        out["train_embedding"] = _rest_outputs(net, acts, tr, n_frozen)[1].astype(np.float16)
        if mirrored is not None:
            out["finetuned_mirror"] = np.stack(per_epoch_mirror).astype(np.float32)
            out["near_mirror"] = nearest_cosine(
                mirror_average(emb, _rest_outputs(net, mirrored, te, n_frozen)[1], normalise=True), bank
            ).astype(np.float32)
        if ood_acts is not None:
            out["ood_finetuned"] = np.stack(per_epoch_ood).astype(np.float32)
            ood_emb = _rest_outputs(net, ood_acts, np.arange(len(ood_acts)), n_frozen)[1]
            out["ood_near"] = nearest_cosine(ood_emb, bank).astype(np.float32)
            out["ood_embedding"] = ood_emb.astype(np.float16)
        out["wise"], out["wise_near"] = _wise_outputs(net, head_start, acts, te, ex, n_frozen)
    return out


def exemplar_bank(net: RecognizerNet, acts: np.ndarray, labels: np.ndarray, tr: np.ndarray, n_classes: int,
                  n_frozen: int) -> tuple[np.ndarray, np.ndarray]:
    """A fold's exemplars (``refit.exemplar_rows`` of its training rows ``tr``, as shipped; sorted)
    and their embeddings under ``net``: what a held-out photo's nearest cosine is read against."""
    from model.refit import exemplar_rows

    ex = np.sort(tr[exemplar_rows(labels[tr], range(n_classes))])
    return ex, _rest_outputs(net, acts, ex, n_frozen)[1]


def _set_params(net: RecognizerNet, weights: dict[str, torch.Tensor]) -> None:
    import torch

    with torch.no_grad():
        for n, p in net.named_parameters():
            p.copy_(weights[n])


def wise_blend(net: RecognizerNet, start: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """Set ``net``'s weights to ``start + alpha * (net - start)``; its weights before, to restore."""
    final = {n: p.detach().clone() for n, p in net.named_parameters()}
    _set_params(net, {n: start[n] + alpha * (final[n] - start[n]) for n in final})
    return final


def _wise_outputs(net: RecognizerNet, start: dict[str, torch.Tensor], acts: np.ndarray, rows: np.ndarray,
                  exemplars: np.ndarray, n_frozen: int) -> tuple[np.ndarray, np.ndarray]:
    """Held-out logits (len(WISE_ALPHAS), N, C) of the networks between ``start`` and ``net``'s
    weights, and each held-out photo's cosine to the nearest exemplar under each (alphas, N);
    ``net`` is left as it was.  Its batch-norm statistics are ImageNet's at both ends."""
    from model.unknown import nearest_cosine

    logits, near = [], []
    for alpha in WISE_ALPHAS:
        final = wise_blend(net, start, alpha)
        held, emb = _rest_outputs(net, acts, rows, n_frozen)
        logits.append(held)
        near.append(nearest_cosine(emb, _rest_outputs(net, acts, exemplars, n_frozen)[1]))
        _set_params(net, final)
    return np.stack(logits).astype(np.float32), np.stack(near).astype(np.float32)


def _rest_outputs(net: RecognizerNet, acts: np.ndarray, rows: np.ndarray,
                  n_frozen: int) -> tuple[np.ndarray, np.ndarray]:
    """(logits, embeddings) of the centre view of ``rows`` (eval mode, no gradient)."""
    import torch

    with torch.no_grad():
        out = [_forward_rest(net, acts[rows[i : i + 64], 0], n_frozen) for i in range(0, len(rows), 64)]
    return (np.concatenate([lo.numpy() for lo, _ in out]), np.concatenate([e.numpy() for _, e in out]))


def _fold_figures(logits: np.ndarray, labels: np.ndarray, folds: Folds) -> dict[str, Any]:
    """Per-fold top-1/top-5 of pooled out-of-fold ``logits`` (N, C), their mean and sd."""
    per = [topk_accuracy(logits[folds.held_out(k)], labels[folds.held_out(k)]) for k in range(folds.k)]
    t1, t5 = np.array([p[1] for p in per]), np.array([p[5] for p in per])
    return {"top1": float(t1.mean()), "top1_sd": float(t1.std(ddof=1)) if len(t1) > 1 else 0.0,
            "top5": float(t5.mean()), "top5_sd": float(t5.std(ddof=1)) if len(t5) > 1 else 0.0,
            "per_fold_top1": t1.tolist(), "per_fold_top5": t5.tolist()}


def calibration_rows(split: np.ndarray) -> np.ndarray:
    """The rows temperatures and thresholds are fitted on: the other-session ones (val's), or every
    row where fewer than two are (a slice without val)."""
    other = split == "val"
    return other if other.sum() >= 2 else np.ones(len(split), bool)


def summarise(oof: np.ndarray, labels: np.ndarray, folds: Folds, split: np.ndarray,
              near: np.ndarray | None = None) -> dict[str, Any]:
    """Figures of one recipe from its out-of-fold logits (N, C), with the choices fitted on them.

    The temperature and the unknown thresholds are fitted on the **other-session** rows (each
    item's val photos: whole sessions of another occasion, each predicted by the fold network
    that held its session out), the nearest thing here to a stall's photos; the pooled rows
    share their occasion with their fold's training part and are surer of themselves (a flag
    fitted on them to flag 5 % flagged 23.5 % of the other-session photos).  Without val rows
    (a slice with none) the pooled rows serve.  ``near``: each photo's out-of-fold cosine to its
    fold's nearest exemplar; with it, the unknown flag (``model.unknown.UnknownFlag``) too.
    """
    from model.training.head import fit_temperature

    other = split == "val"
    cal = calibration_rows(split)
    t = fit_temperature(oof[cal], labels[cal])
    top = softmax(oof, t).max(1)
    thr = flag_threshold(top[cal], OUT_OF_FOLD_QUANTILE)
    per = [topk_accuracy(oof[other & (folds.fold == k)], labels[other & (folds.fold == k)])[1]
           for k in range(folds.k) if np.any(other & (folds.fold == k))]
    flag: dict[str, Any] = {}
    if near is not None:
        share = choose_flag_share(oof, labels, near, other, folds)
        fitted = UnknownFlag.fit(top[cal], near[cal], share)
        flagged = fitted.unknown(top, near)
        flag = {"unknown_flag": fitted.to_json(), "unknown_flag_share": share,
                "unknown_flag_flagged": float(np.mean(flagged)),
                "unknown_flag_flagged_other_session": float(np.mean(flagged[other])) if other.any() else None,
                "unknown_flag_flagged_other_session_crossfit": _crossfit_flagged(oof, labels, near, other,
                                                                                 folds),
                "unknown_flag_flagged_other_session_nested":
                    nested_flag(oof, labels, near, other, folds).get("produce_flagged")}
    return {**_fold_figures(oof, labels, folds),
            "other_session": topk_accuracy(oof[other], labels[other]) if other.any() else {},
            "other_session_per_fold_top1": per,
            "calibrated_on": "other_session" if np.array_equal(cal, other) else "pooled",
            "temperature": t, "unknown_threshold": thr, "known_flagged": float(np.mean(top < thr)), **flag}


def nested_epochs(fine: np.ndarray, labels: np.ndarray, folds: Folds, split: np.ndarray) -> dict[str, Any]:
    """The figures the epoch choice would give if it had not seen the fold it is read on: per fold,
    the epoch with the best mean top-1 over the *other* folds, then this fold's top-1 at it.  The
    chosen epoch's own figure is read on the folds that chose it (a small optimistic bias); this
    one is not.  ``fine``: (epochs, N, C) out-of-fold logits after each epoch."""
    per_fold = np.array([[topk_accuracy(fine[e][folds.held_out(k)], labels[folds.held_out(k)])[1]
                          for k in range(folds.k)] for e in range(fine.shape[0])])  # (epochs, folds)
    other = split == "val"
    picked, top1, rows = [], [], np.zeros(fine.shape[1:], np.float32)
    for k in range(folds.k):
        rest = [j for j in range(folds.k) if j != k]
        e = int(np.argmax(per_fold[:, rest].mean(1))) if rest else int(np.argmax(per_fold[:, k]))
        picked.append(e + 1)
        top1.append(per_fold[e, k])
        rows[folds.held_out(k)] = fine[e][folds.held_out(k)]
    t1 = np.array(top1)
    return {"epochs_picked_per_fold": picked, "top1": float(t1.mean()),
            "top1_sd": float(t1.std(ddof=1)) if len(t1) > 1 else 0.0,
            "other_session_top1": topk_accuracy(rows[other], labels[other])[1] if other.any() else None}


def _crossfit_flags(oof: np.ndarray, labels: np.ndarray, near: np.ndarray, other: np.ndarray,
                    folds: Folds, shares: tuple[float, ...] | None
                    ) -> Iterator[tuple[int, float, tuple[float, ...], list[UnknownFlag]]]:
    """Per fold with other-session rows: (fold, temperature, shares, a flag per share), the
    temperature and flags fitted on the *other* folds' other-session rows.  ``shares`` None: the
    one share ``choose_flag_share`` picks on those other folds alone (nested: the choice never saw
    the fold it is read on)."""
    from model.training.head import fit_temperature

    for k in range(folds.k):
        mine, rest = other & (folds.fold == k), other & (folds.fold != k)
        if not mine.any() or rest.sum() < 2:
            continue
        t = fit_temperature(oof[rest], labels[rest])
        top = softmax(oof[rest], t).max(1)
        used = shares if shares is not None else (choose_flag_share(oof, labels, near, rest, folds),)
        yield k, t, used, [UnknownFlag.fit(top, near[rest], share) for share in used]


def _crossfit_rates(oof: np.ndarray, labels: np.ndarray, near: np.ndarray, other: np.ndarray,
                    folds: Folds, shares: tuple[float, ...]) -> np.ndarray | None:
    """Per share, the share of other-session produce the flag takes when it was fitted without it:
    per fold, temperature and flag fitted on the other folds' other-session rows, applied to this
    fold's.  The shipped flag is fitted on all of those rows, so its own share says nothing; this
    does.  None where no fold can be read so (too few other-session rows)."""
    flagged, n = np.zeros(len(shares)), 0
    for k, t, _, flags in _crossfit_flags(oof, labels, near, other, folds, shares):
        mine = other & (folds.fold == k)
        top = softmax(oof[mine], t).max(1)
        flagged += [np.sum(flag.unknown(top, near[mine])) for flag in flags]
        n += int(mine.sum())
    return flagged / n if n else None


def choose_flag_share(oof: np.ndarray, labels: np.ndarray, near: np.ndarray, other: np.ndarray,
                      folds: Folds, ceiling: float = OUT_OF_FOLD_QUANTILE,
                      shares: tuple[float, ...] = FLAG_SHARES) -> float:
    """The share the unknown flag is fitted to take of ``other``'s rows: the largest of ``shares``
    whose cross-fitted produce figure (``_crossfit_rates``) is at most ``ceiling``, the smallest
    where none is, ``ceiling`` itself where there is nothing to cross-fit.  The figure only grows
    with the share (the threshold is an order statistic), so the largest that keeps under the
    ceiling flags the most of what the catalogue does not hold."""
    rates = _crossfit_rates(oof, labels, near, other, folds, shares)
    if rates is None:
        return ceiling
    under = [share for share, rate in zip(shares, rates, strict=True) if rate <= ceiling + 1e-9]
    return max(under) if under else min(shares)


def _crossfit_flagged(oof: np.ndarray, labels: np.ndarray, near: np.ndarray, other: np.ndarray,
                      folds: Folds) -> float | None:
    """``_crossfit_rates`` at the fixed ceiling share (the figure every run before the share was
    chosen reported)."""
    rates = _crossfit_rates(oof, labels, near, other, folds, (OUT_OF_FOLD_QUANTILE,))
    return None if rates is None else float(rates[0])


def nested_flag(oof: np.ndarray, labels: np.ndarray, near: np.ndarray, other: np.ndarray, folds: Folds,
                ood: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """What the shipped flag's choice is worth on sessions it never saw: per fold, the share chosen
    (``choose_flag_share``) on the other folds alone, temperature and flag fitted at it on their
    other-session rows, applied to this fold's other-session produce and, with ``ood`` (logits
    (folds, M, C), nearest cosines (folds, M)), to this fold network's reading of the photos
    outside the catalogue.  Empty where no fold can be read so."""
    shares, prod, outside, n_prod, n_out = [], 0, 0, 0, 0
    for k, t, (share,), (flag,) in _crossfit_flags(oof, labels, near, other, folds, None):
        mine = other & (folds.fold == k)
        shares.append(share)
        prod += int(np.sum(flag.unknown(softmax(oof[mine], t).max(1), near[mine])))
        n_prod += int(mine.sum())
        if ood is not None:
            outside += int(np.sum(flag.unknown(softmax(ood[0][k], t).max(1), ood[1][k])))
            n_out += ood[0].shape[1]
    if not n_prod:
        return {}
    return {"shares_per_fold": shares, "produce_flagged": prod / n_prod,
            **({"outside_flagged": outside / n_out} if ood is not None else {})}


def ood_figures(oof: np.ndarray, near: np.ndarray, ood_logits: np.ndarray, ood_near: np.ndarray,
                labels: np.ndarray, folds: Folds, split: np.ndarray,
                shares: tuple[float, ...] = OOD_SHARES) -> dict[str, Any]:
    """What the unknown flag does to photos outside the catalogue (``cfg.ood``), fitted as the
    produce figure is: per fold, temperature and flag fitted on the other folds' other-session rows
    (``_crossfit_flags``), applied to this fold's other-session produce and to this fold network's
    reading of every outside photo (``ood_logits`` (folds, M, C), ``ood_near`` (folds, M)).  At the
    shipped share and at larger ones, what each takes of both; and the AUROC of the flag's score
    between the two (outside photos against produce, each under its fold's flag)."""
    from model.metrics import auroc

    other = split == "val"
    prod, outside = np.zeros(len(shares)), np.zeros(len(shares))
    n_prod = n_out = 0
    known: list[np.ndarray] = []
    unknown: list[np.ndarray] = []
    for k, t, _, flags in _crossfit_flags(oof, labels, near, other, folds, shares):
        mine = other & (folds.fold == k)
        p_top, o_top = softmax(oof[mine], t).max(1), softmax(ood_logits[k], t).max(1)
        for i, flag in enumerate(flags):
            prod[i] += np.sum(flag.unknown(p_top, near[mine]))
            outside[i] += np.sum(flag.unknown(o_top, ood_near[k]))
        known.append(flags[0].score(p_top, near[mine]))
        unknown.append(flags[0].score(o_top, ood_near[k]))
        n_prod, n_out = n_prod + int(mine.sum()), n_out + len(o_top)
    if not n_prod:
        return {}
    return {"photos": int(ood_logits.shape[1]),
            "nested": nested_flag(oof, labels, near, other, folds, (ood_logits, ood_near)),
            "at_share": [{"share": s, "produce_flagged": float(p / n_prod),
                          "outside_flagged": float(o / n_out)}
                         for s, p, o in zip(shares, prod, outside, strict=True)],
            # high score = known: the outside photos are the positives of "unknown"
            "auroc": float(auroc(-np.concatenate(unknown), -np.concatenate(known)))}


def work_dir(cfg: CvConfig, spec: str, seed: int, student: bool = False) -> Path:
    """The folder of one recipe's folds: every setting that changes what a fold learns is in its
    name, so a run never resumes another recipe's checkpoints."""
    backbone, size = spec.split("@")
    deeper = (f"-b{cfg.from_block}" if cfg.from_block is not None else
              f"-x{cfg.scales}" if cfg.scales != 1 else "")
    mixed = f"-mix{cfg.mixup:g}" if cfg.mixup > 0 else ""
    if cfg.mixstyle > 0:
        mixed += f"-ms{cfg.mixstyle:g}"
    if cfg.crop < 1:
        mixed += f"-c{cfg.crop:g}"
    if student and cfg.match is not None:
        mixed += f"-fm{cfg.match:g}"
    if student and cfg.student_epochs is not None:
        mixed += f"-e{cfg.student_epochs}"
    return cfg.run_dir / f"{'student-' if student else ''}{backbone}-{size}-s{seed}{deeper}{mixed}"


def student_config(cfg: CvConfig) -> CvConfig:
    """The configuration a student's folds run under: its own schedule where one is given."""
    return replace(cfg, epochs=cfg.student_epochs) if cfg.student_epochs is not None else cfg


def matching_teachers(cfg: CvConfig, teachers: list[dict[str, Any]], n_classes: int,
                      name: str) -> list[RecognizerNet]:
    """The teachers' networks of one fold (``fold-K``) or of the final run, for a matched student."""
    import torch

    from model.training.distill import parse_teacher
    from model.training.network import RecognizerNet, build_trunk

    nets = []
    for t in teachers:
        path = work_dir(cfg, t["teacher"], t["seed"]) / f"{name}-net.pt"
        if not path.exists():
            raise ModelError(f"--match: {path} is missing: the teacher's folds ran before their networks "
                             "were kept; run them again (delete its fold-*.npz)")
        # no ImageNet weights read: the kept state replaces every one of them
        net = RecognizerNet(build_trunk(*parse_teacher(t["teacher"]), pretrained=False), n_classes)
        net.load_state_dict(torch.load(path))
        nets.append(net.eval())
    return nets


def student_targets(cfg: CvConfig, teachers: list[dict[str, Any]], k: int,
                    name: str | None = None) -> np.ndarray:
    """Fold ``k``'s soft labels (N, C log-probabilities): each teacher's fold-``k`` network (which
    never saw fold ``k``'s held-out part) on every view of each photo, tempered, averaged over
    views and teachers.  Per photo, not per view: each teacher's views are its own augmentations."""
    probs = None
    for t in teachers:
        with np.load(work_dir(cfg, t["teacher"], t["seed"]) / f"{name or f'fold-{k}'}.npz") as z:
            p = softmax(z["views"].astype(np.float32).reshape(-1, z["views"].shape[-1]),
                        cfg.kd_temperature).reshape(z["views"].shape).mean(1)
        probs = p if probs is None else probs + p
    assert probs is not None
    return np.log(np.maximum(probs / len(teachers), 1e-8)).astype(np.float32)


def _prepared(cfg: CvConfig, pool: Pool, n_classes: int, spec: str, seed: int,
              work: Path) -> tuple[RecognizerNet, int, np.ndarray, np.ndarray]:
    """``spec``'s pretrained network, where its trainable part starts, its activation cache and
    its frozen embeddings (both kept on disk)."""
    from model.training.distill import parse_teacher
    from model.training.network import RecognizerNet, build_trunk

    backbone, size = parse_teacher(spec)
    work.mkdir(parents=True, exist_ok=True)
    base = RecognizerNet(build_trunk(backbone, size), n_classes).eval()
    n_frozen = (first_trainable_block(base.trunk, size, cfg.scales) if cfg.from_block is None
                else min(cfg.from_block, len(base.trunk._blocks)))
    acts = activation_cache(pool, base, backbone, n_frozen, size, cfg.views, seed, cfg.run_dir / "cache",
                            cfg.crop)
    feats_path = work / "frozen-embeddings.npy"
    if feats_path.exists():
        feats = np.load(feats_path)
    else:
        feats = frozen_embeddings(base, acts, n_frozen)
        np.save(feats_path, feats)
    return base, n_frozen, acts, feats


def teacher_cv(cfg: CvConfig, pool: Pool, folds: Folds, n_classes: int, spec: str,
               seed: int, teachers: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Every fold of one teacher (resumable), then its figures; the pooled logits in ``oof.npz``.

    With ``teachers``: the student ``spec``, each fold distilled from their fold's networks.
    """
    import torch

    work = work_dir(cfg, spec, seed, student=teachers is not None)
    base, n_frozen, acts, feats = _prepared(cfg, pool, n_classes, spec, seed, work)
    initial = {k: v.clone() for k, v in base.state_dict().items()}
    wanted = cfg.only_folds if cfg.only_folds is not None else tuple(range(folds.k))
    to_run = [k for k in wanted if not (work / f"fold-{k}.npz").exists()]
    # the mirrored views are read only by folds still to run (a report of done folds needs none)
    mirrored = _mirrored(cfg, pool, base, spec, seed, n_frozen) if cfg.mirror and to_run else None
    ood_acts = _ood_acts(cfg, base, spec, n_frozen) if cfg.ood is not None and to_run else None
    for k in to_run:
        out = work / f"fold-{k}.npz"
        base.load_state_dict(initial)
        for p in base.parameters():
            p.requires_grad_(True)
        matched = teachers is not None and cfg.match is not None
        soft = student_targets(cfg, teachers, k) if teachers is not None and not matched else None
        matchers = (matching_teachers(cfg, teachers, n_classes, f"fold-{k}")
                    if teachers is not None and matched else None)
        res = run_fold(base, acts, feats, pool.labels, folds.training(k), folds.held_out(k), k, n_frozen,
                       n_classes, cfg, seed, work, soft, matchers=matchers, mirrored=mirrored,
                       ood_acts=ood_acts)
        if teachers is None:  # a teacher's fold network, without its optimiser, before the fold
            # counts as done: a student matching its teachers on its own batches reads it
            torch.save(base.state_dict(), work / f"fold-{k}-net.pt")
        np.savez(out.with_suffix(".tmp.npz"), **res)  # type: ignore[arg-type]
        out.with_suffix(".tmp.npz").replace(out)
        (work / f"fold-{k}.pt").unlink(missing_ok=True)
    missing = [k for k in range(folds.k) if not (work / f"fold-{k}.npz").exists()]
    if missing:
        return {"teacher": spec, "seed": seed, "folds_missing": missing}
    n = len(pool)
    linear = np.zeros((n, n_classes), np.float32)
    fine = np.zeros((cfg.epochs, n, n_classes), np.float32)
    near: np.ndarray | None = np.zeros(n, np.float32)
    # the mirrored reading, where every fold kept it
    fine_m: np.ndarray | None = np.zeros_like(fine) if cfg.mirror else None
    near_m = np.zeros(n, np.float32)
    # the photos outside the catalogue, as each fold's network read them, where every fold did
    ood: list[tuple[np.ndarray, np.ndarray]] | None = [] if cfg.ood is not None else None
    for k in range(folds.k):
        with np.load(work / f"fold-{k}.npz") as z:
            if ood is not None and "ood_near" in z:
                ood.append((z["ood_finetuned"], z["ood_near"]))
            elif ood is not None:
                logger.warning("%s fold %d ran without the photos outside the catalogue (--ood): no "
                               "figures of them", spec, k)
                ood = None
            linear[z["held_out"]] = z["linear"]
            fine[:, z["held_out"]] = z["finetuned"]
            if near is not None and "near" in z:
                near[z["held_out"]] = z["near"]
            else:  # a fold run before the exemplar cosines were kept: no unknown flag from the folds
                near = None
            if fine_m is not None and "finetuned_mirror" in z:
                fine_m[:, z["held_out"]] = z["finetuned_mirror"]
                near_m[z["held_out"]] = z["near_mirror"]
            elif fine_m is not None:
                logger.warning("%s fold %d ran without the mirrored reading: no figures of it", spec, k)
                fine_m = None
    by_epoch = [_fold_figures(fine[e], pool.labels, folds)["top1"] for e in range(cfg.epochs)]
    best = int(np.argmax(by_epoch))
    np.savez(work / "oof.npz", linear=linear, finetuned=fine[best], labels=pool.labels)
    plain = summarise(fine[best], pool.labels, folds, pool.split, near)
    if ood is not None and near is not None:
        if len({o[1].shape for o in ood}) > 1:
            raise ModelError(f"{work}: the folds read different photos outside the catalogue; delete the "
                             "fold-*.npz to read them again")
        plain["ood"] = ood_figures(fine[best], near, np.stack([o[0][best] for o in ood]),
                                   np.stack([o[1] for o in ood]), pool.labels, folds, pool.split)
    if near is not None:
        from model.training.flags import flag_score_figures

        ood_best = None if ood is None else np.stack([o[0][best] for o in ood])
        scores = flag_score_figures(work, fine[best], ood_best, pool.labels, folds, pool.split)
        if scores is not None:
            plain["flag_scores"] = scores
    blends = _wise_oof(work, folds, n, n_classes)
    extra = ({"wise": wise_figures(blends[0], fine[-1], pool.labels, folds, pool.split, blends[1])}
             if blends is not None else {})
    return {"teacher": spec, "seed": seed, "trainable_from_block": n_frozen, **extra,
            "epochs_top1": by_epoch, "chosen_epochs": best + 1,
            "epochs_nested": nested_epochs(fine, pool.labels, folds, pool.split),
            "linear": summarise(linear, pool.labels, folds, pool.split),
            "finetuned": plain,
            **({"finetuned_mirror": {
                **summarise(fine_m[best], pool.labels, folds, pool.split,
                            near_m if near is not None else None),
                "paired_with_plain": paired_counts(fine_m[best], fine[best], pool.labels, pool.split)},
                "finetuned_mirror_unsure": unsure_mirror_reading(
                    fine[best], plain["temperature"], fine_m[best], near,
                    near_m if near is not None else None, pool.labels, folds, pool.split)}
               if fine_m is not None else {})}


def unsure_mirror_reading(plain: np.ndarray, temperature: float, mirrored: np.ndarray,
                          near: np.ndarray | None, near_m: np.ndarray | None, labels: np.ndarray,
                          folds: Folds, split: np.ndarray) -> dict[str, Any]:
    """The mirror read only for the photos the plain reading is least sure of: its top probability
    at its own ``temperature`` (``summarise``'s) below the ``MIRROR_UNSURE_SHARE`` quantile of the
    other-session rows (``model.recognizer.mirror_wanted``).  ``mirrored``, ``near_m``: the readings
    averaged with the mirror's (``mirror_average``).  The figures, temperature and flag of that
    mixed reading (``summarise``), how many photos it reads twice, and its photo-by-photo count
    against the plain reading."""
    other = split == "val"
    cal = calibration_rows(split)
    below = float(np.quantile(softmax(plain[cal], temperature).max(1), MIRROR_UNSURE_SHARE))
    twice = mirror_wanted(plain, temperature, below)
    mixed = np.where(twice[:, None], mirrored, plain)
    mixed_near = None if near is None or near_m is None else np.where(twice, near_m, near)
    return {"when_below": below, "plain_temperature": temperature,
            "read_twice": {"pooled": float(twice.mean()),
                           "other_session": float(twice[other].mean()) if other.any() else None},
            **summarise(mixed, labels, folds, split, mixed_near),
            "paired_with_plain": paired_counts(mixed, plain, labels, split)}


def _mirrored(cfg: CvConfig, pool: Pool, base: RecognizerNet, spec: str, seed: int,
              n_frozen: int) -> np.ndarray:
    """The mirrored centre views' activations of ``spec``'s frozen part (cached beside the views')."""
    from model.training.distill import parse_teacher

    backbone, size = parse_teacher(spec)
    return activation_cache(pool, base, backbone, n_frozen, size, cfg.views, seed, cfg.run_dir / "cache",
                            cfg.crop, mirror=True)


def ood_pool(folder: Path) -> Pool:
    """The photos under ``folder`` (things outside the catalogue) as a pool of their own."""
    paths = images_under(folder)
    if not paths:
        raise ModelError(f"{folder}: no photos ({', '.join(IMAGE_SUFFIXES)}) to read as outside the "
                         "catalogue")
    return Pool([Sample(p, -1) for p in paths], np.array(["outside"] * len(paths)),
                np.full(len(paths), -1, np.int64))


def _ood_acts(cfg: CvConfig, base: RecognizerNet, spec: str, n_frozen: int) -> np.ndarray:
    """The centre views' activations of ``spec``'s frozen part for ``cfg.ood``'s photos (cached;
    no augmented views, so one cache serves every seed)."""
    from model.training.distill import parse_teacher

    assert cfg.ood is not None
    backbone, size = parse_teacher(spec)
    return activation_cache(ood_pool(cfg.ood), base, backbone, n_frozen, size, 0, 0, cfg.run_dir / "cache",
                            cfg.crop)


def paired_counts(a: np.ndarray, b: np.ndarray, labels: np.ndarray, split: np.ndarray) -> dict[str, Any]:
    """Two readings of the same photos compared photo by photo (top-1): how many only ``a`` reads
    right, how many only ``b`` does, and McNemar's exact test of that difference, pooled and on the
    other-session rows."""
    from scipy.stats import binomtest

    out: dict[str, Any] = {}
    for name, rows in (("pooled", np.ones(len(labels), bool)), ("other_session", split == "val")):
        ra, rb = a[rows].argmax(1) == labels[rows], b[rows].argmax(1) == labels[rows]
        only_a, only_b = int(np.sum(ra & ~rb)), int(np.sum(rb & ~ra))
        p = binomtest(only_a, only_a + only_b).pvalue if only_a + only_b else 1.0
        out[name] = {"only_first": only_a, "only_second": only_b, "p": float(p)}
    return out


def _wise_oof(work: Path, folds: Folds, n: int, n_classes: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The weight-space ensembles' out-of-fold logits (alphas, N, C) and nearest-exemplar cosines
    (alphas, N), when every fold kept them."""
    wise = np.zeros((len(WISE_ALPHAS), n, n_classes), np.float32)
    near = np.zeros((len(WISE_ALPHAS), n), np.float32)
    for k in range(folds.k):
        with np.load(work / f"fold-{k}.npz") as z:
            if "wise_near" not in z or z["wise"].shape[0] != len(WISE_ALPHAS):
                return None
            wise[:, z["held_out"]] = z["wise"]
            near[:, z["held_out"]] = z["wise_near"]
    return wise, near


def wise_figures(wise: np.ndarray, last: np.ndarray, labels: np.ndarray, folds: Folds,
                 split: np.ndarray, near: np.ndarray | None = None) -> dict[str, Any]:
    """Each weight-space ensemble's pooled and other-session top-1 next to the last epoch's
    (alpha 1), and the alpha chosen without the fold it is read on (per fold, the best mean
    other-session top-1 over the other folds; then that fold's other-session rows at it).
    ``chosen``: the alpha with the best other-session top-1 over every fold, what ``--final
    --wise`` ships, with its figures and calibration (``summarise``; ``near``: the ensembles'
    nearest-exemplar cosines, for its unknown flag)."""
    alphas = [*WISE_ALPHAS, 1.0]
    logits = np.concatenate([wise, last[None]])
    other = split == "val"
    per_fold = np.array([[topk_accuracy(lg[other & (folds.fold == k)], labels[other & (folds.fold == k)])[1]
                          if np.any(other & (folds.fold == k)) else np.nan for k in range(folds.k)]
                         for lg in logits])  # (alphas, folds)
    picked, rows = [], np.zeros(last.shape, np.float32)
    for k in range(folds.k):
        rest = [j for j in range(folds.k) if j != k]
        a = int(np.nanargmax(np.nanmean(per_fold[:, rest], 1))) if rest else len(alphas) - 1
        picked.append(alphas[a])
        rows[folds.held_out(k)] = logits[a][folds.held_out(k)]
    on_other = [topk_accuracy(lg[other], labels[other]) if other.any() else None for lg in logits]
    nested = topk_accuracy(rows[other], labels[other])[1] if other.any() else None
    best = int(np.argmax([a[1] if a else 0.0 for a in on_other[:-1]]))  # alpha 1: the plain fine-tune
    # Its own other-session figure was read on the rows that chose it: what it is worth there is
    # the nested one, which the shipped metadata quotes.
    chosen = {"alpha": alphas[best], "nested_other_session_top1": nested,
              **summarise(logits[best], labels, folds, split, None if near is None else near[best])}
    return {"alphas": alphas, "chosen": chosen,
            "pooled_top1": [_fold_figures(lg, labels, folds)["top1"] for lg in logits],
            "other_session_top1": [a[1] if a else None for a in on_other],
            "other_session_top5": [a[5] if a else None for a in on_other],
            "alphas_picked_per_fold": picked, "nested_other_session_top1": nested}


def ensemble(cfg: CvConfig, results: list[dict[str, Any]], pool: Pool, folds: Folds,
             recipe: str = "finetuned") -> dict[str, Any]:
    """The out-of-fold ensemble: each teacher's tempered probabilities (its fitted temperature) averaged.

    ``recipe`` "linear": the frozen trunks' heads, the kind of ensemble the shipped model was
    distilled from (``model.training.distill``).
    """
    logits = []
    for r in results:
        with np.load(work_dir(cfg, r["teacher"], r["seed"]) / "oof.npz") as z:
            logits.append(z[recipe])
    probs = sum(softmax(lg, r[recipe]["temperature"]) for lg, r in zip(logits, results, strict=True))
    return {"teachers": [f"{r['teacher']}#{r['seed']}" for r in results],
            **summarise(np.log(np.maximum(probs / len(results), 1e-12)), pool.labels, folds, pool.split),
            "nested_other_session_top1": nested_ensemble_top1(logits, pool.labels, folds, pool.split)}


def nested_ensemble_top1(logits: list[np.ndarray], labels: np.ndarray, folds: Folds,
                         split: np.ndarray) -> float | None:
    """The ensemble's other-session top-1 with each member's temperature fitted without the fold it
    is read on: the plain figure weighs the members by temperatures fitted on the very rows it
    reads (mildly optimistic); this one does not."""
    from model.training.head import fit_temperature

    other = split == "val"
    right, n = 0, 0
    for k in range(folds.k):
        mine, rest = other & (folds.fold == k), other & (folds.fold != k)
        if not mine.any() or rest.sum() < 2:
            continue
        probs = sum(softmax(lg[mine], fit_temperature(lg[rest], labels[rest])) for lg in logits)
        right += int(np.sum(np.argmax(probs, 1) == labels[mine]))
        n += int(mine.sum())
    return right / n if n else None


def soup_state(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The networks' weights averaged name by name (floating tensors; counters kept from the first)."""
    import torch

    return {n: (torch.stack([s[n] for s in states]).mean(0) if states[0][n].is_floating_point()
                else states[0][n]) for n in states[0]}


def weight_soup(cfg: CvConfig, results: list[dict[str, Any]], pool: Pool, folds: Folds,
                n_classes: int) -> dict[str, Any] | None:
    """The teachers' fold networks averaged weight by weight into one network of one teacher's cost
    (a uniform "model soup": Wortsman et al. 2022), read on each fold's held-out photos as a teacher
    is: its logits, its cosine to the fold's exemplars under the soup, the unknown flag fitted on
    those, and the photos outside the catalogue.  Teachers of one ``BACKBONE@SIZE`` only (the same
    ImageNet start; other shapes cannot be averaged); ``None`` otherwise.  The fold networks kept
    are each teacher's last epoch, not its chosen one, so a soup of one reads its teacher's last
    epoch.  Against each teacher (its chosen epoch), photo by photo."""
    import torch

    from model.unknown import nearest_cosine

    specs = {r["teacher"] for r in results}
    if len(specs) != 1:
        return None
    spec = specs.pop()
    works = [work_dir(cfg, spec, r["seed"]) for r in results]
    lost = [str(w / f"fold-{k}-net.pt") for w in works for k in range(folds.k)
            if not (w / f"fold-{k}-net.pt").exists()]
    if lost:
        logger.warning("no weight soup: fold networks not kept (folds run by older code): %s",
                       ", ".join(lost))
        return None
    # the held-out photos are read from their centre view, the same in every teacher's cache
    base, n_frozen, acts, _ = _prepared(cfg, pool, n_classes, spec, results[0]["seed"], works[0])
    ood_acts = _ood_acts(cfg, base, spec, n_frozen) if cfg.ood is not None else None
    labels = pool.labels
    logits = np.zeros((len(pool), n_classes), np.float32)
    near = np.zeros(len(pool), np.float32)
    ood_logits, ood_near = [], []
    for k in range(folds.k):
        base.load_state_dict(soup_state([torch.load(w / f"fold-{k}-net.pt") for w in works]))
        base.eval()
        tr, te = folds.training(k), folds.held_out(k)
        bank = exemplar_bank(base, acts, labels, tr, n_classes, n_frozen)[1]
        logits[te], emb = _rest_outputs(base, acts, te, n_frozen)
        near[te] = nearest_cosine(emb, bank)
        if ood_acts is not None:
            o_logits, o_emb = _rest_outputs(base, ood_acts, np.arange(len(ood_acts)), n_frozen)
            ood_logits.append(o_logits)
            ood_near.append(nearest_cosine(o_emb, bank))
    out = {"teachers": [f"{r['teacher']}#{r['seed']}" for r in results],
           **summarise(logits, labels, folds, pool.split, near)}
    if ood_acts is not None:
        out["ood"] = ood_figures(logits, near, np.stack(ood_logits), np.stack(ood_near), labels, folds,
                                 pool.split)
    paired = []
    for w in works:
        with np.load(w / "oof.npz") as z:
            paired.append(paired_counts(logits, z["finetuned"], labels, pool.split))
    out["paired_with_teachers"] = paired
    np.savez(cfg.run_dir / f"soup-{'+'.join(w.name for w in works)}.npz", logits=logits, near=near,
             labels=labels)
    return out


def run_cv(cfg: CvConfig) -> dict[str, Any]:
    """Cross-validate each teacher and their ensemble; ``cv-report.json`` and ``.md`` in the run folder."""
    import torch

    torch.set_num_threads(cfg.threads)
    ds = slice_dataset(load_dataset(cfg.data), cfg.max_images)
    pool = pooled(ds)
    folds = blocked_folds(pool, cfg.folds)
    if any(len(folds.training(k)) == 0 or len(folds.held_out(k)) == 0 for k in range(folds.k)):
        raise ModelError(f"{cfg.data}: too few photos for {cfg.folds} folds")
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    results = [teacher_cv(cfg, pool, folds, len(ds.classes), spec, cfg.seed + i)
               for i, spec in enumerate(cfg.teachers)]
    done = [r for r in results if "folds_missing" not in r]
    report: dict[str, Any] = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "photos": {"train": len(ds.train), "val": len(ds.val), "classes": len(ds.classes),
                   "blocks": int(folds.block.max()) + 1},
        "teachers": results,
    }
    if len(done) > 1:
        report["ensemble"] = ensemble(cfg, done, pool, folds)
        report["linear_ensemble"] = ensemble(cfg, done, pool, folds, "linear")
        soup = weight_soup(cfg, done, pool, folds, len(ds.classes))
        if soup is not None:
            report["soup"] = soup
    if cfg.student is not None:
        report["student"] = (
            teacher_cv(student_config(cfg), pool, folds, len(ds.classes), cfg.student, cfg.seed, done)
            if done and len(done) == len(results) else {"teacher": cfg.student, "seed": cfg.seed,
                                                        "waiting_for_teachers": True})
    _write_report(cfg.run_dir, report)
    if cfg.final is not None:
        report["final"] = ship(cfg, report, ds, pool)
        _write_report(cfg.run_dir, report)
    return report


def _write_report(run_dir: Path, report: dict[str, Any]) -> None:
    (run_dir / "cv-report.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    (run_dir / "cv-report.md").write_text(render_cv_markdown(report))


def _fmt(s: dict[str, Any]) -> str:
    other = s.get("other_session") or {}
    per = s.get("other_session_per_fold_top1") or []
    tail = (f"; other-session blocks top-1 {other[1]:.3f}, top-5 {other[5]:.3f} (folds: "
            f"{', '.join(f'{x:.3f}' for x in per)})" if other else "")
    return (f"top-1 {s['top1']:.3f} +- {s['top1_sd']:.3f}, top-5 {s['top5']:.3f} +- {s['top5_sd']:.3f} "
            f"(folds: {', '.join(f'{x:.3f}' for x in s['per_fold_top1'])}){tail}; temperature "
            f"{s['temperature']:.3f}, unknown threshold {s['unknown_threshold']:.3f}"
            + (f", unknown flag (probability + nearest exemplar) threshold "
               f"{s['unknown_flag']['threshold']:.3f} flags {s['unknown_flag_flagged']:.1%} of the "
               f"out-of-fold produce ({_pct(s.get('unknown_flag_flagged_other_session'))} of the "
               f"other-session blocks it was fitted on, to take {_pct(s.get('unknown_flag_share'))} "
               f"of them; {_pct(s.get('unknown_flag_flagged_other_session_nested'))} of each fold's "
               f"other-session blocks when its share and threshold were chosen on the other folds; "
               f"{_pct(s.get('unknown_flag_flagged_other_session_crossfit'))} when fitted there to "
               f"take {OUT_OF_FOLD_QUANTILE:.0%})" if "unknown_flag" in s else "")
            + _outside(s.get("ood")) + _flag_scores(s.get("flag_scores")))


def _flag_scores(f: dict[str, Any] | None) -> str:
    if not f:
        return ""
    return "; the flag with another score in place of the nearest exemplar's cosine (nested): " + ", ".join(
        f"{name}: {_pct(x['unknown_flag_flagged_other_session_nested'])} of produce"
        + (f", {_pct(x['outside_nested']['outside_flagged'])} outside (AUROC {x['auroc']:.3f})"
           if "outside_nested" in x else "") for name, x in f.items())


def _outside(o: dict[str, Any] | None) -> str:
    if not o:
        return ""
    nested = o.get("nested") or {}
    return (f"; of {o['photos']} photos outside the catalogue, each fold's network with its flag fitted "
            "on the other folds takes "
            + (f"{_pct(nested.get('outside_flagged'))} when the share too was chosen there (shares "
               f"{', '.join(f'{x:.2%}' for x in nested['shares_per_fold'])}; "
               f"{_pct(nested['produce_flagged'])} of produce taken), " if nested else "")
            + ", ".join(
                f"{_pct(a['outside_flagged'])} when fitted to take {a['share']:.1%} of produce "
                f"({_pct(a['produce_flagged'])} taken)" for a in o["at_share"])
            + f" (AUROC {o['auroc']:.3f})")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _mirror(t: dict[str, Any]) -> str:
    m = t.get("finetuned_mirror")
    if not m:
        return ""
    u = t.get("finetuned_mirror_unsure")
    return (f"\n  - read with each photo's mirror, outputs averaged: {_fmt(m)}; {_paired(m)}"
            + (f"\n  - the mirror read only when the plain reading's top probability is below "
               f"{u['when_below']:.3f} ({u['read_twice']['pooled']:.1%} of the photos, "
               f"{_pct(u['read_twice']['other_session'])} of the other-session ones): {_fmt(u)}; "
               f"{_paired(u)}" if u else ""))


def _paired(m: dict[str, Any]) -> str:
    pair = m["paired_with_plain"]
    return (f"photos only this reading gets right against only the plain one: pooled "
            f"{pair['pooled']['only_first']} against {pair['pooled']['only_second']} (p = "
            f"{pair['pooled']['p']:.2f}), other sessions {pair['other_session']['only_first']} against "
            f"{pair['other_session']['only_second']} (p = {pair['other_session']['p']:.2f})")


def _nested(t: dict[str, Any]) -> str:
    n = t.get("epochs_nested")
    if not n:
        return ""
    other = n.get("other_session_top1")
    return (f"\n  - epochs chosen without the fold they are read on (per fold "
            f"{', '.join(str(e) for e in n['epochs_picked_per_fold'])}): top-1 {n['top1']:.3f} +- "
            f"{n['top1_sd']:.3f}" + (f", other-session top-1 {other:.3f}" if other is not None else ""))


def render_cv_markdown(r: dict[str, Any]) -> str:
    c, p = r["config"], r["photos"]
    lines = [f"# Recognizer cross-validation ({c['folds']} blocked folds over train + val)", "",
             f"- photos: {p['train']} train + {p['val']} val, {p['classes']} classes, {p['blocks']} blocks "
             f"(model/training/folds.py); {c['views']} augmented views per photo; fine-tune: "
             f"{c['epochs']} epochs, lr {c['lr']}"
             + (f", manifold mixup Beta({c['mixup']:g}, {c['mixup']:g})" if c.get("mixup") else "")
             + (f", MixStyle Beta({c['mixstyle']:g}, {c['mixstyle']:g})" if c.get("mixstyle") else ""),
             "- figures: mean +- sd over folds of the held-out part's top-k; every choice below "
             "is out of fold: epochs on the pooled outputs; temperature and unknown thresholds on the "
             "other-session rows (whole sessions of another occasion)", ""]
    for t in r["teachers"]:
        name = f"{t['teacher']} seed {t['seed']}"
        if "folds_missing" in t:
            lines.append(f"- {name}: folds still to run: {t['folds_missing']}")
            continue
        lines.append(f"- {name}, linear head on the frozen trunk: {_fmt(t['linear'])}")
        lines.append(f"- {name}, last blocks (from block {t['trainable_from_block']}) fine-tuned, "
                     f"{t['chosen_epochs']} epochs (mean top-1 by epoch: "
                     f"{', '.join(f'{x:.3f}' for x in t['epochs_top1'])}): {_fmt(t['finetuned'])}"
                     + _nested(t) + _mirror(t))
        if "wise" in t:
            w = t["wise"]
            lines.append(f"- {name}, weight-space ensembles of the linear head's start and the last "
                         "epoch, alpha: pooled top-1 / other-session top-1 / top-5: " + "; ".join(
                             f"{a}: {_pct(p)} / {_pct(o)} / {_pct(f)}" for a, p, o, f in zip(
                                 w["alphas"], w["pooled_top1"], w["other_session_top1"],
                                 w["other_session_top5"], strict=True))
                         + "; alpha chosen on the other folds' other sessions: "
                         f"{w['alphas_picked_per_fold']}, "
                         f"nested other-session top-1 {_pct(w['nested_other_session_top1'])}")
    if "ensemble" in r:
        lines.append(f"- out-of-fold ensemble of {', '.join(r['ensemble']['teachers'])}: "
                     f"{_fmt(r['ensemble'])}; nested other-session top-1 (members' temperatures "
                     f"fitted without the fold read) {_pct(r['ensemble'].get('nested_other_session_top1'))}")
        lines.append(f"- the same trunks frozen, their linear heads' ensemble (what the shipped model was "
                     f"distilled from): {_fmt(r['linear_ensemble'])}")
    if "soup" in r:
        sp = r["soup"]
        lines.append(f"- weight soup of {', '.join(sp['teachers'])} (each fold's networks averaged weight "
                     f"by weight, one network of a teacher's cost): {_fmt(sp)}; photos only the soup gets "
                     "right against only each teacher, other sessions: " + ", ".join(
                         f"{p['other_session']['only_first']} against {p['other_session']['only_second']}"
                         for p in sp["paired_with_teachers"]))
    st = r.get("student")
    if st:
        matched = c.get("match")
        name = (f"student {st['teacher']} seed {st['seed']} (kd temperature {c['kd_temperature']}, "
                f"alpha {c['kd_alpha']}"
                + ("" if matched is None else
                   ", matching its teachers on each batch it sees" +
                   (f", inputs mixed at Beta({matched:g}, {matched:g})" if matched > 0 else ""))
                + (f", a {c['student_epochs']}-epoch schedule" if c.get("student_epochs") else "") + ")")
        if "finetuned" in st:
            lines.append(f"- {name}, {st['chosen_epochs']} epochs (mean top-1 by epoch: "
                         f"{', '.join(f'{x:.3f}' for x in st['epochs_top1'])}): {_fmt(st['finetuned'])}"
                         + _nested(st) + _mirror(st))
        else:
            lines.append(f"- {name}: still to run ({st.get('folds_missing', 'teachers unfinished')})")
    if "final" in r:
        lines.append(f"- **shipped**: {r['final']['recipe']} trained on all of train + val for "
                     f"{r['final']['epochs']} epochs, temperature and unknown flag fitted out of fold: "
                     f"{', '.join(Path(p).name for p in r['final']['files'])}")
    return "\n".join(lines) + "\n"


FINAL = "final"  # the run on every photo of train + val: final.npz (its views' logits), final-net.pt


def final_network(cfg: CvConfig, pool: Pool, n_classes: int, spec: str, seed: int, epochs: int,
                  teachers: list[dict[str, Any]] | None = None,
                  wise_alpha: float | None = None) -> RecognizerNet:
    """``spec`` trained on every photo of train + val, by the recipe the folds measured, stopped
    after the ``epochs`` they chose (same schedule); with ``teachers``: distilled from their
    final networks.  Resumable like a fold; the network is kept as ``final-net.pt``."""
    import torch

    work = work_dir(cfg, spec, seed, student=teachers is not None)
    base, n_frozen, acts, feats = _prepared(cfg, pool, n_classes, spec, seed, work)
    tag = FINAL if wise_alpha is None else f"{FINAL}-wise{wise_alpha:g}"
    done, state = work / f"{tag}.npz", work / f"{tag}-net.pt"
    if done.exists() and state.exists():
        base.load_state_dict(torch.load(state))
        return base.eval()
    for p in base.parameters():
        p.requires_grad_(True)
    matched = teachers is not None and cfg.match is not None
    soft = student_targets(cfg, teachers, 0, FINAL) if teachers is not None and not matched else None
    matchers = (matching_teachers(cfg, teachers, n_classes, FINAL)
                if teachers is not None and matched else None)
    every = np.arange(len(pool))
    res = run_fold(base, acts, feats, pool.labels, every, every[:0], cfg.folds, n_frozen, n_classes, cfg,
                   seed, work, soft, stop=epochs, name=tag, wise_alpha=wise_alpha, matchers=matchers)
    torch.save(base.state_dict(), state)
    np.savez(done.with_suffix(".tmp.npz"), views=res["views"])
    done.with_suffix(".tmp.npz").replace(done)
    (work / f"{tag}.pt").unlink(missing_ok=True)
    return base.eval()


def _shipped_mahalanobis(f: dict[str, Any]) -> dict[str, Any]:
    """``unknown.mahalanobis`` of the metadata: the flag with the Mahalanobis nearness fitted on the
    shipped recipe's out-of-fold scores (``flags.flag_score_figures``), the stall's flag wherever the
    folds kept their embeddings (its rule and figures: docs/benchmarks.md).  The export adds the
    file of the final network's means and precision.  Empty where the folds did not keep them, or
    for a mirrored or blended reading, whose scores they do not hold."""
    md = (f.get("flag_scores") or {}).get("MD")
    if md is None or "unknown_flag" not in md:
        return {}
    return {"mahalanobis": {**md["unknown_flag"], "score": MAHALANOBIS_SCORE,
                            "share": md["unknown_flag_share"],
                            "flagged_other_session_nested": md["unknown_flag_flagged_other_session_nested"],
                            **({"outside_flagged_nested": md["outside_nested"].get("outside_flagged")}
                               if md.get("outside_nested") else {})}}


def ship(cfg: CvConfig, report: dict[str, Any], ds: Dataset, pool: Pool) -> dict[str, Any]:
    """The model the stall runs: the cross-validated recipe trained on all of train + val, exported
    (float and int8) with the temperature and unknown flag fitted on its out-of-fold outputs."""
    import torch

    from model.training.distill import parse_teacher
    from model.training.network import EMBEDDING_DIMS
    from model.training.train import MODEL_VERSION, export_checkpoint, model_io, portable

    assert cfg.final is not None
    if cfg.wise and cfg.student is not None:
        raise ModelError("--final --wise ships one teacher's weight-space ensemble, not a student")
    teachers = report["teachers"]
    if any("folds_missing" in t for t in teachers):
        raise ModelError("--final: every fold of every teacher must have run first")
    if cfg.student is not None:
        chosen = report.get("student") or {}
        if "finetuned" not in chosen:
            raise ModelError("--final: the student's folds must have run first")
        for t in teachers:
            final_network(cfg, pool, len(ds.classes), t["teacher"], t["seed"], t["chosen_epochs"])
        net = final_network(student_config(cfg), pool, len(ds.classes), cfg.student, cfg.seed,
                            chosen["chosen_epochs"], teachers)
    elif len(teachers) == 1:
        chosen = teachers[0]
    else:
        raise ModelError("--final: several teachers ship as one distilled student: give --student")
    f = chosen["finetuned"]
    alpha: float | None = None
    mirror: bool | dict[str, float] = False
    if cfg.mirror:
        if "finetuned_mirror" not in chosen:
            raise ModelError("--final --mirror: the shipped recipe's folds ran without the mirrored reading; "
                             "run them again with --mirror (delete their fold-*.npz)")
        f = chosen["finetuned_mirror_unsure" if cfg.mirror_unsure else "finetuned_mirror"]
        mirror = ({"when_below": f["when_below"], "plain_temperature": f["plain_temperature"]}
                  if cfg.mirror_unsure else True)
    if cfg.wise:
        if "wise" not in chosen or "unknown_flag" not in chosen["wise"]["chosen"]:
            raise ModelError("--final --wise: one teacher whose folds kept their weight-space ensembles "
                             "(run its folds again with this code)")
        f = chosen["wise"]["chosen"]
        alpha = float(f["alpha"])
        # the blend the folds measured: the whole schedule's last epoch, then toward the start
        net = final_network(cfg, pool, len(ds.classes), chosen["teacher"], chosen["seed"], cfg.epochs,
                            wise_alpha=alpha)
    elif cfg.student is None:
        net = final_network(cfg, pool, len(ds.classes), chosen["teacher"], chosen["seed"],
                            chosen["chosen_epochs"])
    if "unknown_flag" not in f:
        raise ModelError("--final: these folds ran before the exemplar cosines were kept; run them again "
                         "(delete the fold-*.npz of the recipe) to fit the unknown flag out of fold")
    backbone, size = parse_teacher(chosen["teacher"])
    mode = "cv-student" if cfg.student is not None else "cv-finetune" if alpha is None else "cv-finetune-wise"
    key = hashlib.sha256(_pool_key(pool).encode()).hexdigest()[:12]
    other = f.get("other_session") or {}
    meta = {
        "version": MODEL_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "labels": ds.classes,
        **model_io(size, cfg.crop, mirror),
        "backbone": backbone,
        "mode": mode,
        "scale": cfg.train_scale,
        "temperature": f["temperature"],
        "unknown": {"score": "max calibrated probability", "threshold": f["unknown_threshold"],
                    "nearest_exemplar": {**f["unknown_flag"], "score": (
                        "max calibrated probability + nearest exemplar cosine, each standardised on the "
                        "out-of-fold outputs of the other-session photos"),
                        # what it was fitted to take of them, and what the folds measured it to take of
                        # sessions it never saw (None: no other-session rows to measure it on)
                        "share": f["unknown_flag_share"],
                        "flagged_other_session_nested": f["unknown_flag_flagged_other_session_nested"]},
                    **_shipped_mahalanobis(f)},
        "gallery": {"k": 3, "gain": 1.0, "bias": 0.0},
        "embedding_dim": EMBEDDING_DIMS[backbone],
        "embedding_space": f"{backbone}-{size}-{mode}-{key}-s{chosen['seed']}",
        "training_list_sha256": hashlib.sha256(
            "".join(f"{s.path.as_posix()}\t{s.label}\n" for s in pool.samples).encode()).hexdigest(),
        "trained_on": f"train + val ({len(ds.train)} + {len(ds.val)} photos), "
                      + (f"{chosen['chosen_epochs']} epochs" if alpha is None else
                         f"{cfg.epochs} epochs, then the weights blended {alpha:g} : {1 - alpha:g} with "
                         "the linear head's start (WiSE-FT)")
                      + f", the trunk fine-tuned from block {chosen['trainable_from_block']}",
        "calibration": f"out of fold ({cfg.folds} blocked folds over train + val, wetmarket model cv)",
        "dataset": portable(cfg.data),
        "seed": chosen["seed"],
        "weight_bits": 8,
        "metrics": {"cross_validated": {
            "recipe": f"{'student ' if cfg.student else ''}{chosen['teacher']} seed {chosen['seed']}"
                      + (f", weight-space ensemble alpha {alpha:g}" if alpha is not None else ""),
            "folds": cfg.folds, **{k: f[k] for k in ("top1", "top1_sd", "top5", "top5_sd")},
            **({"other_session_top1": other[1], "other_session_top5": other[5]} if other else {}),
            **({"other_session_top1": f["nested_other_session_top1"],
                "other_session_top1_note": "alpha chosen without the fold each photo is read on"}
               if alpha is not None else {})}},
    }
    checkpoint = cfg.run_dir / "final-model.pt"
    torch.save({"state": net.state_dict(), "meta": meta, "backbone": backbone, "size": size,
                "n_classes": len(ds.classes), "data": str(cfg.data)}, checkpoint)
    # the shipped layout: the int8 model the stall runs at OUT, the float one beside it
    written = export_checkpoint(checkpoint, cfg.final.with_name(cfg.final.stem + ".fp32.onnx"), int8=True,
                                data=ds, int8_out=cfg.final, calibrated=True)
    logger.info("final model: %s", ", ".join(str(p) for p in written))
    return {"recipe": meta["metrics"]["cross_validated"]["recipe"],
            "epochs": chosen["chosen_epochs"] if alpha is None else cfg.epochs,
            "files": [str(p) for p in written]}
