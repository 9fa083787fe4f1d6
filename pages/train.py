"""Train: choose an architecture and settings, start a training in the background, watch it live.

A training is its own process (`python -m xray_core train`) that writes its run folder; this
page only reads that folder, so reloading, a second tab or closing the browser loses nothing.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from app import common, compare_view, train_view
from app.entry import refuse_in_viewer_mode, require_entry
from xray_core import arch_catalog, data, fileio, health, jobs, runs

require_entry()  # first: no page runs unless streamlit_app.py ran first (app/entry.py)


@st.cache_data(show_spinner="Building the network to list its layers…")
def layer_table(arch: str, size: int, channels: int) -> pd.DataFrame:
    """The layer table, built in a child process: the server never imports Keras (Streamlit clears a
    Keras session, with a full garbage collection, after every script run of a process that has)."""
    return train_view.layer_table_in_child(arch, size, channels)


def settings(specs: dict, models: Path) -> dict:
    """The architecture picker and every training option; defaults follow the architecture."""
    arch = st.selectbox("Architecture", list(specs), key="train_arch",
                        format_func=lambda a: f"{a} — {specs[a].description.split('.')[0]}")
    spec = specs[arch]
    st.caption(spec.description)
    cols = st.columns(4)
    # Keys carry the architecture, so switching it brings back its own default settings.
    epochs = cols[0].number_input("Epochs", 1, 500, int(spec.epochs), key=f"train_epochs_{arch}")
    batch = cols[1].number_input("Batch size", 1, 1024, int(spec.batch_size), key=f"train_batch_{arch}")
    size = cols[2].number_input("Image size (px)", 8, 512, int(spec.image_size), step=4,
                                key=f"train_size_{arch}")
    channels = cols[3].selectbox("Channels", [1, 3], index=[1, 3].index(int(spec.channels)),
                                 key=f"train_channels_{arch}",
                                 help="1: gray (same information, less compute); 3: the original study's duplicated gray.")
    cols = st.columns(4)
    lr = cols[0].number_input("Learning rate", 1e-6, 1.0, 1e-3, format="%.5f", key="train_lr")
    seed = cols[1].number_input("Seed", 0, 2**31 - 1, 0, key="train_seed",
                                help="Seeds the split, the shuffling and the initial weights.")
    split = cols[2].selectbox("Validation split", ["patient", "image"], key="train_split",
                              help="patient: no patient on both sides (honest); image: the original study's leaky split.")
    val_fraction = cols[3].number_input("Validation share", 0.05, 0.5,
                                        0.2 if split == "patient" else 0.25, step=0.05,
                                        key=f"train_val_fraction_{split}")
    cols = st.columns(4)
    class_weight = cols[0].checkbox("Balanced class weights", key="train_class_weight",
                                    help="Weigh NORMAL images up: the train split holds ~3x more PNEUMONIA.")
    augment = cols[1].checkbox("Augmentation", key="train_augment",
                               help="Small shifts, zoom, rotation and contrast; no flips (the heart is on one side).")
    stop_early = cols[2].checkbox("Early stopping", key="train_early",
                                  help="Stop when validation AUC stops improving; keep the best weights.")
    patience = cols[3].number_input("Patience (epochs)", 1, 50, 3, key="train_patience", disabled=not stop_early)
    threshold = st.radio("Operating threshold", ["sensitivity", "youden"], horizontal=True,
                         key="train_threshold",
                         format_func={"sensitivity": "highest specificity with sensitivity ≥ 0.95",
                                      "youden": "Youden's J"}.get)

    try:
        table = layer_table(arch, int(size), int(channels))
    except ValueError as exc:  # a size the architecture cannot take: the library's sentence
        st.warning(str(exc))
    else:
        with st.expander(f"Layers of {arch} at {size}×{size}×{channels}: "
                         f"{int(table['params'].sum()):,} parameters"):
            st.dataframe(table, hide_index=True, key="train_layers")
    per_epoch = train_view.seconds_per_epoch(runs.list_runs(models), arch, int(size), int(channels))
    st.caption(f"Default settings: {spec.epochs} epochs, batch {spec.batch_size}, "
               f"{spec.image_size}×{spec.image_size}×{spec.channels}. "
               + (f"On this machine an epoch has taken about {common.format_seconds(per_epoch)}."
                  if per_epoch else "No completed run of this setup yet, so no epoch time to show."))
    return {"arch": arch, "epochs": int(epochs), "batch_size": int(batch), "image_size": int(size),
            "channels": int(channels), "learning_rate": float(lr), "seed": int(seed), "split": split,
            "val_fraction": float(val_fraction), "class_weight": bool(class_weight),
            "augment": bool(augment), "early_stopping": int(patience) if stop_early else None,
            "threshold_method": threshold}


def start(models: Path, options: dict) -> tuple[str, str]:
    """Queue the training; (message kind, sentence) for the page."""
    try:
        folder = fileio.check_allowed(st.session_state.get("data_dir", "data/chest_xray"),
                                      what="dataset folder")
        root = data.find_dataset(folder)
    except (fileio.PathNotAllowed, data.DatasetLayoutError, FileNotFoundError) as exc:
        return "error", f"Cannot train: {exc}"
    try:
        run_id = jobs.submit_training(models, dict(options, data=str(root)),
                                      submitted_by=st.user.get("email") if st.user.get("is_logged_in") else None)
    except jobs.CapacityError as exc:
        return "error", str(exc)
    except OSError as exc:
        return "error", (f"Cannot queue the training in {models} ({exc.strerror or exc}). "
                         "Set the sidebar's Models folder to a folder you can write to.")
    return "success", f"Queued {run_id}; it starts as soon as no other training runs. Follow it below."


def show_run(info, key: str) -> None:
    """Progress, speed, ETA and growing learning curves of one active run, with Cancel."""
    status = info.status
    epoch, epochs = status.get("epoch") or 0, status.get("epochs") or 0
    batch, batches = status.get("batch") or 0, status.get("batches") or 0
    st.markdown(f"**{info.run_id}** · {(info.config or {}).get('arch', '')} · {status.get('state')}")
    st.progress(float(status.get("fraction") or 0.0),
                text=f"Epoch {epoch} of {epochs} · batch {batch} of {batches or '?'}")
    cols = st.columns(3)
    cols[0].metric("Images per second", common.fmt(status.get("images_per_second"), 0))
    cols[1].metric("Time left", common.format_seconds(status.get("eta_seconds")))
    cols[2].button("Cancel", key=f"train_cancel_{key}", on_click=jobs.request_stop, args=(info.path,),
                   help="Stops after the current batch; the model so far is kept.")
    if (Path(info.path) / runs.STOP_FILE).exists():
        st.caption("Stopping after the current batch…")
    for warning in health.from_status(status):  # training health, checked after every epoch
        (st.error if warning.severity == "stop" else st.warning)(warning.text)
    history = runs.Run(Path(info.path)).history
    if not history.empty:
        cols = st.columns(3)
        for col, metric in zip(cols, ("loss", "auc", "sensitivity")):
            col.plotly_chart(compare_view.learning_curves_figure({info.run_id: history}, metric),
                             key=f"train_live_{metric}_{key}")


@st.fragment(run_every=2)
def live_panel(models: Path) -> None:
    """Polls the models folder every 2 s: the running training, the queue, recent runs."""
    jobs.ensure_worker(models)  # restarts the queue if its worker died
    infos = runs.list_runs(models)
    active = [r for r in infos if r.state in ("running", "queued")]
    starting = jobs.starting_job(models)
    queued = jobs.queued_jobs(models)
    st.subheader("Trainings")
    if not active and not starting and not queued:
        st.caption("No training is running.")
    for info in active:
        show_run(info, info.run_id)
    if starting:
        st.info(f"Starting {starting['run_id']} (loading TensorFlow and the images)…")
    for run_id, reason in jobs.failed_launches(models):
        st.error(f"{run_id} did not start ({reason}). Check its settings and start it again; "
                 f"the full log is in {models / jobs.QUEUE_DIR / 'logs' / (run_id + '.log')}.")
    for problem in jobs.queue_problems(models):
        st.warning(problem)
    if queued:
        st.markdown(f"**Queued ({len(queued)})**: they start one after another.")
        for job in queued:
            opts = job.get("options", {})
            cols = st.columns([4, 1])
            by = f" · queued by {job['submitted_by']}" if job.get("submitted_by") else ""
            cols[0].write(f"{job['run_id']} · {opts.get('epochs')} epochs · batch {opts.get('batch_size')}"
                          f" · {opts.get('image_size')} px{by}")
            cols[1].button("Remove", key=f"train_unqueue_{job['run_id']}", on_click=jobs.cancel_queued,
                           args=(models, job["run_id"]))
    finished = sorted((r for r in infos if r.state not in ("running", "queued")),
                      key=lambda r: str((r.config or {}).get("created") or r.status.get("updated") or ""),
                      reverse=True)[:5]
    if finished:
        st.markdown("**Recent runs**")
        rows = [{"run": r.run_id, "state": r.state, "architecture": (r.config or {}).get("arch"),
                 "epochs": f"{(r.metrics or {}).get('epochs_run', r.status.get('epoch', ''))}",
                 "validation AUC": common.fmt(((r.metrics or {}).get("validation") or {}).get("roc_auc")),
                 "message": r.status.get("error") or " ".join(w.text for w in health.from_status(r.status))}
                for r in finished]
        st.table(pd.DataFrame(rows).set_index("run"))


st.title("Train")
refuse_in_viewer_mode("Training is switched off on this server (viewer mode).")  # whatever the navigation offers
try:
    models = fileio.check_allowed(st.session_state.get("models_dir", "trained_models"), what="models folder")
except fileio.PathNotAllowed as exc:
    st.error(str(exc))
    st.stop()
options = settings(dict(arch_catalog.CATALOG), models)
if st.button("Start training", type="primary", key="train_start"):
    kind, text = start(models, options)
    getattr(st, kind)(text)
live_panel(models)
