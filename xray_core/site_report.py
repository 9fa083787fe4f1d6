"""A site validation on paper and on the terminal: the report folder and the printed summary.

The folder holds validation.json (every figure with its interval, the counts, the warnings, the
ROC points and the reliability bins), films.csv (one row per film: hash, label, patient,
probability before and after calibration, verdict, input check, prediction set, whether it
counts and why not), roc.png, reliability.png, confusion.png and report.pdf (one or two pages,
with the research-software line); and the summaries `xray validate` and `xray recalibrate` print.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd

from xray_core import fileio
from xray_core.metrics import SITE_FIGURES

REPORT_JSON, FILMS_CSV, REPORT_PDF = "validation.json", "films.csv", "report.pdf"
FIGURE_FILES = ("roc.png", "reliability.png", "confusion.png")
RESEARCH_LINE = "Research software, not a medical device: not for clinical decisions."
LABELS = {"accuracy": "accuracy", "sensitivity": "sensitivity", "specificity": "specificity", "ppv": "PPV",
          "npv": "NPV", "roc_auc": "ROC AUC", "ece": "calibration error (ECE, 15 bins)", "brier": "Brier score"}


def read_films(path: str | os.PathLike) -> pd.DataFrame:
    """films.csv back as the table `site` makes (text columns as text, flags as booleans)."""
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    table["label"] = table["label"].astype(int)
    for column in ("probability", "uncalibrated", "threshold"):
        table[column] = pd.to_numeric(table[column].replace("", np.nan))
    for column in ("in_distribution", "included"):
        table[column] = table[column].eq("True")
    return table


# ------------------------------------------------------------------------------ figures


def _figure_png(draw) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 4.0), dpi=110)
    try:
        draw(ax)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)


def figure_pngs(report: dict) -> dict[str, bytes]:
    """roc.png (when both classes count), reliability.png and confusion.png of a report."""
    out = {}
    auc = report["figures"]["roc_auc"]["estimate"]
    if report.get("roc"):
        def roc(ax):
            ax.plot(report["roc"]["fpr"], report["roc"]["tpr"], color="#1f77b4", label=f"AUC {auc:.3f}")
            ax.plot([0, 1], [0, 1], ":", color="#999999")
            ax.set(xlabel="1 - specificity (NORMAL called PNEUMONIA)", ylabel="sensitivity", title="ROC curve")
            ax.legend(loc="lower right")
        out["roc.png"] = _figure_png(roc)

    def reliability(ax):
        bins = [b for b in report["reliability"] if b["n"]]
        ax.plot([0, 1], [0, 1], ":", color="#999999", label="perfect calibration")
        ax.plot([b["mean_pred"] for b in bins], [b["frac_pos"] for b in bins], "o-", color="#E4572E",
                label=f"ECE {report['figures']['ece']['estimate']:.3f}")
        ax.set(xlabel="mean predicted P(pneumonia)", ylabel="observed share with pneumonia", xlim=(0, 1), ylim=(0, 1.02),
               title="Reliability diagram")
        ax.legend(loc="upper left")
    out["reliability.png"] = _figure_png(reliability)

    def confusion(ax):
        c = report["confusion"]
        grid = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
        ax.imshow(grid, cmap="Blues")
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > grid.max() / 2 else "black")
        ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["NORMAL", "PNEUMONIA"], yticklabels=["NORMAL", "PNEUMONIA"],
               xlabel="verdict", ylabel="label", title=f"At the threshold {report['threshold']:.3f}")
    out["confusion.png"] = _figure_png(confusion)
    return out


# ------------------------------------------------------------------------------ words


def interval(figure: dict) -> str:
    e, lo, hi = figure.get("estimate"), figure.get("low"), figure.get("high")
    if e is None or not np.isfinite(e):
        return "not measurable"
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return f"{e:.3f}"
    return f"{e:.3f} ({lo:.3f}-{hi:.3f})"


def headline(report: dict) -> str:
    counts = report["counts"]
    return (f"{report['run']} on {report['labels']}: {report['n']} films counted ({counts['NORMAL']['included']} "
            f"NORMAL, {counts['PNEUMONIA']['included']} PNEUMONIA); 95 % intervals over {report['n_clusters']} "
            f"{report['clusters']}; operating threshold {report['threshold']:.3f}.")


def detail_lines(report: dict) -> list[str]:
    """Confusion, input check and prediction sets in sentences."""
    c, counts = report["confusion"], report["counts"]
    lines = [f"At the threshold: {c['tp']} PNEUMONIA films called PNEUMONIA, {c['fn']} missed; {c['tn']} NORMAL "
             f"films called NORMAL, {c['fp']} called PNEUMONIA.",
             f"Input check: refused {counts['NORMAL']['gate_refused']} NORMAL and {counts['PNEUMONIA']['gate_refused']} "
             f"PNEUMONIA films; {counts['NORMAL']['unreadable'] + counts['PNEUMONIA']['unreadable']} unreadable."]
    sets = report.get("prediction_sets")
    if sets:
        lines.append(f"90 % prediction sets: the true class in {sets['coverage']:.1%} of them; "
                     f"{sets['needs_review']:.1%} hold both classes (needs review).")
    else:
        lines.append("The run has no conformal calibration, so no prediction sets.")
    return lines


def table_lines(columns: dict[str, dict]) -> list[str]:
    """Each figure's estimate and interval, one column per set of figures."""
    width = max(len(v) for v in LABELS.values())
    names = list(columns)
    lines = ["figure".ljust(width) + "  " + "  ".join(n.ljust(24) for n in names)]
    for key in SITE_FIGURES:
        lines.append(LABELS[key].ljust(width) + "  " + "  ".join(interval(columns[n][key]).ljust(24) for n in names))
    return lines


