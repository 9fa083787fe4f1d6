"""DICOM for `imaging`: a film's pixels as gray, its colour for the gate, and the acquisition facts
shown beside a verdict. Imported only when a DICOM arrives (pydicom is imported here, not at start-up).

Patient name, id and birth date are never read out of a file.
"""

from __future__ import annotations

import io
import warnings

import numpy as np

from xray_core.pixels import (SUPPORTED, ImageDecodeError, file_label, has_dicm_preamble, stretch,
                              too_many_pixels)

# What to pip install so that pydicom can decode a compressed transfer syntax (by UID prefix):
# (the usual choice, the alternatives).
_DECODER_PACKAGES = {
    "1.2.840.10008.1.2.4.5": ("pylibjpeg pylibjpeg-libjpeg", "python-gdcm"),  # JPEG baseline/extended
    "1.2.840.10008.1.2.4.7": ("pylibjpeg pylibjpeg-libjpeg", "python-gdcm"),  # JPEG lossless
    "1.2.840.10008.1.2.4.8": ("pylibjpeg pylibjpeg-libjpeg", "python-gdcm or pyjpegls"),  # JPEG-LS
    "1.2.840.10008.1.2.4.9": ("pylibjpeg pylibjpeg-openjpeg", "python-gdcm"),  # JPEG 2000
    "1.2.840.10008.1.2.4.2": ("pylibjpeg pylibjpeg-openjpeg", "python-gdcm"),  # HTJ2K
    "1.2.840.10008.1.2.5": ("pylibjpeg pylibjpeg-rle", "python-gdcm"),  # RLE
}


def to_gray(raw: bytes, filename: str | None, max_pixels: int) -> np.ndarray:
    """A DICOM's first frame as 2-D uint8 gray, as a viewer shows it; an ImageDecodeError saying
    what to do when it cannot be read.

    Grayscale frames go through pydicom's `apply_modality_lut` (Rescale Slope and Intercept, or a
    Modality LUT Sequence) and `apply_voi_lut` (the VOI LUT Sequence if there is one, else Window
    Center and Width with its VOI LUT Function; the first view of several), whose output range is
    then scaled to 0..255; a frame with neither, or with one pydicom refuses (a warning says so),
    is scaled over its own minimum..maximum. Then the polarity: see `_inverted`. Colour secondary
    captures become ITU-R 601 luma.
    """
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
        from pydicom.pixels import get_decoder, pixel_array
    except ImportError:  # pragma: no cover - pydicom is a pinned requirement
        raise ImageDecodeError(f"{file_label(filename)} is a DICOM file, and reading DICOM needs the "
                               "pydicom package: run `pip install pydicom` and try again.") from None

    has_preamble = has_dicm_preamble(raw)
    try:
        ds = pydicom.dcmread(io.BytesIO(raw), force=not has_preamble)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError):
        raise ImageDecodeError(f"{file_label(filename)} looks like DICOM but cannot be read; it may be "
                               "truncated or not DICOM at all. "
                               "Export the image again, or as PNG or JPEG, and upload that.") from None
    if not has_preamble and "PixelData" not in ds and len(ds) == 0:
        raise ImageDecodeError(f"{file_label(filename)} is not a DICOM file or an image. Upload the "
                               f"X-ray as {SUPPORTED}.")
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageDecodeError(f"{file_label(filename)} is a DICOM file without pixel data (perhaps a "
                               "structured report or a presentation state). Export the image series "
                               "itself and upload that.")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows * cols > max_pixels:
        raise too_many_pixels(filename, cols, rows, max_pixels)
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        ds.file_meta = getattr(ds, "file_meta", pydicom.dataset.FileMetaDataset())
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    tsyntax = ds.file_meta.TransferSyntaxUID
    if tsyntax.is_compressed:
        try:
            decoder = get_decoder(tsyntax)
        except NotImplementedError:
            decoder = None
        if decoder is None or not decoder.is_available:
            usual, other = next((p for prefix, p in _DECODER_PACKAGES.items()
                                 if str(tsyntax).startswith(prefix)), ("pylibjpeg", "python-gdcm"))
            raise ImageDecodeError(
                f"{file_label(filename)} is a DICOM compressed as {tsyntax.name} ({tsyntax}), and no "
                f"decoder for it is installed. Install one with `pip install {usual}` ({other} also works) "
                "and try again, or export the image uncompressed or as PNG.")

    try:
        n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        raise ImageDecodeError(f"{file_label(filename)} is a DICOM whose number of frames "
                               f"({ds.get('NumberOfFrames')!s}) is not a number, so its pixel data cannot "
                               "be read safely. Export the image again, or as PNG, and upload that.") from None
    try:
        arr = pixel_array(ds, index=0) if n_frames > 1 else ds.pixel_array
    except (RuntimeError, NotImplementedError) as exc:
        raise ImageDecodeError(f"{file_label(filename)} is a DICOM whose pixel data cannot be decoded "
                               f"({exc}). Export the image uncompressed or as PNG and try "
                               "again.") from None
    except (ValueError, EOFError, OSError, AttributeError, KeyError, TypeError):
        raise ImageDecodeError(f"{file_label(filename)} is a DICOM whose pixel data is incomplete or "
                               "inconsistent with its header; the file may be truncated. Export the image "
                               "again and upload the new file.") from None
    if n_frames > 1:
        warnings.warn(f"{file_label(filename)} holds {n_frames} frames; only the first is used.",
                      UserWarning, stacklevel=3)
    return _frame_to_gray(arr, ds, filename)


