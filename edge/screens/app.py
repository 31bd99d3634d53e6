"""The stall's screen server: the two pages, the live channel and one HTTP call per vendor
action, each calling the flow (``edge.flow.StallFlow``).  The pages only render the state
and send these calls; every rule is the flow's, the session's or the server's.

A refused action is answered 409 with the flow's typed result (``ok`` false and the
reason, in Chinese / English); a body that is not the action's is answered 422 with the
fields it got wrong in ``message``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Protocol

import httpx
import uvicorn
from fastapi import FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from edge import CatalogueError, EdgeError
from edge.flow import ActionResult, CheckoutResult, SearchResult, StallFlow, TareResult
from edge.screens.hub import ScreenHub, Subscriber

if TYPE_CHECKING:
    from edge.stall import StallApp

logger = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
HOST = "127.0.0.1"
#: A keep-alive comment on the live channel when nothing changed for this long.
KEEPALIVE_S = 10.0
_CODE = r"^[0-9A-Za-z-]{1,16}$"


# -- the actions' bodies -----------------------------------------------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Confirm(_Body):
    code: str = Field(pattern=_CODE, description="PLU code: a guess, or an item picked by hand")
    quantity: int | None = Field(None, ge=1, le=999, strict=True,
                                 description="pieces, for an item sold by the piece")


class Pieces(_Body):
    code: str = Field(pattern=_CODE)
    quantity: int = Field(ge=1, le=999, strict=True)


class PresetTare(_Body):
    grams: int = Field(gt=0, strict=True, description="one of the catalogue's tare presets")


class Void(_Body):
    line_no: int = Field(ge=1, strict=True)
    reason: str = Field(min_length=1, max_length=200)


class Discard(_Body):
    reason: str = Field(min_length=1, max_length=200)


class Reprint(_Body):
    receipt_no: int | None = Field(None, ge=1, strict=True, description="absent: the last receipt")


class PriceChange(_Body):
    code: str = Field(pattern=_CODE)
    unit_price_fen: int = Field(gt=0, le=99_999_999, strict=True,
                                description="per the item's price unit (kg, 500g or piece)")
    why: str | None = Field(None, min_length=1, max_length=200)


class Teach(_Body):
    code: str = Field(pattern=_CODE, description="the item the camera sees now")


class Echo(_Body):
    sent_ms: float = Field(description="the page's clock; sent back on the live channel")


async def invalid_body(_request: Request, exc: Exception) -> JSONResponse:
    """A body that is not the action's: 422 with the fields it got wrong in ``message``."""
    assert isinstance(exc, RequestValidationError)
    errors = jsonable_encoder(exc.errors())
    message = "; ".join(f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}"
                        for e in errors)
    return JSONResponse({"ok": False, "detail": errors, "message": message}, status_code=422)


def _answer(result: ActionResult | TareResult | CheckoutResult, hub: ScreenHub) -> JSONResponse:
    hub.show_now()
    return JSONResponse(result.model_dump(mode="json"), status_code=200 if result.ok else 409)


def _refused(reason: str, status: int = 409, **more: Any) -> JSONResponse:
    return JSONResponse({"ok": False, "reason": reason, **more}, status_code=status)


class HubLike(Protocol):
    """What the live channel reads of a screen's state hub (``ScreenHub``, the fair scale's)."""

    #: (version, its state's JSON), read as one attribute (see ``Publisher.latest``).
    latest: tuple[int, str]

    def subscribe(self, loop: asyncio.AbstractEventLoop) -> Subscriber: ...

    def unsubscribe(self, sub: Subscriber) -> None: ...


