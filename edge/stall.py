"""One stall's edge process: the parts started in order, stopped in reverse.

    heap settings -> journal -> signing key -> catalogue (saved feed, else the config's seed) -> scale
    (simulator) -> link -> session -> recognizer -> printer -> outbox -> flow -> screens
    -> feed -> shared taught items (``edge.gallery_share``, opt-in) -> online orders
    (``edge.orders``) -> simulated vendor (demo)

Every worker thread ends on the stall's one stop event (``stop_event``): the heap trim, the link,
the outbox, the scale-audit uploader, the feed, the shared-gallery sync, the order desk, the
flow's two threads, the
screens (``edge.screens``: their state hub and their uvicorn) and the simulated
vendor; ``stop()`` sets it first, then joins the parts in reverse.  The vendor's
actions go through the flow (``edge.flow``), which prices through the session.  A
sale is journaled before its receipt prints and before upload; a failed print or
upload never loses it.
"""

from __future__ import annotations

import logging
import threading
import time
import zoneinfo
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from edge import BasketError, ConfigError, EdgeError, allocator
from edge.camera import Camera, CameraWatch, ImageFolderCamera, MissingCamera, OpenCVCamera
from edge.catalogue import Catalogue
from edge.config import StallConfig
from edge.feed import FeedClient
from edge.flow import RecognizerLike, StallFlow
from edge.integrity import load_or_create_key, public_key_b64
from edge.journal import Journal
from edge.open_basket import FILE as OPEN_BASKET_FILE
from edge.open_basket import OpenBasketStore
from edge.orders import OrderDesk
from edge.outbox import Outbox
from edge.parts import start_in_order, stop_in_reverse
from edge.sale import Sale
from edge.session import Session, StallInfo
from edge.weighing import Weigher
from firmware_bridge import BridgeError
from firmware_bridge.reading import Reading

if TYPE_CHECKING:
    from edge.printing import Printer
    from edge.screens import ScreenServer
    from firmware_bridge.link import Link
    from firmware_bridge.sim import Simulator

logger = logging.getLogger(__name__)


