"""A stall on an occasion its network never saw, learning from its vendor as the day goes.

Issue 21's held-out photos are taken on other occasions than the training photos, and the
recognizer reads about 80 % of them (the blocked folds' ``other_session`` figure). At a
stall, every weighing ends with the vendor tapping the right item; when it is not the top
guess, the flow teaches that photo (``edge.flow``: ``Recognizer.teach``, the photo with its
mirror and two quarter turns, then ``model.refit.build_head``). This bench measures what that
is worth on the same other-session photos, with the same code:

- each fold network of a ``wetmarket model cv`` teacher (``fold-K-net.pt``: never trained on
  its fold's val blocks, whole sessions of another occasion) reads those sessions one photo
  at a time, in a random order of the day (each session's photos in their own order);
- **cold**: the network alone; **corrections**: the stall's way, a wrongly read photo taught
  under its item before the next weighing; **every**: each sold photo taught (the vendor's
  tap is a label either way);
- the catalogue exemplars are 20 photos per label of the fold's training part, as
  ``model.refit.write_exemplars`` ships them; labels are ranked among all 50 (a stall ranks
  only its own items, so this is the harder case);
- the cost: the fold's held-out photos of the occasions it trained on, read cold and with
  the day's head at the end of the day.

    nice .venv/bin/python bench/onsite_bench.py --run-dir runs/t0   # after `wetmarket model cv
        --run-dir runs/t0 --teachers efficientnet-lite0@224 --folds 5 --epochs 6 --views 4`

The figures are ratios of the taught stall against the cold network on the very same photos,
read in one run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.data import load_dataset  # noqa: E402
from model.preprocess import read_image, square_resize, tta_views  # noqa: E402
from model.refit import (  # noqa: E402
    REFIT_BIAS,
    REFIT_EPOCHS,
    REFIT_SCALE,
    Exemplars,
    TaughtHead,
    build_head,
    exemplar_rows,
    unit,
)
from model.training.folds import blocked_folds, pooled  # noqa: E402

POLICIES = ("corrections", "every")


def _embed(net: Any, crops: list[np.ndarray]) -> np.ndarray:
    import torch

    from model.training.features import embed_batches

    if not crops:  # a fold with no photo of some kind in a tiny slice
        return np.zeros((0, net.embedding_dim), np.float32)
    with torch.no_grad():
        return embed_batches(net.embed, crops)


def _top(head: TaughtHead | None, protos: np.ndarray, emb: np.ndarray) -> int:
    if head is None:
        return int(np.argmax(emb @ protos.T))
    labels, z = head.label_logits(emb)
    return int(labels[int(np.argmax(z))])


def day_order(sessions: dict[int, list[int]], rng: np.random.Generator) -> list[int]:
    """The photos of a day: sessions interleaved at random, each one's photos in their order."""
    queue = [c for c, rows in sessions.items() for _ in rows]
    rng.shuffle(queue)
    pos = dict.fromkeys(sessions, 0)
    out = []
    for c in queue:
        out.append(sessions[c][pos[c]])
        pos[c] += 1
    return out


def run_fold(net: Any, k: int, pool: Any, folds: Any, size: int, rng: np.random.Generator) -> dict[str, Any]:
    y = pool.labels
    names = [s.path.as_posix() for s in pool.samples]
    catalogue = [str(i) for i in range(int(y.max()) + 1)]
    protos = unit(net.prototypes.detach().numpy().astype(np.float32))
    tr, held = folds.training(k), folds.held_out(k)
    pick = [int(tr[i]) for i in exemplar_rows(y[tr], range(len(catalogue)))]
    ex = Exemplars(protos, _embed(net, [square_resize(read_image(pool.samples[i].path, size), size)
                                        for i in pick]), y[pick], "fold")
    sessions: dict[int, list[int]] = {}
    for i in sorted((int(i) for i in held if pool.split[i] == "val"), key=lambda i: names[i]):
        sessions.setdefault(int(y[i]), []).append(i)
    order = day_order(sessions, rng)
    images = {i: read_image(pool.samples[i].path, size) for i in order}
    centre = dict(zip(order, _embed(net, [square_resize(images[i], size) for i in order]), strict=True))
    views = {i: _embed(net, tta_views(images[i], size)) for i in order}
    trained = [int(i) for i in held if pool.split[i] == "train"]
    trained_emb = _embed(net, [square_resize(read_image(pool.samples[i].path, size), size) for i in trained])
    pairs = list(zip(trained_emb, trained, strict=True))
    cold_trained = sum(int(_top(None, protos, e) == y[i]) for e, i in pairs)
    cold_top = [_top(None, protos, centre[i]) for i in order]
    cold_ok = [int(top == y[i]) for top, i in zip(cold_top, order, strict=True)]
    half = len(order) // 2
    out: dict[str, Any] = {"fold": k, "photos": len(order), "sessions": len(sessions),
                           "cold": sum(cold_ok), "cold_second_half": sum(cold_ok[half:]),
                           "trained_occasions": len(trained), "trained_occasions_cold": cold_trained,
                           # the day's photos (pool rows) and the cold network's top guess for each
                           "rows": order, "cold_top": cold_top}
    for policy in POLICIES:
        taught: list[np.ndarray] = []
        labels: list[str] = []
        head: TaughtHead | None = None
        right = right_late = refits = 0
        seconds = 0.0
        for n, i in enumerate(order):
            ok = _top(head, protos, centre[i]) == y[i]
            right += ok
            right_late += ok and n >= half
            if not ok or policy == "every":
                taught.append(views[i])
                labels += [catalogue[y[i]]] * len(views[i])
                t0 = time.perf_counter()
                head = build_head(catalogue, ex, np.concatenate(taught), labels, REFIT_BIAS, REFIT_SCALE,
                                  REFIT_EPOCHS)
                seconds += time.perf_counter() - t0
                refits += 1
        after = (sum(_top(head, protos, e) == y[i] for e, i in pairs)
                 if head is not None else out["trained_occasions_cold"])
        out[policy] = {"right": int(right), "right_second_half": int(right_late), "taught": refits,
                       "refit_s_mean": seconds / max(refits, 1), "trained_occasions_after": int(after)}
    return out


