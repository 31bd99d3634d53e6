"""The group commit's writer in a process of its own (PostgreSQL).

The writer is the one serial stage of an upload (``server.groupcommit``), and in the server's
process it shares the interpreter's lock with the HTTP and the checks of every other upload.
Under 8 stalls' single sales a group of 4 took 4.3 to 5.6 ms there, of which its own CPU was
1.3 to 1.7 ms: each of its round trips to PostgreSQL came back to wait 0.5 to 1 ms for the
lock, while the same group written by a thread alone took 2.3 ms (``docs/benchmarks.md``,
"The writer in a process of its own").  Here it has a lock of its own: uploads are checked in
the server as before, and their rows (``server.ingest.Prepared``) go through a pipe to this
process, which writes whatever has arrived meanwhile as one group, one transaction, exactly as
the in-process group commit does (``server.groupcommit.write_group``), and sends each upload's
results back.  Each answer still leaves only after the commit that stored its sales.  Batches
(16 sales or more, checked in a check process: ``server.checkpool``) are still stored by the
server's own group commit, where they are faster on a machine whose cores the checks keep busy;
the two writers may then write at once, as the writers of two server processes do.

Nothing is lost on the way.  The process reads and writes only the database; if it dies or
cannot start, the uploads it had not answered are stored by the server's own group commit
(a sale it committed before dying is then found there and answered ``duplicate``, as a stall
sending again is), and later uploads are too until it is started again.

Only PostgreSQL: an SQLite file takes one writer at a time, which the server's other writes
(prices, inspections...) would then wait for across processes.  ``auto`` starts it the first
time a small upload queues behind the writer (a server that never gets two at once never
starts one);
``on`` at the server's start; ``off`` never.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing
import os
import signal
import threading
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from sqlalchemy.orm import Session, sessionmaker

from server import ServerError
from server.auth import StallAuth
from server.checkpool import MAX_FAILED_STARTS, POOL_MIN  # the check pool's rules, shared
from server.groupcommit import ConcurrentUpload, GroupCommit, write_group
from server.ingest import IngestResult, Prepared, StallLike
from server.settings import Settings

logger = logging.getLogger(__name__)

#: A process not ready this many seconds after its start (its database does not answer, the
#: machine cannot run it) is ended and counts as a failed start.
START_TIMEOUT_S = 30.0
#: An upload the process has not answered in this many seconds ends it (it hangs): that
#: upload and the others it held are stored by the server, as when it dies.  A group takes
#: milliseconds; a stall's request gives up after 5 s (edge.outbox) and sends again, and each
#: sending again would wait behind the same hang.
ANSWER_TIMEOUT_S = 10.0


class WriterFailed(ServerError):
    """The writer process could not store a group (the database refused it as a whole); the
    stall sends again later (500), as with the in-process group commit."""


@dataclass(eq=False, slots=True)
class _Waiting:
    done: threading.Event = field(default_factory=threading.Event)
    results: list[IngestResult] | None = None
    #: ("conflict" | "error" | "lost", message)
    error: tuple[str, str] | None = None


class WriteProcess:
    """``GroupCommit.store`` with the writing done in a process of its own when it is up;
    until then, and whenever it is not, by ``fallback`` (the server's own group commit)."""

    def __init__(self, settings: Settings, fallback: GroupCommit, *, mode: str = "auto",
                 max_sales: int = 2000, batch_min: int = POOL_MIN) -> None:
        self.settings = settings
        self.fallback = fallback
        self.mode = mode if settings.sqlite_path() is None else "off"
        self.max_sales = max_sales
        #: Uploads of this many sales or more are stored by ``fallback`` (see :meth:`store`).
        self.batch_min = batch_min
        self.start_timeout_s = START_TIMEOUT_S
        self.answer_timeout_s = ANSWER_TIMEOUT_S
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        # One thread at a time waits for the process to end: two at once can both miss its
        # exit status (the first reaps it, the second's waitpid finds no child and reports it
        # still running).
        self._reap_lock = threading.Lock()
        self._conn: Connection | None = None
        self._proc: multiprocessing.process.BaseProcess | None = None
        self._ready = False
        self._closed = False
        self._failed_starts = 0
        self._waiting: dict[int, _Waiting] = {}
        self._ids = itertools.count()
        #: Uploads written by the process (tests read it).
        self.uploads = 0

    @property
    def state(self) -> str:
        """``off``, ``idle`` (not started: no two uploads at once yet), ``starting``, ``ready``,
        or ``failed`` (it could not start :data:`MAX_FAILED_STARTS` times in a row: every
        upload is written by the server's own group commit); ``/healthz`` says it."""
        with self._lock:
            if self.mode == "off" or self._closed:
                return "off"
            if self._ready:
                return "ready"
            if self._proc is not None:
                return "starting"
            return "failed" if self._failed_starts >= MAX_FAILED_STARTS else "idle"

    @property
    def process(self) -> multiprocessing.process.BaseProcess | None:
        """The process while it runs or starts (tests and the bench)."""
        return self._proc

    @property
    def waiting(self) -> int:
        """Uploads sent to the process and not answered yet."""
        with self._lock:
            return len(self._waiting)

    def begin(self) -> None:
        """The server starts: ``on`` starts the process now."""
        if self.mode == "on":
            self.start()

    def start(self) -> None:
        """Start the process unless it runs, is starting or gave up; returns at once."""
        with self._lock:
            if self.mode == "off" or self._closed or self._proc is not None \
                    or self._failed_starts >= MAX_FAILED_STARTS:
                return
            ctx = multiprocessing.get_context("spawn")  # the server runs threads: no fork
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=_serve, name="wetmarket-writer", daemon=True,
                               args=(self.settings, self.fallback.origin, theirs, self.max_sales,
                                     logging.getLogger().getEffectiveLevel()))
            try:
                proc.start()
            except Exception as exc:  # noqa: BLE001 - no process costs speed, never a sale
                self._failed_starts += 1
                logger.warning("writer process not started (%s: %s); uploads are written in the "
                               "server", type(exc).__name__, exc)
                mine.close()
                theirs.close()
                return
            theirs.close()
            self._conn, self._proc = mine, proc
        logger.info("starting the writer process (pid %s)", proc.pid)
        threading.Thread(target=self._receive, args=(mine, proc), name="writer-answers",
                         daemon=True).start()

    def store(self, stall: StallLike, prepared: list[Prepared | IngestResult]) -> list[IngestResult]:
        """Store one stall's prepared batch; its results once they are committed."""
        if not any(isinstance(p, Prepared) for p in prepared):
            # every sale refused by its checks: nothing to write, and no transaction for it
            return [p for p in prepared if isinstance(p, IngestResult)]
        if len(prepared) >= self.batch_min:
            # A batch (checked in a check process) is stored by the server's own writer: its
            # rows crossing one more pipe cost batches of 100 from 4 stalls 2 to 5 % on 2 busy
            # cores, and the process starting under them 10 % (docs/benchmarks.md).  The two
            # writers may write at once, as two server processes' writers do.
            return self.fallback.store(stall, prepared)
        with self._lock:
            conn, proc = (self._conn, self._proc) if self._ready else (None, None)
            if conn is not None:
                uid = next(self._ids)
                waiting = self._waiting[uid] = _Waiting()
        if conn is None:
            if self.mode == "on" or self.fallback.busy:
                # on: started again after it ended; auto: small uploads queue behind the
                # writer, worth a process of its own
                self.start()
            return self.fallback.store(stall, prepared)
        try:
            with self._send_lock:
                conn.send((uid, StallAuth(stall.stall_id, stall.public_key), prepared))
        except (OSError, ValueError) as exc:  # it died: _receive answers the waiting as lost
            logger.warning("the writer process cannot be reached (%s)", exc)
        if not waiting.done.wait(self.answer_timeout_s):
            assert proc is not None
            logger.error("the writer process (pid %s) has not answered an upload in %g s: ending it",
                         proc.pid, self.answer_timeout_s)
            proc.kill()  # _receive then answers every upload it held as lost
            waiting.done.wait()
        if waiting.error is None:
            assert waiting.results is not None
            return waiting.results
        kind, message = waiting.error
        if kind == "conflict":
            raise ConcurrentUpload(message)
        if kind == "lost":
            # Written or not before it died: stored here, a committed sale found as a duplicate.
            return self.fallback.store(stall, prepared)
        raise WriterFailed(message)

    def _receive(self, conn: Connection, proc: multiprocessing.process.BaseProcess) -> None:
        """The process's answers, handed to the uploads waiting for them, until it ends."""
        was_ready = False
        why: BaseException | str = "closed"
        try:
            if not conn.poll(self.start_timeout_s):
                proc.kill()
                raise EOFError(f"not ready within {self.start_timeout_s:g} s")
            hello = conn.recv()
            if hello != "ready":
                raise EOFError(f"unexpected first message {hello!r}")
            with self._lock:
                self._ready = was_ready = True
                self._failed_starts = 0
            logger.info("the writer process is ready (pid %s)", proc.pid)
            while True:
                answers = conn.recv()
                with self._lock:
                    self.uploads += len(answers)
                    found = [(self._waiting.pop(uid), results, error) for uid, results, error in answers]
                for waiting, results, error in found:
                    waiting.results, waiting.error = results, error
                    waiting.done.set()
        except Exception as exc:  # noqa: BLE001 - gone, or an answer that cannot be read
            why = exc
            if not isinstance(exc, (EOFError, OSError)):
                logger.exception("the writer process's answers cannot be read: ending it")
                proc.kill()
        with self._lock:
            self._ready = False
            closing = self._closed
            if not closing and not was_ready:
                self._failed_starts += 1  # it never came up (its start, the database)
            self._conn = self._proc = None
            lost = list(self._waiting.values())
            self._waiting.clear()
        conn.close()
        with self._reap_lock:
            proc.join(timeout=5)
        if not closing:
            logger.error("the writer process ended (exit code %s, %s); %d uploads it had not answered "
                         "are stored by the server, as are later ones until it is started again",
                         proc.exitcode, why or type(why).__name__, len(lost))
            if self.state == "failed":
                logger.error("the writer process could not start %d times in a row: given up, every "
                             "upload is stored by the server", MAX_FAILED_STARTS)
        for waiting in lost:
            waiting.error = ("lost", "the writer process ended")
            waiting.done.set()

    def close(self) -> None:
        """Stop the process after the group it writes (the server stops)."""
        with self._lock:
            self._closed = True
            conn, proc = self._conn, self._proc
        if conn is not None:
            with self._send_lock, contextlib.suppress(OSError, ValueError):
                conn.send(None)
        if proc is not None:
            with self._reap_lock:
                proc.join(timeout=10)
                if proc.is_alive():
                    proc.terminate()


