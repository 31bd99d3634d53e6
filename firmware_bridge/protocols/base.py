"""What every weighing-module codec shares: the decoded frame, line settings, framing.

A codec is pure: bytes in, frames out, no I/O.  The host side feeds whatever the
port delivered (a whole burst or one byte at a time) to :meth:`Codec.feed` and
gets back the complete frames it holds; partial frames wait in the codec's
buffer, garbage is dropped and counted in :attr:`Codec.stats`.  The module side
(:meth:`Codec.encode`, :meth:`Codec.parse_commands`) is what the simulator uses;
the decoder accepts every variant a real module of the family sends, the encoder
speaks the one variant chosen (``variant``), so the simulator can exercise each.
Frames captured from real modules and written in manuals are tested apart from the
simulator (tests/firmware_bridge/fixtures/outside_frames.py), so a dialect that
only our encoder speaks cannot hide there.
"""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass
from typing import ClassVar, Literal, NamedTuple

from firmware_bridge import BridgeError, FrameError

FrameStatus = Literal["ok", "overload", "underload", "error"]
Command = Literal["request", "zero", "tare", "clear_tare", "probe"]
COMMANDS: tuple[Command, ...] = ("request", "zero", "tare", "clear_tare", "probe")


class Frame(NamedTuple):
    """One decoded module frame, in integer grams.

    ``weight_g`` is what the module displays: net when ``net`` is set, else gross;
    ``None`` when the frame carries no weight (overload, motion-only status, reply).
    ``stable`` is the module's own stable flag, ``None`` when the protocol has none.
    ``counts`` is set instead of ``weight_g`` by raw ADC boards.
    ``reply`` is set for command acknowledgements (e.g. ``"Z A"``), which are not weights.

    A NamedTuple rather than a frozen dataclass: it is built once per frame and the
    tuple constructor is several times cheaper, which the decode-rate budget needs.
    """

    weight_g: int | None
    stable: bool | None
    status: FrameStatus = "ok"
    net: bool = False
    tare_g: int | None = None
    counts: int | None = None
    reply: str | None = None


@dataclass(frozen=True, slots=True)
class LineSettings:
    """UART settings, in pyserial's terms."""

    baudrate: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: float = 1

    def as_kwargs(self) -> dict[str, object]:
        return {
            "baudrate": self.baudrate,
            "bytesize": self.bytesize,
            "parity": self.parity,
            "stopbits": self.stopbits,
        }


@dataclass(slots=True)
class DecodeStats:
    """What a decoder kept and what it threw away (never silently)."""

    frames: int = 0
    bad_frames: int = 0  # framed but invalid: checksum, digits, impossible values
    dropped_bytes: int = 0  # bytes that belonged to no frame (noise, partial frames)
    last_error: str = ""
    resync_bytes: int = 0  # skipped on purpose after a (re)connect: not a fault

    def copy(self) -> DecodeStats:
        return DecodeStats(
            self.frames, self.bad_frames, self.dropped_bytes, self.last_error, self.resync_bytes
        )


_DECIMAL = re.compile(r" *([+-]?) *([0-9]*)(?:\.([0-9]*))? *", re.ASCII)


def decimal_to_g(text: str, grams_per_unit: int) -> int:
    """``'-1.234'`` kg -> ``-1234``; sub-gram digits are rounded half away from zero.

    Integer arithmetic only: a float would turn 0.29 kg into 289 g.
    """
    m = _DECIMAL.fullmatch(text)
    if m is None or not (m.group(2) or m.group(3)):
        raise FrameError(f"not a decimal weight: {text!r}")
    sign, ip, fp = m.group(1), m.group(2) or "0", m.group(3) or ""
    den = 10 ** len(fp)
    num = (int(ip) * den + int(fp or "0")) * grams_per_unit
    grams = (2 * num + den) // (2 * den)
    return -grams if sign == "-" else grams


def grams_to_decimal(grams: int, decimals: int, grams_per_unit: int = 1000) -> str:
    """``1234, 3`` -> ``'1.234'`` (no sign; the caller formats it), rounded half up."""
    grams = abs(grams)
    scaled = (2 * grams * 10**decimals + grams_per_unit) // (2 * grams_per_unit)
    if decimals == 0:
        return str(scaled)
    s = str(scaled).rjust(decimals + 1, "0")
    return f"{s[:-decimals]}.{s[-decimals:]}"


