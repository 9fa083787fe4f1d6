"""The Dataset page's tables and figures, shaped from `data.dataset_stats` (no Streamlit here)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from app.common import CLASS_COLOURS


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
