"""The training pipeline on a tiny slice, and the CLI commands of this package."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.cli import main


@pytest.fixture(scope="module")
def tiny_model(dataset_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model trained for seconds: 10 photos, 64 px, one augmented view, int8 too."""
    from model.training.head import HeadConfig
    from model.training.train import TrainConfig, run

    out = tmp_path_factory.mktemp("tiny")
    cfg = TrainConfig(data=dataset_root, out=out / "tiny.onnx", run_dir=out / "run", size=64,
                      aug_views=1, folds=0, head=HeadConfig(epochs=2), int8=True, threads=2,
                      max_images=10)
    report = run(cfg)
    assert set(report["val"]) == {1, 5}
    return cfg.out


def test_training_writes_model_metadata_and_report(tiny_model: Path) -> None:
    run_dir = tiny_model.parent / "run"
    meta = json.loads(tiny_model.with_suffix(".json").read_text())
    assert meta["input"] == {**meta["input"], "size": 64, "mean": 127.0, "std": 128.0, "color": "RGB"}
    assert len(meta["training_list_sha256"]) == 64 and meta["version"]
    assert (run_dir / "report.md").read_text().startswith("# Recognizer training report")
    assert (run_dir / "confusion.png").stat().st_size > 1000
    assert (run_dir / "model.pt").exists()
    assert tiny_model.with_name("tiny.int8.onnx").exists()


def test_training_is_reproducible(dataset_root: Path, tiny_model: Path, tmp_path: Path) -> None:
    from model.training.head import HeadConfig
    from model.training.train import TrainConfig, run

    cfg = TrainConfig(data=dataset_root, out=tmp_path / "again.onnx", run_dir=tmp_path / "run",
                      size=64, aug_views=1, folds=0, head=HeadConfig(epochs=2), threads=2,
                      max_images=10)
    run(cfg)
    a = json.loads(tiny_model.with_suffix(".json").read_text())
    b = json.loads(cfg.out.with_suffix(".json").read_text())
    assert a["temperature"] == b["temperature"] and a["scale"] == b["scale"]
    assert a["training_list_sha256"] == b["training_list_sha256"]


def test_tiny_model_runs_without_torch_api(tiny_model: Path, val_photos: list[tuple[Path, str]]) -> None:
    from model.recognizer import Recognizer

    for path in (tiny_model, tiny_model.with_name("tiny.int8.onnx")):
        rec = Recognizer.load(path, top_k=3)
        r = rec.recognize(val_photos[0][0])
        assert len(r.top) == 3 and r.embedding.shape == (rec.meta.embedding_dim,)


def test_export_command_rewrites_onnx(tiny_model: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["model", "export", str(tiny_model.parent / "run" / "model.pt"),
               "--out", str(tmp_path / "x.onnx")])
    assert rc == 0
    assert (tmp_path / "x.onnx").exists() and (tmp_path / "x.json").exists()
    assert "written" in capsys.readouterr().out


def test_recognize_command_prints_one_json_per_image(
    shipped_model: Path, val_photos: list[tuple[Path, str]], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"junk")
    images = [str(p) for p, _ in val_photos[:2]]
    rc = main(["recognize", "--top", "4", *images, str(bad)])
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    assert [o["image"] for o in lines] == images
    for o in lines:
        assert set(o) == {"image", "top", "unknown", "ms"}
        assert len(o["top"]) == 4 and set(o["top"][0]) == {"label", "score"}
    assert rc == 1 and "bad.jpg" in err and err.count("\n") == 1


