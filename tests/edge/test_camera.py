"""The camera seam's honest fake: an image folder decoded by OpenCV."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge import ConfigError
from edge.camera import ImageFolderCamera, OpenCVCamera


def _folder(tmp_path: Path) -> Path:
    for label in ("Banana", "Leek"):
        (tmp_path / label).mkdir(parents=True)
        img = np.full((40, 60, 3), 200 if label == "Banana" else 60, np.uint8)
        cv2.imwrite(str(tmp_path / label / "a.jpg"), img)
    (tmp_path / "Leek" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "notes.txt").write_text("ignored")
    return tmp_path


def test_shows_a_photo_of_the_label(tmp_path: Path) -> None:
    cam = ImageFolderCamera(_folder(tmp_path), seed=1)
    assert cam.labels == ["Banana", "Leek"]
    assert cam.read() is None                       # nothing in front of it yet
    assert cam.show("Banana")
    frame = cam.read()
    assert frame is not None and frame.shape == (40, 60, 3) and int(frame.mean()) in range(195, 206)
    assert not cam.show("Durian") and cam.read() is None


def test_broken_photo_is_no_frame_not_a_crash(tmp_path: Path) -> None:
    cam = ImageFolderCamera(_folder(tmp_path), seed=1)
    frames = []
    for _ in range(12):
        cam.show("Leek")
        frames.append(cam.read())
    assert any(f is None for f in frames) and any(f is not None for f in frames)


def test_the_folder_taken_away_is_a_camera_unplugged(tmp_path: Path) -> None:
    cam = ImageFolderCamera(_folder(tmp_path / "cam"), seed=1)
    assert cam.fault is None
    (tmp_path / "cam").rename(tmp_path / "away")
    cam.show("Banana")
    assert cam.fault == "missing" and cam.read() is None
    (tmp_path / "away").rename(tmp_path / "cam")
    assert cam.fault is None and cam.read() is not None


def test_bad_sources_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        ImageFolderCamera(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no images"):
        ImageFolderCamera(tmp_path / "empty")
    with pytest.raises(ConfigError, match="cannot open camera"):
        OpenCVCamera(str(tmp_path / "missing.mp4"))


def test_video_file_camera(tmp_path: Path) -> None:
    path = tmp_path / "plate.avi"
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(5):
        out.write(np.full((48, 64, 3), 40 * i, np.uint8))
    out.release()
    cam = OpenCVCamera(str(path))
    frames = [cam.read() for _ in range(6)]
    cam.close()
    assert all(f is not None and f.shape == (48, 64, 3) for f in frames[:5])
    assert frames[5] is None                        # the end of the file: no frame, no exception
