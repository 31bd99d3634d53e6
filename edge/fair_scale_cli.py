"""``wetmarket fair-scale``: the market's fair scale (公平秤) as its own edge process."""

from __future__ import annotations

import argparse


def _run(args: argparse.Namespace) -> int:
    from edge.fair_scale import FairScale, load_fair_config
    from edge.stall_cli import run_until_signalled

    fair = FairScale(load_fair_config(args.config))

    def start() -> None:
        fair.start()
        print(f"fair scale {fair.cfg.device_id}: {fair.http.url}/fair", flush=True)

    run_until_signalled(start, fair.stop)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fair-scale", help="run the market's fair scale (公平秤)",
                       description="Run the market's fair scale: the scale link, the shopper's screen "
                                   "(/fair), receipts scanned by camera or code reader, checks sent to "
                                   "the market server (queued while it is away).")
    p.add_argument("--config", required=True, help="fair-scale config file (TOML)")
    p.set_defaults(run=_run)
