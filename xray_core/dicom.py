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
    """A DICOM's first frame as 2-D uint8 gray: modality LUT, then its VOI LUT or window (else its
    own min..max), MONOCHROME1 inverted; an ImageDecodeError saying what to do otherwise."""
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
        from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder, pixel_array
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
    return _dicom_to_gray(arr, ds, filename, apply_modality_lut, apply_voi_lut)


def _dicom_to_gray(arr, ds, filename, apply_modality_lut, apply_voi_lut) -> np.ndarray:
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples > 1:  # colour DICOM (secondary capture): pydicom returns RGB
        rgb = np.asarray(arr, dtype=np.float64)[..., :3]
        return _to_uint8_range(rgb @ np.array([0.299, 0.587, 0.114]), 0.0, 255.0)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    modality = apply_modality_lut(arr, ds)
    values = np.asarray(modality, dtype=np.float64)

    if "VOILUTSequence" in ds and len(ds.VOILUTSequence) > 0:
        lut_input = modality if modality.dtype.kind in "iu" else np.rint(values).astype(np.int64)
        out = np.asarray(apply_voi_lut(lut_input, ds, index=0, prefer_lut=True), dtype=np.float64)
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        gray = _to_uint8_range(out, 0.0, float(2**bits - 1))
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        function = str(ds.get("VOILUTFunction", "LINEAR")).strip().upper()
        gray = _window(values, center, width, function)
    else:
        gray = stretch(values)
    if photometric == "MONOCHROME1":  # low values are white: invert for display and for the model
        gray = 255 - gray
    return gray


def _first(value) -> float:
    """Window centre/width may be multi-valued; the first pair is the default view."""
    try:
        return float(value[0])
    except TypeError:
        return float(value)


def _window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 windowing to 0..255."""
    if function == "SIGMOID":
        return np.rint(255.0 / (1.0 + np.exp(-4.0 * (values - center) / max(width, 1e-6)))).astype(np.uint8)
    if function == "LINEAR_EXACT":
        lo, hi = center - width / 2, center + width / 2
    else:
        width = max(width, 1.0)
        lo, hi = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    return _to_uint8_range(values, lo, hi)


def _to_uint8_range(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.where(values > lo, 255, 0).astype(np.uint8)
    out = (np.clip(values, lo, hi) - lo) * (255.0 / (hi - lo))
    return np.rint(out).astype(np.uint8)


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
