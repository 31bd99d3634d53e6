"""A weighing-module simulator on a pseudo-terminal: the honest fake of a real scale.

``Simulator`` opens a pty, puts a simulated module (load cell + ADC + firmware) on
the master end and leaves the slave end for the host, which opens it with
pyserial exactly like ``/dev/ttyUSB0``.  It answers polls and streams frames in
the chosen protocol and ``variant`` (each dialect real modules of the family send:
CAS 18- or 22-byte, Aclas polled or active with Flag2, Mettler continuous with or
without checksum, XK3190 hex or clone check digits...), at ``rate_hz``, and
models what makes real scale links flaky:

* load-cell dynamics: an under-damped step response (overshoot, settling),
  noise, slow zero drift and creep under load;
* the module firmware: resolution e, its own motion detection (stable flag),
  zero/tare commands, zero tracking, overload above Max + 9e;
* faults: unplug/replug (the port path is a symlink that disappears and comes
  back, like a USB serial device), garbage bytes, line noise in front of frames
  (``line_noise``: the share of frames that get it), corrupted and truncated
  frames, a wrong baud rate or parity (every byte mangled for a while), a
  power-up without a captured zero (no valid weight for a while).

``port`` is a stable symlink to the current pty slave, so a host that reopens the
path after an unplug finds the module again.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import select
import shutil
import tempfile
import threading
import time
import tty
from collections import deque
from dataclasses import dataclass

from firmware_bridge import BridgeError, LinkError
from firmware_bridge.protocols import Codec, Command, Frame, get_protocol

logger = logging.getLogger(__name__)

# Frames per second each protocol streams (polled ones answer as fast as asked).  An
# XK3190-A9 at 1200 baud manages about 10 (12-byte frames); an Aclas in active mode sends 10.
STREAM_HZ = {"cas": 20.0, "mt-continuous": 20.0, "xk3190-a9": 10.0, "hx711-raw": 80.0, "aclas-pbx": 10.0}
# How often a module's firmware samples its ADC (its own motion detection runs on these).
ADC_HZ = 50.0
# The firmware's digital filter ahead of its motion detection: a mean of this many ADC samples.
FILTER_SAMPLES = 4
# How far back its motion detection looks: every filtered value within 0.5e of the newest.
MOTION_WINDOW_S = 0.16
# How long a module holds a zero or tare command sent while the load moves, waiting for a
# stable weight, before it refuses it.  MT-SICS documents the pair: ``Z`` zeroes once the
# weight is stable (``Z I`` when stability is not reached in time), ``ZI`` at once whatever it
# is (e.g. Kepware's UDD profile of the Mettler Toledo SICS commands); indicators' ZERO keys
# behave the same.  Without the wait, a command that met one frame's dip of the stable flag
# was refused (the zero test failed 4 times in 300 seeds).
STABLE_WAIT_S = 2.0
WAITS_FOR_STABLE: frozenset[str] = frozenset({"zero", "tare"})
# Line noise: what a UART hands over after a glitch (framing errors, a floating line).
NOISE_BYTES = b"\x00\xff\xfe\xf8\xe0\x80"


class LoadCell:
    """The physical load as the cell feels it, in (float) grams, as a function of time.

    Each change of load starts an under-damped second-order step response from
    where the cell is at that moment; creep follows the load with a slow
    exponential; drift moves the zero linearly.
    """

    def __init__(
        self,
        e_g: int,
        *,
        omega: float = 38.0,
        zeta: float = 0.4,
        drift_g_per_min: float = 0.0,
        creep_frac: float = 2e-4,
        creep_tau_s: float = 30.0,
        t0: float | None = None,
    ) -> None:
        self.e_g = e_g
        self.omega, self.zeta = omega, zeta
        self._wd = omega * math.sqrt(1 - zeta * zeta)
        self.drift_g_per_min = drift_g_per_min
        self.creep_frac, self.creep_tau_s = creep_frac, creep_tau_s
        now = time.monotonic() if t0 is None else t0
        self._t_birth = now
        self.target = 0.0
        self._t0 = now
        self._y0 = 0.0
        self._c0 = 0.0
        self.settled_at = now

    def _step(self, t: float) -> float:
        tau = t - self._t0
        if tau <= 0:
            return self._y0
        z, wd = self.zeta, self._wd
        env = math.exp(-z * self.omega * tau)
        if env < 1e-9:
            return self.target
        shape = math.cos(wd * tau) + z / math.sqrt(1 - z * z) * math.sin(wd * tau)
        return self.target + (self._y0 - self.target) * env * shape

    def _creep(self, t: float) -> float:
        goal = self.creep_frac * self.target
        return goal + (self._c0 - goal) * math.exp(-(t - self._t0) / self.creep_tau_s)

    def value(self, t: float) -> float:
        drift = self.drift_g_per_min * (t - self._t_birth) / 60.0
        return self._step(t) + self._creep(t) + drift

    def set_load(self, grams: float, t: float) -> None:
        y0, c0 = self._step(t), self._creep(t)
        self._t0, self._y0, self._c0, self.target = t, y0, c0, float(grams)
        delta = abs(grams - y0)
        z = self.zeta
        # When the envelope of the oscillation is inside ±0.5e for good.
        if delta <= self.e_g / 2:
            self.settled_at = t
        else:
            ratio = 2 * delta / (self.e_g * math.sqrt(1 - z * z))
            self.settled_at = t + math.log(ratio) / (z * self.omega)


@dataclass(frozen=True, slots=True)
class Sent:
    """A frame the module sent, and when (monotonic); the benchmark's ground truth."""

    t: float
    frame: Frame


