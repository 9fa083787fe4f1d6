"""What the Validate page shows, shaped for it: tables, labels and sentences (no Streamlit here).

The figures and their sentences come from `xray_core.site` and `site_report` (the same words as
`xray validate` and the PDF); this module lays them out as tables and adds the page's own words.
"""

from __future__ import annotations

import datetime as _dt
import io
import zipfile
from pathlib import Path

import pandas as pd

from xray_core.metrics import SITE_FIGURES
from xray_core.site_report import LABELS, interval

INTRO = ("How does a model do on your own children's films, and can it be set for your machines? Give films "
         "whose diagnosis you know, in NORMAL/ and PNEUMONIA/ folders (a folder on the server, or a zip). "
         "Every film goes through the same check and verdict as Diagnose; the figures come with 95 % intervals "
         "over patients.")
SAVE_HELP = ("Sets the model's probabilities, threshold and prediction sets to these films, without retraining, "
             "as a new run in the models folder. The figures below are cross-fitted: each group of patients is "
             "measured with what was fitted on the others, as new patients of your site would be.")
SEEN_HINT = ("Tick 'Leave out films the model has seen' when you start a validation to measure on the other "
             "films only.")


def job_label(job: dict) -> str:
    """What a job is, for the job picker: its films, model and start (its state shows below: the
    picker's text of the chosen job is not redrawn when it changes)."""
    started = job.get("submitted", "")[:16].replace("T", " ")
    return f"{job.get('label', '?')} · {job.get('films', '?')} films · {job.get('run_id', '?')} · {started} UTC"


def figures_table(figures: dict) -> pd.DataFrame:
    """One row per figure: its estimate and 95 % interval."""
    rows = []
    for key in SITE_FIGURES:
        f = figures[key]
        rows.append({"figure": LABELS[key], "estimate (95 % interval)": interval(f)})
    return pd.DataFrame(rows)


def side_by_side(site: dict, *, run_id: str) -> pd.DataFrame:
    """The run as it is on these films beside the site-calibrated run, cross-fitted."""
    rows = []
    for key in SITE_FIGURES:
        rows.append({"figure": LABELS[key], f"{run_id} as it is": interval(site["before"]["figures"][key]),
                     "site-calibrated (cross-fitted)": interval(site["cross_fitted"]["figures"][key])})
    return pd.DataFrame(rows)


def fit_caption(fit: dict, site: dict) -> str:
    counts = {name: c["included"] for name, c in site["counts"].items()}
    return (f"Fitted on {sum(counts.values())} films ({counts['NORMAL']} NORMAL, {counts['PNEUMONIA']} PNEUMONIA): "
            f"operating threshold {fit['threshold']:.3f}; {site['folds']} folds by "
            f"{site['cross_fitted']['clusters']} for the figures.")


def default_run_name(run_id: str, when: _dt.datetime | None = None) -> str:
    when = when or _dt.datetime.now(_dt.timezone.utc)
    return f"{run_id}-site-{when.strftime('%Y%m%d-%H%M')}"


def reliability_block(report: dict) -> dict:
    """The report's reliability bins as compare_view.reliability_figure reads a calibration block."""
    return {"bins": report["reliability"], "ece": report["figures"]["ece"]["estimate"]}


def report_zip(folder: str | Path) -> bytes:
    """The report folder as one zip (JSON, CSV, figures, PDF)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(Path(folder).iterdir()):
            if path.is_file() and not path.name.startswith("."):
                zf.write(path, path.name)
    return buf.getvalue()
