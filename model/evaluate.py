"""Evaluate a shipped (ONNX) model the way the stall runs it: no torch.

Accuracy (top-1, top-5, per class, confusion picture) on a split of a training
folder, the share of real produce flagged ``unknown``, optionally the share of
out-of-catalogue photos flagged and the AUROC between the two, and latency.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.data import images_under, load_dataset
from model.metrics import auroc, confusion_png
from model.recognizer import Recognizer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalResult:
    top1: float
    top5: float
    unknown_rate: float
    n: int
    ood_unknown_rate: float | None
    ood_auroc: float | None
    ms_p50: float
    report: dict[str, Any]


def evaluate(
    model: Path | None,
    data: Path,
    split: str = "val",
    out_dir: Path | None = None,
    ood_dir: Path | None = None,
    max_images: int | None = None,
) -> EvalResult:
    rec = Recognizer.load(model)
    ds = load_dataset(data)
    samples = ds.val if split == "val" else ds.train
    if max_images is not None:
        samples = samples[:max_images]
    name_to_idx = {lab: i for i, lab in enumerate(rec.labels)}
    missing = [c for c in ds.classes if c not in name_to_idx]
    if missing:
        logger.warning("labels absent from the model: %s", ", ".join(missing))
    y, pred, flags, hit1, hit5, ms = [], [], [], [], [], []
    for s in samples:
        r = rec.recognize(s.path)
        truth = ds.classes[s.label]
        labels = [lab for lab, _ in r.top]
        y.append(name_to_idx.get(truth, -1))
        pred.append(name_to_idx.get(labels[0], -1))
        hit1.append(labels[0] == truth)
        hit5.append(truth in labels[:5])
        # the score the unknown flag thresholds, for the AUROC
        flags.append((rec.unknown_margin(r.top[0][1], r.embedding), r.unknown))
        ms.append(r.ms)
    known_scores = np.array([p for p, _ in flags])
    report: dict[str, Any] = {
        "model": str(rec.runner.path),
        "data": str(data),
        "split": split,
        "n": len(samples),
        "top1": float(np.mean(hit1)),
        "top5": float(np.mean(hit5)),
        "unknown_rate": float(np.mean([u for _, u in flags])),
        "top1_of_confident": float(np.mean([float(h) for h, (_, u) in zip(hit1, flags, strict=True)
                                            if not u] or [0.0])),
        "ms_p50": float(np.median(ms)),
        "ms_p90": float(np.quantile(ms, 0.9)),
    }
    ood_rate = ood_auc = None
    if ood_dir is not None:
        paths = images_under(Path(ood_dir))
        res = [rec.recognize(p) for p in paths]
        ood_scores = np.array([rec.unknown_margin(r.top[0][1], r.embedding) for r in res])
        ood_rate = float(np.mean([r.unknown for r in res])) if res else float("nan")
        ood_auc = auroc(-ood_scores, -known_scores)
        report |= {"ood_dir": str(ood_dir), "ood_n": len(res), "ood_unknown_rate": ood_rate,
                   "ood_auroc": ood_auc}
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        ok = [i for i in range(len(y)) if y[i] >= 0 and pred[i] >= 0]
        try:
            confusion_png(np.array([y[i] for i in ok]), np.array([pred[i] for i in ok]), rec.labels,
                          out_dir / "confusion.png", f"{Path(report['model']).name} on {split}: "
                          f"top-1 {report['top1']:.3f}")
        except ImportError as exc:
            # matplotlib comes with the train extra; a stall's install still gets the figures
            logger.warning("no confusion.png without matplotlib (pip install '.[train]'): %s", exc)
        per: dict[str, list[bool]] = {}
        for s, h in zip(samples, hit1, strict=True):
            per.setdefault(ds.classes[s.label], []).append(h)
        report["per_class_recall"] = {k: float(np.mean(v)) for k, v in per.items()}
        (out_dir / "evaluation.json").write_text(json.dumps(report, indent=2) + "\n")
    return EvalResult(report["top1"], report["top5"], report["unknown_rate"], len(samples),
                      ood_rate, ood_auc, report["ms_p50"], report)


def latency(model: Path | None, images: list[Path], repeats: int = 3) -> dict[str, float]:
    """Per-image time from file to result (decoding and preprocessing included)."""
    rec = Recognizer.load(model)
    ms = []
    for _ in range(repeats):
        for p in images:
            t0 = time.perf_counter()
            rec.recognize(p)
            ms.append((time.perf_counter() - t0) * 1000)
    return {"p50": float(np.median(ms)), "p90": float(np.quantile(ms, 0.9)), "n": len(ms)}