def event_stream(hub: HubLike, stop: threading.Event) -> StreamingResponse:
    """The live channel: ``state`` at once and after every change (a slow page skips states
    rather than queueing them), ``echo`` events, a keep-alive comment when nothing changes."""
    sub = hub.subscribe(asyncio.get_running_loop())

    async def stream() -> AsyncIterator[str]:
        sent = -1
        try:
            yield "retry: 1000\n\n"
            while not stop.is_set():
                while sub.echoes:
                    yield f"event: echo\ndata: {sub.echoes.popleft()}\n\n"
                version, body = hub.latest
                if version != sent:
                    sent = version
                    yield f"event: state\ndata: {body}\n\n"
                    continue
                try:
                    await asyncio.wait_for(sub.wake.wait(), timeout=KEEPALIVE_S)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                sub.wake.clear()
        finally:
            hub.unsubscribe(sub)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def create_app(stall: StallApp, hub: ScreenHub, stop: threading.Event) -> FastAPI:
    app = FastAPI(title=f"wetmarket stall {stall.cfg.stall_id} screens",
                  description="The vendor's and the customer's screens of one stall, and one call "
                              "per vendor action (each answers the flow's typed result; 409 when "
                              "refused, with the reason).", docs_url="/docs", redoc_url=None)

    def flow() -> StallFlow:
        assert stall.flow is not None
        return stall.flow

    app.add_exception_handler(RequestValidationError, invalid_body)

    # -- pages ------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def _index() -> Response:
        return Response(status_code=307, headers={"Location": "/vendor"})

    @app.get("/vendor", include_in_schema=False)
    def _vendor() -> FileResponse:
        return FileResponse(STATIC / "vendor.html", headers={"Cache-Control": "no-cache"})

    @app.get("/customer", include_in_schema=False)
    def _customer() -> FileResponse:
        return FileResponse(STATIC / "customer.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # -- state and the live channel ---------------------------------------------------------------
    @app.get("/api/state", tags=["screens"])
    def state() -> Response:
        """What both screens show now (the same JSON the live channel sends)."""
        return Response(hub.latest[1], media_type="application/json")

    @app.get("/api/events", tags=["screens"], response_class=StreamingResponse, responses={200: {
        "description": "Server-Sent Events: `state` at once and after every change (the JSON of "
                       "GET /api/state, `v` counting up), `echo` answering POST /api/echo",
        "content": {"text/event-stream": {}}}})
    async def events() -> StreamingResponse:
        return event_stream(hub, stop)

    @app.post("/api/echo", tags=["screens"], status_code=204)
    def echo(body: Echo) -> Response:
        """The live channel's bare round trip (the bench's baseline): ``sent_ms`` comes back
        as an ``echo`` event on every open stream."""
        hub.echo(body.sent_ms)
        return Response(status_code=204)

    # -- items ----------------------------------------------------------------------------------
    @app.get("/api/search", tags=["items"], response_model=SearchResult)
    def search(q: Annotated[str, Query(max_length=32, description="PLU code, name or pinyin initials")]
               ) -> SearchResult:
        """Manual pick: by PLU code, name (Chinese or English) or pinyin initials (西红柿: xhs)."""
        return flow().search(q)

    @app.get("/api/items/{code}/picture", tags=["items"],
             responses={404: {"description": "no photo taught for this item"}})
    def picture(code: Annotated[str, PathParam(pattern=_CODE)]) -> Response:
        """The photo taught last for the item (POST /api/teach), JPEG."""
        path = hub.pictures_dir() / f"{code}.jpg"
        if not path.is_file():
            return _refused("no picture", 404)
        return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "no-cache"})

    # -- the vendor's actions ---------------------------------------------------------------------
    @app.post("/api/confirm", tags=["actions"], response_model=ActionResult,
              responses={409: {"model": ActionResult}})
    def confirm(body: Confirm) -> JSONResponse:
        """One tap on a guess or a picked item: priced on the stable weight (now, or as soon as
        it settles); an item by the piece takes ``quantity``."""
        return _answer(flow().confirm(body.code, body.quantity), hub)

    @app.post("/api/pieces", tags=["actions"], response_model=ActionResult,
              responses={409: {"model": ActionResult}})
    def pieces(body: Pieces) -> JSONResponse:
        """An item sold by the piece, without the scale."""
        return _answer(flow().add_pieces(body.code, body.quantity), hub)

    @app.post("/api/tare", tags=["actions"], response_model=TareResult,
              responses={409: {"model": TareResult}})
    def tare() -> JSONResponse:
        """Tare what lies on the plate (a container)."""
        return _answer(flow().tare(), hub)

    @app.post("/api/tare/preset", tags=["actions"], response_model=TareResult,
              responses={409: {"model": TareResult}})
    def tare_preset(body: PresetTare) -> JSONResponse:
        """A preset tare: one of the catalogue's container weights."""
        return _answer(flow().tare_preset(body.grams), hub)

    @app.post("/api/tare/clear", tags=["actions"], response_model=TareResult,
              responses={409: {"model": TareResult}})
    def tare_clear() -> JSONResponse:
        return _answer(flow().clear_tare(), hub)

    @app.post("/api/void", tags=["actions"], response_model=ActionResult,
              responses={409: {"model": ActionResult}})
    def void(body: Void) -> JSONResponse:
        """Void one line of the open basket (kept in the audit trail with its reason)."""
        return _answer(flow().void(body.line_no, body.reason), hub)

    @app.post("/api/discard", tags=["actions"], response_model=ActionResult,
              responses={409: {"model": ActionResult}})
    def discard(body: Discard) -> JSONResponse:
        """The shopper walks away: every line void, the trail kept."""
        return _answer(flow().discard(body.reason), hub)

    @app.post("/api/checkout", tags=["actions"], response_model=CheckoutResult,
              responses={409: {"model": CheckoutResult}})
    def checkout() -> JSONResponse:
        """Journal the basket as a signed sale, print its receipt, upload it.  A failed print
        keeps the sale (``printed`` false, queued for reprint)."""
        result = flow().checkout()
        if result.ok:
            stall.sales_done += 1
        return _answer(result, hub)

    @app.post("/api/reprint", tags=["actions"], responses={409: {"description": "nothing to reprint"},
                                                           503: {"description": "the printer failed"}})
    def reprint(body: Reprint) -> JSONResponse:
        """A copy of a receipt (the last one by default), marked as a reprint."""
        journal, printer = stall.journal, stall.printer
        if printer is None or printer.queue is None or journal is None:
            return _refused("没有打印机 / no printer configured")
        if body.receipt_no is not None:
            sale = journal.find(receipt_no=body.receipt_no)
        else:
            last = flow().snapshot().last_receipt
            sale = journal.find(trace_code=last) if last else None
        if sale is None:
            return _refused("没有可补打的小票 / no such receipt to reprint")
        from edge.receipt import ReceiptMeta

        try:
            printer.queue.reprint(sale, printer.meta or ReceiptMeta(), printer)
        except EdgeError as exc:
            hub.show_now(counts=True)
            return _refused(f"打印失败，已排队补打 / printing failed, queued: {exc}", 503)
        return JSONResponse({"ok": True, "receipt_no": sale.receipt_no, "trace_code": sale.trace_code})

    @app.post("/api/reprint/queue", tags=["actions"])
    def reprint_queue() -> JSONResponse:
        """Print every receipt waiting in the reprint queue (the printer is back)."""
        printer = stall.printer
        result = printer.retry_queue() if printer is not None else None
        hub.show_now(counts=True)
        if result is None:
            return _refused("没有打印机 / no printer configured")
        return JSONResponse({"ok": result.failed == 0, "printed": result.printed, "left": result.failed},
                            status_code=200 if result.failed == 0 else 503)

    @app.post("/api/price", tags=["actions"], responses={
        409: {"description": "refused by the market server (above the cap, item off sale)"},
        503: {"description": "the market server could not be reached: nothing changed"}})
    def price(body: PriceChange) -> JSONResponse:
        """The vendor changes the stall's price: sent to the market server's price history with
        the stall's token; it comes back in the feed and applies between baskets."""
        cfg = stall.cfg
        try:
            flow().session.catalogue.get(body.code)
        except CatalogueError as exc:
            return _refused(str(exc))
        if not cfg.server.token:
            return _refused("未配置服务器令牌，不能改价 / no server token: prices change at the server")
        payload: dict[str, Any] = {"unit_price_fen": body.unit_price_fen}
        if body.why:
            payload["why"] = body.why
        try:
            r = httpx.put(f"{cfg.server.url.rstrip('/')}/api/v1/prices/{cfg.stall_id}/{body.code}",
                          json=payload, headers={"Authorization": f"Bearer {cfg.server.token}"},
                          timeout=5)
        except httpx.HTTPError as exc:
            return _refused(f"市场服务器不可达，价格未改 / server away, price unchanged: {exc}", 503)
        if r.status_code != 200:
            try:
                detail = r.json().get("detail")
            except ValueError:
                detail = r.text
            return _refused(f"服务器拒绝 / refused by the server: {detail}",
                            409 if r.status_code < 500 else 503, server_status=r.status_code)
        if stall.feed is not None:
            stall.feed.notify()  # ask the feed now rather than at the next poll
        return JSONResponse({"ok": True, "server": r.json(),
                             "applies": "本单结束后生效 / applies after the open basket"
                             if flow().snapshot().basket else "即将生效 / applies shortly"})

    @app.post("/api/teach", tags=["actions"], responses={
        409: {"description": "no camera or recogniser, no frame, or an unknown item"}})
    def teach(body: Teach) -> JSONResponse:
        """Teach the recogniser the item the camera sees now (a photo added to the stall's
        gallery, kept as the item's picture on the screens)."""
        camera, recognizer = stall.camera, stall.recognizer
        session = flow().session
        try:
            item = session.catalogue.get(body.code)
        except CatalogueError as exc:
            return _refused(str(exc))
        if camera is None or recognizer is None:
            return _refused("没有摄像头或识别模型 / no camera or recogniser at this stall")
        frame = camera.read()
        if frame is None:
            return _refused("摄像头没有画面 / the camera gave no frame")
        label = _label(session, item)
        try:
            recognizer.teach(label, frame)
        except Exception as exc:  # noqa: BLE001 - the model's own errors, said to the vendor
            return _refused(f"学习失败 / teaching failed: {exc}")
        _save_picture(hub.pictures_dir(), item.code, frame)
        hub.show_now()
        return JSONResponse({"ok": True, "code": item.code, "label": label})

    @app.post("/api/teach/forget", tags=["actions"], responses={
        409: {"description": "no recogniser, an unknown item, or nothing taught for it"}})
    def forget(body: Teach) -> JSONResponse:
        """Forget the photos this stall holds of the item (taught here or taken from the market):
        its guesses start over from the catalogue's.  For an item taught wrong so often that
        the guesses keep going astray."""
        recognizer, session = stall.recognizer, flow().session
        try:
            item = session.catalogue.get(body.code)
        except CatalogueError as exc:
            return _refused(str(exc))
        if recognizer is None:
            return _refused("没有识别模型 / no recogniser at this stall")
        label = _label(session, item)
        try:
            removed = recognizer.forget_label(label)
        except Exception as exc:  # noqa: BLE001 - the gallery's own errors (disk), said to the vendor
            return _refused(f"忘掉失败 / forgetting failed: {exc}")
        if not removed:
            return _refused(f"{item.name_zh} 没有学过的照片 / nothing taught for {item.name_en or item.code}")
        (hub.pictures_dir() / f"{item.code}.jpg").unlink(missing_ok=True)
        hub.show_now()
        return JSONResponse({"ok": True, "code": item.code, "label": label, "removed": removed})

    from edge.screens.orders import add_order_routes

    add_order_routes(app, stall, hub)  # online orders (edge.orders)
    return app


