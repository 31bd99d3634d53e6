"""Calibration of a raw-count module: explicit mode, sealed file, audit counter and trail."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from firmware_bridge.audit import AuditError, AuditLog
from firmware_bridge.calibration import Calibration, CalibrationError, CalibrationStore
from firmware_bridge.link import Link
from firmware_bridge.sim import Simulator

WETMARKET = [sys.executable, "-m", "edge.cli"]


def test_calibration_arithmetic_is_integer_and_rounds() -> None:
    cal = Calibration(zero_counts=1000, span_counts=215_000, span_g=2000)
    assert cal.to_grams(1000) == 0
    assert cal.to_grams(1000 + 107_500) == 1000
    assert cal.to_grams(1000 + 53) == 0  # 0.49 g
    assert cal.to_grams(1000 + 54) == 1  # 0.502 g
    assert cal.to_grams(1000 - 54) == -1
    assert cal.to_grams_ratio(3 * 1000 + 3 * 107_500, 3) == 1000
    with pytest.raises(CalibrationError):
        Calibration(0, 0, 2000)


def test_calibrate_a_simulated_hx711_end_to_end(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl")
    store = CalibrationStore(tmp_path / "cal.json", audit)
    with pytest.raises(CalibrationError, match="calibrate first"):
        store.load()
    with Simulator("hx711-raw", seed=5) as sim, Link(sim.port, "hx711-raw") as link:
        with store.calibration_mode("inspector Li") as session:
            session.capture_zero(link.collect_counts(16))
            sim.place(2000)
            time.sleep(0.8)  # let it settle: capture refuses a moving load
            session.capture_span(link.collect_counts(16), 2000)
            cal = session.commit()
        with pytest.raises(CalibrationError, match="has ended"):
            session.capture_zero([1, 1, 1])
        # The simulator's own constants: 84 211 counts at zero, 107.5 counts per gram.
        assert abs(cal.zero_counts - 84_211) < 30
        assert abs(cal.span_counts - 215_000) < 300
        link.calibration = store.load()
        r = link.wait_for(lambda r: r.stable and r.gross_g is not None, 3)
        assert r is not None and abs(r.gross_g - 2000) <= 2  # type: ignore[operator]
    events = [(e["event"], e["counter"]) for e in audit.entries]
    assert events == [
        ("calibration_mode", 0),
        ("calibration", 1),
        ("calibration_mode", 1),
    ]
    # A second calibration bumps the counter again; the old file no longer matches.
    old = (tmp_path / "cal.json").read_text()
    with store.calibration_mode() as session:
        session.capture_zero([100, 101, 99])
        session.capture_span([100 + 21500, 100 + 21501, 100 + 21499], 200)
        session.commit()
    assert audit.counter == 2
    (tmp_path / "cal.json").write_text(old)
    with pytest.raises(CalibrationError, match="counter 1 != audit counter 2"):
        store.load()


def test_tampered_calibration_does_not_load(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl")
    store = CalibrationStore(tmp_path / "cal.json", audit)
    with store.calibration_mode() as session:
        session.capture_zero([0, 1, -1])
        session.capture_span([10_000, 10_001, 9_999], 1000)
        session.commit()
    assert store.load() == Calibration(0, 10_000, 1000)
    doc = json.loads((tmp_path / "cal.json").read_text())
    doc["span_counts"] = 9_091  # the classic cheat: make 1000 g read 1100 g
    (tmp_path / "cal.json").write_text(json.dumps(doc))
    with pytest.raises(CalibrationError, match="seal"):
        store.load()
    assert audit.entries[-1]["event"] == "error"
    with pytest.raises(CalibrationError, match="wrong key|seal"):
        CalibrationStore(tmp_path / "cal.json", audit, key=b"another scale").load()


def test_capture_refuses_a_moving_load_and_a_missing_weight(tmp_path: Path) -> None:
    store = CalibrationStore(tmp_path / "cal.json", AuditLog())
    with store.calibration_mode() as session:
        with pytest.raises(CalibrationError, match="not still"):
            session.capture_zero([0, 5000, 10_000])
        with pytest.raises(CalibrationError, match="zero before span"):
            session.capture_span([1, 1, 1], 1000)
        session.capture_zero([0, 0, 0])
        with pytest.raises(CalibrationError, match="weight on the plate"):
            session.capture_span([3, 3, 3], 1000)
        with pytest.raises(CalibrationError, match="capture zero and span"):
            session.commit()


def test_audit_log_is_chained_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    log.record("zero", "zero offset 5 g")
    log.record("tare", "tare 200 g")
    log.record("calibration", "span", bump=True)
    log.record("error", "link offline")
    again = AuditLog(path)
    assert [e["counter"] for e in again.entries] == [0, 0, 1, 1]
    lines = path.read_text().splitlines()
    edited = json.loads(lines[1])
    edited["detail"] = "tare 100 g"
    lines[1] = json.dumps(edited)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(AuditError, match="entry 2: entry was altered"):
        AuditLog(path)
    path.write_text("\n".join(lines[:1] + lines[2:]) + "\n")  # a deleted line
    with pytest.raises(AuditError, match="entry 2: chain"):
        AuditLog(path)


def test_scale_calibrate_cli(tmp_path: Path) -> None:
    store = tmp_path / "cal.json"
    with Simulator("hx711-raw", seed=9) as sim:
        proc = subprocess.Popen(
            [*WETMARKET, "scale-calibrate", sim.port,
             "--store", str(store), "--known-g", "1000", "--operator", "test"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stdin and proc.stderr and proc.stdout

        def prompt(text: str) -> None:
            assert proc.stderr is not None
            for line in proc.stderr:  # log lines may come first
                if text in line:
                    return
            raise AssertionError(f"no prompt {text!r}")

        prompt("empty the plate")
        proc.stdin.write("\n")
        proc.stdin.flush()
        prompt("1000 g test weight")
        sim.place(1000)
        time.sleep(0.8)
        proc.stdin.write("\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert "audit counter 1" in out
        audit = AuditLog(str(store) + ".audit.jsonl")
        cal = CalibrationStore(store, audit).load()
        assert abs(cal.span_counts - 107_500) < 200
        # The sealed file is what scale-read weighs with.
        read = subprocess.run(
            [*WETMARKET, "scale-read", sim.port, "--protocol", "hx711-raw",
             "--calibration", str(store), "--count", "120"],  # 1.5 s: stable takes 0.5 s
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
    rows = [json.loads(line) for line in read.stdout.splitlines()]
    assert any(r["stable"] and abs(r["gross_g"] - 1000) <= 2 for r in rows)