class StallApp:
    def __init__(self, cfg: StallConfig) -> None:
        self.cfg = cfg
        self.stop_event = threading.Event()
        self._stops: list[Callable[[], None]] = []
        self.sim: Simulator | None = None
        self.link: Link | None = None
        self.camera: Camera | None = None
        self.recognizer: RecognizerLike | None = None
        self.printer: Printer | None = None
        self.flow: StallFlow | None = None
        self.screens: ScreenServer | None = None
        self.outbox: Outbox | None = None
        self.feed: FeedClient | None = None
        self.orders: OrderDesk | None = None
        self.catalogue: Catalogue | None = None
        self.labels: dict[str, str] = {}
        self.session: Session | None = None
        self.journal: Journal | None = None
        self.sales_done = 0
        #: Why the scale cannot weigh at all (not calibrated): the stall runs, prices nothing.
        self.scale_fault: str | None = None
        #: Where unreadable taught items were kept at the start (``_set_gallery_aside``).
        self.gallery_aside: Path | None = None

    # -- start steps, in order --------------------------------------------------------
    def _start_journal(self) -> None:
        self.journal = Journal(self.cfg.data_dir / "journal.sqlite3", self.cfg.first_receipt_no)
        self._stops.append(self.journal.close)

    def _start_key(self) -> None:
        self.key = load_or_create_key(self.cfg.data_dir / "stall.key")
        self.public_key = public_key_b64(self.key)

    def _start_catalogue(self) -> None:
        """The last feed kept in the data folder, else the config's ``[[catalogue]]``."""
        cfg = self.cfg
        self.feed = FeedClient(cfg.data_dir, cfg.server.url, cfg.server.token,
                               stall_id=cfg.stall_id, seed=cfg.catalogue, wait_s=cfg.feed.wait_s,
                               interval_s=cfg.feed.interval_s, stop_event=self.stop_event)
        self._stops.append(self.feed.stop)
        self.catalogue, self.labels = self.feed.initial()

    def _start_scale(self) -> None:
        from firmware_bridge.audit import AuditLog
        from firmware_bridge.calibration import CalibrationStore
        from firmware_bridge.link import Link

        port = self.cfg.scale.port
        if port == "sim":
            from firmware_bridge.sim import Simulator

            self.sim = Simulator(protocol=self.cfg.scale.protocol, capacity_g=self.cfg.scale.max_g,
                                 e_g=self.cfg.scale.e_g, seed=self.cfg.seed)
            self.sim.start()
            self._stops.append(self.sim.stop)
            port = self.sim.port
        info = StallInfo(stall_id=self.cfg.stall_id, region=self.cfg.market.region,
                         market_no=self.cfg.market.number, rounding=self.cfg.market.rounding,
                         tz=zoneinfo.ZoneInfo(self.cfg.market.timezone), vendor=self.cfg.vendor)
        assert self.journal is not None and self.catalogue is not None and self.feed is not None
        # Every zero, tare, calibration and error at this scale, hash-chained: the
        # market's anti-cheat trail.
        audit = AuditLog(self.cfg.data_dir / "scale-audit.jsonl")
        calibration = None
        if self.cfg.scale.protocol == "hx711-raw":
            # A raw-count module weighs only with the sealed calibration that
            # `wetmarket scale-calibrate --store data_dir/calibration.json` wrote.
            try:
                calibration = CalibrationStore(self.cfg.data_dir / "calibration.json", audit).load()
            except BridgeError as exc:
                # The stall still starts: both screens say the scale is not calibrated and
                # nothing is priced until the technician calibrates it.
                logger.error("scale not calibrated, nothing is priced: %s", exc)
                self.scale_fault = str(exc)
        spec = self.cfg.scale
        self.session = Session(info, Weigher(spec, audit=audit), self.catalogue, self.labels,
                               self.journal, self.key,
                               basket_store=OpenBasketStore(self.cfg.data_dir / OPEN_BASKET_FILE))
        self.session.feed_state = self.feed.state
        self.session.restore()  # the basket open when the stall was stopped, if any
        if self.scale_fault is not None:
            return
        self.link = Link(port, protocol=spec.protocol, on_reading=self._on_reading,
                         freshness_s=spec.freshness_s, max_g=spec.max_g, e_g=spec.e_g,
                         calibration=calibration, audit=audit, stop_event=self.stop_event)
        self.link.start()
        self._stops.append(self.link.stop)

    def _on_reading(self, reading: Reading) -> None:
        """The link's thread: the weigher first, then the flow steps on the new state."""
        assert self.session is not None
        self.session.on_reading(reading)
        if self.screens is not None:
            self.screens.hub.on_reading()
        if self.flow is not None:
            self.flow.wake()

    def _start_camera(self) -> None:
        src = self.cfg.camera.source
        if src is None:
            return
        if Path(src).is_dir():
            self.camera = ImageFolderCamera(src, seed=self.cfg.seed)
        else:
            try:
                live = OpenCVCamera(int(src) if src.isdigit() else src)
            except ConfigError as exc:
                # Selling goes on by hand; both screens say the camera is missing.
                logger.error("%s: no recognition, items are picked by hand", exc)
                self.camera = MissingCamera(src, str(exc))
                return
            watch = CameraWatch(live, stop=self.stop_event, frozen_s=self.cfg.camera.frozen_s,
                                on_change=lambda: self.flow.changed() if self.flow is not None else None)
            watch.start()
            self.camera = watch
        self._stops.append(self.camera.close)
        try:
            from model import GalleryError
            from model.recognizer import Recognizer

            gallery = self.cfg.data_dir / "gallery"
            try:
                recognizer = Recognizer.load(gallery_dir=gallery, stale_while_refit=True)
            except GalleryError as exc:
                # Taught items that cannot be read (a broken file, another model's embeddings)
                # must not cost the stall its catalogue's guesses: the folder is kept aside, whole,
                # and the stall learns anew from the next taps.
                aside = self._set_gallery_aside()
                self.gallery_aside = aside
                logger.error("taught items unreadable, kept in %s; recognising the catalogue and "
                             "learning anew: %s", aside, exc)
                recognizer = Recognizer.load(gallery_dir=gallery, stale_while_refit=True)
            if self.cfg.camera.roi:
                recognizer.set_roi(self.cfg.camera.roi)
            self.recognizer = recognizer
        except Exception as exc:  # noqa: BLE001 - a stall without recognition still sells
            logger.warning("recognizer unavailable, items are chosen by hand: %s", exc)
            self.recognizer = None

    def _set_gallery_aside(self) -> Path:
        """Move the gallery folder into ``gallery.set-aside-<time>/``, with what the market's
        items left beside it (their copies and the last answer's tag): without them the stall
        takes the market's items again at the next pull."""
        from edge.gallery_share import IMPORTED_DIR, STATE_FILE

        data = self.cfg.data_dir
        aside = data / f"gallery.set-aside-{time.strftime('%Y%m%dT%H%M%S')}"
        aside.mkdir()
        for name in ("gallery", IMPORTED_DIR, STATE_FILE):
            if (data / name).exists():
                (data / name).rename(aside / name)
        return aside

    def _start_printer(self) -> None:
        from edge.printing import make_printer
        from edge.receipt import ReceiptMeta

        cfg = self.cfg
        pc = cfg.printer.model_dump()
        if pc["type"] == "file" and not pc.get("path"):
            pc["path"] = str(cfg.data_dir / "receipts")
        pc["queue"] = str(cfg.data_dir / "reprint.sqlite3")
        meta = ReceiptMeta(market_name=cfg.market.name, stall_name=cfg.name,
                           vendor=cfg.vendor or None, rule=cfg.market.rounding,
                           base_url=cfg.server.public_url or cfg.server.url)
        self.printer = make_printer(pc, meta=meta)

    def _start_outbox(self) -> None:
        if not self.cfg.server.token:
            logger.warning("no server token: sales stay in the journal until one is configured")
            return
        assert self.journal is not None
        self.outbox = Outbox(self.journal, self.cfg.server.url, self.cfg.server.token,
                             stall_id=self.cfg.stall_id, public_key=self.public_key,
                             stop_event=self.stop_event)
        self.outbox.start()
        self._stops.append(self.outbox.stop)
        # The scale's audit log goes up too, on its own thread (the manager's anti-cheat view).
        from edge.scale_upload import ScaleAuditUploader

        self.scale_upload = ScaleAuditUploader(self.cfg.data_dir / "scale-audit.jsonl", self.cfg.server.url,
                                               self.cfg.server.token, stall_id=self.cfg.stall_id,
                                               stop_event=self.stop_event)
        self.scale_upload.start()
        self._stops.append(self.scale_upload.stop)

    def _start_flow(self) -> None:
        assert self.session is not None
        outbox = self.outbox
        self.flow = StallFlow(self.session, stop=self.stop_event, camera=self.camera,
                              recognizer=self.recognizer, printer=self.printer,
                              auto_confirm=self.cfg.camera.auto_confirm, teach=self.cfg.camera.teach,
                              on_sale=lambda _sale: outbox.notify() if outbox is not None else None,
                              scale_fault=self.scale_fault,
                              gallery_aside=str(self.gallery_aside) if self.gallery_aside else None)
        self.flow.start()
        self._stops.append(self.flow.stop)

    def _start_screens(self) -> None:
        """The vendor's and the customer's screens.  A port already in use is logged as an
        error and the stall goes on without screens: it keeps its journal, uploads and feed,
        and a second stall process on one machine does not take the first one down."""
        sc = self.cfg.screens
        if not sc.enabled:
            return
        from edge.screens import ScreenServer

        screens = ScreenServer(self, port=sc.port, stop=self.stop_event, basket_wait_s=sc.basket_wait_s)
        try:
            screens.start()
        except EdgeError as exc:
            logger.error("%s: the stall runs without its screens", exc)
            return
        self.screens = screens
        self._stops.append(screens.stop)
        if self.outbox is not None:
            self.outbox.listen(screens.hub.uploads_changed)

    def _start_feed(self) -> None:
        assert self.feed is not None and self.session is not None
        if not (self.cfg.feed.enabled and self.cfg.server.token):
            return  # the no-token warning is the outbox's
        self.feed.start(self.session.offer_catalogue)

    def _start_gallery(self) -> None:
        """Taught items offered to and taken from the market, if ``[gallery]`` opts in."""
        from edge.gallery_share import start_sharing

        assert self.session is not None
        self._stops += start_sharing(self.cfg, self.recognizer, self.key, self.public_key,
                                     self.session, self.stop_event)

    def _start_orders(self) -> None:
        """Shoppers' online orders at this stall, live on the vendor's screen."""
        cfg = self.cfg
        if not (cfg.orders.enabled and cfg.server.token):
            return
        desk = OrderDesk(cfg.server.url, cfg.server.token, stall_id=cfg.stall_id, wait_s=cfg.orders.wait_s,
                         stop_event=self.stop_event)
        if self.screens is not None:
            desk.listen(self.screens.hub.poke)
        desk.start()
        self.orders = desk
        self._stops.append(desk.stop)

    def _start_vendor(self) -> None:
        if not self.cfg.simulate_vendor:
            return
        from edge.demo_vendor import SimulatedVendor

        if self.sim is None:
            raise EdgeError("simulate_vendor needs scale.port = 'sim'")
        assert self.flow is not None
        vendor = SimulatedVendor(self.flow, self.sim, camera=self.camera, stop=self.stop_event,
                                 seed=self.cfg.seed)
        vendor.start()
        self._stops.append(vendor.stop)

    def _start_heap(self) -> None:
        # Before the parts start their threads: the arena limit binds arenas made after it.
        allocator.tune()
        thread = allocator.housekeeping(self.stop_event)
        self._stops.append(lambda: thread.join(timeout=5))

    def start(self) -> None:
        self.cfg.data_dir.mkdir(parents=True, exist_ok=True)
        start_in_order((self._start_heap, self._start_journal, self._start_key, self._start_catalogue,
                        self._start_scale, self._start_camera, self._start_printer, self._start_outbox,
                        self._start_flow, self._start_screens, self._start_feed, self._start_gallery,
                        self._start_orders, self._start_vendor), self.stop)
        logger.info("stall %s started", self.cfg.stall_id)

    def stop(self) -> None:
        self.stop_event.set()
        stop_in_reverse(self._stops)

    # -- the vendor's "print" button ---------------------------------------------------------
    def checkout(self) -> Sale:
        """Journal the basket, then print and upload (``StallFlow.checkout``); print/upload
        failures keep the sale."""
        assert self.flow is not None
        result = self.flow.checkout()
        if result.sale is None:
            raise BasketError(result.reason or "checkout refused")
        self.sales_done += 1
        return result.sale
