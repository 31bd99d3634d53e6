"""``wetmarket server``: the market server."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
import sys

from server import ConfigError, manager_cli, sales_cli

logger = logging.getLogger(__name__)


def check_port_free(host: str, port: int) -> None:
    """Fail with one clear line instead of uvicorn's traceback when the port is taken.

    The probe binds as uvicorn will, with SO_REUSEADDR: a port whose only sockets are
    closed connections in TIME_WAIT (a server stopped a moment ago) is free to listen on,
    while a port someone listens on is still refused.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"port {port} on {host} is already in use") from exc
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc


#: The market's settings: each from its ``wetmarket server`` flag, else its environment
#: variable, else the Settings default.
MARKET_ENV = {
    "market_region": "WETMARKET_MARKET_REGION",
    "market_number": "WETMARKET_MARKET_NUMBER",
    "timezone": "WETMARKET_TIMEZONE",
    "order_tolerance_pct": "WETMARKET_ORDER_TOLERANCE_PCT",
    "order_rate_phone": "WETMARKET_ORDER_RATE_PHONE",  # limits' notation: 10/minute;60/hour
    "order_rate_addr": "WETMARKET_ORDER_RATE_ADDR",
    # how a shopper's sign-in code reaches her phone: command:PROGRAM ARGS... or display
    "shop_code_sender": "WETMARKET_SHOP_CODE_SENDER",
    # processes that check batched uploads beside the server's (server.checkpool)
    "check_processes": "WETMARKET_CHECK_PROCESSES",
    # PostgreSQL: the group commit's writer in a process of its own (server.writeprocess)
    "write_process": "WETMARKET_WRITE_PROCESS",
}


def _market_settings(args: argparse.Namespace) -> dict[str, object]:
    out: dict[str, object] = {}
    for field, env in MARKET_ENV.items():
        value = getattr(args, field, None) or os.environ.get(env)
        if value:
            out[field] = value
    return out


def _run(args: argparse.Namespace) -> int:
    import uvicorn
    from pydantic import ValidationError

    from edge.allocator import freeze_startup_objects
    from server.app import create_app
    from server.settings import DEFAULT_DB, Settings

    check_port_free(args.host, args.port)
    token = os.environ.get("WETMARKET_ADMIN_TOKEN")
    kw: dict[str, object] = {
        "db_url": args.db or os.environ.get("WETMARKET_DB", DEFAULT_DB),
        "read_db_url": args.read_db or os.environ.get("WETMARKET_READ_DB") or None,
    }
    if token:
        kw["admin_token"] = token
    kw.update(_market_settings(args))
    if args.workers > 1:
        # Several server processes already check uploads side by side.
        kw.setdefault("check_processes", 0)
    try:
        settings = Settings(**kw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"{where}: {first['msg']}" if where else first["msg"]) from exc
    workers = args.workers
    if workers < 1:
        raise ConfigError(f"--workers must be 1 or more, got {workers}")
    if workers > 1 and settings.sqlite_path() is not None:
        raise ConfigError("an SQLite database takes one server process (its writes are one at a "
                          "time); run several --workers on PostgreSQL")
    app = create_app(settings)  # migrates the database and makes the admin token, once
    if app.state.generated_admin_token:
        print("admin token, shown only this once (or set WETMARKET_ADMIN_TOKEN): "
              f"{app.state.generated_admin_token}", file=sys.stderr, flush=True)
    print(f"market server on http://{args.host}:{args.port}/display  (db {settings.db_url}"
          + (f", {workers} processes)" if workers > 1 else ")"), file=sys.stderr, flush=True)
    if workers == 1:
        # What it built is out of the collector's full passes (edge.allocator).
        freeze_startup_objects()
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", loop=SERVER_LOOP,
                    http=SERVER_HTTP, timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
        return 0
    # Several processes (PostgreSQL): each builds its own app from these settings; the
    # database is migrated and the admin token made already, by the app above.
    app.state.engine.dispose()
    os.environ[WORKER_SETTINGS_ENV] = settings.model_dump_json()
    uvicorn.run(f"{__name__}:worker_app", factory=True, workers=workers, host=args.host,
                port=args.port, log_level="warning", loop=SERVER_LOOP, http=SERVER_HTTP,
                timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
    return 0


#: uvloop's event loop and httptools' HTTP parser (both dependencies), named so that a missing
#: one fails at start instead of uvicorn falling back to asyncio and h11 unseen: the same
#: server took single-sale uploads 1.3 to 1.4 times and answered /healthz 1.3 to 1.6 times as
#: fast on them (docs/benchmarks.md, "Market server").
SERVER_LOOP = "uvloop" if sys.platform != "win32" else "asyncio"
SERVER_HTTP = "httptools"

#: How long a stopping server lets requests in flight finish.  Stalls long-poll the feed
#: for up to 30 s and screens hold their event streams open: without a limit a restart
#: waited for every one of them.  An upload cut off here is rolled back unanswered, and
#: its stall sends it again.
SHUTDOWN_GRACE_S = 5

#: How ``wetmarket server --workers N`` hands its settings to each process it starts.
WORKER_SETTINGS_ENV = "WETMARKET_WORKER_SETTINGS"


def worker_app() -> object:
    """The app of one server process of several (uvicorn's factory, ``--workers``)."""
    from edge.allocator import freeze_startup_objects
    from server.app import create_app
    from server.settings import Settings

    app = create_app(Settings.model_validate_json(os.environ[WORKER_SETTINGS_ENV]))
    freeze_startup_objects()  # as the single process does (edge.allocator)
    return app


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("server", help="run the market server",
                       description="Run the market server (FastAPI). Default database: an SQLite file.")
    p.add_argument("--db", help="database URL (default: sqlite:///var/market.db or $WETMARKET_DB)")
    p.add_argument("--read-db", metavar="URL",
                   help="a PostgreSQL streaming replica of --db: statistics, the big screen's "
                        "figures and the export read from it ($WETMARKET_READ_DB)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--market-region", metavar="CODE",
                   help="GB/T 2260 region code that opens this market's trace codes, as in the "
                        "stalls' [market] region (default 310106 or $WETMARKET_MARKET_REGION)")
    p.add_argument("--market-number", metavar="N",
                   help="this market's number in its trace codes, as in the stalls' [market] "
                        "number (default 1 or $WETMARKET_MARKET_NUMBER)")
    p.add_argument("--timezone", metavar="ZONE",
                   help="the market's time zone: its local day and every time shown "
                        "(default Asia/Shanghai or $WETMARKET_TIMEZONE)")
    p.add_argument("--order-tolerance-pct", metavar="PCT",
                   help="an online order's weighed line differing from the shopper's estimate by more "
                        "than this is shown to her with both amounts (default 10 or "
                        "$WETMARKET_ORDER_TOLERANCE_PCT)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="server processes (default 1; several on PostgreSQL only: each takes "
                        "uploads and serves pages, and a big screen on any of them sees every "
                        "stored sale)")
    p.add_argument("--check-processes", metavar="N",
                   help="processes beside the server's that check batched uploads (16 sales or "
                        "more); default one less than the CPUs, at most 4 (none with --workers), "
                        "or $WETMARKET_CHECK_PROCESSES; 0: none")
    p.add_argument("--write-process", choices=("auto", "on", "off"),
                   help="PostgreSQL: store small uploads (a stall's sale) through a writer process "
                        "of the server's own; auto (the default, or $WETMARKET_WRITE_PROCESS) "
                        "starts it the first time they queue behind the writer, on at the start, "
                        "off never")
    p.set_defaults(run=_run)
    manager_cli.register(sub)
    sales_cli.register(sub)
