"""Which score best flags produce outside the catalogue: a study on classes held out of training.

Reads the embeddings kept by ``wetmarket model train --mode distill
--held-out-group G`` (``RUN_DIR/held-out-group-G.npz``): a student that never
saw one group of 10 classes.  Known: the val photos of the 40 classes it was
trained on.  Unknown: every photo (train and val) of the 10 held-out classes,
produce that looks like produce, the hard case of the unknown flag.

Each score is measured by its AUROC and by the share of unknown photos it
flags at the threshold that flags 8 % of known photos (as the exported model
is calibrated).  The scores:

- ``max-prob``: the top calibrated probability (what the stall used until 2026-12-01);
- ``max-cosine``: the top cosine to the classifier's prototypes;
- ``energy``: the temperature-scaled log-sum-exp of the logits;
- ``knn-all-k``: the cosine to the k-th nearest train photo of a known class;
- ``knn-exemplars-k``: the same over the 20 exemplars per label the model ships;
- ``centroid``: the top cosine to the mean train embedding of each class;
- ``mahalanobis``: the nearest class mean under a shared, shrunk covariance;
- ``max-prob+knn-exemplars-1``: the sum of both, each standardised on known photos
  (``model.unknown.UnknownFlag``, what the stall uses now).

    .venv/bin/python bench/unknown_scores_bench.py runs/distill/ho*/held-out-group-*.npz
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.metrics import auroc, softmax  # noqa: E402
from model.refit import exemplar_rows, unit  # noqa: E402
from model.training.teaching import HELD_OUT_RUNS, held_out_runs, load_kept  # noqa: E402
from model.training.train import calibrate  # noqa: E402
from model.unknown import UNKNOWN_QUANTILE, UnknownFlag  # noqa: E402

Scores = dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (known photos, unknown photos); high = known


def group_scores(kept: dict[str, np.ndarray]) -> Scores:
    etr, eva = unit(kept["train"]), unit(kept["val"])
    trl, val = kept["train_labels"], kept["val_labels"]
    keep = kept["keep"]
    protos, scale = kept["prototypes"], float(kept["scale"])
    remap = np.full(int(max(trl.max(), val.max())) + 1, -1)
    remap[keep] = np.arange(len(keep))
    known_val = np.isin(val, keep)
    known_tr = np.isin(trl, keep)
    qk, qu = eva[known_val], np.concatenate([etr[~known_tr], eva[~known_val]])
    ref, ref_y = etr[known_tr], remap[trl[known_tr]]
    lk, lu = scale * qk @ protos.T, scale * qu @ protos.T
    temp, _ = calibrate(lk, remap[val[known_val]])
    s: Scores = {}

    def both(f: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return f(qk), f(qu)

    s["max-prob"] = (softmax(lk, temp).max(1), softmax(lu, temp).max(1))
    s["max-cosine"] = (lk.max(1) / scale, lu.max(1) / scale)

    def energy(z: np.ndarray) -> np.ndarray:
        return temp * np.logaddexp.reduce(z / temp, axis=1)

    s["energy"] = (energy(lk), energy(lu))
    ex = np.array(exemplar_rows(ref_y, range(len(keep))))
    for name, bank in (("all", ref), ("exemplars", ref[ex])):
        sk, su = np.sort(qk @ bank.T, 1), np.sort(qu @ bank.T, 1)
        for k in (1, 3, 5, 10):
            s[f"knn-{name}-{k}"] = (sk[:, -k], su[:, -k])
    means = np.stack([ref[ref_y == c].mean(0) for c in range(len(keep))])
    s["centroid"] = both(lambda q: (q @ unit(means).T).max(1))
    centred = ref - means[ref_y]
    cov = centred.T @ centred / len(centred)
    shrunk = 0.5 * cov + 0.5 * np.trace(cov) / len(cov) * np.eye(len(cov))
    precision = np.linalg.inv(shrunk)

    def mahalanobis(q: np.ndarray) -> np.ndarray:
        d = q[:, None, :] - means[None]
        return -np.einsum("nkd,de,nke->nk", d, precision, d).min(1)

    s["mahalanobis"] = both(mahalanobis)

    (pk, pu), (nk, nu) = s["max-prob"], s["knn-exemplars-1"]
    flag = UnknownFlag.fit(pk, nk)  # the stall's flag (model.unknown)
    s["max-prob+knn-exemplars-1"] = (flag.score(pk, nk), flag.score(pu, nu))
    return s


def figures(known: np.ndarray, unknown: np.ndarray) -> dict[str, float]:
    threshold = np.quantile(known, UNKNOWN_QUANTILE)
    return {"auroc": auroc(-unknown, -known), "unknown_flagged": float(np.mean(unknown < threshold))}


def main(argv: list[str] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kept", nargs="*", type=Path,
                    help=f"held-out-group-G.npz files (default: {HELD_OUT_RUNS})")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    paths = held_out_runs(args.kept, ROOT)
    if not paths:
        return {}
    per_group = {}
    for path in paths:
        s = group_scores(load_kept(path))
        per_group[path.stem] = {name: figures(k, u) | {"known": len(k), "unknown": len(u)}
                                for name, (k, u) in s.items()}
    names = list(next(iter(per_group.values())))
    print(f"{'score':28s} " + " ".join(f"{g[-7:]:>16s}" for g in per_group) + "   mean AUROC")
    for name in names:
        cells = [per_group[g][name] for g in per_group]
        row = " ".join(f"{c['auroc']:.3f} / {100 * c['unknown_flagged']:4.1f} %" for c in cells)
        print(f"{name:28s} {row}   {np.mean([c['auroc'] for c in cells]):.3f}")
    print("(each cell: AUROC / unknown photos flagged when 8 % of known photos are)")
    if args.json:
        args.json.write_text(json.dumps(per_group, indent=1))
    return per_group


if __name__ == "__main__":
    main()
