"""``wetmarket demo``: the market server and three simulated stalls."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path
from types import FrameType


def _run(args: argparse.Namespace) -> int:
    from edge.demo import Demo

    demo = Demo(args.port, Path(args.data), args.duration)

    def _stop(_sig: int, _frame: FrameType | None) -> None:
        demo.stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    return demo.run()


def _positive(v: str) -> float:
    f = float(v)
    if f <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {v}")
    return f


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="market server + 3 simulated stalls, sales flowing",
                       description="Start the market server and three simulated stalls; prints "
                                   "the URLs (the big screen's first). Runs until Ctrl-C or for "
                                   "--duration seconds.")
    p.add_argument("--port", type=int, default=8000, help="server port (default 8000)")
    p.add_argument("--duration", type=_positive, help="stop after S seconds")
    p.add_argument("--data", default="var/demo", help="working folder, wiped at start (default var/demo)")
    p.set_defaults(run=_run)
