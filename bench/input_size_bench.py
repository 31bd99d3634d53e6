"""What a smaller input buys: the shipped weights run at other input sizes, accuracy against network time.

The ONNX input is made size-free (the network is convolutional up to its global
pooling), so the same weights run at 128, 160, 192 px... on the stall's
``ModelRunner`` (its kernel choice included).  For each size: val top-1 and
top-5, the top-1 of the half of val photos the model is surest of (what a
cascade, a cheap pass first and the full one only when unsure, could answer
early), and the network's p50 on one thread, with its ratio to the shipped
size measured in the same run.  Run on one core::

    taskset -c 0 .venv/bin/python bench/input_size_bench.py
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
WEIGHTS = REPO / "model" / "weights"
DATA = REPO.parent / "shared" / "data" / "grocery-store"


def size_free(model: Path, folder: Path) -> Path:
    """A copy of ``model`` whose input takes any height and width."""
    import onnx

    m = onnx.load(str(model))
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    out = folder / model.name
    onnx.save(m, str(out))
    return out


def measure(model: Path, size: int, data: Path, runs: int) -> dict[str, object]:
    from model.data import load_dataset
    from model.preprocess import preprocess, read_photo
    from model.recognizer import ModelMeta, ModelRunner

    meta = ModelMeta.read(model.with_suffix(".json"))
    ds = load_dataset(data)
    with tempfile.TemporaryDirectory() as tmp:
        runner = ModelRunner(size_free(model, Path(tmp)), size, exact_int8=meta.exact_int8)
        # the model's own centre crop (its input.crop), read as the stall reads it, at each size
        xs = [preprocess(read_photo(s.path, size, meta.crop), size) for s in ds.val]
        truth = np.array([meta.labels.index(ds.classes[s.label]) for s in ds.val])
        logits = np.concatenate([runner.run(x)[0] for x in xs]) / meta.temperature
        ms = []
        for i in range(runs):
            t = time.perf_counter()
            runner.run(xs[i % len(xs)])
            ms.append((time.perf_counter() - t) * 1000)
    prob = np.exp(logits - logits.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    order = np.argsort(-prob, axis=1)
    sure = np.argsort(-prob.max(1))[: len(truth) // 2]
    return {"model": model.name, "size": size, "exact_int8_kernels": runner.exact_kernels,
            "top1": round(float(np.mean(order[:, 0] == truth)), 4),
            "top5": round(float(np.mean((order[:, :5] == truth[:, None]).any(1))), 4),
            "surest_half_top1": round(float(np.mean(order[sure, 0] == truth[sure])), 4),
            "network_ms_p50": round(float(np.median(ms)), 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", type=Path,
                    default=[WEIGHTS / "recognizer.onnx", WEIGHTS / "recognizer.fp32.onnx"])
    ap.add_argument("--sizes", nargs="*", type=int, default=[128, 160, 192, 224])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--runs", type=int, default=200, help="timed network runs per model and size")
    args = ap.parse_args()
    print(f"{'model':24s} {'px':>4s} {'top-1':>7s} {'top-5':>7s} {'surest half':>11s} {'network p50':>11s} "
          f"{'ratio':>6s}")
    from model.recognizer import ModelMeta

    for model in args.models:
        rows = [measure(model, size, args.data, args.runs) for size in args.sizes]
        own = ModelMeta.read(model.with_suffix(".json")).size
        shipped = next((r for r in rows if r["size"] == own), rows[-1])
        for r in rows:
            ratio = float(r["network_ms_p50"]) / float(shipped["network_ms_p50"])  # type: ignore[arg-type]
            print(f"{r['model']:24s} {r['size']:4d} {r['top1']:7.1%} {r['top5']:7.1%} "
                  f"{r['surest_half_top1']:11.1%} {r['network_ms_p50']:8.2f} ms {ratio:6.2f}")
            print(json.dumps(r | {"ratio_to_shipped_size": round(ratio, 3)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
