"""A real ``wetmarket server`` process on 127.0.0.1 (the big screen's restart test, the
README's screenshot): started from this virtual environment, stopped as a service is."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx


class ServerAt:
    """What the helpers written for an in-process ``LiveServer`` need of a server process:
    its port, its URL and a client (with a bearer token or none)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def client(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10,
                            headers={"Authorization": f"Bearer {token}"} if token else {})


def start(db: str, port: int, log: Path, admin_token: str) -> subprocess.Popen[bytes]:
    """``wetmarket server`` on ``db`` and ``port``, once it answers /healthz; its stderr
    appended to ``log``."""
    env = {**os.environ, "WETMARKET_ADMIN_TOKEN": admin_token}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "wetmarket"), "server", "--db", db,
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=log.open("ab"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            if proc.poll() is not None:
                break
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"wetmarket server did not start: {log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, as a service manager stops it; killed if it has not ended after 15 s."""
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(15)
