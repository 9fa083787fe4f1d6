"""Is this a frontal chest X-ray this model can read? The input gate run before any verdict.

Two kinds of evidence, both computed from the image the model would see:

* simple checks with a sentence each: colour (measured on the file before the gray
  conversion, `imaging.colour_saturation`), size, aspect ratio, a flat or nearly constant
  image, an intensity histogram unlike any training film, a film that looks inverted
  (negative) or turned on its side / upside down (correlation of a 32 px thumbnail with the
  mean training film, turned four ways);
* a learned distance from the training films: a Mahalanobis distance on the model's
  penultimate features (`Model.forward`'s features) and one on the thumbnail's principal components.
  Each is divided by its threshold, chosen on the run's validation films, so `ood_score`
  above 1 means "further out than the validation films the threshold allows".

`gate_fit` learns the gate from the run's training films only; its thresholds come from the
validation films. The fitted parameters live in the run folder: gate.npz (arrays), gate.json
(thresholds and fit figures) and seen_hashes.txt (sha256 of the training and validation files,
to say when an upload is one of them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

GATE_ARRAYS = "gate.npz"
GATE_JSON = "gate.json"
SEEN_HASHES = "seen_hashes.txt"
GATE_VERSION = 1

THUMB = 32  # side of the thumbnail the pixel checks use
PIXEL_COMPONENTS = 48  # principal components of the thumbnail distance
MIN_SIDE = 96  # px: smaller images carry too little detail (the training films are 224 px)
MAX_ASPECT = 2.6  # long side / short side; chest films here are 0.9..2.1 (width / height)
MIN_STD = 6.0  # gray levels: below this the image is (nearly) flat
MAX_COLOURED = 0.02  # share of visibly coloured pixels a radiograph may have (annotations)
VAL_QUANTILE = 0.995  # the learned thresholds sit at this quantile of the validation films
MARGIN = 1.15  # and this factor above it: new patients sit a little further out than validation


class GateError(ValueError):
    """The gate cannot be fitted or loaded with what it was given."""


@dataclasses.dataclass
class GateResult:
    """The gate's answer for one image."""

    in_distribution: bool
    ood_score: float | None  # max of the learned distances / their thresholds; None when not fitted
    warnings: list[str]
    checks: dict  # every measured figure, for reports and debugging

    def to_dict(self) -> dict:
        return {"in_distribution": bool(self.in_distribution),
                "ood_score": None if self.ood_score is None else float(self.ood_score),
                "warnings": list(self.warnings), "checks": dict(self.checks)}


@dataclasses.dataclass
class FittedGate:
    """What fit_gate learns (arrays in gate.npz, numbers in gate.json)."""

    template: np.ndarray  # (THUMB*THUMB,) mean standardised thumbnail of the training films
    pix_mean: np.ndarray  # (T,) mean thumbnail
    pix_components: np.ndarray  # (k, T) principal axes
    pix_var: np.ndarray  # (k,) variance along each axis
    pix_residual_var: float  # mean residual variance per pixel outside the k axes
    feat_mean: np.ndarray  # (d,)
    feat_precision: np.ndarray  # (d, d) inverse of the shrunk covariance
    hist_low: np.ndarray  # (s,) lower bound of each intensity statistic (training films)
    hist_high: np.ndarray  # (s,) upper bound
    thresholds: dict  # feature, pixel, orientation
    info: dict  # what the fit saw and how it did

    def save(self, folder: str | os.PathLike) -> None:
        from xray_core import fileio

        folder = Path(folder)
        arrays = {k: getattr(self, k) for k in ("template", "pix_mean", "pix_components", "pix_var",
                                                  "feat_mean", "feat_precision", "hist_low", "hist_high")}
        import io

        buf = io.BytesIO()
        np.savez_compressed(buf, **{k: np.asarray(v, np.float32) for k, v in arrays.items()})
        fileio.atomic_write_bytes(folder / GATE_ARRAYS, buf.getvalue())
        fileio.atomic_write_json(folder / GATE_JSON, {
            "version": GATE_VERSION, "thumb": THUMB, "pix_residual_var": float(self.pix_residual_var),
            "thresholds": self.thresholds, "info": self.info,
        })


