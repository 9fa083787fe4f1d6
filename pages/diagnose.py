"""Diagnose: one chest X-ray in, the model's answer and why out.

The upload is decoded from memory and never written to disk; results live in this browser
session only. Models are shared across sessions through st.cache_resource and never changed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import streamlit as st

from xray_core import data, explain, imaging, runs, ui  # explain loads TensorFlow only when used


@st.cache_resource(show_spinner="Loading the model…", max_entries=4)
def get_run(path: str, stamp: float) -> runs.Run:
    """A run with its model loaded; `stamp` (model.keras mtime) reloads a retrained model.
    Shared by every session, so it is only read, never changed."""
    run = runs.load_run(Path(path))
    _ = run.model  # load now, under the spinner, not in the middle of an explanation
    return run


@st.cache_data(show_spinner=False)
def dataset_index(root: str) -> "ui.pd.DataFrame":
    return data.index_dataset(root)


def pick_run(models: Path):
    """The run select: completed runs with a model; `default` first when present."""
    usable = ui.usable_runs(runs.list_runs(models))
    if not usable:
        st.warning(
            f"There is no trained model in {models}. Train one on the Train page, or set the "
            "sidebar's Models folder to a folder that holds one (the bundled model is in "
            "trained_models/default)."
        )
        return None
    ids = [r.run_id for r in usable]
    st.selectbox("Model (run)", ids, index=0, key="diagnose_run",
                 format_func=lambda rid: ui.run_label(next(r for r in usable if r.run_id == rid)))
    return next(r for r in usable if r.run_id == st.session_state["diagnose_run"])


def pick_image():
    """(name, raw bytes or path) from an upload or the dataset; None when nothing is chosen."""
    opened = st.session_state.get("diagnose_open")  # a film opened from the Worklist page
    if opened:
        st.info(f"From the worklist: {opened['name']}")
        if not st.button("Choose another image", key="diagnose_close_worklist"):
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
    folder = ui.resolve_folder(st.session_state.get("data_dir", "data/chest_xray"))
    try:
        root = data.find_dataset(folder)
    except (data.DatasetLayoutError, FileNotFoundError) as exc:
        st.info(f"No dataset to pick from: {exc}")
        return None
    index = dataset_index(str(root))
    cols = st.columns([1, 1, 3])
    split = cols[0].selectbox("Split", ui.present(index["split"], ui.SPLIT_ORDER), key="diagnose_split")
    class_name = cols[1].selectbox("Class", list(data.CLASSES), key="diagnose_class")
    rows = ui.filter_index(index, split, class_name)
    if rows.empty:
        st.info("No image in that split and class.")
        return None
    name = cols[2].selectbox("File", sorted(rows["filename"]), key="diagnose_file")
    return name, rows.loc[rows["filename"] == name, "path"].iloc[0]


def settings() -> dict:
    with st.expander("Explanation settings"):
        cols = st.columns(3)
        samples = cols[0].select_slider("LIME samples", [100, 250, 500, 1000, 2000, 5000, 10000],
                                        value=1000, key="diagnose_samples",
                                        help="More samples: steadier weights, slower.")
        segmentation = cols[1].selectbox("Segmentation", list(explain.SEGMENTATIONS),
                                         key="diagnose_segmentation",
                                         help="How the image is cut into superpixels; quickshift is the seed's.")
        seed = cols[2].number_input("Seed", min_value=0, value=0, step=1, key="diagnose_seed",
                                    help="The same seed gives the same explanation.")
    return {"num_samples": int(samples), "segmentation": segmentation, "seed": int(seed)}


def analyse(run, img, options: dict, bar) -> dict:
    """Prediction, LIME and Grad-CAM for one image (the library does the work)."""
    def progress(done: int, total: int) -> None:
        bar.progress(min(done / max(total, 1), 1.0), text=f"Explaining: {done} of {total} samples")

    result = ui.diagnose(run, img, progress=progress, **options)
    bar.empty()
    return result


def show_result(result: dict, run_info) -> None:
    score, threshold = result["probability"], result["threshold"]
    verdict = result["prediction"]
    validation = (run_info.metrics or {}).get("validation") or {}
    cols = st.columns([2, 1.6, 1.3, 1.3, 1.3])  # wide enough for "PNEUMONIA"
    cols[0].metric("Prediction", verdict)
    cols[1].metric("Probability of pneumonia", f"{score:.3f}")
    cols[2].metric("Operating threshold", f"{threshold:.3f}")
    cols[3].metric("Validation sensitivity", ui.fmt(validation.get("sensitivity")))
    cols[4].metric("Validation specificity", ui.fmt(validation.get("specificity")))
    st.caption(
        f"{result['name']} · run {result['run_id']} · PNEUMONIA when the probability is at or "
        "above the operating threshold, which was chosen on the run's validation split."
    )
    panels = result.get("panels") or {}
    if panels:
        st.subheader("Why: LIME superpixels and Grad-CAM")
        names = list(panels)
        for row in (names[:3], names[3:]):  # three per row: large enough to read
            cols = st.columns(3)
            for col, name in zip(cols, row):
                col.image(panels[name], width="stretch")
                col.markdown(f"**{ui.PANEL_TITLES.get(name, name)}**")
                col.caption(result.get("panel_help", {}).get(name, ""))
    for note in result.get("notes", []):
        st.caption(note)
    st.download_button(
        "Download the result (PNG panels and JSON)", data=ui.result_zip(panels, result["summary"]),
        file_name=f"{Path(result['name']).stem}-{result['run_id']}-explained.zip",
        mime="application/zip", key="diagnose_download",
    )


st.title("Diagnose")
models = ui.resolve_folder(st.session_state.get("models_dir", "trained_models"))
run_info = pick_run(models)
if run_info is None:
    st.stop()
chosen = pick_image()
options = settings()

if chosen is not None:
    name, source = chosen
    try:
        img = imaging.decode(source, filename=name)
    except imaging.ImageDecodeError as exc:
        st.error(str(exc))
        st.stop()
    model_file = Path(run_info.path) / runs.MODEL_FILE
    digest = hashlib.sha256(source if isinstance(source, bytes) else str(source).encode()).hexdigest()
    key = (digest, run_info.run_id, model_file.stat().st_mtime, tuple(sorted(options.items())))
    results = st.session_state.setdefault("diagnose_results", {})
    if key not in results:
        run = get_run(str(run_info.path), model_file.stat().st_mtime)
        bar = st.progress(0.0, text="Predicting…")
        try:
            result = analyse(run, img, options, bar)
        except ValueError as exc:
            bar.empty()
            st.error(f"The model could not analyse this image: {exc}")
            st.stop()
        result["name"] = name
        result["summary"].update(file=name, validation=(run_info.metrics or {}).get("validation"))
        results.clear()  # keep only the latest result in the session
        results[key] = result
    show_result(results[key], run_info)
