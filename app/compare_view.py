"""What the Compare page shows, shaped for it: tables, figures and sentences (no Streamlit here).

The library (`xray_core`) computes; this module words and draws. Everything reads what a run
folder holds (metrics.json, history.csv, predictions_validation.csv, status.json) and writes
nothing into it: derived results (test-split scores) go to a cache folder outside the run.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from xray_core import case, comparison, health, metrics, runs

RUN_COLOURS = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
]

# The seed notebook's printed validation "recall" (Keras Recall() micro-averaged over both one-hot
# columns, on its leaky image-level 25 % split) and holdout recall (official test split), from
# shared/seed/NOTES.md sections 2 and 4. Model 3's README figure of 95.39 % was precision; its
# printed recall was 94.88 %.
SEED_FIGURES = {
    "baseline": {"val_recall": 0.9702, "holdout_recall": None},
    "model2": {"val_recall": 0.9717, "holdout_recall": None},
    "model3": {"val_recall": 0.9488, "holdout_recall": 0.8830},
    "model4": {"val_recall": 0.9763, "holdout_recall": 0.8478},
}


def _num(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _interval(estimate: Any, low: Any, high: Any) -> str:
    e, lo, hi = _num(estimate), _num(low), _num(high)
    if e is None:
        return "–"
    if lo is None or hi is None:
        return f"{e:.3f}"
    return f"{e:.3f} ({lo:.3f}-{hi:.3f})"


# ------------------------------------------------------------------------------ learning curves

CURVE_METRICS = ("loss", "sensitivity", "specificity", "precision", "auc")
CURVE_TITLES = {"loss": "Loss", "sensitivity": "Sensitivity", "specificity": "Specificity",
                "precision": "Precision", "auc": "ROC AUC"}


def learning_curves_figure(histories: dict[str, pd.DataFrame], metrics=CURVE_METRICS):
    """Every metric for several runs in one figure with one legend: a colour per run (one legend
    entry each, which shows or hides the run in every panel), training dashed, validation solid
    (two grey legend entries say so). Runs without a history (a recalibrated run) are left out."""
    from plotly.subplots import make_subplots

    cols = 3
    rows = -(-len(metrics) // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[CURVE_TITLES.get(m, m) for m in metrics],
                        horizontal_spacing=0.06, vertical_spacing=0.14)
    for i, (run_id, hist) in enumerate(histories.items()):
        if hist is None or hist.empty or "epoch" not in hist:
            continue
        colour = RUN_COLOURS[i % len(RUN_COLOURS)]
        shown = False
        for k, metric in enumerate(metrics):
            for column, dash in ((metric, "dash"), (f"val_{metric}", "solid")):
                if column not in hist:
                    continue
                fig.add_scatter(x=hist["epoch"], y=hist[column], mode="lines", name=run_id, legendgroup=run_id,
                                showlegend=not shown, line=dict(color=colour, dash=dash),
                                hovertemplate=f"{run_id} {'training' if dash == 'dash' else 'validation'}"
                                              " %{y:.3f}, epoch %{x}<extra></extra>",
                                row=k // cols + 1, col=k % cols + 1)
                shown = True
    for dash, label in (("dash", "training"), ("solid", "validation")):
        fig.add_scatter(x=[None], y=[None], mode="lines", name=label, legendgroup=f"style-{label}",
                        line=dict(color="#888888", dash=dash), row=1, col=1)
    fig.update_layout(height=300 * rows, margin=dict(t=40, b=30, l=40, r=10), legend=dict(font=dict(size=11)))
    fig.update_xaxes(title_text="epoch")
    return fig


# ------------------------------------------------------------------------------ metrics tables

# (column label, key in the metrics dict, which is better)
METRIC_COLUMNS = (
    ("sensitivity", "sensitivity", "max"),
    ("specificity", "specificity", "max"),
    ("precision", "precision", "max"),
    ("accuracy", "accuracy", "max"),
    ("F1", "f1", "max"),
    ("ROC AUC", "roc_auc", "max"),
    ("operating threshold", "threshold", None),
)


def metrics_table(infos: Iterable[Any], split: str = "validation",
                  parts: dict[str, dict] | None = None) -> pd.DataFrame:
    """One row per run with a split's metrics and the run's cost, from metrics.json.

    parts: {run_id: metrics dict} to use instead of metrics.json's entry (e.g. test-split figures
    computed into the cache). Runs without figures for that split are left out. The original
    study's micro-averaged two-column recall keeps its own name: it is close to accuracy, not
    sensitivity.
    """
    rows = []
    for run in infos:
        saved = run.metrics or {}
        part = (parts or {}).get(run.run_id, saved.get(split))
        if not isinstance(part, dict):
            continue
        config = run.config or {}
        row = {"run": run.run_id, "architecture": config.get("arch", "")}
        for label, key, _ in METRIC_COLUMNS:
            row[label] = part.get(key, saved.get(key) if key == "threshold" else None)
        micro = part.get("seed_micro_recall")
        if micro is None and split == "validation":
            micro = saved.get("seed_micro_recall")
        row["original study's recall (micro-averaged)"] = micro
        row["training time (s)"] = saved.get("train_seconds")
        row["parameters"] = saved.get("params")
        epochs = saved.get("epochs_run")  # a list for an ensemble: one count per member
        row["epochs"] = ", ".join(str(e) for e in epochs) if isinstance(epochs, list) else (
            None if epochs is None else str(epochs))
        row["images"] = part.get("n")
        rows.append(row)
    return pd.DataFrame(rows)


def best_rows(table: pd.DataFrame) -> dict[str, list[int]]:
    """For each column with a 'better' direction, the positional rows holding the best value."""
    best = {}
    directions = {label: how for label, _, how in METRIC_COLUMNS}
    directions["original study's recall (micro-averaged)"] = "max"
    directions["training time (s)"] = "min"
    for column, how in directions.items():
        if how is None or column not in table or table[column].isna().all():
            continue
        values = pd.to_numeric(table[column], errors="coerce")
        target = values.max() if how == "max" else values.min()
        best[column] = [i for i, v in enumerate(values) if np.isclose(v, target)]
    return best


def style_best(table: pd.DataFrame):
    """A pandas Styler that marks the best value of each column in bold on green."""
    best = best_rows(table)

    def mark(column: pd.Series):
        rows = best.get(column.name, [])
        return ["font-weight: bold; background-color: rgba(46, 160, 67, 0.25)" if i in rows else ""
                for i in range(len(column))]

    fmt = {c: "{:.3f}" for c in table.columns
           if c in {label for label, _, _ in METRIC_COLUMNS} | {"original study's recall (micro-averaged)"}}
    fmt["training time (s)"] = "{:.1f}"
    return table.style.apply(mark, axis=0).format(fmt, na_rep="–")


# ------------------------------------------------------------------------------ plain vs stress


def plain_ci(y_true, y_score, *, threshold: float, n_boot: int = 1000) -> dict:
    """Bootstrap 95 % intervals of the plain validation figures (resampling within each class)."""
    return comparison.bootstrap_intervals(y_true, y_score, threshold=threshold, n_boot=n_boot)


def roc_curve(y_true, y_score) -> tuple[np.ndarray, np.ndarray, float]:
    """(false positive rates, true positive rates, AUC) over every distinct score, numpy only."""
    y = np.asarray(y_true, dtype=int)
    s = np.asarray(y_score, dtype=np.float64)
    if y.min() == y.max():
        raise ValueError("an ROC curve needs both NORMAL and PNEUMONIA images.")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # the last image of each distinct score
    tps, fps = np.cumsum(y)[last], np.cumsum(1 - y)[last]
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    return fpr, tpr, float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def plain_stress_table(infos: Iterable[Any], plain_cis: dict[str, dict] | None = None) -> pd.DataFrame:
    """One row per run: plain validation figures (95 % intervals where known) beside the stress
    validation's pooled figures and worst single change, read from metrics.json's "stress" block.

    plain_cis: {run_id: metrics.bootstrap_ci result} computed from the run's validation scores.
    """
    rows = []
    for run in infos:
        saved = run.metrics or {}
        plain = saved.get("validation") or {}
        ci = (plain_cis or {}).get(run.run_id) or saved.get("validation_ci95") or {}
        stress = saved.get("stress") if isinstance(saved.get("stress"), dict) else {}
        pooled = stress.get("pooled") or {}
        pooled_ci = stress.get("pooled_ci95") or {}
        summary = stress.get("summary") or {}
        row = {"run": run.run_id}
        for key, label in (("roc_auc", "AUC"), ("sensitivity", "sensitivity"), ("specificity", "specificity")):
            c = ci.get(key) or {}
            row[f"plain {label}"] = _interval(plain.get(key), c.get("low"), c.get("high"))
        for key, label in (("roc_auc", "AUC"), ("sensitivity", "sensitivity"), ("specificity", "specificity")):
            c = pooled_ci.get(key) or {}
            row[f"stress {label}"] = _interval(pooled.get(key), c.get("low"), c.get("high")) if pooled else "–"
        worst = summary.get("specificity") or {}
        row["stress worst specificity"] = (f"{worst['worst']:.3f} ({worst.get('worst_change', '?')})"
                                           if _num(worst.get("worst")) is not None else "–")
        row["threshold"] = _num(saved.get("threshold"))
        rows.append(row)
    return pd.DataFrame(rows)


def stress_missing(infos: Iterable[Any]) -> list[str]:
    """Runs whose metrics.json has no stress block yet."""
    return [r.run_id for r in infos if not isinstance((r.metrics or {}).get("stress"), dict)]


# ------------------------------------------------------------------------------ calibration


def calibration_of(info: Any) -> dict | None:
    """metrics.json's "calibration" block when it is well formed, else None."""
    block = (info.metrics or {}).get("calibration")
    if not isinstance(block, dict) or not isinstance(block.get("bins"), list):
        return None
    return block


