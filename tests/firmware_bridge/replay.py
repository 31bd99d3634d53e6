"""Replay fixed bytes into a raw pseudo-terminal: a module that says exactly what a
capture or a manual says, with none of our encoder or simulator in between."""

from __future__ import annotations

import os
import select
import threading
import time
import tty


class Replayer:
    """Plays ``frames`` (cycled) on the master end of a raw pty; :attr:`path` is the slave.

    Streaming: one frame every ``1 / rate_hz`` s.  Polled: one frame in answer to each
    read of host bytes.  ``answers`` maps a host command to the bytes sent back when it
    arrives (a probe), instead of a frame.
    """

    def __init__(
        self,
        frames: list[bytes],
        polled: bool,
        rate_hz: float = 25.0,
        answers: dict[bytes, bytes] | None = None,
    ) -> None:
        self.frames = frames
        self.polled = polled
        self.period = 1.0 / rate_hz
        self.answers = answers or {}
        self.received = bytearray()
        self._answered: dict[bytes, int] = {}
        self.sent = 0
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self.path = os.ttyname(slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="replayer", daemon=True)

    def __enter__(self) -> Replayer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        os.close(self._master)
        os.close(self._slave)

    def _send_next(self) -> None:
        frame = self.frames[self.sent % len(self.frames)]
        try:
            os.write(self._master, frame)
        except (BlockingIOError, OSError):
            return  # nobody reads and the buffer is full
        self.sent += 1

    def _run(self) -> None:
        next_tick = 0.0
        while not self._stop.is_set():
            timeout = self.period if self.polled else max(0.0, next_tick - time.monotonic())
            ready, _, _ = select.select([self._master], [], [], timeout)
            if ready:
                try:
                    data = os.read(self._master, 1024)
                except (BlockingIOError, OSError):
                    data = b""
                self.received += data
                answered = False
                for ask, answer in self.answers.items():
                    # (a command may arrive cut in two: count it in all that came)
                    for _ in range(self.received.count(ask) - self._answered.get(ask, 0)):
                        os.write(self._master, answer)
                        self._answered[ask] = self._answered.get(ask, 0) + 1
                        answered = True
                if data and self.polled and not answered:
                    self._send_next()
            if not self.polled and time.monotonic() >= next_tick:
                self._send_next()
                next_tick = time.monotonic() + self.period
