"""Small pure helpers the dashboard's pages share: figures, tables, downloads, the training queue.

No Streamlit here (pages stay layout only, and these are testable without a browser). Plotly
figures are built from what the library returns. TensorFlow is never imported by this module.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

PROJECT_ROOT = Path(__file__).resolve().parents[1]

CLASS_COLOURS = {"NORMAL": "#2E86AB", "PNEUMONIA": "#E4572E"}
SPLIT_ORDER = ["train", "val", "test"]
RUN_COLOURS = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
]


def resolve_folder(text: str | Path) -> Path:
    """A folder typed in the sidebar: relative paths are taken from the project folder, so the
    defaults work whatever directory `streamlit run` was started from."""
    path = Path(str(text).strip()).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


# --------------------------------------------------------------------------------- dataset


def filter_index(df: pd.DataFrame, split: str = "all", class_name: str = "all",
                 pathogen: str = "all") -> pd.DataFrame:
    """The rows of an index that match the sample grid's filters ("all" keeps everything)."""
    keep = pd.Series(True, index=df.index)
    if split != "all":
        keep &= df["split"] == split
    if class_name != "all":
        keep &= df["class_name"] == class_name
    if pathogen != "all":
        keep &= df["pathogen"] == pathogen
    return df[keep]


def shuffled_page(df: pd.DataFrame, seed: int, page: int, per_page: int) -> pd.DataFrame:
    """Page `page` (0-based) of df in an order fixed by seed: the same seed shows the same grid."""
    order = np.random.default_rng(int(seed)).permutation(len(df))
    start = max(0, int(page)) * per_page
    return df.iloc[order[start:start + per_page]]


