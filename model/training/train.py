"""Training pipeline: photos -> ONNX model + metadata + report (torch; never at the stall).

Two modes, both seeded and reproducible:

* ``linear``: the ImageNet trunk stays frozen; its embeddings of each photo (the
  centre view plus ``aug_views`` plate-camera augmentations) are cached and a
  cosine classifier is fitted on them.  Cheap enough for 5-fold cross-validation,
  held-out-class experiments (unknown detection, enrollment) and calibration.
* ``finetune``: the whole network (but the stem and first stages, kept frozen to
  save CPU) is trained end to end on augmented photos, starting from the linear
  head.  The calibration (temperature, unknown threshold) is then fitted on val.

Outputs: ``OUT.onnx`` + ``OUT.json`` (and ``OUT.int8.onnx`` with ``--int8``), and
in the run folder ``report.json``, ``report.md`` and ``confusion.png``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model import ModelError
from model.data import Dataset, DatasetError, load_dataset
from model.metrics import auroc, confusion_png, softmax, topk_accuracy
from model.training.distill import DEFAULT_TEACHERS
from model.training.head import HeadConfig, fit_temperature, head_logits, train_head
from model.unknown import UNKNOWN_QUANTILE, Mahalanobis, UnknownFlag, flag_threshold, nearest_cosine

logger = logging.getLogger(__name__)

MODEL_VERSION = "1.0"


@dataclass
class TrainConfig:
    data: Path
    out: Path
    run_dir: Path
    backbone: str = "efficientnet-lite0"
    size: int = 224
    mode: str = "linear"
    aug_views: int = 4
    seed: int = 0
    folds: int = 5
    head: HeadConfig = field(default_factory=HeadConfig)
    # fine-tuning
    epochs: int = 12
    batch: int = 32
    lr: float = 2e-4
    freeze_blocks: int = 3
    int8: bool = False
    int8_out: Path | None = None  # default: OUT with suffix .int8.onnx
    threads: int = 2
    max_images: int | None = None  # a tiny slice for tests
    # distillation (mode "distill"): the teachers' frozen trunks, BACKBONE@SIZE
    teachers: tuple[str, ...] = DEFAULT_TEACHERS
    kd_temperature: float = 2.0
    kd_alpha: float = 0.7
    distill_scale: float = 32.0
    bank_views: int = 8
    held_out_group: int | None = None  # distill: only the honest teaching experiment for this group
    students: int = 1  # distill: students with seeds seed, seed+1, ... averaged weight by weight
    # int8 weight bits: 7 trains the convolutions on onnxruntime's reduced grid (model.training.qat), so
    # the int8 file is exact on the fast kernels of CPUs without VNNI; distill, one student only
    weight_bits: int = 8
    # ``wetmarket model cv``'s cv-report.json for this recipe: the accuracy the report quotes
    cv_report: Path | None = None


def _subsample(ds: Dataset, n: int | None, seed: int) -> Dataset:
    if n is None:
        return ds
    rng = np.random.default_rng(seed)

    def take(samples: list[Any], k: int) -> list[Any]:
        idx = sorted(rng.choice(len(samples), size=min(k, len(samples)), replace=False))
        return [samples[i] for i in idx]

    return Dataset(ds.root, ds.classes, take(ds.train, n), take(ds.val, max(2, n // 4)))


def centre_features(f: dict[str, np.ndarray], center: np.ndarray) -> dict[str, np.ndarray]:
    """Embeddings as RecognizerNet gives them: unit features minus the mean, renormalised."""
    out = dict(f)
    for k, v in f.items():
        if not k.endswith("labels"):
            c = v - center
            out[k] = (c / np.maximum(np.linalg.norm(c, axis=-1, keepdims=True), 1e-12)).astype(np.float32)
    return out


def _train_rows(f: dict[str, np.ndarray], idx: np.ndarray, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Training rows (every view of each photo) for the photos ``idx`` of ``split``."""
    views = [f[f"{split}_centre"][idx][:, None]]
    if f"{split}_aug" in f:
        views.append(f[f"{split}_aug"][idx])
    x = np.concatenate(views, axis=1)
    y = np.repeat(f[f"{split}_labels"][idx], x.shape[1])
    return x.reshape(-1, x.shape[-1]), y


def _eval_views(f: dict[str, np.ndarray], split: str, tta: bool) -> np.ndarray:
    c = f[f"{split}_centre"][:, None]
    return np.concatenate([c, f[f"{split}_tta"]], axis=1) if tta else c[:, 0]


def blocked_folds(paths: list[str], labels: np.ndarray, folds: int) -> list[np.ndarray]:
    """Test indices of each fold: contiguous runs of each class's photos in name order.

    Photos of one class were taken in sessions, numbered in sequence, and
    neighbours are near duplicates; random folds put near duplicates on both
    sides and report ~97 % top-1 for a ~78 % model.  Contiguous blocks keep a
    session on one side.
    """
    out: list[list[int]] = [[] for _ in range(folds)]
    for c in np.unique(labels):
        idx = sorted(np.where(labels == c)[0], key=lambda i: paths[i])
        for k, chunk in enumerate(np.array_split(np.array(idx, dtype=np.int64), folds)):
            out[k] += chunk.tolist()
    return [np.array(sorted(o), dtype=np.int64) for o in out]


