"""xray_core.imaging: resizing for models, decode_resized, and that decoding never writes to disk."""

from __future__ import annotations

import io
import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import SHARED_DATA, requires_real_data
from xray_core import imaging


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _gradient(h: int = 48, w: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return ((x * 3 + y * 2) % 256).astype(np.uint8)


# --------------------------------------------------------------------------------- resize


def test_resize_squashes_to_height_width():
    img = _gradient(48, 64)
    out = imaging.resize(img, (20, 30))
    assert out.shape == (20, 30) and out.dtype == np.uint8
    expected = np.asarray(Image.fromarray(img).resize((30, 20), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(out, expected)
    assert imaging.resize(img, 16).shape == (16, 16)


@pytest.mark.parametrize("method", sorted(imaging.RESIZE_METHODS))
def test_resize_methods_keep_flat_images_flat(method):
    out = imaging.resize(np.full((40, 40), 77, np.uint8), (13, 9), method)
    assert out.shape == (13, 9) and (out == 77).all()


def test_resize_same_size_is_a_copy():
    img = _gradient(10, 10)
    out = imaging.resize(img, (10, 10))
    np.testing.assert_array_equal(out, img)
    out[0, 0] = 255 - img[0, 0]
    assert out[0, 0] != img[0, 0]


@pytest.mark.parametrize("img, size, method, match", [
    (np.zeros((4, 4, 3), np.uint8), (2, 2), "bilinear", "2-D"),
    (np.zeros((4, 4), np.float32), (2, 2), "bilinear", "uint8"),
    (np.zeros((4, 4), np.uint8), (2, 2), "cubic", "method"),
    (np.zeros((4, 4), np.uint8), (0, 2), "bilinear", "positive"),
    (np.zeros((4, 4), np.uint8), "big", "bilinear", "size"),
])
def test_resize_rejects_bad_arguments(img, size, method, match):
    with pytest.raises(ValueError, match=match):
        imaging.resize(img, size, method)


def test_to_model_input_shapes_and_range():
    img = np.zeros((30, 40), np.uint8)
    img[:, 20:] = 255
    one = imaging.to_model_input(img, (10, 12))
    assert one.shape == (10, 12, 1) and one.dtype == np.float32
    assert one.min() == 0.0 and one.max() == 255.0  # raw pixels: the model rescales
    three = imaging.to_model_input(img, (10, 12), channels=3)
    assert three.shape == (10, 12, 3)
    for c in range(3):
        np.testing.assert_array_equal(three[..., c], one[..., 0])
    with pytest.raises(ValueError, match="channels"):
        imaging.to_model_input(img, (10, 12), channels=2)


# ------------------------------------------------------------------------- decode_resized


def test_decode_resized_equals_decode_then_resize_for_png():
    data = _png(_gradient(48, 64))
    np.testing.assert_array_equal(imaging.decode_resized(data, (20, 30)),
                                  imaging.resize(imaging.decode(data), (20, 30)))


def test_decode_resized_jpeg_draft_stays_close():
    big = np.kron(_gradient(60, 80), np.ones((8, 8), np.uint8))  # 480 x 640, smooth blocks
    buf = io.BytesIO()
    Image.fromarray(big).convert("RGB").save(buf, "JPEG", quality=92)
    fast = imaging.decode_resized(buf.getvalue(), (50, 60))
    full = imaging.resize(imaging.decode(buf.getvalue()), (50, 60))
    assert fast.shape == (50, 60)
    assert np.abs(fast.astype(int) - full.astype(int)).mean() < 2.0


def test_decode_resized_errors_like_decode():
    with pytest.raises(imaging.ImageDecodeError, match="empty"):
        imaging.decode_resized(b"", (8, 8), filename="x.png")
    with pytest.raises(ValueError, match="method"):
        imaging.decode_resized(_png(_gradient()), (8, 8), method="sinc")


def test_decode_rejects_non_bytes():
    with pytest.raises(TypeError, match="bytes, a path or a binary file"):
        imaging.decode(np.zeros((4, 4), np.uint8))


def test_decode_reads_file_objects_like_uploads():
    """Streamlit's UploadedFile is a BytesIO with a name: decode it in memory, from the start."""
    upload = io.BytesIO(_png(_gradient(12, 14)))
    upload.name = "patient scan.png"
    upload.read(5)  # a page may have peeked at it
    np.testing.assert_array_equal(imaging.decode(upload), _gradient(12, 14))
    empty = io.BytesIO(b"")
    empty.name = "upload.jpeg"
    with pytest.raises(imaging.ImageDecodeError, match="'upload.jpeg' is empty"):
        imaging.decode(empty)
    big = io.BytesIO(b"\x89PNG" + b"\x00" * 2000)
    with pytest.raises(imaging.ImageDecodeError, match="limit"):
        imaging.decode(big, max_bytes=1000)


# ------------------------------------------------------------------------------- privacy


class _WriteWatcher:
    """Records every file opened for writing while active (a Python audit hook)."""

    def __init__(self):
        self.active = False
        self.writes: list[str] = []
        self._thread = threading.get_ident()
        sys.addaudithook(self._hook)  # audit hooks cannot be removed: `active` switches it off

    def _hook(self, event, args):
        if not self.active or event != "open" or threading.get_ident() != self._thread:
            return
        path, mode, flags = args
        write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND
        if (mode and any(ch in mode for ch in "wax+")) or (mode is None and flags & write_flags):
            self.writes.append(str(path))


_watcher = _WriteWatcher()


def test_decoding_uploads_never_writes_files():
    from tests.test_bad_inputs import CASES

    uploads = [(c.make(), c.filename) for c in CASES
               if c.name in ("png-gray-16bit", "jpeg-exif-rotated", "tiff-multipage",
                             "dicom-rescale-and-window", "dicom-mono1-inverted", "truncated-jpeg",
                             "html-as-jpeg")]
    probe = Path(os.devnull)
    _watcher.active = True
    try:
        with open(probe, "w"):  # the hook itself works
            pass
        assert _watcher.writes == [str(probe)]
        _watcher.writes.clear()
        for data, name in uploads:
            try:
                imaging.decode(data, name)
                imaging.decode_resized(data, (32, 32), filename=name)
            except imaging.ImageDecodeError:
                continue  # the bad ones are expected to fail; what matters is what they wrote
    finally:
        _watcher.active = False
    assert _watcher.writes == []


# ----------------------------------------------------------------------------- real data


@requires_real_data
def test_real_full_size_jpegs_decode_to_their_header_size():
    folders = [SHARED_DATA / "chest_xray" / "val" / "NORMAL", SHARED_DATA / "originals" / "PNEUMONIA"]
    paths = [p for f in folders if f.is_dir() for p in sorted(f.glob("*.jpeg"))[:3]]
    assert paths
    for path in paths:
        with Image.open(path) as im:
            w, h = im.size
        img = imaging.decode(path)
        assert img.shape == (h, w) and img.dtype == np.uint8 and 20 < img.mean() < 235
        small = imaging.decode_resized(path, (100, 100))
        assert np.abs(small.astype(int) - imaging.resize(img, (100, 100)).astype(int)).mean() < 3


def test_importing_data_and_imaging_stays_light():
    """The app's first page imports these: no TensorFlow, and pydicom only when a DICOM arrives."""
    import subprocess

    code = ("import sys, xray_core.data, xray_core.imaging; "
            "heavy = [m for m in ('tensorflow', 'keras', 'pydicom', 'streamlit') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
