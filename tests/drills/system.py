"""The drills' market: a ``wetmarket server`` process on SQLite and three ``wetmarket stall``
processes, each reading its own scale simulator through a pseudo-terminal, as
``wetmarket demo`` starts them, but with no simulated vendor: a drill sells as a vendor
does, through the stall screen's HTTP actions (weigh on the simulator, pick, checkout).

The simulators live in the test process behind a stable symlink (``Simulator(link=...)``),
so a stall killed with ``kill -9`` and started again reopens the same scale, and a drill
can unplug and replug it.  S01 and S02 print to files; S03 to an ESC/POS printer on
127.0.0.1 (``tests.edge.printer_sims.TcpPrinter``) whose paper can run out.

What every drill ends with (:meth:`System.settle`): each stall's journal fully uploaded,
its sales stored once each at the server (by sale_id), stall and server totals equal to
the 分, and each stall's screen state (``/api/state``, what /vendor shows) saying the
scale and the server are fine.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from edge.demo import toml_str, write_private
from firmware_bridge.sim import Simulator
from tests.conftest import free_port
from tests.edge.printer_sims import TcpPrinter
from tests.server import server_process
from tests.server.conftest import ADMIN

REPO = Path(__file__).resolve().parents[2]

#: Per stall: a weighed item (per kg) and one sold by the piece, with their prices in 分.
ITEMS: dict[str, list[tuple[str, str, str, int, str]]] = {
    "S01": [("1003", "香蕉", "Banana", 690, "kg"), ("1007", "柠檬", "Lemon", 300, "piece")],
    "S02": [("2003", "胡萝卜", "Carrot", 380, "kg"), ("2011", "玉米", "Sweet corn", 250, "piece")],
    "S03": [("3001", "红薯", "Sweet potato", 450, "kg"), ("3006", "石榴", "Pomegranate", 900, "piece")],
}
STALL_NAMES = {"S01": "鲜果摊 王记", "S02": "时令蔬菜 李家", "S03": "菌菇杂蔬 张氏"}


#: One client for every call to the stalls' screens (plain HTTP on 127.0.0.1: no CA file
#: read per call), shared by the load's threads.
HTTP = httpx.Client(verify=False, trust_env=False)

#: The faults a stall's screen shows while something is wrong (a camera there is none of).
NOT_NORMAL = {"scale", "server", "printer", "basket", "disk"}


class DrillError(AssertionError):
    """A drill's step did not happen within its bound."""


def until(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``cond`` every 20 ms until it is truthy; its value, or DrillError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise DrillError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.02)


def screen_ports(n: int) -> list[int]:
    """``n`` distinct free ports for the stalls' screens (held together while chosen, so no
    two stalls get the same one; each stall keeps its port across restarts)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


class Market:
    """The server process, killed, paused and started again on one database and port."""

    def __init__(self, root: Path) -> None:
        self.db_path = root / "market.db"
        self.log = root / "server.log"
        self.at = server_process.ServerAt(free_port())
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Start it; seconds until it answered /healthz."""
        t0 = time.monotonic()
        self.proc = server_process.start(f"sqlite:///{self.db_path}", self.at.port, self.log, ADMIN)
        return time.monotonic() - t0

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP: it holds its connections and answers nothing (a hung machine)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)  # a paused server cannot take SIGTERM
            server_process.stop(self.proc)
            self.proc = None

    def sold_at(self, sale_id: str) -> dt.datetime:
        """The sale's time as the server stored it (UTC)."""
        db = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10)
        try:
            (raw,) = db.execute("SELECT sold_at FROM sales WHERE sale_id = ?", (sale_id,)).fetchone()
        finally:
            db.close()
        return dt.datetime.fromisoformat(str(raw)).replace(tzinfo=dt.UTC)

    def sales(self, stall_id: str) -> list[tuple[str, int]]:
        """(sale_id, total_fen) of every row the server stored for the stall (read straight
        from its database, so a sale stored twice shows twice)."""
        db = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10)
        try:
            return [(str(r[0]), int(r[1])) for r in db.execute(
                "SELECT sale_id, total_fen FROM sales WHERE stall_id = ?", (stall_id,))]
        finally:
            db.close()

    def register(self, stall_id: str, name: str) -> str:
        with self.at.client(ADMIN) as c:
            r = c.post("/api/v1/stalls", json={"stall_id": stall_id, "name": name})
        assert r.status_code == 201, r.text
        return str(r.json()["token"])


