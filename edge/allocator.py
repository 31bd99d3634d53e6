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
"""

from __future__ import annotations

import ctypes
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
