"""Scale-link benchmarks: decode rate, stable-detection delay, delay per line rate, link CPU.

Prints its figures (not a timed test).  Each figure comes with a baseline measured
in the same run on the same machine:

* decode rate: ``Codec.feed`` against a bare ``pattern.finditer`` over the same
  bytes (framing alone, no validation, no Frame), so the ratio shows what the
  checks cost; the target is >= 100,000 frames/s on one core;
* stable delay: the Link's first stable, correct reading after the simulated load
  settles within ±0.5e.  Flagless modules: milliseconds after settling (target:
  the filter's stated bound, ``StabilityFilter.delay_bound_s``; baseline: the
  sample period, the least any host can do).  Flagged modules: module frames
  between the module's first stable-flagged frame with the final weight and the
  Link's stable reading (target <= 1 frame; baseline: the module's own delay in ms
  after settling);
* delay per rate: the same delay for a flagless module streaming (XK3190-A9) or
  polled (Dahua ACS-A) at 5, 10, 20 and 40 frames/s, beside the frame period and
  as a number of periods (target: the filter's bound at that rate);
* CPU: process CPU time of a Link reading a 20 Hz stream from a simulator in
  another process, against the same process idling for the same time.

Usage: ``python bench/scale_bench.py [--quick] [--only decode|delay|rates|cpu]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from firmware_bridge.calibration import Calibration
from firmware_bridge.filters import StabilityFilter
from firmware_bridge.link import Link
from firmware_bridge.protocols import PROTOCOLS, Frame, get_protocol
from firmware_bridge.reading import Reading
from firmware_bridge.sim import STREAM_HZ, Simulator

E_G = 5


def _stream(name: str, n: int, rng: random.Random) -> bytes:
    enc = get_protocol(name)
    parts = []
    for _ in range(n):
        w = rng.randrange(0, 14_000) // E_G * E_G
        if enc.raw_counts:
            frame = Frame(None, None, counts=84_211 + w * 107)
        else:
            frame = Frame(w, rng.random() < 0.7 if enc.has_stable_flag else None)
        parts.append(enc.encode(frame))
    return b"".join(parts)


def bench_decode(frames: int) -> None:
    print(f"\n## decode rate, one core, {frames} frames per protocol fed in 4 KiB reads")
    print(f"{'protocol':15s} {'frames/s':>12s} {'baseline/s':>12s} {'ratio':>6s} {'target':>7s}")
    rng = random.Random(1)
    for name in PROTOCOLS:
        blob = _stream(name, frames, rng)
        chunks = [blob[i : i + 4096] for i in range(0, len(blob), 4096)]
        best = base = 0.0
        for _ in range(3):  # best of three: the machine is shared
            codec = get_protocol(name)
            t = time.perf_counter()
            got = sum(len(codec.feed(c)) for c in chunks)
            best = max(best, got / (time.perf_counter() - t))
            assert got == frames, (name, got, codec.stats)
            pattern = codec.pattern
            t = time.perf_counter()
            if codec.terminator is not None:
                found = sum(1 for line in blob.split(codec.terminator) if pattern.fullmatch(line))
            else:
                found = sum(1 for _ in pattern.finditer(blob))
            base = max(base, found / (time.perf_counter() - t))
        ok = "ok" if best >= 100_000 else "MISSED"
        print(f"{name:15s} {best:12,.0f} {base:12,.0f} {best / base:6.2f} {ok:>7s}")


class Trials(NamedTuple):
    """Per load change: ms from settling to the Link's stable reading; for flagged modules,
    how many frames the Link decoded after the module's first stable-flagged frame with the
    final weight before it reported stable (counted in frames, not time, so a busy machine
    does not inflate it) and the module's own delay in ms; for all, ms from the first
    reading of the run that held within two adjacent values (±0.5e of noise can still tick
    the display after the ±0.5e settling point) to the stable one: what the host filter's
    bound is about."""

    delays_ms: list[float]
    frames_after: list[int]
    module_ms: list[float]
    held_ms: list[float]


def _held_since(got: list[tuple[float, int, Reading]], final_t: float) -> float:
    """Time of the first reading of the run, up to the one at ``final_t``, whose weights
    span at most e (one value or two adjacent ones)."""
    run = [(t, r.gross_g) for t, _, r in got if t <= final_t]
    start, last = run[-1]
    assert last is not None  # the stable reading has a weight
    lo = hi = last
    for t, g in reversed(run):
        if g is None or max(hi, g) - min(lo, g) > E_G:
            break
        lo, hi, start = min(lo, g), max(hi, g), t
    return start


def _delay_trials(name: str, trials: int, rng: random.Random, rate_hz: float | None = None) -> Trials:
    """Measure ``trials`` load changes (see :class:`Trials`).  ``rate_hz``: the module's
    stream rate, or the Link's poll rate for a polled module (default: each one's own)."""
    decoded: list[tuple[float, Frame]] = []  # every frame the link decoded, in order
    got: list[tuple[float, int, Reading]] = []  # (time, index in decoded, reading)
    cal = Calibration(84_211, 107_500, 1000) if name == "hx711-raw" else None
    out = Trials([], [], [], [])
    with Simulator(name, seed=rng.randrange(1000), rate_hz=rate_hz) as sim:
        link = Link(
            sim.port,
            name,
            on_reading=lambda r: got.append((time.monotonic(), len(decoded) - 1, r)),
            calibration=cal,
            poll_hz=rate_hz if sim.codec.polled else None,
        )
        frame_method = link._frame

        def spy(frame: Frame, now_mono: float, now_wall: float) -> None:
            decoded.append((now_mono, frame))
            frame_method(frame, now_mono, now_wall)

        link._frame = spy  # type: ignore[method-assign]  # instrumentation only
        with link:
            if link.wait_for(lambda r: r.stable, 5) is None:
                raise RuntimeError(f"{name}: never stable at start")
            for i in range(trials):
                target = rng.randrange(200, 9000) if i % 2 == 0 else 0
                got.clear()
                t_place = time.monotonic()
                sim.place(target)
                settled = sim.settled_at
                final: tuple[float, int] | None = None
                deadline = time.monotonic() + 5
                while final is None and time.monotonic() < deadline:
                    time.sleep(0.01)
                    for t, k, r in list(got):
                        near = r.gross_g is not None and abs(r.gross_g - target) <= E_G + 1
                        if t >= settled and r.stable and near:
                            final = (t, k)
                            break
                if final is None:
                    raise RuntimeError(f"{name}: no stable reading for {target} g")
                out.delays_ms.append(max(0.0, final[0] - settled) * 1000)
                out.held_ms.append((final[0] - _held_since(got, final[0])) * 1000)
                if PROTOCOLS[name].has_stable_flag:
                    first = next(
                        (
                            j
                            for j, (t, f) in enumerate(decoded)
                            if t >= t_place
                            and f.stable
                            and f.weight_g is not None
                            and abs(f.weight_g - target) <= E_G
                        ),
                        None,
                    )
                    if first is not None and first <= final[1]:
                        out.frames_after.append(final[1] - first)
                        out.module_ms.append(max(0.0, decoded[first][0] - settled) * 1000)
                time.sleep(0.2)
    return out


def _within_bound(held_ms: list[float], period_ms: float) -> tuple[float, str]:
    """The host filter's bound at this frame period (the Link's defaults), and whether the
    slowest trial kept it."""
    bound = StabilityFilter().delay_bound_s(period_ms / 1000) * 1000
    return bound, "ok" if max(held_ms) <= bound else "MISSED"


def _title(title: str, columns: dict[str, int]) -> None:
    """A table's title and header: the protocol name left, then right-aligned columns."""
    head = [f"{'protocol':15s}"] + [f"{name:>{width}s}" for name, width in columns.items()]
    print(f"\n## {title}\n" + " ".join(head))


