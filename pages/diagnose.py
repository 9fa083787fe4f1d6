"""Diagnose: one chest X-ray in; first whether the model can read it and its answer, then why.

The verdict (gate, prediction, probability, threshold, prediction set, context) is drawn first,
from one forward pass; the LIME panels and Grad-CAM fill in afterwards in their own fragment.
The upload is decoded from memory and never written to disk; results live in this browser
session only. Models come from `load_model`, one per run shared by every session, never changed.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import streamlit as st

from app import common
from app import diagnose_view as view
from app.entry import require_entry
from xray_core import case, data, explain, imaging, runs
from xray_core.model import load_model

require_entry()  # first: no page runs unless streamlit_app.py ran first (app/entry.py)


@st.cache_data(show_spinner=False)
def dataset_index(root: str) -> pd.DataFrame:
    return data.index_dataset(root)


def pick_run(models: Path):
    """The run select: completed runs with a model; `default` first when present."""
    usable = common.usable_runs(runs.list_runs(models))
    if not usable:
        st.warning(
            f"There is no trained model in {models}. Train one on the Train page, or set the "
            "sidebar's Models folder to a folder that holds one (the bundled model is in "
            "trained_models/default)."
        )
        return None
    ids = [r.run_id for r in usable]
    st.selectbox("Model (run)", ids, index=0, key="diagnose_run",
                 format_func=lambda rid: common.run_label(next(r for r in usable if r.run_id == rid)))
    return next(r for r in usable if r.run_id == st.session_state["diagnose_run"])


def pick_image():
    """(name, raw bytes) from an upload or the dataset; None when nothing is chosen."""
    opened = st.session_state.get("diagnose_open")  # a film opened from the Worklist page
    if opened:
        st.info(f"From the worklist: {opened['name']}")
        if not st.button("Choose another image", key="diagnose_close_worklist"):
            if "data" in opened:  # an uploaded film this session still holds (the server's copy is removed)
                return opened["name"], opened["data"]
            from xray_core import scoring

            return opened["name"], scoring.read_item_bytes(opened["path"])
        del st.session_state["diagnose_open"]
    source = st.radio("Image", ["Upload a file", "Pick from the dataset"], horizontal=True,
                      key="diagnose_source", label_visibility="collapsed")
    if source == "Upload a file":
        uploaded = st.file_uploader(
            "Chest X-ray: PNG, JPEG, BMP, TIFF or DICOM (it stays in memory and is never saved)",
            key="diagnose_upload",
        )
        if uploaded is None:
            return None
        return uploaded.name, uploaded.getvalue()
    folder = common.resolve_folder(st.session_state.get("data_dir", "data/chest_xray"))
    try:
        root = data.find_dataset(folder)
    except (data.DatasetLayoutError, FileNotFoundError) as exc:
        st.info(f"No dataset to pick from: {exc}")
        return None
    index = dataset_index(str(root))
    cols = st.columns([1, 1, 3])
    split = cols[0].selectbox("Split", common.present(index["split"], common.SPLIT_ORDER), key="diagnose_split")
    class_name = cols[1].selectbox("Class", list(data.CLASSES), key="diagnose_class")
    rows = common.filter_index(index, split, class_name)
    if rows.empty:
        st.info("No image in that split and class.")
        return None
    name = cols[2].selectbox("File", sorted(rows["filename"]), key="diagnose_file")
    return name, Path(rows.loc[rows["filename"] == name, "path"].iloc[0]).read_bytes()


def settings() -> dict:
    with st.expander("Explanation settings"):
        cols = st.columns(3)
        samples = cols[0].select_slider("LIME samples", list(explain.LIME_SAMPLE_CHOICES),
                                        value=explain.DEFAULT_LIME["num_samples"], key="diagnose_samples",
                                        help="More samples: steadier weights (fewer near-ties at rank 5), slower.")
        segmentation = cols[1].selectbox("Segmentation", list(explain.SEGMENTATIONS),
                                         index=list(explain.SEGMENTATIONS).index(explain.DEFAULT_LIME["segmentation"]),
                                         key="diagnose_segmentation",
                                         help="How the image is cut into superpixels.")
        seed = cols[2].number_input("Seed", min_value=0, value=0, step=1, key="diagnose_seed",
                                    help="The same seed gives the same explanation.")
    return {"num_samples": int(samples), "segmentation": segmentation, "seed": int(seed)}


def show_verdict(a, metrics: dict) -> bool:
    """Gate, verdict and its context. Returns whether the verdict was shown."""
    shown = a.in_distribution
    if not a.in_distribution:
        st.error(f"**{view.REFUSED_TITLE}.** " + " ".join(view.gate_lines(a)))
        shown = st.toggle(view.SHOW_ANYWAY, key="diagnose_show_anyway")
        if shown:
            st.warning("The model was not made for this image: the output below is shown on request "
                       "and should not be read as a finding.")
    if shown:
        cols = st.columns([1.6, 1.5, 1.3, 1.9])
        for col, (label, value) in zip(cols, view.verdict_metrics(a)):
            col.metric(label, value)
        st.caption(view.uncertainty_caption(a))
        st.caption(view.verdict_caption(a))
        if a.in_distribution and a.gate.warnings:
            st.info(" ".join(view.gate_lines(a)))
    seen = view.seen_caption(a)
    if seen:
        st.warning(seen)
    table = view.dicom_table(a.dicom)
    if table is not None:
        st.dataframe(table, hide_index=True, width="content")
    for line in view.context(metrics):
        st.caption(line)
    return shown


@st.fragment
def explanations(key: tuple, model, a, options: dict, metrics: dict) -> None:
    """LIME and Grad-CAM of P(pneumonia), filled in after the verdict, with the downloads."""
    store = st.session_state.setdefault("diagnose_explained", {})
    if key not in store:
        # A moment for the server's event loop to send the verdict before LIME takes the CPU.
        time.sleep(0.15)
        with st.spinner("Explaining the probability of pneumonia (LIME and Grad-CAM)…"):
            try:
                result = view.explain_film(model, a.image, name=a.name, **options)
            except explain.ExplainError as exc:  # settings this film cannot take, e.g. too few samples
                st.error(f"No explanation with these settings: {exc}")
                return
        store.clear()  # keep only the latest explanation in the session
        store[key] = result
    result = store[key]
    st.subheader("Why: what raises and lowers the probability of pneumonia")
    panels = result["panels"]
    names = list(panels)
    for row in (names[:3], names[3:]):  # three per row: large enough to read
        cols = st.columns(3)
        for col, name in zip(cols, row):
            col.image(panels[name], width="stretch")
            col.markdown(f"**{view.PANEL_TITLES.get(name, name)}**")
            col.caption(result["panel_help"].get(name, ""))
    for note in result["notes"]:
        st.caption(note)
    if "pdf" not in result:  # built once per explanation, not on every rerun
        from xray_core import report

        result["pdf"] = report.build_pdf(a, lime=result["lime"], gradcam_overlay=result["gradcam_overlay"],
                                         metrics=metrics, show_anyway=not a.in_distribution)
        result["zip"] = view.result_zip(panels, {**view.summary(a), **result["summary"]})
    stem = Path(a.name).stem
    cols = st.columns(2)
    cols[0].download_button("Download report (PDF)", data=result["pdf"], key="diagnose_pdf",
                            file_name=f"{stem}-{a.run_id}-report.pdf", mime="application/pdf")
    cols[1].download_button("Download the panels (PNG) and JSON", data=result["zip"], key="diagnose_download",
                            file_name=f"{stem}-{a.run_id}-explained.zip", mime="application/zip")


st.title("Diagnose")
models = common.resolve_folder(st.session_state.get("models_dir", "trained_models"))
run_info = pick_run(models)
if run_info is None:
    st.stop()
chosen = pick_image()
options = settings()

if chosen is not None:
    name, raw = chosen
    try:
        film = case.read(raw, name)
    except imaging.ImageDecodeError as exc:
        st.error(str(exc))
        st.stop()
    model = load_model(run_info.path)  # one Model per run and model.json, shared by every session
    key = (film.sha256, run_info.run_id, model.fingerprint)
    assessed = st.session_state.setdefault("diagnose_assessed", {})
    if key not in assessed:
        assessed.clear()
        assessed[key] = case.assess_films(model, [film])[0]
    assessment = assessed[key]
    metrics = run_info.metrics or {}
    if show_verdict(assessment, metrics):
        explanations(key + tuple(sorted(options.items())), model, assessment, options, metrics)
