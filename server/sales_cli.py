"""``wetmarket sales partitions`` and ``wetmarket sales archive``: the monthly partitions of
the sales on PostgreSQL (``server.partitions``), from the server's console."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from typing import TYPE_CHECKING

from server import ConfigError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from server.settings import Settings


def _engine(args: argparse.Namespace) -> tuple[Engine, Settings]:
    from server.db import init_db, make_engine
    from server.settings import DEFAULT_DB, Settings

    settings = Settings(db_url=args.db or os.environ.get("WETMARKET_DB", DEFAULT_DB))
    if settings.sqlite_path() is not None:
        raise ConfigError("an SQLite database has no partitions: they are PostgreSQL's")
    engine = make_engine(settings.db_url)
    init_db(engine, settings.tz)  # migrated (0007 partitions the sales) before anything else
    return engine, settings


def _list(args: argparse.Namespace) -> int:
    from server import partitions

    engine, settings = _engine(args)
    try:
        if args.ensure:
            for name in partitions.ensure(engine, dt.datetime.now(settings.tz).date()):
                print(f"made {name}", file=sys.stderr)
        for p in partitions.partitions(engine):
            month = f"{p.first:%Y-%m}" if p.first else "(other days)"
            print(f"{p.name}\t{month}\t~{p.rows} sales")
    finally:
        engine.dispose()
    return 0


def _month(text: str) -> dt.date:
    try:
        return dt.datetime.strptime(text, "%Y-%m").date()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a month like 2026-08") from None


def _archive(args: argparse.Namespace) -> int:
    from server import partitions

    engine, settings = _engine(args)
    try:
        done = partitions.archive(engine, args.month, dt.datetime.now(settings.tz).date())
    finally:
        engine.dispose()
    print(f"{done.sales} sales in {done.sales_table}, {done.lines} lines in {done.lines_table}: "
          f"dump them (pg_dump -t {done.sales_table} -t {done.lines_table} ...) before dropping them",
          file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sales", help="the stored sales' monthly partitions (PostgreSQL)",
                       description="The monthly partitions of the market server's sales (PostgreSQL).")
    actions = p.add_subparsers(dest="action", required=True)
    db_help = "database URL (default: $WETMARKET_DB)"
    ls = actions.add_parser("partitions", help="list the partitions with their sizes",
                            description="List the attached partitions of the sales, oldest first.")
    ls.add_argument("--db", help=db_help)
    ls.add_argument("--ensure", action="store_true",
                    help="first make the partitions of the months around today (the server does "
                         "this at start and daily)")
    ls.set_defaults(run=_list)
    ar = actions.add_parser("archive", help="detach a past month for archiving",
                            description="Detach a past month's sales (and move its lines) into "
                                        "tables of their own, to dump and drop. The sales' keys "
                                        "stay, so a resent sale is still a duplicate.")
    ar.add_argument("--db", help=db_help)
    ar.add_argument("--month", type=_month, required=True, help="the month, e.g. 2026-08")
    ar.set_defaults(run=_archive)