def bench_delay(trials: int) -> None:
    _title(
        f"stable-detection delay after the simulated load settles ({trials} load changes)",
        {"flag": 5, "median ms": 10, "max ms": 8, "frames med/max": 15, "held max/bound": 15,
         "baseline ms": 14, "target": 7},
    )  # fmt: skip
    rng = random.Random(2)
    for name in PROTOCOLS:
        codec = PROTOCOLS[name]
        res = _delay_trials(name, trials, rng)
        polled = 25.0 if codec.has_stable_flag else 40.0  # Link's default poll rates
        period = 1000 / (STREAM_HZ.get(name, polled))
        if codec.has_stable_flag:
            worst = max(res.frames_after) if res.frames_after else -1
            ok = "ok" if 0 <= worst <= 1 else "MISSED"
            fr = f"{statistics.median(res.frames_after):.0f} / {worst}"
            held = "-"
            base = f"module {statistics.median(res.module_ms):.0f}"
        else:
            bound, ok = _within_bound(res.held_ms, period)
            fr = "-"
            held = f"{max(res.held_ms):.0f} / {bound:.0f}"
            base = f"period {period:.1f}"
        print(
            f"{name:15s} {'yes' if codec.has_stable_flag else 'no':>5s} "
            f"{statistics.median(res.delays_ms):10.0f} {max(res.delays_ms):8.0f} {fr:>15s} "
            f"{held:>15s} {base:>14s} {ok:>7s}"
        )