def load_gate(folder: str | os.PathLike) -> FittedGate | None:
    """The gate fitted for a run folder, or None when it has none (fit it with `fit-gate`)."""
    from xray_core import fileio

    folder = Path(folder)
    if not (folder / GATE_ARRAYS).is_file() or not (folder / GATE_JSON).is_file():
        return None
    meta = fileio.read_json(folder / GATE_JSON)
    if not isinstance(meta, dict) or meta.get("version") != GATE_VERSION:
        raise GateError(f"{folder / GATE_JSON} is not a gate of version {GATE_VERSION}; refit it with "
                        f"`python -m xray_core fit-gate {folder.name} --data DATASET`.")
    arrays = _by_content((folder / GATE_ARRAYS).read_bytes(), _gate_arrays)
    return FittedGate(pix_residual_var=float(meta["pix_residual_var"]), thresholds=meta["thresholds"],
                      info=meta.get("info", {}), **arrays)


_PARSED: "OrderedDict[tuple, Any]" = OrderedDict()  # parsed run files by their content, newest last
_PARSED_KEPT = 16
_PARSED_LOCK = threading.Lock()


def _by_content(raw: bytes, parse):
    """parse(raw), remembered by the bytes' hash: every verdict re-reads a run's gate.npz and
    seen_hashes.txt, which is cheap, but parses them once, since parsing is not; keyed by content
    rather than mtime, so a file rewritten in place is parsed anew however quickly it changed."""
    key = (parse.__name__, hashlib.blake2b(raw, digest_size=16).digest())
    with _PARSED_LOCK:
        if key in _PARSED:
            _PARSED.move_to_end(key)
            return _PARSED[key]
    value = parse(raw)
    with _PARSED_LOCK:
        _PARSED[key] = value
        while len(_PARSED) > _PARSED_KEPT:
            _PARSED.popitem(last=False)
    return value


def _gate_arrays(raw: bytes) -> dict[str, np.ndarray]:
    """gate.npz's arrays as float64, read-only (one parsed copy is shared by every caller)."""
    import io

    with np.load(io.BytesIO(raw)) as z:
        arrays = {k: z[k].astype(np.float64) for k in z.files}
    for a in arrays.values():
        a.setflags(write=False)
    return arrays


# ----------------------------------------------------------------------------- measurements


