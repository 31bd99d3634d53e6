"""The simulator speaks every dialect real modules send, at its rate, with line noise,
and the real Link reads each one (pty, no mocks)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import serial

from firmware_bridge import BridgeError
from firmware_bridge.link import Link
from firmware_bridge.protocols import PROTOCOLS
from firmware_bridge.reading import Reading
from firmware_bridge.sim import STREAM_HZ, Simulator

WETMARKET = [sys.executable, "-m", "edge.cli"]

# The default variant of every protocol is exercised by test_link; here the others.
OTHER_VARIANTS = [(name, v) for name, cls in PROTOCOLS.items() for v in cls.variants[1:]]


def _stable_near(grams: int, tol: int = 5):
    return lambda r: r.stable and r.gross_g is not None and abs(r.gross_g - grams) <= tol


@pytest.mark.parametrize(("name", "variant"), OTHER_VARIANTS)
def test_each_variant_reads_through_the_link_behind_line_noise(name: str, variant: str) -> None:
    seen: list[Reading] = []
    with (
        Simulator(name, seed=5, variant=variant, line_noise=0.3) as sim,
        Link(sim.port, name, on_reading=seen.append, max_g=15000) as link,
    ):
        assert link.wait_for(_stable_near(0), 4) is not None
        sim.place(1234)
        assert link.wait_for(_stable_near(1235), 5) is not None, seen[-3:]
        assert link.stats.dropped_bytes > 0  # the noise was there, and cost no weight
    assert sim.variant == variant
    assert all(abs((r.gross_g or 0) - 1235) <= 5 or r.gross_g == 0 for r in seen if r.stable)


@pytest.mark.parametrize(
    ("name", "variant", "expected"),
    [
        ("cas", "padded", b"ST,GS,+  0.000kg\r\n"),
        ("cas", "22", b"ST,GS,1\xc5,0000.000 kg\r\n"),
        ("xk3190-a9", "clone", b"\x02+000000318\x03"),
        ("mt-continuous", "no-checksum", b"\x02=0      0000000\r\x02"),
    ],
)
def test_the_bytes_on_the_line_are_the_variant_asked_for(name: str, variant: str, expected: bytes) -> None:
    with Simulator(name, seed=1, variant=variant, noise_g=0.0) as sim:
        port = serial.serial_for_url(sim.port, timeout=0.05)
        data = b""
        deadline = time.monotonic() + 3
        while expected not in data and time.monotonic() < deadline:
            data += port.read(256)
        port.close()
    assert expected in data, data[-80:]


def test_an_xk3190_streams_ten_frames_a_second_by_default_and_any_rate_asked() -> None:
    assert STREAM_HZ["xk3190-a9"] == 10.0
    for rate, asked in ((10.0, None), (4.0, 4.0)):
        with Simulator("xk3190-a9", seed=1, rate_hz=asked) as sim:
            deadline = time.monotonic() + 5
            while len(sim.sent) < 8 and time.monotonic() < deadline:
                time.sleep(0.05)
            times = [s.t for s in sim.sent]
        assert len(times) >= 8
        period = statistics.median(b - a for a, b in zip(times, times[1:], strict=False))
        assert period == pytest.approx(1 / rate, rel=0.2)


def test_power_up_without_zero_is_no_weight_then_weighs() -> None:
    seen: list[Reading] = []
    with Simulator("mt-continuous", seed=2, variant="no-checksum") as sim:
        sim.power_up(1.0)
        with Link(sim.port, "mt-continuous", on_reading=seen.append) as link:
            assert link.wait_for(lambda r: r.status == "error", 2) is not None
            assert link.wait_for(_stable_near(0), 4) is not None
    errors = [r for r in seen if r.status == "error"]
    assert errors and all(r.gross_g is None and not r.stable for r in errors)


def test_unknown_variant_or_noise_share_is_refused() -> None:
    with pytest.raises(BridgeError, match="no variant 'x'"):
        Simulator("cas", variant="x")
    with pytest.raises(BridgeError, match="not a share"):
        Simulator("cas", line_noise=2.0)


def test_scale_sim_variant_on_the_command_line(tmp_path: Path) -> None:
    link = str(tmp_path / "scale")
    sim = subprocess.Popen(
        [*WETMARKET, "scale-sim", "--protocol", "aclas-pbx", "--variant", "active", "--link", link,
         "--seed", "3", "--line-noise", "0.2", "--scenario", "0.3 place 512; 4 end"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert sim.stdout is not None and sim.stdout.readline().startswith("/dev/pts/")
        out = subprocess.run(
            [*WETMARKET, "scale-read", link, "--protocol", "aclas-pbx", "--count", "30"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
    finally:
        sim.terminate()
        sim.wait(5)
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert any(r["stable"] and r["net_g"] == 510 for r in rows), rows
    bad = subprocess.run(
        [*WETMARKET, "scale-sim", "--protocol", "cas", "--variant", "18"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert bad.returncode == 1 and "has no variant '18'" in bad.stderr
    assert bad.stderr.count("\n") == 1
