"""A corpus of what clinicians' systems export, good and bad, generated in a temporary folder.

Each case either decodes (with its shape and pixel values checked) or raises ImageDecodeError
whose message says what was wrong and what to do. DICOMs are written with pydicom.
"""

from __future__ import annotations

import gzip
import io
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from xray_core import imaging
from xray_core.imaging import ImageDecodeError

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.pixels import get_decoder  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, generate_uid  # noqa: E402

# A gray test pattern with distinct quadrants so that rotations and inversions show.
H, W = 40, 64
PATTERN = np.zeros((H, W), np.uint8)
PATTERN[:, :] = 60
PATTERN[: H // 2, : W // 2] = 220  # bright top-left quadrant
PATTERN[H // 2:, W // 2:] = 120


def _save(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a size but holds no pixel data (a decompression-bomb probe)."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def dicom_file(pixels: np.ndarray | None, *, photometric: str = "MONOCHROME2", frames: int | None = None,
           signed: bool = False, preamble: bool = True, tsyntax=ExplicitVRLittleEndian,
           encapsulated: bytes | None = None, **attrs) -> bytes:
    """Write a minimal CR DICOM holding `pixels` (rows, cols[, 3]) or (frames, rows, cols)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = tsyntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.PatientName = "Test^Synthetic"
    if pixels is not None:
        arr = np.asarray(pixels)
        rgb = arr.ndim == 3 and frames is None
        ds.Rows, ds.Columns = (arr.shape[0], arr.shape[1]) if frames is None else arr.shape[1:3]
        ds.SamplesPerPixel = 3 if rgb else 1
        if rgb:
            ds.PlanarConfiguration = 0
        ds.PhotometricInterpretation = "RGB" if rgb else photometric
        bits = arr.dtype.itemsize * 8
        ds.BitsAllocated = bits
        ds.BitsStored = bits
        ds.HighBit = bits - 1
        ds.PixelRepresentation = 1 if signed else 0
        if frames is not None:
            ds.NumberOfFrames = frames
        if encapsulated is not None:
            ds.PixelData = encapsulate([encapsulated])
            ds["PixelData"].VR = "OB"
        else:
            ds.PixelData = arr.tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=preamble)
    return buf.getvalue()


def _bare_dicom() -> bytes:
    """No preamble, no file meta, implicit VR: what some old systems write."""
    ds = pydicom.dcmread(io.BytesIO(dicom_file(_ramp16())))
    del ds.file_meta
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, implicit_vr=True, little_endian=True)
    return buf.getvalue()


def _voi_lut_dicom() -> bytes:
    """Stored values 0..3 mapped through a deliberately non-monotonic 8-bit VOI LUT."""
    pixels = np.array([[0, 1], [2, 3]], np.uint16)
    item = Dataset()
    item.LUTDescriptor = [4, 0, 8]
    item.add_new(0x00283006, "US", [0, 200, 100, 255])  # LUT Data, 16-bit words
    data = dicom_file(pixels)
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.VOILUTSequence = pydicom.Sequence([item])
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    return _save(Image.fromarray(PATTERN), "JPEG", quality=95, exif=exif.tobytes())


def _cmyk_jpeg() -> bytes:
    return _save(Image.fromarray(PATTERN).convert("RGB").convert("CMYK"), "JPEG", quality=95)


def _palette_png(transparent: bool = False) -> bytes:
    im = Image.new("P", (W, H))
    palette = []
    for i in range(256):
        palette += [i, i, i]
    im.putpalette(palette)
    im.putdata(PATTERN.flatten().tolist())
    return _save(im, "PNG", transparency=220) if transparent else _save(im, "PNG")


def _rgba_png() -> bytes:
    rgba = np.dstack([PATTERN, PATTERN, PATTERN, np.full_like(PATTERN, 255)])
    rgba[:, :8, 3] = 0  # a transparent left border
    return _save(Image.fromarray(rgba, "RGBA"), "PNG")


def _la_png() -> bytes:
    return _save(Image.fromarray(np.dstack([PATTERN, np.full_like(PATTERN, 255)]), "LA"), "PNG")


def _ramp16() -> np.ndarray:
    return np.linspace(0, 65535, H * W).reshape(H, W).astype(np.uint16)


def _ramp12() -> np.ndarray:
    return np.linspace(0, 4095, H * W).reshape(H, W).astype(np.uint16)


def _multipage_tiff() -> bytes:
    first, second = Image.fromarray(PATTERN), Image.fromarray(255 - PATTERN)
    return _save(first, "TIFF", save_all=True, append_images=[second])


def _truncated(data: bytes, keep: float = 0.6) -> bytes:
    return data[: int(len(data) * keep)]


def _corrupt_png() -> bytes:
    data = bytearray(_save(Image.fromarray(np.random.default_rng(0).integers(0, 255, (H, W), np.uint8)), "PNG"))
    mid = len(data) // 2
    data[mid: mid + 40] = b"\x00" * 40
    return bytes(data)


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("IM-0001-0001.jpeg", _save(Image.fromarray(PATTERN), "JPEG"))
    return buf.getvalue()


# ------------------------------------------------------------------------ expectations


def _exact(expected: np.ndarray) -> Callable[[np.ndarray], None]:
    def check(img: np.ndarray) -> None:
        np.testing.assert_array_equal(img, expected)
    return check


def _close(expected: np.ndarray, tol: float = 4.0) -> Callable[[np.ndarray], None]:
    """Lossy formats: same shape, mean absolute error within tol gray levels."""
    def check(img: np.ndarray) -> None:
        assert img.shape == expected.shape
        assert np.abs(img.astype(int) - expected.astype(int)).mean() <= tol
    return check


def _exif_check(img: np.ndarray) -> None:
    assert img.shape == (W, H)  # rotated: width and height swap
    assert img[: W // 4, -H // 4:].mean() > 200  # bright quadrant moved from top-left to top-right
    assert img[: W // 4, : H // 4].mean() < 100


def _rgba_check(img: np.ndarray) -> None:
    assert img.shape == (H, W)
    assert (img[:, :8] == 0).all()  # transparent composited on black
    np.testing.assert_array_equal(img[:, 8:], PATTERN[:, 8:])


def _stretched_ramp(img: np.ndarray) -> None:
    assert img.shape == (H, W)
    assert img[0, 0] == 0 and img[-1, -1] == 255
    assert (np.diff(img.astype(int).ravel()) >= 0).all()  # monotonic ramp survives


def _first_page(img: np.ndarray) -> None:
    np.testing.assert_array_equal(img, PATTERN)


def _mono1_check(img: np.ndarray) -> None:
    np.testing.assert_array_equal(img, np.array([[255, 0], [127, 0]], np.uint8))  # 255 - rint(127.5)


def _window_check(img: np.ndarray) -> None:
    # stored 0, 500, 1000, 250 -> HU -1000, 0, 1000, -500 -> window 0/1000 -> 0, 128, 255, 0
    np.testing.assert_array_equal(img, np.array([[0, 128], [255, 0]], np.uint8))


def _multiframe_check(img: np.ndarray) -> None:
    np.testing.assert_array_equal(img, np.array([[0, 255], [0, 255]], np.uint8))


@dataclass(frozen=True)
class Case:
    name: str
    filename: str
    make: Callable[[], bytes]
    check: Callable[[np.ndarray], None] | None = None  # decodes, then check(img)
    error: tuple[str, ...] = ()  # raises ImageDecodeError with all these phrases (case-insensitive)
    warns: str | None = None


GOOD = [
    Case("png-gray-8bit", "a.png", lambda: _save(Image.fromarray(PATTERN), "PNG"), _exact(PATTERN)),
    Case("png-gray-16bit", "a.png", lambda: _save(Image.fromarray(_ramp16()), "PNG"), _stretched_ramp),
    Case("png-gray-12bit-in-16", "a.png", lambda: _save(Image.fromarray(_ramp12()), "PNG"), _stretched_ramp),
    Case("png-rgb", "a.png", lambda: _save(Image.fromarray(PATTERN).convert("RGB"), "PNG"), _exact(PATTERN)),
    Case("png-rgb-colour", "a.png",
         lambda: _save(Image.new("RGB", (W, H), (255, 0, 0)), "PNG"),
         _exact(np.full((H, W), 76, np.uint8))),  # ITU-R 601 luma of pure red
    Case("png-rgba", "a.png", _rgba_png, _rgba_check),
    Case("png-gray-alpha", "a.png", _la_png, _exact(PATTERN)),
    Case("png-palette", "a.png", _palette_png, _exact(PATTERN)),
    Case("png-palette-transparent", "a.png", lambda: _palette_png(True),
         _exact(np.where(PATTERN == 220, 0, PATTERN).astype(np.uint8))),
    Case("png-1bit", "a.png", lambda: _save(Image.fromarray(PATTERN > 100), "PNG"),
         _exact(np.where(PATTERN > 100, 255, 0).astype(np.uint8))),
    Case("jpeg-baseline-gray", "a.jpeg", lambda: _save(Image.fromarray(PATTERN), "JPEG", quality=95),
         _close(PATTERN)),
    Case("jpeg-baseline-rgb", "a.jpg", lambda: _save(Image.fromarray(PATTERN).convert("RGB"), "JPEG",
                                                     quality=95), _close(PATTERN)),
    Case("jpeg-progressive", "a.jpg", lambda: _save(Image.fromarray(PATTERN).convert("RGB"), "JPEG",
                                                    quality=95, progressive=True), _close(PATTERN)),
    Case("jpeg-cmyk", "a.jpg", _cmyk_jpeg, _close(PATTERN, tol=6)),
    Case("jpeg-exif-rotated", "a.jpg", _exif_rotated_jpeg, _exif_check),
    Case("bmp", "a.bmp", lambda: _save(Image.fromarray(PATTERN), "BMP"), _exact(PATTERN)),
    Case("bmp-rgb", "a.bmp", lambda: _save(Image.fromarray(PATTERN).convert("RGB"), "BMP"), _exact(PATTERN)),
    Case("tiff", "a.tif", lambda: _save(Image.fromarray(PATTERN), "TIFF"), _exact(PATTERN)),
    Case("tiff-16bit", "a.tiff", lambda: _save(Image.fromarray(_ramp16()), "TIFF"), _stretched_ramp),
    Case("tiff-multipage", "a.tiff", _multipage_tiff, _first_page),
    Case("png-named-jpg", "IM-0001-0001.jpeg", lambda: _save(Image.fromarray(PATTERN), "PNG"),
         _exact(PATTERN)),
    Case("jpeg-named-dcm", "scan.dcm", lambda: _save(Image.fromarray(PATTERN), "JPEG", quality=95),
         _close(PATTERN)),
    Case("png-no-extension", "upload", lambda: _save(Image.fromarray(PATTERN), "PNG"), _exact(PATTERN)),
    # DICOM
    Case("dicom-mono2-16bit", "a.dcm", lambda: dicom_file(_ramp16()), _stretched_ramp),
    Case("dicom-mono2-8bit", "a.dcm", lambda: dicom_file(PATTERN),
         _exact(np.rint((PATTERN.astype(float) - 60) * 255 / 160).astype(np.uint8))),  # min..max
    Case("dicom-mono1-inverted", "a.dcm",
         lambda: dicom_file(np.array([[0, 1000], [500, 1000]], np.uint16), photometric="MONOCHROME1"),
         _mono1_check),
    Case("dicom-rescale-and-window", "a.dcm",
         lambda: dicom_file(np.array([[0, 500], [1000, 250]], np.uint16), RescaleSlope=2,
                        RescaleIntercept=-1000, WindowCenter=0, WindowWidth=1000),
         _window_check),
    Case("dicom-window-multivalued", "a.dcm",
         lambda: dicom_file(np.array([[0, 1000], [2000, 4000]], np.uint16), WindowCenter=[1000, 2000],
                        WindowWidth=[1000, 4000]),
         _exact(np.array([[0, 128], [255, 255]], np.uint8))),
    Case("dicom-voi-lut", "a.dcm", _voi_lut_dicom, _exact(np.array([[0, 200], [100, 255]], np.uint8))),
    Case("dicom-signed", "a.dcm",
         lambda: dicom_file(np.array([[-1000, 0], [1000, 1000]], np.int16), signed=True),
         _exact(np.array([[0, 128], [255, 255]], np.uint8))),
    Case("dicom-rgb", "a.dcm", lambda: dicom_file(np.dstack([PATTERN] * 3)), _exact(PATTERN)),
    Case("dicom-multiframe", "a.dcm",
         lambda: dicom_file(np.array([[[0, 10], [0, 10]], [[10, 0], [10, 0]], [[5, 5], [5, 5]]], np.uint16),
                        frames=3),
         _multiframe_check, warns="3 frames"),
    Case("dicom-no-preamble", "a.dcm", lambda: dicom_file(_ramp16(), preamble=False), _stretched_ramp),
    Case("dicom-bare-dataset-no-extension", "image", _bare_dicom, _stretched_ramp),
]

BAD = [
    Case("empty", "a.png", lambda: b"", error=("empty", "export")),
    Case("truncated-png", "a.png", lambda: _truncated(_save(Image.fromarray(
        np.random.default_rng(1).integers(0, 255, (H, W), np.uint8)), "PNG")), error=("truncated", "export")),
    Case("truncated-jpeg", "a.jpeg", lambda: _truncated(_save(Image.fromarray(
        np.random.default_rng(2).integers(0, 255, (H, W), np.uint8)), "JPEG")), error=("truncated", "export")),
    Case("truncated-header", "a.jpeg", lambda: _save(Image.fromarray(PATTERN), "JPEG")[:40],
         error=("JPEG", "truncated", "export")),
    Case("corrupt-png-data", "a.png", _corrupt_png, error=("export",)),
    Case("text-as-png", "a.png", lambda: b"Patient 123: chest X-ray report\nNo acute findings.\n",
         error=("text file", "not an image", "upload")),
    Case("html-as-jpeg", "a.jpeg",
         lambda: b"<!DOCTYPE html>\n<html><head><title>Login</title></head><body></body></html>",
         error=("HTML", "upload")),
    Case("pdf-as-png", "report.png", lambda: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n",
         error=("PDF", "upload")),
    Case("zip-as-jpeg", "images.jpeg", _zip_bytes, error=("zip", "upload")),
    Case("gzip-as-png", "a.png", lambda: gzip.compress(b"x" * 1000), error=("gzip", "upload")),
    Case("svg-as-png", "a.png", lambda: b'<svg xmlns="http://www.w3.org/2000/svg"></svg>',
         error=("SVG", "upload")),
    Case("json-as-jpg", "a.jpg", lambda: b'{"image": "base64..."}', error=("JSON", "upload")),
    Case("heic-as-jpg", "IMG_0001.jpg", lambda: b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00" + b"\x00" * 64,
         error=("HEIC", "upload")),
    Case("random-bytes", "a.jpeg",
         lambda: b"\xfe\xed" + np.random.default_rng(3).integers(0, 256, 4096, np.uint8).tobytes(),
         error=("not an image format", "upload")),
    Case("too-many-pixels", "a.png", lambda: _png_header_only(8000, 8000),
         error=("8000 x 8000", "megapixels", "export")),
    Case("decompression-bomb", "a.png", lambda: _png_header_only(30000, 30000),
         error=("too large", "export")),
    Case("over-byte-limit", "a.png",
         lambda: _save(Image.fromarray(PATTERN), "PNG") + b"\x00" * (imaging.MAX_UPLOAD_BYTES + 1),
         error=("MB", "limit", "smaller")),
    Case("dicom-no-pixel-data", "a.dcm", lambda: dicom_file(None), error=("without pixel data", "export")),
    Case("dicom-compressed-no-decoder", "a.dcm",
         lambda: dicom_file(np.zeros((4, 4), np.uint16), tsyntax=JPEGLSLossless,
                        encapsulated=b"\xff\xd8\xff\xf7" + b"\x00" * 32 + b"\xff\xd9"),
         error=("JPEG-LS",)),
    Case("dicom-truncated", "a.dcm", lambda: _truncated(dicom_file(_ramp16()), 0.7), error=("export",)),
    Case("text-named-dcm", "a.dcm", lambda: b"this is not a DICOM file\n" * 4, error=("text file", "upload")),
    Case("garbage-named-dcm", "a.dcm",
         lambda: b"\xfe\xed" + np.random.default_rng(4).integers(0, 256, 600, np.uint8).tobytes(),
         error=("named as DICOM", "export")),
    Case("dicom-too-many-pixels", "a.dcm",
         lambda: dicom_file(np.zeros((2, 2), np.uint16), Rows=9000, Columns=9000),
         error=("9000 x 9000", "megapixels")),
]

CASES = GOOD + BAD
ACTIONS = ("export", "upload", "install", "try again", "choose", "check")


def test_corpus_is_large_enough():
    assert len(CASES) >= 30 and len(BAD) >= 15
    assert sum(c.filename.endswith(".dcm") for c in CASES) >= 10
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Write every case to a temporary folder once."""
    folder = tmp_path_factory.mktemp("bad_inputs")
    for case in CASES:
        sub = folder / case.name
        sub.mkdir()
        (sub / case.filename).write_bytes(case.make())
    return folder


def _decode(source, filename, case: Case):
    if case.warns:
        with pytest.warns(UserWarning, match=case.warns):
            return imaging.decode(source, filename)
    return imaging.decode(source, filename)


@pytest.mark.parametrize("case", GOOD, ids=lambda c: c.name)
def test_good_input_decodes(case, corpus):
    path = corpus / case.name / case.filename
    img = _decode(path, None, case)
    assert img.dtype == np.uint8 and img.ndim == 2
    case.check(img)
    from_bytes = _decode(path.read_bytes(), case.filename, case)
    np.testing.assert_array_equal(from_bytes, img)


@pytest.mark.parametrize("case", BAD, ids=lambda c: c.name)
def test_bad_input_raises_helpful_error(case, corpus):
    if case.name == "dicom-compressed-no-decoder" and get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed here; the missing-decoder message cannot show")
    path = corpus / case.name / case.filename
    for source, filename in ((path, None), (path.read_bytes(), case.filename)):
        with pytest.raises(ImageDecodeError) as err:
            imaging.decode(source, filename)
        message = str(err.value)
        for phrase in case.error:
            assert phrase.lower() in message.lower(), (phrase, message)
        assert any(a in message.lower() for a in ACTIONS), message
        assert case.filename in message  # says which file
        assert "\n" not in message and len(message) < 400
        assert message.endswith(".")


def test_missing_decoder_message_names_the_package(corpus):
    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    path = corpus / "dicom-compressed-no-decoder" / "a.dcm"
    with pytest.raises(ImageDecodeError, match="pip install pylibjpeg pylibjpeg-libjpeg"):
        imaging.decode(path)


def test_limits_can_be_overridden(corpus):
    path = corpus / "png-gray-8bit" / "a.png"
    with pytest.raises(ImageDecodeError, match="megapixels"):
        imaging.decode(path, max_pixels=100)
    with pytest.raises(ImageDecodeError, match="limit"):
        imaging.decode(path.read_bytes(), "a.png", max_bytes=100)
    assert imaging.decode(path, max_pixels=H * W).shape == (H, W)


def test_upload_limit_matches_streamlit_config():
    import tomllib

    config = Path(__file__).resolve().parents[1] / ".streamlit" / "config.toml"
    with open(config, "rb") as fh:
        assert tomllib.load(fh)["server"]["maxUploadSize"] == imaging.MAX_UPLOAD_MB


def test_paths_that_are_not_files():
    with pytest.raises(ImageDecodeError, match="does not exist"):
        imaging.decode("/nonexistent/x.png")
    with pytest.raises(ImageDecodeError, match="is a folder"):
        imaging.decode(Path(__file__).parent)