def n_pages(n_rows: int, per_page: int) -> int:
    return max(1, -(-int(n_rows) // int(per_page)))


def thumbnail(img2d: np.ndarray, max_side: int = 256) -> np.ndarray:
    """A display copy no larger than max_side (aspect kept), so a grid sends little to the browser."""
    from PIL import Image

    h, w = img2d.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale >= 1.0:
        return img2d
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(img2d).resize(size, Image.Resampling.BILINEAR))


def present(values: Iterable[str], order: Iterable[str]) -> list[str]:
    """The items of order that occur in values, in order (e.g. the splits a dataset has)."""
    seen = set(values)
    return [v for v in order if v in seen]


def stats_counts(stats: dict) -> pd.DataFrame:
    """`data.dataset_stats` counts as a split x class table (rows in train, val, test order)."""
    table = pd.DataFrame(stats["counts"]).T.fillna(0).astype(int)
    table.index.name = "split"
    return table


def stats_patients(stats: dict) -> dict:
    return dict(stats.get("patients", {}))


def stats_sizes(stats: dict) -> pd.DataFrame:
    """The most common image sizes (width, height, images) from `dataset_stats`."""
    common = stats.get("image_sizes", {}).get("most_common") or []
    return pd.DataFrame(common, columns=["width", "height", "images"])


def stats_size_summary(stats: dict) -> pd.DataFrame:
    sizes = stats.get("image_sizes", {})
    return pd.DataFrame({k: sizes.get(k, {}) for k in ("width", "height")}).T


def stats_unreadable(stats: dict) -> pd.DataFrame:
    return pd.DataFrame(stats.get("unreadable") or [], columns=["path", "reason"])


def counts_figure(counts: pd.DataFrame, title: str = "Images per split and class"):
    """Grouped bars: one group per split, one bar per class, the count written on each bar."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for class_name in [c for c in counts.columns if c in CLASS_COLOURS]:
        fig.add_bar(x=list(counts.index), y=counts[class_name].tolist(), name=class_name,
                    marker_color=CLASS_COLOURS[class_name], text=counts[class_name].tolist(),
                    textposition="outside")
    fig.update_layout(barmode="group", title=title, yaxis_title="images", height=340,
                      margin=dict(t=50, b=30, l=40, r=10), legend_title_text="class")
    return fig


def bar_figure(values: dict, title: str, yaxis: str, colours: dict | None = None):
    """One bar per key (e.g. patients per class), each labelled with its value."""
    import plotly.graph_objects as go

    keys = list(values)
    fig = go.Figure(go.Bar(
        x=keys, y=[values[k] for k in keys], text=[values[k] for k in keys], textposition="outside",
        marker_color=[(colours or CLASS_COLOURS).get(k, "#888888") for k in keys],
    ))
    fig.update_layout(title=title, yaxis_title=yaxis, height=340, margin=dict(t=50, b=30, l=40, r=10))
    return fig


def sizes_figure(sizes: pd.DataFrame, distinct: int | None = None):
    """Width x height of the most common image sizes, each point sized by how many images share it."""
    import plotly.express as px

    title = "Most common image sizes (pixels, from file headers)"
    if distinct:
        title += f" · {distinct} distinct sizes in all"
    fig = px.scatter(sizes, x="width", y="height", size="images", size_max=40,
                     hover_data=["images"], title=title)
    fig.update_traces(marker=dict(sizemin=7, line=dict(width=1, color="#1f4e79")))
    fig.update_layout(height=360, margin=dict(t=50, b=30, l=40, r=10))
    return fig


# ------------------------------------------------------------------------------ comparing runs

CURVE_METRICS = ("loss", "sensitivity", "specificity", "precision", "auc")
CURVE_TITLES = {"loss": "Loss", "sensitivity": "Sensitivity", "specificity": "Specificity",
                "precision": "Precision", "auc": "ROC AUC"}


def learning_curves_figure(histories: dict[str, pd.DataFrame], metric: str):
    """One metric for several runs: a colour per run, train dashed, validation solid."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, (run_id, hist) in enumerate(histories.items()):
        colour = RUN_COLOURS[i % len(RUN_COLOURS)]
        if hist is None or hist.empty or "epoch" not in hist:
            continue
        for column, dash, label in ((metric, "dash", "train"), (f"val_{metric}", "solid", "validation")):
            if column in hist:
                name = label if len(histories) == 1 else f"{run_id} ({label})"
                fig.add_scatter(x=hist["epoch"], y=hist[column], mode="lines+markers",
                                name=name, legendgroup=run_id,
                                line=dict(color=colour, dash=dash))
    fig.update_layout(title=CURVE_TITLES.get(metric, metric), xaxis_title="epoch", height=360,
                      margin=dict(t=40, b=30, l=40, r=10),
                      legend=dict(font=dict(size=10), orientation="h", yanchor="top", y=-0.25))
    fig.update_xaxes(dtick=1)
    return fig


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


def metrics_table(runs: Iterable[Any], split: str = "validation") -> pd.DataFrame:
    """One row per run (RunInfo or Run) with split's metrics and the run's cost, from metrics.json.

    Runs without metrics for that split are left out. The seed's micro-averaged two-column recall
    is kept under its own name: it is close to accuracy, not to sensitivity.
    """
    rows = []
    for run in runs:
        metrics = run.metrics or {}
        part = metrics.get(split)
        if not isinstance(part, dict):
            continue
        config = run.config or {}
        row = {"run": run.run_id, "architecture": config.get("arch", "")}
        for label, key, _ in METRIC_COLUMNS:
            row[label] = part.get(key, metrics.get(key) if key == "threshold" else None)
        micro = part.get("seed_micro_recall")
        if micro is None and split == "validation":
            micro = metrics.get("seed_micro_recall")
        row["seed micro-averaged recall"] = micro
        row["training time (s)"] = metrics.get("train_seconds")
        row["parameters"] = metrics.get("params")
        row["epochs"] = metrics.get("epochs_run")
        row["images"] = part.get("n")
        rows.append(row)
    return pd.DataFrame(rows)


def best_rows(table: pd.DataFrame) -> dict[str, list[int]]:
    """For each column with a 'better' direction, the positional rows holding the best value."""
    best = {}
    directions = {label: how for label, _, how in METRIC_COLUMNS}
    directions["seed micro-averaged recall"] = "max"
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
           if c in {label for label, _, _ in METRIC_COLUMNS} | {"seed micro-averaged recall"}}
    fmt["training time (s)"] = "{:.1f}"
    return table.style.apply(mark, axis=0).format(fmt, na_rep="–")


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


# ------------------------------------------------------------------------------------- diagnose


