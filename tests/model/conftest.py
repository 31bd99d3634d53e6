"""Fixtures for the recognizer tests: the dataset (real, or a small synthetic tree) and models."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from tests.conftest import require_real_dataset

REPO = Path(__file__).resolve().parents[2]
DATASET = REPO.parent / "shared" / "data" / "grocery-store"
SHIPPED = REPO / "model" / "weights" / "recognizer.onnx"


def _synthetic_tree(root: Path) -> Path:
    """Three coloured 'produce' classes, 6 photos each, in the label/*.jpg layout."""
    rng = np.random.default_rng(0)
    colours = {"Tomato": (40, 40, 200), "Cucumber": (40, 160, 40), "Lemon": (40, 220, 240)}
    for label, bgr in colours.items():
        (root / label).mkdir(parents=True)
        for i in range(6):
            img = np.full((120, 160, 3), 200, np.uint8)
            c = (int(rng.integers(40, 120)), int(rng.integers(40, 80)))
            cv2.circle(img, c, int(rng.integers(20, 35)), bgr, -1)
            cv2.imwrite(str(root / label / f"{label}_{i}.jpg"), img)
    return root


@pytest.fixture(scope="session")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real photos when present (always in CI), else a small synthetic tree."""
    if (DATASET / "classes.csv").exists():
        return DATASET
    return _synthetic_tree(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="session")
def real_dataset() -> Path:
    """The real photos; their absence fails the test unless it is allowed knowingly."""
    return require_real_dataset()


@pytest.fixture(scope="session")
def val_photos(dataset_root: Path) -> list[tuple[Path, str]]:
    from model.data import load_dataset

    ds = load_dataset(dataset_root)
    samples = ds.val or ds.train
    # one photo of each of the first classes, in a stable order
    seen: dict[int, Path] = {}
    for s in samples:
        seen.setdefault(s.label, s.path)
    return [(p, ds.classes[lab]) for lab, p in sorted(seen.items())][:8]


@pytest.fixture(scope="session")
def shipped_model() -> Path:
    assert SHIPPED.exists(), f"{SHIPPED} is part of the repository"
    return SHIPPED


@pytest.fixture(scope="session")
def recognizer(shipped_model: Path):  # type: ignore[no-untyped-def]
    from model.recognizer import Recognizer

    return Recognizer.load(shipped_model)


@pytest.fixture(scope="session")
def ort_session() -> Callable[[Path, bool], Any]:
    """A bare onnxruntime session on one thread, on the exact int8 kernels (``exact``) or the
    default ones, whatever the CPU: what ``ModelRunner`` chooses is what the tests check."""
    import onnxruntime as ort

    def make(path: Path, exact: bool) -> Any:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.add_session_config_entry("session.x64quantprecision", "1" if exact else "0")
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])

    return make
