"""The stall's screens: stable weight -> price painted on the customer screen, in Chromium.

A real stall (``StallApp``: the scale simulator on a pty, the flow, the journal, the
file printer, its screen server on 127.0.0.1) and headless Chromium (Debian's) showing
``/customer``.  For each sample the item is confirmed while the weight settles (one
``POST /api/confirm``, as a vendor taps before the scale is still); the flow prices it
when the weight becomes stable and the screen paints the amount.  Measured: the page's
own clock at the animation frame after it rendered the amount (``window.paints``),
minus ``stable_at_ms``, the stall's wall clock when its screen hub first saw the weight
priceable (both clocks are this machine's).

Baseline in the same run and the same page: the live channel's bare round trip
(``POST /api/echo`` with the page's clock, back as an SSE ``echo`` event).  Also the
stall process's CPU while idle with the screens connected and the camera on, and its RSS.

The four guesses on ``/vendor`` after stable: the camera (an image folder of the stall's
items, real photos, the shipped recogniser) is shown an item as it goes on the plate;
recognition starts while the weight settles; measured from ``stable_at_ms`` to the
vendor page's animation frame after it rendered the guesses with that stable weight.
Auto-confirm is off (1.0) so the vendor's page keeps the guesses.

Memory growth: one sale a second (weigh, confirm, empty, check out, receipt file) for
``--growth-min`` minutes, the stall's RSS sampled every 10 s; the least-squares slope is
reported in MB per hour (the target: no growth over an hour at one sale a second).

    .venv/bin/python bench/stall_bench.py [--samples 30] [--idle-s 5] [--growth-min 3] [--heap-defaults]
        [--memory-detail MB]   # where the RSS grew, each time it grew by MB between two samples
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import cast

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from demo_latency_bench import pct, wait_until  # noqa: E402

from edge.config import StallConfig  # noqa: E402
from edge.demo_data import catalogue  # noqa: E402
from edge.flow import FlowState  # noqa: E402
from edge.stall import StallApp  # noqa: E402
from tests.browser import chromium  # noqa: E402
from tests.conftest import DATASET  # noqa: E402

ECHO_JS = """async (n) => {
  const out = [];
  for (let i = 0; i < n; i++) {
    const k = window.echoes.length;
    await fetch('/api/echo', {method: 'POST', headers: {'Content-Type': 'application/json'},
                              body: JSON.stringify({sent_ms: performance.timeOrigin + performance.now()})});
    while (window.echoes.length <= k) await new Promise((r) => setTimeout(r, 1));
    out.push(window.echoes[k]);
  }
  return out;
}"""

# A tap's answer as the vendor's page gets it: an item by the piece added, the basket discarded
# (each answered with a JSON body), and the state read; fetch's own clock, from the call to the
# body read.
TAP_JS = """async ([n, code]) => {
  const timed = async (path, body) => {
    const t = performance.now();
    const r = await fetch(path, body === undefined ? {} : {method: 'POST',
      headers: {'Content-Type': 'application/json'}, body: JSON.stringify(body)});
    await r.text();
    if (!r.ok) throw new Error(path + ' ' + r.status);
    return performance.now() - t;
  };
  const out = {tap: [], state: []};
  for (let i = 0; i < n; i++) {
    out.tap.push(await timed('/api/pieces', {code, quantity: 1}));
    out.tap.push(await timed('/api/discard', {reason: 'bench'}));
    out.state.push(await timed('/api/state'));
  }
  return out;
}"""

PAINT_JS = """(stable) => {
  const p = window.paints.find((x) => x.stable_at_ms === stable && x.amount_fen !== null);
  return p ? p.t - stable : null;
}"""


GUESSES_JS = """(stable) => {
  const p = window.paints.find((x) => x.stable_at_ms === stable && x.guesses === 4);
  return p ? p.t - stable : null;
}"""


def camera_folder(tmp: Path, labels: list[str], per_label: int = 3) -> Path:
    """Real photos of the stall's items, one folder per recogniser label."""
    root = tmp / "camera"
    for label in labels:
        photos = sorted((DATASET / "val").rglob(f"{label}/*.jpg"))[:per_label]
        if photos:
            (root / label).mkdir(parents=True)
            for path in photos:
                shutil.copy(path, root / label / path.name)
    return root


