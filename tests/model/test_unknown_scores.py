"""bench/unknown_scores_bench.py: the scores it compares rank unknown items as they should."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "unknown_scores_bench.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("unknown_scores_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _kept(seed: int, held_out_offset: float) -> dict[str, np.ndarray]:
    """A held-out run's kept embeddings: classes 0-3 trained, 4-5 held out, ``held_out_offset``
    from classes 0 and 1 (0: the same produce under another name)."""
    rng = np.random.default_rng(seed)
    dim = 24
    # known classes that overlap a little, as produce does, so that no score saturates
    centres = _unit(_unit(rng.standard_normal(dim)) + 0.8 * _unit(rng.standard_normal((6, dim))))
    for new, old in ((4, 0), (5, 1)):
        centres[new] = _unit(centres[old] + held_out_offset * _unit(rng.standard_normal(dim)))

    def photos(n: int) -> np.ndarray:
        return _unit(np.repeat(centres, n, 0) + 0.5 * rng.standard_normal((6 * n, dim)) / np.sqrt(dim))

    return {"train": photos(30), "val": photos(8), "train_labels": np.repeat(np.arange(6), 30),
            "val_labels": np.repeat(np.arange(6), 8), "prototypes": centres[:4].astype(np.float32),
            "scale": np.array(32.0), "keep": np.arange(4), "out": np.array([4, 5])}


def test_far_unknowns_are_told_apart_and_same_produce_is_not(bench: ModuleType) -> None:
    far = bench.group_scores(_kept(0, 2.0))
    same = bench.group_scores(_kept(0, 0.0))
    assert set(far) == set(same) and {"max-prob", "knn-exemplars-1", "mahalanobis"} <= set(far)
    for name in far:
        known, unknown = far[name]
        assert known.shape == (32,) and unknown.shape == (2 * 38,)  # val of 4 classes; all photos of 2
        # the top probability only sees how the prototypes compare, not how far they all are
        assert bench.figures(*far[name])["auroc"] > (0.7 if name == "max-prob" else 0.95), name
        assert 0.3 < bench.figures(*same[name])["auroc"] < 0.7, name
    flagged = bench.figures(*far["max-cosine"])["unknown_flagged"]
    assert flagged > 0.9  # at the threshold that flags 8 % of the known photos


def test_main_reads_kept_files_and_writes_json(bench: ModuleType, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    files = []
    for g, offset in enumerate((2.0, 0.6)):
        files.append(tmp_path / f"held-out-group-{g}.npz")
        np.savez(files[-1], **_kept(g, offset))
    out = tmp_path / "scores.json"
    result = bench.main([*map(str, files), "--json", str(out)])
    assert json.loads(out.read_text()) == result
    assert list(result) == ["held-out-group-0", "held-out-group-1"]
    assert result["held-out-group-0"]["max-prob"]["auroc"] > result["held-out-group-1"]["max-prob"]["auroc"]
    assert "max-prob" in capsys.readouterr().out