class Module:
    """The simulated module firmware: resolution, motion detection, zero, tare, overload."""

    def __init__(
        self,
        codec: Codec,
        capacity_g: int,
        e_g: int,
        rng: random.Random,
        *,
        noise_g: float | None = None,
        counts_per_g: float = 107.5,
        zero_counts: int = 84_211,
        noise_counts: float = 20.0,
        drift_g_per_min: float = 0.0,
    ) -> None:
        self.codec = codec
        self.capacity_g, self.e_g = capacity_g, e_g
        self.rng = rng
        self.noise_g = 0.1 * e_g if noise_g is None else noise_g
        self.counts_per_g, self.zero_counts, self.noise_counts = (
            counts_per_g,
            zero_counts,
            noise_counts,
        )
        self.cell = LoadCell(e_g, drift_g_per_min=drift_g_per_min)
        self.zero_offset = 0.0
        self.tare_g = 0
        self._recent: deque[float] = deque(maxlen=FILTER_SAMPLES)
        # (time, filtered gross) over the last MOTION_WINDOW_S: what motion detection judges.
        self._filtered: deque[tuple[float, float]] = deque()
        self._last_track = time.monotonic()
        self._shown = 0
        self._shown_since = 0.0

    def _gross(self, t: float) -> float:
        raw = self.cell.value(t) + self.rng.gauss(0.0, self.noise_g)
        gross = raw - self.zero_offset
        recent = self._recent
        recent.append(gross)
        filtered = self._filtered
        filtered.append((t, sum(recent) / len(recent)))
        while filtered and filtered[0][0] < t - MOTION_WINDOW_S:
            filtered.popleft()
        return gross

    def _stable(self) -> bool:
        # Judged, as firmware does, on its filtered value (the mean of the last FILTER_SAMPLES
        # ADC samples), each one of the window within 0.5e of the newest: on raw samples, ADC
        # noise of 0.1e dropped the flag of a still load on one frame in 300, and a tap on
        # such a frame was refused.  Against the newest value, not the window's mean, so a
        # load still creeping by 1e in the window is not called stable.
        hist = self._filtered
        if len(hist) < 3 or hist[-1][0] - hist[0][0] < 0.08:
            return False
        newest = hist[-1][1]
        return all(abs(g - newest) <= self.e_g * 0.5 for _, g in hist)

    def _quantize(self, grams: float) -> int:
        # Display hysteresis, as real modules have: a value sitting on a rounding
        # boundary must not flicker between two intervals.
        if abs(grams - self._shown) < 0.6 * self.e_g:
            return self._shown
        e = self.e_g
        self._shown = int(math.floor(grams / e + 0.5)) * e
        return self._shown

    def frame(self, t: float) -> Frame:
        # The firmware samples its ADC at ADC_HZ whatever its output rate, so its motion
        # detection works the same for a module that sends 10 frames a second.
        hist = self._filtered
        if hist:
            ts = max(hist[-1][0], t - MOTION_WINDOW_S) + 1.0 / ADC_HZ
            while ts < t:
                self._gross(ts)
                ts += 1.0 / ADC_HZ
        gross = self._gross(t)
        stable = self._stable()
        if self.codec.raw_counts:
            counts = self.zero_counts + (gross + self.zero_offset) * self.counts_per_g
            counts += self.rng.gauss(0.0, self.noise_counts)
            return Frame(None, None, counts=int(round(counts)))
        self._track_zero(t, gross, stable)
        previous, shown = self._shown, self._quantize(gross)
        if shown != previous:
            self._shown_since = t
        # Like real firmware: stable only once the displayed value has held for a while too,
        # so the flag never goes up on a value that is about to tick over.
        stable = stable and t - self._shown_since >= 0.08
        if gross > self.capacity_g + 9 * self.e_g:
            # Flagged protocols say overload; the others can only send the number.
            return Frame(shown, False, "overload")
        if gross < -0.04 * self.capacity_g and not self.tare_g:
            # Below the zero range: the module flags underload (and still says the value).
            return Frame(shown, False, "underload")
        if self.tare_g:
            return Frame(shown - self.tare_g, stable, net=True, tare_g=self.tare_g)
        return Frame(shown, stable)

    def _track_zero(self, t: float, gross: float, stable: bool) -> None:
        # Zero tracking (R76): only near zero, only while stable, at most 0.5e/s.
        dt, self._last_track = t - self._last_track, t
        if stable and not self.tare_g and abs(gross) < 0.5 * self.e_g:
            step = max(-0.5 * self.e_g * dt, min(0.5 * self.e_g * dt, gross))
            self.zero_offset += step

    def command(self, cmd: Command, t: float, *, may_wait: bool = False) -> tuple[bool | None, Frame]:
        """Carry out ``cmd`` at ``t``: (done?, the frame).  With ``may_wait``, a zero or tare
        that only the motion stops answers None: the firmware holds it for a stable weight
        (the caller asks again, see ``Simulator``)."""
        current = self.frame(t)
        stable = bool(current.stable)
        gross = (current.weight_g or 0) + self.tare_g
        ok = False
        if may_wait and not stable and cmd in WAITS_FOR_STABLE:
            return None, current
        if cmd == "zero":
            total = self.zero_offset + gross
            ok = stable and not self.tare_g and abs(total) <= 0.04 * self.capacity_g
            if ok:
                # The firmware zeroes its filtered internal value, not the displayed one:
                # zeroing 40 g shown for 41.2 g left 1.2 g, shown as 2 g for good (zero
                # tracking only follows drift under 0.5e).
                self.zero_offset += self._filtered[-1][1]  # frame(t) above filled it
        elif cmd == "tare":
            ok = stable and current.status == "ok" and gross > 0
            if ok:
                self.tare_g = gross
        elif cmd == "clear_tare":
            ok = True
            self.tare_g = 0
        return ok, Frame(current.weight_g, current.stable, tare_g=self.tare_g)


