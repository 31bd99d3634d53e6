"""``wetmarket manager add``: a manager account from the server's console.

The admin token creates the first manager over HTTP (``POST /api/v1/managers``); this
command does the same on the server machine, at any time (the way back in when every
manager is disabled or has forgotten their password).  The password is asked twice on
the terminal, or read from standard input with ``--password-stdin`` (one line), never
from the command line, where other users of the machine could see it.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from server import ConfigError


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise ConfigError("the two passwords differ")
    return first


def _add(args: argparse.Namespace) -> int:
    from server import managers
    from server.db import init_db, make_engine
    from server.refusals import Refused
    from server.settings import DEFAULT_DB, Settings

    settings = Settings(db_url=args.db or os.environ.get("WETMARKET_DB", DEFAULT_DB))
    path = settings.sqlite_path()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.db_url)
    try:
        maker = init_db(engine, settings.tz)
        with maker() as session:
            try:
                managers.create(session, None, args.username.lower(), args.name or args.username,
                                _password(args))
            except Refused as exc:
                raise ConfigError(str(exc)) from exc
            session.commit()
    finally:
        engine.dispose()
    print(f"manager {args.username.lower()} added: sign in at /manage/login", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("manager", help="market manager accounts (for /manage)",
                       description="Market manager accounts of the market server's database.")
    actions = p.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="add a manager account",
                             description="Add a manager account (the first one, or any time: "
                                         "the way back in when every manager is locked out).")
    add.add_argument("username", help="2-32 characters: a-z, 0-9, '_', '.', '-'")
    add.add_argument("--name", help="the name shown on the pages (default: the username)")
    add.add_argument("--db", help="database URL (default: sqlite:///var/market.db or $WETMARKET_DB)")
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from standard input instead of asking twice")
    add.set_defaults(run=_add)
