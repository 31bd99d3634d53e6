"""Fixtures shared by all test packages: real servers on 127.0.0.1, real databases."""

from __future__ import annotations

import os


def _share_the_cores() -> None:
    """Each pytest-xdist worker gets its share of the cores for the numeric libraries' thread pools
    (OpenMP, OpenBLAS, MKL; torch follows OMP_NUM_THREADS), set before any of them loads and
    inherited by the processes the tests start.  Left to themselves, two workers on two cores each
    ran a pool of two, and waiting OpenMP and OpenBLAS threads spin: the four model test files took
    290 s on two workers, 190 s with a thread each (AMD EPYC, 2 cores).  A variable already set
    is kept."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers <= 1:
        return
    share = str(max(1, len(os.sched_getaffinity(0)) // workers))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, share)


_share_the_cores()

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from server.cli import SERVER_HTTP, SERVER_LOOP
from tests import pg

REPO = Path(__file__).resolve().parent.parent
DATASET = REPO.parent / "shared" / "data" / "grocery-store"
#: The machine's PostgreSQL server; tests take the ``postgres_url`` fixture instead, which
#: falls back to a private server where this one does not answer (tests/pg.py).
POSTGRES_URL = pg.DEFAULT_URL


def pytest_collection_finish(session: pytest.Session) -> None:
    """Each test process, once it has collected, freezes what it built out of the collector's
    full passes, as the stall and the server do once started (edge.allocator): the stalls,
    scale links and servers these tests run live in this process, and a full pass over its
    414,000 objects took 183 ms here (quiet), their threads waiting on the GIL meanwhile.  Such
    pauses, longer on a loaded machine, are one suspect for the scale link a flow test once saw
    silent for a second (not shown)."""
    from edge.allocator import freeze_startup_objects

    freeze_startup_objects()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """A uvicorn server in a thread, on a free port of 127.0.0.1."""

    def __init__(self, app) -> None:
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # A stall's feed long poll keeps a request open: stopping waits 1 s for it, not 25.
        # On the market server's own event loop and HTTP parser (server.cli), so that what the
        # tests send is parsed as in production.
        cfg = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                             lifespan="on", timeout_graceful_shutdown=1, loop=SERVER_LOOP,
                             http=SERVER_HTTP)
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10)


def postgres_available() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server for the session (tests/pg.py says which); the same for every test."""
    skip = os.environ.get("WETMARKET_SKIP_POSTGRES") == "1"
    try:
        url, private = pg.provide(start_private=not skip)
    except pg.PostgresUnavailable as exc:
        if skip:
            pytest.skip(f"WETMARKET_SKIP_POSTGRES=1: {exc}")
        pytest.fail(f"{exc} (set WETMARKET_SKIP_POSTGRES=1 to skip these tests knowingly)")
    worker = os.environ.get("PYTEST_XDIST_WORKER")  # `make test` runs the suite on three workers
    try:
        yield pg.worker_database(url, worker) if worker else url
    finally:
        if private is not None:
            private.stop()


def require_real_dataset() -> Path:
    """The grocery-store photos (always there in CI); their absence fails the test unless it
    is allowed knowingly (``WETMARKET_ALLOW_NO_DATASET=1`` skips it instead)."""
    if (DATASET / "classes.csv").exists():
        return DATASET
    if os.environ.get("WETMARKET_ALLOW_NO_DATASET") == "1":
        pytest.skip(f"WETMARKET_ALLOW_NO_DATASET=1 and no photos at {DATASET}")
    pytest.fail(f"the grocery-store photos are missing at {DATASET} (set "
                "WETMARKET_ALLOW_NO_DATASET=1 to skip the tests that need them knowingly)")
