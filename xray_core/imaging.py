"""Decode one chest radiograph (bytes or a path) to a 2-D uint8 gray image, and size it for a model.

Clinicians upload whatever their systems export, so `decode` accepts PNG, JPEG, BMP, TIFF and
DICOM and turns everything else into an `ImageDecodeError` whose message says what was wrong and
what to do. Uploaded bytes are decoded from memory and never written to disk; nothing here logs
pixel content. Training (`xray_core.data.load_images`) and inference both size images through
`resize`/`to_model_input`, so a model sees the same pixels in both.
"""

from __future__ import annotations

import io
import json
import math
import os
import stat
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from xray_core.pixels import (SUPPORTED, ImageDecodeError, file_label, has_dicm_preamble, stretch,
                              too_many_pixels)

__all__ = [
    "ImageDecodeError",
    "MAX_PIXELS",
    "MAX_UPLOAD_MB",
    "MAX_UPLOAD_BYTES",
    "RESIZE_METHODS",
    "decode",
    "decode_resized",
    "dicom_facts",
    "colour_saturation",
    "resize",
    "to_model_input",
]

#: Largest upload accepted, in MB. Keep equal to `server.maxUploadSize` in .streamlit/config.toml.
MAX_UPLOAD_MB = 50
MAX_UPLOAD_BYTES = MAX_UPLOAD_MB * 1024 * 1024
#: Largest image accepted, in pixels (width x height): a decompression-bomb guard. The largest
#: radiographs (43 x 43 cm detectors at 0.1 mm) are about 18 megapixels.
MAX_PIXELS = 50_000_000

RESIZE_METHODS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "area": Image.Resampling.BOX,
}

def _read_source(data, filename: str | None, max_bytes: int) -> tuple[bytes, str | None]:
    """Return the raw bytes and a display name, refusing missing, empty and oversized input.

    Accepts bytes, a path, or a binary file object such as Streamlit's UploadedFile (read in
    memory; its `.name` names it in messages).
    """
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        filename = filename or path.name
        try:
            st = path.stat()
        except FileNotFoundError:
            raise ImageDecodeError(f"{path} does not exist. Check the path and try again.") from None
        except OSError as exc:
            raise ImageDecodeError(f"{path} cannot be read ({exc.strerror}). Check the path and its "
                                   "permissions and try again.") from None
        if stat.S_ISDIR(st.st_mode):
            raise ImageDecodeError(f"{path} is a folder, not an image file. Choose a single image file.")
        if st.st_size > max_bytes:
            raise _too_many_bytes(filename, st.st_size, max_bytes)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ImageDecodeError(f"{path} cannot be read ({exc.strerror}). Check its permissions "
                                   "and try again.") from None
    elif isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
    elif hasattr(data, "read"):
        filename = filename or (os.path.basename(str(getattr(data, "name", "") or "")) or None)
        if hasattr(data, "seek"):
            data.seek(0)
        raw = data.read(max_bytes + 1)  # never more than the limit in memory
        if not isinstance(raw, (bytes, bytearray)):
            raise TypeError("decode() needs a file opened in binary mode")
        raw = bytes(raw)
    else:
        raise TypeError(f"decode() takes bytes, a path or a binary file, not {type(data).__name__}")
    if len(raw) == 0:
        raise ImageDecodeError(f"{file_label(filename)} is empty (0 bytes): the upload or export did "
                               "not complete. Export the image again and upload the new file.")
    if len(raw) > max_bytes:
        raise _too_many_bytes(filename, len(raw), max_bytes)
    return raw, filename


def _too_many_bytes(filename: str | None, size: int, max_bytes: int) -> ImageDecodeError:
    megabytes = math.ceil(size / 1024 / 1024 * 10) / 10  # never shows "50.0 MB, over 50 MB"
    return ImageDecodeError(
        f"{file_label(filename)} is {megabytes:.1f} MB, over the {max_bytes / 1024 / 1024:g} MB "
        "limit. Export a smaller version (for example a PNG or JPEG of the image) and try again.")


_SIGNATURE_FORMATS = {b"\x89PNG": "PNG", b"\xff\xd8\xff": "JPEG", b"BM": "BMP", b"II*\x00": "TIFF",
                      b"MM\x00*": "TIFF", b"GIF8": "GIF", b"RIFF": "WebP"}
_IMAGE_SIGNATURES = tuple(_SIGNATURE_FORMATS)


def _signature_format(raw: bytes) -> str | None:
    return next((fmt for sig, fmt in _SIGNATURE_FORMATS.items() if raw.startswith(sig)), None)


