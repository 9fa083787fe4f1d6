"""Diagnose: one chest X-ray in; first whether the model can read it and its answer, then why.

The verdict (gate, prediction, probability, threshold, prediction set, context) is computed here,
at once, from one forward pass on LiteRT, and drawn first. The explanation (LIME panels and
Grad-CAM) is a job for the server's explanation workers (`xray_core.serving.service`): the page
asks for it, says where it stands while it waits or runs (a fragment that polls), and draws it
when it is done. Another film, another model or leaving the page drops the job. The upload is
decoded from memory and never written to disk; results live in this browser session only.
Models come from `load_model`, one per run shared by every session, never changed.
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import pandas as pd
import streamlit as st

from app import common
from app import diagnose_view as view
from app.entry import require_entry
from xray_core import case, data, explain, imaging, runs, settings
from xray_core.serving import service
from xray_core.model import load_model

require_entry()  # first: no page runs unless streamlit_app.py ran first (app/entry.py)

POLL_SECONDS = 0.5  # how often a waiting page asks where its explanation stands


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


def explanation_settings() -> dict:
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


def verdict_row(a) -> None:
    """The four figures of a verdict (an Assessment), or their empty row (None)."""
    for col, (label, value) in zip(st.columns([1.6, 1.5, 1.3, 1.9]), view.verdict_metrics(a)):
        col.metric(label, value)


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
        verdict_row(a)
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


def owner() -> str:
    """This browser session, as the explanation service knows it."""
    return st.session_state.setdefault("diagnose_owner", uuid.uuid4().hex)


def read_film(name: str, raw: bytes) -> case.Film:
    """The decoded film, decoded once per file for this session (reruns reuse it)."""
    digest = hashlib.sha256(raw).hexdigest()
    kept = st.session_state.get("diagnose_film")
    if kept is not None and kept[0] == (digest, name):
        return kept[1]
    film = case.read(raw, name)
    st.session_state["diagnose_film"] = ((digest, name), film)
    return film


def explainer(*, quiet: bool = False):
    """The server's explanation service, or None when explanations are switched off (said unless
    `quiet`)."""
    try:
        workers = settings.limit("explain_workers")
    except settings.SettingsError as exc:
        if not quiet:
            st.error(f"The server's settings cannot be used: {exc}")
        return None
    explaining = service.shared(workers=workers)
    if explaining is None and not quiet:
        st.info(view.EXPLANATIONS_OFF)
    return explaining


def drop_explanation() -> None:
    """No explanation wanted any more on this page (no film, or a refused one)."""
    running = service.existing()
    if running is not None:
        running.drop(owner())


def ask(svc, key, run_path, film: case.Film, options: dict, *, retry: bool = False):
    ticket = svc.submit(owner(), key, run_path, film.image, options, retry=retry)
    return svc.status(ticket, owner=owner())


def explanations(film: case.Film, a, model, options: dict, metrics: dict) -> None:
    """LIME and Grad-CAM of P(pneumonia): drawn when done, else where the job stands."""
    svc = explainer()
    if svc is None:
        return
    key = service.JobKey.of(film.sha256, model.fingerprint, options)
    st.session_state["diagnose_explain_key"] = key
    kept = st.session_state.get("diagnose_explained")
    if kept is not None and kept.key == key:
        show_explanation(kept, a, metrics)
        return
    retry = st.session_state.pop("diagnose_retry", False)
    status = ask(svc, key, model.path, film, options, retry=retry)
    if status.state == "done" and status.result.key == key:
        st.session_state["diagnose_explained"] = status.result
        show_explanation(status.result, a, metrics)
    elif status.state == "failed":
        st.error(view.failed_line(status.message))
        if st.button("Try again", key="diagnose_retry_button"):
            st.session_state["diagnose_retry"] = True
            st.rerun()
    else:
        waiting(svc, key, model.path, film, options)


@st.fragment(run_every=POLL_SECONDS)
def waiting(svc, key, run_path, film: case.Film, options: dict) -> None:
    """Where the explanation stands, asked again every POLL_SECONDS; a full rerun draws it."""
    if st.session_state.get("diagnose_explain_key") != key:
        return  # the page has moved on to another film or model
    status = ask(svc, key, run_path, film, options)
    if status.state in ("done", "failed"):
        st.rerun()
    line, fraction = view.waiting_line(status)
    st.progress(fraction, text=line)


def show_explanation(result, a, metrics: dict) -> None:
    """The five panels of `result` (the film's own: its key names the film's hash), their notes
    and the downloads, built when clicked."""
    st.subheader("Why: what raises and lowers the probability of pneumonia")
    helps = view.panel_help(result.legend.vmax, result.lime.scale)
    with st.container(key=f"explained-{result.key.film[:16]}"):
        names = list(result.panels)
        for row in (names[:3], names[3:]):  # three per row: large enough to read
            cols = st.columns(3)
            for col, name in zip(cols, row):
                col.image(result.panels[name], width="stretch")
                col.markdown(f"**{view.PANEL_TITLES.get(name, name)}**")
                col.caption(helps.get(name, ""))
        for note in view.explanation_notes(result.lime, result.cam_layer, a.name):
            st.caption(note)
        trust = view.trust_text()
        if trust:
            with st.expander(view.TRUST_TITLE):
                st.markdown(trust)

    def pdf() -> bytes:
        from xray_core import report

        return report.build_pdf(a, lime=result.lime, gradcam_overlay=view.png_array(result.panels["gradcam"]),
                                metrics=metrics, show_anyway=not a.in_distribution)

    def panels_zip() -> bytes:
        return view.result_zip(result.panels, {**view.summary(a), **view.explained_summary(result)})

    stem = Path(a.name).stem
    cols = st.columns(2)
    cols[0].download_button("Download report (PDF)", data=pdf, key="diagnose_pdf",
                            file_name=f"{stem}-{a.run_id}-report.pdf", mime="application/pdf")
    cols[1].download_button("Download the panels (PNG) and JSON", data=panels_zip, key="diagnose_download",
                            file_name=f"{stem}-{a.run_id}-explained.zip", mime="application/zip")


st.title("Diagnose")
models = common.resolve_folder(st.session_state.get("models_dir", "trained_models"))
run_info = pick_run(models)
if run_info is None:
    st.stop()
explaining = explainer(quiet=True)
if explaining is not None:
    explaining.warm(run_info.path)  # the workers load this model before the first film comes
chosen = pick_image()
options = explanation_settings()

if chosen is None:
    drop_explanation()
    # The verdict's row, empty: the layout stays put when the answer comes, and the browser loads
    # the code that draws the row with the page, not on the first film (load_clients.md).
    verdict_row(None)
else:
    name, raw = chosen
    try:
        film = read_film(name, raw)
    except imaging.ImageDecodeError as exc:
        drop_explanation()
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
    with st.container(key=f"verdict-{film.sha256[:16]}"):
        shown = show_verdict(assessment, metrics)
    if shown:
        explanations(film, assessment, model, options, metrics)
    else:
        drop_explanation()