def _label(session: Any, item: Any) -> str:
    """The recogniser's label of a catalogue item (its code when it has none)."""
    return str(item.label or next((lab for lab, c in session.labels.items() if c == item.code), item.code))


def _save_picture(folder: Path, code: str, frame: Any) -> None:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(".jpg", cv2.resize(frame, (240, int(240 * frame.shape[0] / frame.shape[1]))))
    if ok:
        tmp = folder / f".{code}.jpg.tmp"
        tmp.write_bytes(data.tobytes())
        tmp.replace(folder / f"{code}.jpg")


class _Server(uvicorn.Server):
    """Ends on the stall's one stop event, checked at each of uvicorn's ticks (0.1 s)."""

    def __init__(self, config: uvicorn.Config, stop: threading.Event) -> None:
        super().__init__(config)
        self._stop = stop

    async def on_tick(self, counter: int) -> bool:
        return self._stop.is_set() or await super().on_tick(counter)


class HttpThread:
    """A FastAPI app's uvicorn in a thread, on 127.0.0.1 only, ending on ``stop``."""

    def __init__(self, app: FastAPI, *, port: int, stop: threading.Event, name: str) -> None:
        self.app, self._port, self.stop_event, self.name = app, port, stop, name
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def bind(self) -> socket.socket:
        """Bound here, so that a port in use is an error of this call, not of a thread.

        The protocol is named: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on
        connections whose socket says IPPROTO_TCP, and an accepted connection takes the
        listening socket's.  Left at 0, every answer on a kept-alive connection (the vendor
        page's taps, its state) waited about 40 ms for the browser's delayed ACK: its
        headers went out, its body waited behind them."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, self._port))
        except OSError as exc:
            sock.close()
            raise EdgeError(f"{self.name}: cannot listen on {HOST}:{self._port}: {exc}") from exc
        sock.listen(64)
        self.port = int(sock.getsockname()[1])
        return sock

    def serve(self, sock: socket.socket) -> None:
        # asyncio and h11, named rather than left to uvicorn's "auto": the stall's paint
        # latency and memory (docs/benchmarks.md, "Stall screens") were measured on them, and
        # one or two local browsers gain nothing from the market server's uvloop and httptools.
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off", loop="asyncio",
                                http="h11", timeout_graceful_shutdown=2)
        self._server = _Server(config, self.stop_event)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name=f"{self.name}-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)

    def stop(self) -> None:
        self.stop_event.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)


class ScreenServer:
    """The screens' uvicorn in a thread of the stall, on 127.0.0.1 only."""

    def __init__(self, stall: StallApp, *, port: int, stop: threading.Event,
                 basket_wait_s: float = 300.0) -> None:
        self.stop_event = stop
        self.hub = ScreenHub(stall, stop=stop, basket_wait_s=basket_wait_s)
        self.app = create_app(stall, self.hub, stop)
        self._http = HttpThread(self.app, port=port, stop=stop, name="screens")

    @property
    def port(self) -> int | None:
        return self._http.port

    @property
    def url(self) -> str:
        return self._http.url

    def start(self) -> None:
        sock = self._http.bind()
        self.hub.start()
        self._http.serve(sock)
        logger.info("screens: %s/vendor and %s/customer", self.url, self.url)

    def stop(self) -> None:
        self.stop_event.set()
        self.hub.stop()
        self._http.stop()
