"""One film through the product: the one assessment every consumer takes its answer from.

decode -> gate (is it a chest film this model can read?) -> P(pneumonia) at the operating
threshold (`Model.forward`) -> conformal prediction set and ensemble spread -> were these exact
bytes in the run's training or validation split? `predict`, `score`, Diagnose, the Worklist,
the PDF report, `evaluate`, Compare's test-split scores and `validate` all call `assess_films`
(or `assess` for one file). A file that cannot be decoded gets a refusal in the same shape
(`refused`), so every file has an answer.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from xray_core import gate as gate_mod
from xray_core import imaging, uncertainty
from xray_core.model import Scores


@dataclasses.dataclass(frozen=True)
class Film:
    """A decoded film and what the gate reads of its file.

    `image` is the decoded 2-D uint8 gray image (any size), or None where the caller passes the
    prepared batch itself; `shape` is the original (height, width); `sha256` the hex digest of
    the file's bytes ("" when unknown); `coloured_share` and `dicom` as `imaging` measures them.
    """

    name: str
    image: np.ndarray | None = dataclasses.field(default=None, repr=False)
    sha256: str = ""
    shape: tuple[int, int] | None = None
    coloured_share: float | None = None
    dicom: dict | None = None


@dataclasses.dataclass
class Assessment:
    """Everything said about one film before any explanation."""

    name: str
    run_id: str
    probability: float  # calibrated P(pneumonia): Model.forward's `proba`
    uncalibrated: float  # the members' mean before calibration
    threshold: float
    verdict: str  # NORMAL or PNEUMONIA at the threshold (shown only when the gate lets it through)
    gate: gate_mod.GateResult
    uncertainty: uncertainty.Uncertainty
    seen_in: str | None  # "training" / "validation" / "site-calibration" when these bytes were used
    dicom: dict | None
    image: np.ndarray | None = dataclasses.field(repr=False)  # decoded 2-D uint8
    model_input: np.ndarray = dataclasses.field(repr=False)  # (h, w, c) float32

    @property
    def in_distribution(self) -> bool:
        return self.gate.in_distribution

    def to_json(self) -> dict:
        """The `predict --json` object (no pixels, no patient data)."""
        return {
            "image": self.name, "run": self.run_id,
            "label": self.verdict, "probability": self.probability, "threshold": self.threshold,
            "in_distribution": self.gate.in_distribution, "ood_score": self.gate.ood_score,
            "warnings": list(self.gate.warnings),
            "prediction_set": self.uncertainty.prediction_set,
            "uncertain": self.uncertainty.uncertain,
            "member_spread": self.uncertainty.member_spread,
            "seen_in": self.seen_in,
            "dicom": self.dicom,
        }


def refused(name: str, run_id: str, reason: str) -> dict:
    """The `predict --json` object of a file that could not be read at all."""
    return {"image": name, "run": run_id, "label": None, "probability": None, "threshold": None,
            "in_distribution": False, "ood_score": None, "warnings": [reason], "prediction_set": None,
            "uncertain": None, "member_spread": None, "seen_in": None, "dicom": None, "error": reason}


def read(source: Any, filename: str | None = None) -> Film:
    """Decode one file into a Film, with what the gate reads of its bytes.

    Parameters
    ----------
    source : bytes, str or os.PathLike
        The file's bytes (an upload, read in memory) or its path.
    filename : str, optional
        Names the file in messages (default: the path's name, or "upload").

    Raises
    ------
    imaging.ImageDecodeError
        With a sentence saying what was wrong with the file and what to upload instead.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        raw = bytes(source)
        name = filename or "upload"
    else:
        path = Path(source)
        filename = filename or path.name
        raw = imaging.read_bytes(path, filename)
        name = str(source)
    gray = imaging.decode(raw, filename=filename)
    return Film(name=name, image=gray, sha256=hashlib.sha256(raw).hexdigest(), shape=gray.shape,
                coloured_share=imaging.colour_saturation(raw, filename=filename),
                dicom=imaging.dicom_facts(raw, filename=filename))


def assess_films(model, films: Sequence[Film], *, x: np.ndarray | None = None, scores: Scores | None = None,
                 gate="auto", conformal="auto") -> list[Assessment]:
    """Assess films with one forward pass: the one place a film's answer is made.

    Parameters
    ----------
    model : model.Model
    films : sequence of Film
    x : ndarray of shape (n, h, w, c) float32, optional
        Their prepared batch (default: `model.prepare_batch` of their images).
    scores : model.Scores, optional
        `model.forward(x)` when the caller already ran it (batch scoring overlaps the network
        with this step).
    gate, conformal : "auto", None or the fitted rule
        The run's input gate and conformal rule: "auto" loads the run's, None checks without.

    Returns
    -------
    list of Assessment
        One per film, in order.
    """
    if not films:
        return []
    if x is None:
        x = model.prepare_batch([f.image for f in films])
    if scores is None:
        scores = model.forward(x)
    if gate == "auto":
        gate = gate_mod.load_gate(model.networks_dir)
    if conformal == "auto":
        conformal = uncertainty.load_conformal(model.path)
    gates = gate_mod.check_batch(model, x=x, features=scores.features, shapes=[f.shape for f in films],
                                 saturations=[f.coloured_share for f in films],
                                 dicoms=[f.dicom for f in films], gate=gate)
    threshold = float(model.threshold)
    several = scores.member_proba.shape[1] > 1
    tables = seen_tables(model)
    out = []
    for i, film in enumerate(films):
        p = float(scores.proba[i])
        unc = uncertainty.describe(p, threshold, conformal, scores.member_proba[i] if several else None)
        out.append(Assessment(
            name=film.name, run_id=model.run_id, probability=p, uncalibrated=float(scores.uncalibrated[i]),
            threshold=threshold, verdict=model.verdict(p), gate=gates[i], uncertainty=unc,
            seen_in=_seen(tables, film.sha256), dicom=film.dicom, image=film.image, model_input=x[i]))
    return out


def assess_prepared(model, x: np.ndarray, names: Sequence[str]) -> list[Assessment]:
    """Assess films a dataset loader already decoded and prepared, (n, h, w, c) float32, by name
    (no file facts: the gate's size, colour and DICOM checks are skipped)."""
    return assess_films(model, [Film(name=str(n)) for n in names], x=x)


def assess(model, source: Any, filename: str | None = None, **kw) -> Assessment:
    """Assess one file (path or bytes): `read`, then `assess_films`, whose options `kw` takes.

    Raises
    ------
    imaging.ImageDecodeError
        When the file cannot be read as an image.
    """
    return assess_films(model, [read(source, filename)], **kw)[0]


def seen_tables(model) -> list[dict[str, str]]:
    """The run's own list of the files it used, then its parent's (a recalibrated run)."""
    return [gate_mod.seen_table(folder) for folder in dict.fromkeys((model.path, model.networks_dir))]


def _seen(tables: list[dict[str, str]], sha256: str) -> str | None:
    key = sha256[:32]
    return next((t[key] for t in tables if key and key in t), None)