UNIT_GRAMS = {"kg": 1000, "g": 1, "t": 1_000_000}
# Units a module may be set to that are not legal for trade here (China's legal units are
# SI): a well-formed frame in them is the module reporting a wrong setting, not a weight.
NON_LEGAL_UNITS = frozenset({"lb", "oz"})


class NeedMore(Exception):
    """Raised by :meth:`Codec._frame_at`: the frame may go on past the bytes received so far."""


class Codec(abc.ABC):
    """Base of every protocol codec; subclasses set the class attributes and ``_decode``.

    Framing comes in two kinds, chosen by ``terminator``:

    * line protocols (``terminator`` set): the stream is cut at the terminator and
      each line must match ``pattern``; a line that does not may still end with a frame
      that does (line noise in front of it on the same line): that frame is taken and the
      noise counted as dropped, unless ``noise_prefix`` is off (a protocol whose frames
      have no fixed start, where noise could change the value); anything else on the
      line is a bad frame.  After :meth:`reset` with ``resync`` the first line is dropped,
      as it may be a tail;
    * marked protocols (``terminator`` is ``None``): ``pattern`` (fixed widths, a start
      marker) is searched for; the bytes skipped to reach it are dropped.  A codec whose
      frame length depends on what follows (an optional checksum) overrides
      :meth:`_frame_at`.

    ``variants`` names the dialects the module side can speak (the first is the default);
    the decoder accepts them all.
    """

    name: ClassVar[str]
    line: ClassVar[LineSettings] = LineSettings()
    polled: ClassVar[bool] = False
    has_stable_flag: ClassVar[bool] = True
    raw_counts: ClassVar[bool] = False
    pattern: ClassVar[re.Pattern[bytes]]
    terminator: ClassVar[bytes | None] = None
    start: ClassVar[bytes] = b"\x02"  # marked protocols: every frame begins with this
    max_frame: ClassVar[int] = 64
    host_commands: ClassVar[dict[Command, bytes]] = {}
    noise_prefix: ClassVar[bool] = True
    variants: ClassVar[tuple[str, ...]] = ("standard",)
    # The identify probe (host_commands["probe"]): the reply the module answers it with, and
    # what the host sends after a successful probe.
    probe_reply: ClassVar[str | None] = None
    probe_done: ClassVar[bytes] = b""

    def __init__(self, variant: str | None = None) -> None:
        if variant is None:
            variant = self.variants[0]
        elif variant not in self.variants:
            raise BridgeError(
                f"protocol {self.name} has no variant {variant!r} (known: {', '.join(self.variants)})"
            )
        self.variant = variant  # module side: the dialect encode() speaks
        self._buf = bytearray()
        self._cmd_buf = bytearray()
        self._skipping = ""  # "", "resync" or "overlong": drop up to the next terminator
        self._suffix: re.Pattern[bytes] | None = None
        if self.terminator is not None and self.noise_prefix:
            # The same frame, anchored at the end of the line (re caches the compiled pattern).
            self._suffix = re.compile(rb"(?:" + self.pattern.pattern + rb")\Z", self.pattern.flags)
        self.stats = DecodeStats()

    @property
    def streams(self) -> bool:
        """Module side: whether the module sends frames unasked (else it answers polls)."""
        return not self.polled

    # ---- host side -----------------------------------------------------------
    def feed(self, data: bytes) -> list[Frame]:
        """Add received bytes; return every complete, valid frame now decoded."""
        if not data:
            return []
        self._buf += data
        if self.terminator is not None:
            return self._feed_lines()
        return self._feed_marked()

    def _feed_lines(self) -> list[Frame]:
        term = self.terminator
        assert term is not None
        parts = self._buf.split(term)
        tail = parts.pop()
        if self._skipping and parts:
            # The rest of a line cut for being too long, or the line we came in on after a
            # resync: its end is no frame.
            skipped = len(parts.pop(0)) + len(term)
            if self._skipping == "resync":
                self.stats.resync_bytes += skipped
            else:
                self.stats.dropped_bytes += skipped
            self._skipping = ""
        out: list[Frame] = []
        fullmatch = self.pattern.fullmatch
        suffix = self._suffix
        for raw in parts:
            m = fullmatch(raw)
            if m is None and suffix is not None:
                m = suffix.search(raw)
                if m is not None:
                    self.stats.dropped_bytes += m.start()  # line noise in front of the frame
            if m is None:
                self._bad(raw, "unrecognised line")
                continue
            try:
                out.append(self._decode(m))
            except FrameError as exc:
                self._bad(raw, str(exc))
        if len(tail) > self.max_frame:
            # A line this long can no longer become a valid frame; nor can its end.
            self.stats.dropped_bytes += len(tail)
            tail = bytearray()
            self._skipping = "overlong"
        self._buf = bytearray(tail)
        self.stats.frames += len(out)
        return out

    def _feed_marked(self) -> list[Frame]:
        buf = self._buf
        out: list[Frame] = []
        pos = 0
        search = self.pattern.search
        frame_at = self._frame_at
        waiting = -1
        while True:
            m = search(buf, pos)
            if m is None:
                break
            start = m.start()
            if start > pos:
                self.stats.dropped_bytes += start - pos
            try:
                frame, pos = frame_at(m, buf)
            except NeedMore:
                waiting = pos = start
                break
            except FrameError as exc:
                # Resync one byte later: the real frame may start inside this one.
                self._bad(m.group(0), str(exc), count_bytes=False)
                self.stats.dropped_bytes += 1
                pos = start + 1
                continue
            out.append(frame)
        # Keep only what could still become a frame: from the last start marker on
        # (a start byte inside a frame only occurs in its final check byte).
        last = waiting if waiting >= 0 else buf.rfind(self.start, pos)
        keep_from = len(buf) if last < 0 else last
        if last < 0:
            for k in range(len(self.start) - 1, 0, -1):  # a marker cut in two
                if buf.endswith(self.start[:k]) and len(buf) - k >= pos:
                    keep_from = len(buf) - k
                    break
        if len(buf) - keep_from > self.max_frame:
            keep_from = len(buf)
        self.stats.dropped_bytes += keep_from - pos
        del buf[:keep_from]
        self.stats.frames += len(out)
        return out

    def _bad(self, raw: bytes | bytearray, why: str, count_bytes: bool = True) -> None:
        self.stats.bad_frames += 1
        if count_bytes:
            self.stats.dropped_bytes += len(raw)
        self.stats.last_error = f"{self.name}: {why}: {bytes(raw[:40])!r}"

    @abc.abstractmethod
    def _decode(self, m: re.Match[bytes]) -> Frame:
        """The frame of one matched piece of the stream; FrameError if it does not check."""

    def _frame_at(self, m: re.Match[bytes], buf: bytearray) -> tuple[Frame, int]:
        """Marked protocols: the frame ``m`` starts and where it ends in ``buf``; NeedMore when
        that depends on bytes not received yet."""
        return self._decode(m), m.end()

    def reset(self, resync: bool = False) -> None:
        """Forget any partial frame.  ``resync``: the next bytes may start mid-frame (a port
        just opened on a streaming module), so a line protocol drops everything up to the
        first terminator: the tail of ``100000``, ``0``, is a valid but wrong count."""
        self._buf.clear()
        self._skipping = "resync" if resync and self.terminator is not None else ""

    def command(self, name: Command) -> bytes:
        """The bytes the host sends for ``name``; BridgeError if the module has no such command."""
        try:
            return self.host_commands[name]
        except KeyError:
            raise BridgeError(f"protocol {self.name} has no '{name}' command") from None

    def supports(self, name: Command) -> bool:
        return name in self.host_commands

    # ---- module side (simulator) ----------------------------------------------
    @abc.abstractmethod
    def encode(self, frame: Frame) -> bytes:
        """The bytes a module sends for ``frame``."""

    def encode_reply(self, command: Command, ok: bool, frame: Frame) -> bytes:
        """What the module answers to a zero/tare/clear-tare command (most say nothing)."""
        return b""

    def parse_commands(self, data: bytes) -> list[Command]:
        """Module side: the host commands in ``data`` (buffered; unknown bytes skipped)."""
        buf = self._cmd_buf
        buf += data
        out: list[Command] = []
        # Longest first, so 'TAC' is not read as 'T' + garbage.
        table = sorted(self.host_commands.items(), key=lambda kv: -len(kv[1]))
        while buf:
            for name, raw in table:
                if buf.startswith(raw):
                    out.append(name)
                    del buf[: len(raw)]
                    break
            else:
                if any(raw.startswith(bytes(buf)) for _, raw in table):
                    break  # a command still arriving
                del buf[:1]
        return out
