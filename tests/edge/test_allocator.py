"""The stall's C heap settings (edge.allocator), observed through glibc's own counters."""

from __future__ import annotations

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