def thumbnails(x: np.ndarray) -> np.ndarray:
    """Prepared model inputs (n, h, w, c) 0..255 -> (n, THUMB*THUMB) standardised thumbnails."""
    from PIL import Image

    x = np.asarray(x, np.float32)
    if x.ndim == 3:
        x = x[None]
    n, h, w = x.shape[:3]
    if h % THUMB == 0 and w % THUMB == 0:  # Pillow's box filter on whole blocks is their mean
        rows = x[..., 0].reshape(n, THUMB, h // THUMB, w).sum(axis=2, dtype=np.float64)
        boxes = (rows.reshape(n, THUMB, THUMB, w // THUMB).sum(axis=3) / (h * w // THUMB**2)).astype(np.float32)
    else:
        boxes = np.stack([np.asarray(Image.fromarray(img[..., 0], mode="F").resize((THUMB, THUMB), Image.BOX))
                          for img in x])
    small = boxes.reshape(n, -1).astype(np.float64)
    return (small - small.mean(1, keepdims=True)) / np.maximum(small.std(1, keepdims=True), 1.0)


def intensity_stats(x: np.ndarray) -> np.ndarray:
    """(n, 6): mean, std, 5th/50th/95th percentile, share of pure black or white, per model input."""
    x = np.asarray(x, np.float32)
    if x.ndim == 3:
        x = x[None]
    flat = x[..., 0].reshape(len(x), -1)
    levels = flat.astype(np.uint8)
    if flat.shape[1] and np.array_equal(levels, flat):  # whole gray levels: read it off histograms
        counts = np.stack([np.bincount(row, minlength=256) for row in levels])
        pct = _level_percentiles(np.cumsum(counts, axis=1), (5, 50, 95))
        extremes = (counts[:, :3].sum(1) + counts[:, 253:].sum(1)) / flat.shape[1]
    else:
        pct = np.percentile(flat, [5, 50, 95], axis=1).T
        extremes = np.mean((flat <= 2) | (flat >= 253), axis=1)
    return np.column_stack([flat.mean(1), flat.std(1), pct, extremes]).astype(np.float64)


def _level_percentiles(cumulative: np.ndarray, q: Sequence[float]) -> np.ndarray:
    """(n, len(q)) percentiles of images of whole gray levels 0..255 from their cumulative
    histograms (n, 256): the same order statistics and linear interpolation as `np.percentile`
    (bit for bit, tested), without sorting the pixels, which is the costly part of a percentile."""
    m = int(cumulative[0, -1])
    virtual = (m - 1) * (np.asarray(q, np.float64) / 100)
    below = np.floor(virtual).astype(np.int64)
    gamma = virtual - below
    # the k-th smallest pixel (0-based) is the first level whose cumulative count exceeds k
    ranks = np.concatenate([below, np.minimum(below + 1, m - 1)])
    levels = np.stack([np.searchsorted(c, ranks, side="right") for c in cumulative]).astype(np.float32)
    lo, hi = levels[:, : len(below)], levels[:, len(below) :]
    step = hi - lo
    return np.where(gamma >= 0.5, hi - step * (1 - gamma), lo + step * gamma)


STAT_NAMES = ("mean gray level", "contrast (standard deviation)", "5th percentile",
              "median gray level", "95th percentile", "share of pure black or white pixels")


def orientation_scores(thumbs: np.ndarray, template: np.ndarray) -> np.ndarray:
    """(n, 5): correlation with the mean film as given, turned 90/180/270 degrees, and inverted."""
    t = template.reshape(THUMB, THUMB)
    t = (t - t.mean()) / max(t.std(), 1e-9)
    images = np.asarray(thumbs).reshape(len(thumbs), THUMB, THUMB)
    out = np.empty((len(thumbs), 5))
    for k in range(4):
        out[:, k] = np.mean(np.rot90(images, k, axes=(1, 2)) * t, axis=(1, 2))
    out[:, 4] = -out[:, 0]
    return out


def pixel_distance(thumbs: np.ndarray, g: FittedGate) -> np.ndarray:
    centred = thumbs - g.pix_mean
    proj = centred @ g.pix_components.T  # (n, k)
    resid = centred - proj @ g.pix_components
    d2 = np.sum(proj**2 / g.pix_var, axis=1) + np.sum(resid**2, axis=1) / g.pix_residual_var
    return np.sqrt(d2 / thumbs.shape[1])


def feature_distance(features: np.ndarray, g: FittedGate) -> np.ndarray:
    centred = np.asarray(features, np.float64) - g.feat_mean
    d2 = np.sum((centred @ g.feat_precision) * centred, axis=1)
    return np.sqrt(np.maximum(d2, 0.0) / centred.shape[1])


# ----------------------------------------------------------------------------- checking


def check(model, image: np.ndarray, *, saturation: float | None = None, dicom: dict | None = None,
          gate: FittedGate | None | str = "auto") -> GateResult:
    """Whether one decoded film is a frontal chest X-ray `model` can read.

    Parameters
    ----------
    model : model.Model
    image : ndarray of shape (height, width), uint8
        The decoded film at its own size.
    saturation : float, optional
        `imaging.colour_saturation` of the file (None: not measured).
    dicom : dict, optional
        `imaging.dicom_facts` of the file (None: not a DICOM).
    gate : "auto", None or FittedGate
        "auto" loads the run's fitted gate; None runs only the simple checks.

    Returns
    -------
    GateResult
        `in_distribution`, the `ood_score` (above 1: further out than the validation films the
        thresholds allow), a sentence per warning, and every figure measured.
    """
    return check_batch(model, [image], saturations=[saturation], dicoms=[dicom], gate=gate)[0]


def check_batch(model, images: Sequence[np.ndarray] | None = None, *, x: np.ndarray | None = None,
                features: np.ndarray | None = None, saturations: Sequence[float | None] | None = None,
                dicoms: Sequence[dict | None] | None = None, shapes: Sequence[tuple] | None = None,
                gate: FittedGate | None | str = "auto") -> list[GateResult]:
    """`check` for many films at once (batch scoring): one forward pass for the features.

    Parameters
    ----------
    images : sequence of 2-D uint8 arrays, optional
        The decoded films; or, cheaper, give `x` and `shapes`.
    x : ndarray of shape (n, h, w, c) float32, optional
        The prepared batch.
    features : ndarray of shape (n, d), optional
        `model.forward(x).features`, when the caller already ran the forward pass.
    saturations, dicoms, shapes : sequences of length n, optional
        Per film, as `check` takes them; `shapes` the original (height, width), for the size check.

    Returns
    -------
    list of GateResult
        One per film, in order.
    """
    if x is None:
        if images is None:
            raise GateError("check_batch needs the decoded images or a prepared batch x.")
        images = [np.asarray(im) for im in images]
        for im in images:
            if im.ndim != 2 or im.dtype != np.uint8:
                raise GateError(f"The gate takes 2-D uint8 gray images (imaging.decode), got "
                                f"{im.dtype} {im.shape}.")
        shapes = [im.shape for im in images]
        x = model.prepare_batch(images)
    x = np.asarray(x, np.float32)
    n = len(x)
    shapes = list(shapes) if shapes is not None else [None] * n
    saturations = list(saturations) if saturations is not None else [None] * n
    dicoms = list(dicoms) if dicoms is not None else [None] * n
    if gate == "auto":
        gate = load_gate(model.path)
    thumbs = thumbnails(x)
    stats = intensity_stats(x)
    if gate is not None:
        if features is None:
            features = model.forward(x).features
        feat_ratio = feature_distance(features, gate) / float(gate.thresholds["feature"])
        pix_ratio = pixel_distance(thumbs, gate) / float(gate.thresholds["pixel"])
        orient = orientation_scores(thumbs, gate.template)
    results = []
    for i in range(n):
        warnings: list[str] = []
        checks: dict[str, Any] = {}
        hard = False  # a simple check that alone makes the image unreadable
        shape = shapes[i]
        if shape is not None:
            h, w = int(shape[0]), int(shape[1])
            checks["height"], checks["width"] = h, w
            aspect = max(h, w) / max(min(h, w), 1)
            checks["aspect_ratio"] = round(w / max(h, 1), 3)
            if min(h, w) < MIN_SIDE:
                hard = True
                warnings.append(f"The image is only {w} x {h} pixels; a chest film needs at least "
                                f"{MIN_SIDE} pixels on each side to be read. Upload the full-size image.")
            if aspect > MAX_ASPECT:
                hard = True
                warnings.append(f"The image is {aspect:.1f} times longer than it is wide; a chest film "
                                "is close to square. Upload the whole film, not a strip or a crop.")
        sat = saturations[i]
        if sat is not None:
            checks["coloured_share"] = round(float(sat), 4)
            if sat > MAX_COLOURED:
                hard = True
                warnings.append(f"{sat:.0%} of the pixels are in colour; a radiograph is gray. This looks "
                                "like a photograph, a screenshot or a coloured map, not an X-ray.")
        std = float(stats[i, 1])
        checks["std"] = round(std, 2)
        if std < MIN_STD:
            hard = True
            warnings.append("The image is nearly uniform (almost no contrast): there is no film to read. "
                            "Check the export or the window settings.")
        facts = dicoms[i]
        if facts:
            warnings += dicom_warnings(facts)
            if facts.get("Modality") not in (None, "CR", "DX"):
                hard = True
        ood = None
        if gate is not None and std >= MIN_STD:
            low, high = gate.hist_low, gate.hist_high
            out_of_range = [STAT_NAMES[j] for j in range(len(STAT_NAMES))
                            if not low[j] <= stats[i, j] <= high[j]]
            checks["feature_distance_ratio"] = round(float(feat_ratio[i]), 4)
            checks["pixel_distance_ratio"] = round(float(pix_ratio[i]), 4)
            ood = float(max(feat_ratio[i], pix_ratio[i]))
            o = orient[i]
            checks["orientation_correlation"] = [round(float(v), 4) for v in o]
            margin = float(gate.thresholds["orientation"])
            turned = int(np.argmax(o[1:4])) + 1
            if o[4] - max(o[0], o[1:4].max()) > 0 and o[4] > margin:
                hard = True
                warnings.append("The film looks inverted (a negative: bones dark, lungs bright). Export it "
                                "with the usual display (MONOCHROME2) and upload again.")
            elif o[turned] - o[0] > margin:
                hard = True
                how = {1: "turned on its side", 2: "upside down", 3: "turned on its side"}[turned]
                warnings.append(f"The film looks {how}. Rotate it upright (head at the top) and upload again.")
            if out_of_range:
                checks["intensity_out_of_range"] = out_of_range
                if len(out_of_range) >= 2:
                    hard = True
                    warnings.append("Its gray levels are unlike every training film (" + ", ".join(out_of_range)
                                    + "). Check the export's windowing, or whether this is an X-ray at all.")
            if ood > 1.0:
                warnings.append(f"The model's view of this image is further from its training films than "
                                f"any validation film it was checked on (distance {ood:.2f} x the "
                                "threshold). It may not be a frontal chest X-ray of the kind it was trained on.")
        elif gate is None:
            warnings.append("This model has no fitted input gate, so only the simple image checks ran; "
                            "fit one with `python -m xray_core fit-gate RUN --data DATASET`.")
        in_dist = not hard and (ood is None or ood <= 1.0)
        results.append(GateResult(in_distribution=bool(in_dist), ood_score=ood, warnings=warnings,
                                  checks=checks))
    return results


def dicom_warnings(facts: dict) -> list[str]:
    """Sentences for DICOM headers that say this is not a frontal chest radiograph."""
    out = []
    modality = facts.get("Modality")
    if modality not in (None, "CR", "DX"):
        out.append(f"The DICOM modality is {modality}, not a radiograph (CR or DX); this model reads "
                   "chest radiographs only.")
    body = facts.get("BodyPartExamined")
    if body not in (None, "CHEST"):
        out.append(f"The DICOM says the body part examined is {body}, not CHEST.")
    if facts.get("ViewPosition") in ("LATERAL", "LL", "RL", "LAT"):
        out.append("The DICOM says this is a lateral view; the model was trained on frontal (AP/PA) films only.")
    return out


# ----------------------------------------------------------------------------- seen files


def file_hash(raw: bytes) -> str:
    """The first 128 bits of the file's sha256, in hex (what seen_hashes.txt stores)."""
    return hashlib.sha256(raw).hexdigest()[:32]


def seen_in(run_path: str | os.PathLike, raw: bytes) -> str | None:
    """'training' or 'validation' when these exact file bytes were in the run's split, else None."""
    return seen_in_digest(run_path, hashlib.sha256(bytes(raw)).hexdigest())


def seen_in_digest(run_path: str | os.PathLike, sha256: str) -> str | None:
    """seen_in from the file's sha256 (hex), for callers that hashed the bytes already."""
    return seen_table(run_path).get(sha256[:32])


def seen_table(run_path: str | os.PathLike) -> dict[str, str]:
    """The run's seen_hashes.txt as {hash: split} (empty when it has none), read once per call
    and parsed once per content: look up a batch of films against one table."""
    path = Path(run_path) / SEEN_HASHES
    if not path.is_file():
        return {}
    return _by_content(path.read_bytes(), _seen_table)


def _seen_table(raw: bytes) -> dict[str, str]:
    """seen_hashes.txt's lines 'HASH SPLIT' as {hash: split}."""
    table = {}
    for line in raw.decode("ascii").splitlines():
        parts = line.split()
        if len(parts) == 2:
            table.setdefault(parts[0], parts[1])
    return table