def reliability_figure(calibrations: dict[str, dict]):
    """Reliability diagram: mean predicted P(pneumonia) against the observed share of pneumonia
    per bin, one line per run (legend with its ECE), and the diagonal of perfect calibration."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                    line=dict(color="#aaaaaa", dash="dot"))
    for i, (run_id, block) in enumerate(calibrations.items()):
        bins = [b for b in block["bins"] if isinstance(b, dict) and b.get("n")]
        ece = _num(block.get("ece"))
        name = run_id if ece is None else f"{run_id} (ECE {ece:.3f})"
        fig.add_scatter(x=[b["mean_pred"] for b in bins], y=[b["frac_pos"] for b in bins],
                        mode="lines+markers", name=name,
                        text=[f"{b['n']} images" for b in bins],
                        line=dict(color=RUN_COLOURS[i % len(RUN_COLOURS)]))
    fig.update_layout(title="Reliability diagram", xaxis_title="mean predicted P(pneumonia)",
                      yaxis_title="observed share with pneumonia", height=420,
                      margin=dict(t=40, b=40, l=50, r=10))
    fig.update_xaxes(range=[0, 1])
    fig.update_yaxes(range=[0, 1.02])
    return fig


# ------------------------------------------------------------------------------ health


def health_rows(infos: Iterable[Any], scores: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> pd.DataFrame:
    """Training-health warnings per run: those the training wrote to status.json, plus, for a
    finished run without any, a check of its saved history and validation scores (so a run whose
    status.json holds none, such as a bundled run, is checked too)."""
    rows = []
    for info in infos:
        found = health.from_status(info.status)
        if not found:
            history = runs.Run(Path(info.path)).history
            pair = (scores or {}).get(info.run_id)
            found = health.assess(history, val_scores=None if pair is None else pair[1],
                                  threshold=threshold_of(info)) if not history.empty else []
        for w in found:
            rows.append({"run": info.run_id, "epoch": w.epoch, "severity": w.severity,
                         "finding": w.message, "suggestion": w.suggestion})
    return pd.DataFrame(rows, columns=["run", "epoch", "severity", "finding", "suggestion"])


# ------------------------------------------------------------------------------ seed reconciler


def seed_reconciler(infos: Iterable[Any]) -> pd.DataFrame:
    """For runs of the seed's architectures: the seed's micro-averaged "recall" computed on this
    project's validation split, beside what a clinician needs (sensitivity, specificity,
    accuracy at the seed's 0.5 cut and at the run's threshold) and the seed's printed figures."""
    rows = []
    for info in infos:
        arch = (info.config or {}).get("arch")
        if arch not in SEED_FIGURES:
            continue
        saved = info.metrics or {}
        at05 = saved.get("validation_at_0.5") or {}
        op = saved.get("validation") or {}
        seed = SEED_FIGURES[arch]
        rows.append({
            "run": info.run_id,
            "the study's 'recall' (micro-averaged, 0.5)": _num(saved.get("seed_micro_recall")),
            "accuracy @0.5": _num(at05.get("accuracy")),
            "sensitivity @0.5": _num(at05.get("sensitivity")),
            "specificity @0.5": _num(at05.get("specificity")),
            "sensitivity @threshold": _num(op.get("sensitivity")),
            "specificity @threshold": _num(op.get("specificity")),
            "as the study printed: validation 'recall'": seed["val_recall"],
            "as the study printed: test 'recall'": seed["holdout_recall"],
        })
    return pd.DataFrame(rows)