# -- the process ------------------------------------------------------------------------------

def _serve(settings: Settings, origin: str, conn: Connection, max_sales: int, log_level: int) -> None:
    """The writer process: groups what has arrived, writes it, answers, until told to stop."""
    from server.db import make_engine
    from server.order_watch import OrderWatch

    # Ctrl-C reaches the whole process group: the server stops gracefully and ends this itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=log_level,
                        format=f"%(asctime)s %(levelname)s %(name)s (writer {os.getpid()}): %(message)s")
    engine = make_engine(settings.db_url, writer=True)
    maker = sessionmaker(engine, expire_on_commit=False)
    # An order a sale fulfils wakes its shopper and stall in every server process: the
    # notice leaves with the commit (server.order_watch); nobody waits in this one.
    OrderWatch().watch(maker, notify=True)
    with engine.connect():  # up: the database answers
        pass
    conn.send("ready")
    try:
        while True:
            first = conn.recv()
            if first is None:
                break
            group = [first]
            size = len(first[2])
            stop = False
            while size < max_sales and conn.poll():
                nxt = conn.recv()
                if nxt is None:
                    stop = True
                    break
                group.append(nxt)
                size += len(nxt[2])
            conn.send(_write(maker, origin, group))
            if stop:
                break
    except EOFError:
        pass  # the server went away
    finally:
        engine.dispose()


def _write(maker: sessionmaker[Session], origin: str,
           group: list[tuple[int, StallAuth, list[Prepared | IngestResult]]]
           ) -> list[tuple[int, list[IngestResult] | None, tuple[str, str] | None]]:
    try:
        results = write_group(maker, [(stall, prepared) for _, stall, prepared in group], origin=origin)
    except ConcurrentUpload as exc:
        return [(uid, None, ("conflict", str(exc))) for uid, _, _ in group]
    except Exception as exc:  # noqa: BLE001 - each upload answers with the error, as in process
        logger.exception("a group of %d uploads could not be stored", len(group))
        return [(uid, None, ("error", f"{type(exc).__name__}: {exc}")) for uid, _, _ in group]
    return [(uid, mine, None) for (uid, _, _), mine in zip(group, results, strict=True)]