def summary_lines(report: dict) -> list[str]:
    lines = [headline(report)] + [f"warning: {w}" for w in report["warnings"]]
    if not report["exclude_seen"] and any(c["seen"] for c in report["counts"].values()):
        lines.append("hint: --exclude-seen leaves out the films the run has seen.")
    lines += table_lines({"estimate (95 % interval)": report["figures"]}) + detail_lines(report)
    if report.get("report_folder"):
        lines.append(f"report folder: {report['report_folder']}")
    return lines + [RESEARCH_LINE]


def recalibration_lines(result: dict) -> list[str]:
    counts = {name: c["included"] for name, c in result["counts"].items()}
    lines = [f"wrote the run {result['run']} ({result['path']}): the networks of {result['parent']} with T = "
             f"{result['temperature']:.3f}, b = {result['bias']:.3f} and threshold {result['threshold']:.3f}, fitted "
             f"on {sum(counts.values())} films ({counts['NORMAL']} NORMAL, {counts['PNEUMONIA']} PNEUMONIA)."]
    lines += [f"warning: {w}" for w in result["warnings"]]
    lines.append(f"The figures of {result['run']} are cross-fitted: the films were split by patient into {result['folds']} "
                 f"folds, and each fold was measured with what was fitted on the other {result['folds'] - 1}, never on "
                 "itself. Figures on the fitting films would flatter it.")
    lines += table_lines({f"{result['parent']} as shipped": result["before"]["figures"],
                          f"{result['run']} cross-fitted": result["cross_fitted"]["figures"]})
    return lines + [RESEARCH_LINE]


# ------------------------------------------------------------------------------ the folder


def _latin1(text) -> str:
    """fpdf2's core fonts write Latin-1: anything else (a file name in another script) becomes '?'."""
    return str(text).encode("latin-1", "replace").decode("latin-1")


def _pdf(report: dict, pngs: dict[str, bytes]) -> bytes:
    from fpdf import FPDF
    from fpdf.enums import XPos, YPos

    pdf = FPDF(format="A4")
    pdf.set_auto_page_break(auto=True, margin=12)
    pdf.set_title(f"Site validation of run {report['run']}")
    pdf.add_page()

    def line(text, size=9, style="", h=4.6):
        pdf.set_font("helvetica", style, size)
        pdf.multi_cell(pdf.epw, h, _latin1(text), new_x=XPos.LMARGIN, new_y=YPos.NEXT)

    line(f"Site validation of the run {report['run']}", 14, "B", 8)
    line(f"Label list {report['labels']} (sha256 {report['labels_sha256'][:16]}...) - {report['date'][:16]} UTC - "
         f"xray_core {report['xray_core']}", 8)
    pdf.set_text_color(160, 0, 0)
    line(RESEARCH_LINE, 9, "B")
    pdf.set_text_color(0, 0, 0)
    line(headline(report), 9)
    for w in report["warnings"]:
        line("- " + w, 8)
    pdf.ln(1)
    pdf.set_font("helvetica", "B", 9)
    pdf.cell(70, 5, "figure")
    pdf.cell(60, 5, "estimate (95 % interval)", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font("helvetica", "", 9)
    for key in SITE_FIGURES:
        pdf.cell(70, 5, _latin1(LABELS[key]))
        pdf.cell(60, 5, interval(report["figures"][key]), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(1)
    for text in detail_lines(report):
        line(text, 8)
    y = pdf.get_y() + 2
    w = (pdf.epw - 8) / 3
    for i, name in enumerate(n for n in FIGURE_FILES if n in pngs):
        pdf.image(io.BytesIO(pngs[name]), x=pdf.l_margin + i * (w + 4), y=y, w=w)
    pdf.set_y(y + w + 4)
    line(f"Figures over the films that count: readable, accepted by the input check{', and not seen by the run' if report['exclude_seen'] else ''}. "
         f"Patient ids from {report['patients_from']}. Calibration error: 15 equal-width bins. Per-film results: {FILMS_CSV}.", 7)
    return bytes(pdf.output())


def write_report(out: str | os.PathLike, report: dict, table: pd.DataFrame) -> Path:
    """Write the report folder `out` (created if needed; files of these names replaced)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pngs = figure_pngs(report)
    for name, data in pngs.items():
        fileio.atomic_write_bytes(out / name, data)
    fileio.atomic_write_text(out / FILMS_CSV, table.to_csv(index=False))
    fileio.atomic_write_bytes(out / REPORT_PDF, _pdf(report, pngs))
    fileio.atomic_write_json(out / REPORT_JSON, {**report, "report_folder": str(out)})
    return out