def png_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 gray or RGB array as PNG, in memory."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def result_zip(images: dict[str, np.ndarray], summary: dict) -> bytes:
    """A zip of named PNGs plus result.json, built in memory (nothing touches the disk)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in images.items():
            archive.writestr(f"{name}.png", png_bytes(array))
        archive.writestr("result.json", json.dumps(_jsonable(summary), indent=2))
    return buffer.getvalue()


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def format_seconds(seconds: float | None) -> str:
    """12 s, 3 min 05 s, 1 h 02 min: how long, readably."""
    if seconds is None or not np.isfinite(seconds):
        return "–"
    seconds = int(round(float(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def format_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    n = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


# ------------------------------------------------------------------------------------ run lists


def usable_runs(infos: Iterable[Any]) -> list:
    """Completed runs that have a model file: `default` first, then the newest first."""
    done = [r for r in infos if r.state == "completed" and (Path(r.path) / "model.keras").is_file()]
    done.sort(key=lambda r: str((r.config or {}).get("created") or r.run_id), reverse=True)
    done.sort(key=lambda r: r.run_id != "default")
    return done


def run_label(info: Any) -> str:
    """`run id · architecture · validation AUC` for select boxes."""
    parts = [info.run_id]
    arch = (info.config or {}).get("arch")
    if arch:
        parts.append(str(arch))
    auc = ((info.metrics or {}).get("validation") or {}).get("roc_auc")
    if auc is not None:
        parts.append(f"val AUC {auc:.3f}")
    return " · ".join(parts)


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return str(value)


# ------------------------------------------------------------------------------------- diagnose

PANEL_TITLES = {
    "full": "1 · Top superpixels",
    "partial": "2 · Only those superpixels",
    "pros_cons": "3 · Pros and cons",
    "heatmap": "4 · Weight heatmap",
    "gradcam": "Grad-CAM",
}


def panel_help(label_name: str, vmax: float | None = None) -> dict[str, str]:
    """One line per panel on how to read it, worded for the explained label."""
    scale = f" (scale ±{vmax:.3g})" if vmax else ""
    return {
        "full": f"Yellow outlines: the 2 regions that most support {label_name}.",
        "partial": f"Only those 2 regions, the rest blacked out: is the evidence for {label_name} in the lungs?",
        "pros_cons": f"The 5 strongest regions: green supports {label_name}, red argues against it.",
        "heatmap": f"Every region coloured by its weight: blue for {label_name}, red against{scale}.",
        "gradcam": f"Grad-CAM: warm colours where the last convolutional layer saw evidence for {label_name}.",
    }


LIME_PANEL_HELP = panel_help("the answer")


def diagnose(run: Any, img: np.ndarray, explain: Any, *, num_samples: int = 1000,
             segmentation: str = "quickshift", seed: int = 0, progress=None) -> dict:
    """Prediction, the four LIME panels and Grad-CAM for one decoded image, as display data.

    `explain` is the xray_core.explain module, or None where it is not installed (then only the
    prediction). The probability and label come from the same forward pass LIME explains.
    """
    from xray_core.data import CLASSES

    threshold = float(run.threshold)
    settings = {"num_samples": int(num_samples), "segmentation": segmentation, "seed": int(seed)}
    summary: dict[str, Any] = {"run_id": run.run_id, "threshold": threshold, "settings": settings,
                               "image_shape": list(img.shape)}
    panels: dict[str, np.ndarray] = {}
    notes = []
    if explain is None:
        probability = float(run.predict_scores(run.prepare(img)[None])[0])
        label_name = CLASSES[int(probability >= threshold)]
        helps = {}
        notes.append("Explanations are not available: xray_core.explain is not installed.")
    else:
        lime = explain.explain_lime(run, img, progress=progress, **settings)
        cam = explain.grad_cam(run, img, label=lime.label)
        probability = float(lime.probability)
        label_name = CLASSES[lime.predicted_label]
        panels = dict(lime.panels.as_dict()) if lime.panels is not None else {}
        panels["gradcam"] = explain.make_overlay(img, cam.heatmap)
        helps = panel_help(CLASSES[lime.label], lime.legend.vmax)
        summary["lime"] = lime.to_dict()
        summary["gradcam"] = {"layer": cam.layer, "label": cam.label, "seconds": cam.seconds}
        notes.append(
            f"LIME: {lime.n_superpixels} superpixels, {lime.num_samples} samples, "
            f"local fit R² {lime.score:.2f}, {lime.seconds:.1f} s · Grad-CAM layer {cam.layer}."
        )
    summary.update(prediction=label_name, probability_pneumonia=probability)
    return {"run_id": run.run_id, "prediction": label_name, "probability": probability,
            "threshold": threshold, "panels": panels, "panel_help": helps, "notes": notes,
            "summary": summary}


def split_scores(run: Any, data_root: str | Path, split: str = "validation") -> tuple[np.ndarray, np.ndarray]:
    """(labels, pneumonia scores) of a run on its validation split (rebuilt from its config:
    same method, fraction and seed) or on the dataset's test folder, for ROC curves.

    metrics.json keeps only the numbers at the operating threshold, so the curve needs the
    scores again; the image arrays come from the loader's cache after the first time.
    """
    from xray_core import data

    df = data.index_dataset(data_root)
    if split == "validation":
        cfg = run.config.get("split") or {"method": "patient", "val_fraction": 0.2}
        _, rows = data.split_train(df, method=cfg.get("method", "patient"),
                                   val_fraction=cfg.get("val_fraction"), seed=int(run.config.get("seed", 0)))
    else:
        rows = df[df["split"] == split]
    loaded = data.load_images(rows["path"].tolist(), size=run.image_size, channels=run.channels)
    labels = rows["label"].to_numpy()[loaded.ok].astype(int)
    return labels, run.predict_scores(loaded.images, batch_size=256)


# ------------------------------------------------------------------------------ training queue
#
# Trainings started from the dashboard run one at a time. A queued training is a small JSON file
# in <models>/.queue/ (hidden, so the run registry does not list it) holding the `train` command;
# one detached worker process (`python -m xray_core.ui work <models>`), which holds an flock on
# .queue/worker.lock while it lives, starts them in order, each as `python -m xray_core train`.
# Everything is on disk, so a reload, a second tab or a closed browser sees the same jobs, and
# the queue goes on without any page open.

QUEUE_DIR = ".queue"


def _queue(root: str | Path) -> Path:
    return Path(root) / QUEUE_DIR


def train_argv(options: dict) -> list[str]:
    """`python -m xray_core train` arguments from the Train page's settings."""
    argv = ["--arch", str(options["arch"]), "--data", str(options["data"]),
            "--epochs", str(int(options["epochs"])), "--batch-size", str(int(options["batch_size"])),
            "--image-size", str(int(options["image_size"])), "--channels", str(int(options["channels"])),
            "--lr", repr(float(options["learning_rate"])), "--seed", str(int(options["seed"])),
            "--split", options.get("split", "patient"),
            "--class-weight", "balanced" if options.get("class_weight") else "none",
            "--threshold-method", options.get("threshold_method", "sensitivity")]
    if options.get("val_fraction") is not None:
        argv += ["--val-fraction", repr(float(options["val_fraction"]))]
    if options.get("augment"):
        argv.append("--augment")
    if options.get("early_stopping"):
        argv += ["--early-stopping", str(int(options["early_stopping"]))]
    return argv


