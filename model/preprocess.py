"""Image decoding and preprocessing with OpenCV, shared by training and the runtime.

The same functions feed the trainer and the stall, so the model sees at the
stall exactly the pixels it was trained on.  The EfficientNet-Lite weights
expect RGB, a centre crop and ``(x - 127) / 128``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from model import ImageError, ModelError

logger = logging.getLogger(__name__)

MEAN = 127.0
STD = 128.0
# Beyond this many pixels after (JPEG) reduced decoding, an image is refused: a
# stall must not spend a gigabyte of memory on a bogus file.
MAX_DECODED_PIXELS = 40_000_000
MAX_FILE_BYTES = 64 * 1024 * 1024

Roi = tuple[float, float, float, float]


class RoiError(ModelError, ValueError):
    """A plate region that is not four fractions inside the image."""


@dataclass(frozen=True)
class InputSpec:
    """What the network takes: a square RGB crop, normalised, NCHW float32."""

    size: int
    mean: float = MEAN
    std: float = STD
    color: str = "RGB"
    layout: str = "NCHW"
    resize: str = "shorter side to size (INTER_AREA), centre crop"


def _header_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from the file header without decoding pixels (None if unknown)."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Image.DecompressionBombError:
        # PIL refuses to even report the size of very large images; the caller
        # then assumes "huge" and decodes reduced.
        return (1 << 16, 1 << 16)
    except Exception:  # noqa: BLE001 - any header problem: let OpenCV decide
        return None


def decode_image(data: bytes, name: str, target: int = 224) -> np.ndarray:
    """Decode encoded image bytes to a BGR uint8 array; ImageError naming ``name``."""
    if not data:
        raise ImageError(f"{name}: empty file")
    size = _header_size(data)
    flag = cv2.IMREAD_COLOR
    fmt_jpeg = data[:3] == b"\xff\xd8\xff"
    if size is not None and fmt_jpeg:
        # libjpeg can decode at 1/2, 1/4, 1/8 scale for almost free: a 20000 px
        # photo then never exists in memory at full size.
        short = min(size)
        for factor, f in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                          (2, cv2.IMREAD_REDUCED_COLOR_2)):
            if short // factor >= 2 * target:
                flag = f
                break
    elif size is not None and size[0] * size[1] > MAX_DECODED_PIXELS:
        raise ImageError(f"{name}: image too large ({size[0]}x{size[1]} pixels)")
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        img = cv2.imdecode(buf, flag)
    except cv2.error as exc:
        raise ImageError(f"{name}: cannot decode image ({exc.msg.strip()})") from exc
    if img is None:
        raise ImageError(f"{name}: not a readable image (unknown format or truncated)")
    if img.shape[0] * img.shape[1] > MAX_DECODED_PIXELS:
        raise ImageError(f"{name}: image too large ({img.shape[1]}x{img.shape[0]} pixels)")
    return img


def read_image(path: str | Path, target: int = 224) -> np.ndarray:
    """Read an image file to BGR uint8; ImageError naming the file on any problem."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ImageError(f"{path}: file too large ({path.stat().st_size} bytes)")
        data = path.read_bytes()
    except IsADirectoryError as exc:
        raise ImageError(f"{path}: is a folder, not an image") from exc
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    return decode_image(data, str(path), target)


