"""Training augmentation for a camera looking down on a scale plate (OpenCV + numpy).

What changes at a stall, and what each step imitates:
- light: brightness, contrast, gamma and white-balance shifts (shop lamps, daylight);
- rotation: produce lies at any angle on the plate, and the camera is not level;
- scale: how much of the plate the item covers (random resized crop);
- partial occlusion: a hand, the edge of a basket or a price tag (random patches);
- plastic-bag glare: soft bright highlights plus a little haze and blur;
- sensor: blur and noise.
All randomness comes from the ``numpy.random.Generator`` passed in, so a run is
reproducible from its seed.
"""

from __future__ import annotations

import cv2
import numpy as np

from model.preprocess import square_resize


def _random_resized_crop(img: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(0.35, 1.0)
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw = int(round(np.sqrt(target * ratio)))
        ch = int(round(np.sqrt(target / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            x = int(rng.integers(0, w - cw + 1))
            y = int(rng.integers(0, h - ch + 1))
            crop = img[y : y + ch, x : x + cw]
            return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
    return square_resize(img, size)


def _rotate(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    k = int(rng.integers(0, 4))
    img = np.ascontiguousarray(np.rot90(img, k))
    if rng.random() < 0.5:
        img = img[:, ::-1]
    if rng.random() < 0.5:
        h, w = img.shape[:2]
        angle = rng.uniform(-30, 30)
        m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0 + abs(angle) / 90)
        img = cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT_101)
    return np.ascontiguousarray(img)


def _light(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    f = img.astype(np.float32)
    f *= rng.uniform(0.6, 1.4)  # brightness
    mean = f.mean()
    f = (f - mean) * rng.uniform(0.7, 1.3) + mean  # contrast
    f *= rng.uniform(0.88, 1.12, size=3).astype(np.float32)  # white balance
    gray = f.mean(axis=2, keepdims=True)
    f = gray + (f - gray) * rng.uniform(0.7, 1.3)  # saturation
    f = np.clip(f, 0, 255)
    gamma = rng.uniform(0.75, 1.35)
    f = 255.0 * (f / 255.0) ** gamma
    return np.clip(f, 0, 255).astype(np.uint8)


def _glare(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    mask = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(1, 4))):
        center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(w // 12, w // 3)), int(rng.integers(h // 30, h // 8)))
        cv2.ellipse(mask, center, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
    mask = np.asarray(cv2.GaussianBlur(mask, (0, 0), sigmaX=max(2.0, w / 30)), np.float32)
    strength = rng.uniform(0.4, 0.9)
    f = img.astype(np.float32)
    haze = rng.uniform(0.0, 0.2)  # a bag makes the whole picture a little milky
    f = f * (1 - haze) + 235 * haze
    f = f * (1 - strength * mask[..., None]) + 255 * strength * mask[..., None]
    out = np.clip(f, 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
        out = cv2.GaussianBlur(out, (0, 0), sigmaX=rng.uniform(0.5, 1.2))
    return out


def _occlude(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    out = img.copy()
    ch = int(h * rng.uniform(0.15, 0.4))
    cw = int(w * rng.uniform(0.15, 0.4))
    # Occluders come in from the edges (hands, basket rims) more often than not.
    y = int(rng.choice([0, h - ch, int(rng.integers(0, h - ch + 1))]))
    x = int(rng.integers(0, w - cw + 1))
    if rng.random() < 0.5:
        color = rng.integers(0, 256, size=3)
        out[y : y + ch, x : x + cw] = color
    else:
        # skin-like colours for a hand
        skin = np.array([rng.uniform(90, 170), rng.uniform(120, 190), rng.uniform(170, 240)])
        cv2.ellipse(out, (x + cw // 2, y + ch // 2), (cw // 2, ch // 2), 0, 0, 360,
                    skin.tolist(), -1)
    return out


def _sensor(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), sigmaX=rng.uniform(0.3, 1.5))
    if rng.random() < 0.5:
        noise = rng.normal(0, rng.uniform(2, 8), size=img.shape).astype(np.float32)
        img = np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    return img


def augment(img: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """A random plate-camera view of a BGR image, ``size`` x ``size`` BGR uint8."""
    out = _random_resized_crop(img, rng, size)
    out = _rotate(out, rng)
    if rng.random() < 0.8:
        out = _light(out, rng)
    if rng.random() < 0.25:
        out = _glare(out, rng)
    if rng.random() < 0.3:
        out = _occlude(out, rng)
    if rng.random() < 0.4:
        out = _sensor(out, rng)
    return out
