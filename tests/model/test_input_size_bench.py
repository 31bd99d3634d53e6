"""bench/input_size_bench.py: the size-free copy of a shipped file is the same network."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "input_size_bench.py"


def test_at_its_own_size_the_size_free_copy_scores_as_the_stall(real_dataset: Path) -> None:
    from model.evaluate import evaluate
    from model.recognizer import DEFAULT_MODEL

    spec = importlib.util.spec_from_file_location("input_size_bench", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    report = evaluate(DEFAULT_MODEL, real_dataset).report
    own = bench.measure(DEFAULT_MODEL, 224, real_dataset, runs=3)
    assert own["top1"] == pytest.approx(report["top1"], abs=1e-4)
    assert own["top5"] == pytest.approx(report["top5"], abs=1e-4)
    assert own["top1"] <= own["surest_half_top1"] <= 1
    small = bench.measure(DEFAULT_MODEL, 128, real_dataset, runs=3)
    assert small["top1"] < own["top1"] and small["network_ms_p50"] > 0