def submit_training(root: str | Path, options: dict, *, start: bool = True) -> str:
    """Queue one training and make sure a worker runs the queue; returns its run id at once."""
    from xray_core import runs

    root = Path(root)
    queue = _queue(root)
    (queue / "logs").mkdir(parents=True, exist_ok=True)
    run_id = runs.new_run_id(options["arch"], root, create=False)
    while (queue / f"{run_id}.json").exists():
        run_id = runs.new_run_id(options["arch"], root, create=False)
    job = {"run_id": run_id, "argv": train_argv(options), "options": options, "submitted": runs.now_iso()}
    runs.atomic_write_json(queue / f"{run_id}.json", job)
    if start:
        ensure_worker(root)
    return run_id


def queued_jobs(root: str | Path) -> list[dict]:
    """Jobs waiting to start, oldest first."""
    queue = _queue(root)
    if not queue.is_dir():
        return []
    jobs = []
    for path in queue.glob("*.json"):
        if path.name == "current.json":
            continue
        try:
            jobs.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # being written or just removed: it is listed on the next poll
    return sorted(jobs, key=lambda j: (j.get("submitted", ""), j.get("run_id", "")))


def starting_job(root: str | Path) -> dict | None:
    """The job the worker has launched, until its training process has written status.json."""
    path = _queue(root) / "current.json"
    try:
        job = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if (Path(root) / job.get("run_id", "") / "status.json").is_file():
        return None
    return job


def cancel_queued(root: str | Path, run_id: str) -> bool:
    """Take a job off the queue before it starts; False if it has already started."""
    from xray_core import runs

    try:
        (_queue(root) / f"{runs.validate_run_id(run_id)}.json").unlink()
    except FileNotFoundError:
        return False
    return True


def request_stop(run_path: str | Path) -> None:
    """Ask a running training to stop after its current batch (it keeps the model)."""
    from xray_core import runs

    runs.atomic_write_text(Path(run_path) / runs.STOP_FILE, "stop requested from the dashboard\n")


def launch_failure(root: str | Path, run_id: str) -> str | None:
    """Why a job ended before creating its run folder (the tail of its log), or None."""
    logs = _queue(root) / "logs"
    exit_file = logs / f"{run_id}.exit.json"
    if not exit_file.is_file() or (Path(root) / run_id / "status.json").is_file():
        return None
    try:
        code = json.loads(exit_file.read_text()).get("returncode")
        tail = (logs / f"{run_id}.log").read_text(errors="replace").strip().splitlines()[-3:]
    except (OSError, ValueError):
        return None
    return f"exit code {code}: " + " ".join(tail) if code else None


