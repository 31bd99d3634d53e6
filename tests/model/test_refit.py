"""Teaching by refitting the classifier: the numpy refit, its files, and how it is measured."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model import ModelFileError
from model.refit import EXEMPLARS_PER_LABEL, REFIT_EPOCHS, Exemplars, build_head, refit_prototypes
from model.training.teaching import REFIT_BIASES, TEMPERATURE_FACTORS, cross_group, refit_grid, teach_group


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _clusters(rng: np.random.Generator, centres: np.ndarray, n: int, spread: float) -> np.ndarray:
    """``n`` unit vectors around each centre, ``spread`` the typical distance."""
    noise = rng.standard_normal((len(centres) * n, centres.shape[1])) / np.sqrt(centres.shape[1])
    return _unit(np.repeat(centres, n, axis=0) + spread * noise)


def _catalogue(rng: np.random.Generator, n_labels: int = 6, dim: int = 32) -> tuple[np.ndarray, Exemplars]:
    centres = _unit(rng.standard_normal((n_labels, dim)))
    ex = _clusters(rng, centres, 20, 0.3)
    return centres, Exemplars(centres.astype(np.float32), ex.astype(np.float32),
                              np.repeat(np.arange(n_labels), 20), "space")


def test_refit_learns_a_taught_item_beside_a_look_alike_and_keeps_the_catalogue() -> None:
    rng = np.random.default_rng(0)
    centres, ex = _catalogue(rng)
    # the new item sits close to catalogue label 0 (a look-alike variety)
    new_centre = _unit(centres[0] + 0.5 * _unit(rng.standard_normal(centres.shape[1])))
    taught = _clusters(rng, new_centre[None], 20, 0.1)
    head = build_head([f"c{i}" for i in range(6)], ex, taught, ["New"] * 20, bias=0.0)
    assert head.labels == [*(f"c{i}" for i in range(6)), "New"]
    test_new = _clusters(rng, new_centre[None], 50, 0.2)
    test_cat = _clusters(rng, centres, 50, 0.3)
    assert np.mean(head.logits(test_new).argmax(1) == 6) > 0.9
    assert np.mean(head.logits(test_cat).argmax(1) == np.repeat(np.arange(6), 50)) > 0.9
    # the same inputs give the same prototypes (a stall must not drift between restarts)
    again = build_head([f"c{i}" for i in range(6)], ex, taught, ["New"] * 20, bias=0.0)
    np.testing.assert_array_equal(head.prototypes, again.prototypes)
    # the refit's steps reach the fit: none leaves the catalogue's prototypes as trained
    unfitted = build_head([f"c{i}" for i in range(6)], ex, taught, ["New"] * 20, bias=0.0, epochs=0)
    np.testing.assert_allclose(unfitted.prototypes[:6], centres, atol=1e-6)
    assert not np.allclose(head.prototypes[:6], centres, atol=1e-3)


def test_refit_gradient_lowers_the_loss() -> None:
    rng = np.random.default_rng(1)
    x = _unit(rng.standard_normal((60, 16))).astype(np.float32)
    y = np.repeat(np.arange(3), 20)
    init = _unit(rng.standard_normal((3, 16))).astype(np.float32)

    def loss(w: np.ndarray) -> float:
        z = 16 * x @ w.T
        z -= z.max(1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(60), y]))

    assert loss(refit_prototypes(init, x, y, epochs=50)) < 0.5 * loss(init)


def test_a_correction_gets_its_own_row_and_raises_its_label() -> None:
    rng = np.random.default_rng(2)
    centres, ex = _catalogue(rng)
    photo = _unit(centres[1] + 0.05 * rng.standard_normal(centres.shape[1]))[None]
    # the vendor says this photo of something like c1 is c4
    head = build_head([f"c{i}" for i in range(6)], ex, np.repeat(photo, 4, 0), ["c4"] * 4, bias=0.07)
    assert head.labels[-1] == "c4" and head.n_catalogue == 6
    labels, z = head.label_logits(photo[0])
    assert labels == [f"c{i}" for i in range(6)] and labels[int(np.argmax(z))] == "c4"


def test_exemplar_files_round_trip_and_bad_files_are_named(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    _, ex = _catalogue(rng)
    ex.write(tmp_path / "m.exemplars.npz")
    back = Exemplars.read(tmp_path / "m.exemplars.npz", 6, 32, "space")
    np.testing.assert_allclose(back.embeddings, ex.embeddings, atol=1e-3)  # stored as float16
    np.testing.assert_array_equal(back.labels, ex.labels)
    with pytest.raises(ModelFileError, match="m.exemplars.npz.*other"):
        Exemplars.read(tmp_path / "m.exemplars.npz", 6, 32, "other")
    with pytest.raises(ModelFileError, match="do not fit"):
        Exemplars.read(tmp_path / "m.exemplars.npz", 7, 32, "space")
    (tmp_path / "junk.exemplars.npz").write_bytes(b"\x00garbage")
    with pytest.raises(ModelFileError, match="junk.exemplars.npz"):
        Exemplars.read(tmp_path / "junk.exemplars.npz", 6, 32, "space")
    with pytest.raises(ModelFileError, match="gone.exemplars.npz: exemplars missing"):
        Exemplars.read(tmp_path / "gone.exemplars.npz", 6, 32, "space")


def _kept_group(rng: np.random.Generator, look_alike: float) -> dict[str, np.ndarray]:
    """Embeddings as a held-out run keeps them: 4 catalogue labels, 2 held out, 4 views a photo."""
    dim = 32
    centres = _unit(rng.standard_normal((6, dim)))
    centres[4] = _unit(centres[0] + look_alike * _unit(rng.standard_normal(dim)))
    centres[5] = _unit(centres[1] + look_alike * _unit(rng.standard_normal(dim)))
    trl = np.repeat(np.arange(6), 12)
    val = np.repeat(np.arange(6), 6)
    train = _clusters(rng, centres, 12, 0.25)
    taught_photos = np.where(trl >= 4)[0]
    views = np.stack([_clusters(rng, train[i][None], 4, 0.05) for i in taught_photos])
    return {"train": train, "val": _clusters(rng, centres, 6, 0.35), "train_labels": trl,
            "val_labels": val, "taught_photos": taught_photos, "taught_views": views,
            "prototypes": centres[:4].astype(np.float32), "scale": np.array(32.0),
            "keep": np.arange(4), "out": np.array([4, 5])}


def test_teaching_figures_and_the_cross_group_bias() -> None:
    rng = np.random.default_rng(4)
    scales = (8.0, 16.0)
    groups = [teach_group(_kept_group(rng, a), shots=5, draws=3, scales=scales) for a in (0.6, 0.9, 1.2)]
    nb, nf = len(REFIT_BIASES), len(TEMPERATURE_FACTORS)
    for g in groups:
        r = g["refit"]
        assert r["settings"] == [[s, REFIT_EPOCHS, EXEMPLARS_PER_LABEL, b]
                                 for s in scales for b in REFIT_BIASES]
        assert g["taught_val_photos"] == 12 and r["half_taught"]["untaught_photos"] == 6
        assert all(0 <= v <= 1 for v in r["taught_top1"] + r["catalogue_top1"])
        half = r["half_taught"]
        flags = [np.array(r["taught_flagged"]), np.array(r["catalogue_flagged"]),
                 np.array(half["untaught_flagged"]), np.array(half["catalogue_flagged"])]
        for a in flags:
            assert a.shape == (len(scales) * nb, nf) and np.all((a >= 0) & (a <= 1))
            # a softer temperature flags more, never fewer
            assert np.all(np.diff(a, axis=1) >= -1e-12)
        for i in range(len(scales)):  # per scale, a bias favours taught items and makes them surer
            assert r["taught_top1"][i * nb + nb - 1] >= r["taught_top1"][i * nb]
            assert flags[0][i * nb + nb - 1, 0] <= flags[0][i * nb, 0]
        near, half_n = r["nearest"], r["nearest"]["half_taught"]
        for a in (near["taught_flagged"], near["catalogue_flagged"], half_n["untaught_flagged"],
                  half_n["catalogue_flagged"]):
            a = np.array(a)
            assert a.shape == (len(scales) * nb, nf) and np.all((a >= 0) & (a <= 1))
            assert np.all(np.diff(a, axis=1) >= -1e-12)  # a softer temperature lowers the probability
        u = g["unknown"]
        assert u["nearest"]["catalogue_flagged_without_teaching"] <= 0.15
        assert u["temperature"] > 0 and 0 < u["threshold"] <= 1
        assert u["catalogue_flagged_without_teaching"] <= 0.15
        assert u["temperature_factors"] == list(TEMPERATURE_FACTORS)
    cg = cross_group(groups)
    assert len(cg["groups"]) == 3 and 0 <= cg["taught_top1"] <= 1
    assert 0 <= cg["taught_flagged"] <= 1 and 0 <= cg["held_out_flagged_without_teaching"] <= 1
    assert 0 <= cg["untaught_flagged"] <= 1
    for i, row in enumerate(cg["groups"]):
        k = groups[i]["refit"]["settings"].index([row["scale"], row["steps"], row["per_label"], row["bias"]])
        f = TEMPERATURE_FACTORS.index(row["temperature_factor"])
        assert row["taught_top1"] == groups[i]["refit"]["taught_top1"][k]
        assert row["untaught_flagged"] == groups[i]["refit"]["half_taught"]["untaught_flagged"][k][f]
        # chosen on the other groups: there the catalogue pays at most 10 points
        others = [g for j, g in enumerate(groups) if j != i]
        n_c = sum(g["catalogue_val_photos"] for g in others)
        cat = sum(g["refit"]["catalogue_top1"][k] * g["catalogue_val_photos"] for g in others) / n_c
        base = sum(g["catalogue_top1_without_teaching"] * g["catalogue_val_photos"] for g in others) / n_c
        assert cat >= base - 0.10 - 1e-9 or k == 0
        # and at most 10 % of their produce (taught and catalogue) is flagged
        n_t = sum(g["taught_val_photos"] for g in others)
        produce = sum(g["refit"]["taught_flagged"][k][f] * g["taught_val_photos"]
                      + g["refit"]["catalogue_flagged"][k][f] * g["catalogue_val_photos"] for g in others)
        assert produce / (n_t + n_c) <= 0.10 + 1e-9 or f == 0
        # the stall's flag at the same setting and factor
        near = groups[i]["refit"]["nearest"]
        assert row["nearest_untaught_flagged"] == near["half_taught"]["untaught_flagged"][k][f]
        assert row["nearest_catalogue_flagged"] == near["catalogue_flagged"][k][f]
    scale, steps, per_label, bias = cg["setting_on_all_groups"]
    assert scale in scales and bias in REFIT_BIASES
    assert (steps, per_label) == (REFIT_EPOCHS, EXEMPLARS_PER_LABEL)
    assert cg["temperature_factor_on_all_groups"] in TEMPERATURE_FACTORS
    assert 0 <= cg["nearest_untaught_flagged"] <= 1
    assert 0 <= cg["nearest_held_out_flagged_without_teaching"] <= 1


def test_teaching_grid_over_refit_steps_and_exemplars_per_label() -> None:
    rng = np.random.default_rng(5)
    steps, per_labels = (10, 100), (3, 12)
    groups = [teach_group(_kept_group(rng, a), shots=5, draws=2, scales=(12.0,), steps=steps,
                          per_labels=per_labels) for a in (0.6, 1.2)]
    nb = len(REFIT_BIASES)
    for g in groups:
        settings = g["refit"]["settings"]
        assert settings == [[12.0, st, pl, b] for pl in per_labels for st in steps for b in REFIT_BIASES]
        assert np.array(g["refit"]["nearest"]["taught_flagged"]).shape[0] == len(settings)
        assert len(g["refit"]["taught_top1"]) == len(per_labels) * len(steps) * nb
    cg = cross_group(groups)
    for row in cg["groups"]:
        assert row["steps"] in steps and row["per_label"] in per_labels
    _, st, pl, _ = cg["setting_on_all_groups"]
    assert st in steps and pl in per_labels
    grid = refit_grid(groups)
    assert [(r["steps"], r["per_label"]) for r in grid] == [(st, pl) for pl in per_labels for st in steps]
    assert all(0 <= r["taught_top1"] <= 1 and r["bias"] in REFIT_BIASES for r in grid)
    n_c = sum(g["catalogue_val_photos"] for g in groups)
    base = sum(g["catalogue_top1_without_teaching"] * g["catalogue_val_photos"] for g in groups) / n_c
    assert all(r["catalogue_top1"] >= base - 0.10 - 1e-9 or r["bias"] == REFIT_BIASES[0] for r in grid)
    # the "before teaching" flag is the first exemplar count's, whatever the grid went through after it
    alone = teach_group(_kept_group(np.random.default_rng(6), 0.6), shots=5, draws=1, scales=(12.0,),
                        per_labels=(3,))
    both = teach_group(_kept_group(np.random.default_rng(6), 0.6), shots=5, draws=1, scales=(12.0,),
                       per_labels=(3, 12))
    assert both["unknown"]["nearest"] == alone["unknown"]["nearest"]