SEED_RECONCILER_NOTE = (
    "The original study reported a \"recall\" that is the share of films, NORMAL and PNEUMONIA "
    "alike, called right at 0.5: it tracks accuracy, not pneumonia sensitivity, and says nothing "
    "about how many healthy children are called PNEUMONIA. Its own figures came from a split that "
    "put films of one patient on both sides, so they are optimistic."
)


# ------------------------------------------------------------------------------ paired evidence


def read_scores(info: Any, split: str = "validation") -> pd.DataFrame | None:
    """A run's per-image scores (path, label, score) from predictions_<split>.csv, or None."""
    path = runs.predictions_path(info.path, split)
    if not path.is_file():
        return None
    frame = pd.read_csv(path)
    return frame if {"path", "label", "score"} <= set(frame.columns) else None


def threshold_of(info: Any) -> float:
    value = _num((info.metrics or {}).get("threshold"))
    return 0.5 if value is None else value


def pair_comparison(info_a: Any, info_b: Any, frame_a: pd.DataFrame, frame_b: pd.DataFrame,
                    *, n_boot: int = 1000) -> dict:
    """compare() of two runs on their shared validation images; raises comparison.NotComparable."""
    y, sa, sb = comparison.align(frame_a, frame_b, name_a=info_a.run_id, name_b=info_b.run_id)
    return comparison.compare(y, sa, sb, threshold_a=threshold_of(info_a), threshold_b=threshold_of(info_b),
                              n_boot=n_boot)


