"""The stall's C heap settings (edge.allocator), observed through glibc's own counters."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from edge import allocator

PROBE = """
import ctypes, sys
from edge import allocator
if sys.argv[1] == "tuned":
    assert allocator.tune()
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.mallinfo2.restype = MallInfo2
big = libc.malloc(8 << 20)   # mapped; freeing it makes glibc raise its mmap threshold to 8 MB...
libc.free(big)
before = libc.mallinfo2().hblks
buffer = libc.malloc(int(sys.argv[2]))  # ...so a 720p frame's buffer would then come from the heap
print(libc.mallinfo2().hblks - before)
"""


def _mapped_chunks(mode: str, size: int) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode, str(size)], capture_output=True, text=True,
                         check=True)
    return int(out.stdout)


@pytest.mark.skipif(allocator._glibc() is None, reason="glibc's malloc only")  # noqa: SLF001
def test_big_buffers_stay_mapped_once_tuned_and_a_recognitions_do_not() -> None:
    frame, activation = 1280 * 720 * 3, 512 << 10
    assert _mapped_chunks("defaults", frame) == 0  # glibc's dynamic threshold: the frame went to the heap
    assert _mapped_chunks("tuned", frame) == 1  # fixed threshold: mapped, handed back whole when freed
    # A recognition's buffers (onnxruntime runs without its arena) are reused from the heap,
    # not mapped and faulted in again on every run.
    assert _mapped_chunks("tuned", activation) == 0


def test_trim_and_the_housekeeping_thread_stop_on_the_stall_event() -> None:
    assert isinstance(allocator.trim(), bool)
    stop = threading.Event()
    thread = allocator.housekeeping(stop, every_s=0.01)
    time.sleep(0.05)
    assert thread.is_alive()
    stop.set()
    thread.join(timeout=2)
    assert not thread.is_alive()


FREEZE_PROBE = """
import gc, json, sys, weakref
from edge import allocator

class Node:
    pass

def cycle():
    a, b = Node(), Node()
    a.other, b.other = b, a
    return a

gone = cycle()
gone_ref = weakref.ref(gone)
del gone                                    # unreachable, not yet collected
kept = [cycle() for _ in range(50_000)]     # what a process builds as it starts
before = len(gc.get_objects())
frozen = allocator.freeze_startup_objects()
after = len(gc.get_objects())
late = cycle()
late_ref = weakref.ref(late)
del late
gc.collect()
print(json.dumps({"frozen": frozen, "before": before, "after": after,
                  "kept_walked": any(o is kept[0] for o in gc.get_objects()),
                  "gone_collected": gone_ref() is None, "late_collected": late_ref() is None}))
"""


def test_frozen_startup_objects_leave_the_collectors_passes_and_nothing_else_changes() -> None:
    # In a process of its own: freezing the test worker would keep its garbage for good.
    out = subprocess.run([sys.executable, "-c", FREEZE_PROBE], capture_output=True, text=True, check=True)
    seen = json.loads(out.stdout)
    assert seen["frozen"] >= 100_000                       # the two objects of each kept cycle
    assert seen["before"] >= 100_000 > 10 * seen["after"]  # a full pass walks a tenth, or less
    assert not seen["kept_walked"]
    assert seen["gone_collected"]   # the garbage there was is collected first, not frozen
    assert seen["late_collected"]   # and garbage made later is collected as before


def test_a_service_freezes_once_started_and_before_it_serves() -> None:
    probe = """
import gc, os, signal, threading
from edge.stall_cli import run_until_signalled
seen = {}
def start():
    seen["at_start"] = gc.get_freeze_count()
def stop():
    seen["at_stop"] = gc.get_freeze_count()
threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
run_until_signalled(start, stop)
print(seen["at_start"], seen["at_stop"])
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         timeout=60)
    at_start, at_stop = (int(x) for x in out.stdout.split())
    assert at_start == 0 and at_stop > 10_000
