"""``wetmarket demo``: the market server and three simulated stalls, sales flowing.

The market is entered first as a real one is (``edge.demo_seed``: catalogue, prices,
specials, rapid tests, a manager), so the stalls sell from the market's feed, not only
from their configs' seeds.

Each part runs as its own process, as in a real market: the server, and one
``wetmarket stall`` per stall (each with a weighing-module simulator on a
pseudo-terminal, read through pyserial).  The children run in their own
process group, so Ctrl-C reaches only us and we stop them in order: stalls
first (their outbox drains), then the server.

The demo supervises its children as systemd supervises them in a real market
(``deploy/systemd/``, ``Restart=on-failure``): a child that dies is started again
after a back-off (1 s, doubling to 30 s; a child that ran for a minute starts again
at 1 s), each restart logged; one that dies ``START_LIMIT_BURST`` times within
``START_LIMIT_INTERVAL_S`` stops the demo, as systemd's start limit stops a unit.
A stall loses nothing by it: its journal is durable and its outbox sends again
what the server has not answered for (the server answers a resent sale ``duplicate``).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from edge import EdgeError
from edge.demo_data import STALLS, catalogue
from edge.demo_seed import seed_market

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent

#: systemd's ``RestartSec`` and its growth (``RestartSteps``/``RestartMaxDelaySec``).
RESTART_FIRST_S = 1.0
RESTART_MAX_S = 30.0
#: A child that ran this long was healthy: its next restart waits RESTART_FIRST_S again.
RESTART_RESET_AFTER_S = 60.0
#: systemd's ``StartLimitBurst`` within ``StartLimitIntervalSec``: a child that keeps
#: dying (a broken config, a port taken) stops the demo instead of looping for ever.
START_LIMIT_BURST = 5
START_LIMIT_INTERVAL_S = 120.0


@dataclass
class Child:
    """One supervised process: how to start it again, and its restarts."""

    name: str
    args: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None
    started_at: float = 0.0
    delay_s: float = RESTART_FIRST_S
    restart_at: float | None = None  # monotonic time of the pending restart
    deaths: list[float] = field(default_factory=list)  # monotonic times, within the start limit


def find_dataset() -> Path | None:
    """The grocery-store photos, when present (``$WETMARKET_DATASET`` or ``../shared``)."""
    env = os.environ.get("WETMARKET_DATASET")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared/data/grocery-store"]:
        if (cand / "val").is_dir():
            return cand
    return None


def toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (mode 0600), atomically.

    The file is created with its mode (never chmod-ed afterwards, so it is not
    world-readable even for an instant) under a temporary name, then renamed into place.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def screen_port(server_port: int, index: int) -> int:
    """The ``index``-th stall's screen port: the server's + 101, + 102, ... (8101 for the
    default 8000), else any free one when that is taken or out of range."""
    wanted = server_port + 101 + index
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", wanted if wanted <= 65535 else 0))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_stall_config(path: Path, stall_id: str, name: str, vendor: str, server: str, token: str,
                       camera: Path | None, seed: int, day: dt.date, screens_port: int = 0) -> None:
    """The stall's TOML config; it holds the stall's bearer token, so only its owner reads it."""
    lines = [
        f"stall_id = {toml_str(stall_id)}",
        f"name = {toml_str(name)}",
        f"vendor = {toml_str(vendor)}",
        'data_dir = "."',
        "simulate_vendor = true",
        f"seed = {seed}",
        "",
        "[server]",
        f"url = {toml_str(server)}",
        f"token = {toml_str(token)}",
        "",
        "[scale]",
        'port = "sim"',
        'protocol = "cas"',
        "",
        "[camera]",
    ]
    if camera is not None:
        lines.append(f"source = {toml_str(str(camera))}")
    lines += ["", "[printer]", 'type = "file"', "", "[screens]", f"port = {screens_port}", ""]
    for item in catalogue(stall_id, day.strftime("%Y%m%d")):
        lines.append("[[catalogue]]")
        lines += [f"{k} = {toml_str(v) if isinstance(v, str) else v}"
                  for k, v in item.items() if v is not None]
        lines.append("")
    write_private(path, "\n".join(lines))


class Demo:
    def __init__(self, port: int, data_dir: Path, duration: float | None) -> None:
        from server.settings import Settings

        self.port = port
        # The server's market zone (its local day): the console's clock and the batch
        # codes' day agree with the big screen and the receipts, whatever zone this host runs in.
        self.tz = Settings().tz
        self.data_dir = data_dir.resolve()
        self.duration = duration
        self.base = f"http://127.0.0.1:{port}"
        self.children: list[Child] = []
        self.stop = threading.Event()

    @property
    def procs(self) -> list[tuple[str, subprocess.Popen[bytes]]]:
        """The children running now, by name (the server first)."""
        return [(c.name, c.proc) for c in self.children if c.proc is not None]

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        child = Child(name, args, env or {})
        self.children.append(child)
        self._start(child)

    def _start(self, child: Child) -> None:
        if child.log is not None:
            child.log.close()
        # Appended to: a restarted child's log follows its earlier life's.
        log = open(self.data_dir / f"{child.name}.log", "ab")  # noqa: SIM115 - closed in shutdown()
        child.log = log
        child.proc = subprocess.Popen([sys.executable, "-m", "edge.cli", *child.args], stdout=log,
                                      stderr=subprocess.STDOUT, env={**os.environ, **child.env},
                                      start_new_session=True)
        child.started_at = time.monotonic()
        child.restart_at = None

    def _supervise(self, now: float) -> None:
        """Restart the children that died, after their back-off; raise at the start limit."""
        for child in self.children:
            if child.restart_at is not None:
                if now >= child.restart_at:
                    logger.warning("restarting %s (restart %d)", child.name, len(child.deaths))
                    self._start(child)
                continue
            if child.proc is None or child.proc.poll() is None:
                continue
            code = child.proc.returncode
            if now - child.started_at >= RESTART_RESET_AFTER_S:
                child.delay_s = RESTART_FIRST_S
            child.deaths = [t for t in child.deaths if now - t < START_LIMIT_INTERVAL_S] + [now]
            if len(child.deaths) >= START_LIMIT_BURST:
                raise EdgeError(f"{child.name} exited with code {code} {len(child.deaths)} times "
                                f"in {START_LIMIT_INTERVAL_S:.0f} s; see "
                                f"{self.data_dir / (child.name + '.log')}")
            logger.warning("%s exited with code %s; restarting it in %.0f s (see %s)", child.name, code,
                           child.delay_s, self.data_dir / (child.name + ".log"))
            child.restart_at = now + child.delay_s
            child.delay_s = min(child.delay_s * 2, RESTART_MAX_S)

    def _wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            name, proc = self.procs[0]
            if proc.poll() is not None:
                log = (self.data_dir / "server.log").read_text(errors="replace").strip()
                raise EdgeError(f"market server exited: {log.splitlines()[-1] if log else '?'}")
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise EdgeError(f"market server did not answer on {self.base} within {timeout:.0f} s")

    def run(self) -> int:
        from server.cli import check_port_free

        check_port_free("127.0.0.1", self.port)
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)
        # Owner only: the stalls' configs hold their tokens, and their folders their keys.
        self.data_dir.mkdir(parents=True, mode=0o700)
        admin = os.urandom(18).hex()
        # INFO: the server's log says what happened (stalls registered, sign-ins), never a secret.
        self._spawn("server", ["-v", "server", "--db", f"sqlite:///{self.data_dir / 'market.db'}",
                               "--port", str(self.port)], {"WETMARKET_ADMIN_TOKEN": admin})
        try:
            self._wait_healthy()
            dataset = find_dataset()
            camera = dataset / "val" if dataset else None
            now = dt.datetime.now(self.tz)
            with httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {admin}"},
                              timeout=30) as c:
                tokens = {}
                for sid, name, _vendor in STALLS:
                    r = c.post("/api/v1/stalls", json={"stall_id": sid, "name": name})
                    r.raise_for_status()
                    tokens[sid] = r.json()["token"]
                # The market's office work before the stalls open: they start on its feed.
                login = seed_market(c, now)
            screens: list[tuple[str, str]] = []
            for i, (sid, name, vendor) in enumerate(STALLS):
                sdir = self.data_dir / sid
                sdir.mkdir(mode=0o700)
                port = screen_port(self.port, i)
                screens.append((sid, f"http://127.0.0.1:{port}"))
                write_stall_config(sdir / "stall.toml", sid, name, vendor, self.base, tokens[sid],
                                   camera, seed=1000 + i, day=now.date(), screens_port=port)
                # INFO: the logs show each feed version the stall receives and puts in use.
                self._spawn(sid, ["-v", "stall", "--config", str(sdir / "stall.toml")])
            print(f"big screen:   {self.base}/display", flush=True)
            print(f"manager:      {self.base}/manage  (sign in as {login.username}, "
                  f"password {login.password})", flush=True)
            print(f"today (JSON): {self.base}/api/v1/stats/today", flush=True)
            print(f"API docs:     {self.base}/docs", flush=True)
            print(f"admin token:  {admin}", flush=True)
            # Each stall's two screens: the vendor's and the customer's (明码标价).
            for sid, url in screens:
                print(f"{sid} screens:  {url}/vendor  {url}/customer", flush=True)
            print(f"camera:       {camera or 'off (no photos found): vendors choose items by hand'}",
                  flush=True)
            print(f"data, logs and receipts: {self.data_dir}", flush=True)
            self._watch()
        finally:
            self.shutdown()
        return 0

    def _watch(self) -> None:
        start = time.monotonic()
        last_print = 0.0
        while not self.stop.is_set():
            if self.duration is not None and time.monotonic() - start >= self.duration:
                return
            self._supervise(time.monotonic())
            if time.monotonic() - last_print >= 5:
                last_print = time.monotonic()
                try:
                    d = httpx.get(f"{self.base}/api/v1/stats/today", timeout=2).json()
                    print(f"{dt.datetime.now(self.tz):%H:%M:%S}  sales {d['sales']:4d}  "
                          f"total ￥{d['total_fen'] / 100:,.2f}", flush=True)
                except (httpx.HTTPError, ValueError, KeyError):
                    pass
            self.stop.wait(0.25)

    def shutdown(self) -> None:
        """Stalls first (so their last sales reach the server), then the server."""
        for group in ([p for p in self.procs if p[0] != "server"],
                      [p for p in self.procs if p[0] == "server"]):
            for _name, proc in group:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for name, proc in group:
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    logger.warning("%s did not stop in time; killing it", name)
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        for child in self.children:
            if child.log is not None:
                child.log.close()
        self.children.clear()
