"""End-to-end fine-tuning of RecognizerNet on augmented photos (torch; training only)."""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from model.data import Dataset
from model.metrics import topk_accuracy
from model.preprocess import preprocess, read_image, to_tensor
from model.training.augment import augment

if TYPE_CHECKING:
    from model.training.network import RecognizerNet
    from model.training.train import TrainConfig

logger = logging.getLogger(__name__)


def frozen_forward(net: RecognizerNet, x: torch.Tensor, n_frozen: int) -> torch.Tensor:
    """Stem and the first ``n_frozen`` blocks without autograd: the CPU saves their backward."""
    t: Any = net.trunk
    with torch.no_grad():
        x = t._swish(t._bn0(t._conv_stem(x)))
        for block in t._blocks[:n_frozen]:
            x = block(x, drop_connect_rate=None)
    return x


def trainable_forward(
    net: RecognizerNet, x: torch.Tensor, n_frozen: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rest of the network from ``frozen_forward``'s output: (logits, embedding), with the
    trunk's drop-connect; fine-tuning and distillation both train through it."""
    t: Any = net.trunk
    n = len(t._blocks)
    rate = t._global_params.drop_connect_rate
    for idx in range(n_frozen, n):
        x = t._blocks[idx](x, drop_connect_rate=rate * idx / n if rate else None)
    x = t._swish(t._bn1(t._conv_head(x)))
    emb = F.normalize(F.normalize(x.mean(dim=(2, 3)), dim=1) - net.center, dim=1)
    return net.classify(emb), emb


def warmup_cosine(step: int, peak: float, warm: int, total: int) -> float:
    """Linear warm-up over ``warm`` steps, then a cosine down to 0 at ``total``."""
    if step < warm:
        return peak * (step + 1) / warm
    return 0.5 * peak * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def evaluate_net(net: RecognizerNet, ds: Dataset, size: int) -> dict[int, float]:
    net.eval()
    logits, labels = [], []
    with torch.no_grad():
        for i in range(0, len(ds.val), 32):
            chunk = ds.val[i : i + 32]
            x = np.concatenate([preprocess(read_image(s.path, size), size) for s in chunk])
            logits.append(net(torch.from_numpy(x))[0].numpy())
            labels += [s.label for s in chunk]
    return topk_accuracy(np.concatenate(logits), np.array(labels))


def finetune(net: RecognizerNet, ds: Dataset, cfg: TrainConfig) -> RecognizerNet:
    """Train all but the stem and the first ``cfg.freeze_blocks`` blocks.

    Returns the network after the last epoch: picking the best epoch on val
    would leak val into the model and make the reported figure optimistic.
    """
    torch.manual_seed(cfg.seed)
    n_frozen = min(cfg.freeze_blocks, len(net.trunk._blocks))
    frozen = [net.trunk._conv_stem, net.trunk._bn0, *net.trunk._blocks[:n_frozen]]
    for m in frozen:
        for p in m.parameters():
            p.requires_grad_(False)
    # The head's scale comes from the linear head: left free, it grows and the
    # large logits' gradients wreck the trunk in the first epoch (measured:
    # val top-1 81 % -> 43 % after one epoch).
    net.log_scale.requires_grad_(False)
    params = [p for p in net.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    # AdamW: its steps do not grow with the cosine head's large scale (~90),
    # which made SGD at lr 0.005 wreck the trunk within 20 batches.
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
    )
    steps_per_epoch = math.ceil(len(ds.train) / cfg.batch)
    total = cfg.epochs * steps_per_epoch
    warm = max(1, steps_per_epoch // 2)

    def lr_at(step: int) -> float:
        return warmup_cosine(step, cfg.lr, warm, total)

    step = 0
    checkpoint = cfg.run_dir / "finetune.pt"
    start_epoch = 0
    if checkpoint.exists():
        state: dict[str, Any] = torch.load(checkpoint, weights_only=False)
        if state.get("epochs") == cfg.epochs:
            net.load_state_dict(state["net"])
            opt.load_state_dict(state["opt"])
            start_epoch = state["epoch"] + 1
            step = start_epoch * steps_per_epoch
            logger.info("resuming fine-tuning after epoch %d", start_epoch)
    for epoch in range(start_epoch, cfg.epochs):
        net.train()
        # Batch-norm statistics stay those of ImageNet (eval mode) everywhere:
        # batches of 32 photos of ~50 items are too small to re-estimate them,
        # and training then sees the same features as the stall.
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
        order = np.random.default_rng([cfg.seed, epoch]).permutation(len(ds.train))
        t0 = time.time()
        total_loss = 0.0
        bar = tqdm(range(0, len(order), cfg.batch), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   unit="batch", mininterval=10)
        for b in bar:
            idx = order[b : b + cfg.batch]
            crops = []
            for i in idx:
                rng = np.random.default_rng([cfg.seed, epoch, int(i)])
                crops.append(augment(read_image(ds.train[i].path, cfg.size), rng, cfg.size))
            x = torch.from_numpy(to_tensor(crops))
            y = torch.tensor([ds.train[i].label for i in idx])
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            logits, _ = trainable_forward(net, frozen_forward(net, x, n_frozen), n_frozen)
            # No label smoothing: with the head's scale of ~90 it dominates the loss
            # (2.5 nats at step 0 against 0.24 without) and flattens the classes.
            loss = F.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            step += 1
            total_loss += float(loss) * len(idx)
            bar.set_postfix(loss=f"{float(loss):.3f}")
        acc = evaluate_net(net, ds, cfg.size) if ds.val else {1: float("nan"), 5: float("nan")}
        logger.info("epoch %d/%d: loss %.3f, val top-1 %.3f top-5 %.3f (%.0f s)", epoch + 1,
                    cfg.epochs, total_loss / len(order), acc[1], acc[5], time.time() - t0)
        torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "epoch": epoch,
                    "epochs": cfg.epochs}, checkpoint)
    net.eval()
    return net
