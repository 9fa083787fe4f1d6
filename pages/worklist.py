"""Worklist: score a whole folder, many uploaded films or a zip in the background; review the
flagged and uncertain films first; open one in Diagnose; download the scores.

Scoring runs as its own process (`xray_core.scoring` jobs), never in this page: reloading, a
second tab or a closed browser loses nothing, and an interrupted job resumes where it stopped.
"""

from __future__ import annotations

import base64
import hashlib
import io
from pathlib import Path

import pandas as pd
import streamlit as st

from app import common
from app.entry import refuse_in_viewer_mode, require_entry
from xray_core import fileio, imaging, jobs, runs, scoring, settings
from xray_core.scoring import uploads as worklist_uploads

require_entry()  # first: no page runs unless streamlit_app.py ran first (app/entry.py)

PAGE_ROWS = 100  # rows (and thumbnails) per page of the table
ACTIVE = ("queued", "starting", "running")


def _thumbnail(raw: bytes, path: str) -> str | None:
    """A 64 px PNG of a film as a data URL; None if unreadable."""
    try:
        img = imaging.decode_resized(raw, (64, 64))
    except (ValueError, OSError) as exc:
        st.session_state.setdefault("_worklist_thumb_errors", {})[path] = str(exc)
        return None
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@st.cache_data(show_spinner=False, max_entries=5000)
def thumbnail(path: str, sha256: str) -> str | None:
    """The thumbnail of a scored film read from the server (cached by path and content hash)."""
    try:
        raw = scoring.read_item_bytes(path)
    except (ValueError, OSError, KeyError) as exc:
        st.session_state.setdefault("_worklist_thumb_errors", {})[path] = str(exc)
        return None
    return _thumbnail(raw, path)


@st.cache_data(show_spinner=False, max_entries=5000)
def upload_thumbnail(sha256: str, _raw: bytes) -> str | None:
    """The thumbnail of an uploaded film from this session's memory (the server removes its copy
    when the job ends), cached by its content hash."""
    return _thumbnail(_raw, sha256)


@st.cache_data(show_spinner=False, max_entries=8)
def scores_table(path: str, stamp: float) -> pd.DataFrame:
    """The job's scores, most urgent first: PNEUMONIA, uncertain or refused by the input gate,
    then unreadable files, then the rest; by probability within each."""
    df = scoring.read_scores(path)
    df["file"] = [p.rsplit(scoring.ZIP_SEP, 1)[-1].rsplit("/", 1)[-1] for p in df["path"]]
    df["uncertain"] = df["prediction_set"].str.contains(r"\|") | df["prediction_set"].str.contains(",")
    df["gate"] = df["in_distribution"].map({"True": "passed", "False": "check the film"}).fillna("")
    flagged = (df["verdict"] == "PNEUMONIA") | df["uncertain"] | (df["in_distribution"] == "False")
    df["priority"] = flagged.map({True: 0, False: 2}).where(df["error"] == "", 1)
    return df.sort_values(["priority", "probability"], ascending=[True, False], na_position="last",
                          kind="stable").reset_index(drop=True)


def new_job(models: Path, usable) -> None:
    """The form that starts a job: model, then a server folder or uploads."""
    ids = [r.run_id for r in usable]
    run_id = st.selectbox("Model (run)", ids, key="worklist_run",
                          format_func=lambda rid: common.run_label(next(r for r in usable if r.run_id == rid)))
    source = st.radio("Films", ["A folder on the server", "Upload films or a zip"], horizontal=True,
                      key="worklist_source")
    if source == "A folder on the server":
        folder = st.text_input("Folder (searched recursively)", value=st.session_state.get("data_dir", ""),
                               key="worklist_folder",
                               help="A folder under the allowed data folders; every PNG, JPEG, BMP, TIFF and "
                                    "DICOM file in it and its sub-folders is scored.")
        uploads = None
    else:
        folder = None
        uploads = st.file_uploader("Films (PNG, JPEG, BMP, TIFF, DICOM) or one zip of them", accept_multiple_files=True,
                                   key="worklist_upload")
        st.caption(f"At most {settings.limit('upload_files')} films (or one zip of at most that many). They are "
                   "kept in a private temporary folder on the server only while their job runs, and removed "
                   "when it ends.")
    if not st.button("Score the worklist", type="primary", key="worklist_start"):
        return
    try:
        if folder is not None:
            path = fileio.check_allowed(folder, what="worklist folder")
            if not path.is_dir():
                raise scoring.ScoreError(f"{folder} is not a folder on the server. Type a folder that holds films.")
            job_id = scoring.submit_job(models, run_id, path, label=path.name)
        else:
            files = [(f.name, f.getvalue()) for f in uploads or []]
            job_id = worklist_uploads.submit_worklist_uploads(models, run_id, files)
            # Films (not a zip) stay in this session's memory, as the uploader holds them, for the
            # thumbnails once the server's copies are removed; found by content hash, as the scores name them.
            kept = st.session_state.setdefault("worklist_uploaded", {})
            kept[job_id] = {hashlib.sha256(raw).hexdigest(): raw for _, raw in files if raw[:2] != b"PK"}
            for old_job in list(kept)[:-2]:  # the last two upload jobs of this session
                del kept[old_job]
    except (scoring.ScoreError, fileio.PathNotAllowed, jobs.CapacityError, settings.SettingsError) as exc:
        st.error(str(exc))
        return
    st.session_state["worklist_job"] = job_id
    st.rerun()


