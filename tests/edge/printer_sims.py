"""Real fake printers for tests: a TCP one on 127.0.0.1 and a serial one on a pty.

Both record every byte they receive and answer ``DLE EOT 1`` / ``DLE EOT 4``
with the configured bytes (``None``: stay silent, like a printer that cannot
report).
"""

from __future__ import annotations

import os
import select
import socket
import threading


class _Answering:
    def __init__(self, online: int | None = 0x12, paper: int | None = 0x12) -> None:
        self.online, self.paper = online, paper
        self.received = bytearray()
        self._scanned = 0
        self.lock = threading.Lock()

    def reset(self) -> None:
        """Forget what was received (and where the status-query scan stood)."""
        with self.lock:
            self.received.clear()
            self._scanned = 0

    def _feed(self, chunk: bytes) -> bytes:
        """Record ``chunk``; return the replies owed for status queries completed by it."""
        replies = bytearray()
        with self.lock:
            self.received += chunk
            while True:
                at = self.received.find(b"\x10\x04", self._scanned)
                if at < 0 or at + 2 >= len(self.received):
                    self._scanned = max(self._scanned, len(self.received) - 2)
                    break
                answer = {1: self.online, 4: self.paper}.get(self.received[at + 2])
                if answer is not None:
                    replies.append(answer)
                self._scanned = at + 3
        return bytes(replies)


class TcpPrinter(_Answering):
    """Serves one connection at a time, like a real port-9100 printer."""

    def __init__(self, online: int | None = 0x12, paper: int | None = 0x12) -> None:
        super().__init__(online, paper)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self._done = threading.Condition()
        self.closed_count = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                while chunk := conn.recv(4096):
                    replies = self._feed(chunk)
                    if replies:
                        conn.sendall(replies)
            with self._done:
                self.closed_count += 1
                self._done.notify_all()

    def wait_closed(self, total: int) -> None:
        """Wait until ``total`` connections since the start have been served and closed.

        A count, not "the last one closed": a client's connection can sit in the
        kernel's backlog before this thread accepts it.
        """
        with self._done:
            assert self._done.wait_for(lambda: self.closed_count >= total, timeout=5), (
                f"{self.closed_count} of {total} printer connections closed")

    def stop(self) -> None:
        self.server.close()


class PtyPrinter(_Answering):
    """A printer on the master side of a pseudo-terminal; ``path`` is the slave's name."""

    def __init__(self, online: int | None = 0x12, paper: int | None = 0x12) -> None:
        super().__init__(online, paper)
        self.master, self._slave = os.openpty()  # the slave stays open: no EIO between opens
        self.path = os.ttyname(self._slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not select.select([self.master], [], [], 0.05)[0]:
                continue
            try:
                chunk = os.read(self.master, 4096)
            except OSError:
                return
            replies = self._feed(chunk)
            if replies:
                os.write(self.master, replies)

    def wait_for(self, size: int) -> bytes:
        for _ in range(200):
            with self.lock:
                if len(self.received) >= size:
                    return bytes(self.received)
            self._stop.wait(0.01)
        return bytes(self.received)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(1)
        os.close(self.master)
        os.close(self._slave)
