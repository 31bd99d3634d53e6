"""bench/onsite_bench.py: each fold's own network reads that fold's other-session photos, and the
stall's teaching is counted as the flow does it (a wrong read taught, a right one not)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("onsite_bench", ROOT / "bench" / "onsite_bench.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["onsite_bench"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_the_day_is_read_by_each_folds_own_network(real_dataset: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    cv = ["model", "cv", "--data", str(real_dataset), "--run-dir", str(tmp_path), "--teachers",
          "efficientnet-lite0@64", "--folds", "2", "--epochs", "2", "--views", "0", "--max-images", "100",
          "--threads", "1"]
    assert main(cv) == 0
    bench = _bench()
    rows = bench.measure(tmp_path, real_dataset, "efficientnet-lite0@64", folds=2, max_images=100)
    assert [r["fold"] for r in rows] == [0, 1]
    work = tmp_path / "efficientnet-lite0-64-s0"
    agree = total = 0
    for r in rows:
        assert r["photos"] == len(r["rows"]) > 0  # val photos exist in every fold of this slice
        with np.load(work / f"fold-{r['fold']}.npz") as z:
            last = dict(zip(z["held_out"].tolist(), z["finetuned"][-1].argmax(1).tolist(), strict=True))
        # the fold's own last-epoch network, as the cv run read it (its cache is float16: near, not equal)
        agree += sum(last[i] == top for i, top in zip(r["rows"], r["cold_top"], strict=True))
        total += len(r["rows"])
        # every sold photo taught under "every"; under the stall's way, exactly the photos it read wrong
        assert r["every"]["taught"] == r["photos"]
        assert r["corrections"]["taught"] == r["photos"] - r["corrections"]["right"]
        assert 0 <= r["corrections"]["right_second_half"] <= r["corrections"]["right"] <= r["photos"]
    assert agree >= 0.9 * total
    # the printed table, and a clear refusal without the folds' networks
    capsys.readouterr()
    assert bench.main(["--run-dir", str(tmp_path), "--teacher", "efficientnet-lite0@64", "--data",
                       str(real_dataset), "--folds", "2", "--max-images", "100", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "| corrections |" in out and "| cold (no teaching) |" in out
    (work / "fold-1-net.pt").unlink()
    assert bench.main(["--run-dir", str(tmp_path), "--teacher", "efficientnet-lite0@64", "--data",
                       str(real_dataset), "--folds", "2", "--max-images", "100"]) == 2
    assert "fold-1-net.pt is missing" in capsys.readouterr().err