def job_label(job: dict) -> str:
    done, total = job.get("done"), job.get("total")
    count = f" · {done}/{total}" if total else ""
    return f"{job.get('label', job['job_id'])} · {job.get('run_id', '?')} · {job['state']}{count} · {job['job_id']}"


def uploads_of(job: dict) -> dict | None:
    """The job's upload record (None for a server folder); a damaged one is said, and counts as removed."""
    try:
        return worklist_uploads.upload_record(job["path"])
    except worklist_uploads.UploadRecordError as exc:
        st.warning(str(exc))
        return {"removed": "an unknown time"}


def open_in_diagnose(row: pd.Series, job: dict) -> None:
    uploads = uploads_of(job)
    kept = st.session_state.get("worklist_uploaded", {}).get(job["job_id"], {})
    if uploads is None or not uploads.get("removed"):
        st.session_state["diagnose_open"] = {"name": row["file"], "path": row["path"]}
    elif row["sha256"] in kept:  # the server's copy is gone; this session still holds the film it uploaded
        st.session_state["diagnose_open"] = {"name": row["file"], "data": kept[row["sha256"]]}
    else:
        st.info(f"{row['file']} was uploaded for this worklist, and uploads are removed from the server when "
                "their job ends; only the browser session that uploaded it (films, not a zip) can still open it. "
                "Upload the file on the Diagnose page (it stays in memory there).")
        return
    # a new table key next time: its row selection would otherwise open the film again on return
    st.session_state["worklist_opened"] = st.session_state.get("worklist_opened", 0) + 1
    st.switch_page("pages/diagnose.py")