def cross_validate(f: dict[str, np.ndarray], paths: list[str], n_classes: int, cfg: HeadConfig,
                   folds: int) -> dict[str, Any]:
    """Blocked k-fold over the train photos: out-of-fold logits of centre views."""
    y = f["train_labels"]
    oof = np.zeros((len(y), n_classes), np.float32)
    for k, te in enumerate(blocked_folds(paths, y, folds)):
        tr = np.setdiff1d(np.arange(len(y)), te)
        x, yy = _train_rows(f, tr, "train")
        head = train_head(x, yy, n_classes, HeadConfig(**{**asdict(cfg), "seed": cfg.seed + k}))
        oof[te] = head_logits(head, f["train_centre"][te])
        logger.info("cv fold %d/%d done", k + 1, folds)
    acc = topk_accuracy(oof, y)
    return {"oof_logits": oof, "labels": y, "top1": acc[1], "top5": acc[5], "folds": folds}


def _gallery_sims(gal_emb: np.ndarray, gal_lab: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """(n_query, n_labels): the gallery's similarity per label (as Gallery computes it)."""
    from model.gallery import label_similarity

    sims = q @ gal_emb.T
    out = np.zeros((len(q), int(gal_lab.max()) + 1), np.float32)
    for j in range(out.shape[1]):
        m = gal_lab == j
        out[:, j] = label_similarity(sims[:, m], q, gal_emb[m], k)
    return out


CATALOGUE_COST = 0.10
GALLERY_GAINS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
GALLERY_BIASES = tuple(float(b) for b in np.round(np.linspace(-1.0, 0.5, 31), 3))


def choose_gallery_setting(grid: dict[tuple[float, float], tuple[float, float]],
                           catalogue_without: float) -> tuple[float, float]:
    """The (gain, bias) of ``grid`` {(gain, bias): (taught top-1, catalogue top-1)} to ship.

    Taught items must not wreck the catalogue: the best teaching among the
    settings that cost the catalogue at most CATALOGUE_COST top-1 (else the
    best balance).
    """
    fair = [k for k in grid if grid[k][1] >= catalogue_without - CATALOGUE_COST]
    return max(fair, key=lambda k: grid[k]) if fair else max(grid, key=lambda k: sum(grid[k]))


def held_out_classes(f: dict[str, np.ndarray], classes: list[str], cfg: HeadConfig,
                     threshold_quantile: float, seed: int, groups: int = 5,
                     shots: int = 5, gallery_k: int = 3, teach_views: bool = True) -> dict[str, Any]:
    """Leave groups of classes out of training: how unknown items and taught items fare.

    For each group: a head on the other classes; its val photos give the
    known-item scores; every photo of the left-out classes is an item outside
    the catalogue (unknown detection).  Then ``shots`` consecutive train photos
    of each left-out class are taught to a gallery and the val photos (another
    session) of all classes are recognised with the stall's scoring; the
    gallery's gain and bias are chosen here to balance taught and catalogue
    items.
    """
    rng = np.random.default_rng(seed)
    n = len(classes)
    perm = rng.permutation(n)
    known_p, unknown_p, known_cos, unknown_cos = [], [], [], []
    per_group: list[dict[str, Any]] = []
    temps = []
    for g in range(groups):
        out_cls = sorted(set(perm[g::groups].tolist()))
        keep = np.array([c for c in range(n) if c not in out_cls])
        remap = {c: i for i, c in enumerate(keep)}
        tr_idx = np.where(np.isin(f["train_labels"], keep))[0]
        x, y = _train_rows(f, tr_idx, "train")
        y = np.array([remap[c] for c in y])
        head = train_head(x, y, len(keep), HeadConfig(**{**asdict(cfg), "seed": cfg.seed + 100 + g}))
        scale = float(head.log_scale.detach().exp())
        va_known = np.where(np.isin(f["val_labels"], keep))[0]
        lk = head_logits(head, f["val_centre"][va_known])
        yk = np.array([remap[c] for c in f["val_labels"][va_known]])
        t = fit_temperature(lk, yk)
        temps.append(t)
        known_p.append(softmax(lk, t).max(1))
        known_cos.append(lk.max(1) / scale)
        tr_out = np.where(~np.isin(f["train_labels"], keep))[0]
        va_out = np.where(~np.isin(f["val_labels"], keep))[0]
        lu = np.concatenate([head_logits(head, f["train_centre"][tr_out]),
                             head_logits(head, f["val_centre"][va_out])])
        unknown_p.append(softmax(lu, t).max(1))
        unknown_cos.append(lu.max(1) / scale)
        # Teach: a vendor takes a handful of photos one after the other, so
        # consecutive train photos; test on val photos (another session).
        gal_emb, gal_lab = [], []
        for j, c in enumerate(out_cls):
            idx_c = np.where(f["train_labels"] == c)[0]
            start = int(rng.integers(0, max(1, len(idx_c) - shots + 1)))
            for i in idx_c[start : start + shots]:
                # the stall teaches a photo with its mirror and two rotations
                views = [f["train_centre"][i]]
                if teach_views and "train_tta" in f:
                    views += list(f["train_tta"][i])
                gal_emb += views
                gal_lab += [j] * len(views)
        ge, gl = np.stack(gal_emb), np.array(gal_lab)
        va_new = np.where(np.isin(f["val_labels"], out_cls))[0]
        y_new = np.array([len(keep) + out_cls.index(c) for c in f["val_labels"][va_new]])
        per_group.append({
            "scale": scale,
            "l_new": head_logits(head, f["val_centre"][va_new]),
            "s_new": _gallery_sims(ge, gl, f["val_centre"][va_new], gallery_k),
            "y_new": y_new,
            "l_known": lk,
            "s_known": _gallery_sims(ge, gl, f["val_centre"][va_known], gallery_k),
            "y_known": yk,
        })

    def score(gain: float, bias: float) -> tuple[float, float, float, float]:
        hn = h5 = nn = hk = nk = 0
        for d in per_group:
            for part in ("new", "known"):
                z = np.concatenate([d[f"l_{part}"], d["scale"] * (gain * d[f"s_{part}"] + bias)], 1)
                order = np.argsort(-z, axis=1)
                hit = order[:, 0] == d[f"y_{part}"]
                if part == "new":
                    hn += int(hit.sum())
                    h5 += int(np.sum(order[:, :5] == d["y_new"][:, None]))
                    nn += len(hit)
                else:
                    hk += int(hit.sum())
                    nk += len(hit)
        return hn / nn, h5 / nn, hk / nk, (hn / nn + hk / nk) / 2

    grid = {(gain, bias): score(gain, bias) for gain in GALLERY_GAINS for bias in GALLERY_BIASES}
    no_gallery = sum(int(np.sum(d["l_known"].argmax(1) == d["y_known"])) for d in per_group) / sum(
        len(d["y_known"]) for d in per_group)
    best = choose_gallery_setting({k: (v[0], v[2]) for k, v in grid.items()}, no_gallery)
    kp, up = np.concatenate(known_p), np.concatenate(unknown_p)
    kc, uc = np.concatenate(known_cos), np.concatenate(unknown_cos)
    thr = flag_threshold(kp, threshold_quantile)
    return {
        "groups": groups,
        "unknown_auroc_maxprob": auroc(-up, -kp),
        "unknown_auroc_maxcos": auroc(-uc, -kc),
        "threshold_at_quantile": thr,
        "known_flagged": float(np.mean(kp < thr)),
        "unknown_flagged": float(np.mean(up < thr)),
        "enroll_shots": shots,
        "gallery_gain": best[0],
        "gallery_bias": best[1],
        "enroll_top1": grid[best][0],
        "enroll_top5": grid[best][1],
        "enroll_images": int(sum(len(d["y_new"]) for d in per_group)),
        "catalogue_top1_with_gallery": grid[best][2],
        "catalogue_top1_without_gallery": no_gallery,
        "temperatures": temps,
        "known_maxprob": kp,
        "unknown_maxprob": up,
    }


def calibrate(logits: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(temperature, unknown threshold on the top calibrated probability)."""
    t = fit_temperature(logits, y)
    return t, flag_threshold(softmax(logits, t).max(1), UNKNOWN_QUANTILE)


def split_half_check(logits: np.ndarray, y: np.ndarray, seed: int) -> dict[str, float]:
    """Calibrate on one half of val, measure the flagged share on the other, both ways."""
    idx = np.random.default_rng(seed).permutation(len(y))
    halves = (idx[: len(y) // 2], idx[len(y) // 2 :])
    flagged = []
    for a, b in (halves, halves[::-1]):
        t, thr = calibrate(logits[a], y[a])
        flagged.append(float(np.mean(softmax(logits[b], t).max(1) < thr)))
    return {"known_flagged_split_half": float(np.mean(flagged))}


def per_class(y: np.ndarray, logits: np.ndarray, classes: list[str]) -> list[dict[str, Any]]:
    pred = logits.argmax(1)
    out = []
    for c, name in enumerate(classes):
        m = y == c
        tp = int(np.sum((pred == c) & m))
        out.append({
            "label": name,
            "n": int(m.sum()),
            "recall": tp / max(1, int(m.sum())),
            "precision": tp / max(1, int(np.sum(pred == c))),
        })
    return out


def build_net(cfg: TrainConfig, n_classes: int, prototypes: np.ndarray, log_scale: float,
               center: np.ndarray) -> Any:
    """A ``RecognizerNet`` on ``cfg``'s pretrained trunk with the head fitted on its features
    (prototypes, scale, training mean), in eval mode: where fine-tuning and distillation start."""
    import torch

    from model.training.network import RecognizerNet, build_trunk

    net = RecognizerNet(build_trunk(cfg.backbone, cfg.size), n_classes)
    with torch.no_grad():
        net.prototypes.copy_(torch.from_numpy(prototypes))
        net.log_scale.fill_(log_scale)
        net.center.copy_(torch.from_numpy(center.astype(np.float32)))
    return net.eval()


def cv_figures(path: Path) -> dict[str, Any]:
    """The cross-validated figures of ``wetmarket model cv``'s report: the student's when it ran,
    else the first teacher's fine-tune; ModelError when the report has none yet."""
    try:
        r = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read a cross-validation report ({exc})") from exc
    done = [t for t in [r.get("student") or {}, *r.get("teachers", [])] if "finetuned" in t]
    if not done:
        raise ModelError(f"{path}: no recipe has finished all its folds yet")
    t = done[0]
    f = t["finetuned"]
    return {"recipe": f"{'student ' if t is r.get('student') else ''}{t['teacher']} seed {t['seed']}",
            "folds": r["config"]["folds"], "file": str(path),
            **{k: f[k] for k in ("top1", "top1_sd", "top5", "top5_sd", "per_fold_top1", "other_session",
                                 "temperature", "unknown_threshold")}}


def run(cfg: TrainConfig) -> dict[str, Any]:
    """Train, evaluate, calibrate and export; returns the report."""
    import torch

    from model.training.features import cached_features
    from model.training.network import EMBEDDING_DIMS

    if cfg.held_out_group is not None and cfg.mode != "distill":
        raise ModelError("--held-out-group needs --mode distill")
    if cfg.weight_bits not in (7, 8):
        raise ModelError(f"--weight-bits must be 7 or 8, got {cfg.weight_bits}")
    if cfg.weight_bits == 7 and (cfg.mode != "distill" or cfg.students != 1):
        raise ModelError("--weight-bits 7 needs --mode distill and one student "
                         "(an average of on-grid weights is off the grid)")
    cv = cv_figures(cfg.cv_report) if cfg.cv_report is not None else None
    t_start = time.time()
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    np.random.seed(cfg.seed)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    ds = _subsample(load_dataset(cfg.data, seed=cfg.seed), cfg.max_images, cfg.seed)
    n_classes = len(ds.classes)
    cache_dir = cfg.run_dir.parent / "features" if cfg.max_images is None else cfg.run_dir / "features"
    if cfg.mode == "distill":
        from model.training.distill import as_feature_dict, build_bank, parse_teacher, teacher_features

        bank_size = max([cfg.size, *(parse_teacher(t)[1] for t in cfg.teachers)])
        bank = build_bank(ds, bank_size, cfg.bank_views, cfg.seed, cache_dir)
        teachers = {t: teacher_features(bank, t, cache_dir, cfg.threads) for t in cfg.teachers}
        own = f"{cfg.backbone}@{cfg.size}"
        # The student's own frozen features give its starting head (and the
        # frozen-trunk experiments below).
        own_feats = teachers[own] if own in teachers else teacher_features(bank, own, cache_dir, cfg.threads)
        if cfg.held_out_group is not None:
            from model.training.distill import held_out_student

            result = held_out_student(ds, bank, teachers, own_feats, cfg, cfg.held_out_group)
            (cfg.run_dir / f"held-out-group-{cfg.held_out_group}.json").write_text(
                json.dumps(result, indent=2, default=float) + "\n")
            return {"held_out_student": result}
        f = as_feature_dict(own_feats, bank)
    else:
        f = cached_features(ds, cfg.backbone, cfg.size, cfg.aug_views, cfg.seed, cache_dir)
    center = f["train_centre"].mean(0)
    f = centre_features(f, center)
    x, y = _train_rows(f, np.arange(len(ds.train)), "train")
    head = train_head(x, y, n_classes, cfg.head)
    report: dict[str, Any] = {"config": {k: str(v) if isinstance(v, Path) else v
                                         for k, v in asdict(cfg).items()},
                              "classes": ds.classes, "n_train": len(ds.train), "n_val": len(ds.val)}
    val_logits = head_logits(head, _eval_views(f, "val", tta=False))
    report["linear_val"] = topk_accuracy(val_logits, f["val_labels"])
    report["linear_val_tta"] = topk_accuracy(head_logits(head, _eval_views(f, "val", tta=True)),
                                             f["val_labels"])
    logger.info("linear head: val %s, with TTA %s", report["linear_val"], report["linear_val_tta"])
    prototypes = head.prototypes.detach().numpy()
    log_scale = float(head.log_scale.detach())

    gallery = {"k": 3, "gain": 1.0, "bias": 0.0}
    if cfg.folds >= 2 and cfg.max_images is None:
        cv = cross_validate(f, [str(s.path) for s in ds.train], n_classes, cfg.head, cfg.folds)
        report["linear_cv"] = {"top1": cv["top1"], "top5": cv["top5"], "folds": cv["folds"]}
        logger.info("linear head: %d-fold CV %s", cfg.folds, report["linear_cv"])
        ho = held_out_classes(f, ds.classes, cfg.head, 0.08, cfg.seed)
        report["held_out_classes"] = {k: v for k, v in ho.items() if not isinstance(v, np.ndarray)}
        gallery |= {"gain": ho["gallery_gain"], "bias": ho["gallery_bias"]}
        logger.info("held-out classes: %s", report["held_out_classes"])

    net = build_net(cfg, n_classes, prototypes, log_scale, center)
    if cfg.mode in ("finetune", "distill"):
        if cfg.mode == "finetune":
            from model.training.finetune import finetune

            net = finetune(net, ds, cfg)
        else:
            from model.training.distill import distill_soup, soft_labels

            soft, report["teachers"] = soft_labels(teachers, bank.train_labels, bank.val_labels,
                                                   [str(s.path) for s in ds.train], n_classes,
                                                   cfg.kd_temperature, cfg.folds, cfg.seed)
            net, report["distill_log"] = distill_soup(net, bank, soft, cfg)
        val_logits = _net_logits(net, ds, cfg.size)
        report["finetune_val"] = topk_accuracy(val_logits, f["val_labels"])
        log_scale = float(net.log_scale.detach())
        logger.info("%s: val %s", cfg.mode, report["finetune_val"])
        if cfg.max_images is None:
            ho = held_out_after_finetune(net, ds, cfg.size, cfg.head, cfg.seed)
            report["held_out_classes_finetuned"] = ho
            gallery |= {"gain": ho["gallery_gain"], "bias": ho["gallery_bias"]}
    # Calibrate on val: photos from other sessions than train (folds inside
    # train share sessions and make any model look sure of itself).
    temperature, threshold = calibrate(val_logits, f["val_labels"])
    report["calibration"] = {"temperature": temperature, "unknown_threshold": threshold, "on": "val",
                             **split_half_check(val_logits, f["val_labels"], cfg.seed)}

    report["val"] = topk_accuracy(val_logits, f["val_labels"])
    if cv is not None:
        report["cv"] = cv
    report["per_class"] = per_class(f["val_labels"], val_logits, ds.classes)
    confusion_png(f["val_labels"], val_logits.argmax(1), ds.classes, cfg.run_dir / "confusion.png",
                  f"{cfg.backbone}@{cfg.size} {cfg.mode}: val top-1 {report['val'][1]:.3f}")

    meta = {
        "version": MODEL_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "labels": ds.classes,
        **model_io(cfg.size),
        "backbone": cfg.backbone,
        "mode": cfg.mode,
        "scale": float(np.exp(log_scale)),
        "temperature": temperature,
        "unknown": {"score": "max calibrated probability", "threshold": threshold},
        "gallery": gallery,
        "embedding_dim": EMBEDDING_DIMS[cfg.backbone],
        "embedding_space": f"{cfg.backbone}-{cfg.size}-{cfg.mode}-{ds.training_list_hash()[:12]}-s{cfg.seed}",
        "training_list_sha256": ds.training_list_hash(),
        "dataset": portable(cfg.data),
        "seed": cfg.seed,
        "weight_bits": cfg.weight_bits,
        "metrics": {"val_top1": report["val"][1], "val_top5": report["val"][5],
                    **({"cv_top1": report["linear_cv"]["top1"]} if "linear_cv" in report else {}),
                    # the accuracy: blocked folds over train + val (wetmarket model cv)
                    **({"cross_validated": {k: cv[k] for k in ("recipe", "folds", "top1", "top1_sd", "top5",
                                                              "top5_sd")}} if cv is not None else {})},
        # optimistic (the trunk saw every class); kept with the model as the basis of its gallery settings
        **({"held_out_classes_finetuned": report["held_out_classes_finetuned"]}
           if "held_out_classes_finetuned" in report else {}),
    }
    checkpoint = cfg.run_dir / "model.pt"
    torch.save({"state": net.state_dict(), "meta": meta, "backbone": cfg.backbone,
                "size": cfg.size, "n_classes": n_classes, "data": str(cfg.data)}, checkpoint)
    export_checkpoint(checkpoint, cfg.out, cfg.int8, cfg.data, cfg.int8_out)
    report["seconds"] = time.time() - t_start
    (cfg.run_dir / "report.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    (cfg.run_dir / "report.md").write_text(render_markdown(report))
    logger.info("report in %s", cfg.run_dir)
    return report


def model_io(size: int, crop: float = 1.0, mirror: bool | dict[str, float] = False) -> dict[str, Any]:
    """The metadata's ``input`` and ``outputs``: what ``model.preprocess`` and the runner rely on.
    ``mirror``: the photo is read with its mirror too, the outputs averaged
    (``model.recognizer.mirror_average``); ``{"when_below", "plain_temperature"}``: only when the
    plain reading is unsure (``model.recognizer.mirror_wanted``)."""
    cropped: dict[str, Any] = {"crop": crop} if crop < 1 else {}
    if mirror:
        cropped["mirror"] = mirror
    resize = ("shorter side to size (INTER_AREA), centre crop" if crop >= 1 else
              f"the centre square of {crop:g} of the shorter side, then to size (INTER_AREA)")
    return {"input": {"name": "image", "size": size, "mean": 127.0, "std": 128.0,
                      "color": "RGB", "layout": "NCHW", "dtype": "float32", **cropped,
                      "resize": resize},
            "outputs": {"logits": "scale * cosine to each label's prototype",
                        "embedding": "L2-normalised global-average-pooled trunk features"}}


def portable(path: Path) -> str:
    """``path`` relative to the repository when it lies beside it (``../shared/...``), else as given."""
    import os

    repo = Path(__file__).resolve().parents[2]  # model/training/train.py
    try:
        rel = os.path.relpath(Path(path).resolve(), repo)
    except ValueError:  # another drive
        return str(path)
    return rel if rel.startswith("../") and rel.count("..") == 1 else str(path)


def input_crop(meta: dict[str, Any]) -> float:
    """The metadata's ``input.crop`` (1: the whole photo)."""
    return float(meta.get("input", {}).get("crop", 1.0))


def _calibration_batch(ds: Dataset, size: int, n: int, seed: int, crop: float = 1.0) -> np.ndarray:
    from model.preprocess import preprocess, read_photo

    rng = np.random.default_rng(seed)
    idx = rng.choice(len(ds.train), size=min(n, len(ds.train)), replace=False)
    return np.concatenate([preprocess(read_photo(ds.train[i].path, size, crop), size) for i in idx])


def held_out_after_finetune(net: Any, ds: Dataset, size: int, head: HeadConfig,
                            seed: int) -> dict[str, Any]:
    """The held-out-class experiment on the fine-tuned embeddings (centre views only).

    Optimistic: the fine-tuned trunk has seen the classes it then holds out.  It
    is run to fit the gallery's gain and bias to the new embedding space.
    """
    import torch

    from model.preprocess import read_image, square_resize
    from model.training.features import embed_batches

    net.eval()
    f: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for split, samples in (("train", ds.train), ("val", ds.val)):
            crops = [square_resize(read_image(s.path, size), size) for s in samples]
            f[f"{split}_centre"] = embed_batches(net.embed, crops)
            f[f"{split}_labels"] = np.array([s.label for s in samples])
    ho = held_out_classes(f, ds.classes, head, UNKNOWN_QUANTILE, seed, teach_views=False)
    out = {k: v for k, v in ho.items() if not isinstance(v, np.ndarray)}
    logger.info("held-out classes on fine-tuned embeddings (optimistic): %s", out)
    return out


def _net_logits(net: Any, ds: Dataset, size: int) -> np.ndarray:
    import torch

    from model.preprocess import preprocess, read_image

    net.eval()
    out = []
    with torch.no_grad():
        for s in ds.val:
            x = torch.from_numpy(preprocess(read_image(s.path, size), size))
            out.append(net(x)[0].numpy()[0])
    return np.stack(out)


def render_markdown(r: dict[str, Any]) -> str:
    lines = [f"# Recognizer training report ({r['config']['backbone']}@{r['config']['size']}, "
             f"{r['config']['mode']})", ""]
    lines.append(f"- photos: {r['n_train']} train, {r['n_val']} val, {len(r['classes'])} classes")
    if "cv" in r:
        cv = r["cv"]
        other = cv.get("other_session") or {}
        lines.append(f"- **accuracy, cross-validated** ({cv['folds']} blocked folds over train + val, "
                     f"`wetmarket model cv`, {cv['recipe']}): top-1 {cv['top1']:.3f} +- {cv['top1_sd']:.3f}, "
                     f"top-5 {cv['top5']:.3f} +- {cv['top5_sd']:.3f} (folds "
                     f"{', '.join(f'{x:.3f}' for x in cv['per_fold_top1'])})"
                     + (f"; on the held-out val blocks (other sessions) top-1 {other['1']:.3f}"
                        if "1" in other else ""))
    else:
        lines.append("- accuracy: not cross-validated by this run (`wetmarket model cv`, "
                     "`--cv-report`); the val figures below are not it")
    lines.append(f"- val photos (they chose between recipes for many sessions, so this is not the "
                 f"accuracy): top-1 {r['val'][1]:.3f}, top-5 {r['val'][5]:.3f}")
    lines.append(f"- linear head val: {r['linear_val']}, with TTA {r['linear_val_tta']}")
    if "linear_cv" in r:
        cv = r["linear_cv"]
        lines.append(f"- linear head {cv['folds']}-fold blocked CV inside train: top-1 {cv['top1']:.3f}, "
                     f"top-5 {cv['top5']:.3f} (optimistic: train photos of a class share sessions, "
                     "val photos come from others)")
    if "teachers" in r:
        for name, t in r["teachers"].items():
            if isinstance(t, dict) and "val" in t:
                lines.append(f"- teacher {name} (frozen, linear head): val {t['val']}")
        lines.append(f"- teacher ensemble: val {r['teachers'].get('ensemble_val')}")
    if "distill_log" in r:
        for e in r["distill_log"]:
            lines.append(f"- distillation epoch {e['epoch']}: loss {e['loss']:.3f}, val {e.get('val')}, "
                         f"{e['seconds']:.0f} s")
    if "finetune_val" in r:
        lines.append(f"- fine-tuned val: {r['finetune_val']}")
    if "held_out_classes" in r:
        h = r["held_out_classes"]
        lines.append(f"- classes held out of training: unknown AUROC {h['unknown_auroc_maxprob']:.3f} "
                     f"(max prob), {h['unknown_auroc_maxcos']:.3f} (max cosine); flagged "
                     f"{h['unknown_flagged']:.2f} of unknown, {h['known_flagged']:.2f} of known")
        lines.append(f"- enrollment from {h['enroll_shots']} photos: top-1 {h['enroll_top1']:.3f}, "
                     f"top-5 {h['enroll_top5']:.3f} over {h['enroll_images']} val photos; catalogue "
                     f"top-1 with the gallery present {h['catalogue_top1_with_gallery']:.3f} "
                     f"(without {h['catalogue_top1_without_gallery']:.3f}); gallery gain "
                     f"{h['gallery_gain']}, bias {h['gallery_bias']}")
    c = r["calibration"]
    lines.append(f"- calibration ({c['on']}): temperature {c['temperature']:.3f}, unknown threshold "
                 f"{c['unknown_threshold']:.3f}; known photos flagged when calibrated on the other "
                 f"half of val: {c.get('known_flagged_split_half', float('nan')):.3f}")
    lines += ["", "| class | n | recall | precision |", "|---|---|---|---|"]
    for pc in r["per_class"]:
        recall = f"{pc['recall']:.2f}" if pc["n"] else "- (no val photo)"
        lines.append(f"| {pc['label']} | {pc['n']} | {recall} | {pc['precision']:.2f} |")
    lines += ["", "![confusion](confusion.png)", ""]
    return "\n".join(lines)


def calibrated_on_val(meta: dict[str, Any], model: Path, ds: Dataset, size: int,
                      recalibrate: bool) -> dict[str, Any]:
    """``meta`` fitted on ``model``'s own val outputs, from one pass over val.

    With ``recalibrate``: the temperature, the top probability's unknown
    threshold and the val figures.  Quantisation moves the logits a little: a
    threshold fitted on the float model flagged 11 % of val produce on the int8
    one instead of 8 %.  Where ``meta`` names its exemplars (``teach``): the
    unknown flag of ``model.unknown`` (top probability + nearest exemplar).
    """
    from model.preprocess import preprocess, read_photo
    from model.recognizer import ModelRunner, int8_needs_exact_kernels
    from model.refit import Exemplars, unit

    if not ds.val:
        return meta
    runner = ModelRunner(model, size, exact_int8=int8_needs_exact_kernels(meta))
    out = [runner.run(preprocess(read_photo(s.path, size, input_crop(meta)), size)) for s in ds.val]
    logits, emb = np.stack([lo[0] for lo, _ in out]), np.stack([e[0] for _, e in out])
    if recalibrate:
        y = np.array([s.label for s in ds.val])
        temperature, threshold = calibrate(logits, y)
        acc = topk_accuracy(logits, y)
        logger.info("%s: val %s, temperature %.3f, unknown threshold %.3f", model.name, acc, temperature,
                    threshold)
        meta = {**meta, "temperature": temperature,
                "unknown": {**meta.get("unknown", {}), "threshold": threshold},
                "metrics": {**meta.get("metrics", {}), "val_top1": acc[1], "val_top5": acc[5]}}
    if "teach" in meta:
        ex = Exemplars.read(model.with_name(str(meta["teach"]["exemplars"])), len(meta["labels"]),
                            int(meta["embedding_dim"]), str(meta["embedding_space"]))
        flag = UnknownFlag.fit(softmax(logits, float(meta["temperature"])).max(1),
                               nearest_cosine(unit(emb), unit(ex.embeddings)))
        logger.info("%s: unknown flag %s", model.name, flag)
        meta = {**meta, "unknown": {**meta.get("unknown", {}), "nearest_exemplar": flag.to_json()}}
    return meta


def carried_to_int8(meta: dict[str, Any], fp32: Path, int8: Path, ds: Dataset, size: int,
                    n: int = 400) -> dict[str, Any]:
    """The float model's out-of-fold thresholds moved by how far quantisation moves each score.

    Both models score the same ``n`` plate-camera views (``training.augment``) of photos spread
    over train and val, each model with its own exemplars; the median paired difference is added
    to each threshold.  Quantisation shifted the score of every photo alike (a threshold fitted
    on the float model flagged 11 % of val produce on the int8 one instead of 8 %).  Augmented
    views, not the photos themselves: the network trained on those, whose top probability sits
    at 1.0 in both copies and whose nearest exemplar is often the photo itself, so their median
    difference is 0 whatever quantisation does.
    """
    from model.preprocess import read_photo, to_tensor
    from model.recognizer import ModelRunner, int8_needs_exact_kernels
    from model.refit import Exemplars, unit
    from model.training.augment import augment

    photos = [*ds.train, *ds.val]
    pick = [photos[i] for i in np.linspace(0, len(photos) - 1, min(n, len(photos))).astype(int)]
    views = [to_tensor(augment(read_photo(p.path, size, input_crop(meta)),
                               np.random.default_rng([int(meta.get("seed", 0)), i]), size))
             for i, p in enumerate(pick)]
    flag = UnknownFlag.from_json(meta["unknown"]["nearest_exemplar"])
    md_flag = (UnknownFlag.from_json(meta["unknown"]["mahalanobis"]) if "mahalanobis" in meta["unknown"]
               else None)
    temperature = float(meta["temperature"])
    scores = []
    for path in (fp32, int8):
        m = json.loads(path.with_suffix(".json").read_text()) if path == fp32 else meta
        runner = ModelRunner(path, size, exact_int8=int8_needs_exact_kernels(m))
        out = [runner.run(v) for v in views]
        logits, emb = np.stack([lo[0] for lo, _ in out]), np.stack([e[0] for _, e in out])
        ex = Exemplars.read(path.with_name(str(m["teach"]["exemplars"])), len(m["labels"]),
                            int(m["embedding_dim"]), str(m["embedding_space"]))
        prob = softmax(logits, temperature).max(1)
        read = [prob, flag.score(prob, nearest_cosine(unit(emb), unit(ex.embeddings)))]
        if md_flag is not None:
            # each copy against its own means and precision, as each has its own exemplars
            md = Mahalanobis.read(path.with_name(str(m["unknown"]["mahalanobis"]["file"])), len(m["labels"]),
                                  int(m["embedding_dim"]), str(m["embedding_space"]))
            read.append(md_flag.score(prob, md.score(unit(emb))))
        scores.append(read)
    shifts = [float(np.median(b - a)) for a, b in zip(scores[0], scores[1], strict=True)]
    d_prob, d_score = shifts[:2]
    logger.info("%s: int8 moves the top probability by %+.4f and the unknown score by %+.4f%s (median of %d)",
                int8.name, d_prob, d_score,
                f", the Mahalanobis flag's by {shifts[2]:+.4f}" if md_flag is not None else "", len(pick))
    unknown = {**meta["unknown"], "threshold": float(meta["unknown"]["threshold"]) + d_prob,
               # what the float model's flag says of itself (its score, share) kept
               "nearest_exemplar": {**meta["unknown"]["nearest_exemplar"],
                                    **_moved(flag, d_score).to_json(),
                                    "score": meta["unknown"]["nearest_exemplar"]["score"]}}
    if md_flag is not None:
        unknown["mahalanobis"] = {**meta["unknown"]["mahalanobis"], **_moved(md_flag, shifts[2]).to_json(),
                                  "score": meta["unknown"]["mahalanobis"]["score"]}
    return {**meta, "unknown": unknown,
            "int8_shift": {"top_probability": d_prob, "unknown_score": d_score,
                           **({"mahalanobis_score": shifts[2]} if md_flag is not None else {}),
                           "photos": len(pick)}}


def _moved(flag: UnknownFlag, shift: float) -> UnknownFlag:
    return UnknownFlag(flag.prob_mean, flag.prob_std, flag.near_mean, flag.near_std, flag.threshold + shift)


def _with_mahalanobis(meta: dict[str, Any], model: Path, ds: Dataset, size: int) -> dict[str, Any]:
    """Where the flag was fitted out of fold with the Mahalanobis nearness (``model cv``), ``model``'s
    own means and precision from every photo it learnt from, written beside it and named."""
    if "mahalanobis" not in meta.get("unknown", {}):
        return meta
    from model.recognizer import int8_needs_exact_kernels
    from model.training.flags import write_mahalanobis

    space = str(meta["embedding_space"])
    written = write_mahalanobis(model, [*ds.train, *ds.val], len(ds.classes), size, space, input_crop(meta),
                                int8_needs_exact_kernels(meta))
    return {**meta, "unknown": {**meta["unknown"],
                                "mahalanobis": {**meta["unknown"]["mahalanobis"], **written}}}


def _mahalanobis_file(model: Path, meta: dict[str, Any]) -> list[Path]:
    md = meta.get("unknown", {}).get("mahalanobis", {})
    return [model.with_name(str(md["file"]))] if "file" in md else []


def export_checkpoint(checkpoint: Path, out: Path, int8: bool = False,
                      data: Path | Dataset | None = None, int8_out: Path | None = None,
                      calibrated: bool = False) -> list[Path]:
    """``model.pt`` of a run -> ``OUT.onnx`` + ``OUT.json`` (and the int8 pair).

    ``calibrated``: the checkpoint's temperature and unknown flag were fitted out of fold (``model
    cv``) and val is in its training set: they are kept, and carried to the int8 copy by
    ``carried_to_int8`` instead of refitted on val.
    """
    import torch
    import torch.nn.functional as F

    from model.refit import write_exemplars
    from model.training.export import export_onnx, quantize_int8, write_metadata
    from model.training.network import RecognizerNet, build_trunk

    state = torch.load(checkpoint, weights_only=False)
    net = RecognizerNet(build_trunk(state["backbone"], state["size"], pretrained=False),
                        state["n_classes"])
    net.load_state_dict(state["state"])
    net.eval()
    meta = state["meta"]
    export_onnx(net, state["size"], out)
    written = [out, out.with_suffix(".json")]
    try:
        ds: Dataset | None = data if isinstance(data, Dataset) else load_dataset(data or Path(state["data"]))
    except DatasetError as exc:
        if int8:
            raise
        logger.warning("no catalogue exemplars for %s, taught items will be scored by the gallery alone: "
                       "%s", out.name, exc)
        ds = None
    protos = F.normalize(net.prototypes.detach(), dim=1).numpy()
    space = str(meta["embedding_space"])
    if ds is not None:
        meta = {**meta, "teach": write_exemplars(out, ds, state["size"], space, protos, input_crop(meta))}
        meta = _with_mahalanobis(meta, out, ds, state["size"])
        if not calibrated:
            # the float model keeps the temperature fitted in training; it only gains the unknown flag
            meta = calibrated_on_val(meta, out, ds, state["size"], recalibrate=False)
        written += [out.with_name(out.stem + ".exemplars.npz"), *_mahalanobis_file(out, meta)]
    write_metadata(out.with_suffix(".json"), meta, out)
    if int8 and ds is not None:
        calib = _calibration_batch(ds, state["size"], 64, int(meta.get("seed", 0)), input_crop(meta))
        q = int8_out or out.with_name(out.stem + ".int8.onnx")
        bits = int(meta.get("weight_bits", 8))
        quantize_int8(out, q, calib, bits)
        # read by ModelRunner: 7-bit weights cannot saturate the fast kernels, so they need no exact ones
        int8_meta = {"weight_bits": bits, "depthwise_weight_bits": 8}
        qmeta = _with_mahalanobis({**meta, "int8": int8_meta,
                                   "teach": write_exemplars(q, ds, state["size"], space, protos,
                                                            input_crop(meta))}, q, ds, state["size"])
        qmeta = (carried_to_int8(qmeta, out, q, ds, state["size"]) if calibrated else
                 calibrated_on_val(qmeta, q, ds, state["size"], recalibrate=True))
        write_metadata(q.with_suffix(".json"), qmeta, q)
        written += [q, q.with_suffix(".json"), q.with_name(q.stem + ".exemplars.npz"),
                    *_mahalanobis_file(q, qmeta)]
    return written
