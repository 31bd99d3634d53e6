"""Take the README's pictures of a stall's two screens: the vendor's (1280x800) and the
customer's (1024x600), next to the big screen's and the manager's.

    .venv/bin/python scripts/screenshot_stall.py [docs/] [--lang zh|en]

A real stall (``StallApp``: the scale simulator on a pty, the shipped recogniser looking
at real photos through an image-folder camera, the journal, the file printer, its screens
on 127.0.0.1).  The vendor taught the stall's items their pictures from the camera
(``POST /api/teach``), two items are in the basket, and a third lies on the plate: the
vendor's screen shows its four guesses (``docs/vendor.png``); the vendor taps the first
and the customer's screen shows it priced (``docs/customer.png``).  Both are stored as
palette PNGs like the other pictures.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge.camera import ImageFolderCamera  # noqa: E402
from edge.config import StallConfig  # noqa: E402
from edge.demo_data import catalogue  # noqa: E402
from edge.flow import FlowState  # noqa: E402
from edge.stall import StallApp  # noqa: E402
from scripts.screenshot import optimise  # noqa: E402
from tests.browser import chromium  # noqa: E402
from tests.conftest import DATASET  # noqa: E402

VENDOR = {"width": 1280, "height": 800}
CUSTOMER = {"width": 1024, "height": 600}
#: (PLU, grams) in the basket before the picture, then the item on the plate.
BASKET = (("2003", 1260), ("2007", 830))
ON_PLATE = ("2002", 735)  # 黄瓜: one with photos in the data set


def wait(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("the stall did not get there in time")
        time.sleep(0.05)


def camera_folder(root: Path, labels: list[str]) -> Path:
    """Two real photos per label that has any (an item without one keeps its name tile)."""
    for label in labels:
        photos = sorted((DATASET / "val").rglob(f"{label}/*.jpg"))[:2]
        if not photos:
            continue
        (root / label).mkdir(parents=True)
        for path in photos:
            shutil.copy(path, root / label / path.name)
    return root


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", nargs="?", type=Path, default=REPO / "docs")
    ap.add_argument("--lang", choices=("zh", "en"), default="zh")
    args = ap.parse_args()
    items = catalogue("S02", "20261202")
    label_of = {str(i["plu"]): str(i["label"]) for i in items}
    with tempfile.TemporaryDirectory(prefix="wetmarket-stall-shot-") as tmp:
        camera = camera_folder(Path(tmp) / "camera", sorted(label_of.values()))
        cfg = StallConfig(stall_id="S02", name="李家蔬菜", vendor="李阿姨", data_dir=Path(tmp) / "S02",
                          seed=7, catalogue=items,
                          market={"name": "平顺菜市场"},
                          camera={"source": str(camera), "auto_confirm": 1.0},
                          printer={"type": "file"}, screens={"port": 0})
        app = StallApp(cfg)
        app.start()
        try:
            flow, sim, cam, screens = app.flow, app.sim, app.camera, app.screens
            assert flow is not None and sim is not None and screens is not None
            assert isinstance(cam, ImageFolderCamera)
            wait(lambda: flow.state is FlowState.IDLE)
            api = httpx.Client(base_url=screens.url, timeout=30)
            # The vendor teaches each item's picture from the camera.
            for code, label in label_of.items():
                if cam.show(label):
                    api.post("/api/teach", json={"code": code}).raise_for_status()
            cam.show(None)
            for code, grams in BASKET:
                cam.show(label_of[code])
                sim.place(grams)
                wait(lambda: flow.state is FlowState.CHOOSING)
                api.post("/api/confirm", json={"code": code}).raise_for_status()
                sim.remove()
                wait(lambda: flow.state is FlowState.IDLE)
            query = "?lang=en" if args.lang == "en" else ""
            with chromium() as browser:
                vendor = browser.new_page(viewport=VENDOR)  # type: ignore[arg-type]
                customer = browser.new_page(viewport=CUSTOMER)  # type: ignore[arg-type]
                for page, path in ((vendor, "/vendor"), (customer, "/customer")):
                    page.goto(f"{screens.url}{path}{query}")
                    page.wait_for_function("document.getElementById('live').classList.contains('on')")
                code, grams = ON_PLATE
                cam.show(label_of[code])
                sim.place(grams)
                wait(lambda: flow.state is FlowState.CHOOSING and len(flow.snapshot().guesses) == 4)
                vendor.wait_for_function("document.querySelectorAll('#guesses button.guess').length === 4")
                time.sleep(0.5)  # the guesses' pictures load
                shots = [args.folder / "vendor.png", args.folder / "customer.png"]
                vendor.screenshot(path=str(shots[0]))
                tap = vendor.locator(f"#guesses button.guess[data-code='{code}']")
                (tap if tap.count() else vendor.locator("#guesses button.guess").first).click()
                wait(lambda: flow.state is FlowState.PRICED)
                customer.wait_for_function("document.getElementById('amount').textContent !== '—'")
                time.sleep(0.3)
                customer.screenshot(path=str(shots[1]))
            for shot in shots:
                optimise(shot)
                print(f"{shot}  {shot.stat().st_size // 1024} KB")
        finally:
            app.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
