"""``wetmarket server``: the market server."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
import sys

from server import ConfigError

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


def _run(args: argparse.Namespace) -> int:
    import uvicorn
    from pydantic import ValidationError

    from server.app import create_app
    from server.settings import DEFAULT_DB, Settings

    check_port_free(args.host, args.port)
    token = os.environ.get("WETMARKET_ADMIN_TOKEN")
    kw: dict[str, object] = {
        "db_url": args.db or os.environ.get("WETMARKET_DB", DEFAULT_DB),
    }
    if token:
        kw["admin_token"] = token
    try:
        settings = Settings(**kw)
    except ValidationError as exc:
        raise ConfigError(exc.errors()[0]["msg"]) from exc
    app = create_app(settings)
    if app.state.generated_admin_token:
        print("admin token, shown only this once (or set WETMARKET_ADMIN_TOKEN): "
              f"{app.state.generated_admin_token}", file=sys.stderr, flush=True)
    print(f"market server on http://{args.host}:{args.port}/display  (db {settings.db_url})",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("server", help="run the market server",
                       description="Run the market server (FastAPI). Default database: an SQLite file.")
    p.add_argument("--db", help="database URL (default: sqlite:///var/market.db or $WETMARKET_DB)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(run=_run)