class Stall:
    """One ``wetmarket stall`` process, its scale simulator and its data folder."""

    def __init__(self, stall_id: str, root: Path, server_url: str, token: str, port: int,
                 printer: TcpPrinter | None, data_dir: Path | None = None) -> None:
        self.id = stall_id
        self.dir = root / stall_id
        self.dir.mkdir(mode=0o700)
        self.data_dir = data_dir or self.dir
        self.log = root / f"{stall_id}.log"
        self.port = port
        self.url = f"http://127.0.0.1:{self.port}"
        self.printer = printer
        self.sim = Simulator(protocol="cas", capacity_g=15000, e_g=5, seed=int(stall_id[1:]),
                             link=str(self.dir / "scale"))
        self.sim.start()
        self.config = self.dir / "stall.toml"
        self._write_config(server_url, token)
        self.proc: subprocess.Popen[bytes] | None = None

    def _write_config(self, server_url: str, token: str) -> None:
        lines = [f"stall_id = {toml_str(self.id)}", f"name = {toml_str(STALL_NAMES[self.id])}",
                 'vendor = "摊主"', f"data_dir = {toml_str(str(self.data_dir))}", "",
                 "[server]", f"url = {toml_str(server_url)}", f"token = {toml_str(token)}", "",
                 "[scale]", f"port = {toml_str(self.sim.port)}", 'protocol = "cas"', "",
                 "[screens]", f"port = {self.port}", "", "[orders]", "enabled = false", "", "[printer]"]
        if self.printer is None:
            lines += ['type = "file"', f"path = {toml_str(str(self.dir / 'receipts'))}"]
        else:
            lines += ['type = "network"', 'host = "127.0.0.1"', f"port = {self.printer.port}"]
        for plu, zh, en, fen, unit in ITEMS[self.id]:
            lines += ["", "[[catalogue]]", f"plu = {toml_str(plu)}", f"name = {toml_str(zh)}",
                      f"name_en = {toml_str(en)}", f"unit_price_fen = {fen}",
                      f"price_unit = {toml_str(unit)}", f"batch_code = {toml_str('B20261202-' + plu[-2:])}"]
        write_private(self.config, "\n".join(lines) + "\n")

    # -- the process ---------------------------------------------------------------------------
    def spawn(self, env: dict[str, str] | None = None) -> None:
        """Start the stall process (with ``env`` added to its environment, if given)."""
        assert self.proc is None or self.proc.poll() is not None
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "-v", "stall", "--config",
                                          str(self.config)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                         env={**os.environ, **(env or {})}, start_new_session=True)

    def wait_up(self, timeout: float = 60) -> dict[str, Any]:
        """Until its screens answer with the flow running; that state."""
        def up() -> dict[str, Any] | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise DrillError(f"stall {self.id} exited with {self.proc.returncode}: "
                                 f"{self.log.read_text(errors='replace')[-1500:]}")
            try:
                st = self.state()
            except httpx.HTTPError:
                return None
            if st["stall"]["id"] != self.id:
                raise DrillError(f"{self.url} answers as stall {st['stall']['id']}, not {self.id}")
            return st if st["flow"]["state"] != "not_ready" else None
        return dict(until(up, timeout, f"stall {self.id} up"))

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        assert self.proc.wait(10) == -signal.SIGKILL
        self.proc = None

    def stop(self) -> int:
        """SIGTERM, as systemd stops it; its exit code."""
        assert self.proc is not None
        self.proc.terminate()
        try:
            code = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(10)
        self.proc = None
        return code

    # -- the vendor's screen ---------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        r = HTTP.get(f"{self.url}/api/state", timeout=5)
        r.raise_for_status()
        return dict(r.json())

    def post(self, path: str, body: dict[str, Any] | None = None, ok: bool = True) -> dict[str, Any]:
        r = HTTP.post(f"{self.url}{path}", json=body, timeout=15)
        if ok:
            assert r.status_code == 200, (self.id, path, r.status_code, r.text)
        return {"status": r.status_code, **r.json()}

    def flow_state(self) -> str:
        return str(self.state()["flow"]["state"])

    def weigh(self, plu: str, grams: int) -> dict[str, Any]:
        """Put ``grams`` on the plate, tap ``plu``, see it priced, empty the plate; the line."""
        lines = len(self.state()["flow"]["basket"])
        self.sim.place(grams)
        until(lambda: self.flow_state() == "choosing", 10, f"{self.id} choosing at {grams} g")
        self.post("/api/confirm", {"code": plu})
        basket = until(lambda: (b := self.state()["flow"]["basket"]) and len(b) > lines and b,
                       10, f"{self.id} priced {plu}")
        self.sim.remove()
        until(lambda: self.flow_state() == "idle", 10, f"{self.id} idle after weighing")
        return dict(basket[-1])

    def pieces(self, plu: str, quantity: int) -> dict[str, Any]:
        return self.post("/api/pieces", {"code": plu, "quantity": quantity})

    def checkout(self) -> dict[str, Any]:
        """Tap checkout; the sale journaled (its receipt printed, or queued for reprint)."""
        body = self.post("/api/checkout")
        assert body["ok"] and body["sale"] is not None, body
        return body

    def sell_pieces(self) -> dict[str, Any]:
        """One quick sale by the piece (the load's): its sale."""
        plu = ITEMS[self.id][1][0]
        self.pieces(plu, 1)
        return dict(self.checkout()["sale"])

    # -- its journal -----------------------------------------------------------------------------
    def journal(self) -> dict[str, tuple[int, str]]:
        """sale_id -> (total_fen, upload state), read from the journal file (the stall may run)."""
        db = sqlite3.connect(f"file:{self.data_dir / 'journal.sqlite3'}?mode=ro", uri=True, timeout=10)
        try:
            return {str(sid): (int(json.loads(doc)["total_fen"]), str(st))
                    for sid, doc, st in db.execute("SELECT sale_id, doc, upload_state FROM sales")}
        finally:
            db.close()


