"""``wetmarket fair-scale``: the market's fair scale (公平秤), where a shopper re-weighs what
she bought and the receipt itself is checked.

The same scale link as a stall (``firmware_bridge.link.Link``, the simulator when ``port =
"sim"``) and the same legal weighing rules (``edge.weighing.Weigher``: only a stable,
in-range weight of at least Min counts).  The shopper scans her receipt's QR code, by the
camera (OpenCV's QR detector on each frame) or by a USB code reader that types the code
into the screen followed by Enter; the fair scale asks the market server what the receipt
is (genuine, forged, unverified; its lines, which are refunded), she picks a line or the
whole receipt, puts the goods on and taps 核对 (check).  The check is written to a small
durable queue (``edge.folder_outbox``) before it is sent: the server judges it by the legal
tolerance (``edge.tolerance``), records it and alerts the manager of a short weight.  With
the server away she still sees the measured weight, and the check is sent and judged when
it is back.

The device authenticates with the token a manager issues the fair scale
(``PUT /api/v1/fair-scale/token``), in ``[server] token``.  Its screen (``/fair``, on
127.0.0.1) is the stall screens' kind: one JSON state on a live channel, one HTTP call per
action (``edge.screens``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge import ConfigError, EdgeError
from edge.camera import Camera, ImageFolderCamera, OpenCVCamera
from edge.config import MarketConfig, ScaleConfig, ServerLink, load_toml
from edge.folder_outbox import FolderOutbox, detail
from edge.legal import legal_id
from edge.parts import start_in_order, stop_in_reverse
from edge.screens.hub import Publisher
from edge.weighing import Weigher

if TYPE_CHECKING:
    from firmware_bridge.link import Link
    from firmware_bridge.sim import Simulator

logger = logging.getLogger(__name__)

QUEUE_DIR = "check-outbox"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FairCameraConfig(_Strict):
    source: str | None = Field(None, title="Device index, stream URL or image folder showing the "
                               "receipt's QR code; none: a USB code reader only")
    scan_every_s: float = Field(0.3, gt=0, le=5, title="Seconds between two looks for a QR code")


class FairScreenConfig(_Strict):
    port: int = Field(8300, ge=0, le=65535, title="Port of /fair on 127.0.0.1; 0 takes any free port")


class FairCheckConfig(_Strict):
    vendor_e_g: int = Field(5, ge=1, le=100, title="e of the market's stall scales",
                            description="the legal tolerance is their in-service MPE (edge.tolerance)")


class FairScaleConfig(_Strict):
    device_id: str = Field("F01", pattern=r"^[A-Za-z0-9-]{1,16}$", title="This fair scale's name")
    name: str = Field("公平秤", max_length=32, title="Shown on the screen")
    data_dir: Path = Field(Path("var/fair-scale"), title="Queued checks and the scale's audit log")
    market: MarketConfig = MarketConfig()
    scale: ScaleConfig = ScaleConfig(max_g=15000, e_g=2)
    camera: FairCameraConfig = FairCameraConfig()
    server: ServerLink = ServerLink()
    screen: FairScreenConfig = FairScreenConfig()
    check: FairCheckConfig = FairCheckConfig()
    seed: int | None = Field(None, title="Simulator's random seed")

    @model_validator(mode="after")
    def _fine_enough(self) -> FairScaleConfig:
        # DOMAIN.md §2: a fair scale's e is no coarser than the vendors'; a coarser one cannot
        # tell a legal difference from a short weight.
        if self.scale.e_g > self.check.vendor_e_g:
            raise ValueError(f"scale.e_g {self.scale.e_g} g is coarser than the stall scales' "
                             f"check.vendor_e_g {self.check.vendor_e_g} g: a fair scale must be at least "
                             "as fine as the scales it checks")
        if self.scale.protocol == "hx711-raw":
            # A raw-count module weighs only with a sealed calibration (the stall's
            # calibration.json); the fair scale does not load one yet.
            raise ValueError("scale.protocol hx711-raw needs a sealed calibration, which the fair scale "
                             "does not load yet: use a module that reports grams")
        return self


def load_fair_config(path: Path | str) -> FairScaleConfig:
    return load_toml(path, FairScaleConfig, "fair-scale config")


# ---- what a receipt's QR code says --------------------------------------------------------------

class Scan(BaseModel):
    trace_code: str
    signature: str | None = None


_RECEIPT_URL = re.compile(r"https?://[^\s?#]+/t/([0-9A-Za-z]{1,64})(?:\?s=([A-Za-z0-9_=-]{0,128}))?")
_BARE_CODE = re.compile(r"[0-9]{1,64}")


def read_scan(text: str) -> Scan:
    """The trace code (and signature) of a receipt's QR content: its trace URL
    (``edge.tracecode.trace_url``), or the 20 digits typed or read alone.  Whether it is a
    genuine receipt is the server's to say."""
    text = text.strip()
    if m := _RECEIPT_URL.fullmatch(text):
        return Scan(trace_code=m.group(1), signature=m.group(2) or None)
    if _BARE_CODE.fullmatch(text):
        return Scan(trace_code=text)
    raise EdgeError("这不是小票上的二维码，请扫描小票底部的二维码 / this is not a receipt's QR code: "
                    "scan the one at the foot of the receipt")


