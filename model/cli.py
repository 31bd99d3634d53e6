"""Subcommands of this package (see edge.cli): recognize, enroll, model train|cv|evaluate|export|gallery.

Registration is argparse only; the command functions import numpy, OpenCV,
onnxruntime (and torch for training) when they run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from model.recognizer import Recognizer

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _roi(text: str) -> tuple[float, float, float, float]:
    try:
        x, y, w, h = (float(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected x,y,w,h fractions, got {text!r}") from exc
    return (x, y, w, h)


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from exc
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _expand(items: list[str]) -> list[Path]:
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(p)
    return out


def _load(args: argparse.Namespace, gallery: str | None, top: int = 5) -> Recognizer:
    from model.recognizer import Recognizer

    # one-shot commands: no background refit thread for the process to exit under
    rec = Recognizer.load(args.model, gallery_dir=gallery, top_k=top, background_refit=False)
    if getattr(args, "roi", None) is not None:
        rec.set_roi(args.roi)  # RoiError is a ModelError: one line from the dispatcher
    return rec


def cmd_recognize(args: argparse.Namespace) -> int:
    from model import ImageError

    rec = _load(args, args.gallery, args.top)
    rc = 0
    paths = _expand(args.images)
    if not paths:
        print("wetmarket recognize: error: no images found", file=sys.stderr)
        return 1
    for p in paths:
        try:
            r = rec.recognize(p)
        except ImageError as exc:
            # One bad photo must not stop the others: say so on one line, go on.
            print(f"wetmarket recognize: error: {exc}", file=sys.stderr)
            rc = 1
            continue
        try:
            print(json.dumps(r.to_json(str(p)), ensure_ascii=False), flush=True)
        except BrokenPipeError:
            # `wetmarket recognize DIR | head`: the reader has gone, stop quietly.
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - Python flushes stdout at exit
            return rc
    return rc


def cmd_enroll(args: argparse.Namespace) -> int:
    from model import ImageError

    rec = _load(args, args.gallery)
    added, rc = 0, 0
    for p in _expand(args.images):
        try:
            rec.teach(args.label, p, save=False)
            added += 1
        except ImageError as exc:
            print(f"wetmarket enroll: error: {exc}", file=sys.stderr)
            rc = 1
    if added:
        rec.gallery.save()
        rec.taught_head()  # refit now and cache it beside the gallery: recognitions start at once
    print(json.dumps({"label": args.label, "added": added, "gallery": args.gallery,
                      "labels": rec.gallery.counts()}, ensure_ascii=False))
    return rc if added else 1


def cmd_train(args: argparse.Namespace) -> int:
    import logging

    from model import ModelError
    from model.training.distill import DEFAULT_TEACHERS, parse_teacher
    from model.training.head import HeadConfig
    from model.training.train import TrainConfig, run

    teachers = tuple(args.teachers.split(",")) if args.teachers else DEFAULT_TEACHERS
    for spec in teachers:
        try:
            parse_teacher(spec)
        except ValueError as exc:
            raise ModelError(str(exc)) from None

    logging.getLogger("model").setLevel(logging.INFO)
    cfg = TrainConfig(
        data=Path(args.data), out=Path(args.out), run_dir=Path(args.run_dir),
        backbone=args.backbone, size=args.size, mode=args.mode, aug_views=args.aug_views,
        seed=args.seed, folds=args.folds, head=HeadConfig(epochs=args.head_epochs, seed=args.seed),
        epochs=args.epochs, batch=args.batch, lr=args.lr, freeze_blocks=args.freeze_blocks,
        int8=args.int8 or args.int8_out is not None,
        int8_out=Path(args.int8_out) if args.int8_out else None,
        threads=args.threads, max_images=args.max_images,
        teachers=teachers,
        kd_temperature=args.kd_temperature, kd_alpha=args.kd_alpha,
        distill_scale=args.distill_scale, bank_views=args.bank_views, held_out_group=args.held_out_group,
        students=args.students, weight_bits=args.weight_bits,
        cv_report=Path(args.cv_report) if args.cv_report else None,
    )
    report = run(cfg)
    if "held_out_student" in report:
        print(json.dumps(report["held_out_student"], ensure_ascii=False))
        return 0
    print(json.dumps({"out": str(cfg.out), "val_top1": report["val"][1],
                      "val_top5": report["val"][5], "report": str(cfg.run_dir / "report.md")}))
    return 0


def _folds_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected fold numbers like 0,1,2, got {text!r}") from exc


def cmd_cv(args: argparse.Namespace) -> int:
    import logging

    from model import ModelError
    from model.training.cv import CvConfig, run_cv
    from model.training.distill import parse_teacher

    teachers = tuple(args.teachers.split(","))
    for spec in teachers + ((args.student,) if args.student else ()):
        try:
            parse_teacher(spec)
        except ValueError as exc:
            raise ModelError(str(exc)) from None
    if args.from_block is not None and args.from_block < 0:
        raise ModelError(f"--from-block {args.from_block}: blocks are numbered from 0")
    if args.wise and not args.final:
        raise ModelError("--wise says which model to ship: give --final OUT.onnx too")
    if not 0 <= args.mixup < math.inf:
        raise ModelError(f"--mixup {args.mixup}: a Beta weight's parameter, above 0 (or 0: off)")
    if not 0 <= args.mixstyle < math.inf:
        raise ModelError(f"--mixstyle {args.mixstyle}: a Beta weight's parameter, above 0 (or 0: off)")
    if args.match is not None and not 0 <= args.match < math.inf:
        raise ModelError(f"--match {args.match}: a Beta weight's parameter, above 0 (or 0: views only)")
    if args.match is not None and (args.student is None or any(t != args.student for t in teachers)):
        raise ModelError("--match: the student reads its teachers' outputs on its own cached activations; "
                         "give --student and teachers of the same BACKBONE@SIZE")
    if args.student_epochs is not None and args.student is None:
        raise ModelError("--student-epochs is the student's schedule: give --student too")
    if not 0.2 <= args.crop <= 1:
        raise ModelError(f"--crop {args.crop}: the fraction of a photo's shorter side kept, 0.2 to 1")
    if args.folds < 2:
        raise ModelError(f"--folds {args.folds}: cross-validation needs at least 2 folds")
    if args.ood is not None and not Path(args.ood).is_dir():
        raise ModelError(f"--ood {args.ood}: not a folder of photos outside the catalogue")
    if args.only_folds and not all(0 <= k < args.folds for k in args.only_folds):
        raise ModelError(f"--only-folds: fold numbers run from 0 to {args.folds - 1}")
    logging.getLogger("model").setLevel(logging.INFO)
    cfg = CvConfig(data=Path(args.data), run_dir=Path(args.run_dir), teachers=teachers, seed=args.seed,
                   folds=args.folds, epochs=args.epochs, views=args.views, scales=args.scales,
                   from_block=args.from_block,
                   lr=args.lr, batch=args.batch, mixup=args.mixup, mixstyle=args.mixstyle,
                   threads=args.threads, max_images=args.max_images, only_folds=args.only_folds,
                   student=args.student, kd_temperature=args.kd_temperature, kd_alpha=args.kd_alpha,
                   match=args.match, student_epochs=args.student_epochs, crop=args.crop,
                   final=Path(args.final) if args.final else None, wise=args.wise,
                   mirror=args.mirror is not None, mirror_unsure=args.mirror == "unsure",
                   ood=Path(args.ood) if args.ood else None)
    report = run_cv(cfg)
    summary: dict[str, Any] = {"report": str(cfg.run_dir / "cv-report.md")}
    for t in report["teachers"]:
        name = f"{t['teacher']}#{t['seed']}"
        summary[name] = ({"folds_missing": t["folds_missing"]} if "folds_missing" in t else
                         {"top1": t["finetuned"]["top1"], "top1_sd": t["finetuned"]["top1_sd"],
                          "top5": t["finetuned"]["top5"], "epochs": t["chosen_epochs"],
                          "linear_top1": t["linear"]["top1"]})
    if "ensemble" in report:
        summary["ensemble"] = {"top1": report["ensemble"]["top1"], "top5": report["ensemble"]["top5"]}
    st = report.get("student")
    if st:
        summary["student"] = ({"top1": st["finetuned"]["top1"], "top1_sd": st["finetuned"]["top1_sd"],
                               "top5": st["finetuned"]["top5"], "epochs": st["chosen_epochs"]}
                              if "finetuned" in st else {"still_to_run": True})
    if "final" in report:
        summary["final"] = report["final"]
    print(json.dumps(summary))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from model.evaluate import evaluate

    res = evaluate(args.model and Path(args.model), Path(args.data), args.split,
                   Path(args.out) if args.out else None, Path(args.ood) if args.ood else None,
                   args.max_images)
    print(json.dumps(res.report, indent=2, ensure_ascii=False))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from model.training.train import export_checkpoint

    written = export_checkpoint(Path(args.checkpoint), Path(args.out),
                                args.int8 or args.int8_out is not None,
                                Path(args.data) if args.data else None,
                                Path(args.int8_out) if args.int8_out else None)
    print(json.dumps({"written": [str(p) for p in written]}))
    return 0


def cmd_gallery(args: argparse.Namespace) -> int:
    rec = _load(args, args.gallery)
    if args.import_file:
        n = rec.gallery.import_from(args.import_file)
        rec.gallery.save()
        rec.taught_head()
        print(json.dumps({"imported": n, "labels": rec.gallery.counts()}, ensure_ascii=False))
    elif args.export_file:
        rec.gallery.export_to(args.export_file)
        print(json.dumps({"exported": len(rec.gallery), "file": args.export_file}))
    elif args.remove:
        n = rec.gallery.remove(args.remove)
        rec.gallery.save()
        rec.taught_head()
        print(json.dumps({"removed": n, "labels": rec.gallery.counts()}, ensure_ascii=False))
    else:
        print(json.dumps({"labels": rec.gallery.counts()}, ensure_ascii=False))
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    """Add ``recognize``, ``enroll`` and ``model`` (train, evaluate, export, gallery)."""
    from model.data import default_dataset_root  # stdlib only: registration stays cheap

    model_help = "ONNX model (default: the shipped model/weights/recognizer.onnx)"

    p = sub.add_parser("recognize", help="recognise produce in photos, one JSON object per image")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--top", type=_positive, default=5, help="how many guesses (default 5)")
    p.add_argument("--gallery", help="the stall's gallery folder of taught items")
    p.add_argument("--model", help=model_help)
    p.add_argument("--roi", type=_roi, help="plate region x,y,w,h as fractions of the image")
    p.set_defaults(run=cmd_recognize)

    p = sub.add_parser("enroll", help="teach an item from a few photos (no retraining)")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--gallery", required=True, help="the stall's gallery folder")
    p.add_argument("--label", required=True, help="the item's name")
    p.add_argument("--model", help=model_help)
    p.add_argument("--roi", type=_roi, help="plate region x,y,w,h as fractions of the image")
    p.set_defaults(run=cmd_enroll)

    m = sub.add_parser("model", help="train, evaluate and export the recognizer")
    msub = m.add_subparsers(dest="model_command", metavar="ACTION", required=True)

    t = msub.add_parser("train", help="train on photos and export ONNX + metadata + report")
    t.add_argument("--data", default=str(default_dataset_root()),
                   help="Grocery Store layout or label/*.jpg tree")
    t.add_argument("--out", default="runs/recognizer.onnx", help="ONNX file to write")
    t.add_argument("--run-dir", default="runs/train", help="report, checkpoints, caches")
    t.add_argument("--backbone", default="efficientnet-lite0",
                   choices=["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"])
    t.add_argument("--size", type=int, default=224, help="input size in pixels (multiple of 32)")
    t.add_argument("--mode", choices=["linear", "finetune", "distill"], default="linear",
                   help="linear: head on the frozen trunk; finetune: hard labels; distill: the "
                        "teachers' soft labels (the shipped model)")
    t.add_argument("--teachers", help="distill: comma-separated BACKBONE@SIZE frozen teachers "
                                      "(default: lite0@224, lite1@240, lite2@260, lite2@288, lite0@288)")
    t.add_argument("--kd-temperature", type=float, default=2.0, help="distill: teacher temperature")
    t.add_argument("--kd-alpha", type=float, default=0.7, help="distill: weight of the soft labels")
    t.add_argument("--distill-scale", type=float, default=32.0,
                   help="distill: the cosine head's fixed scale while training")
    t.add_argument("--held-out-group", type=int, choices=range(5), metavar="{0..4}",
                   help="distill: instead of a model, the honest teaching figure: a student "
                        "without this group of classes, taught them from 5 photos")
    t.add_argument("--weight-bits", type=int, choices=[7, 8], default=8,
                   help="distill: 7 trains the convolutions on the 7-bit weight grid, so the int8 "
                        "file runs exact on the fast kernels of x86 CPUs without VNNI")
    t.add_argument("--students", type=_positive, default=1,
                   help="distill: students with seeds SEED, SEED+1, ... averaged into one network")
    t.add_argument("--bank-views", type=int, default=8,
                   help="distill: augmented views per train photo in the view bank")
    t.add_argument("--aug-views", type=int, default=4, help="augmented views per photo (linear)")
    t.add_argument("--head-epochs", type=int, default=30)
    t.add_argument("--epochs", type=int, default=12, help="fine-tuning epochs")
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--lr", type=float, default=2e-4, help="fine-tuning peak learning rate (AdamW)")
    t.add_argument("--freeze-blocks", type=int, default=3)
    t.add_argument("--folds", type=int, default=5, help="cross-validation folds (0: none)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--int8", action="store_true", help="also write OUT.int8.onnx")
    t.add_argument("--int8-out", help="where to write the int8 model (implies --int8)")
    t.add_argument("--max-images", type=int, help="train on a small slice (tests)")
    t.add_argument("--cv-report", help="cv-report.json of `model cv` for this recipe: the accuracy the "
                                       "training report and the metadata quote")
    t.set_defaults(run=cmd_train)

    v = msub.add_parser("cv", help="cross-validate fine-tuned teachers on blocked folds over train + val")
    v.add_argument("--data", default=str(default_dataset_root()),
                   help="Grocery Store layout or label/*.jpg tree")
    v.add_argument("--run-dir", default="runs/cv", help="caches, one folder per teacher, cv-report.md")
    v.add_argument("--teachers", default="efficientnet-lite0@224",
                   help="comma-separated BACKBONE@SIZE; the i-th gets seed SEED+i")
    v.add_argument("--folds", type=int, default=5, help="blocked folds (at least 2)")
    v.add_argument("--student", help="BACKBONE@SIZE distilled on the same folds from the teachers "
                                      "(each fold from their networks of that fold)")
    v.add_argument("--kd-temperature", type=float, default=2.0, help="student: teacher temperature")
    v.add_argument("--kd-alpha", type=float, default=0.7, help="student: weight of the soft labels")
    v.add_argument("--match", type=float, metavar="A",
                   help="student: match the teachers' outputs on each batch it sees, its cached "
                        "activations mixed at a Beta(A, A) weight (0: views only); teachers of the "
                        "student's BACKBONE@SIZE")
    v.add_argument("--student-epochs", type=_positive, metavar="N",
                   help="student: its own schedule's length (default: --epochs)")
    v.add_argument("--only-folds", type=_folds_list, help="run only these folds now, e.g. 0,1")
    v.add_argument("--epochs", type=_positive, default=6, help="fine-tuning epochs (the schedule's length)")
    v.add_argument("--views", type=int, default=4, help="augmented views per photo in the cache")
    v.add_argument("--scales", type=_positive, default=1,
                   help="fine-tune the blocks whose outputs are at the trunk's N smallest scales "
                        "(1: the last stages; 2: from the stride-16 stages on, about 2x the compute)")
    v.add_argument("--from-block", type=int, metavar="N",
                   help="fine-tune from block N on instead (Lite0 has 16; 16: the head convolution only)")
    v.add_argument("--lr", type=float, default=2e-4)
    v.add_argument("--mixup", type=float, default=0.0, metavar="A",
                   help="manifold mixup of the cached activations at a Beta(A, A) weight (0: off)")
    v.add_argument("--mixstyle", type=float, default=0.0, metavar="A",
                   help="MixStyle: half the batches' per-channel activation statistics mixed between "
                        "photos at a Beta(A, A) weight, labels kept (0: off; the paper's 0.1)")
    v.add_argument("--mirror", nargs="?", const="always", choices=("always", "unsure"),
                   help="also read each held-out photo with its mirror, outputs averaged: figures, "
                        "temperature and flag of that reading, and of the mirror read for the least "
                        "sure quarter only; with --final the model ships the one named (always)")
    v.add_argument("--crop", type=float, default=1.0, metavar="F",
                   help="each photo's centre square, F of its shorter side, before resizing and "
                        "augmenting (the model's input.crop, after the stall's plate region; 1: all)")
    v.add_argument("--ood", metavar="DIR",
                   help="photos of things outside the catalogue (packaged goods), read by each fold's "
                        "network: the report gives the share its unknown flag takes, fitted as for "
                        "produce, and the produce each costlier flag takes")
    v.add_argument("--batch", type=_positive, default=32)
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--threads", type=_positive, default=2)
    v.add_argument("--max-images", type=int, help="a small slice per split (tests)")
    v.add_argument("--final", metavar="OUT.onnx",
                   help="once every fold has run: the student (or the one teacher) trained on all of "
                        "train + val for the epochs the folds chose, exported as OUT.onnx (int8, what "
                        "the stall runs) and OUT.fp32.onnx, with the temperature and unknown flag "
                        "fitted out of fold")
    v.add_argument("--wise", action="store_true",
                   help="with --final: ship the weight-space ensemble of the linear head's start and the "
                        "fine-tuned network (WiSE-FT) at the alpha with the best out-of-fold other-session "
                        "top-1, calibrated on its out-of-fold outputs")
    v.set_defaults(run=cmd_cv)

    e = msub.add_parser("evaluate", help="accuracy, unknown rate and latency of an ONNX model")
    e.add_argument("--model", help=model_help)
    e.add_argument("--data", default=str(default_dataset_root()),
                   help="Grocery Store layout or label/*.jpg tree")
    e.add_argument("--split", choices=["val", "train"], default="val")
    e.add_argument("--out", help="folder for evaluation.json and confusion.png")
    e.add_argument("--ood", help="folder of photos outside the catalogue")
    e.add_argument("--max-images", type=int)
    e.set_defaults(run=cmd_evaluate)

    x = msub.add_parser("export", help="export a training checkpoint (model.pt) to ONNX")
    x.add_argument("checkpoint", help="model.pt of a training run")
    x.add_argument("--out", required=True, help="ONNX file to write")
    x.add_argument("--int8", action="store_true", help="also write OUT.int8.onnx")
    x.add_argument("--int8-out", help="where to write the int8 model (implies --int8)")
    x.add_argument("--data", help="photos to calibrate int8 on (default: the training folder)")
    x.set_defaults(run=cmd_export)

    g = msub.add_parser("gallery", help="list, export, import or prune a stall's gallery")
    g.add_argument("--gallery", required=True)
    g.add_argument("--model", help=model_help)
    g.add_argument("--export", dest="export_file", help="write the gallery to one file")
    g.add_argument("--import", dest="import_file", help="merge a gallery file from another stall")
    g.add_argument("--remove", help="forget a label")
    g.set_defaults(run=cmd_gallery)
