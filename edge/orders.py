"""The stall's online orders (线上买菜): what shoppers ordered at this stall, kept live.

``OrderDesk`` long-polls the market server (``GET /api/v1/stall/orders?wait=``, with the
last answer's ETag, on the outbox's back-off loop, ``edge.backoff``) for this stall's
open orders, and sends the vendor's decisions: accept (declining the lines the stall
cannot supply), start weighing, handed over with the payment (cash or QR), cancel, and
pausing online orders.  A stall offline when an order is placed finds it waiting when it
is back; the shopper meanwhile sees "not yet accepted".

Weighing is not here: the vendor weighs each line on the scale through the normal legal
flow (``edge.flow``: stable weight, the stall's own price), with the order attached to the
open basket (``StallFlow.attach_order``), so the sale carries the order's id; the server
settles the order from that sale when the outbox uploads it (``server.orders``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge.backoff import BackoffSender
from edge.feed import MAX_WAIT_S

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 * 1024 * 1024


class _Doc(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class OrderLine(_Doc):
    line_no: int
    plu: str = Field(max_length=16)
    name: str = Field(max_length=64)
    name_en: str = Field(max_length=64)
    price_unit: str
    unit_price_fen: int
    est_weight_g: int | None
    quantity: int | None
    est_amount_fen: int
    state: str
    final_weight_g: int | None = None
    final_quantity: int | None = None
    final_amount_fen: int | None = None
    over_tolerance: bool = False


class Order(_Doc):
    id: int
    stall_id: str
    state: str
    state_zh: str
    state_en: str
    # never in the stall's view: the shopper shows it, the vendor types it, the server checks it
    pickup_code: str | None = Field(default=None, max_length=8)
    slot_start: str
    slot_end: str
    note: str | None = None
    estimate_fen: int
    final_fen: int | None = None
    tolerance_pct: int
    partly_declined: bool = False
    sale_id: str | None = None
    phone_masked: str | None = None
    placed_at: str
    lines: list[OrderLine]


class StallOrders(_Doc):
    stall_id: str
    open: bool
    tolerance_pct: int
    orders: list[Order]


class DeskResult(BaseModel):
    """What one decision did: ``ok`` False carries the reason (Chinese / English)."""

    ok: bool
    reason: str | None = None
    order: Order | None = None
    #: The server could not be reached: nothing changed, try again.
    offline: bool = False


class OrderDesk(BackoffSender):
    kept = "orders wait on the market server"

    def __init__(self, server_url: str, token: str, *, stall_id: str, wait_s: float = 25.0,
                 stop_event: threading.Event | None = None, timeout_s: float = 10.0,
                 on_change: Callable[[], None] | None = None) -> None:
        self.wait_s = min(wait_s, MAX_WAIT_S)
        super().__init__(f"orders-{stall_id}", server_url, token, poll_s=1.0 if self.wait_s >= 1 else 5.0,
                         max_backoff_s=60.0, timeout_s=timeout_s, stop_event=stop_event)
        self._client.timeout = httpx.Timeout(timeout_s, read=timeout_s + self.wait_s)
        self.stall_id = stall_id
        self._lock = threading.Lock()
        self._etag: str | None = None
        if on_change is not None:
            self.listen(on_change)
        self.orders: list[Order] = []
        self.open = True
        self.tolerance_pct = 10
        #: Counts orders seen placed for the first time: the vendor screen rings on a rise.
        self.arrived = 0
        self._seen: set[int] = set()

    # -- the long poll ---------------------------------------------------------------------
    def stop(self, drain_s: float = 2.0) -> None:
        """Stop without waiting for a long poll in flight (nothing waits to be sent)."""
        self.stop_now(drain_s)

    def flush_once(self) -> int:
        return int(self.poll_once(self.wait_s))

    def poll_once(self, wait_s: float = 0.0) -> bool:
        """One request; True when the orders changed.  Raises ``httpx.HTTPError`` when the
        server cannot be reached or answers an error."""
        headers = {"If-None-Match": self._etag} if self._etag else {}
        params = {"wait": int(wait_s)} if wait_s >= 1 else {}
        r = self._client.get("/api/v1/stall/orders", headers=headers, params=params)
        if r.status_code == 304:
            return False
        r.raise_for_status()
        if len(r.content) > MAX_BODY_BYTES:
            logger.error("orders answer over %d bytes refused", MAX_BODY_BYTES)
            return False
        try:
            doc = StallOrders.model_validate_json(r.content)
        except ValidationError as exc:
            logger.error("orders answer refused: %s", exc.errors()[0].get("msg"))
            return False
        self._etag = r.headers.get("etag")
        self._take(doc)
        return True

    def _take(self, doc: StallOrders) -> None:
        with self._lock:
            self.orders, self.open, self.tolerance_pct = doc.orders, doc.open, doc.tolerance_pct
            new = [o.id for o in doc.orders if o.state == "placed" and o.id not in self._seen]
            self._seen.update(o.id for o in doc.orders)
            self.arrived += len(new)
        if new:
            logger.info("online orders arrived: %s", ", ".join(f"#{i}" for i in new))
        self._changed()

    def _replace(self, order: Order) -> None:
        with self._lock:
            self.orders = [order if o.id == order.id else o for o in self.orders]
            if order.state in ("picked_up", "cancelled"):
                self.orders = [o for o in self.orders if o.id != order.id]
        self._changed()

    def get(self, order_id: int) -> Order | None:
        with self._lock:
            return next((o for o in self.orders if o.id == order_id), None)

    # -- the vendor's decisions --------------------------------------------------------------
    def _send(self, method: str, path: str, body: dict[str, Any] | None = None) -> DeskResult:
        try:
            r = self._client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            return DeskResult(ok=False, offline=True,
                              reason=f"市场服务器不可达，未改变 / market server away, nothing changed: {exc}")
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail")
            except ValueError:
                detail = r.text
            return DeskResult(ok=False, offline=r.status_code >= 500, reason=str(detail))
        try:
            order = Order.model_validate_json(r.content) if "id" in r.json() else None
        except (ValueError, ValidationError):
            order = None
        if order is not None:
            self._replace(order)
        self.notify()  # ask again now: the answer's ETag moved
        return DeskResult(ok=True, order=order)

    def accept(self, order_id: int, declined: list[int]) -> DeskResult:
        return self._send("POST", f"/api/v1/stall/orders/{order_id}/accept", {"declined": declined})

    def start_weighing(self, order_id: int) -> DeskResult:
        return self._send("POST", f"/api/v1/stall/orders/{order_id}/weighing")

    def picked_up(self, order_id: int, payment: str, pickup_code: str) -> DeskResult:
        return self._send("POST", f"/api/v1/stall/orders/{order_id}/picked-up",
                          {"payment": payment, "pickup_code": pickup_code})

    def cancel(self, order_id: int, reason: str) -> DeskResult:
        return self._send("POST", f"/api/v1/stall/orders/{order_id}/cancel", {"reason": reason})

    def set_open(self, open_: bool) -> DeskResult:
        result = self._send("PUT", "/api/v1/stall/orders-desk", {"open": open_})
        if result.ok:
            with self._lock:
                self.open = open_
            self._changed()
        return result

    def view(self) -> dict[str, Any]:
        """What the vendor's screen shows of the orders."""
        with self._lock:
            return {"online": self.online, "open": self.open, "tolerance_pct": self.tolerance_pct,
                    "arrived": self.arrived, "waiting": sum(o.state == "placed" for o in self.orders),
                    "list": [o.model_dump() for o in self.orders]}