class System:
    """The market server and the three stalls."""

    def __init__(self, root: Path, full_disk: Path | None = None) -> None:
        self.root = root
        self.market = Market(root)
        self.paper = TcpPrinter()
        self.stalls: dict[str, Stall] = {}
        self.full_disk = full_disk
        #: Why S02's small disk could not be mounted (its data folder is then an ordinary one).
        self.no_small_disk: str | None = None

    def start(self) -> None:
        self.market.start()
        ports = screen_ports(3)
        for sid, port in zip(("S01", "S02", "S03"), ports, strict=True):
            token = self.market.register(sid, STALL_NAMES[sid])
            self.stalls[sid] = Stall(sid, self.root, self.market.at.url, token, port,
                                     self.paper if sid == "S03" else None,
                                     data_dir=self.full_disk if sid == "S02" else None)
        for stall in self.stalls.values():
            stall.spawn()
        for stall in self.stalls.values():
            stall.wait_up()

    def stop(self) -> None:
        running = [s for s in self.stalls.values() if s.proc is not None]
        for stall in running:  # all at once: each drains its outbox while the others do
            assert stall.proc is not None
            stall.proc.terminate()
        for stall in running:
            stall.stop()
        self.market.stop()
        for stall in self.stalls.values():
            stall.sim.stop()
        self.paper.stop()

    def screens_fine(self, stall: Stall) -> bool:
        """The stall's screen says the scale and the server are fine and nothing is queued."""
        st = stall.state()
        kinds = {f["kind"] for f in st["faults"]}
        return (st["flow"]["state"] != "not_ready" and not kinds & NOT_NORMAL
                and st["server"]["online"] is True and st["server"]["queue"] == 0)

    def settle(self, timeout: float = 60) -> dict[str, int]:
        """Wait for every stall to be back to normal with its queue drained, then check that
        no sale is lost or stored twice and the totals agree to the 分.  Per stall, its total."""
        for stall in self.stalls.values():
            until(lambda s=stall: self.screens_fine(s), timeout, f"{stall.id} back to normal: "  # type: ignore[misc]
                  f"{stall.state()['faults'] if stall.proc else 'not running'}")
        totals = {}
        for sid, stall in self.stalls.items():
            journal = stall.journal()
            assert {st for _, st in journal.values()} <= {"sent"}, (sid, journal)
            stored = self.market.sales(sid)
            ids = [sale_id for sale_id, _ in stored]
            assert len(ids) == len(set(ids)), f"{sid}: a sale stored twice: {ids}"
            assert sorted(ids) == sorted(journal), f"{sid}: journal and server differ"
            assert dict(stored) == {k: fen for k, (fen, _) in journal.items()}, sid
            totals[sid] = sum(fen for fen, _ in journal.values())
            assert sum(fen for _, fen in stored) == totals[sid]
        return totals