def test_enroll_then_recognize_with_gallery(shipped_model: Path, val_photos: list[tuple[Path, str]],
                                            tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(val_photos[0][0])
    gal = str(tmp_path / "gallery")
    assert main(["enroll", "--gallery", gal, "--label", "Stall-Special", path]) == 0
    assert json.loads(capsys.readouterr().out)["added"] == 1
    # enroll refit the classifier and left it beside the gallery for the next command
    assert (tmp_path / "gallery" / "refit-cache.npz").is_file()
    assert main(["recognize", "--gallery", gal, path]) == 0
    o = json.loads(capsys.readouterr().out)
    assert o["top"][0]["label"] == "Stall-Special"
    assert main(["model", "gallery", "--gallery", gal, "--export", str(tmp_path / "g.npz")]) == 0
    assert main(["model", "gallery", "--gallery", str(tmp_path / "g2"), "--import",
                 str(tmp_path / "g.npz")]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["imported"] == 4


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["recognize", "--model", str(tmp_path / "none.onnx"), str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1 and "none.onnx" in err and err.count("\n") == 1


def test_evaluate_command(shipped_model: Path, dataset_root: Path, tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["model", "evaluate", "--data", str(dataset_root), "--max-images", "6",
               "--out", str(tmp_path)])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 6 and 0 <= report["top1"] <= 1
    assert (tmp_path / "confusion.png").exists()
    assert np.isfinite(report["ms_p50"])


def test_distillation_on_a_tiny_slice(dataset_root: Path, tmp_path: Path) -> None:
    """Mode distill end to end: view bank, ONNX teachers, out-of-fold soft labels, student, export."""
    import numpy as np

    from model.recognizer import Recognizer
    from model.training.head import HeadConfig
    from model.training.train import TrainConfig, run

    cfg = TrainConfig(data=dataset_root, out=tmp_path / "d.onnx", run_dir=tmp_path / "run", size=64,
                      mode="distill", teachers=("efficientnet-lite0@64", "efficientnet-lite1@96"),
                      bank_views=1, folds=2, epochs=1, head=HeadConfig(epochs=2), threads=2,
                      max_images=10)
    report = run(cfg)
    assert set(report["teachers"]) >= {"efficientnet-lite0@64", "efficientnet-lite1@96", "ensemble_val"}
    assert len(report["distill_log"]) == 1 and np.isfinite(report["distill_log"][0]["loss"])
    bank = sorted((cfg.run_dir / "features").glob("bank-*-train.npy"))
    assert len(bank) == 1 and np.load(bank[0], mmap_mode="r").shape[1:] == (2, 96, 96, 3)
    meta = json.loads(cfg.out.with_suffix(".json").read_text())
    assert meta["mode"] == "distill" and meta["scale"] == pytest.approx(32.0)
    rec = Recognizer.load(cfg.out, top_k=3)
    photo = next(iter(cfg.data.glob("val/*/*/*/*.jpg")))
    r = rec.recognize(photo)
    assert len(r.top) == 3 and r.top[0][0] in meta["labels"]
    # the export ships catalogue exemplars, and teaching refits the classifier with them
    assert meta["teach"]["exemplars"] == "d.exemplars.npz" and rec.exemplars is not None
    # and the unknown flag that adds the nearest exemplar, fitted on this file's own val outputs
    flag = meta["unknown"]["nearest_exemplar"]
    assert flag["prob_std"] > 0 and flag["near_std"] > 0 and rec.meta.unknown_flag is not None
    rec.teach("Dragon-Fruit", photo, save=False)
    assert rec.recognize(photo).top[0][0] == "Dragon-Fruit"


def test_train_rejects_a_bad_teacher(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["model", "train", "--mode", "distill", "--teachers", "resnet50@224"])
    err = capsys.readouterr().err
    assert rc == 1 and "resnet50@224" in err and "Traceback" not in err


def test_held_out_group_teaching_experiment(tmp_path: Path) -> None:
    """--held-out-group: a student without one group's classes is taught them; a figure comes out."""
    import cv2

    rng = np.random.default_rng(1)
    colours = [(40, 40, 200), (40, 160, 40), (40, 220, 240), (200, 60, 60), (120, 60, 160)]
    for k, bgr in enumerate(colours):
        (tmp_path / "photos" / f"Item{k}").mkdir(parents=True)
        for i in range(6):
            img = np.full((96, 96, 3), 200, np.uint8)
            cv2.circle(img, (int(rng.integers(30, 66)), int(rng.integers(30, 66))), 25, bgr, -1)
            cv2.imwrite(str(tmp_path / "photos" / f"Item{k}" / f"{i}.jpg"), img)
    rc = main(["model", "train", "--mode", "distill", "--data", str(tmp_path / "photos"),
               "--held-out-group", "2", "--teachers", "efficientnet-lite0@64", "--size", "64",
               "--epochs", "1", "--bank-views", "1", "--folds", "0", "--head-epochs", "2",
               "--run-dir", str(tmp_path / "run"), "--out", str(tmp_path / "x.onnx")])
    assert rc == 0
    result = json.loads((tmp_path / "run" / "held-out-group-2.json").read_text())
    assert len(result["held_out"]) == 1 and result["taught_val_photos"] >= 1
    refit = result["refit"]
    assert len(refit["taught_top1"]) == len(refit["settings"]) == len(refit["catalogue_top1"]) > 1
    assert all(0 <= x <= 1 for x in refit["taught_top1"] + refit["catalogue_top1"])
    # at one refit scale a bigger bias for taught items can only win them more photos
    nb = sum(1 for sc, *_ in refit["settings"] if sc == refit["settings"][0][0])
    assert refit["taught_top1"][nb - 1] >= refit["taught_top1"][0]
    assert 0 <= result["gallery_scoring"]["taught_top1"] <= 1
    assert not (tmp_path / "x.onnx").exists()  # an experiment, not a model
    kept = np.load(tmp_path / "run" / "held-out-group-2.npz")
    # the taught photos as the stall teaches them: each with its mirror and two quarter turns
    assert kept["taught_views"].shape[:2] == (len(kept["taught_photos"]), 4)
    assert (tmp_path / "run" / "held-out-group-2.pt").exists()


def _random_bank(n: int, tmp_path: Path) -> tuple[Any, Any, Any]:
    """A view bank of ``n`` random 64 px photos (2 views, 2 classes), a fresh student and its config."""
    from model.training.distill import ViewBank
    from model.training.network import RecognizerNet, build_trunk
    from model.training.train import TrainConfig

    rng = np.random.default_rng(0)
    bank = ViewBank(rng.integers(0, 255, (n, 2, 64, 64, 3), dtype=np.uint8),
                    rng.integers(0, 255, (2, 1, 64, 64, 3), dtype=np.uint8),
                    np.arange(n) % 2, np.arange(2) % 2, 64, "test")
    net = RecognizerNet(build_trunk("efficientnet-lite0", 64), 2)
    cfg = TrainConfig(data=tmp_path, out=tmp_path / "x.onnx", run_dir=tmp_path, size=64, epochs=1,
                      batch=4, lr=1e-3, threads=2)
    return bank, net, cfg


def test_soup_is_the_average_of_its_students(tmp_path: Path) -> None:
    """--students 2: two students distilled with seeds 0 and 1, averaged weight by weight."""
    import copy

    from model.training.distill import distill, distill_soup

    bank, net, cfg = _random_bank(8, tmp_path)
    soft = np.log(np.full((8, 2, 2), 1 / 2, np.float32))
    cfg = replace(cfg, students=2)
    soup, log = distill_soup(copy.deepcopy(net), bank, soft, cfg)
    a, _ = distill(copy.deepcopy(net), bank, soft, replace(cfg, seed=0))
    b, _ = distill(copy.deepcopy(net), bank, soft, replace(cfg, seed=1))
    name = "trunk._conv_head.weight"
    wa, wb, ws = a.state_dict()[name], b.state_dict()[name], soup.state_dict()[name]
    assert not np.allclose(wa.numpy(), wb.numpy())  # the seeds really differ
    np.testing.assert_allclose(ws.numpy(), ((wa + wb) / 2).numpy(), atol=1e-5)
    assert [e["student"] for e in log if "student" in e] == [1, 2] and log[-1]["soup"] == 2


def test_held_out_group_needs_distill_mode(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["model", "train", "--mode", "linear", "--held-out-group", "0"])
    err = capsys.readouterr().err
    assert rc == 1 and "--held-out-group needs --mode distill" in err and "Traceback" not in err


def test_distill_on_rows_never_reads_the_other_rows(tmp_path: Path) -> None:
    """A student restricted to some photos of the bank (a held-out group's) never reads the others'
    views or soft labels: NaN there would poison it."""
    import copy

    import torch

    from model.training.distill import ViewBank, distill

    n, views, classes = 12, 2, 2
    bank, net, cfg = _random_bank(n, tmp_path)
    rows = np.arange(0, n, 2)
    poisoned = np.log(np.full((n, views, classes), 1 / classes, np.float32))
    poisoned[1::2] = np.nan
    labels = bank.train_labels.copy()
    labels[1::2] = -1  # held-out classes have no row of the student's head
    sub = ViewBank(bank.train, bank.val, labels, bank.val_labels, bank.size, bank.key)
    student, log = distill(copy.deepcopy(net), sub, poisoned, cfg, rows=rows)
    assert all(torch.isfinite(p).all() for p in student.parameters())
    assert np.isfinite(log[-1]["loss"])


def test_seven_bit_student_leaves_every_convolution_on_the_grid(tmp_path: Path) -> None:
    """--weight-bits 7: the student trains through the 7-bit grid and is saved baked onto it."""
    import copy

    import torch

    from model.training.distill import distill
    from model.training.qat import convolutions, on_grid

    bank, net, cfg = _random_bank(8, tmp_path)
    soft = np.log(np.full((8, 2, 2), 1 / 2, np.float32))
    student, log = distill(copy.deepcopy(net), bank, soft, replace(cfg, weight_bits=7))
    assert np.isfinite(log[-1]["loss"])
    assert all("parametrizations" not in k for k in student.state_dict())
    convs = convolutions(student.trunk)
    assert len(convs) == len(convolutions(net.trunk)) > 40
    on = [torch.allclose(on_grid(c.weight), c.weight, rtol=1e-5, atol=1e-7) for c in convs]
    # the depthwise convolutions keep 8 bits (onnxruntime's depthwise kernel cannot saturate)
    assert on == [c.groups == 1 for c in convs] and 0 < sum(on) < len(on)
    before = net.trunk._conv_head.weight
    assert not torch.allclose(student.trunk._conv_head.weight, before)
    assert not torch.allclose(on_grid(before), before)  # the grid is not already there by chance
