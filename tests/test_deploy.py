"""deploy/: the systemd units and the TLS reverse proxy, checked with the real tools.

* ``systemd-analyze verify`` reads each unit as systemd would (a misspelt option is a
  warning there, a failure here), and ``systemd-analyze security --offline`` scores the
  hardening: a unit that loses it scores above 2.0 ("OK" is below 4).
* nginx runs deploy/nginx/wetmarket.conf (ports and certificate swapped for the test's)
  in front of a live server: TLS, the big screen's live stream passing events through as
  they come, the session cookie Secure, the client's own X-Forwarded-For replaced.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import shutil
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import select

from edge.config import load_config
from server import db
from server.app import create_app
from server.settings import Settings
from tests.conftest import LiveServer, free_port
from tests.server.conftest import ADMIN, StallSim, register_stall
from tests.server.manage_client import add_manager, form_token

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
UNITS = {"wetmarket-server.service": "wetmarket-server.service",
         "wetmarket-stall@.service": "wetmarket-stall@S01.service"}
WETMARKET = str(Path(sys.executable).parent / "wetmarket")


def _tool(name: str) -> str:
    path = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}")
                                       if Path(p).exists()), None)
    if path is None:
        pytest.fail(f"{name} is not installed: scripts/bootstrap.sh test installs it")
    return path


@pytest.fixture(scope="module")
def units(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The units as shipped, with ExecStart pointing at this checkout's console script
    (``verify`` checks that the program exists)."""
    out = tmp_path_factory.mktemp("units")
    for name in UNITS:
        text = (DEPLOY / "systemd" / name).read_text()
        assert text.count("/opt/wetmarket/venv/bin/wetmarket ") == 1
        (out / name).write_text(text.replace("/opt/wetmarket/venv/bin/wetmarket ", f"{WETMARKET} "))
    return out


