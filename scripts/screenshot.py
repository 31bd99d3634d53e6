"""Take the README's screenshot of the big screen while the demo runs.

    .venv/bin/python scripts/screenshot.py [docs/screenshot.png]
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.browser import chromium  # noqa: E402


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else REPO / "docs/screenshot.png")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = subprocess.Popen([str(Path(sys.executable).parent / "wetmarket"), "demo", "--port", str(port),
                             "--duration", "60", "--data", str(REPO / "var/screenshot")],
                            stdout=subprocess.DEVNULL)
    try:
        time.sleep(40)
        with chromium() as browser:
            page = browser.new_page(viewport={"width": 1600, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/display")
            page.wait_for_function("document.getElementById('live').classList.contains('on')")
            time.sleep(3)
            page.screenshot(path=str(out))
    finally:
        demo.terminate()
        demo.wait(60)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
