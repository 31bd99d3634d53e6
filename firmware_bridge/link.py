"""``Link``: the serial line to one weighing module, kept alive on its own thread.

It opens any pyserial URL or device path with the protocol's line settings,
polls or listens as the protocol needs, turns frames into :class:`Reading` s and
reconnects by itself after an unplug.  Its rules, in order of importance:

* a weight older than ``freshness_s`` is never current: :meth:`Link.latest`
  answers ``None`` instead;
* a weight is stable only when the module flags it *and* it equals the previous
  frame's weight (one frame of confirmation, so one corrupted frame of a
  checksum-less protocol can never be a stable weight); for modules without a
  flag, when the host filter says so (:mod:`firmware_bridge.filters`: ±1e over
  0.5 s and 5 frames, whichever is longer, so it holds from 5 to 50 frames/s);
* garbage, bad checksums, a wrong baud rate or parity are dropped and counted,
  and show as ``state == "error"`` with one log line, never as a weight.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Literal

import serial

from firmware_bridge import BridgeError, LinkError
from firmware_bridge.audit import AuditLog
from firmware_bridge.calibration import Calibration
from firmware_bridge.filters import MIN_SAMPLES, WINDOW_S, StabilityFilter
from firmware_bridge.protocols import Codec, DecodeStats, Frame, get_protocol
from firmware_bridge.reading import Reading

logger = logging.getLogger(__name__)

LinkState = Literal["online", "offline", "error"]


class Link:
    """The host end of one scale.  ``start()`` it, read ``latest()``, ``stop()`` it."""

    def __init__(
        self,
        url: str,
        protocol: str = "cas",
        on_reading: Callable[[Reading], None] | None = None,
        freshness_s: float = 1.0,
        *,
        poll_hz: float | None = None,
        reconnect_s: float = 0.25,
        max_g: int | None = None,
        e_g: int = 5,
        filter_window_s: float = WINDOW_S,
        filter_band_g: int | None = None,
        filter_min_samples: int = MIN_SAMPLES,
        average_n: int = 3,
        calibration: Calibration | None = None,
        audit: AuditLog | None = None,
        on_state: Callable[[LinkState, str], None] | None = None,
        stop_event: threading.Event | None = None,
    ) -> None:
        self.url = url
        self.codec: Codec = get_protocol(protocol)
        self.protocol = protocol
        self.on_reading = on_reading
        self.on_state = on_state  # called on the link's thread at each state change
        self.freshness_s = freshness_s
        if poll_hz is None:
            # Flagless modules are polled faster: our own filter needs samples to decide.
            poll_hz = 25.0 if self.codec.has_stable_flag else 40.0
        if self.codec.polled and (poll_hz <= 0 or 2.0 / poll_hz > freshness_s):
            # One lost reply must not make the weight stale before the next poll answers.
            raise ValueError(
                f"poll_hz={poll_hz:g} is too slow for freshness_s={freshness_s:g}: "
                "poll at least twice per freshness_s"
            )
        self.poll_period = 1.0 / poll_hz
        self.reconnect_s = reconnect_s
        self.calibration = calibration
        self.audit = audit
        # Modules that cannot say "overload" (XK3190, Dahua, PS1X) just send big numbers:
        # above Max + 9e the host blanks the weight itself, as R76 asks of the display.
        self.overload_above_g = None if max_g is None else max_g + 9 * e_g
        self._filter = StabilityFilter(
            filter_window_s, e_g if filter_band_g is None else filter_band_g, filter_min_samples
        )
        self._counts: deque[int] = deque(maxlen=max(1, average_n))
        self._raw_counts: deque[int] = deque(maxlen=1024)
        self._raw_total = 0
        self._state: LinkState = "offline"
        self._state_reason = "not started"
        self._latest: Reading | None = None
        self._latest_mono = 0.0
        self._last_frame_mono = 0.0
        self._last_bytes_mono = 0.0
        self._prev_weight: tuple[int, bool] | None = None
        self._module_tare_g = 0
        self._port: serial.SerialBase | None = None
        self._write_lock = threading.Lock()
        # Held from a command's write until its audit entry is recorded, and by the reader
        # before it records the module's reply: a fast module's refusal ("Z I") must follow
        # the command in the audit log, never precede it.
        self._command_lock = threading.Lock()
        # A stall passes its one stop event, which every worker of the stall ends on.
        self._own_stop = stop_event is None
        self._stop = threading.Event() if stop_event is None else stop_event
        self._thread: threading.Thread | None = None
        self._changed = threading.Condition()
        self._logged_stats = DecodeStats()
        self._warned_uncalibrated = False
        self._last_drop_log = 0.0

    # ---- public -----------------------------------------------------------------
    @property
    def state(self) -> LinkState:
        return self._state

    @property
    def state_reason(self) -> str:
        return self._state_reason

    @property
    def stats(self) -> DecodeStats:
        return self.codec.stats.copy()

    def start(self) -> None:
        if self._thread is not None:
            return
        if self._own_stop:
            self._stop.clear()  # a restart; a shared event is its owner's to clear
        self._thread = threading.Thread(target=self._run, name=f"link:{self.url}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)  # (a callback may call stop() on the link's own thread)
        self._close()

    def __enter__(self) -> Link:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def latest(self) -> Reading | None:
        """The newest reading, or ``None`` when it is older than ``freshness_s``."""
        reading = self._latest
        if reading is None or time.monotonic() - self._latest_mono > self.freshness_s:
            return None
        return reading

    def wait_for(
        self, predicate: Callable[[Reading], bool] = lambda r: True, timeout: float = 5.0
    ) -> Reading | None:
        """Block until a fresh reading satisfies ``predicate`` (tests, CLIs); ``None`` on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                reading = self.latest()
                if reading is not None and predicate(reading):
                    return reading
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(min(left, 0.1))

    def collect_counts(self, n: int, timeout: float = 5.0) -> list[int]:
        """The next ``n`` raw counts of a raw-count module (for calibration)."""
        if not self.codec.raw_counts:
            raise BridgeError(f"protocol {self.protocol} sends weights, not raw counts")
        n = min(n, self._raw_counts.maxlen or n)
        deadline = time.monotonic() + timeout
        with self._changed:
            start = self._raw_total
            while self._raw_total - start < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LinkError(
                        f"{self.url}: only {self._raw_total - start} of {n} samples in "
                        f"{timeout:g} s (link {self._state}: {self._state_reason})"
                    )
                self._changed.wait(min(left, 0.1))
            return list(self._raw_counts)[-n:]

    def zero(self) -> None:
        self._command("zero")

    def tare(self) -> None:
        self._command("tare")

    def clear_tare(self) -> None:
        self._command("clear_tare")

    def probe(self, timeout: float = 1.0) -> bool:
        """Whether the module answers its protocol's identify probe (Toledo 8217: ``Ehello``
        -> ``STX E CR hello``, the check Odoo's driver makes).  Call it before :meth:`start`:
        it opens the port itself.  BridgeError when the protocol has no probe, LinkError
        when the port cannot be opened or written."""
        if self._thread is not None:
            raise BridgeError("probe() runs before start(): the link's thread owns the port")
        codec = get_protocol(self.protocol)
        ask, line = codec.command("probe"), codec.line
        try:
            port = serial.serial_for_url(
                self.url, timeout=0.05, write_timeout=1.0, baudrate=line.baudrate,
                bytesize=line.bytesize, parity=line.parity, stopbits=line.stopbits,
            )  # fmt: skip
        except (serial.SerialException, OSError, ValueError) as exc:
            raise LinkError(f"{self.url}: cannot open: {exc}") from exc
        try:
            port.reset_input_buffer()
            port.write(ask)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if any(f.reply == codec.probe_reply for f in codec.feed(port.read(64))):
                    port.write(codec.probe_done)
                    return True
            return False
        except (serial.SerialException, OSError) as exc:
            raise LinkError(f"{self.url}: probe failed: {exc}") from exc
        finally:
            port.close()

    # ---- commands ---------------------------------------------------------------
    def _command(self, name: Literal["zero", "tare", "clear_tare"]) -> None:
        raw = self.codec.command(name)  # BridgeError when the protocol has none
        if name == "tare":
            current = self.latest()
            if current is None or not current.stable or current.gross_g is None:
                raise BridgeError("tare refused: the weight is not stable")
            self._module_tare_g = current.gross_g
        elif name == "clear_tare":
            self._module_tare_g = 0
        with self._command_lock:
            self._write(raw)
            if self.audit is not None:
                self.audit.record(name, f"{self.protocol} module command sent")
        logger.info("%s: sent %s to the module", self.url, name)

    def _write(self, raw: bytes) -> None:
        with self._write_lock:
            port = self._port
            if port is None:
                raise LinkError(f"{self.url}: scale is offline ({self._state_reason})")
            try:
                port.write(raw)
            except (serial.SerialException, OSError) as exc:
                raise LinkError(f"{self.url}: write failed: {exc}") from exc

    # ---- the thread -------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            if self._port is None and not self._open():
                self._stop.wait(self.reconnect_s)
                self._check_silence()
                continue
            try:
                self._pump()
            except (serial.SerialException, OSError) as exc:
                self._close()
                self._set_state("offline", f"port lost: {exc}")
                self._stop.wait(self.reconnect_s)
            except Exception as exc:  # a bug must cost a reconnect, never the scale link
                logger.exception("%s: link loop failed", self.url)
                self._close()
                self._set_state("error", f"internal error: {exc!r}")
                self._stop.wait(self.reconnect_s)

    def _open(self) -> bool:
        line = self.codec.line
        try:
            port = serial.serial_for_url(
                self.url,
                timeout=self.poll_period if self.codec.polled else 0.1,
                write_timeout=1.0,
                baudrate=line.baudrate,
                bytesize=line.bytesize,
                parity=line.parity,
                stopbits=line.stopbits,
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            self._set_state("offline", f"cannot open: {exc}")
            return False
        with contextlib.suppress(serial.SerialException, OSError):
            port.reset_input_buffer()  # bytes queued before we came are stale by definition
        self.codec.reset(resync=True)
        self._filter.reset()
        self._prev_weight = None
        with self._write_lock:
            self._port = port
        self._last_frame_mono = self._last_bytes_mono = time.monotonic()
        logger.info("%s: opened (%s)", self.url, self.protocol)
        return True

    def _close(self) -> None:
        with self._write_lock:
            port, self._port = self._port, None
        if port is not None:
            with contextlib.suppress(serial.SerialException, OSError):
                port.close()

    def _pump(self) -> None:
        port = self._port
        assert port is not None
        next_poll = 0.0
        request = self.codec.host_commands.get("request") if self.codec.polled else None
        while not self._stop.is_set():
            now = time.monotonic()
            if request is not None and now >= next_poll:
                with self._write_lock:
                    port.write(request)
                next_poll = now + self.poll_period
            data = port.read(1)
            if data:
                waiting = port.in_waiting  # type: ignore[attr-defined]
                if waiting:
                    data += port.read(waiting)
                self._received(data)
            self._check_silence()

    def _received(self, data: bytes) -> None:
        now_mono = time.monotonic()
        self._last_bytes_mono = now_mono
        frames = self.codec.feed(data)
        if frames:
            now_wall = time.time()
            for frame in frames:
                self._frame(frame, now_mono, now_wall)
        self._log_drops()

    def _frame(self, frame: Frame, now_mono: float, now_wall: float) -> None:
        if frame.reply is not None:
            if frame.status != "ok":
                logger.warning("%s: module refused a command: %s", self.url, frame.reply)
                with self._command_lock:
                    self._audit_quietly(f"module reply {frame.reply}")
            return
        self._last_frame_mono = now_mono
        reading = self._reading(frame, now_mono, now_wall)
        if reading is None:
            return
        if reading.status == "error":
            self._set_state("error", "the module reports an error")
        else:
            self._set_state("online", "frames arriving")
        with self._changed:
            self._latest = reading
            self._latest_mono = now_mono
            self._changed.notify_all()
        if self.on_reading is not None:
            try:
                self.on_reading(reading)
            except Exception:  # a broken consumer must not kill the scale link
                logger.exception("%s: on_reading callback failed", self.url)

    def _reading(self, frame: Frame, now_mono: float, now_wall: float) -> Reading | None:
        if frame.status != "ok":
            self._prev_weight = None
            self._filter.reset()
            return Reading(None, self._module_tare_g, None, False, frame.status, now_wall)
        grams = frame.weight_g
        if frame.counts is not None:
            with self._changed:
                self._raw_counts.append(frame.counts)
                self._raw_total += 1
            grams = self._calibrated(frame.counts)
            if grams is None:
                return Reading(None, 0, None, False, "error", now_wall)
        if grams is None:
            # A status-only frame (Toledo '?A'): the module says it is moving.
            self._prev_weight = None
            return Reading(None, self._module_tare_g, None, False, "motion", now_wall)
        if frame.net:
            tare = frame.tare_g if frame.tare_g is not None else self._module_tare_g
            gross, net = grams + tare, grams
        else:
            tare = 0
            gross = net = grams
        if self.overload_above_g is not None and gross > self.overload_above_g:
            self._prev_weight = None
            self._filter.reset()
            return Reading(None, tare, None, False, "overload", now_wall)
        if self.codec.has_stable_flag:
            key = (grams, frame.net)
            stable = bool(frame.stable) and self._prev_weight == key
            self._prev_weight = key
        else:
            stable = self._filter.update(now_mono, gross)
        return Reading(gross, tare, net, stable, "ok" if stable else "motion", now_wall)

    def _calibrated(self, counts: int) -> int | None:
        if self.calibration is None:
            if not self._warned_uncalibrated:
                logger.error("%s: raw-count module is not calibrated: no weight", self.url)
                self._warned_uncalibrated = True
            return None
        self._counts.append(counts)
        mean_num, n = sum(self._counts), len(self._counts)
        return self.calibration.to_grams_ratio(mean_num, n)

    def _check_silence(self) -> None:
        now = time.monotonic()
        if now - self._last_frame_mono <= self.freshness_s:
            return
        if self._port is not None and now - self._last_bytes_mono <= self.freshness_s:
            self._set_state("error", "bytes but no valid frame: wrong protocol, baud rate or parity?")
        elif self._port is not None:
            self._set_state("offline", f"no frame for {self.freshness_s:g} s")

    def _set_state(self, state: LinkState, reason: str) -> None:
        if state == self._state and reason == self._state_reason:
            return
        changed = state != self._state
        self._state, self._state_reason = state, reason
        if not changed:
            return
        if state != "online":
            # The module is gone or unintelligible: whatever it said last is not current.
            self._latest = None
        level = logging.INFO if state == "online" else logging.WARNING
        logger.log(level, "%s: %s (%s)", self.url, state, reason)
        if state != "online":
            self._audit_quietly(f"link {state}: {reason}")
        with self._changed:
            self._changed.notify_all()
        if self.on_state is not None:
            try:
                self.on_state(state, reason)
            except Exception:  # a broken consumer must not kill the scale link
                logger.exception("%s: on_state callback failed", self.url)

    def _audit_quietly(self, detail: str) -> None:
        """Audit an error event from the link's thread, where a full disk must not stop it."""
        if self.audit is None:
            return
        try:
            self.audit.record("error", detail)
        except BridgeError as exc:
            logger.error("%s: audit log not written: %s", self.url, exc)

    def _log_drops(self) -> None:
        stats, last = self.codec.stats, self._logged_stats
        if stats.bad_frames == last.bad_frames and stats.dropped_bytes == last.dropped_bytes:
            return
        now = time.monotonic()
        if now - self._last_drop_log < 1.0:
            return  # one line a second at most: a noisy line must not flood the log
        self._last_drop_log = now
        logger.warning(
            "%s: dropped %d bad frame(s) and %d byte(s) so far; last: %s",
            self.url,
            stats.bad_frames,
            stats.dropped_bytes,
            stats.last_error or "unframed bytes",
        )
        self._logged_stats = stats.copy()
