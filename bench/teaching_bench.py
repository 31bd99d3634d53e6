"""Teaching figures: items taught from 5 photos, on classes held out of training.

Reads the embeddings kept by ``wetmarket model train --mode distill
--held-out-group G`` (``RUN_DIR/held-out-group-G.npz``, one per group) and
measures, with 10 draws of the 5 consecutive photos per item:

- the stall's way: the classifier refit on the taught photos and the catalogue
  exemplars, the refit scale and taught-item bias chosen for each group on
  the *other* groups (the best teaching at most 10 points of catalogue cost);
- the earlier gallery scoring, for comparison (its gain and bias chosen on the
  group itself, which flatters it);
- how often taught and catalogue photos are flagged unknown with the
  threshold calibrated before teaching (the exported one), by the top
  probability alone and by the stall's flag (``model.unknown``: plus the
  nearest exemplar or taught photo), how often the
  held-out items were flagged before they were taught, and, with only half of
  a group taught, how often its other half (items the stall was never taught)
  is flagged; the refit head's temperature factor is chosen on the other
  groups (the most never-taught items flagged with at most 10 % of produce);
- how long one refit takes on one core.

    taskset -c 0 .venv/bin/python bench/teaching_bench.py runs/distill/ho*/held-out-group-*.npz
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

from model.refit import (  # noqa: E402
    EXEMPLARS_PER_LABEL,
    REFIT_BIAS,
    REFIT_EPOCHS,
    Exemplars,
    build_head,
    exemplar_rows,
)
from model.training.teaching import (  # noqa: E402
    HELD_OUT_RUNS,
    REFIT_SCALES,
    cross_group,
    held_out_runs,
    load_kept,
    refit_grid,
    teach_group,
)


def refit_seconds(kept: dict[str, np.ndarray], repeats: int = 3) -> float:
    """One refit as the stall runs it: 40 catalogue labels x 20 exemplars + 10 items x 5 photos x 4 views."""
    keep, trl = kept["keep"], kept["train_labels"]
    idx = np.array(exemplar_rows(trl, keep))
    remap = {int(c): i for i, c in enumerate(keep)}
    ex = Exemplars(kept["prototypes"], kept["train"][idx], np.array([remap[int(c)] for c in trl[idx]]), "b")
    views = kept["taught_views"][:50]
    taught = views.reshape(-1, views.shape[-1])
    labels = [f"t{i // (5 * views.shape[1])}" for i in range(len(taught))]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        build_head([f"c{i}" for i in range(len(keep))], ex, taught, labels, REFIT_BIAS)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kept", nargs="*", type=Path,
                    help=f"held-out-group-G.npz files (default: {HELD_OUT_RUNS})")
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--scales", type=float, nargs="+", default=list(REFIT_SCALES),
                    help="refit scales to try (default: %(default)s)")
    ap.add_argument("--steps", type=int, nargs="+", default=[REFIT_EPOCHS],
                    help=f"refit steps to try (default: the stall's {REFIT_EPOCHS})")
    ap.add_argument("--per-label", type=int, nargs="+", default=[EXEMPLARS_PER_LABEL],
                    help=f"catalogue exemplars per label to try (default: the shipped {EXEMPLARS_PER_LABEL}; "
                    "the first one fits the unknown flag's 'before teaching' figures)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    paths = held_out_runs(args.kept, ROOT)
    if not paths:
        return 0
    groups, names = [], []
    for path in paths:
        kept = load_kept(path)
        groups.append(teach_group(kept, draws=args.draws, scales=tuple(args.scales), steps=tuple(args.steps),
                                  per_labels=tuple(args.per_label)))
        names.append(path.stem)
    cg = cross_group(groups)
    print_report(names, groups, cg)
    secs = refit_seconds(load_kept(paths[0]))
    print(f"one refit (40 labels x {EXEMPLARS_PER_LABEL} exemplars + 10 items x 5 photos x 4 views): "
          f"{secs * 1000:.0f} ms")
    if args.json:
        args.json.write_text(json.dumps({"groups": groups, "cross_group": cg, "refit_seconds": secs},
                                        indent=2) + "\n")
    return 0


def print_report(names: list[str], groups: list[dict[str, Any]], cg: dict[str, Any]) -> None:
    """The tables: per group with its setting chosen on the others, the grid, the unknown flags."""
    print(f"{'group':22s} {'scale':>5s} {'steps':>5s} {'per label':>9s} {'bias':>5s} {'taught (refit)':>15s} "
          f"{'catalogue':>16s} {'taught (gallery)':>17s} {'catalogue':>16s}")
    for name, r in zip(names, cg["groups"], strict=True):
        print(f"{name:22s} {r['scale']:5.0f} {r['steps']:5d} {r['per_label']:9d} {r['bias']:5.2f} "
              f"{r['taught_top1']:15.1%} "
              f"{r['catalogue_top1_without_teaching']:7.1%} -> {r['catalogue_top1']:5.1%} "
              f"{r['gallery_scoring_taught_top1']:17.1%} "
              f"{r['catalogue_top1_without_teaching']:7.1%} -> {r['gallery_scoring_catalogue_top1']:5.1%}")
    print(f"{'all groups':22s} {'':5s} {'':5s} {'':9s} {'':5s} {cg['taught_top1']:15.1%} "
          f"{cg['catalogue_top1_without_teaching']:7.1%} -> {cg['catalogue_top1']:5.1%} "
          f"{cg['gallery_scoring_taught_top1']:17.1%} "
          f"{cg['catalogue_top1_without_teaching']:7.1%} -> {cg['gallery_scoring_catalogue_top1']:5.1%}")
    scale, steps, per_label, bias = cg["setting_on_all_groups"]
    print(f"scale, steps, exemplars per label and bias chosen on all groups (the ones to ship): "
          f"{scale:.0f}, {steps}, {per_label}, {bias:.2f}")
    flags = (("", "the top probability (the earlier flag)"),
             ("nearest_", "the top probability + nearest exemplar or taught photo (the stall's flag)"))
    for pre, what in flags:
        print(f"flagged unknown by {what}, calibrated before teaching as exported; the refit head's "
              "temperature x the factor chosen on the other groups (by the top probability's figures):")
        print(f"{'group':22s} {'factor':>6s} {'held-out, untaught':>19s} {'taught':>7s} {'catalogue':>16s} "
              f"{'never taught (half the group taught)':>37s}")
        for name, r in zip([*names, "all groups"], [*cg["groups"], cg], strict=True):
            factor = f"{r['temperature_factor']:6.2f}" if "temperature_factor" in r else f"{'':6s}"
            before, after = r[pre + "catalogue_flagged_without_teaching"], r[pre + "catalogue_flagged"]
            print(f"{name:22s} {factor} {r[pre + 'held_out_flagged_without_teaching']:19.1%} "
                  f"{r[pre + 'taught_flagged']:7.1%} {before:7.1%} -> {after:5.1%} "
                  f"{r[pre + 'untaught_flagged']:37.1%}")
    print("temperature factor chosen on all groups by the top probability's figures (the one to ship, "
          f"for both flags): {cg['temperature_factor_on_all_groups']}")
    print(f"top probability, factor 1 (no softening): catalogue flagged "
          f"{cg['catalogue_flagged_factor_1']:.1%}, "
          f"never-taught items flagged {cg['untaught_flagged_factor_1']:.1%}")
    rows = refit_grid(groups)
    if len(rows) > 1:
        print("each refit, its bias chosen on all groups (in-sample: for comparing refits, not a figure "
              "to quote):")
        print(f"{'scale':>5s} {'steps':>5s} {'per label':>9s} {'bias':>5s} {'taught':>7s} {'catalogue':>9s}")
        for r in rows:
            print(f"{r['scale']:5.0f} {r['steps']:5d} {r['per_label']:9d} {r['bias']:5.2f} "
                  f"{r['taught_top1']:7.1%} {r['catalogue_top1']:9.1%}")


if __name__ == "__main__":
    raise SystemExit(main())