def is_dicom(raw: bytes) -> bool:
    """By content: the DICM preamble, or (preamble-less files) a leading group 0002 or 0008 tag."""
    if has_dicm_preamble(raw):
        return True
    if raw.startswith(_IMAGE_SIGNATURES):
        return False
    return raw[:2] in (b"\x02\x00", b"\x08\x00")


def _is_json(raw: bytes) -> bool:
    """True when the bytes parse as JSON (UnicodeDecodeError is a ValueError too)."""
    try:
        json.loads(raw)
    except ValueError:
        return False
    return True


def _describe_non_image(raw: bytes) -> str | None:
    """Name what a non-image upload really is, for the error message."""
    head = raw[:1024].lstrip()
    low = head.lower()
    if raw.startswith(b"%PDF"):
        return "a PDF document"
    if raw[4:8] == b"ftyp" and raw[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"hevc", b"avif"):
        return "an HEIC/HEIF or AVIF photo (a phone camera format), which this app cannot read"
    if raw[4:8] == b"ftyp":
        return "a video or MP4-family file"
    if raw.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "a zip archive (or an Office document)"
    if raw.startswith((b"\x1f\x8b",)):
        return "a gzip archive"
    if raw.startswith(b"Rar!") or raw.startswith(b"7z\xbc\xaf"):
        return "a compressed archive"
    if low.startswith((b"<!doctype html", b"<html")) or b"<html" in low[:200]:
        return "an HTML web page (perhaps a login or error page saved instead of the image)"
    if low.startswith(b"<svg") or (low.startswith(b"<?xml") and b"<svg" in low):
        return "an SVG drawing"
    if low.startswith((b"<?xml", b"<")):
        return "an XML or markup text file"
    if low.startswith((b"{", b"[")) and len(raw) < 1_000_000 and _is_json(raw):
        return "a JSON text file"
    sample = raw[:4096]
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError:
        return None
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    if printable >= 0.95 * max(len(text), 1):
        return "a text file"
    return None


def read_bytes(data: bytes | str | os.PathLike | BinaryIO, filename: str | None = None, *,
               max_bytes: int = MAX_UPLOAD_BYTES) -> bytes:
    """The bytes of a path, bytes or binary file, with decode()'s refusals of missing, empty and
    oversized input (ImageDecodeError)."""
    return _read_source(data, filename, max_bytes)[0]


def decode(data: bytes | str | os.PathLike | BinaryIO, filename: str | None = None, *, max_pixels: int = MAX_PIXELS,
           max_bytes: int = MAX_UPLOAD_BYTES) -> np.ndarray:
    """Decode an image to a 2-D uint8 gray array, as a viewer shows it.

    The format is recognised by content, not by the file name (a PNG named .jpg decodes).
    EXIF orientation is applied, colour is
    converted to gray (ITU-R 601 luma), transparency is composited on black and images of more than
    8 bits (16-bit PNG/TIFF, DICOM) are scaled to 0..255: DICOMs through their modality LUT or
    rescale and their VOI LUT or window (else their own minimum..maximum), shown white-on-black
    (MONOCHROME1 or a Presentation LUT Shape of INVERSE inverted; see `dicom.to_gray`), others over
    their own minimum..maximum.

    Parameters
    ----------
    data : bytes, str, os.PathLike or binary file
        The file (an upload is read in memory and never written to disk).
    filename : str, optional
        Names the file in error messages only.
    max_pixels, max_bytes : int
        Refuse larger images (a decompression-bomb guard) and larger files.

    Returns
    -------
    ndarray of shape (height, width), uint8

    Raises
    ------
    ImageDecodeError
        For anything that is not a readable image within `max_bytes` and `max_pixels`.
    """
    raw, filename = _read_source(data, filename, max_bytes)
    if is_dicom(raw):
        from xray_core import dicom

        return dicom.to_gray(raw, filename, max_pixels)
    return _decode_pillow(raw, filename, max_pixels)


def decode_resized(data: bytes | str | os.PathLike | BinaryIO, size, *, method: str = "bilinear",
                   filename: str | None = None, max_pixels: int = MAX_PIXELS,
                   max_bytes: int = MAX_UPLOAD_BYTES) -> np.ndarray:
    """`resize(decode(data), size, method)`, faster: what the dataset loader runs per file.

    A JPEG decodes at the smallest DCT scale (1/2, 1/4, 1/8) still at least as large as the
    target (Pillow's draft mode), and the resize happens before any NumPy copy. The draft makes
    JPEG pixels differ from the full decode by a gray level or so on average; inference that
    wants the training pixels exactly can call this too.

    Returns
    -------
    ndarray of shape `size` (height, width), uint8

    Raises
    ------
    ImageDecodeError
        As `decode`; ValueError for a size or method it does not know.
    """
    h, w = check_size(size)
    check_method(method)
    raw, filename = _read_source(data, filename, max_bytes)
    if is_dicom(raw):
        from xray_core import dicom

        return resize(dicom.to_gray(raw, filename, max_pixels), (h, w), method)
    return _decode_pillow(raw, filename, max_pixels, target=((h, w), method))


