"""``wetmarket stall``: one stall's edge process."""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Callable
from types import FrameType


def run_until_signalled(start: Callable[[], None], stop: Callable[[], None]) -> None:
    """Start, run until SIGTERM or SIGINT, stop: an edge process as a service manager runs it.
    Once started, what it built is out of the collector's full passes
    (:func:`edge.allocator.freeze_startup_objects`)."""
    from edge import allocator

    done = threading.Event()

    def _stop(_sig: int, _frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    start()
    allocator.freeze_startup_objects()
    try:
        while not done.wait(0.5):
            pass
    finally:
        stop()


def _run(args: argparse.Namespace) -> int:
    from edge.config import load_config
    from edge.stall import StallApp

    app = StallApp(load_config(args.config))
    run_until_signalled(app.start, app.stop)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stall", help="run one stall's edge process",
                       description="Run one stall: scale link, recognizer, pricing, receipts, "
                                   "journal and upload to the market server.")
    p.add_argument("--config", required=True, help="stall config file (TOML)")
    p.set_defaults(run=_run)