def measure(run_dir: Path, data: Path, teacher: str = "efficientnet-lite0@224", teacher_seed: int = 0,
            folds: int = 5, max_images: int | None = None, day_seed: int = 0) -> list[dict[str, Any]]:
    """Per fold: the day read cold, with the stall's teaching, and with every photo taught.
    The folds are the ones ``wetmarket model cv`` ran with the same data, folds and slice."""
    import torch

    from model.training.cv import CvConfig, slice_dataset, work_dir
    from model.training.distill import parse_teacher
    from model.training.network import RecognizerNet, build_trunk

    backbone, size = parse_teacher(teacher)
    work = work_dir(CvConfig(data=data, run_dir=run_dir), teacher, teacher_seed)
    ds = slice_dataset(load_dataset(data), max_images)
    pool = pooled(ds)
    cut = blocked_folds(pool, folds)
    rng = np.random.default_rng(day_seed)
    rows = []
    for k in range(folds):
        path = work / f"fold-{k}-net.pt"
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run the cv teacher's folds first")
        net = RecognizerNet(build_trunk(backbone, size, pretrained=False), len(ds.classes))
        net.load_state_dict(torch.load(path))
        rows.append(run_fold(net.eval(), k, pool, cut, size, rng))
        print(json.dumps({key: v for key, v in rows[-1].items() if key not in ("rows", "cold_top")}),
              file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", type=Path, required=True, help="a `wetmarket model cv` run folder")
    ap.add_argument("--teacher", default="efficientnet-lite0@224",
                    help="BACKBONE@SIZE of a teacher of that run")
    ap.add_argument("--teacher-seed", type=int, default=0, help="which of its teachers (its seed)")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "grocery-store")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--max-images", type=int, default=None, help="the slice the cv run used, if any")
    ap.add_argument("--seed", type=int, default=0, help="the day's order")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    try:
        rows = measure(args.run_dir, args.data, args.teacher, args.teacher_seed, args.folds, args.max_images,
                       args.seed)
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 2
    n = sum(r["photos"] for r in rows)
    half = sum(r["photos"] - r["photos"] // 2 for r in rows)
    m = sum(r["trained_occasions"] for r in rows)
    cold = sum(r["cold"] for r in rows)
    print(f"{n} other-session photos in {sum(r['sessions'] for r in rows)} sessions, {m} photos of the "
          "occasions the folds trained on")
    print("| stall | top-1 over the day | second half of the day | photos taught | refit s | "
          "trained occasions, end of day | ratio to cold (day) |")
    print("|---|---|---|---|---|---|---|")
    tc = sum(r["trained_occasions_cold"] for r in rows) / max(m, 1)
    late = sum(r["cold_second_half"] for r in rows)
    print(f"| cold (no teaching) | {cold / n:.1%} | {late / half:.1%} | 0 | - | {tc:.1%} | 1.00 |")
    for p in POLICIES:
        right = sum(r[p]["right"] for r in rows)
        taught = sum(r[p]["taught"] for r in rows)
        secs = sum(r[p]["refit_s_mean"] * r[p]["taught"] for r in rows) / max(taught, 1)
        late = sum(r[p]["right_second_half"] for r in rows)
        print(f"| {p} | {right / n:.1%} | {late / half:.1%} | {taught} "
              f"| {secs:.2f} | {sum(r[p]['trained_occasions_after'] for r in rows) / max(m, 1):.1%} "
              f"| {right / max(cold, 1):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