def slope_mb_per_h(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) samples, in MB per hour."""
    ts, ms = [t for t, _ in samples], [m for _, m in samples]
    t0, m0 = statistics.fmean(ts), statistics.fmean(ms)
    var = sum((t - t0) ** 2 for t in ts)
    return sum((t - t0) * (m - m0) for t, m in samples) / var * 3600 if var else 0.0


def summary(xs: list[float]) -> dict[str, float]:
    return {"n": len(xs), "p50": round(statistics.median(xs), 1), "p95": round(pct(xs, 0.95), 1),
            "max": round(max(xs), 1)}


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory_detail() -> dict[str, object]:
    """What the RSS is made of now: the kernel's split (anonymous, file, shared), the threads,
    Python's allocated blocks, and each mapping's resident KB (``/proc/self/smaps``)."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines()
                  if ":" in line)
    maps: dict[str, int] = {}
    head = ""
    for line in Path("/proc/self/smaps").read_text().splitlines():
        first = line.split(None, 1)[0]
        if "-" in first and not first.endswith(":"):
            parts = line.split(None, 5)
            # By where it starts: a heap or arena that grows keeps its start, not its end.
            head = f"{parts[0].split('-')[0]} {parts[5] if len(parts) > 5 else '[anon]'}"
        elif first == "Rss:":
            maps[head] = int(line.split()[1])
    return {"anon_kb": int(status["RssAnon"].split()[0]), "file_kb": int(status["RssFile"].split()[0]),
            "shmem_kb": int(status["RssShmem"].split()[0]), "threads": int(status["Threads"]),
            "py_blocks": sys.getallocatedblocks(), "maps": maps}


def report_step(t: float, before: dict[str, object], after: dict[str, object], min_kb: int = 256) -> None:
    """Print, on stderr, where the RSS changed between two samples: the split, and each mapping
    whose resident size moved by at least ``min_kb`` (a new one counts from zero, a gone one
    to zero)."""
    old, new = cast(dict[str, int], before["maps"]), cast(dict[str, int], after["maps"])
    moved = sorted(((new.get(name, 0) - old.get(name, 0), name) for name in old.keys() | new.keys()
                    if abs(new.get(name, 0) - old.get(name, 0)) >= min_kb), reverse=True)
    split = ", ".join(f"{k} {cast(int, after[k]) - cast(int, before[k]):+d}"
                      for k in ("anon_kb", "file_kb", "shmem_kb", "threads", "py_blocks"))
    print(f"memory step at {t:.0f} s: {split}", file=sys.stderr)
    for kb, name in moved[:10]:
        tag = "  (new)" if name not in old else "  (gone)" if name not in new else ""
        print(f"  {kb:+d} KB  {name}{tag}", file=sys.stderr)


