"""Recognizer benchmark: accuracy, unknown detection, latency and memory, fp32 and int8.

Run on one core as the issue asks::

    taskset -c 0 .venv/bin/python bench/recognizer_bench.py

Each model is measured in its own process so that its RSS is its own.  Latency
is per image from the JPEG file to the result (decoding, preprocessing and the
gallery lookup included), single-threaded onnxruntime.

With several models, each is then timed again in one process, the models taking
turns photo by photo, and its p50 given as a ratio to the first model's.

A model that reads a photo's mirror only when unsure (``input.mirror.when_below``) reports the
share of the photos it read twice.  Those photos are val's, which the shipped model trained on
and is surer of than of a stall's; ``--mirror-share F`` moves its threshold to the F quantile of
the plain reading's top probability on them, so that F of them are read twice, the share the
blocked folds measured on other sessions (``model cv --mirror``: 0.25).

``--outside DIR`` also reads real photos of things outside the catalogue (every image under DIR,
e.g. the Grocery Store Dataset's ``Packages`` folders, which ``../shared`` leaves out): the share the
unknown flag takes and the AUROC against val (which the shipped model trained on: an upper bound),
beside the synthetic packaged goods, which are far easier (the shipped model flags all of those).

``--default-int8-kernels`` also measures each model with onnxruntime's default
int8 kernels, which saturate on x86 CPUs without VNNI (the stall uses exact
ones there and only there, see ``ModelRunner``): the baseline that shows what
exactness costs.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
WEIGHTS = REPO / "model" / "weights"
DATA = REPO.parent / "shared" / "data" / "grocery-store"


def peak_rss_mb() -> float:
    """Peak RSS of this process image (VmHWM); ru_maxrss would count the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _open(model: Path, exact: bool, paths: list[Path],
          mirror_share: float | None = None) -> tuple[Any, float, float | None]:
    """The recognizer as the stall opens it (and its load time), or on the default int8 kernels;
    with ``input.mirror.when_below``, the share of ``paths`` it reads twice (at ``mirror_share``:
    that share, its threshold moved)."""
    import dataclasses

    import numpy as np

    from model.recognizer import ModelRunner, Recognizer

    t0 = time.perf_counter()
    rec = Recognizer.load(model)
    load_ms = (time.perf_counter() - t0) * 1000
    if not exact:
        rec.runner = ModelRunner(model, rec.meta.size, exact_int8=False)
    if rec.meta.mirror_below is None:
        return rec, load_ms, None
    sure = _plain_sureness(rec, paths)
    if mirror_share is not None:
        rec.meta = dataclasses.replace(rec.meta, mirror_below=float(np.quantile(sure, mirror_share)))
    return rec, load_ms, float(np.mean(sure < rec.meta.mirror_below))


def _plain_sureness(rec: Any, paths: list[Path]) -> Any:
    """Each photo's plain reading's top probability at the mirror rule's temperature."""
    import numpy as np

    from model.metrics import softmax

    t = rec.meta.mirror_temperature
    return np.array([float(softmax(rec.runner.run(rec.network_input(p))[0], t).max()) for p in paths])


def _label(model: Path, exact: bool) -> str:
    return f"{model.parent.name}/{model.name}" + ("" if exact else " (default int8 kernels)")


def worker(model: Path, data: Path, ood_dir: Path, repeats: int, exact: bool,
           mirror_share: float | None, outside: Path | None = None) -> dict[str, object]:
    import numpy as np

    from model.data import images_under, load_dataset
    from model.metrics import auroc
    from model.recognizer import int8_kernels_may_saturate

    ds = load_dataset(data)
    rec, load_ms, read_twice = _open(model, exact, [s.path for s in ds.val], mirror_share)
    hit1, hit5, unk, known_m, ms = [], [], [], [], []
    for s in ds.val:
        r = rec.recognize(s.path)
        labels = [lab for lab, _ in r.top]
        truth = ds.classes[s.label]
        hit1.append(labels[0] == truth)
        hit5.append(truth in labels)
        unk.append(r.unknown)
        known_m.append(rec.unknown_margin(r.top[0][1], r.embedding))
    for _ in range(repeats):
        for s in ds.val:
            t = time.perf_counter()
            rec.recognize(s.path)
            ms.append((time.perf_counter() - t) * 1000)
    ood = sorted(ood_dir.glob("*.jpg"))
    ood_res = [rec.recognize(p) for p in ood]
    # AUROC of the score the flag thresholds (the top probability, plus the nearest exemplar where
    # the model's metadata says so)
    ood_m = np.array([rec.unknown_margin(r.top[0][1], r.embedding) for r in ood_res])
    real: dict[str, object] = {}
    if outside is not None:
        out_res = [rec.recognize(p) for p in images_under(outside)]
        out_m = np.array([rec.unknown_margin(r.top[0][1], r.embedding) for r in out_res])
        real = {"outside_n": len(out_res),
                "outside_flagged_unknown": round(float(np.mean([r.unknown for r in out_res])), 4),
                "outside_auroc": round(auroc(-out_m, -np.array(known_m)), 4)}
    return {
        "model": _label(model, exact),
        "cpu_int8_may_saturate": int8_kernels_may_saturate(),
        "int8_weight_bits": (rec.meta.raw.get("int8") or {}).get("weight_bits"),
        "exact_int8_kernels": rec.runner.exact_kernels,
        "size_mb": round(model.stat().st_size / 1e6, 2),
        "load_ms": round(load_ms, 1),
        "val_n": len(ds.val),
        "top1": round(float(np.mean(hit1)), 4),
        "top5": round(float(np.mean(hit5)), 4),
        "val_flagged_unknown": round(float(np.mean(unk)), 4),
        "ood_n": len(ood),
        "ood_flagged_unknown": round(float(np.mean([r.unknown for r in ood_res])), 4),
        "ood_auroc": round(auroc(-ood_m, -np.array(known_m)), 4),
        **real,
        "unknown_score": ("probability+mahalanobis" if rec.mahalanobis is not None else
                          "probability+nearest" if rec.meta.unknown_flag else "probability"),
        "latency_ms_p50": round(float(np.median(ms)), 2),
        "latency_ms_p90": round(float(np.quantile(ms, 0.9)), 2),
        "latency_n": len(ms),
        **({} if read_twice is None else {"mirror_read_twice": round(read_twice, 4),
                                          "mirror_when_below": round(rec.meta.mirror_below, 4)}),
        "rss_mb": peak_rss_mb(),
        "torch_loaded": "torch" in sys.modules,
    }


