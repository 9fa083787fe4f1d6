"""One film through the product, as `predict`, Diagnose and the PDF report all see it.

decode -> gate (is it a chest film this model can read?) -> P(pneumonia) at the operating
threshold -> conformal prediction set (and ensemble spread) -> was this exact file in the run's
training or validation split? One forward pass gives the probability, the members' spread and
the gate's features. A file that cannot be decoded gets a refusal with the decoder's sentence,
in the same shape (`refused`), so every file has an answer.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from xray_core import gate as gate_mod
from xray_core import imaging, uncertainty

CLASSES = ("NORMAL", "PNEUMONIA")


@dataclasses.dataclass
class Assessment:
    """Everything said about one film before any explanation."""

    name: str
    run_id: str
    probability: float
    threshold: float
    verdict: str  # NORMAL or PNEUMONIA at the threshold (shown only when the gate lets it through)
    gate: gate_mod.GateResult
    uncertainty: uncertainty.Uncertainty
    seen_in: str | None  # "training" / "validation" when these file bytes were in the run's split
    dicom: dict | None
    image: np.ndarray = dataclasses.field(repr=False)  # decoded 2-D uint8
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


def read(source: Any, filename: str | None = None) -> tuple[bytes, np.ndarray, float, dict | None]:
    """(raw bytes, gray image, coloured share, DICOM facts) of a path or bytes; ImageDecodeError if unreadable."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        raw = bytes(source)
    else:
        path = Path(source)
        filename = filename or path.name
        raw = imaging._read_source(path, filename, imaging.MAX_UPLOAD_BYTES)[0]
    gray = imaging.decode(raw, filename=filename)
    return raw, gray, imaging.colour_saturation(raw, filename=filename), imaging.dicom_facts(raw, filename=filename)


def assess_many(model, films: Sequence[tuple[str, bytes, np.ndarray, float | None, dict | None]], *,
                gate="auto", conformal="auto") -> list[Assessment]:
    """Assess decoded films [(name, raw bytes, gray, coloured share, dicom facts)] in one forward pass."""
    if not films:
        return []
    from xray_core.model import calibrate

    if gate == "auto":
        gate = gate_mod.load_gate(model.path)
    if conformal == "auto":
        conformal = uncertainty.load_conformal(model.path)
    grays = [f[2] for f in films]
    x = model.prepare_batch(grays)
    raw_members, features = model.raw_member_proba_and_features(x)  # one pass for both
    members = calibrate(raw_members, model.temperature, model.bias)
    probs = calibrate(raw_members.mean(axis=1), model.temperature, model.bias)
    gates = gate_mod.check_batch(model, x=x, features=features, shapes=[g.shape for g in grays],
                                 saturations=[f[3] for f in films], dicoms=[f[4] for f in films], gate=gate)
    threshold = float(model.threshold)
    out = []
    for i, (name, raw, gray, _, facts) in enumerate(films):
        p = float(probs[i])
        unc = uncertainty.describe(p, threshold, conformal, members[i] if members.shape[1] > 1 else None)
        out.append(Assessment(
            name=name, run_id=model.run_id, probability=p, threshold=threshold,
            verdict=CLASSES[int(p >= threshold)], gate=gates[i], uncertainty=unc,
            seen_in=gate_mod.seen_in(model.path, raw), dicom=facts, image=gray, model_input=x[i]))
    return out


def assess(model, source: Any, filename: str | None = None, **kw) -> Assessment:
    """Assess one file (path or bytes). Raises imaging.ImageDecodeError when it cannot be read."""
    raw, gray, sat, facts = read(source, filename)
    name = filename or (str(source) if not isinstance(source, (bytes, bytearray)) else "upload")
    return assess_many(model, [(name, raw, gray, sat, facts)], **kw)[0]


def stress_figures(metrics: dict | None) -> dict | None:
    """The shift-stress validation block of metrics.json (with its intervals), None when absent."""
    block = (metrics or {}).get("stress")
    return block if isinstance(block, dict) and block else None
