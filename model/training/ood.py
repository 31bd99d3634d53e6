"""Synthetic out-of-catalogue photos: packaged goods on a scale plate.

The produce photos hold no packaged goods (they were left out on purpose), and no
other photo set is at hand offline, so the "items outside the catalogue" check
draws them: cartons, bottles, cans and bags with printed labels, barcodes and
text, lit unevenly, on a steel or plastic plate.  They are easier than real
packaged goods photos would be; the held-out-produce experiment in
``model.training.train.held_out_classes`` is the hard (near) case.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

WORDS = ["MILK", "JUICE", "YOGURT", "RICE", "SOY", "OIL", "NOODLE", "TEA", "COLA", "SALT",
         "BEER", "WATER", "SUGAR", "FLOUR", "SOAP", "EGGS"]


def _plate(rng: np.random.Generator, size: int) -> np.ndarray:
    base = rng.integers(120, 230)
    tint = rng.integers(-15, 15, size=3)
    img = np.full((size, size, 3), base, np.int16) + tint
    img += rng.normal(0, 4, size=img.shape).astype(np.int16)
    return np.clip(img, 0, 255).astype(np.uint8)


def _label(img: np.ndarray, rng: np.random.Generator, x0: int, y0: int, x1: int, y1: int) -> None:
    color = tuple(int(c) for c in rng.integers(0, 256, size=3))
    band_y = int(rng.integers(y0, max(y0 + 1, (y0 + y1) // 2)))
    cv2.rectangle(img, (x0, band_y), (x1, band_y + max(4, (y1 - y0) // 4)), color, -1)
    word = str(rng.choice(WORDS))
    scale = max(0.4, (x1 - x0) / 120)
    ink = tuple(int(c) for c in rng.integers(0, 256, size=3))
    cv2.putText(img, word, (x0 + 4, min(y1 - 4, band_y + (y1 - y0) // 5)), cv2.FONT_HERSHEY_SIMPLEX,
                scale, ink, max(1, int(scale * 2)), cv2.LINE_AA)
    # a barcode
    bx, by = x0 + (x1 - x0) // 2, y1 - max(12, (y1 - y0) // 5)
    for k in range(int(rng.integers(15, 30))):
        w = int(rng.integers(1, 3))
        cv2.rectangle(img, (bx + 3 * k, by), (bx + 3 * k + w, y1 - 3), (20, 20, 20), -1)


def packaged_goods(rng: np.random.Generator, size: int = 348) -> np.ndarray:
    img = _plate(rng, size)
    kind = rng.integers(0, 4)
    color = tuple(int(c) for c in rng.integers(0, 256, size=3))
    cx, cy = size // 2 + int(rng.integers(-30, 30)), size // 2 + int(rng.integers(-30, 30))
    w, h = int(rng.integers(size // 4, size // 2)), int(rng.integers(size // 3, int(size * 0.7)))
    x0, y0, x1, y1 = cx - w // 2, cy - h // 2, cx + w // 2, cy + h // 2
    if kind == 0:  # carton
        cv2.rectangle(img, (x0, y0), (x1, y1), color, -1)
        cv2.fillConvexPoly(img, np.array([[x0, y0], [x1, y0], [x1 - 10, y0 - 25], [x0 + 10, y0 - 25]]),
                           tuple(min(255, c + 30) for c in color))
    elif kind == 1:  # bottle
        cv2.rectangle(img, (x0, y0 + h // 4), (x1, y1), color, -1)
        cv2.rectangle(img, (cx - w // 6, y0), (cx + w // 6, y0 + h // 4), color, -1)
        cv2.rectangle(img, (cx - w // 6, y0 - 12), (cx + w // 6, y0), (30, 30, 200), -1)
    elif kind == 2:  # can, seen from above or the side
        if rng.random() < 0.5:
            cv2.circle(img, (cx, cy), w // 2, (190, 190, 190), -1)
            cv2.circle(img, (cx, cy), w // 2 - 8, color, -1)
            cv2.ellipse(img, (cx, cy - w // 6), (w // 8, w // 14), 0, 0, 360, (90, 90, 90), -1)
        else:
            cv2.rectangle(img, (x0, y0), (x1, y1), color, -1)
    else:  # a sealed bag of something
        pts = np.array([[x0, y0], [x1, y0 + 8], [x1 - 6, y1], [x0 + 6, y1 - 5]])
        cv2.fillConvexPoly(img, pts, color)
        cv2.line(img, (x0, y0 + 10), (x1, y0 + 18), (240, 240, 240), 3)
    _label(img, rng, max(0, x0), max(0, y0), min(size - 1, x1), min(size - 1, y1))
    # shading and a highlight: plastic and glossy print
    shade = np.linspace(rng.uniform(0.7, 1.0), rng.uniform(1.0, 1.2), size, dtype=np.float32)
    img = np.clip(img.astype(np.float32) * shade[None, :, None], 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
        mask = np.zeros((size, size), np.float32)
        cv2.ellipse(mask, (cx + int(rng.integers(-40, 40)), cy), (w // 5, h // 3), 15, 0, 360, 1.0, -1)
        soft = cv2.GaussianBlur(mask, (0, 0), 9)[..., None]
        img = np.clip(img * (1 - 0.6 * soft) + 255 * 0.6 * soft, 0, 255).astype(np.uint8)
    return cv2.GaussianBlur(img, (3, 3), 0)


def write_packaged_goods(folder: Path, n: int = 200, seed: int = 7) -> list[Path]:
    """Write ``n`` synthetic packaged-goods photos as JPEG; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p = folder / f"packaged_{i:03d}.jpg"
        cv2.imwrite(str(p), packaged_goods(rng))
        out.append(p)
    return out
