"""Validate: how a model does on your own labelled films, and a site-calibrated run fitted to them.

The validation runs as its own process (`xray_core.site_job`), never in this page: the page
polls its status file and then reads its report folder. Saving a site-calibrated run fits on the
validation's per-film results (no film is scored again) and is switched off in viewer mode.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import common
from app import compare_view
from app import validate_view as view
from app.entry import require_entry
from xray_core import fileio, runs, settings, site, site_job, site_report
from xray_core.model import load_model

require_entry()  # first: no page runs unless streamlit_app.py ran first (app/entry.py)


@st.cache_data(show_spinner=False, max_entries=16)
def read_report(folder: str, stamp: float) -> tuple[dict, object]:
    """(validation.json, films table) of a completed job; `stamp` refreshes it if rewritten."""
    folder = Path(folder)
    return fileio.read_json(folder / site_report.REPORT_JSON), site_report.read_films(folder / site_report.FILMS_CSV)


@st.cache_data(show_spinner=False, max_entries=16)
def preview(folder: str, stamp: float, run_path: str, sensitivity: float, policy: str) -> tuple:
    """(fit, site figures) of a site calibration on a job's films, or (None, refusal sentence)."""
    _, table = read_report(folder, stamp)
    try:
        fit, found, _ = site.site_fit(load_model(run_path), table, sensitivity=sensitivity, policy=policy)
    except ValueError as exc:  # SiteError; RunNotFound when the job's run was removed since
        return None, str(exc)
    return {k: v for k, v in fit.items() if k != "conformal"}, found


def new_validation(models: Path, usable: list) -> None:
    ids = [r.run_id for r in usable]
    run_id = st.selectbox("Model (run)", ids, key="validate_run",
                          format_func=lambda rid: common.run_label(next(r for r in usable if r.run_id == rid)))
    viewer = st.session_state.get("viewer_mode", False)
    choices = ["A labelled folder on the server"] + ([] if viewer else ["Upload a zip"])
    source = st.radio("Films", choices, horizontal=True, key="validate_source")
    folder = upload = None
    if source == choices[0]:
        folder = st.text_input("Folder with NORMAL/ and PNEUMONIA/ folders inside (at any depth)",
                               value=st.session_state.get("data_dir", ""), key="validate_folder",
                               help="A folder under the allowed data folders, e.g. a dataset's test/ folder.")
    else:
        upload = st.file_uploader("One zip of NORMAL/ and PNEUMONIA/ folders", type=["zip"], key="validate_upload")
        st.caption("The zip is kept in a private temporary folder on the server only while its validation runs.")
    exclude = st.checkbox("Leave out films the model has seen (its training, validation or site-calibration films)",
                          key="validate_exclude_seen")
    if not st.button("Validate", type="primary", key="validate_start"):
        return
    try:
        if folder is not None:
            path = fileio.check_allowed(folder, what="validation folder")
            if not path.is_dir():
                raise site.SiteError(f"{folder} is not a folder on the server. Type a folder that holds NORMAL/ "
                                     "and PNEUMONIA/ folders.")
            job_id = site_job.submit(run_id, models, path, exclude_seen=exclude)
        elif upload is not None:
            job_id = site_job.submit(run_id, models, upload=upload.getvalue(), upload_name=upload.name,
                                     exclude_seen=exclude)
        else:
            raise site.SiteError("Upload a zip of labelled films first.")
    except (ValueError, OSError) as exc:  # SiteError, PathNotAllowed, SettingsError, ScoreError: sentences
        st.error(str(exc))
        return
    st.session_state["validate_job"] = job_id
    st.rerun()


def save_section(job: dict, folder: Path, stamp: float, report: dict, models: Path) -> None:
    st.subheader("Fit this model to your site")
    st.caption(view.SAVE_HELP)
    run_path = runs.run_path(job["run_id"], job["models_root"])
    cols = st.columns(2)
    sensitivity = cols[0].number_input("Keep sensitivity at least", min_value=0.50, max_value=0.99, value=0.95,
                                       step=0.01, key="validate_sensitivity")
    policy = cols[1].radio("Operating threshold", ["sensitivity", "youden"], horizontal=True, key="validate_policy",
                           format_func={"sensitivity": "highest specificity at that sensitivity",
                                        "youden": "Youden's J (balance)"}.get)
    with st.spinner("Cross-fitting on these films…"):
        fit, found = preview(str(folder), stamp, str(run_path), float(sensitivity), policy)
    if fit is None:
        st.warning(found)
        return
    left, right = st.columns([3, 2])
    left.dataframe(view.side_by_side(found, run_id=report["run"]), hide_index=True, key="validate_side_by_side",
                   column_config={"figure": st.column_config.TextColumn(width="medium")})
    left.caption(view.fit_caption(fit, found))
    for w in found["warnings"]:
        left.caption(w)
    if st.session_state.get("viewer_mode"):
        right.info("Saving a site-calibrated run is switched off on this server (viewer mode).")
        return
    name = right.text_input("Name of the new run", value=view.default_run_name(report["run"]), key="validate_name")
    if right.button("Save as a site-calibrated run", type="primary", key="validate_save"):
        try:
            models_ok = fileio.check_allowed(models, what="models folder")
            _, table = read_report(str(folder), stamp)
            result = site.recalibrate(str(run_path), table=table, out=runs.validate_run_id(name.strip()),
                                      root=models_ok, sensitivity=float(sensitivity), policy=policy)
        except (site.SiteError, runs.InvalidRunId, fileio.PathNotAllowed, settings.SettingsError) as exc:
            right.error(str(exc))
            return
        right.success(f"Saved as {result['run']}: choose it in Diagnose, Worklist and Compare.")