def as_bgr(image: np.ndarray, name: str = "<array>") -> np.ndarray:
    """Accept gray, BGR or BGRA uint8 arrays (as OpenCV gives them) and return BGR."""
    if not isinstance(image, np.ndarray):
        raise ImageError(f"{name}: expected a numpy array or a path, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ImageError(f"{name}: expected uint8 pixels, got {image.dtype}")
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.ndim == 3 and image.shape[2] == 1:
        image = cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2BGR)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    elif not (image.ndim == 3 and image.shape[2] == 3):
        raise ImageError(f"{name}: expected an HxW, HxWx1, HxWx3 or HxWx4 image, got {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ImageError(f"{name}: empty image {image.shape}")
    return image


def crop_roi(image: np.ndarray, roi: Roi | None) -> np.ndarray:
    """Cut the plate region (x, y, w, h as fractions of the image) out of ``image``."""
    if roi is None:
        return image
    h, w = image.shape[:2]
    x, y, rw, rh = roi
    x0 = min(int(round(x * w)), w - 1)
    y0 = min(int(round(y * h)), h - 1)
    x1 = max(x0 + 1, min(w, int(round((x + rw) * w))))
    y1 = max(y0 + 1, min(h, int(round((y + rh) * h))))
    return image[y0:y1, x0:x1]


def validate_roi(roi: Roi | None) -> Roi | None:
    if roi is None:
        return None
    try:
        x, y, w, h = (float(v) for v in roi)
    except (TypeError, ValueError) as exc:
        raise RoiError(f"roi must be four numbers (x, y, w, h), got {roi!r}") from exc
    if not (0 <= x < 1 and 0 <= y < 1 and 0 < w <= 1 and 0 < h <= 1):
        raise RoiError(f"roi fractions must lie in 0..1 with w, h > 0, got {roi!r}")
    if x + w > 1 + 1e-6 or y + h > 1 + 1e-6:
        raise RoiError(f"roi {roi!r} reaches outside the image")
    return (x, y, w, h)


def square_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Shorter side to ``size``, then the centre ``size`` x ``size`` crop (BGR uint8)."""
    h, w = image.shape[:2]
    scale = size / min(h, w)
    nw, nh = max(size, int(round(w * scale))), max(size, int(round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    image = cv2.resize(image, (nw, nh), interpolation=interp)
    x0 = (nw - size) // 2
    y0 = (nh - size) // 2
    return image[y0 : y0 + size, x0 : x0 + size]


def centre_crop(image: np.ndarray, crop: float) -> np.ndarray:
    """The centre square whose side is ``crop`` of the shorter side (the whole image at 1).

    A model trained on such crops (its metadata's ``input.crop``) sees less of what lies around
    the produce: the edge of the plate, the counter, the bins beside it, which change from one
    occasion to the next while the produce does not."""
    if crop >= 1.0:
        return image
    h, w = image.shape[:2]
    side = max(1, int(round(min(h, w) * crop)))
    y0, x0 = (h - side) // 2, (w - side) // 2
    return image[y0 : y0 + side, x0 : x0 + side]


def to_tensor(crops: list[np.ndarray] | np.ndarray) -> np.ndarray:
    """BGR uint8 crops (N,H,W,3 or H,W,3) -> normalised RGB float32 NCHW."""
    arr = np.asarray(crops)
    if arr.ndim == 3:
        arr = arr[None]
    n, h, w, _ = arr.shape
    # Written plane by plane straight into the NCHW result: 8x faster than a float copy,
    # a channel flip and a transposing copy (1.5 ms of a 224 px recognition), same values.
    out = np.empty((n, 3, h, w), np.float32)
    for ch in range(3):
        np.subtract(arr[..., 2 - ch], np.float32(MEAN), out=out[:, ch], dtype=np.float32)
    out *= np.float32(1.0 / STD)
    return out


def preprocess(image: np.ndarray, size: int, roi: Roi | None = None, crop: float = 1.0) -> np.ndarray:
    """A BGR image -> the (1, 3, size, size) network input: the plate region ``roi``, its centre
    ``crop`` (the model's ``input.crop``), resized."""
    return to_tensor(square_resize(centre_crop(crop_roi(image, roi), crop), size))


def decode_target(size: int, crop: float = 1.0) -> int:
    """The smallest shorter side a photo may be decoded at for a model of input ``size`` that
    reads its centre ``crop``."""
    return math.ceil(size / crop)


def read_photo(path: str | Path, size: int, crop: float = 1.0) -> np.ndarray:
    """A training photo as a model of input ``size`` and ``crop`` sees it before resizing (BGR):
    decoded no smaller than the crop needs, then its centre ``crop``."""
    return centre_crop(read_image(path, decode_target(size, crop)), crop)


def tta_views(img: np.ndarray, size: int) -> list[np.ndarray]:
    """Deterministic views: the centre crop, its mirror and two quarter turns (BGR uint8)."""
    c = square_resize(img, size)
    return [c, np.ascontiguousarray(c[:, ::-1]), np.ascontiguousarray(np.rot90(c, 1)),
            np.ascontiguousarray(np.rot90(c, 3))]