def bench_rates(trials: int) -> None:
    _title(
        f"stable delay per line rate, flagless modules ({trials} load changes per row)",
        {"rate Hz": 8, "period ms": 10, "median ms": 10, "max ms": 8, "median/period": 14,
         "held max ms": 12, "bound ms": 9, "target": 7},
    )  # fmt: skip
    rng = random.Random(3)
    for name in ("xk3190-a9", "dahua-acs"):
        for rate in (5.0, 10.0, 20.0, 40.0):
            res = _delay_trials(name, trials, rng, rate_hz=rate)
            period = 1000 / rate
            bound, ok = _within_bound(res.held_ms, period)
            median, held = statistics.median(res.delays_ms), max(res.held_ms)
            print(
                f"{name:15s} {rate:8.0f} {period:10.1f} {median:10.0f} {max(res.delays_ms):8.0f} "
                f"{median / period:14.1f} {held:12.0f} {bound:9.0f} {ok:>7s}"
            )


def bench_cpu(seconds: float) -> None:
    print(f"\n## link CPU, {seconds:g} s per case (simulator in another process)")
    print(f"{'case':28s} {'cpu %':>7s} {'idle %':>7s} {'readings':>9s} {'target':>7s}")
    # xk3190-a9 has no stable flag: its case also costs the host's stability filter.
    for name, rate in (("cas", 20.0), ("mt-sics", None), ("mt-continuous", 20.0), ("xk3190-a9", 20.0)):
        with tempfile.TemporaryDirectory() as tmp:
            port = str(Path(tmp) / "scale")
            cmd = [sys.executable, "-m", "edge.cli", "scale-sim", "--protocol", name, "--link", port]
            if rate:
                cmd += ["--rate", str(rate)]
            sim = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            try:
                assert sim.stdout is not None
                sim.stdout.readline()
                count = 0

                def tick(_: Reading) -> None:
                    nonlocal count
                    count += 1

                # Polled: 20 Hz polls, so the same 20 readings a second as the streams.
                with Link(port, name, on_reading=tick, poll_hz=20.0) as link:
                    link.wait_for(timeout=5)
                    count = 0
                    c0, t0 = time.process_time(), time.monotonic()
                    time.sleep(seconds)
                    cpu = (time.process_time() - c0) / (time.monotonic() - t0) * 100
                c0, t0 = time.process_time(), time.monotonic()
                time.sleep(seconds / 4)
                idle = (time.process_time() - c0) / (time.monotonic() - t0) * 100
            finally:
                sim.terminate()
                sim.wait(5)
        label = f"{name} @ 20 Hz {'poll' if PROTOCOLS[name].polled else 'stream'}"
        ok = "ok" if cpu < 2.0 else "MISSED"
        print(f"{label:28s} {cpu:7.2f} {idle:7.2f} {count:9d} {ok:>7s}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer frames and trials")
    parser.add_argument("--only", choices=("decode", "delay", "rates", "cpu"), help="one part only")
    args = parser.parse_args()
    # Dropped-frame warnings (the simulator's undershoot below zero on PS1X) are expected.
    logging.basicConfig(level=logging.ERROR)
    print(f"scale link benchmark, python {sys.version.split()[0]}, {os.cpu_count()} cpus")
    if args.only in (None, "decode"):
        bench_decode(20_000 if args.quick else 100_000)
    if args.only in (None, "delay"):
        bench_delay(4 if args.quick else 10)
    if args.only in (None, "rates"):
        bench_rates(4 if args.quick else 10)
    if args.only in (None, "cpu"):
        bench_cpu(3.0 if args.quick else 10.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
