"""Compare: training health, learning curves, metrics (plain and stress), paired evidence that one
run beats another, the original study's figures set right, calibration, ROC curves and confusion matrices.

Layout only: tables, figures and wording come from app.compare_view; the statistics from
xray_core.comparison. Nothing here writes into a run folder: test-split scores go to the cache.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from app import common
from app import compare_view as view
from app.entry import require_entry
from xray_core import comparison, data, fileio, runs

require_entry()  # first: no page runs unless streamlit_app.py ran first (app/entry.py)


def mtime(path: Path) -> float:
    return path.stat().st_mtime if path.exists() else 0.0


@st.cache_data(show_spinner=False, max_entries=64)
def history(path: str, stamp: float) -> pd.DataFrame:
    """history.csv of a run; `stamp` (its mtime) refreshes it when an epoch is added."""
    return runs.Run(Path(path)).history


@st.cache_data(show_spinner=False, max_entries=64)
def saved_scores(path: str, stamp: float) -> pd.DataFrame | None:
    """predictions_validation.csv of a run (path, label, score), or None."""
    return view.read_scores(runs.Run(Path(path)), "validation")


@st.cache_data(show_spinner=False, max_entries=64)
def plain_ci(path: str, stamp: float, threshold: float) -> dict | None:
    frame = saved_scores(path, stamp)
    if frame is None:
        return None
    return view.plain_ci(frame["label"].to_numpy(), frame["score"].to_numpy(), threshold=threshold)


@st.cache_data(show_spinner=False, max_entries=32)
def paired(path_a: str, stamp_a: float, path_b: str, stamp_b: float) -> dict:
    """The paired comparison of two runs, or {"error": sentence} when they are not comparable."""
    a, b = runs.Run(Path(path_a)), runs.Run(Path(path_b))
    fa, fb = saved_scores(path_a, stamp_a), saved_scores(path_b, stamp_b)
    for info, frame in ((a, fa), (b, fb)):
        if frame is None:
            return {"error": f"{info.run_id} has no saved validation scores (predictions_validation.csv), "
                             "so it cannot be compared image by image."}
    try:
        return view.pair_comparison(a, b, fa, fb)
    except comparison.NotComparable as exc:
        return {"error": str(exc)}


def dataset_root() -> str | None:
    """The sidebar's dataset folder when it exists and has the expected layout."""
    folder = common.resolve_folder(st.session_state.get("data_dir", "data/chest_xray"))
    try:
        return str(data.find_dataset(folder))
    except (data.DatasetLayoutError, FileNotFoundError):
        return None


def has_test(root: str | None) -> bool:
    return bool(root) and any(p.is_dir() and p.name.lower() == "test" for p in Path(root).iterdir())


def cached(info, root: str) -> bool:
    """Whether the run's test-split scores are cached (False for a run that cannot load: the scoring
    below says why)."""
    try:
        return view.cache_file(info, root, fileio.default_cache_dir()).is_file()
    except (ValueError, OSError):
        return False


def test_parts(chosen: list, root: str) -> dict[str, dict]:
    """Test-split figures of each run at its threshold, from scores cached outside the run folder."""
    parts = {}
    pending = [r for r in chosen if not cached(r, root)]
    bar = st.progress(0.0, text="Scoring the test split…") if pending else None
    for i, info in enumerate(chosen):
        if bar is not None:
            bar.progress(i / len(chosen), text=f"Scoring {info.run_id} on the test split…")
        try:
            frame = view.score_test_split(info, root, fileio.default_cache_dir())
            parts[info.run_id] = view.metrics_from_scores(frame, threshold=view.threshold_of(info))
        except (ValueError, FileNotFoundError, OSError) as exc:
            st.warning(f"{info.run_id} could not be scored on the test split: {exc}")
    if bar is not None:
        bar.empty()
    return parts


def show_table(table: pd.DataFrame, split_name: str) -> None:
    if table.empty:
        st.info(f"No metrics on {split_name} yet.")
        return
    st.dataframe(view.style_best(table), hide_index=True, key=f"compare_table_{split_name}")
    st.download_button(f"Download the {split_name} table (CSV)", table.to_csv(index=False),
                       file_name=f"runs-{split_name}.csv", mime="text/csv",
                       key=f"compare_csv_{split_name}")


st.title("Compare runs")
st.caption("Each run is measured on its own validation films: "
           "training-hospital patients kept out of its training (Kermany et al. 2018, CC BY 4.0), or, for a "
           "site-calibrated run, its site's films, cross-fitted.")
models = common.resolve_folder(st.session_state.get("models_dir", "trained_models"))
completed = [r for r in runs.list_runs(models) if r.state == "completed"]
if not completed:
    st.info(f"No completed run in {models} yet. Start one on the Train page.")
    st.stop()

labels = {r.run_id: common.run_label(r) for r in completed}
ids = st.multiselect("Runs", list(labels), default=list(labels), format_func=labels.get,
                     key="compare_runs")
chosen = [r for r in completed if r.run_id in ids]
if not chosen:
    st.info("Choose at least one run.")
    st.stop()
stamps = {r.run_id: mtime(runs.predictions_path(r.path, "validation")) for r in chosen}

st.subheader("Training health")
warnings = view.health_rows(chosen, {
    r.run_id: (frame["label"].to_numpy(), frame["score"].to_numpy())
    for r in chosen if (frame := saved_scores(str(r.path), stamps[r.run_id])) is not None})
if warnings.empty:
    st.success("No training-health warning for these runs (no NaN loss, no collapse onto one class, "
               "no chance-level AUC, no stalled or diverging loss).")
else:
    st.warning(f"{len(warnings)} training-health warning(s): read them before trusting those runs.")
    st.dataframe(warnings, hide_index=True, key="compare_health")

