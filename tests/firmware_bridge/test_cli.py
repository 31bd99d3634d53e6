"""``wetmarket scale-sim`` and ``wetmarket scale-read`` as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WETMARKET = [sys.executable, "-m", "edge.cli"]


def _sim(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    link = str(tmp_path / "scale")
    proc = subprocess.Popen(
        [*WETMARKET, "scale-sim", "--link", link, "--seed", "3", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    pty = proc.stdout.readline().strip()
    assert pty.startswith("/dev/pts/"), pty
    assert os.path.realpath(link) == pty
    return proc, link


def _read(port: str, *args: str) -> list[dict[str, object]]:
    out = subprocess.run(
        [*WETMARKET, "scale-read", port, *args],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_sim_and_read_give_contract_json(tmp_path: Path) -> None:
    proc, port = _sim(tmp_path, "--protocol", "cas", "--scenario", "0.3 place 512; 4 end")
    try:
        rows = _read(port, "--protocol", "cas", "--count", "40")
    finally:
        proc.terminate()
        proc.wait(5)
    assert len(rows) == 40
    for row in rows:
        assert list(row) == ["gross_g", "tare_g", "net_g", "stable", "status", "t"]
        assert row["status"] in ("ok", "motion")
        assert (row["status"] == "ok") == row["stable"]
    assert any(r["stable"] and r["net_g"] == 510 for r in rows)
    assert any(not r["stable"] and r["status"] == "motion" for r in rows)
    assert not any(r["stable"] and r["net_g"] not in (0, 510, 515) for r in rows)


@pytest.mark.parametrize("protocol", ["toledo-8217", "xk3190-a9"])
def test_overload_has_no_weight(tmp_path: Path, protocol: str) -> None:
    # Toledo flags overload itself; the XK3190 has no flag and the host blanks above Max+9e.
    proc, port = _sim(tmp_path, "--protocol", protocol, "--scenario", "0.1 overload; 5 end")
    try:
        rows = _read(port, "--protocol", protocol, "--count", "30", "--max", "15000")
    finally:
        proc.terminate()
        proc.wait(5)
    over = [r for r in rows if r["status"] == "overload"]
    assert len(over) >= 10
    assert all(r["gross_g"] is None and r["net_g"] is None for r in over)
    assert all(r["gross_g"] is None or r["gross_g"] <= 15_045 for r in rows)


def test_scripted_faults_scenario_runs_to_its_end(tmp_path: Path) -> None:
    script = "0.1 place 800; 0.3 garbage; 0.4 corrupt 3; 0.6 truncate 2; 0.8 unplug; 1.2 replug; 1.5 end"
    proc, _ = _sim(tmp_path, "--protocol", "mt-continuous", "--scenario", script)
    assert proc.wait(10) == 0


def test_read_errors_are_one_line(tmp_path: Path) -> None:
    out = subprocess.run(
        [*WETMARKET, "scale-read", str(tmp_path / "none"), "--protocol", "cas", "--timeout", "0.5"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1
    assert out.stderr.startswith("wetmarket scale-read: error: no reading from")
    bad = subprocess.run(
        [*WETMARKET, "scale-sim", "--protocol", "cas", "--scenario", "soon place 5"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert bad.returncode == 1
    assert "starts with no time" in bad.stderr
    taken = tmp_path / "taken"
    taken.write_text("a file we must not clobber")
    clobber = subprocess.run(
        [*WETMARKET, "scale-sim", "--protocol", "cas", "--link", str(taken), "--duration", "1"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert clobber.returncode == 1 and "is not a symlink" in clobber.stderr
    assert taken.read_text() == "a file we must not clobber"
    unknown = subprocess.run(
        [*WETMARKET, "scale-read", "x", "--protocol", "cas9"], capture_output=True, text=True
    )
    assert unknown.returncode == 2 and "invalid choice" in unknown.stderr
