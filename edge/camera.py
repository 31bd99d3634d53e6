"""The camera seam: a device index, an RTSP/HTTP URL, a video file, or an image folder.

The image folder is the honest fake for tests and the demo: real photos,
decoded by the same OpenCV path as a real camera's frames; the folder taken away
is a camera unplugged (``missing``).  For the demo the
folder may be labelled (``.../<Label>/*.jpg``, as in the grocery-store data),
so the simulated vendor can show the camera a photo of the item it weighs.

A camera the stall cannot trust says why in ``fault`` (``None``: it can be used):
``MissingCamera`` stands in for one that did not open, and ``CameraWatch`` looks at a
live camera once a second (``missing`` when no frame comes, ``frozen`` when the same
frame comes for ``frozen_s``: a live sensor's noise makes every frame differ).  The
stall's flow recognises nothing while the camera has a fault: the vendor picks items
by hand and both screens say so.
"""

from __future__ import annotations

import abc
import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable
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

    @property
    def fault(self) -> str | None:
        """Why the camera cannot be used now (``missing``, ``frozen``), or None."""
        return None


class MissingCamera(Camera):
    """A configured camera that could not be opened: the stall sells by hand."""

    def __init__(self, source: str, error: str) -> None:
        self.source, self.error = source, error

    def read(self) -> np.ndarray | None:
        return None

    @property
    def fault(self) -> str | None:
        return "missing"


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

    @property
    def fault(self) -> str | None:
        # The folder taken away stands for a camera unplugged: the stall sells by hand and
        # both screens say so, as with a live camera that gives no frame.
        return None if self.root.is_dir() else "missing"

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


class CameraWatch(Camera):
    """A live camera, looked at every ``probe_s``: ``missing`` after ``misses`` reads without
    a frame, ``frozen`` when every frame for ``frozen_s`` was the same (a hung driver, a
    stream stuck on its last picture).  Reads pass through and count as looks too.
    ``on_change`` is called when the fault changes (the screens say it at once)."""

    def __init__(self, camera: Camera, *, stop: threading.Event, frozen_s: float = 10.0,
                 probe_s: float = 1.0, misses: int = 2,
                 on_change: Callable[[], None] | None = None) -> None:
        self.camera = camera
        self.frozen_s = frozen_s
        self.probe_s = probe_s
        self.misses = misses
        self.on_change = on_change or (lambda: None)
        self._stop = stop
        self._lock = threading.Lock()
        self._digest: bytes | None = None
        self._same_since = time.monotonic()
        self._missed = 0
        self._fault: str | None = None
        self._thread: threading.Thread | None = None

    @property
    def fault(self) -> str | None:
        return self._fault

    @property
    def frozen_for_s(self) -> float:
        return time.monotonic() - self._same_since if self._fault == "frozen" else 0.0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="camera-watch", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.camera.close()

    def _run(self) -> None:
        while not self._stop.wait(self.probe_s):
            try:
                self.read()
            except Exception:  # noqa: BLE001 - the watch must outlive one bad read
                logger.exception("camera watch: read failed")

    def read(self) -> np.ndarray | None:
        frame = self.camera.read()
        self._saw(frame)
        return frame

    def _saw(self, frame: np.ndarray | None, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            old = self._fault
            if frame is None:
                self._missed += 1
                if self._missed >= self.misses:
                    self._fault = "missing"
            else:
                self._missed = 0
                digest = hashlib.blake2b(np.ascontiguousarray(frame).data, digest_size=16).digest()
                if digest != self._digest:
                    self._digest, self._same_since = digest, now
                self._fault = "frozen" if now - self._same_since >= self.frozen_s else None
            new = self._fault
        if new != old:
            log = logger.info if new is None else logger.warning
            log("camera %s", new or "back: recognition resumes")
            self.on_change()
