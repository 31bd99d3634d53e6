"""``wetmarket demo`` end to end: sales reach the server, and nothing is left running."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

WETMARKET = str(Path(sys.executable).parent / "wetmarket")


def _left_running(marker: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [ln for ln in out.splitlines() if marker in ln and "ps -eo" not in ln]


@pytest.mark.slow
def test_demo_runs_for_its_duration_and_cleans_up(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "demo"
    p = subprocess.Popen([WETMARKET, "demo", "--port", str(port), "--duration", "25",
                          "--data", str(data)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    seen_live = None
    deadline = time.monotonic() + 25
    while time.monotonic() < deadline and p.poll() is None:
        try:
            today = httpx.get(f"http://127.0.0.1:{port}/api/v1/stats/today", timeout=2).json()
            if today["sales"] > 0 and len(today["ranking"]) == 3:
                seen_live = today
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert seen_live is not None, f"no sales from all 3 stalls while running:\n{out}\n{err}"
    first = out.splitlines()[0]
    assert first == f"big screen:   http://127.0.0.1:{port}/display"
    totals = [int(m.group(1)) for m in re.finditer(r"sales\s+(\d+)", out)]
    assert totals and totals[-1] > 0
    assert _left_running(str(data)) == []
    # Every stall's journal was fully uploaded before the server stopped.
    import sqlite3

    for sid in ("S01", "S02", "S03"):
        db = sqlite3.connect(data / sid / "journal.sqlite3")
        states = dict(db.execute("SELECT upload_state, COUNT(*) FROM sales GROUP BY 1").fetchall())
        assert states.get("pending", 0) == 0 and states.get("sent", 0) > 0, (sid, states)
        receipts = list((data / sid / "receipts").glob("*.bin"))
        assert len(receipts) == states["sent"]


@pytest.mark.slow
def test_ctrl_c_stops_everything(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "demo"
    p = subprocess.Popen([WETMARKET, "demo", "--port", str(port), "--data", str(data)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None
    assert p.stdout.readline().startswith("big screen:")
    time.sleep(3)
    p.send_signal(signal.SIGINT)
    _out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "Traceback" not in err
    assert _left_running(str(data)) == []