def worker_alive(root: str | Path) -> bool:
    """Whether a queue worker holds the lock (checked with flock, so a dead one never counts)."""
    import fcntl

    lock_path = _queue(root) / "worker.lock"
    if not lock_path.exists():
        return False
    with open(lock_path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


_SPAWNED: list[subprocess.Popen] = []  # workers started by this process, reaped when they end


def ensure_worker(root: str | Path) -> bool:
    """Start a detached worker if jobs wait and none runs; True if one was started.

    The lock is taken here and handed to the worker (an inherited descriptor shares the flock),
    so two pages polling at once can never both start one.
    """
    import fcntl

    _SPAWNED[:] = [p for p in _SPAWNED if p.poll() is None]
    root = Path(root)
    if not queued_jobs(root):
        return False
    logs = _queue(root) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(_queue(root) / "worker.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a worker is running the queue
        with open(logs / "worker.log", "ab") as log:
            _SPAWNED.append(subprocess.Popen(
                [sys.executable, "-m", "xray_core.ui", "work", str(root.absolute()), str(lock.fileno())],
                cwd=PROJECT_ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, env=_child_env(root), pass_fds=(lock.fileno(),),
            ))
    return True


def _child_env(root: Path) -> dict:
    env = dict(os.environ)
    env["XRAY_MODELS_DIR"] = str(root.absolute())
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    return env


def work_queue(root: str | Path, lock_fd: int | None = None) -> int:
    """The worker: run queued trainings one after another until the queue is empty.

    lock_fd: the already locked worker.lock inherited from `ensure_worker`; without it the
    worker takes the lock itself (and leaves at once if another worker holds it).
    """
    import fcntl

    from xray_core import runs

    root = Path(root)
    queue = _queue(root)
    queue.mkdir(parents=True, exist_ok=True)
    if lock_fd is not None:
        lock = os.fdopen(lock_fd, "a")
    else:
        lock = open(queue / "worker.lock", "a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            return 0  # another worker is running the queue
    while True:
        jobs = queued_jobs(root)
        if not jobs:
            # Release, then look once more: a job submitted while we held the lock saw a live
            # worker and started none, so we must not leave it behind.
            fcntl.flock(lock, fcntl.LOCK_UN)
            if not queued_jobs(root):
                lock.close()
                return 0
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                return 0
            continue
        job = jobs[0]
        run_id = job["run_id"]
        try:
            (queue / f"{run_id}.json").unlink()
        except FileNotFoundError:
            continue  # cancelled meanwhile
        runs.atomic_write_json(queue / "current.json", dict(job, started=runs.now_iso()))
        argv = [sys.executable, "-m", "xray_core", "train", *job["argv"],
                "--run-id", run_id, "--runs-dir", str(root.absolute()), "--quiet"]
        with open(queue / "logs" / f"{run_id}.log", "ab") as log:
            code = subprocess.call(argv, cwd=PROJECT_ROOT, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, env=_child_env(root))
        runs.atomic_write_json(queue / "logs" / f"{run_id}.exit.json",
                               {"returncode": code, "ended": runs.now_iso()})
        (queue / "current.json").unlink(missing_ok=True)


def seconds_per_epoch(infos: Iterable[Any], arch: str, image_size: int, channels: int) -> float | None:
    """Median seconds per epoch of this machine's completed runs with the same architecture and
    input, from their history.csv; None when there is none."""
    seconds = []
    for info in infos:
        cfg = info.config or {}
        if (info.state != "completed" or cfg.get("arch") != arch
                or int(cfg.get("image_size") or 0) != int(image_size)
                or int(cfg.get("channels") or 0) != int(channels)):
            continue
        path = Path(info.path) / "history.csv"
        if path.is_file():
            hist = pd.read_csv(path)
            if "seconds" in hist:
                seconds += hist["seconds"].dropna().tolist()
    return float(np.median(seconds)) if seconds else None


if __name__ == "__main__":
    if len(sys.argv) in (3, 4) and sys.argv[1] == "work":
        sys.exit(work_queue(sys.argv[2], int(sys.argv[3]) if len(sys.argv) == 4 else None))
    print("usage: python -m xray_core.ui work MODELS_DIR [LOCK_FD]  (the dashboard's training-queue worker)",
          file=sys.stderr)
    sys.exit(2)
