"""Compare: learning curves, metrics on validation and test, ROC curves and confusion matrices."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from xray_core import data, runs, ui


@st.cache_data(show_spinner=False, max_entries=64)
def history(path: str, stamp: float) -> pd.DataFrame:
    """history.csv of a run; `stamp` (its mtime) refreshes it when an epoch is added."""
    return runs.Run(Path(path)).history


@st.cache_resource(show_spinner="Loading the model…", max_entries=8)
def get_run(path: str, stamp: float) -> runs.Run:
    """A run with its model loaded, shared by all sessions and never changed."""
    run = runs.load_run(Path(path))
    _ = run.model
    return run


@st.cache_data(show_spinner=False, max_entries=32)
def roc(path: str, stamp: float, data_root: str, split: str) -> tuple:
    """(fpr, tpr) of a run on a split from its saved scores; `stamp` (the scores file's mtime)
    refreshes it when an evaluation rewrites them."""
    from xray_core import metrics, training

    labels, scores = training.split_scores(runs.Run(Path(path)), split, data_root)
    points = metrics.roc_points(labels, scores)
    return points["fpr"].to_numpy(), points["tpr"].to_numpy()


def mtime(path: Path) -> float:
    return path.stat().st_mtime if path.exists() else 0.0


def test_root() -> str | None:
    """The sidebar's dataset folder when it has a test split (evaluations use it)."""
    folder = ui.resolve_folder(st.session_state.get("data_dir", "data/chest_xray"))
    try:
        root = data.find_dataset(folder)
    except (data.DatasetLayoutError, FileNotFoundError):
        return None
    has_test = any(p.is_dir() and p.name.lower() == "test" for p in root.iterdir())  # any case, as data reads it
    return str(root) if has_test else None


def evaluate_on_test(chosen: list, root: str) -> None:
    """Evaluate each chosen run on the test split once; the result is cached in its metrics.json."""
    from xray_core import training

    missing = [r for r in chosen
               if ((r.metrics or {}).get("test") or {}).get("data_root") != str(Path(root).absolute())]
    if not missing:
        return
    bar = st.progress(0.0, text="Evaluating on the test split…")
    for i, info in enumerate(missing):
        bar.progress(i / len(missing), text=f"Evaluating {info.run_id} on the test split…")
        try:
            training.evaluate_run(get_run(str(info.path), mtime(Path(info.path) / runs.MODEL_FILE)),
                                  root, split="test")
        except ValueError as exc:
            st.warning(f"{info.run_id} could not be evaluated on the test split: {exc}")
    bar.empty()


def show_table(table: pd.DataFrame, split_name: str) -> None:
    if table.empty:
        st.info(f"No metrics on {split_name} yet.")
        return
    st.dataframe(ui.style_best(table), hide_index=True, key=f"compare_table_{split_name}")
    st.download_button(f"Download the {split_name} table (CSV)", table.to_csv(index=False),
                       file_name=f"runs-{split_name}.csv", mime="text/csv",
                       key=f"compare_csv_{split_name}")


st.title("Compare runs")
models = ui.resolve_folder(st.session_state.get("models_dir", "trained_models"))
completed = [r for r in runs.list_runs(models) if r.state == "completed"]
if not completed:
    st.info(f"No completed run in {models} yet. Start one on the Train page.")
    st.stop()

labels = {r.run_id: ui.run_label(r) for r in completed}
ids = st.multiselect("Runs", list(labels), default=list(labels), format_func=labels.get,
                     key="compare_runs")
chosen = [r for r in completed if r.run_id in ids]
if not chosen:
    st.info("Choose at least one run.")
    st.stop()

st.subheader("Learning curves")
st.caption("Dashed: training; solid: validation. One colour per run.")
histories = {r.run_id: history(str(r.path), mtime(Path(r.path) / runs.HISTORY_FILE)) for r in chosen}
cols = st.columns(2)
for i, metric in enumerate(ui.CURVE_METRICS):
    cols[i % 2].plotly_chart(ui.learning_curves_figure(histories, metric), key=f"compare_curve_{metric}")

root = test_root()
if root:
    evaluate_on_test(chosen, root)
    chosen = [r for r in runs.list_runs(models) if r.run_id in ids]

st.subheader("Metrics at each run's operating threshold")
st.caption("Best value per column in bold on green. The seed's micro-averaged recall is the "
           "seed notebook's two-column Keras Recall (close to accuracy, not sensitivity).")
tabs = st.tabs(["Validation", "Test"])
with tabs[0]:
    show_table(ui.metrics_table(chosen, "validation"), "validation")
with tabs[1]:
    if root:
        show_table(ui.metrics_table(chosen, "test"), "test")
    else:
        st.info("The dataset folder has no test split, so there is nothing to evaluate on.")

st.subheader("ROC curves")
split = (st.radio("Split", ["validation", "test"], horizontal=True, key="compare_roc_split")
         if root else "validation")
curves = {}
with st.spinner("Scoring the images…"):
    for info in chosen:
        source = root if split == "test" else (info.config.get("data_root") or root)
        part = (info.metrics or {}).get(split) or {}
        if not source:
            continue
        try:
            fpr, tpr = roc(str(info.path), mtime(runs.predictions_path(info.path, split)), source, split)
        except (ValueError, FileNotFoundError) as exc:
            st.warning(f"No ROC curve for {info.run_id}: {exc}")
            continue
        curves[info.run_id] = (fpr, tpr, part.get("roc_auc"))
if curves:
    st.plotly_chart(ui.roc_figure(curves, f"ROC on {split}"), key="compare_roc")

st.subheader("Confusion matrices")
cols = st.columns(min(4, len(chosen)))
for i, info in enumerate(chosen):
    part = (info.metrics or {}).get(split)
    if part:
        cols[i % len(cols)].plotly_chart(ui.confusion_figure(part, f"{info.run_id} · {split}"),
                                         key=f"compare_cm_{info.run_id}")