def show_table(job: dict) -> None:
    path = Path(job["path"]) / scoring.JOB_SCORES
    if not path.exists():
        return
    df = scores_table(str(path), path.stat().st_mtime)
    if df.empty:
        return
    n = len(df)
    counts = st.columns(4)
    counts[0].metric("Scored", n)
    counts[1].metric("PNEUMONIA", int((df["verdict"] == "PNEUMONIA").sum()))
    counts[2].metric("Uncertain or gate warning", int((df["uncertain"] | (df["gate"] == "check the film")).sum()))
    counts[3].metric("Unreadable", int((df["error"] != "").sum()))
    pages = max(1, -(-n // PAGE_ROWS))
    page = 1
    if pages > 1:
        page = int(st.number_input(f"Page (of {pages}, {PAGE_ROWS} films each)", 1, pages, 1, key="worklist_page"))
    view = df.iloc[(page - 1) * PAGE_ROWS: page * PAGE_ROWS].copy()
    in_memory = st.session_state.get("worklist_uploaded", {}).get(job["job_id"], {})
    view["thumbnail"] = [None if e else upload_thumbnail(h, in_memory[h]) if h in in_memory else thumbnail(p, h)
                         for p, h, e in zip(view["path"], view["sha256"], view["error"])]
    shown = view[["thumbnail", "file", "probability", "verdict", "uncertain", "gate", "ood_score", "warnings",
                  "error", "path"]]
    event = st.dataframe(
        shown, key=f"worklist_table_{job['job_id']}_{page}_{st.session_state.get('worklist_opened', 0)}",
        hide_index=True, on_select="rerun",
        selection_mode="single-row", row_height=64,
        column_config={
            "thumbnail": st.column_config.ImageColumn("Film", width="small"),
            "probability": st.column_config.ProgressColumn("P(pneumonia)", min_value=0.0, max_value=1.0, format="%.3f"),
            "uncertain": st.column_config.CheckboxColumn("Uncertain"),
            "ood_score": st.column_config.NumberColumn("Gate distance", format="%.2f"),
            "path": st.column_config.TextColumn("Path", width="small"),
        })
    st.caption("Sorted most urgent first (PNEUMONIA, uncertain or gate warning, then unreadable files); "
               "click a column header to sort by it, or a row's box (on the left) to open the film in Diagnose.")
    selected = event.selection.rows if event is not None else []
    if selected:
        open_in_diagnose(view.iloc[selected[0]], job)
    readable = view[view["error"] == ""]
    if not readable.empty:
        cols = st.columns([3, 1])
        choice = cols[0].selectbox("Open a film in Diagnose", list(readable.index), key="worklist_open_choice",
                                   format_func=lambda i: f"{readable.at[i, 'file']} · {readable.at[i, 'probability']:.3f}")
        if cols[1].button("Open in Diagnose", key="worklist_open"):
            open_in_diagnose(readable.loc[choice], job)
    st.download_button("Download the scores (CSV)", data=path.read_bytes(), file_name=f"worklist-{job['job_id']}.csv",
                       mime="text/csv", key="worklist_download")


def show_job(models: Path, job_id: str, polling: bool) -> None:
    job = scoring.job_info(scoring.worklists_root(models) / job_id)
    state = job["state"]
    uploads = uploads_of(job)
    if polling and state not in ACTIVE:
        st.rerun()  # the whole page: the job list's label, and no more polling
    done, total = int(job.get("done") or 0), int(job.get("total") or 0)
    if state in ACTIVE:
        rate = job.get("images_per_second")
        eta = (total - done) / rate if rate and total > done else None
        text = (f"{state}: {done} of {total} films" if total else f"{state}…") + (
            f" · {rate:.0f} films/s · about {common.format_seconds(eta)} left" if eta else "")
        st.progress(min(done / total, 1.0) if total else 0.0, text=text)
    elif state == "completed":
        summary = job.get("summary") or {}
        st.success(f"Completed: {done} films ({summary.get('errors', 0)} unreadable), "
                   f"{summary.get('images_per_second') or 0:.0f} films/s.")
    elif state in ("interrupted", "failed", "cancelled"):
        why = job.get("error") or ("its process stopped before the end" if state == "interrupted" else "")
        if uploads is not None and uploads.get("removed"):
            st.warning(f"This job is {state}{': ' + why if why else ''}. {done} of {total or '?'} films are scored. "
                       "Its uploaded films were removed from the server when it ended, so it cannot be resumed: "
                       "upload the films again in a new worklist.")
        else:
            st.warning(f"This job is {state}{': ' + why if why else ''}. {done} of {total or '?'} films are "
                       "scored; resume to score the rest (nothing is scored twice).")
            if st.button("Resume", key=f"worklist_resume_{job_id}"):
                scoring.resume_job(models, job_id)
                st.rerun()
    if uploads is not None:
        st.caption(f"Its uploaded films were removed from the server at {uploads['removed']}." if uploads.get("removed")
                   else "Its uploaded films stay in a private temporary folder on the server until the job ends.")
    show_table(job)
    if state in ACTIVE:
        scoring.advance_jobs(models)  # a queued job whose slot freed while no process handed it on


st.title("Worklist")
st.caption("Score a whole worklist in the background and read the flagged films first.")
refuse_in_viewer_mode("Worklists are switched off on this server (viewer mode): scoring writes score tables.")
models_dir = common.resolve_folder(st.session_state.get("models_dir", "trained_models"))
usable_runs = common.usable_runs(runs.list_runs(models_dir))
if not usable_runs:
    st.warning(f"There is no trained model in {models_dir}. Train one on the Train page, or set the sidebar's "
               "Models folder to a folder that holds one.")
    st.stop()
for problem in worklist_uploads.sweep_uploads(models_dir):  # uploads of ended jobs whose watcher did not survive a restart
    st.warning(problem)
with st.expander("New worklist", expanded=not scoring.list_jobs(models_dir)):
    new_job(models_dir, usable_runs)
all_jobs = scoring.list_jobs(models_dir)
if all_jobs:
    ids = [j["job_id"] for j in all_jobs]
    if st.session_state.get("worklist_job") not in ids:
        st.session_state["worklist_job"] = ids[0]
    labels = {j["job_id"]: job_label(j) for j in all_jobs}
    chosen = st.selectbox("Job", ids, key="worklist_job", format_func=labels.get)
    active = next(j for j in all_jobs if j["job_id"] == chosen)["state"] in ACTIVE
    st.fragment(run_every=1.0 if active else None)(show_job)(models_dir, chosen, active)
