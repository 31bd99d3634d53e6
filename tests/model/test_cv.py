"""Blocked folds over train + val, and ``wetmarket model cv`` on a tiny slice (seconds, 64 px)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge.cli import main


@pytest.fixture(scope="module")
def pool_and_folds(dataset_root: Path):  # type: ignore[no-untyped-def]
    from model.data import load_dataset
    from model.training.folds import blocked_folds, pooled

    pool = pooled(load_dataset(dataset_root))
    return pool, blocked_folds(pool, 5)


def _runs(pool, c: int, split: str) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The photos of class ``c`` in ``split``, in file-name order (the order they were taken in)."""
    idx = np.where((pool.labels == c) & (pool.split == split))[0]
    return np.array(sorted(idx, key=lambda i: pool.samples[i].path.as_posix()), np.int64)


def test_every_photo_is_held_out_once_and_never_trained_on_in_its_fold(pool_and_folds) -> None:  # type: ignore[no-untyped-def]
    pool, folds = pool_and_folds
    held = [folds.held_out(k) for k in range(folds.k)]
    assert sorted(np.concatenate(held).tolist()) == list(range(len(pool)))
    for k in range(folds.k):
        assert not set(folds.training(k)) & set(held[k])
        assert len(folds.training(k)) + len(held[k]) == len(pool)
        # no photo path on both sides either (the same file listed twice would leak)
        paths = {pool.samples[i].path for i in held[k]}
        assert not paths & {pool.samples[i].path for i in folds.training(k)}


def test_neighbours_stay_together(pool_and_folds) -> None:  # type: ignore[no-untyped-def]
    pool, folds = pool_and_folds
    for c in np.unique(pool.labels):
        tr = _runs(pool, c, "train")
        if len(tr):
            f = folds.fold[tr]
            # one contiguous run per fold: only the folds - 1 cuts split neighbours
            assert int(np.sum(f[1:] != f[:-1])) <= folds.k - 1
            assert list(f) == sorted(f)
            for b in np.unique(folds.block[tr]):
                members = np.where(folds.block[tr] == b)[0]
                assert len(set(f[members])) == 1 and np.all(np.diff(members) == 1)
        va = _runs(pool, c, "val")
        if len(va):
            # a class's val photos (another session) are one block, held out together
            assert len(set(folds.fold[va])) == 1 and len(set(folds.block[va])) == 1
    # blocks never straddle folds
    for b in np.unique(folds.block):
        assert len(set(folds.fold[folds.block == b])) == 1


def test_fewer_than_two_folds_is_refused(pool_and_folds) -> None:  # type: ignore[no-untyped-def]
    from model.training.folds import blocked_folds

    with pytest.raises(ValueError, match="at least 2 folds"):
        blocked_folds(pool_and_folds[0], 1)


def _cv(dataset_root: Path, run_dir: Path, *extra: str) -> int:
    return main(["model", "cv", "--data", str(dataset_root), "--run-dir", str(run_dir),
                 "--teachers", "efficientnet-lite0@64", "--folds", "2", "--epochs", "2", "--views", "0",
                 "--max-images", "60", "--threads", "1", *extra])