def pair_rows(result: dict, *, name_a: str, name_b: str) -> pd.DataFrame:
    """The paired comparison as a table: AUC, sensitivity, specificity with intervals, the
    difference and its test; the verdicts' McNemar test on its own row."""
    boot = result["bootstrap"]
    pct = int(round(boot["level"] * 100))
    diff_col = f"{name_a} minus {name_b} ({pct} % CI)"
    rows = []
    for key, label in (("roc_auc", "ROC AUC"), ("sensitivity", "sensitivity at own threshold"),
                       ("specificity", "specificity at own threshold")):
        part = boot[key]
        d = part["difference"]
        rows.append({
            "figure": label,
            name_a: _interval(part["a"]["estimate"], part["a"]["low"], part["a"]["high"]),
            name_b: _interval(part["b"]["estimate"], part["b"]["low"], part["b"]["high"]),
            diff_col: f"{d['estimate']:+.3f} ({d['low']:+.3f} to {d['high']:+.3f})",
            "p-value": result["delong"]["p_value"] if key == "roc_auc" else None,
            "test": "DeLong" if key == "roc_auc" else "paired bootstrap interval only",
        })
    mc = result["mcnemar"]
    rows.append({
        "figure": "mistakes at own threshold",
        name_a: f"right where {name_b} is wrong: {mc['a_right_b_wrong']}",
        name_b: f"right where {name_a} is wrong: {mc['a_wrong_b_right']}",
        diff_col: "",
        "p-value": mc["p_value"],
        "test": f"McNemar, {mc['method']}",
    })
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------ ROC, confusion


