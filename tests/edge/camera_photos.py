"""Camera photos the shipped recogniser answers a given way (sure, unsure, unknown), for the
stall's tests.

The shipped model is trained on every photo of train + val (``wetmarket model cv --final``), so
it is sure of nearly all of them as they are.  A stall's camera sees worse: a second item half
in view, a close-up, dim light, a smeared lens.  Each photo is tried as it is and then as such
views, each written as a JPEG and recognised from the file, as the camera folder serves it.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np

from model.recognizer import Recognition, Recognizer
from tests.conftest import DATASET


def _views(img: np.ndarray, other: np.ndarray, rng: np.random.Generator) -> Iterator[np.ndarray]:
    h, w = img.shape[:2]
    yield img
    mate = cv2.resize(other, (w, h), interpolation=cv2.INTER_AREA)
    for a in (0.7, 0.6, 0.5):  # another item half in view
        yield cv2.addWeighted(img, a, mate, 1 - a, 0)
    for f in (0.45, 0.3):  # a close-up of its middle
        ch, cw = int(h * f), int(w * f)
        yield img[(h - ch) // 2 : (h + ch) // 2, (w - cw) // 2 : (w + cw) // 2]
    yield np.clip(img * 0.25 + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)  # dim light
    yield cv2.GaussianBlur(img, (0, 0), 12)  # a smeared lens
    noise = rng.integers(0, 256, img.shape, dtype=np.uint8)
    for a in (0.5, 0.35):  # a dirty, glaring lens
        yield cv2.addWeighted(img, a, noise, 1 - a, 0)


def find_photo(rec: Recognizer, labels: list[str], want: Callable[[str, Recognition], bool],
               into: Path, per_label: int = 12) -> Path | None:
    """The first photo, or camera view of one, of ``labels``' val photos that ``want(label,
    recognition)`` accepts, copied into the folder ``into``; None when none is."""
    rng = np.random.default_rng(0)
    scratch = into.parent / f".{into.name}-try.jpg"
    paths = {label: sorted((DATASET / "val").rglob(f"{label}/*.jpg"))[:per_label] for label in labels}
    for label in labels:
        others = [p for other in labels if other != label for p in paths[other][:1]]
        for path, mate in zip(paths[label], itertools.cycle(others or paths[label]), strict=False):
            img, other = cv2.imread(str(path)), cv2.imread(str(mate))
            for n, view in enumerate(_views(img, other, rng)):
                cv2.imwrite(str(scratch), view, [cv2.IMWRITE_JPEG_QUALITY, 92])
                if want(label, rec.recognize(scratch)):
                    into.mkdir(parents=True, exist_ok=True)
                    found = into / f"{path.stem}-{n}.jpg"
                    shutil.move(scratch, found)
                    return found
    scratch.unlink(missing_ok=True)
    return None