def heap_defaults() -> None:
    """The stall as it was before its heap settings: for the memory run's baseline."""
    import onnxruntime as ort

    from edge import allocator

    class ArenaOn(ort.SessionOptions):
        enable_cpu_mem_arena = property(lambda self: True, lambda self, value: None)

    ort.SessionOptions = ArenaOn
    allocator.tune = lambda: False

    def no_trim(stop: threading.Event, every_s: float = 0.0) -> threading.Thread:
        thread = threading.Thread(target=stop.wait)
        thread.start()
        return thread

    allocator.housekeeping = no_trim


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=30)
    ap.add_argument("--idle-s", type=float, default=5.0)
    ap.add_argument("--growth-min", type=float, default=3.0)
    ap.add_argument("--tracemalloc", type=int, default=0, metavar="N",
                    help="print the N allocation sites (Python objects) that grew most over the "
                         "memory run, traced from its start (slower allocations)")
    ap.add_argument("--memory-detail", type=float, default=0.0, metavar="MB",
                    help="memory run: print where the RSS grew (the kernel's split, each mapping "
                         "that grew) whenever it grew by at least MB between two samples")
    ap.add_argument("--heap-defaults", action="store_true",
                    help="the baseline: glibc's and onnxruntime's default heaps (no edge.allocator "
                         "settings, no trim, onnxruntime's arena on)")
    args = ap.parse_args()
    if args.heap_defaults:
        heap_defaults()
    tmp = Path(tempfile.mkdtemp(prefix="wm-stall-bench-"))
    items = catalogue("S02", "20261202")
    items.append({"plu": "2011", "name": "玉米", "name_en": "Sweet corn", "unit_price_fen": 250,
                  "price_unit": "piece"})  # sold by the piece: the taps' item
    camera = camera_folder(tmp, [str(i["label"]) for i in items if i.get("label")])
    cfg = StallConfig(stall_id="S02", name="bench", data_dir=tmp / "S02", seed=3, catalogue=items,
                      camera={"source": str(camera), "auto_confirm": 1.0},
                      printer={"type": "file"}, screens={"port": 0})
    stall = StallApp(cfg)
    stall.start()
    flow, sim, screens, cam = stall.flow, stall.sim, stall.screens, stall.camera
    assert flow is not None and sim is not None and screens is not None and cam is not None
    labels = [lab for lab in sorted({str(i["label"]) for i in items if i.get("label")})
              if cam.show(lab)]  # type: ignore[attr-defined]
    cam.show(None)  # type: ignore[attr-defined]
    paint_ms: list[float] = []
    guesses_ms: list[float] = []
    rss: list[tuple[float, float]] = []
    skipped = skipped_guesses = sales = 0
    try:
        with chromium() as browser, httpx.Client(base_url=screens.url, timeout=5) as c:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(f"{screens.url}/customer")
            page.wait_for_function("document.getElementById('live').classList.contains('on')")
            vendor = browser.new_page(viewport={"width": 1280, "height": 800})
            vendor.goto(f"{screens.url}/vendor")
            vendor.wait_for_function("document.getElementById('live').classList.contains('on')")
            wait_until(lambda: flow.state is FlowState.IDLE)

            cpu0, wall0 = time.process_time(), time.monotonic()
            time.sleep(args.idle_s)
            idle_cpu_pct = (time.process_time() - cpu0) / (time.monotonic() - wall0) * 100

            for i in range(args.samples):
                sim.place(300 + 37 * i)
                if not wait_until(lambda: flow.state is FlowState.SETTLING, 5):
                    skipped += 1
                    sim.remove()
                    wait_until(lambda: flow.state is FlowState.IDLE)
                    continue
                r = c.post("/api/confirm", json={"code": "2001"})
                ok = r.status_code == 200 and r.json()["pending"]
                ok = ok and wait_until(lambda: flow.state is FlowState.PRICED, 5)
                stable = screens.hub.state.get("stable_at_ms") if ok else None
                latency = None
                if stable is not None:
                    deadline = time.monotonic() + 5
                    while latency is None and time.monotonic() < deadline:
                        latency = page.evaluate(PAINT_JS, stable)
                if latency is None:
                    skipped += 1  # confirmed too late (already stable) or never painted
                else:
                    paint_ms.append(latency)
                sim.remove()
                wait_until(lambda: flow.state is FlowState.IDLE)
                c.post("/api/discard", json={"reason": "bench"})

            echo_ms = page.evaluate(ECHO_JS, args.samples)
            taps = vendor.evaluate(TAP_JS, [args.samples, "2011"])

            # The four guesses on the vendor's screen after stable.
            for i in range(args.samples):
                cam.show(labels[i % len(labels)])  # type: ignore[attr-defined]
                sim.place(400 + 41 * i)
                ok = wait_until(lambda: flow.state is FlowState.CHOOSING and screens.hub.state.get(
                    "stable_at_ms") is not None, 5)
                stable = screens.hub.state.get("stable_at_ms") if ok else None
                latency = None
                if stable is not None:
                    deadline = time.monotonic() + 5
                    while latency is None and time.monotonic() < deadline:
                        latency = vendor.evaluate(GUESSES_JS, stable)
                if latency is None:
                    skipped_guesses += 1
                else:
                    guesses_ms.append(latency)
                sim.remove()
                wait_until(lambda: flow.state is FlowState.IDLE)

            # Memory: one sale a second, RSS every 10 s.
            if args.tracemalloc:
                tracemalloc.start(12)
                traced0 = tracemalloc.take_snapshot()
            start = time.monotonic()
            next_rss = start
            detail = memory_detail() if args.memory_detail else None
            while time.monotonic() - start < args.growth_min * 60:
                tick = time.monotonic()
                if tick >= next_rss:
                    rss.append((tick - start, rss_mb()))
                    next_rss += 10
                    if detail is not None:
                        now = memory_detail()
                        if len(rss) > 1 and rss[-1][1] - rss[-2][1] >= args.memory_detail:
                            report_step(tick - start, detail, now)
                        detail = now
                sim.place(500 + 13 * (sales % 40))
                if wait_until(lambda: flow.state in (FlowState.SETTLING, FlowState.CHOOSING), 5) and \
                        flow.confirm("2001").ok and wait_until(lambda: flow.state is FlowState.PRICED, 5):
                    sim.remove()
                    wait_until(lambda: flow.state is FlowState.IDLE, 5)
                    if flow.checkout().ok:
                        sales += 1
                else:
                    sim.remove()
                    wait_until(lambda: flow.state is FlowState.IDLE, 5)
                time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
            rss.append((time.monotonic() - start, rss_mb()))
            if args.tracemalloc:
                grown = tracemalloc.take_snapshot().compare_to(traced0, "traceback")
                print(f"traced Python memory grew {sum(d.size_diff for d in grown) / 1e6:.1f} MB "
                      f"over {sales} sales; the sites that grew most:", file=sys.stderr)
                for d in grown[:args.tracemalloc]:
                    print(f"  {d.size_diff / 1e3:+.0f} KB in {d.count_diff:+d} blocks:", file=sys.stderr)
                    for line in d.traceback.format()[-8:]:
                        print("     " + line, file=sys.stderr)
                tracemalloc.stop()
    finally:
        stall.stop()
    if not paint_ms:
        print("no sample was painted", file=sys.stderr)
        return 1
    res = {
        "samples": args.samples,
        "skipped": skipped,
        "stable_to_customer_paint_ms": summary(paint_ms),
        "baseline_sse_echo_round_trip_ms": summary(echo_ms),
        "ratio_p50_paint_vs_echo": round(statistics.median(paint_ms) / statistics.median(echo_ms), 1),
        # the answer of a vendor's tap (an item by the piece, a discard) and of a state read, as
        # the vendor's page's fetch times them; the echo's round trip above is the baseline
        "tap_answer_on_vendor_page_ms": summary(taps["tap"]),
        "state_read_on_vendor_page_ms": summary(taps["state"]),
        "guesses_on_vendor_screen_after_stable_ms": summary(guesses_ms) if guesses_ms else None,
        "guesses_skipped": skipped_guesses,
        "stall_idle_cpu_pct_of_one_core_camera_on": round(idle_cpu_pct, 1),
        "stall_process_rss_mb": round(rss_mb(), 1),
        "growth_run": {"minutes": args.growth_min, "sales": sales,
                       "rss_first_mb": round(rss[0][1], 1) if rss else None,
                       "rss_last_mb": round(rss[-1][1], 1) if rss else None,
                       "rss_slope_mb_per_hour": round(slope_mb_per_h(rss), 1) if len(rss) > 1 else None,
                       # The first minutes include warming up (allocator, caches, JIT of numpy paths).
                       "rss_slope_second_half_mb_per_hour": round(slope_mb_per_h(rss[len(rss) // 2:]), 1)
                       if len(rss) > 3 else None,
                       # Every sample (seconds, MB): whether it levels off, and when.
                       "rss_series": [[round(t), round(m, 1)] for t, m in rss]},
    }
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