def roc_figure(curves: dict[str, tuple[np.ndarray, np.ndarray, float | None]], title: str):
    """Overlaid ROC curves: {run_id: (fpr, tpr, auc)} with the chance diagonal."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance",
                    line=dict(color="#aaaaaa", dash="dot"))
    for i, (run_id, (fpr, tpr, auc)) in enumerate(curves.items()):
        label = run_id if auc is None else f"{run_id} (AUC {auc:.3f})"
        fig.add_scatter(x=list(fpr), y=list(tpr), mode="lines", name=label,
                        line=dict(color=RUN_COLOURS[i % len(RUN_COLOURS)]))
    fig.update_layout(title=title, xaxis_title="1 - specificity (false positive rate)",
                      yaxis_title="sensitivity (true positive rate)", height=420,
                      margin=dict(t=40, b=40, l=50, r=10))
    fig.update_xaxes(range=[0, 1])
    fig.update_yaxes(range=[0, 1.02])
    return fig


def confusion_figure(part: dict, title: str):
    """A 2x2 confusion matrix (rows: true class, columns: predicted) from tn/fp/fn/tp."""
    import plotly.graph_objects as go

    z = [[part.get("tn", 0), part.get("fp", 0)], [part.get("fn", 0), part.get("tp", 0)]]
    fig = go.Figure(go.Heatmap(
        z=z, x=["predicted NORMAL", "predicted PNEUMONIA"], y=["NORMAL", "PNEUMONIA"],
        text=[[str(v) for v in row] for row in z], texttemplate="%{text}", colorscale="Blues",
        showscale=False,
    ))
    fig.update_layout(title=title, height=260, margin=dict(t=40, b=20, l=20, r=10))
    fig.update_yaxes(autorange="reversed", title="true")
    return fig


# ------------------------------------------------------------------------------ test split (cached)


def cache_file(info: Any, data_root: str | Path, cache_dir: str | Path) -> Path:
    """Where a run's scores on the test split live in the cache: keyed by run folder, what the
    model answers with (Model.fingerprint: its model.json and network files, a recalibrated run's
    own calibration included) and dataset folder, so a retrained or recalibrated model or another
    dataset gets its own file."""
    from xray_core.model import load_model

    stamp = load_model(info.path).fingerprint
    key = hashlib.sha256(f"{Path(info.path).resolve()}|{stamp}|{Path(data_root).resolve()}|test".encode()
                         ).hexdigest()[:16]
    return Path(cache_dir) / "compare" / f"{info.run_id}-test-{key}.csv"


def score_test_split(info: Any, data_root: str | Path, cache_dir: str | Path, *, progress=None) -> pd.DataFrame:
    """Scores of a run on the dataset's test folder (path, label, score), computed once into the
    cache folder and never into the run folder. (Validation scores are the run's own,
    predictions_validation.csv: `read_scores`.)"""
    from xray_core import data
    from xray_core.fileio import atomic_write_text
    from xray_core.model import load_model

    target = cache_file(info, data_root, cache_dir)
    if target.is_file():
        return pd.read_csv(target)
    df = data.index_dataset(data_root)
    rows = df[df["split"] == "test"]
    if len(rows) == 0:
        raise data.DatasetLayoutError(f"{data_root} has no test images to evaluate on.")
    model = load_model(info.path)
    loaded = data.load_images(rows["path"].tolist(), size=model.input_size, channels=model.channels,
                              progress=progress)
    y = rows["label"].to_numpy()[loaded.ok].astype(int)
    if len(y) == 0:
        raise ValueError(f"None of the {len(rows)} test images could be read.")
    scores = [a.probability for a in case.assess_prepared(model, loaded.images, rows["path"].to_numpy()[loaded.ok])]
    base = Path(data_root).absolute()
    paths = []
    for p in rows["path"].to_numpy()[loaded.ok]:
        p = Path(p).absolute()
        paths.append(p.relative_to(base).as_posix() if p.is_relative_to(base) else str(p))
    frame = pd.DataFrame({"path": paths, "label": y, "score": np.asarray(scores, dtype=np.float64)})
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, frame.to_csv(index=False))
    return frame


def metrics_from_scores(frame: pd.DataFrame, *, threshold: float) -> dict:
    """binary_metrics of a scores frame at a threshold, with its image count."""
    return dict(metrics.binary_metrics(frame["label"].to_numpy(dtype=int), frame["score"].to_numpy(dtype=float),
                                       threshold=threshold), threshold=threshold, n=int(len(frame)))
