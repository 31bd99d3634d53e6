"""The vendor screen's online-order calls (``edge.orders``): accept or decline lines, weigh
an order (the open basket fulfils it), hand it over with the payment, pause orders.

Each answers ``{"ok": ...}``: 200 when done, 409 with the reason when the market server
refused it (Chinese / English), 503 when the server could not be reached (nothing changed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import FastAPI
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from edge.orders import DeskResult, OrderDesk
from edge.screens.hub import ScreenHub

if TYPE_CHECKING:
    from edge.stall import StallApp

OrderId = Annotated[int, PathParam(ge=1, le=2**31 - 1)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Accept(_Body):
    declined: list[Annotated[int, Field(ge=1, le=99, strict=True)]] = Field(
        default_factory=list, max_length=99, description="line numbers the stall cannot supply")


class PickedUp(_Body):
    payment: Literal["cash", "qr"] = Field(description="cash, or a QR payment")
    pickup_code: str = Field(pattern=r"^[0-9]{4,8}$",
                             description="the pickup code the shopper shows (the server checks it)")


class Cancel(_Body):
    reason: str = Field(min_length=1, max_length=200)


class DeskOpen(_Body):
    open: bool


def _refused(reason: str, status: int = 409) -> JSONResponse:
    return JSONResponse({"ok": False, "reason": reason}, status_code=status)


def add_order_routes(app: FastAPI, stall: StallApp, hub: ScreenHub) -> None:
    def desk() -> OrderDesk | None:
        return stall.orders

    def answer(result: DeskResult) -> JSONResponse:
        hub.show_now()
        status = 200 if result.ok else 503 if result.offline else 409
        return JSONResponse(result.model_dump(mode="json"), status_code=status)

    no_desk = "未接入线上订单（需服务器令牌）/ online orders are off at this stall (no server token)"
    refusals: dict[int | str, dict[str, Any]] = {
        409: {"description": "refused by the market server, or orders are off here"},
        503: {"description": "the market server could not be reached: nothing changed"}}

    @app.post("/api/orders/{order_id}/accept", tags=["orders"], responses=refusals)
    def accept(order_id: OrderId, body: Accept) -> JSONResponse:
        """Accept an order, declining the lines the stall cannot supply (all: cancelled)."""
        d = desk()
        return answer(d.accept(order_id, body.declined)) if d is not None else _refused(no_desk)

    @app.post("/api/orders/{order_id}/weigh", tags=["orders"], responses=refusals)
    def weigh(order_id: OrderId) -> JSONResponse:
        """Weigh this order now: the open basket (empty) fulfils it; each line is then weighed
        on the scale as any other (``POST /api/confirm``) and the checkout's sale carries the
        order's id."""
        d, flow = desk(), stall.flow
        if d is None or flow is None:
            return _refused(no_desk)
        order = d.get(order_id)
        if order is None:
            return _refused(f"没有订单 {order_id} / no open order {order_id}")
        if flow.snapshot().basket:
            return _refused("本单已有商品，请先结账或作废 / the basket holds lines: check out or "
                            "discard it first")
        result = d.start_weighing(order_id)
        if not result.ok and not result.offline:
            return answer(result)
        # The server away: weighing goes on (the sale carries the order's id and settles it
        # when the outbox uploads it); only the shopper's "being weighed" waits.
        attached = flow.attach_order(order_id)
        hub.show_now()
        if not attached.ok:
            return _refused(attached.reason or "")
        return JSONResponse({"ok": True, "order_id": order_id, "server": result.ok})

    @app.post("/api/orders/detach", tags=["orders"], responses=refusals)
    def detach() -> JSONResponse:
        """The open basket no longer fulfils an order (a walk-in shopper next)."""
        flow = stall.flow
        if flow is None:
            return _refused(no_desk)
        result = flow.attach_order(None)
        hub.show_now()
        return JSONResponse(result.model_dump(mode="json"), status_code=200 if result.ok else 409)

    @app.post("/api/orders/{order_id}/picked-up", tags=["orders"], responses=refusals)
    def picked_up(order_id: OrderId, body: PickedUp) -> JSONResponse:
        """The shopper gave her pickup code and paid: the vendor types the code and records how she
        paid; the server refuses a code that is not the order's."""
        d = desk()
        return (answer(d.picked_up(order_id, body.payment, body.pickup_code)) if d is not None
                else _refused(no_desk))

    @app.post("/api/orders/{order_id}/cancel", tags=["orders"], responses=refusals)
    def cancel(order_id: OrderId, body: Cancel) -> JSONResponse:
        """The stall cannot fulfil the order."""
        d = desk()
        if d is None:
            return _refused(no_desk)
        result = d.cancel(order_id, body.reason)
        flow = stall.flow
        if result.ok and flow is not None and flow.snapshot().order_id == order_id:
            flow.attach_order(None)
        return answer(result)

    @app.post("/api/orders/open", tags=["orders"], responses=refusals)
    def set_open(body: DeskOpen) -> JSONResponse:
        """Pause (false) or resume (true) online orders at this stall."""
        d = desk()
        return answer(d.set_open(body.open)) if d is not None else _refused(no_desk)
