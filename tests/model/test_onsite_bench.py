"""bench/onsite_bench.py: each fold's own network reads that fold's other-session photos, and the
stall's teaching is counted as the flow does it (a sure guess sold untaught; a tap taught when it
is not the top guess, or under ``teach = "taps"`` always)."""

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
    # refits of a few epochs: what is counted does not depend on how well each refit fits
    rows = bench.measure(tmp_path, real_dataset, "efficientnet-lite0@64", folds=2, max_images=100,
                         refit_epochs=3)
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
        # every photo taught under "every"; under the stall's way exactly the photos it read wrong and
        # the vendor tapped (a sure wrong guess is sold untaught); under "taps" every tapped one
        assert r["every"]["taught"] == r["photos"]
        c, t = r["corrections"], r["taps"]
        assert c["taught"] == r["photos"] - c["right"] - c["auto_wrong"]
        assert c["sold_wrong"] == c["auto_wrong"] and c["taught_wrong"] == 0  # no mistaken tap
        assert t["taught"] == r["photos"] - t["auto"] and t["taught_wrong"] == 0
        assert 0 <= c["right_second_half"] <= c["right"] <= r["photos"]
        assert all(len(r[p]["hits"]) == r["photos"] and sum(r[p]["hits"]) == r[p]["right"]
                   for p in ("corrections", "taps", "every"))
    assert agree >= 0.9 * total
    # a vendor whose every tap is on a wrong guess, no guess sure enough to sell untapped: each tap
    # taught under "taps" is a wrong one, and each sale is wrong
    slips = bench.measure(tmp_path, real_dataset, "efficientnet-lite0@64", folds=2, max_images=100,
                          auto_confirm=1.01, mistap=1.0, refit_epochs=3)
    for r in slips:
        t = r["taps"]
        assert t["auto"] == 0 and t["taught"] == t["taught_wrong"] == t["sold_wrong"] == r["photos"]
        assert r["every"]["taught_wrong"] == 0
    # every slip caught: each line voided takes its teaching back and the item is weighed again and
    # tapped right, so nothing is sold or left taught under a wrong item
    caught = bench.measure(tmp_path, real_dataset, "efficientnet-lite0@64", folds=2, max_images=100,
                           auto_confirm=1.01, mistap=1.0, voided=1.0, refit_epochs=3)
    for r, s in zip(caught, slips, strict=True):
        t, c = r["taps"], r["corrections"]
        assert t["voided"] == r["photos"] and t["taught"] == r["photos"]
        assert t["sold_wrong"] == t["taught_wrong"] == c["sold_wrong"] == c["taught_wrong"] == 0
        # taught, taken back, taught right; the day's first taking back leaves nothing to refit
        assert t["refits"] == 3 * r["photos"] - 1
        assert s["taps"]["voided"] == 0
    # the printed table, and a clear refusal without the folds' networks
    capsys.readouterr()
    assert bench.main(["--run-dir", str(tmp_path), "--teacher", "efficientnet-lite0@64", "--data",
                       str(real_dataset), "--folds", "2", "--max-images", "100", "--threads", "1",
                       "--refit-epochs", "3"]) == 0
    out = capsys.readouterr().out
    assert "| corrections |" in out and "| taps |" in out and "| cold (no teaching) |" in out
    assert "only taps reads right" in out
    (work / "fold-1-net.pt").unlink()
    assert bench.main(["--run-dir", str(tmp_path), "--teacher", "efficientnet-lite0@64", "--data",
                       str(real_dataset), "--folds", "2", "--max-images", "100"]) == 2
    assert "fold-1-net.pt is missing" in capsys.readouterr().err


def test_a_slipping_finger_lands_beside_the_right_button() -> None:
    """The vendor screen shows the four guesses two to a row: a tap that misses the right
    button lands on one sharing an edge with it (never the diagonal one); when the right item is
    not shown, on any guess shown."""
    bench = _bench()
    shown = [7, 3, 9, 4]  # 7 3 / 9 4 on the screen
    assert bench.slip_targets(shown, 7) == [3, 9]
    assert bench.slip_targets(shown, 3) == [7, 4]
    assert bench.slip_targets(shown, 9) == [7, 4]
    assert bench.slip_targets(shown, 4) == [3, 9]
    assert bench.slip_targets(shown, 4, "any") == [7, 3, 9]
    assert bench.slip_targets(shown, 5) == shown
    assert bench.slip_targets([7, 3], 7) == [3]
