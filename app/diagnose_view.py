"""Diagnose's words and tables: what the page says about a verdict, its trust and its explanations.

The library (`xray_core.case`, `explain`, `gate`, `uncertainty`) returns data; this module turns
it into the sentences and tables the page shows. No Streamlit here, so it is testable alone.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xray_core.explain.panels import png_bytes
from xray_core.fileio import to_jsonable
from xray_core.report import context_lines
from xray_core.site_run import SITE_TOKEN

ROOT = Path(__file__).resolve().parents[1]
FAITHFULNESS_REPORT = ROOT / "benchmarks" / "reports" / "explain_faithfulness.json"

REFUSED_TITLE = "Not a chest X-ray this model can read"
SHOW_ANYWAY = "Show the model's output anyway"
EXPLANATIONS_OFF = "Explanations are switched off on this server; the verdict above stands on its own."

PANEL_TITLES = {
    "full": "1 · Top superpixels",
    "partial": "2 · Only those superpixels",
    "pros_cons": "3 · Pros and cons",
    "heatmap": "4 · Weight heatmap",
    "gradcam": "Grad-CAM",
}


TRUST_TITLE = "How far to trust these panels"


def trust_text() -> str:
    """What the faithfulness report measured, in a few sentences, for the panels' one expander (empty
    when never measured); the report is read again only when its file changes."""
    try:
        stamp = FAITHFULNESS_REPORT.stat()
    except FileNotFoundError:
        return ""
    return _trust_text(FAITHFULNESS_REPORT, stamp.st_mtime_ns, stamp.st_size)


@functools.lru_cache(maxsize=2)
def _trust_text(path: Path, _mtime_ns: int, _size: int) -> str:
    d = json.loads(path.read_text())
    areas = d.get("mean_deletion_area") or {}
    if not {"lime", "gradcam", "random"} <= set(areas):
        return ""
    fill = d.get("deletion_fill")
    filled = f" (filled with {fill}, as LIME hides them)" if fill else ""
    text = ("Both methods show what the model relies on, not where the disease is. "
            f"Measured on {d.get('n_images')} validation films of run {d.get('run')}: hiding regions{filled} in "
            f"LIME's order lowers P(pneumonia) with a deletion area of {areas['lime']:.3f}, in Grad-CAM's "
            f"{areas['gradcam']:.3f}, in a random order {areas['random']:.3f} (lower: the order found what the "
            "model relies on).")
    stability = d.get("stability") or {}
    films = stability.get("films") or []
    if films:
        seeds = stability.get("seeds")
        over = f" over {seeds} random seeds" if seeds else " over random seeds"
        goal = stability.get("goal_jaccard")
        overlap = f" (every pair's overlap at least {goal:g})" if goal else ""
        text += (f" The top 5 regions stayed the same{over}{overlap} on "
                 f"{sum(bool(f.get('meets')) for f in films)} of {len(films)} films.")
        moved = [f for f in films if not f.get("meets")]
        tied = sum(bool(f.get("near_tie")) for f in moved)
        if tied:
            text += (f" Where they moved ({tied} of {len(moved)} such films), the 5th and 6th regions weighed "
                     "the same within LIME's precision: either could be shown.")
    return text


def panel_help(vmax: float | None = None, scale: str = "probability") -> dict[str, str]:
    """One line per panel on how to read it. Every panel explains P(pneumonia), whatever the verdict;
    `scale` is what LIME fitted (LimeExplanation.scale), the unit of the heatmap's weights."""
    unit = "log-odds" if scale == "logit" else "probability"
    scale = f" (±{vmax:.3g})" if vmax else ""
    return {
        "full": "Yellow outlines: the 2 regions that most raise the probability of pneumonia.",
        "partial": "Only those 2 regions, the rest blacked out: is the evidence in the lungs?",
        "pros_cons": "The 5 strongest regions: green raises the probability of pneumonia, red lowers it.",
        "heatmap": f"Each region's weight on the {unit} of pneumonia: blue raises it, red lowers it{scale}.",
        "gradcam": "Warm colours: where the last convolutional layer saw evidence for pneumonia.",
    }


def gate_lines(assessment) -> list[str]:
    g = assessment.gate
    lines = list(g.warnings)
    if g.ood_score is not None:
        lines.append(f"Distance from the training films: {g.ood_score:.2f} × the threshold set on "
                     "validation films (above 1.00 is further out than they were).")
    return lines


VERDICT_LABELS = ("Prediction", "Probability of pneumonia", "Operating threshold", "90 % prediction set")
NO_FILM = "—"  # the verdict row's value before a film is chosen


def verdict_metrics(assessment) -> list[tuple[str, str]]:
    """(label, value) pairs for the verdict row, in order; None: the row before a film is chosen."""
    if assessment is None:
        return [(label, NO_FILM) for label in VERDICT_LABELS]
    u = assessment.uncertainty
    values = (assessment.verdict, f"{assessment.probability:.3f}", f"{assessment.threshold:.3f}", u.label)
    return list(zip(VERDICT_LABELS, values))


