"""How well items taught at the stall are recognised, on classes held out of training.

A student distilled without a group of classes (``--held-out-group``) keeps
its embeddings in ``held-out-group-G.npz``; here its held-out classes are
taught from ``shots`` consecutive train photos (one session, as a vendor
teaches), each with the mirror and quarter turns the stall adds, and the val
photos of every class (other sessions) are recognised with the catalogue
competing.  The start of the consecutive run is drawn ``draws`` times: which
five photos a vendor happens to take moves a group's figure by 10 points.

Two ways of scoring taught items are measured side by side: the refit of the
classifier the stall uses (``model.refit``), over a grid of refit scales and
taught-item biases, and the earlier gallery scoring (cosine to the taught photos' mean,
with a gain and bias), so the choice stays measured.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from model.metrics import softmax
from model.refit import EXEMPLARS_PER_LABEL, REFIT_EPOCHS, Exemplars, build_head, exemplar_rows, unit
from model.unknown import UnknownFlag, nearest_cosine

logger = logging.getLogger(__name__)

# Taught-item biases (cosine) tried by the refit; the stall's REFIT_BIAS is one of them.
REFIT_BIASES = tuple(float(b) for b in np.round(np.arange(0.0, 0.201, 0.01), 3))
# Refit scales tried; the stall's REFIT_SCALE is one of them.
REFIT_SCALES = (8.0, 12.0, 16.0, 24.0)  # 32 (the trained head's) measured worst on group 0
# The refit head is surer of itself than the trained one (fewer photos, fitted hard): its
# temperature, scaled from the calibrated one, is multiplied by one of these.
TEMPERATURE_FACTORS = (1.0, 1.25, 1.5, 1.75, 2.0, 2.5)


def teach_group(kept: dict[str, np.ndarray], shots: int = 5, draws: int = 10, seed: int = 0,
                scales: tuple[float, ...] = REFIT_SCALES, steps: tuple[int, ...] = (REFIT_EPOCHS,),
                per_labels: tuple[int, ...] = (EXEMPLARS_PER_LABEL,)) -> dict[str, Any]:
    """Teaching figures for one held-out group from its kept embeddings (see module doc).

    Every refit setting is one (scale, refit steps, catalogue exemplars per label, bias) of
    ``scales`` x ``steps`` x ``per_labels`` x ``REFIT_BIASES``; the unknown section's "nearest"
    flag is the one fitted with the first of ``per_labels`` exemplars per label.
    """
    from model.training.train import GALLERY_BIASES, GALLERY_GAINS, calibrate, choose_gallery_setting

    etr, eva = kept["train"], kept["val"]
    trl, val = kept["train_labels"], kept["val_labels"]
    protos, scale = kept["prototypes"], float(kept["scale"])
    keep, out = kept["keep"], [int(c) for c in kept["out"]]
    row = {int(i): r for r, i in enumerate(kept["taught_photos"])}
    views = kept["taught_views"]
    nk = len(keep)
    remap = np.full(nk + len(out), -1)
    remap[keep] = np.arange(nk)
    yq = np.array([remap[c] if remap[c] >= 0 else nk + out.index(int(c)) for c in val])
    new = yq >= nk
    cat = scale * eva @ protos.T
    base = float(np.mean(cat[~new].argmax(1) == yq[~new]))
    # the unknown flag as the export calibrates it (on the catalogue's val photos, before any
    # teaching) and as the stall applies it to the refit head (same scale / temperature)
    temp, thr = calibrate(cat[~new], yq[~new])
    p0 = softmax(cat, temp).max(1)
    flag0 = p0 < thr
    eva_u = unit(eva)
    # per number of exemplars per label: the catalogue exemplars a model ships, and the flag that
    # adds the nearest exemplar (model.unknown), fitted as the export fits it; once items are
    # taught, their photos' views join the exemplars, as in Recognizer.unknown_margin
    exs: dict[int, tuple[Exemplars, np.ndarray, UnknownFlag]] = {}
    for pl in per_labels:
        ex_i = exemplar_rows(trl, keep, pl)
        near_pl = nearest_cosine(eva_u, unit(etr[ex_i]))
        exs[pl] = (Exemplars(protos, etr[ex_i], remap[trl[ex_i]], "held-out"), near_pl,
                   UnknownFlag.fit(p0[~new], near_pl[~new]))
    _, near0, nflag = exs[per_labels[0]]
    nflag0 = nflag.unknown(p0, near0)
    catalogue = [f"c{i}" for i in range(nk)]
    rng = np.random.default_rng(seed)
    refits = [(sc, st, pl) for pl in per_labels for st in steps for sc in scales]
    settings = [(sc, st, pl, b) for sc, st, pl in refits for b in REFIT_BIASES]
    nf = len(TEMPERATURE_FACTORS)
    refit = np.zeros((len(settings), 2))
    # flagged unknown per setting and temperature factor: taught, catalogue; and with only half
    # the group taught: the other half (items the stall was never taught), catalogue
    flagged = np.zeros((len(settings), nf, 2))
    flagged_half = np.zeros((len(settings), nf, 2))
    nflagged = np.zeros((len(settings), nf, 2))  # the same with the nearest-exemplar flag
    nflagged_half = np.zeros((len(settings), nf, 2))
    gal_grid: dict[tuple[float, float], np.ndarray] = {
        (g, b): np.zeros(2) for g in GALLERY_GAINS for b in GALLERY_BIASES}
    half = set(range(0, len(out), 2))
    untaught = np.isin(yq, [nk + j for j in range(len(out)) if j not in half])
    for _ in range(draws):
        taught, taught_lab = [], []
        for j, c in enumerate(out):
            idx = np.where(trl == c)[0]
            start = int(rng.integers(0, max(1, len(idx) - shots + 1)))
            for i in idx[start : start + shots]:
                taught.append(views[row[int(i)]])
                taught_lab += [f"t{j}"] * views.shape[1]
        t = np.concatenate(taught)
        tl = np.array(taught_lab)
        in_half = np.isin(tl, [f"t{j}" for j in sorted(half)])
        near_t = nearest_cosine(eva_u, unit(t))
        near_th = nearest_cosine(eva_u, unit(t[in_half]))
        for i, (sc, st, pl) in enumerate(refits):
            ex, near_pl, flag_pl = exs[pl]
            near, near_h = np.maximum(near_pl, near_t), np.maximum(near_pl, near_th)
            z = _taught_logits(catalogue, ex, t, taught_lab, sc, st, eva)
            zh = _taught_logits(catalogue, ex, t[in_half], list(tl[in_half]), sc, st, eva)
            t_refit = temp * sc / scale  # the stall tempers the refit head's logits alike
            for k, b in enumerate(REFIT_BIASES):
                kk = i * len(REFIT_BIASES) + k
                zz = z.copy()
                zz[:, nk:] += sc * b
                hit = zz.argmax(1) == yq
                refit[kk] += (hit[new].mean(), hit[~new].mean())
                zzh = zh.copy()
                zzh[:, nk:] += sc * b
                for f, factor in enumerate(TEMPERATURE_FACTORS):
                    p = softmax(zz, t_refit * factor).max(1)
                    ph = softmax(zzh, t_refit * factor).max(1)
                    for acc, acc_h, unk, uh in ((flagged, flagged_half, p < thr, ph < thr),
                                                (nflagged, nflagged_half, flag_pl.unknown(p, near),
                                                 flag_pl.unknown(ph, near_h))):
                        acc[kk, f] += (unk[new].mean(), unk[~new].mean())
                        # a group of one class has no untaught half (it then weighs nothing when pooled)
                        acc_h[kk, f] += (uh[untaught].mean() if untaught.any() else 0.0, uh[~new].mean())
        # the earlier scoring: cosine to the mean of each item's taught views, gain and bias
        sims = eva @ np.stack([unit(t[tl == f"t{j}"].mean(0)) for j in range(len(out))]).T
        for (g, b), acc in gal_grid.items():
            hit = np.concatenate([cat, scale * (g * sims + b)], 1).argmax(1) == yq
            acc += (hit[new].mean(), hit[~new].mean())
    refit /= draws
    for a in (flagged, flagged_half, nflagged, nflagged_half):
        a /= draws
    gal = {k: (float(v[0] / draws), float(v[1] / draws)) for k, v in gal_grid.items()}
    best = choose_gallery_setting(gal, base)
    return {
        "shots": shots, "draws": draws, "taught_val_photos": int(new.sum()),
        "catalogue_val_photos": int((~new).sum()), "catalogue_top1_without_teaching": base,
        "unknown": {"temperature": temp, "threshold": thr,
                    "catalogue_flagged_without_teaching": float(flag0[~new].mean()),
                    "held_out_flagged_without_teaching": float(flag0[new].mean()),
                    "temperature_factors": list(TEMPERATURE_FACTORS),
                    "nearest": {"flag": nflag.to_json(),
                                "catalogue_flagged_without_teaching": float(nflag0[~new].mean()),
                                "held_out_flagged_without_teaching": float(nflag0[new].mean())}},
        "refit": {"settings": [list(x) for x in settings], "taught_top1": refit[:, 0].tolist(),
                  "catalogue_top1": refit[:, 1].tolist(),
                  # [setting][temperature factor]
                  "taught_flagged": flagged[..., 0].tolist(), "catalogue_flagged": flagged[..., 1].tolist(),
                  "half_taught": {"untaught_photos": int(untaught.sum()),
                                  "untaught_flagged": flagged_half[..., 0].tolist(),
                                  "catalogue_flagged": flagged_half[..., 1].tolist()},
                  "nearest": {"taught_flagged": nflagged[..., 0].tolist(),
                              "catalogue_flagged": nflagged[..., 1].tolist(),
                              "half_taught": {"untaught_photos": int(untaught.sum()),
                                              "untaught_flagged": nflagged_half[..., 0].tolist(),
                                              "catalogue_flagged": nflagged_half[..., 1].tolist()}}},
        "gallery_scoring": {"gain": best[0], "bias": best[1], "taught_top1": gal[best][0],
                            "catalogue_top1": gal[best][1]},
    }


def _taught_logits(catalogue: list[str], ex: Exemplars, taught: np.ndarray, labels: list[str],
                   scale: float, steps: int, emb: np.ndarray) -> np.ndarray:
    """Logits of ``emb`` on the head refit with ``taught`` at ``scale`` for ``steps`` and no bias: the
    catalogue's rows, then one per taught item in the order of their labels' first appearance."""
    head = build_head(catalogue, ex, taught, labels, 0.0, scale, steps)
    order = [head.labels.index(lab) for lab in dict.fromkeys(labels)]
    z = head.logits(emb)
    return np.concatenate([z[:, : len(catalogue)], z[:, order]], 1)


def _pooled(groups: list[dict[str, Any]], value: Callable[[dict[str, Any]], Any],
            weight: Callable[[dict[str, Any]], int]) -> np.ndarray:
    """``value(g)`` averaged over ``groups``, each weighing its ``weight(g)`` photos."""
    total = sum(weight(g) for g in groups)
    return np.asarray(sum(np.asarray(value(g), np.float64) * weight(g) for g in groups) / max(1, total))


def _n_taught(g: dict[str, Any]) -> int:
    return int(g["taught_val_photos"])


def _n_catalogue(g: dict[str, Any]) -> int:
    return int(g["catalogue_val_photos"])


def choose_setting(groups: list[dict[str, Any]], cost: float = 0.10, among: list[int] | None = None) -> int:
    """Index of the refit setting (of ``among``, default all) with the best teaching over ``groups``
    at most ``cost`` of catalogue top-1; the first of them if none keeps to that."""
    taught = _pooled(groups, lambda g: g["refit"]["taught_top1"], _n_taught)
    cat = _pooled(groups, lambda g: g["refit"]["catalogue_top1"], _n_catalogue)
    base = _pooled(groups, lambda g: g["catalogue_top1_without_teaching"], _n_catalogue)
    idx = np.arange(len(taught)) if among is None else np.asarray(among)
    fair = idx[cat[idx] >= base - cost - 1e-9]
    return int(fair[np.argmax(taught[fair])]) if len(fair) else int(idx[0])


def choose_factor(groups: list[dict[str, Any]], k: int, produce: float = 0.10) -> int:
    """Index of the temperature factor for refit setting ``k`` that flags the most items the stall
    was never taught while at most ``produce`` of real produce (taught and catalogue) is flagged
    by the top probability, over ``groups``; the first factor if none keeps to that.

    One factor serves both flags: it calibrates the probabilities the stall shows too.
    """
    n_t, n_c = sum(map(_n_taught, groups)), sum(map(_n_catalogue, groups))
    flagged = (_pooled(groups, lambda g: g["refit"]["taught_flagged"][k], _n_taught) * n_t
               + _pooled(groups, lambda g: g["refit"]["catalogue_flagged"][k], _n_catalogue) * n_c
               ) / (n_t + n_c)
    untaught = _pooled(groups, lambda g: g["refit"]["half_taught"]["untaught_flagged"][k],
                       lambda g: g["refit"]["half_taught"]["untaught_photos"])
    fair = np.where(flagged <= produce + 1e-9)[0]
    return int(fair[np.argmax(untaught[fair])]) if len(fair) else 0


def refit_grid(groups: list[dict[str, Any]], cost: float = 0.10) -> list[dict[str, Any]]:
    """Per refit (scale, steps, exemplars per label): pooled over ``groups``, the best teaching at most
    ``cost`` of catalogue top-1 and the bias that gives it (chosen on these very groups)."""
    settings = [tuple(x) for x in groups[0]["refit"]["settings"]]
    taught = _pooled(groups, lambda g: g["refit"]["taught_top1"], _n_taught)
    cat = _pooled(groups, lambda g: g["refit"]["catalogue_top1"], _n_catalogue)
    rows = []
    for refit in dict.fromkeys(s[:3] for s in settings):
        k = choose_setting(groups, cost, [i for i, s in enumerate(settings) if s[:3] == refit])
        rows.append({"scale": refit[0], "steps": refit[1], "per_label": refit[2], "bias": settings[k][3],
                     "taught_top1": float(taught[k]), "catalogue_top1": float(cat[k])})
    return rows


def cross_group(groups: list[dict[str, Any]]) -> dict[str, Any]:
    """The honest figure: each group's refit scale and bias chosen on the other groups (all of them
    if alone)."""
    rows = []
    for i, g in enumerate(groups):
        others = [h for j, h in enumerate(groups) if j != i] or [g]
        k = choose_setting(others)
        f = choose_factor(others, k)
        scale, steps, per_label, bias = g["refit"]["settings"][k]
        half = g["refit"]["half_taught"]
        rows.append({"scale": scale, "steps": steps, "per_label": per_label, "bias": bias,
                     "taught_top1": g["refit"]["taught_top1"][k],
                     "catalogue_top1": g["refit"]["catalogue_top1"][k],
                     "temperature_factor": g["unknown"]["temperature_factors"][f],
                     "taught_flagged": g["refit"]["taught_flagged"][k][f],
                     "catalogue_flagged": g["refit"]["catalogue_flagged"][k][f],
                     "untaught_flagged": half["untaught_flagged"][k][f],
                     "untaught_flagged_factor_1": half["untaught_flagged"][k][0],
                     "catalogue_flagged_factor_1": g["refit"]["catalogue_flagged"][k][0],
                     "untaught_photos": half["untaught_photos"],
                     "catalogue_flagged_without_teaching": g["unknown"]["catalogue_flagged_without_teaching"],
                     "held_out_flagged_without_teaching": g["unknown"]["held_out_flagged_without_teaching"],
                     "catalogue_top1_without_teaching": g["catalogue_top1_without_teaching"],
                     "gallery_scoring_taught_top1": g["gallery_scoring"]["taught_top1"],
                     "gallery_scoring_catalogue_top1": g["gallery_scoring"]["catalogue_top1"],
                     "taught_val_photos": g["taught_val_photos"],
                     "catalogue_val_photos": g["catalogue_val_photos"]})
        # the stall's flag (top probability + nearest exemplar) at the same setting and factor
        nr, nu = g["refit"]["nearest"], g["unknown"]["nearest"]
        rows[-1] |= {"nearest_taught_flagged": nr["taught_flagged"][k][f],
                     "nearest_catalogue_flagged": nr["catalogue_flagged"][k][f],
                     "nearest_untaught_flagged": nr["half_taught"]["untaught_flagged"][k][f],
                     "nearest_catalogue_flagged_without_teaching": nu["catalogue_flagged_without_teaching"],
                     "nearest_held_out_flagged_without_teaching": nu["held_out_flagged_without_teaching"]}
    k_all = choose_setting(groups)

    def mean(key: str, n: str) -> float:
        return float(_pooled(rows, lambda r: r[key], lambda r: r[n]))

    return {"groups": rows, "taught_top1": mean("taught_top1", "taught_val_photos"),
            "catalogue_top1": mean("catalogue_top1", "catalogue_val_photos"),
            "catalogue_top1_without_teaching": mean("catalogue_top1_without_teaching",
                                                    "catalogue_val_photos"),
            "taught_flagged": mean("taught_flagged", "taught_val_photos"),
            "catalogue_flagged": mean("catalogue_flagged", "catalogue_val_photos"),
            "untaught_flagged": mean("untaught_flagged", "untaught_photos"),
            "untaught_flagged_factor_1": mean("untaught_flagged_factor_1", "untaught_photos"),
            "catalogue_flagged_factor_1": mean("catalogue_flagged_factor_1", "catalogue_val_photos"),
            "catalogue_flagged_without_teaching": mean("catalogue_flagged_without_teaching",
                                                       "catalogue_val_photos"),
            "held_out_flagged_without_teaching": mean("held_out_flagged_without_teaching",
                                                      "taught_val_photos"),
            "gallery_scoring_taught_top1": mean("gallery_scoring_taught_top1", "taught_val_photos"),
            "gallery_scoring_catalogue_top1": mean("gallery_scoring_catalogue_top1",
                                                   "catalogue_val_photos"),
            "nearest_taught_flagged": mean("nearest_taught_flagged", "taught_val_photos"),
            "nearest_catalogue_flagged": mean("nearest_catalogue_flagged", "catalogue_val_photos"),
            "nearest_untaught_flagged": mean("nearest_untaught_flagged", "untaught_photos"),
            "nearest_catalogue_flagged_without_teaching": mean("nearest_catalogue_flagged_without_teaching",
                                                               "catalogue_val_photos"),
            "nearest_held_out_flagged_without_teaching": mean("nearest_held_out_flagged_without_teaching",
                                                              "taught_val_photos"),
            "setting_on_all_groups": groups[0]["refit"]["settings"][k_all],
            "temperature_factor_on_all_groups":
                groups[0]["unknown"]["temperature_factors"][choose_factor(groups, k_all)]}


# Where ``--held-out-group G --run-dir runs/distill/hoG`` keeps its embeddings (the benches' default).
HELD_OUT_RUNS = "runs/distill/ho*/held-out-group-*.npz"


def held_out_runs(given: list[Path], root: Path) -> list[Path]:
    """The kept-embedding files given, else those of ``HELD_OUT_RUNS`` under ``root``; empty with a hint."""
    paths = given or sorted(root.glob(HELD_OUT_RUNS))
    if not paths:
        print(f"no held-out runs under {root / HELD_OUT_RUNS}: make them with `wetmarket model train "
              "--mode distill --held-out-group G --run-dir runs/distill/hoG` (about 15 minutes each)")
    return paths


def load_kept(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
