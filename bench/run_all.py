"""Run every benchmark in bench/ in turn (each prints its own figures)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    rc = 0
    for script in sorted(HERE.glob("*_bench.py")):
        print(f"== {script.name}", flush=True)
        rc |= subprocess.call([sys.executable, str(script)])
    sys.exit(rc)
