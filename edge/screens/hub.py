"""What both screens show, as one JSON state, published on every change.

The hub reads :meth:`StallFlow.snapshot` on its own thread whenever it is poked: by the
flow's change notification (:meth:`StallFlow.on_change`: transitions, guesses, actions,
the basket, the catalogue, the camera), by a scale reading that changed what the scale
shows, by each vendor action, by the outbox when it settled sales or the server came or
went (:meth:`ScreenHub.uploads_changed`), and every ``poll_s`` (1 s) for what nobody
announces (the reprint queue, a basket open too long).  It adds
what the flow does not know (the stall's name, those, blocked batches, the time the
current weight became priceable, noted on the link's thread by
:meth:`ScreenHub.on_reading`) and publishes the result only when it differs from the last.
The faults (the flow's, and the server's and printer's here) go out as ``faults``: the
vendor's screen shows what to do, the customer's a short line.
Subscribers (the live channel's streams, each on the server's event loop) are woken with
``call_soon_threadsafe``; they read the latest state, so a slow screen skips states rather
than queueing them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge import CatalogueError
from edge.flow import FlowState, Snapshot
from edge.legal import legal_id
from edge.weighing import WeighState

if TYPE_CHECKING:
    from edge.stall import StallApp

logger = logging.getLogger(__name__)

#: Seconds between two reads of the slow parts (journal counts, reprint queue).
SLOW_EVERY_S = 1.0


@dataclass
class Subscriber:
    """One live stream: woken on its own loop, it reads the hub's latest state."""

    loop: asyncio.AbstractEventLoop
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    echoes: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=64))

    #: A wake-up is queued on the loop and has not run yet.
    _queued: bool = False

    def notify(self) -> None:
        # One wake-up queued at a time: a stream reads the latest state whenever it wakes, so
        # more would only pile up on its loop.  A thread publishing fast (a test's thousands a
        # second) queued one callback per publish, faster than the loop ran them, and the
        # stream, behind them, sent 3 states of 380,000 in 20 s.
        if self._queued:
            return
        self._queued = True
        with contextlib.suppress(RuntimeError):  # its loop is closed: the server stopped
            self.loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        # cleared before the stream can run and read: a publish after this point queues anew
        self._queued = False
        self.wake.set()


