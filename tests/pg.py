"""The PostgreSQL server the tests use: the machine's, or a private one started for the session.

The tests prefer, in order:

1. ``$WETMARKET_TEST_PG_URL`` when set (it must answer);
2. the machine's server at 127.0.0.1:5432 (trust authentication, database ``test``) when it
   answers and lets us in (``WETMARKET_TEST_PG_PRIVATE=1`` ignores it);
3. a private server started from Debian's ``postgresql`` binaries (``initdb`` into a
   temporary folder, listening on a free port of 127.0.0.1 and a socket in that folder,
   trust authentication, database ``test``), stopped and removed at the end of the session.

``initdb`` refuses to run as root, so as root the private server runs as the ``postgres``
system user (made by Debian's package), or ``nobody`` when there is none.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server for the tests, and none could be started."""


def connect_error(url: str) -> str | None:
    """Why a connection to ``url`` fails, or None when it works."""
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return None


def _major(initdb: str) -> int:
    name = Path(initdb).parents[1].name  # /usr/lib/postgresql/15/bin/initdb -> 15
    return int(name) if name.isdigit() else 0


def find_bindir() -> Path | None:
    """The newest PostgreSQL server binaries: Debian's layout first, then ``initdb`` on PATH."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if found:
        return Path(max(found, key=_major)).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_user() -> str | None:
    """Who runs the private server: ourselves, or an unprivileged user when we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise PostgresUnavailable("running as root with neither a 'postgres' nor a 'nobody' user: "
                              "initdb refuses to run as root")


class PrivatePostgres:
    """A throw-away PostgreSQL server in a temporary folder (call :meth:`stop` when done);
    with ``primary``, a hot-standby streaming replica of that (running) private server."""

    def __init__(self, bindir: Path, *, primary: PrivatePostgres | None = None) -> None:
        self.bindir = bindir
        self.primary = primary
        self.user = _server_user()
        self.root = Path(tempfile.mkdtemp(prefix="wetmarket-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = _free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/test"
        self._started = False

    def _run(self, *args: str) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.user is not None:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        p = subprocess.run(cmd, cwd=self.root, capture_output=True, text=True, timeout=120)
        if p.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise PostgresUnavailable(f"{args[0]} failed ({p.returncode}): "
                                      f"{(p.stderr or p.stdout).strip()[-2000:]}\n{log}")

    def start(self) -> PrivatePostgres:
        if self.user is not None:
            shutil.chown(self.root, user=self.user)
        if self.primary is not None:
            # A copy of the primary that streams its WAL (-R writes primary_conninfo and
            # standby.signal; initdb's pg_hba lets 127.0.0.1 replicate with trust).
            self._run("pg_basebackup", "-h", "127.0.0.1", "-p", str(self.primary.port), "-U", "postgres",
                      "-D", str(self.data), "-R", "-X", "stream", "--no-sync", "--checkpoint=fast")
        else:
            # Speed over durability: the database is thrown away at the end of the session.
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                      "--locale=C", "--no-sync")
        options = (f"-c port={self.port} -c listen_addresses=127.0.0.1 "
                   f"-c unix_socket_directories={self.root} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w",
                  "-t", "60", "start")
        self._started = True
        if self.primary is None:
            self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "test")
        return self

    def stop(self) -> None:
        try:
            if self._started:
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def worker_database(url: str, worker: str) -> str:
    """``url`` with its database swapped for the pytest-xdist ``worker``'s own (``test_gw0``...),
    made when missing: the tests empty the ``public`` schema of their database, and NOTIFY
    channels are per database, so two workers never see each other's rows or events."""
    from sqlalchemy.engine import make_url

    base = make_url(url)
    name = f"{base.database}_{worker}"
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{name}"')
    return base.set(database=name).render_as_string(hide_password=False)


def provide(*, start_private: bool = True) -> tuple[str, PrivatePostgres | None]:
    """The URL of a PostgreSQL server for the tests, and the private server to stop, if any.

    Raises :class:`PostgresUnavailable` with what to do when there is no server to use
    (or, with ``start_private=False``, none already running).
    """
    configured = os.environ.get("WETMARKET_TEST_PG_URL")
    if configured:
        why = connect_error(configured)
        if why is not None:
            raise PostgresUnavailable(f"WETMARKET_TEST_PG_URL={configured} does not answer: {why}")
        return configured, None
    if os.environ.get("WETMARKET_TEST_PG_PRIVATE") != "1":
        why = connect_error(DEFAULT_URL)
        if why is None:
            return DEFAULT_URL, None
    if not start_private:
        raise PostgresUnavailable("no PostgreSQL server at 127.0.0.1:5432 (trust, database test), "
                                  "and WETMARKET_SKIP_POSTGRES=1 asks not to start one")
    bindir = find_bindir()
    if bindir is None:
        raise PostgresUnavailable(
            "no PostgreSQL server at 127.0.0.1:5432 (trust, database test) and no PostgreSQL "
            "binaries to start one: run scripts/bootstrap.sh test (installs Debian's postgresql), "
            "or set WETMARKET_TEST_PG_URL")
    server = PrivatePostgres(bindir)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server.url, server