def test_cv_command_runs_fold_by_fold_and_resumes(dataset_root: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert _cv(dataset_root, tmp_path, "--only-folds", "0") == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["efficientnet-lite0@64#0"] == {"folds_missing": [1]}
    work = tmp_path / "efficientnet-lite0-64-s0"
    fold0 = (work / "fold-0.npz").stat().st_mtime_ns
    assert not (work / "fold-0.pt").exists()  # the epoch checkpoint goes once the fold is done

    # the rest, with a student distilled on the same folds from the teacher's networks of each fold
    assert _cv(dataset_root, tmp_path, "--student", "efficientnet-lite0@64") == 0
    assert (work / "fold-0.npz").stat().st_mtime_ns == fold0  # fold 0 was not run again
    report = json.loads((tmp_path / "cv-report.json").read_text())
    t = report["teachers"][0]
    assert t["chosen_epochs"] in (1, 2) and len(t["epochs_top1"]) == 2
    for recipe in ("linear", "finetuned"):
        s = t[recipe]
        assert len(s["per_fold_top1"]) == 2
        assert s["top1"] == pytest.approx(np.mean(s["per_fold_top1"]))
        assert 0 <= s["top1"] <= s["top5"] <= 1 and s["temperature"] > 0
    # the held-out logits cover every photo exactly once, each from the fold that held it out
    with np.load(work / "fold-0.npz") as a, np.load(work / "fold-1.npz") as b:
        assert not set(a["held_out"]) & set(b["held_out"])
        assert len(a["held_out"]) + len(b["held_out"]) == report["photos"]["train"] + report["photos"]["val"]
    assert "blocked folds over train + val" in (tmp_path / "cv-report.md").read_text()
    # the weight-space ensembles between the linear head's start and the last epoch, out of fold
    w = t["wise"]
    assert w["alphas"] == [0.25, 0.5, 0.75, 1.0]
    assert w["pooled_top1"][-1] == pytest.approx(t["epochs_top1"][-1])  # alpha 1: the last epoch
    assert all(0 <= x <= 1 for x in w["pooled_top1"]) and len(w["alphas_picked_per_fold"]) == 2
    with np.load(work / "fold-0.npz") as a:
        assert a["wise"].shape == (3, len(a["held_out"]), a["finetuned"].shape[-1])
        assert not np.allclose(a["wise"][0], a["finetuned"][-1])
    assert "weight-space ensembles" in (tmp_path / "cv-report.md").read_text()
    st = report["student"]
    assert len(st["finetuned"]["per_fold_top1"]) == 2 and st["chosen_epochs"] in (1, 2)
    assert (tmp_path / "student-efficientnet-lite0-64-s0" / "fold-1.npz").exists()
    assert "student efficientnet-lite0@64" in (tmp_path / "cv-report.md").read_text()
    from model.training.train import cv_figures

    quoted = cv_figures(tmp_path / "cv-report.json")  # what `model train --cv-report` quotes: the student
    assert quoted["recipe"] == "student efficientnet-lite0@64 seed 0"
    assert quoted["top1"] == st["finetuned"]["top1"] and quoted["folds"] == 2
    # the unknown flag was fitted on the folds' held-out photos and their fold's exemplars
    flag = st["finetuned"]["unknown_flag"]
    assert flag["near_std"] > 0 and flag["prob_std"] > 0
    crossfit = st["finetuned"]["unknown_flag_flagged_other_session_crossfit"]
    assert crossfit is None or 0 <= crossfit <= 1  # fitted without the rows it is measured on

    # the final model: the student trained on every photo, its calibration carried from the folds
    out = tmp_path / "shipped" / "recognizer.onnx"
    out.parent.mkdir()
    assert _cv(dataset_root, tmp_path, "--student", "efficientnet-lite0@64", "--final", str(out)) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["final"]["epochs"] == st["chosen_epochs"]
    fp32 = out.with_name("recognizer.fp32.onnx")  # the shipped layout: int8 at OUT, the float beside
    meta = json.loads(fp32.with_suffix(".json").read_text())
    assert meta["temperature"] == st["finetuned"]["temperature"]
    assert meta["unknown"]["nearest_exemplar"]["near_mean"] == flag["near_mean"]
    # the share it was fitted to take, as the folds chose it, and what they measured it to take
    assert meta["unknown"]["nearest_exemplar"]["share"] == st["finetuned"]["unknown_flag_share"]
    assert (meta["unknown"]["nearest_exemplar"]["flagged_other_session_nested"]
            == st["finetuned"]["unknown_flag_flagged_other_session_nested"])
    assert meta["metrics"]["cross_validated"]["top1"] == st["finetuned"]["top1"]
    assert "val_top1" not in meta["metrics"]  # val was trained on: never quoted
    q = out
    qmeta = json.loads(q.with_suffix(".json").read_text())
    assert qmeta["int8_shift"]["photos"] > 0
    assert qmeta["unknown"]["nearest_exemplar"]["share"] == meta["unknown"]["nearest_exemplar"]["share"]
    assert qmeta["unknown"]["nearest_exemplar"]["threshold"] == pytest.approx(
        flag["threshold"] + qmeta["int8_shift"]["unknown_score"])
    # the Mahalanobis flag, fitted on the student's out-of-fold scores, ships beside it: each copy
    # with its own means and precision of every photo it learnt from, the int8 threshold moved
    md = st["finetuned"]["flag_scores"]["MD"]
    assert meta["unknown"]["mahalanobis"]["near_mean"] == md["unknown_flag"]["near_mean"]
    assert meta["unknown"]["mahalanobis"]["threshold"] == md["unknown_flag"]["threshold"]
    assert meta["unknown"]["mahalanobis"]["share"] == md["unknown_flag_share"]
    assert meta["unknown"]["mahalanobis"]["photos"] == report["photos"]["train"] + report["photos"]["val"]
    assert qmeta["unknown"]["mahalanobis"]["threshold"] == pytest.approx(
        md["unknown_flag"]["threshold"] + qmeta["int8_shift"]["mahalanobis_score"])
    assert {meta["unknown"]["mahalanobis"]["file"], qmeta["unknown"]["mahalanobis"]["file"]} == {
        "recognizer.fp32.mahalanobis.npz", "recognizer.mahalanobis.npz"}
    assert str(out.with_name("recognizer.mahalanobis.npz")) in summary["final"]["files"]
    from model.recognizer import Recognizer

    photo = next((dataset_root / "train").rglob("*.jpg"))
    for model in (fp32, q):  # both load, flag by the Mahalanobis nearness, answer with the catalogue's labels
        rec = Recognizer.load(model, top_k=3)
        assert rec.mahalanobis is not None and rec.meta.mahalanobis_flag is not None
        r = rec.recognize(photo)
        assert len(r.top) == 3 and {label for label, _ in r.top} <= set(meta["labels"])
    for name in ("efficientnet-lite0-64-s0", "student-efficientnet-lite0-64-s0"):
        assert (tmp_path / name / "final-net.pt").exists()
    assert "**shipped**" in (tmp_path / "cv-report.md").read_text()

    # the teacher's weight-space ensemble at the alpha its folds chose, calibrated on its folds
    wise = tmp_path / "wise" / "recognizer.onnx"
    wise.parent.mkdir()
    assert _cv(dataset_root, tmp_path, "--final", str(wise), "--wise") == 0
    chosen = json.loads((tmp_path / "cv-report.json").read_text())["teachers"][0]["wise"]["chosen"]
    assert chosen["alpha"] in (0.25, 0.5, 0.75)
    wmeta = json.loads(wise.with_name("recognizer.fp32.json").read_text())
    assert wmeta["mode"] == "cv-finetune-wise" and wmeta["temperature"] == chosen["temperature"]
    assert f"alpha {chosen['alpha']:g}" in wmeta["metrics"]["cross_validated"]["recipe"]
    # the blend's alpha was chosen on the other-session rows: quoted is the nested figure
    assert chosen["nested_other_session_top1"] is not None
    assert wmeta["metrics"]["cross_validated"]["other_session_top1"] == chosen["nested_other_session_top1"]
    assert wmeta["unknown"]["nearest_exemplar"]["near_mean"] == chosen["unknown_flag"]["near_mean"]
    assert (tmp_path / "efficientnet-lite0-64-s0" / f"final-wise{chosen['alpha']:g}-net.pt").exists()
    r = Recognizer.load(wise, top_k=3).recognize(photo)
    assert len(r.top) == 3


def test_a_cv_report_without_finished_folds_is_refused(tmp_path: Path) -> None:
    from model import ModelError
    from model.training.train import cv_figures

    report = tmp_path / "cv-report.json"
    report.write_text(json.dumps({"config": {"folds": 5},
                                  "teachers": [{"teacher": "efficientnet-lite0@224", "seed": 0,
                                                "folds_missing": [3, 4]}]}))
    with pytest.raises(ModelError, match="no recipe has finished"):
        cv_figures(report)
    with pytest.raises(ModelError, match="cannot read"):
        cv_figures(tmp_path / "missing.json")


def test_student_learns_each_fold_from_that_folds_teacher(tmp_path: Path) -> None:
    """Fold k's soft labels come from the teachers' fold-k networks only (never saw fold k's part)."""
    from model.training.cv import CvConfig, student_targets

    cfg = CvConfig(data=tmp_path, run_dir=tmp_path, kd_temperature=1.0)
    work = tmp_path / "efficientnet-lite0-64-s0"
    work.mkdir()
    for k in range(2):
        views = np.zeros((3, 2, 4), np.float16)
        views[:, :, k] = 20.0  # fold k's teacher is sure of class k
        np.savez(work / f"fold-{k}.npz", views=views)
    teachers = [{"teacher": "efficientnet-lite0@64", "seed": 0}]
    for k in range(2):
        assert np.all(student_targets(cfg, teachers, k).argmax(1) == k)


@pytest.mark.parametrize(("args", "message"), [
    (["--teachers", "resnet@64"], "expected BACKBONE@SIZE"),
    (["--only-folds", "0,7"], "--only-folds"),
    (["--folds", "1"], "at least 2 folds"),
    (["--student", "efficientnet-lite9@64"], "expected BACKBONE@SIZE"),
    (["--wise"], "give --final"),
    (["--from-block", "-1"], "numbered from 0"),
    (["--mixup", "-0.2"], "--mixup -0.2"),
    (["--mixup", "nan"], "--mixup nan"),
    (["--mixstyle", "-1"], "--mixstyle -1"),
    (["--match", "-1", "--student", "efficientnet-lite0@224"], "--match -1"),
    (["--match", "0.4"], "give --student"),
    (["--match", "0.4", "--student", "efficientnet-lite1@240"], "same BACKBONE@SIZE"),
    (["--student-epochs", "9"], "give --student"),
    (["--mirror", "--wise", "--final", "x.onnx"], "--mirror with --wise"),
    (["--mirror", "unsure", "--wise", "--final", "x.onnx"], "--mirror with --wise"),
    (["--ood", "/nonexistent/packaged"], "not a folder of photos outside the catalogue"),
])
def test_cv_command_refuses_bad_input(dataset_root: Path, tmp_path: Path, args: list[str], message: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", "cv", "--data", str(dataset_root), "--run-dir", str(tmp_path), *args]) != 0
    assert message in capsys.readouterr().err
    assert not (tmp_path / "cv-report.json").exists()


def test_photos_outside_the_catalogue_are_flagged_as_the_produce_figure_is(
        dataset_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    """``--ood DIR``: each fold's network reads the photos of things outside the catalogue after
    every epoch; the report gives the share of them its unknown flag takes, the flag fitted on the
    other folds' other-session produce exactly as the produce figure's, at the shipped share and
    at costlier ones."""
    import torch

    from model.data import load_dataset
    from model.preprocess import read_photo, square_resize, to_tensor
    from model.training.cv import OOD_SHARES
    from model.training.network import RecognizerNet, build_trunk
    from model.training.ood import write_packaged_goods

    outside = tmp_path / "outside"
    photos = write_packaged_goods(outside / "shelf", 12)
    (outside / "notes.txt").write_text("not a photo")  # what is not a photo is not read
    run = tmp_path / "run"
    assert _cv(dataset_root, run) == 0  # folds run before: nothing read outside the catalogue
    assert _cv(dataset_root, run, "--ood", str(outside)) == 0
    assert "ran without the photos outside the catalogue" in caplog.text
    assert "ood" not in json.loads((run / "cv-report.json").read_text())["teachers"][0]["finetuned"]
    work = run / "efficientnet-lite0-64-s0"
    for f in work.glob("fold-*.npz"):
        f.unlink()
    assert _cv(dataset_root, run, "--ood", str(outside)) == 0
    t = json.loads((run / "cv-report.json").read_text())["teachers"][0]
    o = t["finetuned"]["ood"]
    assert o["photos"] == 12 and [a["share"] for a in o["at_share"]] == list(OOD_SHARES)
    # at the shipped share the produce side is the cross-fitted figure the report already gives
    assert o["at_share"][0]["produce_flagged"] == pytest.approx(
        t["finetuned"]["unknown_flag_flagged_other_session_crossfit"])
    for key in ("produce_flagged", "outside_flagged"):  # a costlier flag takes no less of either
        taken = [a[key] for a in o["at_share"]]
        assert taken == sorted(taken) and all(0 <= x <= 1 for x in taken)
    assert 0 <= o["auroc"] <= 1
    # the share chosen per fold without it, and what that flag takes of both
    from model.training.cv import FLAG_SHARES

    picked = o["nested"]["shares_per_fold"]
    assert len(picked) == 2 and set(picked) <= set(FLAG_SHARES)
    assert o["nested"]["produce_flagged"] == t["finetuned"]["unknown_flag_flagged_other_session_nested"]
    assert 0 <= o["nested"]["outside_flagged"] <= 1
    assert "photos outside the catalogue" in (run / "cv-report.md").read_text()
    # the other flag scores, fitted by the same code: the nearest exemplar's is the flag above
    from model.training.flags import SCORES

    scores = t["finetuned"]["flag_scores"]
    assert list(scores) == list(SCORES)
    assert scores["nearest exemplar"]["outside_nested"] == o["nested"]
    assert scores["nearest exemplar"]["auroc"] == pytest.approx(o["auroc"])
    assert scores["nearest exemplar"]["unknown_flag_flagged_other_session_nested"] == pytest.approx(
        t["finetuned"]["unknown_flag_flagged_other_session_nested"])
    for x in scores.values():
        assert 0 <= x["outside_nested"]["outside_flagged"] <= 1 and 0 <= x["auroc"] <= 1
    assert "in place of the nearest exemplar's cosine" in (run / "cv-report.md").read_text()
    # what a fold recorded is its network's reading of the photo (float16 activations: near)
    n_classes = len(load_dataset(dataset_root).classes)
    with np.load(work / "fold-1.npz") as z:
        assert z["ood_finetuned"].shape == (2, 12, n_classes) and z["ood_near"].shape == (12,)
        recorded = z["ood_finetuned"][-1]
        # the unit embeddings other flag scores are read from: held-out, training part, outside
        emb, train_emb, ood_emb = (z[k].astype(np.float32) for k in
                                   ("embedding", "train_embedding", "ood_embedding"))
        assert len(emb) == len(z["held_out"]) == len(z["near"]) and ood_emb.shape == (12, emb.shape[1])
        for e in (emb, train_emb, ood_emb):
            np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1, atol=2e-3)
        # the exemplars are some of the training part: none lies nearer than its nearest photo
        assert np.all(z["ood_near"] <= (ood_emb @ train_emb.T).max(1) + 2e-3)
        assert np.all(z["near"] <= (emb @ train_emb.T).max(1) + 2e-3)
    net = RecognizerNet(build_trunk("efficientnet-lite0", 64, pretrained=False), n_classes)
    net.load_state_dict(torch.load(work / "fold-1-net.pt"))
    with torch.no_grad():
        logits, embedding = net.eval()(torch.from_numpy(to_tensor([square_resize(read_photo(photos[3], 64),
                                                                                64)])))
    np.testing.assert_allclose(logits[0].numpy(), recorded[3], atol=0.05)
    np.testing.assert_allclose(embedding[0].numpy(), ood_emb[3], atol=0.01)

    empty = tmp_path / "empty"
    empty.mkdir()
    for f in work.glob("fold-*.npz"):
        f.unlink()
    assert _cv(dataset_root, run, "--ood", str(empty)) != 0
    assert "no photos" in capsys.readouterr().err


def test_cv_command_names_the_mirror_readings_it_knows(dataset_root: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["model", "cv", "--data", str(dataset_root), "--run-dir", str(tmp_path),
              "--mirror", "sometimes"])
    assert "choose from 'always', 'unsure'" in capsys.readouterr().err


def test_activation_cache_goes_on_where_it_stopped(dataset_root: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import model.preprocess
    from model.data import Dataset, load_dataset
    from model.training import cv
    from model.training.folds import pooled
    from model.training.network import RecognizerNet, build_trunk

    ds = load_dataset(dataset_root)
    pool = pooled(Dataset(ds.root, ds.classes, ds.train[:5], []))
    net = RecognizerNet(build_trunk("efficientnet-lite0", 64), len(ds.classes)).eval()
    whole = cv.activation_cache(pool, net, "efficientnet-lite0", 11, 64, 1, 0, tmp_path / "whole")

    monkeypatch.setattr(cv, "CHUNK", 2)
    real = model.preprocess.read_image
    calls: list[Path] = []

    def dies_on_the_fifth(path, target=224):  # type: ignore[no-untyped-def]
        calls.append(path)
        if len(calls) == 5:
            raise KeyboardInterrupt  # the run is stopped in its third chunk
        return real(path, target)

    monkeypatch.setattr(model.preprocess, "read_image", dies_on_the_fifth)
    with pytest.raises(KeyboardInterrupt):
        cv.activation_cache(pool, net, "efficientnet-lite0", 11, 64, 1, 0, tmp_path / "cut")
    assert [p.read_text() for p in (tmp_path / "cut").glob("*.done")] == ["4"]
    read_again: list[Path] = []

    def counts(path, target=224):  # type: ignore[no-untyped-def]
        read_again.append(path)
        return real(path, target)

    monkeypatch.setattr(model.preprocess, "read_image", counts)
    again = cv.activation_cache(pool, net, "efficientnet-lite0", 11, 64, 1, 0, tmp_path / "cut")
    assert read_again == [pool.samples[4].path]  # only the photo after the last saved chunk
    assert np.array_equal(np.asarray(again), np.asarray(whole))
    assert not list((tmp_path / "cut").glob("*.done"))


def test_nested_epochs_choose_each_folds_epoch_without_that_fold() -> None:
    """Fold 0 is right only after epoch 1, the other folds only after epoch 2: each fold is read
    at the epoch the other folds prefer, so fold 0 counts as wrong."""
    from model.training.cv import nested_epochs
    from model.training.folds import Folds

    n, c, k = 40, 4, 4
    labels = np.arange(n) % c
    fold = np.arange(n) % k
    folds = Folds(fold=fold, block=np.arange(n), k=k)
    split = np.where(np.arange(n) < 20, "train", "val")
    right, wrong = np.eye(c)[labels] * 5, np.eye(c)[(labels + 1) % c] * 5
    fine = np.stack([np.where((fold == 0)[:, None], right, wrong),
                     np.where((fold == 0)[:, None], wrong, right)]).astype(np.float32)
    out = nested_epochs(fine, labels, folds, split)
    assert out["epochs_picked_per_fold"] == [2, 2, 2, 2]
    assert out["top1"] == pytest.approx(0.75)  # fold 0 wrong at the epoch the others chose
    assert out["other_session_top1"] == pytest.approx(15 / 20)
    # with fold 0 the only fold that improves at epoch 1 and two folds only, the nested pick differs
    folds2 = Folds(fold=np.arange(n) % 2, block=np.arange(n), k=2)
    fine2 = np.stack([np.where((np.arange(n) % 2 == 0)[:, None], right, wrong),
                      np.where((np.arange(n) % 2 == 0)[:, None], wrong, right)]).astype(np.float32)
    out2 = nested_epochs(fine2, labels, folds2, split)
    assert out2["epochs_picked_per_fold"] == [2, 1]  # each fold's epoch is the other's best
    assert out2["top1"] == 0.0  # the honest figure: each fold read at the epoch it did not pick


def test_deeper_fine_tune_starts_at_the_second_smallest_scale() -> None:
    from model.training.cv import CvConfig, first_trainable_block, work_dir
    from model.training.network import build_trunk

    trunk = build_trunk("efficientnet-lite0", 224, pretrained=False)
    # Lite0's blocks end at 112, 56, 56, 28, 28, 14 x 6, 7 x 5 pixels
    assert first_trainable_block(trunk, 224) == 11
    assert first_trainable_block(trunk, 224, scales=2) == 5
    assert first_trainable_block(trunk, 224, scales=3) == 3
    # each depth keeps its own fold checkpoints: a deeper run never resumes a shallower one's
    shallow = work_dir(CvConfig(data=Path("d"), run_dir=Path("r")), "efficientnet-lite0@224", 0)
    deep = work_dir(CvConfig(data=Path("d"), run_dir=Path("r"), scales=2), "efficientnet-lite0@224", 0)
    assert shallow != deep
    last = work_dir(CvConfig(data=Path("d"), run_dir=Path("r"), from_block=15), "efficientnet-lite0@224", 0)
    assert last not in (shallow, deep)


def test_mixup_is_a_recipe_of_its_own_and_changes_what_the_fold_learns(dataset_root: Path,
                                                                         tmp_path: Path) -> None:
    assert _cv(dataset_root, tmp_path, "--only-folds", "0") == 0
    assert _cv(dataset_root, tmp_path, "--only-folds", "0", "--mixup", "0.4") == 0
    plain, mixed = tmp_path / "efficientnet-lite0-64-s0", tmp_path / "efficientnet-lite0-64-s0-mix0.4"
    with np.load(plain / "fold-0.npz") as a, np.load(mixed / "fold-0.npz") as b:
        assert np.array_equal(a["held_out"], b["held_out"])
        assert np.array_equal(a["linear"], b["linear"])  # the same start: the linear head is not mixed
        assert np.isfinite(b["finetuned"]).all() and not np.allclose(a["finetuned"], b["finetuned"])
    assert len(list((tmp_path / "cache").glob("acts-*.npy"))) == 1  # one cache for both recipes


def test_mix_style_keeps_each_photos_content_and_takes_its_mates_statistics() -> None:
    from model.training.cv import mix_style

    rng = np.random.default_rng(0)
    # two photos, same pattern, another light: the second is the first scaled and shifted
    base = rng.normal(size=(1, 3, 4, 4)).astype(np.float32)
    x = np.concatenate([base, base * 3 + 5])
    out = mix_style(x, np.random.default_rng(1), 0.1)
    assert out.shape == x.shape and out.dtype == np.float32
    # the content (each channel normalised) is unchanged for both photos
    def norm(a: np.ndarray) -> np.ndarray:
        return (a - a.mean((2, 3), keepdims=True)) / a.std((2, 3), keepdims=True)
    assert np.allclose(norm(out), norm(x), atol=1e-4)
    # the statistics moved between the two photos' (the mate of each is one of the two)
    mu = out.mean((2, 3))
    assert np.all((mu >= x.mean((2, 3)).min(0) - 1e-4) & (mu <= x.mean((2, 3)).max(0) + 1e-4))
    many = mix_style(np.repeat(x, 16, 0), np.random.default_rng(2), 0.1)
    assert not np.allclose(many.mean((2, 3)), np.repeat(x, 16, 0).mean((2, 3)), atol=1e-2)


def test_mixstyle_is_a_recipe_of_its_own(dataset_root: Path, tmp_path: Path) -> None:
    assert _cv(dataset_root, tmp_path, "--only-folds", "0", "--mixstyle", "0.1") == 0
    with np.load(tmp_path / "efficientnet-lite0-64-s0-ms0.1" / "fold-0.npz") as b:
        assert np.isfinite(b["finetuned"]).all()
    assert "MixStyle Beta(0.1, 0.1)" in (tmp_path / "cv-report.md").read_text()


def test_a_recipe_on_centre_crops_ships_its_crop_and_exemplars_read_the_same_way(
        dataset_root: Path, tmp_path: Path) -> None:
    from model.data import load_dataset
    from model.recognizer import Recognizer
    from model.refit import Exemplars, exemplar_rows
    from model.training.cv import slice_dataset

    out = tmp_path / "shipped" / "recognizer.onnx"
    out.parent.mkdir()
    assert _cv(dataset_root, tmp_path, "--crop", "0.8") == 0
    assert (tmp_path / "efficientnet-lite0-64-s0-c0.8" / "fold-1.npz").exists()  # a recipe of its own
    assert json.loads((tmp_path / "cv-report.json").read_text())["config"]["crop"] == 0.8
    assert _cv(dataset_root, tmp_path, "--crop", "0.8", "--final", str(out)) == 0
    for model in (out, out.with_name("recognizer.fp32.onnx")):
        meta = json.loads(model.with_suffix(".json").read_text())
        assert meta["input"]["crop"] == 0.8
        rec = Recognizer.load(model)
        assert rec.meta.crop == 0.8
        # the shipped catalogue exemplars were embedded as the stall reads a photo: its centre
        ex = Exemplars.read(model.with_name(meta["teach"]["exemplars"]), len(meta["labels"]),
                            meta["embedding_dim"], meta["embedding_space"])
        ds = slice_dataset(load_dataset(dataset_root), 60)
        first = exemplar_rows(np.array([s.label for s in ds.train]), range(len(ds.classes)))[0]
        _, emb = rec.embed(ds.train[first].path)
        assert float(np.max(ex.embeddings @ emb)) > 0.999


def test_a_recipe_read_with_its_mirror_ships_the_reading_its_folds_measured(
        dataset_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--mirror``: each fold's network also reads its held-out photos mirrored (the cached
    activations of the flipped centre view), the logits averaged with the plain reading's; the
    report compares the two photo by photo, and ``--final`` ships the mirrored reading's
    temperature and flag with ``input.mirror``, which the stall's recogniser then applies."""
    import torch

    from model import ModelFileError
    from model.data import load_dataset
    from model.metrics import softmax
    from model.preprocess import decode_target, preprocess, read_image, read_photo, square_resize, to_tensor
    from model.recognizer import ModelRunner, Recognizer, mirror_average
    from model.training.cv import slice_dataset
    from model.training.folds import pooled
    from model.training.network import RecognizerNet, build_trunk

    out = tmp_path / "shipped" / "recognizer.onnx"
    out.parent.mkdir()
    assert _cv(dataset_root, tmp_path) == 0  # folds run before: nothing mirrored to ship
    assert _cv(dataset_root, tmp_path, "--mirror", "--final", str(out)) != 0
    assert "ran without the mirrored reading" in capsys.readouterr().err
    work = tmp_path / "efficientnet-lite0-64-s0"
    for f in work.glob("fold-*.npz"):
        f.unlink()
    assert _cv(dataset_root, tmp_path, "--mirror") == 0
    t = json.loads((tmp_path / "cv-report.json").read_text())["teachers"][0]
    pool = pooled(slice_dataset(load_dataset(dataset_root), 60))
    with np.load(work / "fold-0.npz") as z:
        rows, plain, mirrored = z["held_out"], z["finetuned"][-1], z["finetuned_mirror"][-1]
        assert z["near_mirror"].shape == z["near"].shape
    assert not np.allclose(plain, mirrored)
    # the fold's own network on the photo and on its mirror, averaged: what the folds recorded
    # (their activations are cached in float16, so near, not equal)
    net = RecognizerNet(build_trunk("efficientnet-lite0", 64, pretrained=False),
                        len(load_dataset(dataset_root).classes))
    net.load_state_dict(torch.load(work / "fold-0-net.pt"))
    centre = square_resize(read_photo(pool.samples[int(rows[0])].path, 64), 64)
    with torch.no_grad():
        logits = net.eval()(torch.from_numpy(to_tensor([centre, np.ascontiguousarray(centre[:, ::-1])])))[0]
    np.testing.assert_allclose(mirror_average(logits[0].numpy(), logits[1].numpy()), mirrored[0], atol=0.05)
    # photo-by-photo counts that add up to the difference of the two readings' top-1
    fine = np.zeros((len(pool), plain.shape[1]), np.float32)
    fine_m = np.zeros_like(fine)
    chosen = t["chosen_epochs"] - 1
    for k in range(2):
        with np.load(work / f"fold-{k}.npz") as z:
            fine[z["held_out"]], fine_m[z["held_out"]] = z["finetuned"][chosen], z["finetuned_mirror"][chosen]
    pair = t["finetuned_mirror"]["paired_with_plain"]["pooled"]
    right, right_m = fine.argmax(1) == pool.labels, fine_m.argmax(1) == pool.labels
    assert pair["only_first"] - pair["only_second"] == int(right_m.sum()) - int(right.sum())
    assert pair["only_first"] == int(np.sum(right_m & ~right)) and 0 <= pair["p"] <= 1
    assert "read with each photo's mirror" in (tmp_path / "cv-report.md").read_text()

    assert _cv(dataset_root, tmp_path, "--mirror", "--final", str(out)) == 0
    fp32 = out.with_name("recognizer.fp32.onnx")
    meta = json.loads(fp32.with_suffix(".json").read_text())
    assert meta["input"]["mirror"] is True
    shipped, fitted = meta["unknown"]["nearest_exemplar"], t["finetuned_mirror"]["unknown_flag"]
    assert meta["temperature"] == t["finetuned_mirror"]["temperature"]
    assert all(shipped[k] == v for k, v in fitted.items() if k != "score")
    assert fitted["near_mean"] != t["finetuned"]["unknown_flag"]["near_mean"]  # not the plain reading's
    rec = Recognizer.load(fp32)
    assert rec.meta.mirror
    photo = pool.samples[0].path
    logits, emb = rec.embed(photo)
    runner = ModelRunner(fp32, 64)
    x = preprocess(read_image(photo, decode_target(64, 1.0)), 64)
    (l0, e0), (l1, e1) = runner.run(x), runner.run(np.ascontiguousarray(x[..., ::-1]))
    np.testing.assert_allclose(logits, mirror_average(l0[0], l1[0]), atol=1e-4)
    np.testing.assert_allclose(emb, mirror_average(e0[0], e1[0], normalise=True), atol=1e-4)
    assert abs(float(np.linalg.norm(emb)) - 1) < 1e-5
    # metadata that garbles the switch is refused by name
    meta["input"]["mirror"] = "yes"
    fp32.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="input.mirror"):
        Recognizer.load(fp32)

    # the mirror read only where the plain reading is least sure: a quarter of the other sessions
    u = t["finetuned_mirror_unsure"]
    assert u["plain_temperature"] == t["finetuned"]["temperature"]
    twice = softmax(fine, u["plain_temperature"]).max(1) < u["when_below"]
    other = pool.split == "val"
    assert u["read_twice"]["other_session"] == pytest.approx(twice[other].mean())
    assert 0.1 <= twice[other].mean() <= 0.3 and u["read_twice"]["pooled"] == pytest.approx(twice.mean())
    right_mixed = np.where(twice[:, None], fine_m, fine).argmax(1) == pool.labels
    pair = u["paired_with_plain"]["pooled"]
    assert pair["only_first"] - pair["only_second"] == int(right_mixed.sum()) - int(right.sum())
    assert "the mirror read only when" in (tmp_path / "cv-report.md").read_text()
    assert _cv(dataset_root, tmp_path, "--mirror", "unsure", "--final", str(out)) == 0
    meta = json.loads(fp32.with_suffix(".json").read_text())
    assert meta["input"]["mirror"] == {k: u[k] for k in ("when_below", "plain_temperature")}
    assert meta["temperature"] == u["temperature"]
    assert meta["unknown"]["nearest_exemplar"]["threshold"] == u["unknown_flag"]["threshold"]
    # the stall reads a sure photo once and an unsure one with its mirror; the rule moved to the
    # middle of these photos so that both kinds are read here
    runner = ModelRunner(fp32, 64)
    photos = [s.path for s in pool.samples[:12]]
    xs = [preprocess(read_image(photo, decode_target(64, 1.0)), 64) for photo in photos]
    plain_runs = [runner.run(x) for x in xs]
    sure = [float(softmax(lg, u["plain_temperature"]).max()) for lg, _ in plain_runs]
    meta["input"]["mirror"]["when_below"] = float(np.median(sure))
    fp32.with_suffix(".json").write_text(json.dumps(meta))
    rec = Recognizer.load(fp32)
    assert rec.meta.mirror_below == float(np.median(sure))
    read_twice = []
    for photo, x, (l0, e0), p in zip(photos, xs, plain_runs, sure, strict=True):
        logits, emb = rec.embed(photo)
        if p < rec.meta.mirror_below:
            l1, e1 = runner.run(np.ascontiguousarray(x[..., ::-1]))
            l0, e0 = mirror_average(l0, l1), mirror_average(e0, e1, normalise=True)
        np.testing.assert_allclose(logits, l0[0], atol=1e-4)
        np.testing.assert_allclose(emb, e0[0], atol=1e-4)
        read_twice.append(p < rec.meta.mirror_below)
    assert 0 < sum(read_twice) < len(read_twice)
    # a rule that is not a probability is refused by name
    meta["input"]["mirror"]["when_below"] = 1.5
    fp32.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="input.mirror"):
        Recognizer.load(fp32)


def test_the_flags_share_is_chosen_out_of_fold_and_measured_on_a_fold_the_choice_never_saw() -> None:
    """Folds 1-4 hold the same 40 photos; fold 0 holds them too but far from every exemplar (a
    session unlike the rest).  Every photo reads alike, so the flag's score orders them by that
    distance.  Chosen on folds 1-4 alone, the ceiling itself is safe (they are exchangeable) and
    that flag takes all of fold 0; chosen with fold 0 among them, no share keeps the cross-fitted
    figure under the ceiling, so the smallest is taken, and it takes nothing of the others.  The
    nested figure must show fold 0 lost, which no choice made without it could see."""
    from model.training.cv import FLAG_SHARES, choose_flag_share, nested_flag
    from model.training.folds import Folds

    m, k = 40, 5
    rng = np.random.default_rng(0)
    near_one = rng.permutation(np.linspace(0.3, 0.9, m))
    near = np.concatenate([near_one - 10, *[near_one] * (k - 1)]).astype(np.float32)
    labels = np.tile(np.arange(m) % 3, k)
    oof = np.tile(np.array([[2.0, 1.0, 0.0]], np.float32), (m * k, 1))
    folds = Folds(fold=np.repeat(np.arange(k), m), block=np.repeat(np.arange(k), m), k=k)
    other = np.ones(m * k, bool)
    assert FLAG_SHARES[0] == 0.02 and FLAG_SHARES[-1] == 0.05
    assert choose_flag_share(oof, labels, near, folds.fold != 0, folds) == 0.05
    assert choose_flag_share(oof, labels, near, other, folds) == 0.02  # fold 0 is always a fifth
    # the photos outside the catalogue: each fold's network reads fold 1's photos again
    ood = (np.tile(oof[:m], (k, 1, 1)), np.tile(near_one.astype(np.float32), (k, 1)))
    out = nested_flag(oof, labels, near, other, folds, ood)
    assert out["shares_per_fold"] == [0.05, 0.02, 0.02, 0.02, 0.02]
    assert out["produce_flagged"] == pytest.approx(m / (m * k))  # all of fold 0, none of the rest
    # fold 0's flag (at 5 %, 8th of 160 scores) takes the farthest of the 40; the others' none
    assert out["outside_flagged"] == pytest.approx(1 / (m * k))
    # no other-session rows: the ceiling, and no figure rather than one read on pooled rows
    assert choose_flag_share(oof, labels, near, np.zeros(m * k, bool), folds) == 0.05
    assert nested_flag(oof, labels, near, np.zeros(m * k, bool), folds) == {}


def test_the_ensembles_nested_figure_fits_its_members_without_the_fold_it_reads() -> None:
    """Member B is sure and right on folds 1 and 2 and sure and wrong on fold 0.  Fitted on every
    row, B's temperature flattens it and the sure member A carries fold 0 (all right); fitted
    without fold 0, B looks perfect, is sharpened, and outvotes A there: the nested figure must
    show that fold 0 is lost, as a stall would see it."""
    from model.training.cv import nested_ensemble_top1
    from model.training.folds import Folds

    n = 30
    fold = np.repeat(np.arange(3), n)
    labels = np.zeros(3 * n, np.int64)
    split = np.array(["val"] * (3 * n))
    a = np.tile([1.0, 0.0], (3 * n, 1))
    b = np.tile([5.0, 0.0], (3 * n, 1))
    b[fold == 0] = [0.0, 5.0]
    folds = Folds(fold=fold, block=fold.copy(), k=3)
    assert nested_ensemble_top1([a, b], labels, folds, split) == pytest.approx(2 / 3)
    assert nested_ensemble_top1([a, a.copy()], labels, folds, split) == 1.0
    # no other-session rows: no figure, rather than one read on the pooled rows
    assert nested_ensemble_top1([a, b], labels, folds, np.array(["train"] * (3 * n))) is None


def test_a_matched_student_learns_each_fold_from_that_folds_teacher_networks(
        dataset_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    assert _cv(dataset_root, tmp_path) == 0  # the teacher's folds, each fold's network kept
    teacher = tmp_path / "efficientnet-lite0-64-s0"
    args = ("--student", "efficientnet-lite0@64", "--match", "0", "--kd-alpha", "1", "--student-epochs", "3")
    work = tmp_path / "student-efficientnet-lite0-64-s0-fm0-e3"  # a recipe of its own

    def student_folds() -> list[np.ndarray]:
        shutil.rmtree(work, ignore_errors=True)
        assert _cv(dataset_root, tmp_path, *args) == 0
        out = []
        for k in range(2):
            with np.load(work / f"fold-{k}.npz") as z:
                out.append(z["finetuned"])
        return out

    before = student_folds()
    assert before[0].shape[0] == 3  # the student's own schedule, the teacher's was 2 epochs
    report = json.loads((tmp_path / "cv-report.json").read_text())
    assert report["teachers"][0]["chosen_epochs"] in (1, 2) and len(report["student"]["epochs_top1"]) == 3
    assert "matching its teachers on each batch it sees" in (tmp_path / "cv-report.md").read_text()
    # fold 1's teacher made unsure of everything (its cosine head's scale near 0): only the student's
    # fold 1 learns anything else, so each fold reads its own fold's teacher, on the student's batches
    state = torch.load(teacher / "fold-1-net.pt")
    state["log_scale"] = torch.tensor(-5.0)
    torch.save(state, teacher / "fold-1-net.pt")
    after = student_folds()
    assert np.allclose(before[0], after[0]) and not np.allclose(before[1], after[1])
    # the final student matches the teachers' final networks, trained on every photo first
    out = tmp_path / "shipped" / "recognizer.onnx"
    out.parent.mkdir()
    assert _cv(dataset_root, tmp_path, *args, "--final", str(out)) == 0
    assert (teacher / "final-net.pt").exists() and (work / "final-net.pt").exists()
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["mode"] == "cv-student" and meta["metrics"]["cross_validated"]["top1"] == pytest.approx(
        json.loads((tmp_path / "cv-report.json").read_text())["student"]["finetuned"]["top1"])
    # a teacher whose networks were not kept (folds run by older code) is refused, saying which
    (teacher / "fold-0-net.pt").unlink()
    shutil.rmtree(work)
    capsys.readouterr()
    assert _cv(dataset_root, tmp_path, *args) != 0
    assert "fold-0-net.pt is missing" in capsys.readouterr().err


def test_a_weight_soup_averages_the_teachers_fold_networks_and_is_read_as_a_teacher(
        dataset_root: Path, tmp_path: Path) -> None:
    """Teachers of one BACKBONE@SIZE: each fold's networks averaged weight by weight, read on the
    fold's held-out photos with its own exemplars and flag.  A soup of one is its teacher's last
    epoch; of two, neither teacher; of different shapes, none."""
    import torch

    from model.data import load_dataset
    from model.training.cv import CvConfig, slice_dataset, soup_state, weight_soup
    from model.training.folds import blocked_folds, pooled
    from model.training.ood import write_packaged_goods

    a = {"w": torch.tensor([1.0, 3.0]), "n": torch.tensor(4)}
    b = {"w": torch.tensor([3.0, 5.0]), "n": torch.tensor(9)}
    mean = soup_state([a, b])
    assert torch.equal(mean["w"], torch.tensor([2.0, 4.0])) and int(mean["n"]) == 4  # counters: the first's

    outside = tmp_path / "outside"
    write_packaged_goods(outside, 6)
    run = tmp_path / "run"
    two = "efficientnet-lite0@64,efficientnet-lite0@64"
    assert _cv(dataset_root, run, "--teachers", two, "--ood", str(outside)) == 0
    report = json.loads((run / "cv-report.json").read_text())
    sp = report["soup"]
    assert sp["teachers"] == ["efficientnet-lite0@64#0", "efficientnet-lite0@64#1"]
    assert 0 <= sp["top1"] <= sp["top5"] <= 1 and sp["unknown_flag"]["near_std"] > 0
    assert sp["ood"]["photos"] == 6 and len(sp["paired_with_teachers"]) == 2
    md = (run / "cv-report.md").read_text()
    assert "weight soup of efficientnet-lite0@64#0, efficientnet-lite0@64#1" in md
    works = [run / "efficientnet-lite0-64-s0", run / "efficientnet-lite0-64-s1"]
    with np.load(run / f"soup-{works[0].name}+{works[1].name}.npz") as z:
        soup2 = z["logits"]

    ds = load_dataset(dataset_root)
    cfg = CvConfig(data=dataset_root, run_dir=run, teachers=("efficientnet-lite0@64",), folds=2, epochs=2,
                   views=0, max_images=60, threads=1)
    pool = pooled(slice_dataset(ds, 60))  # the slice the command ran on
    folds = blocked_folds(pool, 2)
    one = weight_soup(cfg, report["teachers"][:1], pool, folds, len(ds.classes))
    assert one is not None
    with np.load(run / f"soup-{works[0].name}.npz") as z:
        soup1 = z["logits"]
    for k in range(2):
        with np.load(works[0] / f"fold-{k}.npz") as z:
            # the teacher's last epoch, as its fold recorded it (float16 activations both ways)
            np.testing.assert_allclose(soup1[z["held_out"]], z["finetuned"][-1], atol=1e-4)
            assert not np.allclose(soup2[z["held_out"]], z["finetuned"][-1], atol=1e-3)
    # different shapes cannot be averaged: no soup, and no error
    mixed = [dict(report["teachers"][0]), {**report["teachers"][1], "teacher": "efficientnet-lite1@64"}]
    assert weight_soup(cfg, mixed, pool, folds, len(ds.classes)) is None