def interleaved(models: list[Path], data: Path, repeats: int, exact: list[bool],
                mirror_share: float | None = None) -> list[dict[str, object]]:
    """Latency of each model on the same photos, the models taking turns photo by photo in one
    process: the ratio to the first model is fair even while the shared machine's speed drifts."""
    import numpy as np

    from model.data import load_dataset

    paths = [s.path for s in load_dataset(data).val]
    recs = [_open(m, ex, paths, mirror_share)[0] for m, ex in zip(models, exact, strict=True)]
    ms: list[list[float]] = [[] for _ in recs]
    for _ in range(repeats):
        for p in paths:
            for i, rec in enumerate(recs):
                t = time.perf_counter()
                rec.recognize(p)
                ms[i].append((time.perf_counter() - t) * 1000)
    base = float(np.median(ms[0]))
    return [{"model": _label(m, ex),
             "interleaved_p50_ms": round(float(np.median(x)), 2),
             "ratio_to_first": round(float(np.median(x)) / base, 3)}
            for m, ex, x in zip(models, exact, ms, strict=True)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", type=Path,
                    default=[WEIGHTS / "recognizer.onnx", WEIGHTS / "recognizer.fp32.onnx"])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--repeats", type=int, default=2, help="latency passes over val")
    ap.add_argument("--ood", type=int, default=200, help="synthetic packaged-goods photos")
    ap.add_argument("--outside", type=Path, metavar="DIR",
                    help="real photos of things outside the catalogue (every image under DIR)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--mirror-share", type=float, metavar="F",
                    help="a model reading its mirror when unsure: move its threshold so that F of "
                         "the photos are read twice")
    ap.add_argument("--default-int8-kernels", action="store_true",
                    help="also measure onnxruntime's default (saturating without VNNI) int8 kernels")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--ood-dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--inexact", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.data, args.ood_dir, args.repeats, not args.inexact,
                                args.mirror_share, args.outside)))
        return 0
    if args.outside is not None and not args.outside.is_dir():
        ap.error(f"--outside {args.outside}: not a folder")
    from model.training.ood import write_packaged_goods

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        write_packaged_goods(Path(tmp), args.ood)
        runs = [(m, False) for m in args.models]
        if args.default_int8_kernels:
            runs += [(m, True) for m in args.models]
        for m, inexact in runs:
            if not m.exists():
                print(f"skipping {m}: not found", file=sys.stderr)
                continue
            out = subprocess.run(
                [sys.executable, __file__, "--worker", str(m), "--data", str(args.data),
                 "--ood-dir", tmp, "--repeats", str(args.repeats)] + (["--inexact"] if inexact else [])
                + ([] if args.mirror_share is None else ["--mirror-share", str(args.mirror_share)])
                + ([] if args.outside is None else ["--outside", str(args.outside)]),
                check=True, capture_output=True, text=True,
            )
            res = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(res)
            print(json.dumps(res))
    present = [(m, inexact) for m, inexact in runs if m.exists()]
    if len(present) > 1:
        # every model once more, taking turns photo by photo: ratios immune to the machine's drift
        both = interleaved([m for m, _ in present], args.data, args.repeats,
                           [not inexact for _, inexact in present], args.mirror_share)
        for r in both:
            print(json.dumps(r))
        results.append({"interleaved": both})
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