class Publisher:
    """One JSON state, its version and the live streams woken when it changes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: list[Subscriber] = []
        self.state: dict[str, Any] = {}
        #: The version and its JSON, replaced in one assignment: a stream on another thread
        #: that read them as two attributes could pair the new version with the old JSON
        #: during a publish, and then never send the new state (it believes it did).
        self.latest: tuple[int, str] = (0, "{}")
        self._body = ""

    def subscribe(self, loop: asyncio.AbstractEventLoop) -> Subscriber:
        sub = Subscriber(loop)
        with self._lock:
            self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)

    def _notify_all(self) -> None:
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            sub.notify()

    def publish(self, state: dict[str, Any]) -> bool:
        """``state`` as the new one if it differs from the last (then True, streams woken)."""
        body = json.dumps(state, ensure_ascii=False, sort_keys=True)
        if body == self._body:
            return False
        with self._lock:
            version = self.latest[0] + 1
            self._body = body
            self.state = {**state, "v": version}
            self.latest = (version, json.dumps(self.state, ensure_ascii=False))
        self._notify_all()
        return True


class ScreenHub(Publisher):
    def __init__(self, stall: StallApp, *, stop: threading.Event, basket_wait_s: float = 300.0,
                 poll_s: float = SLOW_EVERY_S) -> None:
        super().__init__()
        self.stall = stall
        self.basket_wait_s = basket_wait_s
        self.poll_s = poll_s
        self._stop = stop
        self._poke = threading.Event()
        self._thread: threading.Thread | None = None
        # an action's request thread and the hub's own both refresh (``show_now``)
        self._refreshing = threading.Lock()
        self._stable_at_ms: float | None = None
        self._shown: tuple[object, ...] | None = None
        self._basket_since: float | None = None
        self._slow: dict[str, Any] = {}
        self._slow_at = 0.0
        self._slow_stale = False
        self._slow_receipt: str | None = None
        # the gallery's labels by (gallery, version): counting its rows on every publish, up to
        # ten a second while a load settles, would redo the same work
        self._gallery_labels: tuple[int, int, frozenset[str]] = (0, -1, frozenset())

    # -- life ------------------------------------------------------------------------------
    def start(self) -> None:
        if self.stall.flow is not None:
            self.stall.flow.on_change(self.poke)
        self.refresh()
        self._thread = threading.Thread(target=self._run, name=f"screens:{self.stall.cfg.stall_id}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._poke.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._notify_all()

    def poke(self) -> None:
        """Something changed (an action): publish now, not at the next poll."""
        self._poke.set()

    def show_now(self, *, counts: bool = False) -> None:
        """An action is done: publish its state before it is answered, so that a client's
        ``GET /api/state`` after the answer shows the action (the hub's thread, poked, would
        publish a moment later; a script reading the state at once read the basket before
        its last line).  ``counts``: the action changed the reprint queue or the journal's
        counts, read them again now rather than at most once a second."""
        if counts:
            self._slow_stale = True
        # The action poked the hub's thread already (the flow's change callback): this refresh
        # reads everything that poke announced, so the thread need not read it all again; a
        # change after this line pokes anew.
        self._poke.clear()
        try:
            self.refresh()
        except Exception:  # noqa: BLE001 - the action is done; its thread publishes later
            logger.exception("screen state not refreshed after an action")

    def uploads_changed(self) -> None:
        """The outbox settled sales or the server came or went: read the upload queue again
        and publish now (the queue shown drops to 0 with the upload, not a poll later)."""
        self._slow_stale = True
        self._poke.set()

    def on_reading(self) -> None:
        """The link's thread, right after the weigher took a reading: note when this
        weighing's weight became priceable (before the flow, on its own thread, may price
        it), forget it once the load moves or leaves, and publish now if what the scale shows
        changed (a scale sends readings many times a second, mostly the same)."""
        session = self.stall.session
        if session is None:
            return
        shown = session.weigher.shown
        if session.priceable_g() is not None:
            if self._stable_at_ms is None:
                self._stable_at_ms = time.time() * 1000
        elif shown.state is not WeighState.STABLE_NET:
            self._stable_at_ms = None
        now = (shown.state, shown.gross_g, shown.net_g, shown.tare_g, self._stable_at_ms)
        if now != self._shown:
            self._shown = now
            self._poke.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._poke.wait(self.poll_s)
            self._poke.clear()
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - the screens must outlive one bad read
                logger.exception("screen state not refreshed")

    # -- subscribers -----------------------------------------------------------------------
    def echo(self, sent_ms: float) -> None:
        """The live channel's bare round trip: ``sent_ms`` goes back to every stream as is."""
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            sub.echoes.append(sent_ms)
            sub.notify()

    # -- the state -------------------------------------------------------------------------
    def refresh(self) -> bool:
        """Read the stall; publish when what the screens show changed.  True if it did."""
        with self._refreshing:
            return self._refresh()

    def _refresh(self) -> bool:
        flow = self.stall.flow
        if flow is None:
            return False
        snap = flow.snapshot()
        now = time.monotonic()
        live = [ln for ln in snap.basket if not ln.voided]
        if not live:
            self._basket_since = None
        elif self._basket_since is None:
            self._basket_since = now
        # Read again at once after a sale: the upload queue shown must count it from the
        # moment it is journaled, never say "nothing queued" while it waits.
        if self._slow_stale or now - self._slow_at >= SLOW_EVERY_S or snap.last_receipt != self._slow_receipt:
            self._slow_stale = False  # before the read: a change announced during it reads again
            self._slow, self._slow_at = self._read_slow(), now
            self._slow_receipt = snap.last_receipt
        return self.publish(self._compose(snap, now))

    def _read_slow(self) -> dict[str, Any]:
        """What costs a query: the journal's upload counts, the reprint queue's length."""
        stall = self.stall
        counts = stall.journal.waiting() if stall.journal is not None else {}
        printer = stall.printer
        queue = printer.queue if printer is not None else None
        return {"pending": counts.get("pending", 0), "refused": counts.get("refused", 0),
                "reprints": len(queue) if queue is not None else 0}

    def pictures_dir(self) -> Path:
        return self.stall.cfg.data_dir / "pictures"

    def _compose(self, snap: Snapshot, now: float) -> dict[str, Any]:
        stall, cfg = self.stall, self.stall.cfg
        session = stall.session
        assert session is not None
        catalogue = session.catalogue
        blocked = [{"code": item.code, "name_zh": item.name_zh, "name_en": item.name_en,
                    "reason": item.block_reason} for item in catalogue if item.block_reason]
        presets = sorted({g for item in catalogue for g in item.tare_presets_g})
        pictures = self.pictures_dir()
        codes = {g.item.code for g in snap.guesses}
        gallery = getattr(stall.recognizer, "gallery", None)
        in_catalogue = {item.code for item in catalogue}
        # items the recogniser holds photos of (taught here, or the market's): the vendor may
        # make it forget them
        taught = sorted({session.labels.get(lab, lab) for lab in self._taught_labels(gallery)}
                        & in_catalogue)
        server = self._server(self._slow)
        faults = [f.model_dump() for f in snap.faults] + self._faults(server)
        warnings = [f["vendor"] for f in faults] + list(snap.warnings) + \
            self._warnings(server, blocked, now)
        return {
            "stall": {"id": cfg.stall_id, "name": cfg.name, "vendor": cfg.vendor,
                      "market": cfg.market.name, "legal": legal_id()},
            "flow": snap.model_dump(mode="json"),
            "current": self._current(snap),
            "stable_at_ms": self._stable_at_ms,
            "server": server,
            "printer": {"reprints": self._slow.get("reprints", 0),
                        "configured": stall.printer is not None},
            "camera": stall.camera is not None and stall.recognizer is not None,
            "blocked": blocked,
            "tare_presets_g": presets,
            "pictures": sorted(c for c in codes if (pictures / f"{c}.jpg").is_file()),
            "taught_items": taught,
            "warnings": warnings,
            "faults": faults,
            "orders": self._orders(snap),
        }

    def _taught_labels(self, gallery: Any) -> frozenset[str]:
        if gallery is None:
            return frozenset()
        key, version, labels = self._gallery_labels
        if key != id(gallery) or version != gallery.version:
            version = gallery.version  # read first: a change while counting is seen next time
            labels = frozenset(gallery.labels)
            self._gallery_labels = (id(gallery), version, labels)
        return labels

    def _orders(self, snap: Snapshot) -> dict[str, Any] | None:
        """The stall's online orders (``edge.orders``), and for the order being weighed each
        accepted line's weight so far against the shopper's estimate and the tolerance."""
        desk = self.stall.orders
        if desk is None:
            return None
        view = desk.view()
        view["attached"] = snap.order_id
        order = desk.get(snap.order_id) if snap.order_id is not None else None
        progress = []
        for ln in order.lines if order is not None else []:
            if ln.state != "accepted":
                continue
            got = [b for b in snap.basket if not b.voided and b.plu == ln.plu]
            weight = sum(b.weight_g or 0 for b in got)
            pieces = sum(b.quantity or 0 for b in got)
            if ln.price_unit == "piece":
                over = bool(got) and pieces != ln.quantity
            else:
                est = ln.est_weight_g or 0
                over = bool(got) and abs(weight - est) * 100 > desk.tolerance_pct * est
            progress.append({"line_no": ln.line_no, "plu": ln.plu, "weighed": bool(got), "weight_g": weight,
                             "quantity": pieces, "amount_fen": sum(b.amount_fen for b in got),
                             "over_tolerance": over})
        view["progress"] = progress
        return view

    def _server(self, slow: dict[str, Any]) -> dict[str, Any]:
        outbox, feed = self.stall.outbox, self.stall.feed
        return {"configured": outbox is not None,
                "online": outbox.online if outbox is not None else None,
                "queue": slow.get("pending", 0), "refused": slow.get("refused", 0),
                "feed_version": feed.state.version if feed is not None else None}

    def _current(self, snap: Snapshot) -> dict[str, Any] | None:
        """What the customer sees priced: the line just weighed (until the plate is
        emptied), else the item confirmed while the weight settles."""
        session = self.stall.session
        assert session is not None
        line = None
        if snap.state is FlowState.PRICED:
            line = next((ln for ln in reversed(snap.basket) if not ln.voided), None)
        code = line.plu if line is not None else snap.chosen.code if snap.chosen is not None else None
        if code is None:
            return None
        try:
            item = session.catalogue.get(code)
        except CatalogueError:
            return None
        return {"line": dataclasses.asdict(line) if line is not None else None,
                "item": {"code": item.code, "name_zh": item.name_zh, "name_en": item.name_en,
                         "price_unit": item.price_unit,
                         "unit_price_fen": line.unit_price_fen if line is not None
                         else snap.chosen.unit_price_fen if snap.chosen is not None else item.unit_price_fen,
                         "origin": item.origin, "inspection": item.inspection,
                         "batch_code": item.batch_code}}

    def _faults(self, server: dict[str, Any]) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        if server["configured"] and server["online"] is False:
            out.append({"kind": "server",
                        "vendor": f"市场服务器离线，照常销售，待上传 {server['queue']} 笔，恢复后自动上传 / "
                                  f"server away: selling goes on, {server['queue']} sales queued, "
                                  "sent when it is back",
                        "customer": "离线销售，记录已保存 / offline: every sale is kept"})
        reprints = self._slow.get("reprints", 0)
        if reprints:
            out.append({"kind": "printer",
                        "vendor": f"打印机缺纸或故障：{reprints} 张小票待补打，销售已保存。装纸后点"
                                  f"“补打队列” / printer out of paper or failing: {reprints} receipts "
                                  "wait, the sales are kept; load paper, then tap 'Print queue'",
                        "customer": "小票稍后补打 / your receipt will follow"})
        return out

    def _warnings(self, server: dict[str, Any], blocked: list[dict[str, Any]],
                  now: float) -> list[str]:
        out: list[str] = []
        if not server["configured"]:
            out.append("未连接市场服务器：销售留在本机 / no server token: sales stay on this stall")
        if server["refused"]:
            out.append(f"{server['refused']} 笔销售被服务器拒收 / {server['refused']} sales refused "
                       "by the server")
        if blocked:
            names = "、".join(b["name_zh"] for b in blocked)
            names_en = ", ".join(b["name_en"] for b in blocked)
            out.append(f"禁售批次：{names} / blocked batches: {names_en}")
        if self._basket_since is not None and now - self._basket_since >= self.basket_wait_s:
            minutes = int((now - self._basket_since) // 60)
            out.append(f"本单已等待 {minutes} 分钟，请结账或作废 / basket open {minutes} min: "
                       "check out or discard")
        return out
