"""What `imaging` and `dicom` both need: the decode error and the sentences it carries, the DICM
preamble test, and the scaling of high-bit-depth pixels to 0..255.

A leaf (it imports nothing from the package), so that `dicom` does not import `imaging`:
`imaging` imports `dicom` when a DICOM arrives, and both import this.
"""

from __future__ import annotations

import numpy as np

#: The formats an upload may be in, for the sentences that ask for another file.
SUPPORTED = "PNG, JPEG, BMP, TIFF or DICOM"


class ImageDecodeError(ValueError):
    """An upload or file that cannot be turned into a gray image; the message says why and what to do."""


def file_label(filename: str | None) -> str:
    """How a sentence names the file: its quoted name, or "The file" when it has none."""
    return f"'{filename}'" if filename else "The file"


def too_many_pixels(filename: str | None, width: int, height: int, max_pixels: int) -> ImageDecodeError:
    """The error for an image over the pixel limit (a decompression-bomb guard)."""
    return ImageDecodeError(
        f"{file_label(filename)} is {width} x {height} pixels ({width * height / 1e6:.3g} megapixels), "
        f"over the limit of {max_pixels / 1e6:.3g} megapixels. Radiographs are smaller than this: export "
        "the image at its native or a reduced resolution and try again.")


def has_dicm_preamble(raw: bytes) -> bool:
    """Whether the file has DICOM's 128-byte preamble and "DICM" (a Part 10 file)."""
    return len(raw) >= 132 and raw[128:132] == b"DICM"


def stretch(arr: np.ndarray) -> np.ndarray:
    """Scale a high-bit-depth image over its own min..max to uint8 (a viewer's default window).

    Colour (a last axis of 3 or more) is reduced to ITU-R 601 luma first; NaN and infinite values
    are left out of the range and come out 0.
    """
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim == 3:
        arr = arr[..., :3] @ np.array([0.299, 0.587, 0.114]) if arr.shape[-1] >= 3 else arr[..., 0]
    finite = np.isfinite(arr)
    if not finite.all():
        arr = np.where(finite, arr, np.nan)
    lo, hi = np.nanmin(arr), np.nanmax(arr)
    if not np.isfinite(lo) or hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    out = (arr - lo) * (255.0 / (hi - lo))
    return np.nan_to_num(np.rint(out), nan=0.0).astype(np.uint8)