st.subheader("Learning curves")
histories = {r.run_id: history(str(r.path), mtime(Path(r.path) / runs.HISTORY_FILE))
             for r in chosen if (Path(r.path) / runs.HISTORY_FILE).is_file()}
if histories:
    st.plotly_chart(view.learning_curves_figure(histories), key="compare_curves")

root = dataset_root()
st.subheader("Metrics at each run's operating threshold")
st.caption("Best value per column in bold on green. The original study's recall is the figure it "
           "reported: close to accuracy, not sensitivity.")
show_table(view.metrics_table(chosen, "validation"), "validation")
if has_test(root):
    # Scoring every run on the test split takes a while: only when asked (then cached).
    if st.toggle("Also on the dataset's test split", key="compare_show_test",
                 help="Scored once per model into the cache folder; the run folders are not changed."):
        show_table(view.metrics_table(chosen, "test", parts=test_parts(chosen, root)), "test")

st.subheader("Plain and stress validation")
cis = {}
for r in chosen:
    ci = plain_ci(str(r.path), stamps[r.run_id], view.threshold_of(r))
    if ci is not None:
        cis[r.run_id] = ci
st.caption("Plain: the validation films as they are. Stress: the same films under fixed acquisition "
           "changes (framing, body habitus, exposure, sharpness), all together and the one that hurts most. "
           "In brackets: 95 % intervals.")
st.dataframe(view.plain_stress_table(chosen, cis), hide_index=True, key="compare_stress")
missing = view.stress_missing(chosen)
if missing:
    st.caption(f"No stress validation yet for {', '.join(missing)}: run "
               "`python -m xray_core evaluate RUN --stress` to add it.")

st.subheader("Is one run better than another?")
st.caption("Paired tests on the same validation films (DeLong for the AUC, McNemar for the mistakes, "
           "bootstrap 95 % intervals). With many pairs, some small p-values arise by chance.")
if len(chosen) < 2:
    st.info("Choose two runs above to compare them.")
else:
    pick = st.columns(2)
    names = [r.run_id for r in chosen]
    # Start with the first two runs that have saved validation scores (a fresh clone's default
    # run has none: its scores are not shipped).
    scored = [i for i, r in enumerate(chosen) if saved_scores(str(r.path), stamps[r.run_id]) is not None]
    first, second = (scored + [i for i in range(len(names)) if i not in scored])[:2]
    name_a = pick[0].selectbox("Run A", names, index=first, key="compare_pair_a")
    name_b = pick[1].selectbox("Run B", names, index=second, key="compare_pair_b")
    if name_a == name_b:
        st.info("Choose two different runs.")
    else:
        info_a = next(r for r in chosen if r.run_id == name_a)
        info_b = next(r for r in chosen if r.run_id == name_b)
        result = paired(str(info_a.path), stamps[name_a], str(info_b.path), stamps[name_b])
        if "error" in result:
            st.warning(f"Not comparable: {result['error']}")
        else:
            st.dataframe(view.pair_rows(result, name_a=name_a, name_b=name_b), hide_index=True,
                         key="compare_pair_table")
            for sentence in comparison.reading(result, name_a=name_a, name_b=name_b):
                st.markdown(f"- {sentence}")
            st.caption(f"{result['n']} validation images ({result['n_pneumonia']} pneumonia, "
                       f"{result['n_normal']} normal); thresholds {result['threshold_a']:.3f} ({name_a}) and "
                       f"{result['threshold_b']:.3f} ({name_b}).")

seed_table = view.seed_reconciler(chosen)
if not seed_table.empty:
    st.subheader("The original study's figures, set right")
    st.caption(view.SEED_RECONCILER_NOTE)
    st.dataframe(seed_table, hide_index=True, key="compare_seed")

calibrations = {r.run_id: block for r in chosen if (block := view.calibration_of(r)) is not None}
if calibrations:
    st.subheader("Calibration")
    st.caption("Points on the diagonal: a predicted 80 % means pneumonia in 80 % of such films. "
               "ECE: the average gap, weighted by the images in each bin.")
    st.plotly_chart(view.reliability_figure(calibrations), key="compare_reliability")

st.subheader("ROC curves")
test_ok = has_test(root)
split = (st.radio("Split", ["validation", "test"], horizontal=True, key="compare_roc_split")
         if test_ok else "validation")
curves, parts = {}, {}
for info in chosen:
    try:
        if split == "validation":
            frame = saved_scores(str(info.path), stamps[info.run_id])
        else:
            frame = view.score_test_split(info, root, fileio.default_cache_dir())
        if frame is None:
            st.caption(f"No saved validation scores for {info.run_id}, so no ROC curve.")
            continue
        fpr, tpr, auc = view.roc_curve(frame["label"].to_numpy(), frame["score"].to_numpy())
    except (ValueError, FileNotFoundError, OSError) as exc:
        st.warning(f"No ROC curve for {info.run_id}: {exc}")
        continue
    curves[info.run_id] = (fpr, tpr, auc)
    if split == "validation":
        parts[info.run_id] = (info.metrics or {}).get("validation")
    else:
        parts[info.run_id] = view.metrics_from_scores(frame, threshold=view.threshold_of(info))
if curves:
    st.plotly_chart(view.roc_figure(curves, f"ROC on {split}"), key="compare_roc")

st.subheader("Confusion matrices")
st.caption("At each run's operating threshold.")
shown = [r for r in chosen if parts.get(r.run_id)]
if shown:
    cols = st.columns(min(4, len(shown)))
    for i, info in enumerate(shown):
        cols[i % len(cols)].plotly_chart(view.confusion_figure(parts[info.run_id], f"{info.run_id} · {split}"),
                                         key=f"compare_cm_{info.run_id}")
