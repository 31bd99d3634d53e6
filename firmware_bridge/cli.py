"""Subcommands of this package (see edge.cli): ``scale-sim`` and ``scale-read``.

Registration is argparse only; the serial and simulator modules are imported
inside the command functions so ``wetmarket --help`` stays fast.
"""

from __future__ import annotations

import argparse

PROTOCOL_NAMES = (
    "toledo-8217",
    "mt-sics",
    "mt-continuous",
    "cas",
    "aclas-pbx",
    "aclas-ps1x",
    "dahua-acs",
    "xk3190-a9",
    "hx711-raw",
)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``scale-sim`` and ``scale-read``."""
    sim = sub.add_parser(
        "scale-sim",
        help="a simulated weighing module on a pseudo-terminal",
        description="Run a weighing-module simulator on a pty and print the pty path. "
        "Open that path (or --link PATH, which stays valid across a scripted unplug) "
        "with 'wetmarket scale-read' or a stall.",
    )
    sim.add_argument("--protocol", required=True, choices=PROTOCOL_NAMES)
    sim.add_argument("--link", metavar="PATH", help="make PATH a symlink to the pty")
    sim.add_argument("--capacity", type=int, default=15000, metavar="G", help="Max in grams")
    sim.add_argument("--e", type=int, default=5, metavar="G", help="scale interval e in grams")
    sim.add_argument("--seed", type=int, default=None, help="seed of the noise")
    sim.add_argument("--rate", type=float, default=None, metavar="HZ", help="stream rate")
    sim.add_argument("--noise", type=float, default=None, metavar="G", help="noise σ (0.1e)")
    sim.add_argument("--drift", type=float, default=0.0, metavar="G", help="zero drift, g/min")
    sim.add_argument(
        "--variant",
        default=None,
        metavar="NAME",
        help="the protocol's dialect (default: the first): cas 22, 22-id, ad, unsigned, padded; "
        "aclas-pbx polled, active; mt-continuous checksum, no-checksum; xk3190-a9 hex, clone",
    )
    sim.add_argument(
        "--line-noise",
        type=float,
        default=0.0,
        metavar="P",
        help="share of frames (0..1) sent with noise bytes in front of them",
    )
    sim.add_argument(
        "--scenario",
        metavar="NAME|SCRIPT",
        help="a named scenario (sales, faults) or a script of 'SECONDS ACTION [ARG]' steps "
        "separated by ';', e.g. '0.5 place 512; 3 remove; 4 overload; 5 unplug; 6 replug; "
        "7 garbage; 8 end'. Actions: place G, remove, overload, unplug, replug, "
        "garbage [TEXT], corrupt [N frames], truncate [N frames], wrong-line [SECONDS], "
        "hang [SECONDS], powerup [SECONDS], end",
    )
    sim.add_argument("--loop", action="store_true", help="repeat the scenario")
    sim.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S s")
    sim.set_defaults(run=_run_sim)

    read = sub.add_parser(
        "scale-read",
        help="print one JSON reading per line from a weighing module",
        description="Open PORT (a device path or any pyserial URL) and print each reading "
        'as {"gross_g", "tare_g", "net_g", "stable", "status", "t"}.',
    )
    read.add_argument("port", metavar="PORT")
    read.add_argument("--protocol", required=True, choices=PROTOCOL_NAMES)
    read.add_argument("--count", type=int, default=None, metavar="N", help="stop after N")
    read.add_argument(
        "--timeout", type=float, default=10.0, metavar="S", help="give up after S s without one"
    )
    read.add_argument("--freshness", type=float, default=1.0, metavar="S")
    read.add_argument(
        "--max", type=int, default=None, metavar="G",
        help="the scale's Max: a weight above Max+9e reads as overload (default: none, what the "
        "module sends, e.g. 3260 kg from a platform indicator)",
    )
    read.add_argument("--e", type=int, default=5, metavar="G", help="scale interval e")
    read.add_argument(
        "--calibration",
        metavar="FILE",
        help="sealed calibration (hx711-raw); its audit log is --audit or FILE.audit.jsonl",
    )
    read.add_argument("--audit", metavar="FILE", help="the scale's audit log (default: FILE.audit.jsonl)")
    read.set_defaults(run=_run_read)

    cal = sub.add_parser(
        "scale-calibrate",
        help="calibrate a raw-count module (zero and span with a known weight)",
        description="Enter calibration mode (audited), capture zero with the plate empty and "
        "span with a known weight, and write the sealed calibration FILE; its audit log is "
        "FILE.audit.jsonl and its counter is bumped.",
    )
    cal.add_argument("port", metavar="PORT")
    cal.add_argument("--protocol", default="hx711-raw", choices=("hx711-raw",))
    cal.add_argument("--store", required=True, metavar="FILE", help="the calibration file")
    cal.add_argument("--known-g", type=int, required=True, metavar="G", help="the test weight")
    cal.add_argument("--samples", type=int, default=16, metavar="N")
    cal.add_argument("--operator", default="", help="who calibrates (audited)")
    cal.add_argument("--audit", metavar="FILE",
                     help="the scale's audit log (default: FILE.audit.jsonl; a stall keeps "
                          "it at DATA_DIR/scale-audit.jsonl)")
    cal.set_defaults(run=_run_calibrate)


def _run_sim(args: argparse.Namespace) -> int:
    import sys
    import time

    from firmware_bridge.sim import SCENARIOS, Simulator, parse_script

    script = None
    if args.scenario:
        script = parse_script(SCENARIOS.get(args.scenario, args.scenario))
    sim = Simulator(
        protocol=args.protocol,
        capacity_g=args.capacity,
        e_g=args.e,
        seed=args.seed,
        link=args.link,
        rate_hz=args.rate,
        noise_g=args.noise,
        drift_g_per_min=args.drift,
        variant=args.variant,
        line_noise=args.line_noise,
    )
    print(sim.pty_path, flush=True)
    # The pty path changes on a (scripted) replug; this one stays valid throughout.
    print(f"stable path: {sim.port}", file=sys.stderr, flush=True)
    deadline = None if args.duration is None else time.monotonic() + args.duration
    sim.start()
    try:
        if script is not None:
            sim.run_script(script)
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.05)
            if script is not None and sim.script_done:
                if not args.loop:
                    break
                sim.run_script(script)
    finally:
        sim.stop()
    return 0


def _run_read(args: argparse.Namespace) -> int:
    import json
    import queue

    from firmware_bridge import LinkError
    from firmware_bridge.link import Link
    from firmware_bridge.reading import Reading

    calibration = audit = None
    if args.calibration:
        from firmware_bridge.audit import AuditLog
        from firmware_bridge.calibration import CalibrationStore

        audit = AuditLog(args.audit or args.calibration + ".audit.jsonl")
        calibration = CalibrationStore(args.calibration, audit).load()
    readings: queue.SimpleQueue[Reading] = queue.SimpleQueue()
    link = Link(
        args.port,
        protocol=args.protocol,
        on_reading=readings.put,
        freshness_s=args.freshness,
        max_g=args.max,
        e_g=args.e,
        calibration=calibration,
        audit=audit,
    )
    printed = 0
    link.start()
    try:
        while args.count is None or printed < args.count:
            try:
                reading = readings.get(timeout=args.timeout)
            except queue.Empty:
                raise LinkError(
                    f"no reading from {args.port} in {args.timeout:g} s "
                    f"(link {link.state}: {link.state_reason})"
                ) from None
            try:
                print(json.dumps(reading.to_json()), flush=True)
            except BrokenPipeError:  # `| head`: the reader has all it wanted
                break
            printed += 1
    finally:
        link.stop()
    return 0


def _run_calibrate(args: argparse.Namespace) -> int:
    import sys

    from firmware_bridge.audit import AuditLog
    from firmware_bridge.calibration import CalibrationStore
    from firmware_bridge.link import Link

    audit = AuditLog(args.audit or args.store + ".audit.jsonl")
    store = CalibrationStore(args.store, audit)

    def ask(prompt: str) -> None:
        print(prompt, file=sys.stderr, flush=True)
        if not sys.stdin.readline():
            raise SystemExit(1)

    with Link(args.port, protocol=args.protocol) as link, store.calibration_mode(args.operator) as session:
        ask("calibration: empty the plate, then press Enter")
        session.capture_zero(link.collect_counts(args.samples))
        ask(f"calibration: put the {args.known_g} g test weight on, then press Enter")
        session.capture_span(link.collect_counts(args.samples), args.known_g)
        cal = session.commit()
    print(
        f"calibrated: zero {cal.zero_counts} counts, {cal.span_counts} counts for "
        f"{cal.span_g} g; audit counter {audit.counter}",
        flush=True,
    )
    return 0
