"""Small pure helpers the dashboard's pages share: formatting, figures, tables, downloads.

No Streamlit here (pages stay layout only, and these are testable without a browser). Plotly
figures are built from what the library returns. TensorFlow is never imported by this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from xray_core.runs import MODEL_FILE, Run

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


# Compare's tables and figures live in app/compare_view.py, Diagnose's words in app/diagnose_view.py.


# -------------------------------------------------------------------------------------- formats


def format_seconds(seconds: float | None) -> str:
    """12 s, 3 min 05 s, 1 h 02 min: how long, readably ("–" when unknown)."""
    from xray_core.download import format_duration

    if seconds is None or not np.isfinite(seconds):
        return "–"
    return format_duration(float(seconds))


# ------------------------------------------------------------------------------------ run lists


def usable_runs(infos: Iterable[Any]) -> list:
    """Completed runs that have a model file: `default` first, then the newest first."""
    done = [r for r in infos if r.state == "completed" and (Path(r.path) / MODEL_FILE).is_file()]
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
        hist = Run(info.path).history
        if "seconds" in hist:
            seconds += hist["seconds"].dropna().tolist()
    return float(np.median(seconds)) if seconds else None