# --------------------------------------------------------------------------------------- Pillow


def _decode_pillow(raw: bytes, filename: str | None, max_pixels: int,
                   target: tuple[tuple[int, int], str] | None = None) -> np.ndarray:
    try:
        im = Image.open(io.BytesIO(raw))
    except Image.DecompressionBombError:
        raise ImageDecodeError(
            f"{file_label(filename)} declares an image too large to decode safely. Export the image "
            "at its native or a reduced resolution and try again.") from None
    except UnidentifiedImageError:
        fmt = _signature_format(raw)
        if fmt:
            raise ImageDecodeError(f"{file_label(filename)} starts like a {fmt} image but its header is "
                                   "truncated or damaged. The download or export was probably "
                                   "interrupted: export the image again and upload the new "
                                   "file.") from None
        kind = _describe_non_image(raw)
        if kind:
            raise ImageDecodeError(f"{file_label(filename)} is {kind}, not an image. Upload the X-ray "
                                   f"itself as {SUPPORTED}.") from None
        if (filename or "").lower().endswith((".dcm", ".dicom")):
            raise ImageDecodeError(f"{file_label(filename)} is named as DICOM but has no DICOM header (it "
                                   "is damaged or in another format). Export the image again, or as PNG "
                                   "or JPEG, and upload that.") from None
        raise ImageDecodeError(f"{file_label(filename)} is not an image format this app can read (or it "
                               f"is damaged). Upload the X-ray as {SUPPORTED}.") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise _damaged(filename, exc) from None
    with im:
        width, height = im.size
        if width * height > max_pixels:
            raise too_many_pixels(filename, width, height, max_pixels)
        if width == 0 or height == 0:
            raise ImageDecodeError(f"{file_label(filename)} has no pixels (size {width} x {height}). "
                                   "Export the image again and upload the new file.")
        try:
            im.seek(0)  # first page or frame of a multi-page TIFF or animated image
            if target is not None and im.format == "JPEG" and im.mode in ("L", "RGB"):
                side = max(target[0])  # square: EXIF rotation may swap the axes
                im.draft("L", (side, side))
            im.load()
            im = ImageOps.exif_transpose(im)
            gray = _pillow_to_gray(im)
            if target is not None:
                (h, w), method = target
                if gray.size != (w, h):
                    gray = gray.resize((w, h), RESIZE_METHODS[method])
            return np.asarray(gray, dtype=np.uint8).copy()
        except Image.DecompressionBombError:
            raise too_many_pixels(filename, width, height, max_pixels) from None
        except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
            raise _damaged(filename, exc) from None


def _damaged(filename: str | None, exc: BaseException) -> ImageDecodeError:
    text = str(exc).lower()
    if "truncated" in text or isinstance(exc, EOFError) or "premature" in text:
        what = "is truncated (the file ends before the image does)"
    else:
        what = "is damaged: its image data is corrupted or incomplete"
    return ImageDecodeError(f"{file_label(filename)} {what}. The download or export was probably "
                            "interrupted: export the image again and upload the new file.")


def _pillow_to_gray(im: Image.Image) -> Image.Image:
    """Any Pillow mode to an 8-bit "L" image."""
    mode = im.mode
    if mode == "L":
        return im
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return Image.fromarray(stretch(np.asarray(im)))
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode == "PA":
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        im = Image.alpha_composite(background, rgba).convert("RGB")
        mode = "RGB"
    if mode in ("CMYK", "YCbCr", "LAB", "HSV", "1", "RGBX"):
        im = im.convert("RGB")
    return im.convert("L")


# ----------------------------------------------------------------------------------- model input


