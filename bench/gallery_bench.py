"""What a vendor's tap costs the stall's storage: the gallery saved after each taught photo.

A full 20-item stall (``MAX_PER_LABEL`` rows a label, 1280-float rows: 2,560 rows, 13 MB), then
``--taps`` taps, each one photo's four views added to a label and saved.  Two ways, in the same
run, on the same folder kind:

- **whole file**: the gallery written as one ``.npz`` and swapped in (``Gallery.export_to``,
  the very writer the folder's save used until 2026-12-06);
- **database**: ``Gallery.save`` now, the rows changed since the last save in one SQLite
  transaction (WAL, ``synchronous=FULL``: a commit waits for the flash).

Bytes written are the kernel's count for this process (``/proc/self/io`` ``write_bytes``: what
reaches the block device, the WAL's checkpoints included), after an ``os.sync`` per tap so that
each tap's writes are counted where they happen.

    .venv/bin/python bench/gallery_bench.py [--taps 200] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.gallery import MAX_PER_LABEL, Gallery  # noqa: E402

DIM = 1280
ITEMS = 20


def written() -> int:
    with open("/proc/self/io") as fh:
        for line in fh:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    raise RuntimeError("no write_bytes in /proc/self/io")


def full_gallery(folder: Path | None, rng: np.random.Generator) -> Gallery:
    g = Gallery("bench", DIM, folder)
    for k in range(ITEMS):
        g.add_many(f"item-{k}", rng.normal(size=(MAX_PER_LABEL, DIM)).astype(np.float32))
    return g


def run(way: str, where: Path, taps: int, seed: int) -> tuple[list[float], list[int]]:
    rng = np.random.default_rng(seed)
    g = full_gallery(where if way == "database" else None, rng)
    target = where / "gallery.npz"
    g.save() if way == "database" else g.export_to(target)
    os.sync()
    ms, nbytes = [], []
    for t in range(taps):
        g.add_many(f"item-{t % ITEMS}", rng.normal(size=(4, DIM)).astype(np.float32))
        before = written()
        t0 = time.perf_counter()
        g.save() if way == "database" else g.export_to(target)
        ms.append((time.perf_counter() - t0) * 1000)
        os.sync()
        nbytes.append(written() - before)
    g.close()
    return ms, nbytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--taps", type=int, default=200)
    ap.add_argument("--dir", default="/var/tmp", help="a folder on a real disk (not tmpfs)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    res = {}
    for way in ("whole file", "database"):
        with tempfile.TemporaryDirectory(dir=args.dir) as d:
            res[way] = run(way, Path(d), args.taps, args.seed)
    print(f"{ITEMS} items x {MAX_PER_LABEL} rows of {DIM} floats, {args.taps} taps, each saved; "
          f"folder under {args.dir}")
    print("| way | save p50 ms | save p90 ms | bytes written a tap (mean) | ratio of bytes to whole file |")
    print("|---|---|---|---|---|")
    base = statistics.mean(res["whole file"][1])
    for way, (ms, nb) in res.items():
        q = statistics.quantiles(ms, n=10)
        print(f"| {way} | {statistics.median(ms):.2f} | {q[8]:.2f} | {statistics.mean(nb):,.0f} | "
              f"{statistics.mean(nb) / base:.4f} |")


if __name__ == "__main__":
    main()
