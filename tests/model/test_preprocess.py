"""Decoding and preprocessing: bad files give an ImageError naming the file, never a crash."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from model import ImageError
from model.preprocess import (
    as_bgr,
    centre_crop,
    crop_roi,
    preprocess,
    read_image,
    read_photo,
    square_resize,
    to_tensor,
    validate_roi,
)


def _png_header_only(path: Path, w: int, h: int) -> None:
    """A PNG that claims w x h pixels but holds almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def _jpeg_claiming(path: Path, w: int, h: int) -> None:
    """A small real JPEG whose frame header is patched to claim w x h."""
    ok, buf = cv2.imencode(".jpg", np.full((16, 16, 3), 128, np.uint8))
    data = bytearray(buf.tobytes())
    i = data.find(b"\xff\xc0")
    data[i + 5 : i + 9] = struct.pack(">HH", h, w)
    path.write_bytes(bytes(data))


def test_read_real_photo(val_photos: list[tuple[Path, str]]) -> None:
    img = read_image(val_photos[0][0])
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty file"),
        (b"this is not an image", "not a readable image"),
        (b"\xff\xd8\xff\xe0" + b"\0" * 10, "not a readable image"),
    ],
)
def test_bad_files_name_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    p = tmp_path / "bad.jpg"
    p.write_bytes(content)
    with pytest.raises(ImageError, match=rf"bad\.jpg.*{message}"):
        read_image(p)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="nope.jpg: cannot read"):
        read_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="is a folder"):
        read_image(tmp_path)


def test_truncated_jpeg_is_an_error_or_an_image(tmp_path: Path, val_photos: list[tuple[Path, str]]) -> None:
    data = val_photos[0][0].read_bytes()
    p = tmp_path / "cut.jpg"
    p.write_bytes(data[: len(data) // 3])
    try:
        img = read_image(p)
    except ImageError as exc:
        assert "cut.jpg" in str(exc)
    else:
        # libjpeg fills what is missing with grey: a picture, just a poor one
        assert img.ndim == 3


def test_grayscale_and_tiny_images(tmp_path: Path) -> None:
    p = tmp_path / "gray.png"
    cv2.imwrite(str(p), np.full((50, 70), 90, np.uint8))
    assert read_image(p).shape == (50, 70, 3)
    p1 = tmp_path / "one.png"
    cv2.imwrite(str(p1), np.zeros((1, 1, 3), np.uint8))
    x = preprocess(read_image(p1), 64)
    assert x.shape == (1, 3, 64, 64)


def test_huge_png_is_refused_without_decoding(tmp_path: Path) -> None:
    p = tmp_path / "huge.png"
    _png_header_only(p, 20000, 20000)
    with pytest.raises(ImageError, match="huge.png"):
        read_image(p)


def test_huge_jpeg_decodes_reduced_or_fails_cleanly(tmp_path: Path) -> None:
    p = tmp_path / "huge.jpg"
    _jpeg_claiming(p, 20000, 20000)
    try:
        img = read_image(p)
    except ImageError as exc:
        assert "huge.jpg" in str(exc)
    else:
        assert img.shape[0] * img.shape[1] <= 2600 * 2600


def test_arrays_of_any_channel_count() -> None:
    assert as_bgr(np.zeros((4, 5), np.uint8)).shape == (4, 5, 3)
    assert as_bgr(np.zeros((4, 5, 1), np.uint8)).shape == (4, 5, 3)
    assert as_bgr(np.zeros((4, 5, 4), np.uint8)).shape == (4, 5, 3)
    with pytest.raises(ImageError, match="uint8"):
        as_bgr(np.zeros((4, 5, 3), np.float32))
    with pytest.raises(ImageError, match="got"):
        as_bgr(np.zeros((4, 5, 2), np.uint8))
    with pytest.raises(ImageError, match="empty"):
        as_bgr(np.zeros((0, 5, 3), np.uint8))


def test_square_resize_and_normalisation() -> None:
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, :, 2] = 255  # red in BGR
    crop = square_resize(img, 32)
    assert crop.shape == (32, 32, 3)
    x = to_tensor(crop)
    assert x.shape == (1, 3, 32, 32) and x.dtype == np.float32
    # RGB order, (x - 127) / 128
    assert x[0, 0, 0, 0] == pytest.approx(1.0) and x[0, 2, 0, 0] == pytest.approx(-127 / 128)


def test_to_tensor_matches_the_textbook_formula_exactly() -> None:
    """The fast plane-by-plane conversion gives the very floats of flip, (x - 127) / 128, transpose,
    for one crop, a batch and a strided view (a centre crop of a bigger image)."""
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (3, 40, 50, 3), dtype=np.uint8)
    for crops in (big[0], big, big[:, 4:36, 9:41], list(big[:, :32, :32])):
        arr = np.asarray(crops)
        arr = arr[None] if arr.ndim == 3 else arr
        want = ((arr[..., ::-1].astype(np.float32) - np.float32(127)) * np.float32(1 / 128))
        want = want.transpose(0, 3, 1, 2)
        got = to_tensor(crops)
        assert got.flags["C_CONTIGUOUS"] and got.dtype == np.float32
        np.testing.assert_array_equal(got, want)


def test_roi_crops_fractions() -> None:
    img = np.arange(100 * 200, dtype=np.uint32).reshape(100, 200)
    out = crop_roi(img, (0.5, 0.0, 0.5, 0.5))
    assert out.shape == (50, 100) and out[0, 0] == img[0, 100]
    assert crop_roi(img, None) is img
    for bad in [(0, 0, 0, 1), (0.5, 0, 0.6, 1), (-0.1, 0, 0.5, 0.5), (1, 2)]:
        with pytest.raises(ValueError):
            validate_roi(bad)  # type: ignore[arg-type]


def test_centre_crop_keeps_the_middle_square_of_the_shorter_side(tmp_path: Path) -> None:
    img = np.arange(100 * 200, dtype=np.uint32).reshape(100, 200)
    out = centre_crop(img, 0.8)
    assert out.shape == (80, 80) and out[0, 0] == img[10, 60]
    assert centre_crop(img, 1.0) is img
    # after the plate region, before the resize: the network input of the middle alone
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (120, 120, 3), dtype=np.uint8)
    framed = rng.integers(0, 256, (240, 300, 3), dtype=np.uint8)
    framed[60:180, 90:210] = photo
    assert np.array_equal(preprocess(framed, 32, crop=0.5), preprocess(photo, 32))
    assert np.array_equal(preprocess(framed, 32, (0.1, 0.0, 0.8, 1.0), crop=0.5), preprocess(photo, 32))
    cv2.imwrite(str(tmp_path / "framed.png"), framed)
    assert np.array_equal(read_photo(tmp_path / "framed.png", 32, 0.5), photo)