def show_results(job: dict, models: Path) -> None:
    folder = Path(job["path"]) / site_job.REPORT_DIR
    stamp = (folder / site_report.REPORT_JSON).stat().st_mtime
    report, _ = read_report(str(folder), stamp)
    st.markdown(site_report.headline(report))
    for w in report["warnings"]:
        st.warning(w)
    if not report["exclude_seen"] and any(c["seen"] for c in report["counts"].values()):
        st.caption(view.SEEN_HINT)
    cols = st.columns([2, 3])
    cols[0].dataframe(view.figures_table(report["figures"]), hide_index=True, key="validate_figures",
                      column_config={"figure": st.column_config.TextColumn(width="medium")})
    for text in site_report.detail_lines(report):
        cols[0].caption(text)
    cols[1].plotly_chart(compare_view.confusion_figure(report["confusion"], f"At the threshold {report['threshold']:.3f}"),
                         key="validate_confusion")
    cols = st.columns(2)
    if report.get("roc"):
        curve = (report["roc"]["fpr"], report["roc"]["tpr"], report["figures"]["roc_auc"]["estimate"])
        cols[0].plotly_chart(compare_view.roc_figure({report["run"]: curve}, "ROC curve"), key="validate_roc")
    cols[1].plotly_chart(compare_view.reliability_figure({report["run"]: view.reliability_block(report)}),
                         key="validate_reliability")
    downloads = st.columns(2)
    downloads[0].download_button("Download the report (PDF)", data=(folder / site_report.REPORT_PDF).read_bytes(),
                                 file_name=f"validation-{job['job_id']}.pdf", mime="application/pdf",
                                 key="validate_pdf")
    downloads[1].download_button("Download everything (JSON, per-film CSV, figures, PDF)", data=view.report_zip(folder),
                                 file_name=f"validation-{job['job_id']}.zip", mime="application/zip",
                                 key="validate_zip")
    save_section(job, folder, stamp, report, models)


def show_job(job_id: str, polling: bool, models: Path) -> None:
    job = site_job.job_info(site_job.jobs_root() / job_id)
    state = job["state"]
    if polling and state not in site_job.ACTIVE:
        st.rerun()  # the whole page: the job list's label, and no more polling
    if state in site_job.ACTIVE:
        done, total = int(job.get("done") or 0), int(job.get("total") or 0)
        st.progress(min(done / total, 1.0) if total else 0.0,
                    text=f"{state}: {done} of {total} films assessed" if total else f"{state}…")
    elif state == "completed":
        show_results(job, models)
    else:
        why = job.get("error") or "its process stopped before the end"
        st.error(f"This validation is {state}: {why}")


st.title("Validate on your films")
st.caption(view.INTRO)
models_dir = common.resolve_folder(st.session_state.get("models_dir", "trained_models"))
usable_runs = common.usable_runs(runs.list_runs(models_dir))
if not usable_runs:
    st.warning(f"There is no trained model in {models_dir}. Set the sidebar's Models folder to a folder that holds one.")
    st.stop()
site_job.sweep_uploads()
all_jobs = site_job.list_jobs()
with st.expander("New validation", expanded=not all_jobs):
    new_validation(models_dir, usable_runs)
if all_jobs:
    ids = [j["job_id"] for j in all_jobs]
    if st.session_state.get("validate_job") not in ids:
        st.session_state["validate_job"] = ids[0]
    labels = {j["job_id"]: view.job_label(j) for j in all_jobs}
    chosen = st.selectbox("Validation", ids, key="validate_job", format_func=labels.get)
    active = next(j for j in all_jobs if j["job_id"] == chosen)["state"] in site_job.ACTIVE
    st.fragment(run_every=1.0 if active else None)(show_job)(chosen, active, models_dir)
