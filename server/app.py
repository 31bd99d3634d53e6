"""The FastAPI application, built per settings (so tests get an app per database)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from sqlalchemy import orm

from server import alerts, auth, partitions, sessions
from server.checkpool import CheckPool, default_processes
from server.db import init_db, make_engine, snapshot_maker
from server.events import MARKET_CHANNEL, Broker, PgListener, market_noted, watch_market_changes
from server.groupcommit import GroupCommit
from server.guard import document_refusals
from server.ingest import SALES_CHANNEL
from server.live import LiveFigures
from server.order_watch import ORDERS_CHANNEL, OrderWatch
from server.routes import (
    catalogue,
    display,
    export,
    fair_checks,
    feed,
    gallery,
    inspections,
    manage,
    managers,
    orders,
    pages,
    promotions,
    refunds,
    sales,
    scale_events,
    stalls,
    stats,
)
from server.settings import Settings
from server.writeprocess import WriteProcess

logger = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"


def create_app(settings: Settings) -> FastAPI:
    path = settings.sqlite_path()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.db_url)
    sessionmaker = init_db(engine, settings.tz)
    # PostgreSQL: this month's sales partition and the next ones exist before any upload
    # (then once a day: server.alerts).
    partitions.ensure(engine, dt.datetime.now(settings.tz).date())
    # Statistics, the big screen's figures and the export may read a streaming replica: the
    # schema is the primary's (migrated above), so nothing is migrated there.
    read_engine = make_engine(settings.read_db_url) if settings.read_db_url else None
    read_sessionmaker = snapshot_maker(read_engine or engine)
    admin_sha256, generated = auth.admin_token_sha256(sessionmaker, settings.admin_token)
    broker = Broker()
    postgres = engine.dialect.name == "postgresql"
    # The origin tells this server's own PostgreSQL notices from other processes'.
    origin = uuid.uuid4().hex
    # Specials, tests, prices: to the big screens of this process and, through NOTIFY, of
    # every other server process on the database.
    watch_market_changes(sessionmaker, broker, origin=origin, notify=postgres)
    # Online orders: the stalls' long polls and the shoppers' pages, woken after each change
    # (through NOTIFY in every process on PostgreSQL).
    order_watch = OrderWatch()
    order_watch.watch(sessionmaker, notify=postgres)
    write_lock = None if postgres else threading.Lock()
    # Uploads stored together, one commit each group; the big screen's figures computed off
    # the upload path (server.groupcommit, server.live).  On PostgreSQL through connections
    # of their own, whose statements are planned for the tables as they are (db.make_engine).
    write_engine = make_engine(settings.db_url, writer=True) if postgres else engine
    write_sessionmaker = (orm.sessionmaker(write_engine, expire_on_commit=False) if postgres
                          else sessionmaker)
    group_commit = GroupCommit(write_sessionmaker, write_lock=write_lock, origin=origin)
    if write_sessionmaker is not sessionmaker:
        # A sale that fulfils an online order wakes its shopper and stall at once (without,
        # their pages saw it at their next keep-alive, up to 15 s later).
        order_watch.watch(write_sessionmaker, notify=postgres)
    # On PostgreSQL small uploads are written by a process of its own once they queue behind
    # the writer (server.writeprocess); the group commit above writes batches, and the rest
    # until it is up and whenever it is not.
    writer = WriteProcess(settings, group_commit, mode=settings.write_process)
    check_pool = CheckPool(settings, default_processes() if settings.check_processes is None
                           else settings.check_processes)
    live = LiveFigures(snapshot_maker(engine), settings, broker, origin=origin)
    # Stalls found by their tokens, forgotten at every change of a stall in any process
    # (server.auth.StallTokens); on PostgreSQL trusted only while the listener listens.
    stall_tokens = auth.StallTokens(settings.stall_token_cache_s, trusting=not postgres)
    auth.watch_stall_changes(sessionmaker, stall_tokens, notify=postgres)
    listener = None
    if postgres:
        listener = PgListener(settings.db_url, {SALES_CHANNEL: live.noted,
                                                MARKET_CHANNEL: market_noted(broker, origin),
                                                ORDERS_CHANNEL: order_watch.noted,
                                                auth.STALLS_CHANNEL: auth.stalls_noted(stall_tokens)},
                              on_listening=stall_tokens.trust)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        broker.bind(asyncio.get_running_loop())
        checks = alerts.start_checks(app)  # silent stalls, sale prices (server.alerts)
        live.start()
        writer.begin()
        if listener is not None:
            listener.start()
        yield
        if listener is not None:
            listener.stop()
        live.stop()
        checks.cancel()
        check_pool.close()
        writer.close()
        engine.dispose()
        if write_engine is not engine:
            write_engine.dispose()
        if read_engine is not None:
            read_engine.dispose()

    # /docs loads Swagger UI from the installed fastapi-offline package, not from a CDN: the
    # market's network may have no internet.  ReDoc is off: its bundle still fetches its
    # maker's logo from a CDN on every view.
    app = FastAPIOffline(title="wetmarket market server", version="0.1.0", lifespan=lifespan,
                         favicon_url="/favicon.ico", redoc_url=None)
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessionmaker = sessionmaker
    app.state.write_engine = write_engine
    app.state.write_sessionmaker = write_sessionmaker
    app.state.read_sessionmaker = read_sessionmaker
    app.state.broker = broker
    app.state.admin_sha256 = admin_sha256
    #: The admin token when this start generated it (the CLI prints it once), else None.
    app.state.generated_admin_token = generated
    app.state.write_lock = write_lock
    app.state.group_commit = group_commit
    app.state.writer = writer
    # Batched uploads checked in processes of their own (server.checkpool), started by the
    # first big batch.
    app.state.check_pool = check_pool
    app.state.live = live
    app.state.listener = listener
    app.state.contacts = alerts.Contacts()
    app.state.stall_tokens = stall_tokens
    app.state.session_signer = sessions.Signer(sessions.load_secret(sessionmaker),
                                               settings.manage_session_s)
    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default echoes the offending input back, which fails on values JSON
        # cannot carry (a body of `Infinity`) and turns a client's mistake into a 500.
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]
        return JSONResponse({"detail": detail}, status_code=422)

    orders.install(app, order_watch)  # the shop's cookies and rate limits (server.routes.orders)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        # "checks": the processes that check batched uploads (server.checkpool); "writer": the
        # group commit's process (server.writeprocess)
        return {"status": "ok", "db": engine.dialect.name, "checks": check_pool.state,
                "writer": writer.state}

    # In the order of the traffic: a request is matched against each route in turn, and with
    # FastAPI's included routers that costs about 4 us a route (registered last, /healthz
    # spent 390 us finding itself).  The stalls' uploads and feed first, then the shoppers'
    # and the big screen's, the managers' last.  No two of them share a path
    # (tests/server/test_routes.py), so the order changes only the time.
    for module in (sales, feed, scale_events, refunds, gallery, pages, orders, stats, display,
                   inspections, promotions, catalogue, stalls, fair_checks, export, managers, manage):
        app.include_router(module.router)
    # Before all of them: a known stall's plain upload, past FastAPI's layers (server.routes.sales).
    app.router.routes.insert(0, sales.UploadShortcut())
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    document_refusals(app)

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    return app