def _directives(name: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in (DEPLOY / "systemd" / name).read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_units_verify_without_a_warning(units: Path) -> None:
    analyze = _tool("systemd-analyze")
    r = subprocess.run([analyze, "verify", "--man=no", *(f"./{u}" for u in UNITS.values())],
                       cwd=units, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout + r.stderr == "", r.stdout + r.stderr


@pytest.mark.parametrize("unit", list(UNITS))
def test_units_are_hardened(units: Path, unit: str) -> None:
    d = _directives(unit)
    assert d["Restart"] == ["on-failure"]
    assert d["User"][0].startswith("wetmarket") and d["User"][0] != "root"
    assert d["StateDirectoryMode"] == ["0700"] and d["UMask"] == ["0077"]
    for key, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                       ("PrivateTmp", "yes"), ("DevicePolicy", "closed"), ("CapabilityBoundingSet", "")):
        assert d[key] == [value], key
    assert "StandardOutput" not in d  # the journal, systemd's default
    r = subprocess.run([_tool("systemd-analyze"), "security", "--offline=yes", "--no-pager",
                        f"./{UNITS[unit]}"], cwd=units, capture_output=True, text=True, timeout=60)
    score = re.search(r"Overall exposure level for \S+: (\d+\.\d)", r.stdout)
    assert score, r.stdout[-2000:] + r.stderr
    assert float(score.group(1)) <= 2.0, r.stdout


def test_the_stall_unit_reaches_only_its_devices() -> None:
    allowed = _directives("wetmarket-stall@.service")["DeviceAllow"]
    assert {"char-ttyUSB rw", "char-ttyACM rw", "char-ttyS rw", "char-video4linux rw"} <= set(allowed)
    assert _directives("wetmarket-server.service")["PrivateDevices"] == ["yes"]


def test_the_example_stall_config_fits_its_unit() -> None:
    """deploy/stall.example.toml loads, and keeps its data where the unit lets it write."""
    cfg = load_config(DEPLOY / "stall.example.toml")
    d = _directives("wetmarket-stall@.service")
    assert d["ExecStart"] == [
        "/opt/wetmarket/venv/bin/wetmarket stall --config /etc/wetmarket/stalls/%i.toml"]
    assert d["StateDirectory"] == ["wetmarket-stall/%i"]
    assert cfg.data_dir == Path(f"/var/lib/wetmarket-stall/{cfg.stall_id}")
    assert cfg.server.url.startswith("https://")


# ---- nginx in front of a live server -----------------------------------------------------------

def _certificate(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    crt, pem = folder / "fullchain.pem", folder / "privkey.pem"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return crt, pem


def _swap(text: str, old: str, new: str) -> str:
    assert text.count(old) >= 1, f"deploy/nginx/wetmarket.conf no longer has {old!r}"
    return text.replace(old, new)


class Proxy:
    def __init__(self, url: str, http_port: int, https_port: int, cafile: Path) -> None:
        self.url, self.http_port, self.https_port = url, http_port, https_port
        self.tls = ssl.create_default_context(cafile=str(cafile))

    def client(self, token: str | None = None,
               timeout: httpx.Timeout | float = 10) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, verify=self.tls, headers=headers, timeout=timeout)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, Proxy]]:
    nginx = _tool("nginx")
    tmp = tmp_path_factory.mktemp("nginx")
    crt, pem = _certificate(tmp)
    http_port, https_port = free_port(), free_port()
    app = create_app(Settings(db_url=f"sqlite:///{tmp / 'market.db'}", admin_token=ADMIN))
    with LiveServer(app) as server:
        site = (DEPLOY / "nginx" / "wetmarket.conf").read_text()
        site = _swap(site, "server 127.0.0.1:8000;", f"server 127.0.0.1:{server.port};")
        site = _swap(site, "    listen [::]:80;\n", "")
        site = _swap(site, "    listen [::]:443 ssl http2;\n", "")
        site = _swap(site, "listen 80;", f"listen 127.0.0.1:{http_port};")
        site = _swap(site, "listen 443 ssl http2;", f"listen 127.0.0.1:{https_port} ssl http2;")
        site = _swap(site, "/etc/wetmarket/tls/fullchain.pem", str(crt))
        site = _swap(site, "/etc/wetmarket/tls/privkey.pem", str(pem))
        (tmp / "site.conf").write_text(site)
        temp = " ".join(f"{kind}_temp_path {tmp / kind};" for kind in
                        ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (tmp / "nginx.conf").write_text(
            f"daemon off; master_process off; pid {tmp / 'nginx.pid'}; error_log {tmp / 'error.log'} warn;\n"
            f"events {{ worker_connections 64; }}\n"
            f"http {{ access_log off; {temp} include {tmp / 'site.conf'}; }}\n")
        check = subprocess.run([nginx, "-t", "-c", str(tmp / "nginx.conf")], capture_output=True,
                               text=True, timeout=30)
        assert check.returncode == 0, check.stderr
        proc = subprocess.Popen([nginx, "-c", str(tmp / "nginx.conf")], stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", https_port), timeout=1).close()
                    break
                except OSError:
                    assert proc.poll() is None and time.monotonic() < deadline, \
                        (tmp / "error.log").read_text()
                    time.sleep(0.05)
            yield server, Proxy(f"https://127.0.0.1:{https_port}", http_port, https_port, crt)
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def test_plain_http_is_sent_to_https(proxy: tuple[LiveServer, Proxy]) -> None:
    _server, px = proxy
    r = httpx.get(f"http://127.0.0.1:{px.http_port}/display", timeout=5)
    assert r.status_code == 301 and r.headers["location"].startswith("https://")
    with px.client() as c:
        ok = c.get("/healthz")
        assert ok.status_code == 200
        assert ok.headers["strict-transport-security"] == "max-age=63072000"


def test_live_events_pass_the_proxy_as_they_come(proxy: tuple[LiveServer, Proxy]) -> None:
    server, px = proxy
    sim = StallSim("S01")
    token = register_stall(server, sim)
    with px.client(timeout=httpx.Timeout(10, read=5)) as c, c.stream("GET", "/api/v1/events") as stream:
        assert stream.status_code == 200
        lines = stream.iter_lines()
        assert next(line for line in lines if line.startswith("event:")) == "event: hello"
        with px.client(token) as stall:  # the stall uploads through the proxy too
            sale = sim.sale([("1001", "西红柿", 512, 300, "500g")])
            r = stall.post("/api/v1/sales", json={"sales": [sale]})
            assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
        # Held in a proxy's buffer, the event would come as a read timeout.  (nginx also obeys
        # the server's own X-Accel-Buffering: no; the config does not count on it.)
        assert next(line for line in lines if line.startswith("event:")) == "event: sales"


def test_the_session_cookie_is_secure_behind_the_proxy(proxy: tuple[LiveServer, Proxy]) -> None:
    server, px = proxy
    add_manager(server, username="tls", password="菜场-secret-9")
    with px.client() as browser:
        form = browser.get("/manage/login")
        r = browser.post("/manage/login", data={"username": "tls", "password": "菜场-secret-9",
                                                "csrf_token": form_token(form), "next": "/manage"})
        assert r.status_code == 303, r.text
        cookie = r.headers["set-cookie"].lower()
        assert "wm_session=" in cookie and "; secure" in cookie and "httponly" in cookie


def test_a_client_cannot_choose_its_address_for_the_lockout(proxy: tuple[LiveServer, Proxy]) -> None:
    """The sign-in lockout counts failures per client address: one sent in X-Forwarded-For by
    the client itself is replaced by the proxy with the address it really came from."""
    server, px = proxy
    with px.client() as browser:
        form = browser.get("/manage/login")
        r = browser.post("/manage/login", data={"username": "nobody", "password": "wrong-1",
                                                "csrf_token": form_token(form), "next": "/manage"},
                         headers={"X-Forwarded-For": "203.0.113.9"})
        assert r.status_code == 401, r.text
    with server.app.state.sessionmaker() as session:
        addresses = set(session.execute(select(db.SignInFailure.subject)
                                        .where(db.SignInFailure.scope == "addr")).scalars())
    assert addresses == {"127.0.0.1"}


def _deny_write_execute() -> None:
    """PR_SET_MDWE (Linux 6.3+): no memory both writable and executable, ever, in this process
    and what it executes: the rule the server's unit sets with MemoryDenyWriteExecute=yes."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
        raise OSError(ctypes.get_errno(), "PR_SET_MDWE")


def test_the_server_works_without_writable_code(tmp_path: Path) -> None:
    """MemoryDenyWriteExecute=yes in the server's unit: argon2 (sign-in), libsodium (a sale's
    signature), SQLite and the pages all run without writable code."""
    port = free_port()
    admin = "deploy-admin-token"
    proc = subprocess.Popen([WETMARKET, "server", "--db", f"sqlite:///{tmp_path / 'm.db'}", "--port",
                             str(port)], env={"PATH": "/usr/bin:/bin", "WETMARKET_ADMIN_TOKEN": admin},
                            preexec_fn=_deny_write_execute, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
                time.sleep(0.1)
        sim = StallSim("S01")
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {admin}"}, timeout=10) as c:
            assert c.post("/api/v1/managers", json={"username": "wang", "display_name": "王",
                                                    "password": "菜场-secret-1"}).status_code == 201
            r = c.post("/api/v1/stalls", json={"stall_id": "S01", "name": "王记",
                                               "public_key": sim.public_key})
            token = r.json()["token"]
        sale = sim.sale([("1001", "西红柿", 512, 300, "500g")])
        r = httpx.post(f"{base}/api/v1/sales", json={"sales": [sale]}, timeout=10,
                       headers={"Authorization": f"Bearer {token}"})
        assert r.json()["results"][0]["flags"] == [] and r.json()["accepted"] == 1, r.text
        with httpx.Client(base_url=base, timeout=10) as browser:
            form = browser.get("/manage/login")
            assert browser.post("/manage/login", data={
                "username": "wang", "password": "菜场-secret-1", "csrf_token": form_token(form),
                "next": "/manage"}).status_code == 303
            assert browser.get("/manage").status_code == 200
            assert browser.get("/display").status_code == 200
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_a_stall_works_without_writable_code(tmp_path: Path) -> None:
    """MemoryDenyWriteExecute=yes in the stall's unit: the pty scale, onnxruntime's recogniser
    on camera frames (OpenCV), pricing, signing and the journal all run without writable code;
    the simulated vendor sells and checks out."""
    import cv2
    import numpy as np

    from edge.demo import write_stall_config
    from edge.demo_data import catalogue

    camera = tmp_path / "camera"
    rng = np.random.default_rng(1)
    for label in {item["label"] for item in catalogue("S01", "20261202") if item.get("label")}:
        (camera / label).mkdir(parents=True)
        cv2.imwrite(str(camera / label / "1.jpg"), rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))
    stall = tmp_path / "S01"
    stall.mkdir()
    write_stall_config(stall / "stall.toml", "S01", "王记", "王", "http://127.0.0.1:9", "",
                       camera, seed=1, day=dt.date(2026, 12, 2))
    proc = subprocess.Popen([WETMARKET, "-v", "stall", "--config", str(stall / "stall.toml")],
                            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
                            preexec_fn=_deny_write_execute, stdout=subprocess.DEVNULL,
                            stderr=(tmp_path / "stall.log").open("wb"))
    try:
        journal, deadline = stall / "journal.sqlite3", time.monotonic() + 60
        sold = 0
        while sold < 3:  # the first weighing may come before the recogniser is warm
            assert proc.poll() is None, (tmp_path / "stall.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "stall.log").read_text()[-3000:]
            time.sleep(0.5)
            if journal.exists():
                con = sqlite3.connect(journal)
                try:
                    sold = con.execute("SELECT COUNT(*) FROM sales").fetchone()[0]
                except sqlite3.OperationalError:
                    sold = 0  # the schema is being created
                finally:
                    con.close()
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0, (tmp_path / "stall.log").read_text()[-3000:]
    log = (tmp_path / "stall.log").read_text()
    assert "Traceback" not in log
    # The vendor saw the recogniser's guesses (onnxruntime ran) for each weighed line it sold.
    picks = re.search(r"camera picks: (\d+) taken as recognised, (\d+) corrected", log)
    assert picks and int(picks.group(1)) + int(picks.group(2)) >= 1, log[-3000:]