class Outcome(BaseModel):
    """An action's answer: ``ok`` false with the reason when refused."""

    ok: bool
    reason: str | None = None


class ReceiptQrReader:
    """Reads a receipt's QR code in a camera frame: OpenCV's ArUco-based QR detector.

    OpenCV's classic ``QRCodeDetector`` (5.1) read no code in some frames of perfectly printed
    receipts: 12 of 400 trace URLs drawn by OpenCV's own encoder at 10 px a module on a white
    page, 41 of 150 turned 17 degrees, 143 of 150 at 3 px a module blurred and noisy; the ArUco
    detector read all of them but 35 of the last (``tests/edge/test_fair_scale.py``).  A
    shopper whose receipt was one of those could not have it read by the camera."""

    def __init__(self) -> None:
        import cv2

        self._error = cv2.error
        self._detector = cv2.QRCodeDetectorAruco()

    def read(self, frame: Any) -> str:
        """The content of the QR code in ``frame`` (BGR or grey), or '' when none is read."""
        try:
            text, _points, _ = self._detector.detectAndDecode(frame)
        except self._error:
            return ""
        return str(text or "")


class FairScale:
    """The fair scale's parts, started in order and stopped in reverse, on one stop event:
    scale (simulator) -> link -> check queue -> camera's QR scanner -> screen."""

    def __init__(self, cfg: FairScaleConfig) -> None:
        self.cfg = cfg
        self.stop_event = threading.Event()
        self._stops: list[Callable[[], object]] = []
        self.sim: Simulator | None = None
        self.link: Link | None = None
        self.weigher = Weigher(cfg.scale)
        self.outbox: FolderOutbox | None = None
        self.camera: Camera | None = None
        self.hub = Publisher()
        self.http: Any = None
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._client = httpx.Client(base_url=cfg.server.url.rstrip("/"), timeout=3.0,
                                    headers={"Authorization": f"Bearer {cfg.server.token}"})
        # what the shopper did
        self.scan_: Scan | None = None
        self.receipt: dict[str, Any] | None = None
        self.line_no: int | None = None
        self.result: dict[str, Any] | None = None
        self.message: str | None = None
        self._last_qr: str | None = None
        #: Counts the shopper's resets: a scan begun before one (a camera frame read, a look-up
        #: under way) is dropped instead of bringing the last shopper's receipt back.
        self._resets = 0
        #: The scanner's counts: frames looked at, codes read in them (what to look at when a
        #: receipt in view is never scanned; the fair e2e's failure message reports them).
        self.frames_looked = 0
        self.codes_read = 0

    # -- life ----------------------------------------------------------------------------------
    def start(self) -> None:
        self.cfg.data_dir.mkdir(parents=True, exist_ok=True)
        start_in_order((self._start_scale, self._start_outbox, self._start_camera, self._refresh,
                        self._start_screen), self.stop)
        logger.info("fair scale %s started", self.cfg.device_id)

    def stop(self) -> None:
        self.stop_event.set()
        self._wake.set()
        stop_in_reverse(self._stops)
        self._client.close()

    def _start_scale(self) -> None:
        from firmware_bridge.audit import AuditLog
        from firmware_bridge.link import Link

        spec, port = self.cfg.scale, self.cfg.scale.port
        if port == "sim":
            from firmware_bridge.sim import Simulator

            self.sim = Simulator(protocol=spec.protocol, capacity_g=spec.max_g, e_g=spec.e_g,
                                 seed=self.cfg.seed)
            self.sim.start()
            self._stops.append(self.sim.stop)
            port = self.sim.port
        audit = AuditLog(self.cfg.data_dir / "scale-audit.jsonl")
        self.weigher = Weigher(spec, audit=audit)
        self.link = Link(port, protocol=spec.protocol, on_reading=self._on_reading,
                         freshness_s=spec.freshness_s, max_g=spec.max_g, e_g=spec.e_g, audit=audit,
                         stop_event=self.stop_event)
        self.link.start()
        self._stops.append(self.link.stop)
        worker = threading.Thread(target=self._publish_loop, name="fair-screen", daemon=True)
        worker.start()
        self._stops.append(lambda: worker.join(timeout=2))

    def _on_reading(self, reading: Any) -> None:
        self.weigher.update(reading)
        self._wake.set()

    def _start_outbox(self) -> None:
        if not self.cfg.server.token:
            logger.warning("no fair-scale token: checks stay queued in %s", self.cfg.data_dir / QUEUE_DIR)
        self.outbox = FolderOutbox(f"fair-{self.cfg.device_id}", self.cfg.data_dir / QUEUE_DIR,
                                   "/api/v1/fair-checks", self.cfg.server.url, self.cfg.server.token,
                                   poll_s=30.0, max_backoff_s=30.0, timeout_s=5.0, stop_event=self.stop_event)
        self.outbox.kept = "checks stay queued"
        if self.cfg.server.token:
            self.outbox.start()
        self._stops.append(self.outbox.stop)

    def _start_camera(self) -> None:
        src = self.cfg.camera.source
        if src is None:
            return
        try:
            if Path(src).is_dir():
                folder = ImageFolderCamera(src)
                folder.show(folder.labels[0])  # a folder camera (demo, tests) shows its receipt
                self.camera = folder
            else:
                self.camera = OpenCVCamera(int(src) if src.isdigit() else src)
        except ConfigError as exc:
            logger.error("%s: receipts are scanned with the code reader only", exc)
            return
        self._stops.append(self.camera.close)
        scanner = threading.Thread(target=self._scan_loop, name="fair-qr", daemon=True)
        scanner.start()
        self._stops.append(lambda: scanner.join(timeout=2))

    def _start_screen(self) -> None:
        from edge.fair_screen import create_app
        from edge.screens.app import HttpThread

        self.http = HttpThread(create_app(self), port=self.cfg.screen.port, stop=self.stop_event,
                               name="fair-screen")
        self.http.serve(self.http.bind())
        self._stops.append(self.http.stop)
        logger.info("fair scale screen: %s/fair", self.http.url)

    # -- workers -------------------------------------------------------------------------------
    def _publish_loop(self) -> None:
        while not self.stop_event.is_set():
            self._wake.wait(0.2)
            self._wake.clear()
            try:
                self._refresh()
            except Exception:  # noqa: BLE001 - the screen must outlive one bad read
                logger.exception("fair-scale state not published")

    def _refresh(self) -> None:
        """Publish what the screen shows now.  Actions call it before they answer, so the page
        (and a test) that reads the state after an action's answer sees its effect; one at a
        time (under the state's own lock: an action may hold it), so an older state never
        replaces a newer one."""
        with self._lock:
            self.hub.publish(self.state())

    def _scan_loop(self) -> None:
        reader = ReceiptQrReader()
        while not self.stop_event.wait(self.cfg.camera.scan_every_s):
            camera = self.camera
            resets = self.resets
            frame = camera.read() if camera is not None else None
            if frame is None:
                continue
            self.frames_looked += 1
            text = reader.read(frame)
            if text:
                self.codes_read += 1
            with self._lock:
                if not text or text == self._last_qr or resets != self._resets:
                    continue  # the receipt stays in view: scanned once; a frame from before a reset
                self._last_qr = text
            try:
                self.scan(text, resets)
            except Exception:  # noqa: BLE001 - the scanner must outlive one bad scan
                logger.exception("receipt code %r not scanned", text[:80])

    # -- the shopper's actions -----------------------------------------------------------------
    def scan(self, text: str, resets: int | None = None) -> Outcome:
        """A receipt's QR content (camera or code reader): look it up at the server.  ``resets``:
        the count of resets when the camera's frame was read (a scan that a reset overtook
        while it was looked up is dropped)."""
        if resets is None:
            resets = self.resets
        try:
            scan = read_scan(text)
        except EdgeError as exc:
            return self._refuse(str(exc))
        params = {"trace_code": scan.trace_code} | ({"s": scan.signature} if scan.signature else {})
        receipt: dict[str, Any]
        try:
            r = self._client.get("/api/v1/fair-checks/receipt", params=params)
            if r.status_code != 200:
                raise httpx.HTTPStatusError(detail(r), request=r.request, response=r)
            receipt = r.json()
            online = True
        except (httpx.HTTPError, ValueError) as exc:
            logger.warning("receipt %s not looked up: %s", scan.trace_code, exc)
            receipt = {"trace_code": scan.trace_code, "state": "offline", "lines": []}
            online = False
        if self.outbox is not None:
            self.outbox.online = online
        weighed = [ln for ln in receipt.get("lines", []) if ln.get("weight_g") is not None]
        with self._lock:
            if resets != self._resets:
                return Outcome(ok=False, reason="已重置，请重新扫描 / reset while the receipt was looked up: "
                                                "scan it again")
            self.scan_, self.receipt, self.result = scan, receipt, None
            self.line_no = weighed[0]["line_no"] if len(weighed) == 1 and len(receipt["lines"]) == 1 else None
            self.message = None if online else (
                "市场服务器暂不可达：照常称重，核对结果稍后由服务器判定 / the market server is away: "
                "the weight is shown, the check is judged when it is back")
        self._refresh()
        return Outcome(ok=True)

    def choose(self, line_no: int | None) -> Outcome:
        """The line she re-weighs, or None: the whole receipt."""
        with self._lock:
            if self.receipt is None:
                return self._refuse("请先扫描小票二维码 / scan the receipt's QR code first")
            lines = self.receipt.get("lines", [])
            if line_no is not None and lines:
                line = next((ln for ln in lines if ln["line_no"] == line_no), None)
                if line is None:
                    return self._refuse(f"小票没有第 {line_no} 行 / the receipt has no line {line_no}")
                if line.get("weight_g") is None:
                    return self._refuse(f"第 {line_no} 行按件计价，请点数 / line {line_no} is sold by "
                                        "the piece: count it")
            self.line_no, self.result, self.message = line_no, None, None
        self._refresh()
        return Outcome(ok=True)

    def check(self) -> Outcome:
        """Queue the check with the stable weight on the plate, then send it at once if it can."""
        with self._lock:
            scan = self.scan_
            if scan is None:
                return self._refuse("请先扫描小票二维码 / scan the receipt's QR code first")
            measured = self.weigher.priceable_net_g
            if measured is None:
                return self._refuse("请把商品放上秤，等重量稳定 / put the goods on and wait for a "
                                    "stable weight")
            check_id = str(uuid.uuid4())
            doc = {"check_id": check_id, "trace_code": scan.trace_code,
                   "signature": scan.signature, "line_no": self.line_no, "measured_g": measured,
                   "e_g": self.cfg.check.vendor_e_g,
                   "checked_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
            assert self.outbox is not None
            path = self.outbox.put(check_id, json.dumps(doc).encode())
        answer = self.outbox.try_send(path) if self.cfg.server.token else None
        with self._lock:
            if answer is None:
                self.result = {"queued": True, "measured_g": measured, "line_no": doc["line_no"]}
                self.message = ("已记录，待服务器恢复后判定 / recorded: judged when the market server "
                                "is back")
            elif "refused" in answer:
                self.result = None
                self.message = f"服务器拒绝 / refused by the server: {answer['refused']}"
            else:
                self.result, self.message = answer, None
        self._refresh()
        return Outcome(ok=answer is None or "refused" not in answer, reason=self.message)

    @property
    def resets(self) -> int:
        """How many times the screen was reset for the next shopper (see ``scan``)."""
        with self._lock:
            return self._resets

    def reset(self) -> Outcome:
        with self._lock:
            self.scan_ = self.receipt = self.result = self.message = None
            self.line_no, self._last_qr = None, None
            self._resets += 1
        self._refresh()
        return Outcome(ok=True)

    def _refuse(self, reason: str) -> Outcome:
        logger.info("refused: %s", reason)
        with self._lock:
            self.message = reason
        self._refresh()
        return Outcome(ok=False, reason=reason)

    # -- what the screen shows ------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        shown = self.weigher.shown
        outbox = self.outbox
        with self._lock:
            return {
                "device": {"id": self.cfg.device_id, "name": self.cfg.name, "market": self.cfg.market.name,
                           "legal": legal_id(), "e_g": self.cfg.scale.e_g},
                "weight": {"state": shown.state.value, "net_g": shown.net_g,
                           "stable_g": self.weigher.priceable_net_g},
                "receipt": self.receipt, "line_no": self.line_no, "result": self.result,
                "message": self.message,
                "server": {"configured": bool(self.cfg.server.token),
                           "online": outbox.online if outbox is not None else None,
                           "queue": len(outbox.pending()) if outbox is not None else 0},
            }
