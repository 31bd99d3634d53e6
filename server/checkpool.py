"""Batched uploads checked in processes beside the server's own.

A sale's checks (``server.ingest.check_sales``: the legal model, the digest, the Ed25519
signature) are most of the CPU a batched upload costs, and they hold the interpreter's lock:
one server process checked and stored about 3,000 to 4,200 sales a second in batches of 100,
one core busy and the other mostly idle (``docs/benchmarks.md``, "Checks in processes of
their own").  Here a batch of at least :data:`POOL_MIN` sales is checked in a worker
process; the server keeps what needs its database (the trace-code number's owner, the
look-ups, the inserts) and one writer.

Nothing is lost on the way: the workers read no database and write nothing, and if a worker
dies or cannot start, the batch is checked in the server's own process, as without a pool,
and the pool is started again for later batches.  Small uploads (a stall's one sale) are
checked in process: handing them over would cost more than checking them.

Workers are started by ``spawn`` (a server process runs threads, which ``fork`` copies in
whatever state they are), lazily: the first big batch starts the pool and is checked in
process meanwhile, so a server that never gets one never starts a worker.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import signal
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from server.ingest import IngestResult, Prepared, StallLike, check_sales
from server.settings import Settings

logger = logging.getLogger(__name__)

#: Batches of this many sales or more go to the pool.  Handing a batch over costs about
#: 15 us a sale (pickled both ways: the sales as posted, the rows to store back) against
#: about 180 us of checks, and a round trip of a millisecond or so: worth it for a batch,
#: not for a stall's single sale.
POOL_MIN = 16
#: The pool gives up after its workers failed to start this many times in a row (each big
#: batch meanwhile checked in the server): a system that cannot spawn them is not asked again
#: at every batch.
MAX_FAILED_STARTS = 3
#: A batch is split into parts of at least this many sales, one per worker, so a stall's
#: catch-up of 500 sales is checked on every worker at once.
PART_MIN = 50


def default_processes() -> int:
    """One less than the CPUs this process may run on, at most 4: the server's own process
    (the writer, HTTP, the database's own work on SQLite) keeps a core."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(0, min(4, cpus - 1))


@dataclass(frozen=True, slots=True)
class _Stall:
    """What a worker needs of the posting stall (``server.ingest.StallLike``)."""

    stall_id: str
    public_key: str | None


_settings: Settings | None = None


def _start_worker(settings: Settings) -> None:
    global _settings  # noqa: PLW0603 - the worker's one configuration, set once as it starts
    _settings = settings
    # Ctrl-C in a terminal reaches the whole process group: the server stops gracefully and
    # ends its workers itself; interrupted, each printed a KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # What the worker imported stays out of the collector's passes (edge.allocator).
    gc.collect()
    gc.freeze()


def _check(stall: _Stall, raws: list[Any], owner: str | None) -> list[Prepared | IngestResult]:
    assert _settings is not None, "the worker's initializer sets the settings"
    return check_sales(stall, raws, _settings, owner)


def _ready() -> bool:
    return True


class CheckPool:
    """Worker processes for the checks of batched uploads (``server.routes.sales``)."""

    def __init__(self, settings: Settings, processes: int) -> None:
        self.settings = settings
        self.processes = processes
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        #: One task per worker, submitted as the pool starts: done when every worker is up.
        self._warm: list[Future[bool]] = []
        self._closed = False
        #: Starts in a row whose workers did not come up (reset by a batch checked there).
        self._failed_starts = 0
        #: Batches checked in the workers, and in process because the pool was not ready
        #: or failed (tests and the bench read them).
        self.pooled = 0
        self.in_process = 0

    def _usable(self) -> ProcessPoolExecutor | None:
        """The pool when its workers are up; else None, starting it if it is not."""
        with self._lock:
            if self._closed or self.processes < 1 or self._failed_starts >= MAX_FAILED_STARTS:
                return None
            if self._pool is None:
                self._start()
                return None
            if not all(f.done() for f in self._warm):
                return None
            pool = self._pool
            failed = next((e for f in self._warm if (e := f.exception()) is not None), None)
        if failed is not None:  # a worker that could not start (its initializer, the system)
            self._failed(pool, failed, starting=True)
            with self._lock:
                if self._pool is None and not self._closed and self._failed_starts < MAX_FAILED_STARTS:
                    self._start()
            return None
        return pool

    def _start(self) -> None:
        """The workers started, not waited for (under the lock)."""
        logger.info("starting %d check processes for batched uploads", self.processes)
        ctx = multiprocessing.get_context("spawn")
        try:
            pool = ProcessPoolExecutor(self.processes, mp_context=ctx,
                                       initializer=_start_worker, initargs=(self.settings,))
            # each task while no worker is idle starts one more: every worker starts now
            self._warm = [pool.submit(_ready) for _ in range(self.processes)]
        except Exception as exc:  # noqa: BLE001 - no worker costs speed, never a sale
            self._failed_starts += 1
            logger.warning("check processes not started (%s: %s); uploads are checked in the server",
                           type(exc).__name__, exc)
            return
        self._pool = pool

    @property
    def state(self) -> str:
        """``off`` (no workers), ``idle`` (not started: no big batch yet, or its workers did not
        come up and the next big batch starts them again), ``starting``,
        ``ready``, or ``failed`` (they could not start, :data:`MAX_FAILED_STARTS` times in a
        row: every batch is checked in the server); ``/healthz`` says it."""
        with self._lock:
            if self._closed or self.processes < 1:
                return "off"
            if self._failed_starts >= MAX_FAILED_STARTS:
                return "failed"
            if self._pool is None:
                return "idle"
            if not all(f.done() for f in self._warm):
                return "starting"
            # a worker that did not come up: started again by the next big batch
            return "idle" if any(f.exception() is not None for f in self._warm) else "ready"

    def _failed(self, pool: ProcessPoolExecutor, exc: BaseException, *, starting: bool = False) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool, self._warm = None, []
                self._failed_starts += starting
            given_up = self._failed_starts >= MAX_FAILED_STARTS
        if given_up:
            logger.error("check processes could not start %d times in a row (%s: %s); every upload "
                         "is now checked in the server", MAX_FAILED_STARTS, type(exc).__name__, exc)
        else:
            logger.warning("a check process failed (%s: %s); this batch is checked in the server, "
                           "and the pool starts again", type(exc).__name__, exc)
        pool.shutdown(wait=False, cancel_futures=True)

    def check(self, stall: StallLike, raws: list[Any], owner: str | None) -> list[Prepared | IngestResult]:
        """``check_sales`` of a stall's batch, in the workers when it is big enough and the
        pool is up, else here; the same answer either way, in the batch's order."""
        pool = self._usable() if len(raws) >= POOL_MIN else None
        if pool is not None:
            who = _Stall(stall.stall_id, stall.public_key)
            parts = min(self.processes, max(1, len(raws) // PART_MIN))
            size = -(-len(raws) // parts)
            try:
                futures = [pool.submit(_check, who, raws[k:k + size], owner)
                           for k in range(0, len(raws), size)]
                out = [p for f in futures for p in f.result()]
            except Exception as exc:  # noqa: BLE001 - a broken worker costs speed, never a sale
                self._failed(pool, exc)
            else:
                with self._lock:
                    self.pooled += 1
                    self._failed_starts = 0
                return out
        with self._lock:
            self.in_process += 1
        return check_sales(stall, raws, self.settings, owner)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
