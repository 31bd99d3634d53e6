"""The fair scale's screen (``/fair``): its state on the live channel and one HTTP call per
shopper action (``edge.fair_scale.FairScale``); the page only renders and sends them.

A refused action is answered 409 with the reason (Chinese / English); a body that is not
the action's is 422 with the fields it got wrong in ``message``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from edge.screens.app import STATIC, event_stream, invalid_body

if TYPE_CHECKING:
    from edge.fair_scale import FairScale, Outcome


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScanBody(_Body):
    text: str = Field(min_length=1, max_length=512, description="the QR code's content, as the camera "
                      "or the code reader read it")


class LineBody(_Body):
    line_no: int | None = Field(None, ge=1, le=500, strict=True, description="none: the whole receipt")


def _answer(out: Outcome) -> JSONResponse:
    return JSONResponse(out.model_dump(), status_code=200 if out.ok else 409)


def create_app(fair: FairScale) -> FastAPI:
    app = FastAPI(title=f"wetmarket fair scale {fair.cfg.device_id}", docs_url="/docs", redoc_url=None,
                  description="The market's fair scale: scan a receipt, re-weigh, check.")

    app.add_exception_handler(RequestValidationError, invalid_body)

    @app.get("/", include_in_schema=False)
    def _index() -> Response:
        return Response(status_code=307, headers={"Location": "/fair"})

    @app.get("/fair", include_in_schema=False)
    def _page() -> FileResponse:
        return FileResponse(STATIC / "fair.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/state")
    def state() -> Response:
        """What the screen shows now (the JSON the live channel sends)."""
        return Response(fair.hub.latest[1], media_type="application/json")

    @app.get("/api/events", response_class=StreamingResponse)
    async def events() -> StreamingResponse:
        """Server-Sent Events: ``state`` at once and after every change."""
        return event_stream(fair.hub, fair.stop_event)

    @app.post("/api/scan")
    def scan(body: ScanBody) -> JSONResponse:
        """A receipt's QR content (the code reader types it into the page, ending with Enter)."""
        return _answer(fair.scan(body.text))

    @app.post("/api/line")
    def line(body: LineBody) -> JSONResponse:
        """The receipt line she re-weighs, or the whole receipt."""
        return _answer(fair.choose(body.line_no))

    @app.post("/api/check")
    def check() -> JSONResponse:
        """Check the stable weight on the plate against the receipt."""
        return _answer(fair.check())

    @app.post("/api/reset")
    def reset() -> JSONResponse:
        """The next shopper."""
        return _answer(fair.reset())

    return app