class Simulator:
    """A simulated weighing module on a pty, run on a background thread."""

    def __init__(
        self,
        protocol: str = "cas",
        capacity_g: int = 15000,
        e_g: int = 5,
        seed: int | None = None,
        *,
        link: str | None = None,
        rate_hz: float | None = None,
        noise_g: float | None = None,
        drift_g_per_min: float = 0.0,
        variant: str | None = None,
        line_noise: float = 0.0,
    ) -> None:
        if not 0.0 <= line_noise <= 1.0:
            raise BridgeError(f"line noise {line_noise:g} is not a share of frames (0..1)")
        self.protocol = protocol
        # ProtocolUnknownError for a bad name, BridgeError for a variant the family lacks.
        self.codec = get_protocol(protocol, variant)
        self.variant = self.codec.variant
        self.line_noise = line_noise
        self.capacity_g, self.e_g = capacity_g, e_g
        self.rng = random.Random(seed)
        self.module = Module(
            self.codec, capacity_g, e_g, self.rng, noise_g=noise_g, drift_g_per_min=drift_g_per_min
        )
        self.rate_hz = rate_hz or STREAM_HZ.get(protocol, 20.0)
        self.sent: deque[Sent] = deque(maxlen=4096)
        self.commands: deque[tuple[float, Command]] = deque(maxlen=256)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._master: int | None = None
        self._slave: int | None = None
        self._tmpdir: str | None = None
        if link is None:
            self._tmpdir = tempfile.mkdtemp(prefix="wetmarket-scale-")
            link = os.path.join(self._tmpdir, "scale")
        self.port = os.path.abspath(link)
        self.pty_path = ""
        self._corrupt_left = 0
        self._corrupted_last = False
        self._truncate_left = 0
        self._mangle_until = 0.0
        self._hang_until = 0.0
        self._powerup_until = 0.0
        #: Zero and tare commands held for a stable weight, with their deadlines.
        self._held: list[tuple[Command, float]] = []
        self._script: list[tuple[float, str, str]] = []
        self._script_t0 = 0.0
        self._plug()

    # ---- plumbing -------------------------------------------------------------
    def _plug(self) -> None:
        if os.path.exists(self.port) and not os.path.islink(self.port):
            raise LinkError(f"{self.port} exists and is not a symlink: not replacing it")
        try:
            master, slave = os.openpty()
        except OSError as exc:
            raise LinkError(f"cannot open a pseudo-terminal: {exc}") from exc
        # Raw, so the pty neither echoes our frames back nor edits them as text.
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self.pty_path = os.ttyname(slave)
        tmp = self.port + ".new"
        try:
            if os.path.lexists(tmp):
                os.unlink(tmp)
            os.symlink(self.pty_path, tmp)
            os.replace(tmp, self.port)  # atomic: the path never points nowhere while plugged
        except OSError as exc:
            os.close(master)
            os.close(slave)
            self._master = self._slave = None
            raise LinkError(f"cannot link {self.port} to the pty: {exc}") from exc
        logger.info(
            "scale simulator (%s, %s) on %s -> %s", self.protocol, self.variant, self.port, self.pty_path
        )

    def _unplug(self) -> None:
        if os.path.lexists(self.port):
            os.unlink(self.port)
        for fd in (self._master, self._slave):
            if fd is not None:
                os.close(fd)
        self._master = self._slave = None

    def _write(self, data: bytes) -> None:
        with self._lock:
            if self._master is None or not data:
                return
            # Nobody reads the other end and its buffer is full: a module does not care.
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(self._master, data)

    # ---- public: lifecycle --------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"scale-sim:{self.protocol}")
        self._thread.daemon = True
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        with self._lock:
            self._unplug()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> Simulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- public: the plate --------------------------------------------------------
    def place(self, grams: int) -> None:
        """Put a load of ``grams`` on the plate (replacing what was there)."""
        with self._lock:
            self.module.cell.set_load(grams, time.monotonic())

    def remove(self) -> None:
        self.place(0)

    def overload(self) -> None:
        self.place(self.capacity_g + 20 * self.e_g)

    @property
    def settled_at(self) -> float:
        """Monotonic time at which the last load change settles within ±0.5e."""
        return self.module.cell.settled_at

    # ---- public: faults -------------------------------------------------------------
    def unplug(self) -> None:
        with self._lock:
            self._unplug()
        logger.info("scale simulator unplugged")

    def replug(self) -> None:
        with self._lock:
            if self._master is None:
                self._plug()

    @property
    def plugged(self) -> bool:
        return self._master is not None

    def inject_garbage(self, data: bytes) -> None:
        self._write(data)

    def corrupt(self, frames: int = 1) -> None:
        """Flip one bit in ``frames`` of the coming frames, every second one (line noise:
        isolated bit errors, so a bad checksum, or a wrong digit where there is none)."""
        with self._lock:
            self._corrupt_left += frames

    def truncate(self, frames: int = 1) -> None:
        """Cut the next ``frames`` frames in half (a partial frame)."""
        with self._lock:
            self._truncate_left += frames

    def hang(self, seconds: float) -> None:
        """For ``seconds``, the firmware hangs: the port stays, nothing is sent or answered."""
        with self._lock:
            self._hang_until = time.monotonic() + seconds

    def power_up(self, seconds: float) -> None:
        """For ``seconds``, the module has just been switched on and has not captured its
        zero: it has no valid weight (Mettler continuous sets SWB b6; each protocol says it
        its own way)."""
        with self._lock:
            self._powerup_until = time.monotonic() + seconds

    def wrong_line(self, seconds: float) -> None:
        """For ``seconds``, mangle every byte as a wrong baud rate or parity would."""
        with self._lock:
            self._mangle_until = time.monotonic() + seconds

    # ---- scripted scenarios -------------------------------------------------------------
    def run_script(self, script: list[tuple[float, str, str]]) -> None:
        """Play ``[(at_s, action, arg), ...]`` relative to now, on the simulator thread."""
        with self._lock:
            self._script = sorted(script)
            self._script_t0 = time.monotonic()

    @property
    def script_done(self) -> bool:
        return not self._script

    def _do(self, action: str, arg: str) -> None:
        actions = {
            "place": lambda: self.place(int(arg)),
            "remove": self.remove,
            "overload": self.overload,
            "unplug": self.unplug,
            "replug": self.replug,
            "garbage": lambda: self.inject_garbage(arg.encode() if arg else b"\x00\xff#?garbage"),
            "corrupt": lambda: self.corrupt(int(arg or 1)),
            "truncate": lambda: self.truncate(int(arg or 1)),
            "wrong-line": lambda: self.wrong_line(float(arg or 1.0)),
            "hang": lambda: self.hang(float(arg or 1.0)),
            "powerup": lambda: self.power_up(float(arg or 1.0)),
            "end": lambda: None,  # marks the length of a looped scenario
        }
        try:
            actions[action]()
        except KeyError:
            raise BridgeError(f"unknown scenario action {action!r}") from None

    # ---- the thread ------------------------------------------------------------------
    def _run(self) -> None:
        period = 1.0 / self.rate_hz
        next_tick = time.monotonic()
        streaming = self.codec.streams
        while not self._stop.is_set():
            now = time.monotonic()
            self._play_script(now)
            wait = max(0.0, next_tick - now) if streaming else 0.05
            master = self._master
            if master is None:
                self._stop.wait(min(wait, 0.05) or 0.01)
            else:
                try:
                    ready, _, _ = select.select([master], [], [], wait)
                except (OSError, ValueError):
                    ready = []  # unplugged under our feet
                if ready:
                    self._serve(master)
            now = time.monotonic()
            if self._held:
                self._held_commands(now)
            if streaming and now >= next_tick:
                self._send(now)
                next_tick += period
                if next_tick < now:
                    next_tick = now + period  # fell behind (suspended): no burst of old frames

    def _play_script(self, now: float) -> None:
        with self._lock:
            while self._script and self._script_t0 + self._script[0][0] <= now:
                _, action, arg = self._script.pop(0)
                self._do(action, arg)

    def _serve(self, master: int) -> None:
        try:
            data = os.read(master, 1024)
        except (BlockingIOError, OSError):
            return
        if time.monotonic() < self._hang_until:
            return  # a hung firmware reads nothing
        for cmd in self.codec.parse_commands(data):
            now = time.monotonic()
            self.commands.append((now, cmd))
            if cmd == "request":
                if not self.codec.streams:  # a streaming module ignores polls
                    self._send(now)
                continue
            if cmd == "probe":
                self._write(self.codec.encode_reply(cmd, True, Frame(None, None)))
                continue
            self._carry_out(cmd, now, now + STABLE_WAIT_S)

    def _carry_out(self, cmd: Command, now: float, deadline: float) -> None:
        """Carry out a command now, or hold it for a stable weight until ``deadline``."""
        with self._lock:
            ok, frame = self.module.command(cmd, now, may_wait=now < deadline)
            if ok is None:
                self._held.append((cmd, deadline))
                return
        logger.info("module %s: %s", cmd, "done" if ok else "refused")
        self._write(self.codec.encode_reply(cmd, ok, frame))

    def _held_commands(self, now: float) -> None:
        with self._lock:
            held, self._held = self._held, []
        for cmd, deadline in held:
            self._carry_out(cmd, now, deadline)

    def _send(self, now: float) -> None:
        if now < self._hang_until:
            return
        with self._lock:
            frame = self.module.frame(now)
            if now < self._powerup_until:
                frame = Frame(None, False, "error")
            raw = self.codec.encode(frame)
            if self._truncate_left:
                self._truncate_left -= 1
                raw = raw[: len(raw) // 2]
            elif self._corrupt_left and not self._corrupted_last:
                self._corrupt_left -= 1
                i = self.rng.randrange(1, max(2, len(raw) - 2))
                raw = raw[:i] + bytes([raw[i] ^ (1 << self.rng.randrange(7))]) + raw[i + 1 :]
                self._corrupted_last = True
            else:
                self._corrupted_last = False
            if self.line_noise and self.rng.random() < self.line_noise:
                # Noise in front of the frame, on the same line: a decoder that can tell
                # where the frame starts keeps it.
                raw = bytes(self.rng.choice(NOISE_BYTES) for _ in range(self.rng.randint(1, 3))) + raw
            if now < self._mangle_until:
                # A wrong baud rate or parity: the UART hands over shifted, high-bit bytes.
                raw = bytes(((b << 1) | 0x80) & 0xFF for b in raw)
            self.sent.append(Sent(now, frame))
            self._write(raw)


def parse_script(text: str) -> list[tuple[float, str, str]]:
    """``"0.5 place 512; 3 remove; 4 unplug; 5 replug"`` -> ``[(0.5, 'place', '512'), ...]``."""
    out: list[tuple[float, str, str]] = []
    for part in text.replace("\n", ";").split(";"):
        words = part.split()
        if not words:
            continue
        try:
            at = float(words[0])
        except ValueError:
            raise BridgeError(f"scenario step {part.strip()!r}: starts with no time") from None
        if len(words) < 2:
            raise BridgeError(f"scenario step {part.strip()!r}: no action")
        out.append((at, words[1], " ".join(words[2:])))
    return out


SCENARIOS = {
    # A stall's day in a minute: sales with return to zero between them.
    "sales": "1 place 512; 4 remove; 6 place 1280; 9 remove; 11 place 2345; 14 remove; 16 end",
    # Everything that goes wrong on a market counter.
    "faults": (
        "1 place 800; 3 garbage; 4 corrupt 3; 5 truncate 2; 6 wrong-line 1.5; 9 overload;"
        " 11 remove; 12 unplug; 14 replug; 16 place 300; 17 hang 1.5; 19 remove; 21 end"
    ),
}