def _frame_to_gray(arr: np.ndarray, ds, filename: str | None) -> np.ndarray:
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1:  # colour (secondary capture): pydicom gives RGB
        rgb = np.asarray(arr, dtype=np.float64)[..., :3]
        return _to_uint8(rgb @ np.array([0.299, 0.587, 0.114]), 0.0, 255.0)
    from pydicom.pixels import apply_modality_lut

    gray = _voi_to_uint8(apply_modality_lut(arr, ds), ds, filename)
    return 255 - gray if _inverted(ds) else gray


def _voi_to_uint8(values: np.ndarray, ds, filename: str | None) -> np.ndarray:
    """pydicom's VOI LUT or window, its output range scaled to 0..255; else min..max."""
    from pydicom.pixels import apply_voi_lut

    kind = _voi_kind(ds)
    if kind is None:
        return stretch(values)
    try:
        if kind == "lut":  # a LUT is indexed by integers (pydicom warns on floats)
            if values.dtype.kind not in "iu":
                values = np.rint(values).astype(np.int64)
            out = apply_voi_lut(values, ds, prefer_lut=True)
            lo, hi = 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
        else:
            out = apply_voi_lut(values, ds, prefer_lut=True)
            # pydicom windows into the modality output's range (y_min..y_max of PS3.3 C.11.2.1.2),
            # which it sends everything below and above the window to: its image of -inf and +inf
            lo, hi = apply_voi_lut(np.array([-np.inf, np.inf]), ds, prefer_lut=True)
    except (ValueError, NotImplementedError) as exc:  # a window width < 1, an unknown function, ...
        warnings.warn(f"{file_label(filename)}: its {'VOI LUT' if kind == 'lut' else 'window'} cannot "
                      f"be applied ({exc}), so the film is shown over its own minimum..maximum.",
                      UserWarning, stacklevel=5)
        return stretch(values)
    return _to_uint8(out, lo, hi)


def _voi_kind(ds) -> str | None:
    """What `apply_voi_lut(prefer_lut=True)` applies: "lut", "window" or None (nothing). The same
    test as pydicom's: a LUT needs its descriptor and data, a window its centre and width."""
    items = ds.get("VOILUTSequence")
    if items and items[0].get("LUTDescriptor") is not None and items[0].get("LUTData") is not None:
        return "lut"
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        return "window"
    return None


def _inverted(ds) -> bool:
    """Whether the film is shown inverted, its lowest value white.

    PS3.3 C.7.6.3.1.2: a MONOCHROME1 film is meant to be shown with its minimum white, after the
    VOI stage. An image's Presentation LUT Shape (General Image Module, C.7.6.1) says the same thing
    again: IDENTITY "shall be used" with MONOCHROME2 (and colour), INVERSE with MONOCHROME1,
    INVERSE meaning "P-Value = maximum value - output value" (C.11.6.1.2). So the two name one
    inversion: a MONOCHROME1 film with INVERSE is inverted once, not twice. INVERSE on a
    MONOCHROME2 film (outside that pairing) still asks for inverted display and gets it; IDENTITY
    does not undo MONOCHROME1, since the photometric interpretation (type 1) is what describes the
    stored pixels. Colour images are never inverted.

    The inversion is 255 - gray, about the top of the output range as C.11.6.1.2 has it; pydicom's
    `apply_presentation_lut` inverts about the frame's own maximum instead, so it is not used.
    """
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    shape = str(ds.get("PresentationLUTShape", "IDENTITY") or "IDENTITY").strip().upper()
    return photometric == "MONOCHROME1" or shape == "INVERSE"


def _to_uint8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map lo..hi to 0..255 (hi may be below lo: a negative slope), clipped and rounded; NaN is 0."""
    if hi == lo:
        return np.where(np.asarray(values) > lo, 255, 0).astype(np.uint8)
    out = np.clip((np.asarray(values, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0) * 255.0
    return np.nan_to_num(np.rint(out), nan=0.0).astype(np.uint8)


#: DICOM attributes shown beside a verdict. Patient name, id and birth date are never read out.
FACT_TAGS = ("Modality", "BodyPartExamined", "ViewPosition", "PhotometricInterpretation",
             "PixelSpacing", "ImagerPixelSpacing", "Rows", "Columns")


def facts(raw: bytes, filename: str | None = None) -> dict:
    """The FACT_TAGS of a DICOM's header (pixels not read), as plain str/float/int/list; a missing
    attribute is None."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    has_preamble = has_dicm_preamble(raw)
    try:
        ds = pydicom.dcmread(io.BytesIO(raw), force=not has_preamble, stop_before_pixels=True,
                             specific_tags=list(FACT_TAGS))
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError):
        raise ImageDecodeError(f"{file_label(filename)} looks like DICOM but its header cannot be read. "
                               "Export the image again, or as PNG or JPEG, and upload that.") from None
    out: dict = {}
    for tag in FACT_TAGS:
        value = ds.get(tag)
        if value is None or value == "":
            out[tag] = None
        elif tag in ("PixelSpacing", "ImagerPixelSpacing"):
            out[tag] = [float(v) for v in (value if hasattr(value, "__len__") else [value])]
        elif tag in ("Rows", "Columns"):
            out[tag] = int(value) if str(value).isdigit() else None
        else:
            out[tag] = str(value).strip().upper()
    return out


def first_frame_rgb(raw: bytes) -> np.ndarray | None:
    """A colour DICOM's first frame as RGB (subsampled, its own dtype), None for a monochrome one."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(raw), force=True)
    if str(ds.get("SamplesPerPixel", 1)).strip() in ("", "1"):
        return None
    try:
        arr = np.asarray(ds.pixel_array)
    except (RuntimeError, NotImplementedError, ValueError, EOFError, OSError, AttributeError,
            KeyError, TypeError):
        return None  # decode() gives the sentence for pixel data it cannot read
    if arr.ndim == 4:
        arr = arr[0]
    step = max(1, max(arr.shape[:2]) // 128)
    return arr[::step, ::step, :3]
