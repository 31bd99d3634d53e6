"""Bodies the server refuses before reading them: too large (413) or without a valid token (401).

Each check talks to a real server on 127.0.0.1.  "Before reading" is shown on the wire:
the request's headers announce a body that is never sent, and the answer must still come.
The memory test runs ``wetmarket server`` in its own process and reads its resident size.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import h11
import httpx
import pytest

from server.guard import DEFAULT_BODY_LIMIT, REFUNDS_BODY_LIMIT, SALES_BODY_LIMIT
from tests.conftest import LiveServer, free_port
from tests.server.conftest import ADMIN, StallSim
from tests.server.conftest import register_stall as _register

SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

MiB = 1024 * 1024


def announce_only(port: int, method: str, path: str, length: int,
                  token: str | None = None, timeout: float = 10.0) -> tuple[int, Any]:
    """Send only the headers of a request announcing ``length`` body bytes; the answer.

    A server that waited for the body would time out here (``socket.timeout``).
    """
    headers = [("Host", "127.0.0.1"), ("Content-Type", "application/json"),
               ("Content-Length", str(length))]
    if token is not None:
        headers.append(("Authorization", f"Bearer {token}"))
    conn = h11.Connection(h11.CLIENT)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(conn.send(h11.Request(method=method, target=path, headers=headers)))
        status, body = 0, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return status, json.loads(body)


#: (method, path, who may call it, its limit)
NO_TOKEN = {"stall": "stall bearer token required",
            "manager": "sign in as a market manager, or send the admin bearer token"}
BODY_ROUTES = [
    ("POST", "/api/v1/sales", "stall", SALES_BODY_LIMIT),
    ("POST", "/api/v1/refunds", "stall", REFUNDS_BODY_LIMIT),
    ("POST", "/api/v1/stalls", "manager", DEFAULT_BODY_LIMIT),  # a signed-in one, or the admin token
    ("PUT", "/api/v1/stalls/S01/key", "stall", DEFAULT_BODY_LIMIT),
]


@SQLITE
def test_a_body_announced_over_the_limit_is_refused_before_it_is_sent(server: LiveServer) -> None:
    token = _register(server, StallSim("S01"))
    for method, path, who, limit in BODY_ROUTES:
        status, body = announce_only(server.port, method, path, limit + 1,
                                     token=token if who == "stall" else ADMIN)
        assert status == 413, (path, body)
        assert body["detail"] == f"request body over {limit} bytes; send less at a time"
        # 10 GB announced: still answered at once, nothing was read.
        assert announce_only(server.port, method, path, 10**10, token=token)[0] == 413


@SQLITE
def test_a_streamed_body_is_counted_and_refused_past_the_limit(server: LiveServer) -> None:
    token = _register(server, StallSim("S01"))
    chunk = b" " * 65536  # JSON whitespace, so only the size is wrong
    for method, path, who, limit in BODY_ROUTES:
        chunks = (chunk for _ in range(limit // len(chunk) + 2))
        with server.client(token if who == "stall" else ADMIN) as c:
            r = c.request(method, path, content=chunks, headers={"Content-Type": "application/json"})
            assert r.request.headers.get("transfer-encoding") == "chunked"
            assert "content-length" not in r.request.headers
        assert r.status_code == 413, (path, r.text)
        assert r.headers["content-type"] == "application/json"
        assert r.json()["detail"] == f"request body over {limit} bytes; send less at a time"


@SQLITE
def test_no_token_or_a_wrong_one_is_refused_before_the_body_is_read(server: LiveServer) -> None:
    token = _register(server, StallSim("S01"))
    for method, path, who, limit in BODY_ROUTES:
        status, body = announce_only(server.port, method, path, limit)
        assert (status, body["detail"]) == (401, NO_TOKEN[who]), path
        wrong = "not-a-token" if who == "stall" else token
        status, body = announce_only(server.port, method, path, limit, token=wrong)
        assert status == 401, (path, body)
        assert body["detail"] == ("unknown stall token" if who == "stall" else "bad admin token")


@SQLITE
def test_set_key_checks_the_token_before_the_body(server: LiveServer) -> None:
    token = _register(server, StallSim("S01"))

    def put_bad_body(c: httpx.Client) -> httpx.Response:
        return c.put("/api/v1/stalls/S01/key", content=b"{not json",
                     headers={"Content-Type": "application/json"})

    with server.client() as c:
        r = put_bad_body(c)
    assert (r.status_code, r.json()["detail"]) == (401, "stall bearer token required")
    assert r.headers["www-authenticate"] == "Bearer"
    with server.client(token) as c:
        r = put_bad_body(c)
    assert r.status_code == 422  # with the token, the body is read and found wanting


@SQLITE
def test_the_largest_legitimate_batch_fits_the_sales_limit(server: LiveServer) -> None:
    """500 sales of 100 lines, each line as a stall's basket writes it (edge.basket)."""
    sim = StallSim("S01")
    token = _register(server, sim)
    lines = [(str(1000 + i), "西红柿番茄", 1234, 300, "500g") for i in range(100)]
    sales = []
    for _ in range(500):
        sale = sim.sale(lines)
        for line in sale["lines"]:
            line["name_en"] = "Tomato (vine)"
        sales.append(sale)
    body = json.dumps({"sales": sales}).encode()  # ASCII escapes: the longer way to write it
    assert 9 * MiB < len(body) < SALES_BODY_LIMIT
    with server.client(token) as c:
        c.timeout = httpx.Timeout(120)
        r = c.post("/api/v1/sales", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text[:300]
    assert r.json()["accepted"] == 500


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_big_bodies_do_not_grow_the_server_process(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "WETMARKET_ADMIN_TOKEN": ADMIN}
    cmd = [str(Path(sys.executable).parent / "wetmarket"), "server", "--db", f"sqlite:///{tmp_path / 'm.db'}",
           "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/healthz", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
        sim = StallSim("S01")
        with httpx.Client(base_url=url, timeout=60) as c:
            r = c.post("/api/v1/stalls", json={"stall_id": "S01", "name": "x"},
                       headers={"Authorization": f"Bearer {ADMIN}"})
            token = r.json()["token"]
            auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            # Warm up every path the bodies below take, then measure.
            assert c.post("/api/v1/sales", json={"sales": [sim.sale([("1", "香蕉", 1000, 690, "kg")])]},
                          headers=auth).status_code == 200
            before = _rss_kib(proc.pid)
            # Valid JSON, so code that parsed it would hold millions of Python objects.
            fifty = json.dumps({"sales": [{"sale_id": "x" * 30}] * (50 * MiB // 45)}).encode()
            # Under the sales limit: only the token stops it.
            ten = json.dumps({"sales": [{"sale_id": "x" * 30}] * (10 * MiB // 45)}).encode()
            answers = []
            for body, headers in [(fifty, {}), (ten, {}), (ten, {"Authorization": "Bearer wrong"}),
                                  (fifty, auth)]:
                for _ in range(4):
                    r = c.post("/api/v1/sales", content=body, headers={"Content-Type": "application/json",
                                                                       **headers})
                    answers.append(r.status_code)
            streamed = c.post("/api/v1/sales", headers=auth,
                              content=(fifty[i:i + MiB] for i in range(0, len(fifty), MiB)))
            answers.append(streamed.status_code)
            after = _rss_kib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    # 16 bodies of 10-50 MB and one streamed 50 MB one; that one is held up to the
    # 16 MiB limit at most, then freed.
    assert after - before < 24 * 1024, f"server grew from {before} KiB to {after} KiB"
    assert answers == [413] * 4 + [401] * 8 + [413] * 5
