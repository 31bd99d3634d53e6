"""Group commit: uploads that arrive together are stored in one transaction, one commit.

An acknowledged sale must be on disk (SQLite with ``synchronous=FULL``, PostgreSQL with its
default ``synchronous_commit``), so every commit waits for the disk to flush: about 0.4 ms
on the development VM's disk when it is idle, 4 to 12 ms when other work loads it.  With one
commit per upload, and one writer at a time (SQLite; and on PostgreSQL two stalls selling
the same item today update the same rollup row), the server takes at most one upload per
flush, however many stalls send at once, and every query an upload runs is paid again for
each upload.

Here the first upload to find the writer idle writes (the leader); uploads that come while
it writes queue up; when its commit is done it answers its own stall, hands the queue to
the first waiting upload, which writes all of them in the next transaction, and so on
(leader and followers: no thread of its own).  Each answer still leaves only after the
commit that stored its sales, so nothing acknowledged can be lost, but N stalls sending at
once cost one look-up, one insert per table and one flush instead of N.

Uploads are grouped up to ``max_sales`` sales; a group that fails as a whole (the database
is gone) fails each of its uploads with that error, as one upload alone would.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass, field

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from server import ServerError
from server.ingest import IngestResult, Prepared, StallLike, store

logger = logging.getLogger(__name__)


class ConcurrentUpload(ServerError):
    """Another server process stored some of the same sales at the same moment twice in a
    row; the stall sends again later (409)."""


@dataclass(eq=False)
class _Upload:
    stall: StallLike
    prepared: list[Prepared | IngestResult]
    done: threading.Event = field(default_factory=threading.Event)
    lead: bool = False
    results: list[IngestResult] | None = None
    error: BaseException | None = None

    @property
    def sales(self) -> int:
        return len(self.prepared)


class GroupCommit:
    """Stores prepared uploads (``server.ingest.prepare``), several at a time."""

    def __init__(self, maker: sessionmaker[Session], *, write_lock: threading.Lock | None = None,
                 max_sales: int = 2000, origin: str = "") -> None:
        self._maker = maker
        #: Names this server in its notices, so that its own live stream skips them.
        self.origin = origin
        self._write_lock = write_lock
        self._max_sales = max_sales
        self._mutex = threading.Lock()
        self._queue: list[_Upload] = []
        self._writing = False
        #: Transactions committed and uploads stored (tests and benchmarks read them).
        self.commits = 0
        self.uploads = 0

    def store(self, stall: StallLike, prepared: list[Prepared | IngestResult]) -> list[IngestResult]:
        """Store one stall's prepared batch; its results once they are committed."""
        upload = _Upload(stall, prepared)
        with self._mutex:
            self._queue.append(upload)
            if not self._writing:
                self._writing = upload.lead = True
        if not upload.lead:
            upload.done.wait()  # answered, or handed the queue to write
        if upload.results is None and upload.error is None:
            self._lead()
        if upload.error is not None:
            raise upload.error
        assert upload.results is not None
        return upload.results

    def _lead(self) -> None:
        with self._mutex:
            group: list[_Upload] = []
            size = 0
            while self._queue and (not group or size + self._queue[0].sales <= self._max_sales):
                size += self._queue[0].sales
                group.append(self._queue.pop(0))
        try:
            self._write(group)
        except BaseException as exc:  # noqa: BLE001 - each upload answers with the error
            for upload in group:
                upload.error = exc
        finally:
            with self._mutex:
                if self._queue:
                    nxt = self._queue[0]
                    nxt.lead = True
                    nxt.done.set()
                else:
                    self._writing = False
            for upload in group:
                upload.done.set()

    @property
    def busy(self) -> bool:
        """A group is being written now (an upload arriving would queue behind it)."""
        return self._writing

    def _write(self, group: list[_Upload]) -> None:
        results = write_group(self._maker, [(u.stall, u.prepared) for u in group],
                              lock=self._write_lock, origin=self.origin)
        self.commits += 1
        self.uploads += len(group)
        for upload, mine in zip(group, results, strict=True):
            upload.results = mine


def write_group(maker: sessionmaker[Session], batches: list[tuple[StallLike, list[Prepared | IngestResult]]],
                *, lock: threading.Lock | None = None, origin: str = "") -> list[list[IngestResult]]:
    """Store a group of uploads in one transaction (``server.ingest.store``) and commit it;
    each upload's results.  Raises :class:`ConcurrentUpload` when another process stored some of
    the same sales between the look-up and the insert twice in a row, and whatever else stopped
    the group as a whole.  Also the writer process's work (``server.writeprocess``)."""
    with lock if lock is not None else contextlib.nullcontext(), maker() as session:
        for attempt in (1, 2):
            try:
                results = store(session, batches, own_transaction=True, announce=origin)
                session.commit()
                return results
            except IntegrityError:
                # Another process stored some of these sales between our look-up and our
                # insert (PostgreSQL, several server processes): look again, they are
                # duplicates now.
                session.rollback()
                if attempt == 2:
                    raise ConcurrentUpload("concurrent upload of the same sales; send again") from None
    raise AssertionError("unreachable")  # pragma: no cover
