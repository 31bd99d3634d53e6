"""The C heap of a stall process that runs for months (glibc's malloc).

A stall's native memory (onnxruntime, OpenCV, libjpeg, SQLite, the screens' server) is
allocated from many threads.  With glibc's defaults each thread may get its own malloc
arena (up to 8 per core), large buffers move from ``mmap`` to the arenas once one has
been freed (the mmap threshold rises by itself), and memory freed at the top of an arena
only goes back to the system when it happens to be the last block.  Measured at one sale
a second (``bench/stall_bench.py``, docs/benchmarks.md, "Stall screens"), the stall with
these settings ended 30 minutes at 252.8 MB against 275.0 MB with the defaults in the same
run (an hour: 252.7 against 279.2 MB): the defaults grow in steps of 4 to 22 MB, these
settings by about 4 MB an hour after the first ten minutes, which was SQLite's page cache of
the sale journal filling (``edge.journal.CACHE_KIB``), not the heap.

``tune()`` is called once, as the stall starts; ``trim()`` by the stall's housekeeping
thread once a minute.  Elsewhere than on glibc both do nothing and say so.

Python's own heap has the matching problem: its cyclic collector's full passes walk every
object the process holds, and a started process holds about 190,000 of them (the stall, the
market server) that live as long as it does.  ``freeze_startup_objects()``, called by every
long-running process once it has started, takes them out of the collector's view.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import threading

logger = logging.getLogger(__name__)

# mallopt(3) parameters (<malloc.h>)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

#: Two arenas: the stall's hot paths (recognition, the link, the screens) rarely allocate at
#: the same moment, and fewer arenas fragment less.
ARENAS = 2
#: Buffers of this size and above (a 720p camera frame, a decoded photo of a few MB) are
#: mapped and unmapped on their own; a fixed threshold also keeps glibc from raising it (to
#: 32 MB).  Not lower: onnxruntime without its arena and the teaching refit's numpy allocate
#: 0.1 to 1 MB buffers on every run, and at 128 KB each was mapped, faulted in page by page
#: and unmapped again: one recognition took 11 to 13.6 ms instead of 7 to 8 (the int8 model
#: on one core, min of 3 runs of 300), a refit 1.2 s of CPU instead of 0.8.
MMAP_THRESHOLD = 1024 * 1024
#: Free memory above this at the top of the heap goes back to the system at once.
TRIM_THRESHOLD = 1024 * 1024
#: How often the housekeeping thread hands freed memory back (``trim``).
TRIM_EVERY_S = 60.0


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
        libc.mallopt  # noqa: B018
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def tune() -> bool:
    """Fewer arenas and fixed thresholds (module docstring); True if applied.  Call it early:
    the arena limit binds arenas created after it, not those already made."""
    libc = _glibc()
    if libc is None:
        logger.info("not glibc: the C heap keeps its defaults")
        return False
    ok = all(libc.mallopt(param, value) == 1 for param, value in (
        (M_ARENA_MAX, ARENAS), (M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD)))
    if not ok:
        logger.warning("glibc refused a malloc setting: the C heap keeps (some of) its defaults")
    return ok


def trim() -> bool:
    """Hand the free pages of every arena back to the system (``malloc_trim(0)``); True if it
    released any."""
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


def housekeeping(stop: threading.Event, every_s: float = TRIM_EVERY_S) -> threading.Thread:
    """A daemon thread that trims every ``every_s`` seconds until ``stop`` is set."""
    def run() -> None:
        while not stop.wait(every_s):
            trim()

    thread = threading.Thread(target=run, name="heap-trim", daemon=True)
    thread.start()
    return thread


def freeze_startup_objects() -> int:
    """Move every object alive now out of the cyclic collector's sight (``gc.freeze``); the
    count frozen.  Call it once a process has started, just before it serves.

    What a process builds as it starts (modules, the app, its routes and models, SQLAlchemy's
    tables, onnxruntime's session) lives as long as it does, yet each full collection walked
    it again: 95 to 120 ms for the market server's 190,000 objects on the development VM, and
    three or four full collections a 12,000-sale batch run of ``bench/server_bench.py
    ingest``, each a pause of every request in flight.  Frozen, those runs' full collections
    took 2 to 6 ms, and the batches on SQLite went from 3,744-3,816 to 3,979-4,291 sales/s, their
    p95 from 179-183 to 109-130 ms (docs/benchmarks.md, "The collector's full passes").  The stall's
    own full pass over its 186,000 objects also took 89 ms, with the weighing link, the
    screens and the camera all waiting on the GIL.

    The garbage there is now is collected first, so nothing unreachable is frozen; objects
    made later are collected as before.  Startup objects that become cyclic garbage later
    are never collected; what can be kept so is bounded by what existed at the freeze (a
    process builds it once), it does not grow with the months a stall runs.
    """
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    logger.debug("%d startup objects frozen out of the collector's passes", frozen)
    return frozen