def verdict_caption(assessment) -> str:
    return (f"{Path(assessment.name).name} · run {assessment.run_id} · PNEUMONIA when the probability is at "
            "or above the operating threshold, which was chosen on the run's validation films.")


def uncertainty_caption(assessment) -> str:
    u = assessment.uncertainty
    if u.prediction_set is None:
        text = "This run has no conformal calibration, so no prediction set is given."
    elif u.uncertain:
        text = ("Uncertain, needs review: at the 90 % level the model cannot tell NORMAL from PNEUMONIA for "
                f"this film (split conformal, calibrated on {u.calibrated_on}).")
    else:
        text = (f"At the 90 % level the set holds one class, {u.prediction_set[0]} (split conformal, "
                f"calibrated on {u.calibrated_on}).")
    if u.member_spread is not None:
        text += (f" The {len(u.member_probabilities)} ensemble members' P(pneumonia) spans "
                 f"{min(u.member_probabilities):.3f}–{max(u.member_probabilities):.3f}.")
    return text


def seen_caption(assessment) -> str | None:
    if assessment.seen_in is None:
        return None
    if assessment.seen_in == SITE_TOKEN:
        return (f"This exact file was one of the films the run {assessment.run_id}'s site calibration was fitted on "
                "(its calibration, threshold and prediction sets): its answer here is not a fair test of them.")
    return (f"This exact file was one of the run's {assessment.seen_in} films, so the model has seen it "
            "(or was tuned on it): its answer here says nothing about new patients.")


def context(metrics: dict | None) -> list[str]:
    """The figures a verdict is read against, each named (shift-stress first). The research-use line
    is the sidebar's, on every page (the PDF report carries RESEARCH_LINE itself)."""
    return context_lines(metrics)


def dicom_table(facts: dict | None) -> pd.DataFrame | None:
    """Acquisition facts of a DICOM (never patient data) as a two-column table."""
    if not facts:
        return None
    names = {"Modality": "modality", "BodyPartExamined": "body part", "ViewPosition": "view position",
             "PhotometricInterpretation": "photometric interpretation", "PixelSpacing": "pixel spacing (mm)",
             "ImagerPixelSpacing": "imager pixel spacing (mm)", "Rows": "rows", "Columns": "columns"}
    rows = [(names[k], "–" if v is None else (" × ".join(f"{x:g}" for x in v) if isinstance(v, list) else str(v)))
            for k, v in facts.items() if k in names]
    return pd.DataFrame(rows, columns=["DICOM attribute", "value"])


def explanation_notes(lime, cam_layer: str, name: str = "") -> list[str]:
    prefix = f"{Path(name).name} · " if name else ""
    return [f"{prefix}LIME: {lime.n_superpixels} superpixels, {lime.num_samples} samples, local fit R² "
            f"{lime.score:.2f}, {lime.seconds:.1f} s · Grad-CAM layer {cam_layer}. Both explain the "
            "probability of pneumonia."]


def summary(assessment) -> dict:
    """The JSON summary that goes with a download."""
    return {"file": assessment.name, **assessment.to_json()}


def result_zip(images: dict[str, Any], summary_json: dict) -> bytes:
    """A zip of named PNGs (PNG bytes, or RGB arrays encoded here) plus result.json, built in
    memory (nothing touches the disk)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, image in images.items():
            archive.writestr(f"{name}.png", image if isinstance(image, bytes) else png_bytes(image))
        archive.writestr("result.json", json.dumps(to_jsonable(summary_json), indent=2, allow_nan=False))
    return buffer.getvalue()


def png_array(png: bytes) -> np.ndarray:
    """An RGB array from PNG bytes (the report draws arrays)."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def explained_summary(result) -> dict:
    """The explanation's part of the download's JSON, from an `explain.Explained`."""
    return {"lime": {**result.lime.to_dict(), "heatmap_legend": dataclasses.asdict(result.legend)},
            "gradcam": {"layer": result.cam_layer, "seconds": result.cam_seconds}}


def waiting_line(status) -> tuple[str, float]:
    """What the panel area says while the explanation waits or runs, and how far it is (0..1)."""
    if status.state == "queued":
        if status.ahead:
            return f"Explanations queued: {status.ahead} ahead.", 0.0
        return "Explanation starting…", 0.0
    if status.state == "running" and status.total:
        if status.done >= status.total:
            return "Explaining: drawing the panels (Grad-CAM)…", 1.0
        return f"Explaining: LIME, {status.done} of {status.total} samples.", status.done / status.total
    return "Explanation starting…", 0.0


def failed_line(message: str) -> str:
    return f"No explanation for this film: {message}"