def check_size(size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be (height, width) or an int, got {size!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return h, w


def check_method(method: str) -> None:
    if method not in RESIZE_METHODS:
        raise ValueError(f"method must be one of {sorted(RESIZE_METHODS)}, got {method!r}")


def resize(img: np.ndarray, size, method: str = "bilinear") -> np.ndarray:
    """Squash a 2-D uint8 image to `size` with Pillow, ignoring the aspect ratio.

    The original study and the 224 px dataset copy both squash, so the models expect squashed
    anatomy.

    Parameters
    ----------
    img : ndarray of shape (h0, w0), uint8
    size : int or (height, width)
    method : str
        A key of RESIZE_METHODS ("nearest", "bilinear", "bicubic", ...).

    Returns
    -------
    ndarray of shape (height, width), uint8
    """
    h, w = check_size(size)
    check_method(method)
    img = np.asarray(img)
    if img.ndim != 2:
        raise ValueError(f"resize() takes a 2-D gray image, got shape {img.shape}")
    if img.dtype != np.uint8:
        raise ValueError(f"resize() takes a uint8 image, got {img.dtype}")
    if img.shape == (h, w):
        return img.copy()
    return np.asarray(Image.fromarray(img).resize((w, h), RESIZE_METHODS[method]), dtype=np.uint8)


def to_model_input(img: np.ndarray, size, *, channels: int = 1, method: str = "bilinear") -> np.ndarray:
    """A decoded gray image as a model's input: float32 of shape (height, width, channels) in
    0..255 (the networks rescale inside themselves; 3 channels are copies of the gray)."""
    return with_channels(resize(img, size, method), channels)


def with_channels(gray: np.ndarray, channels: int = 1) -> np.ndarray:
    """uint8 gray (..., h, w) at a model's size -> float32 (..., h, w, channels) 0..255: one image
    or a stack of them, the channels copies of the gray."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    x = np.asarray(gray).astype(np.float32)[..., None]
    return np.repeat(x, channels, axis=-1) if channels == 3 else x



# ------------------------------------------------------------------------ facts decode() drops

def dicom_facts(data: bytes | str | os.PathLike | BinaryIO, filename: str | None = None, *,
                max_bytes: int = MAX_UPLOAD_BYTES) -> dict | None:
    """The acquisition facts of a DICOM (`dicom.FACT_TAGS` only, no patient data), None for other files.

    Values are plain str/float/int/list; a missing attribute is None.
    """
    raw, filename = _read_source(data, filename, max_bytes)
    if not is_dicom(raw):
        return None
    from xray_core import dicom

    return dicom.facts(raw, filename)


def colour_saturation(data: bytes | str | os.PathLike | BinaryIO, filename: str | None = None, *,
                      max_bytes: int = MAX_UPLOAD_BYTES, side: int = 128) -> float:
    """Share of pixels with visible colour (chroma > 0.12), in 0..1, from a small RGB copy (at most
    `side` pixels a side; a JPEG decoded at a reduced DCT scale).

    `decode` returns gray, so a colour photograph looks like any gray image afterwards: this is
    the check to run before that conversion. Gray modes and DICOM (monochrome) give 0.0;
    colour DICOMs (secondary captures) are measured too.
    """
    raw, filename = _read_source(data, filename, max_bytes)
    if is_dicom(raw):
        from xray_core import dicom

        rgb = dicom.first_frame_rgb(raw)
        if rgb is None:
            return 0.0
    else:
        try:
            im = Image.open(io.BytesIO(raw))
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError):
            raise ImageDecodeError(f"{file_label(filename)} is not an image format this app can read "
                                   f"(or it is damaged). Upload the X-ray as {SUPPORTED}.") from None
        with im:
            if im.mode in ("1", "L", "LA", "I", "F") or im.mode.startswith("I;"):
                return 0.0
            try:
                if im.format == "JPEG":
                    # the smallest DCT scale with a side of at least side / 2: a 224 px film decodes
                    # at 112 px and needs no resampling, which would cost more than the decode itself
                    im.draft("RGB", (side // 2, side // 2))
                im.load()
                small = im.convert("RGB")
                small.thumbnail((side, side))
            except (OSError, SyntaxError, ValueError, EOFError) as exc:
                raise _damaged(filename, exc) from None
            rgb = np.asarray(small)
    return _coloured_share(rgb)


#: Chroma (max - min of R, G, B, in 0..255) above which a pixel counts as coloured: > 0.12 * 255.
_CHROMA_MIN = 0.12 * 255.0


def _coloured_share(rgb: np.ndarray) -> float:
    """Share of pixels whose chroma exceeds 0.12 of full scale. For 8-bit pixels the channels are
    compared as uint8 (a max and a min over three slices, far cheaper than reducing a float copy
    over its last axis), which is exact, since an integer chroma c exceeds 30.6 when c >= 31."""
    rgb = np.asarray(rgb)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    chroma = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)
    if rgb.dtype != np.uint8:
        chroma = chroma.astype(np.float64)
    return float(np.count_nonzero(chroma > _CHROMA_MIN) / max(chroma.size, 1))
