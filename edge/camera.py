"""The camera seam: a device index, an RTSP/HTTP URL, a video file, or an image folder.

The image folder is the honest fake for tests and the demo: real photos,
decoded by the same OpenCV path as a real camera's frames.  For the demo the
folder may be labelled (``.../<Label>/*.jpg``, as in the grocery-store data),
so the simulated vendor can show the camera a photo of the item it weighs.
"""

from __future__ import annotations

import abc
import logging
import random
import threading
from pathlib import Path

import cv2
import numpy as np

from edge import ConfigError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


class Camera(abc.ABC):
    """One frame at a time; ``None`` when no frame could be had (never raises on a bad frame)."""

    @abc.abstractmethod
    def read(self) -> np.ndarray | None:
        """The current frame (BGR), or None."""

    def close(self) -> None:  # noqa: B027 - most cameras hold nothing to release
        """Release the device."""


class OpenCVCamera(Camera):
    """A real camera (device index), a stream URL or a video file, through OpenCV."""

    def __init__(self, source: int | str) -> None:
        self.source = source
        self._cap = cv2.VideoCapture(source)
        if not self._cap.isOpened():
            raise ConfigError(f"cannot open camera {source!r}")
        self._lock = threading.Lock()

    def read(self) -> np.ndarray | None:
        with self._lock:
            ok, frame = self._cap.read()
        if not ok or frame is None:
            logger.warning("camera %r gave no frame", self.source)
            return None
        return frame

    def close(self) -> None:
        self._cap.release()


class ImageFolderCamera(Camera):
    """Photos from a folder tree; ``show(label)`` picks the next frame among a label's photos."""

    def __init__(self, root: Path | str, seed: int | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ConfigError(f"camera image folder {self.root} does not exist")
        self._by_label: dict[str, list[Path]] = {}
        for p in sorted(self.root.rglob("*")):
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                self._by_label.setdefault(p.parent.name, []).append(p)
        if not self._by_label:
            raise ConfigError(f"camera image folder {self.root} holds no images")
        self._rng = random.Random(seed)
        self._next: Path | None = None
        self._lock = threading.Lock()

    @property
    def labels(self) -> list[str]:
        return sorted(self._by_label)

    def show(self, label: str | None) -> bool:
        """Put a photo of ``label`` in front of the camera (False if there is none)."""
        with self._lock:
            photos = self._by_label.get(label or "")
            self._next = self._rng.choice(photos) if photos else None
            return self._next is not None

    def read(self) -> np.ndarray | None:
        with self._lock:
            path = self._next
        if path is None:
            return None
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
            logger.warning("unreadable camera image %s", path)
        return frame
