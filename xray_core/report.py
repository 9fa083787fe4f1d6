"""One case as a PDF: what the model said about one film, with how far to trust it.

One A4 page (two at most): the film, the input gate's result, the verdict, P(pneumonia), the
operating threshold, the conformal prediction set, LIME's pros-and-cons and heatmap panels,
Grad-CAM, the run id with its validation figures (shift-stress figures with 95 % intervals when
the run has them), date and time, software version, and the research-use line. Drawn with
fpdf2 (core fonts: text is kept to Latin-1). No patient name, id or birth date is ever read,
so none can be printed.

    python -m xray_core report RUN IMAGE --out case.pdf
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Any

import numpy as np

RESEARCH_LINE = ("Research software, not a medical device. It must not be used to diagnose, triage or "
                 "treat anyone.")
CITATION = ("Training images: Kermany D, Zhang K, Goldbaum M (2018), Labeled Optical Coherence Tomography "
            "(OCT) and Chest X-Ray Images for Classification, Mendeley Data, CC BY 4.0.")


class ReportError(ValueError):
    """A report asked for with something it cannot use."""


def _latin1(text: Any) -> str:
    """Core PDF fonts speak Latin-1: replace the few typographic characters we use elsewhere."""
    text = str(text)
    for a, b in (("\u2013", "-"), ("\u2014", "-"), ("\u2265", ">="), ("\u2264", "<="), ("\u2019", "'"),
                 ("\u201c", '"'), ("\u201d", '"'), ("\u00b7", "-"), ("\u2026", "...")):
        text = text.replace(a, b)
    return text.encode("latin-1", "replace").decode("latin-1")


def _pil(arr: np.ndarray):
    from PIL import Image

    return Image.fromarray(np.asarray(arr, np.uint8))


def context_lines(metrics: dict | None) -> list[str]:
    """The validation figures a verdict is read against, each naming where it comes from."""
    metrics = metrics or {}
    out = []
    stress = metrics.get("stress")
    if isinstance(stress, dict) and stress:
        pooled = stress.get("pooled") if isinstance(stress.get("pooled"), dict) else stress
        ci = pooled.get("ci95") or {}
        parts = []
        for key in ("sensitivity", "specificity", "roc_auc"):
            if pooled.get(key) is not None:
                lo_hi = ci.get(key)
                interval = f" (95 % CI {lo_hi[0]:.3f}-{lo_hi[1]:.3f})" if isinstance(lo_hi, (list, tuple)) else ""
                parts.append(f"{key.replace('_', ' ')} {pooled[key]:.3f}{interval}")
        if parts:
            out.append("Shift-stress validation (validation films under shifted acquisition): " + "; ".join(parts) + ".")
    val = metrics.get("validation") or {}
    ci = metrics.get("validation_ci95") or {}
    if val:
        parts = []
        for key in ("sensitivity", "specificity", "roc_auc"):
            if val.get(key) is not None:
                c = ci.get(key) if isinstance(ci, dict) else None
                lo_hi = None
                if isinstance(c, dict):
                    lo_hi = (c.get("low"), c.get("high")) if "low" in c else (c.get("lo"), c.get("hi"))
                elif isinstance(c, (list, tuple)):
                    lo_hi = c
                interval = (f" (95 % CI {lo_hi[0]:.3f}-{lo_hi[1]:.3f})"
                            if lo_hi and None not in lo_hi else "")
                parts.append(f"{key.replace('_', ' ')} {val[key]:.3f}{interval}")
        site = metrics.get("site") if isinstance(metrics.get("site"), dict) else None
        if site is not None:  # a recalibrated run: its figures are the site's, not the training hospital's
            parent = (metrics.get("parent") or {}).get("run_id") or "its parent"
            out.append(f"The site's films, cross-fitted ({val.get('n', '?')} films, {site.get('folds', '?')} folds by "
                       "patient, each measured with a calibration and threshold fitted on the others): "
                       + "; ".join(parts) + f". The networks are {parent}'s, recalibrated on this site's films: "
                       "figures for new patients of that site, on films like these.")
        else:
            out.append(f"Validation split ({val.get('n', '?')} films, patients apart from training): "
                       + "; ".join(parts) + ". Films like these, from the same hospital; new sites will do worse.")
    return out


def build_pdf(assessment, *, lime=None, gradcam_overlay: np.ndarray | None = None, metrics: dict | None = None,
              software_version: str | None = None, when: _dt.datetime | None = None,
              show_anyway: bool = False) -> bytes:
    """The PDF bytes for one assessed film (`case.Assessment`), with its explanation panels if given.

    `lime` is an `explain.LimeExplanation` (its panels are drawn here over the film);
    `gradcam_overlay` an RGB array. A film the gate refused carries no verdict unless
    `show_anyway` (then it is marked as such).
    """
    from fpdf import FPDF
    from fpdf.enums import XPos, YPos

    from xray_core import __version__ as xray_version

    when = when or _dt.datetime.now(_dt.timezone.utc)
    version = software_version or xray_version
    a = assessment
    pdf = FPDF(format="A4")
    pdf.set_auto_page_break(auto=True, margin=12)
    pdf.set_title(f"Chest X-ray model output - run {a.run_id}")
    pdf.set_creator(f"xray_core {version}")
    pdf.add_page()
    epw = pdf.epw

    def line(text, size=9, style="", h=4.6):
        pdf.set_font("helvetica", style, size)
        pdf.multi_cell(epw, h, _latin1(text), new_x=XPos.LMARGIN, new_y=YPos.NEXT)

    pdf.set_font("helvetica", "B", 14)
    pdf.cell(epw, 8, _latin1("Pneumonia model output for one chest X-ray"), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    line(f"Run {a.run_id} - file {Path(a.name).name} - {when.strftime('%Y-%m-%d %H:%M UTC')} - "
         f"xray_core {version}", size=8)
    pdf.set_text_color(160, 0, 0)
    line(RESEARCH_LINE, size=9, style="B")
    pdf.set_text_color(0, 0, 0)
    pdf.ln(1)

    top = pdf.get_y()
    side = 62
    pdf.image(_pil(a.image), x=pdf.l_margin, y=top, w=side, h=side * a.image.shape[0] / a.image.shape[1]
              if a.image.shape[1] >= a.image.shape[0] else side)
    pdf.set_xy(pdf.l_margin + side + 5, top)
    col = epw - side - 5

    def right(text, size=9, style="", h=4.8):
        pdf.set_x(pdf.l_margin + side + 5)
        pdf.set_font("helvetica", style, size)
        pdf.multi_cell(col, h, _latin1(text), new_x=XPos.LMARGIN, new_y=YPos.NEXT)

    gate_ok = a.gate.in_distribution
    right("Input check: " + ("a frontal chest film this model can read" if gate_ok
                             else "NOT a chest X-ray this model can read"), 10, "B")
    if a.gate.ood_score is not None:
        right(f"Distance from the training films: {a.gate.ood_score:.2f} x the threshold (1.00 = the limit).", 8)
    for w in a.gate.warnings:
        right("- " + w, 8)
    if gate_ok or show_anyway:
        if not gate_ok:
            right("Shown anyway on request: the model was not made for this image.", 9, "B")
        right(f"Verdict: {a.verdict}", 14, "B", h=7)
        right(f"Probability of pneumonia: {a.probability:.3f}   Operating threshold: {a.threshold:.3f}", 10)
        u = a.uncertainty
        if u.prediction_set is not None:
            right(f"90 % prediction set: {u.label}  (split conformal, calibrated on {u.calibrated_on})", 9)
        else:
            right("Prediction set: the run has no conformal calibration.", 9)
        if u.member_spread is not None:
            right(f"Ensemble members' spread: {u.member_spread:.3f} (max - min of P(pneumonia)).", 9)
    else:
        right("No verdict is given for an image the model cannot read.", 10)
    if a.seen_in:
        right(f"This exact file was in the run's {a.seen_in} films: the figures above are not a "
              "fair test on it.", 9, "B")
    if a.dicom:
        facts = ", ".join(f"{k} {v}" for k, v in a.dicom.items() if v is not None and k not in ("Rows", "Columns"))
        right(f"DICOM: {facts}.", 8)
    pdf.set_y(max(pdf.get_y(), top + side) + 3)

    if lime is not None and (gate_ok or show_anyway):
        from xray_core.explain import lime_panels

        panels = lime_panels(a.image, lime)
        line("Why: explanations of P(pneumonia) (LIME superpixels, Grad-CAM)", 10, "B")
        y = pdf.get_y()
        w = (epw - 8) / 3
        images = [("LIME pros and cons: green raises P(pneumonia), red lowers it", panels.pros_cons),
                  (f"LIME weight heatmap (blue raises P(pneumonia); scale +-{panels.legend.vmax:.3g}"
                   f"{' in log-odds' if lime.scale == 'logit' else ''})", panels.heatmap)]
        if gradcam_overlay is not None:
            images.append(("Grad-CAM: warm where the last conv layer saw evidence for pneumonia", gradcam_overlay))
        for i, (caption, arr) in enumerate(images):
            x = pdf.l_margin + i * (w + 4)
            h = w * arr.shape[0] / arr.shape[1]
            pdf.image(_pil(arr), x=x, y=y, w=w, h=h)
            pdf.set_xy(x, y + h + 1)
            pdf.set_font("helvetica", "", 7)
            pdf.multi_cell(w, 3.4, _latin1(caption))
        pdf.set_y(y + w + 12)
        line(f"LIME: {lime.n_superpixels} superpixels, {lime.num_samples} samples, seed {lime.seed}, "
             f"local fit R^2 {lime.score:.2f}.", 8)

    line("How far to trust it", 10, "B")
    for text in context_lines(metrics):
        line(text, 8)
    line("PNEUMONIA when the probability is at or above the operating threshold, chosen on the run's "
         "validation split. " + CITATION, 7)
    out = pdf.output()
    if pdf.page_no() > 2:
        raise ReportError(f"The report ran to {pdf.page_no()} pages; it must fit on two.")
    return bytes(out)


def report_for_file(run: Any, image: str | os.PathLike, *, num_samples: int | None = None, seed: int = 0,
                    show_anyway: bool = False) -> bytes:
    """Assess, explain and lay out one image file with a run: the PDF bytes."""
    from xray_core import case, explain
    from xray_core.model import load_model

    model = load_model(run)
    a = case.assess(model, Path(image))
    lime = cam_overlay = None
    if a.in_distribution or show_anyway:
        lime = explain.explain_lime(model, a.image, seed=seed, **explain.lime_settings(num_samples=num_samples))
        cam = explain.grad_cam(model, a.image)
        cam_overlay = explain.make_overlay(a.image, cam.heatmap)
    return build_pdf(a, lime=lime, gradcam_overlay=cam_overlay, metrics=model.metrics, show_anyway=show_anyway)


def _cmd_report(args) -> int:
    from xray_core import fileio
    from xray_core.model import load_model

    from xray_core.console import run_ref

    model = load_model(run_ref(str(args.run)), root=getattr(args, "runs_dir", None))
    pdf = report_for_file(model, args.image, num_samples=getattr(args, "samples", None),
                          seed=getattr(args, "seed", 0), show_anyway=getattr(args, "show_anyway", False))
    out = Path(args.out)
    fileio.atomic_write_bytes(out, pdf)
    if getattr(args, "json", False):
        from xray_core.console import json_line

        json_line({"run": model.run_id, "image": str(args.image), "out": str(out), "bytes": len(pdf)})
        return 0
    print(f"wrote {out} ({len(pdf) // 1024} KB) for run {model.run_id}")
    return 0
