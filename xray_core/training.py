"""Train one run into its folder: `train(TrainConfig(...)) -> Path` (`save_run`: one trained elsewhere).

The run folder is the only channel between a training process and the rest of the project
(dashboard, CLI, another process): config.json first, then status.json (throttled, plus a
heartbeat), history.csv and a checkpoint after every epoch, model.keras and metrics.json at the
end. Everything goes through `fileio.atomic_write_*`, so a kill at any instant leaves readable
files, and `train(TrainConfig(resume=RUN))` continues from the last completed epoch.

A GPU is used automatically when TensorFlow sees one (with memory growth on, so two trainings
can share it); nothing here forces the CPU.
"""

from __future__ import annotations

import contextlib
import csv
import os
import platform
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import keras
import numpy as np

from xray_core import fileio, health, runs
from xray_core.callbacks import RunCallback, StressSelection, history_text, save_model_atomically

Progress = Callable[[dict], None]


class TrainingDataError(ValueError):
    """The dataset cannot train a model as asked (too few images, one class only, ...)."""


@dataclass
class TrainConfig:
    """Everything a training needs. None means "the architecture's seed default".

    split_method "patient" (default) keeps every patient on one side of the train/validation
    split; "image" reproduces the seed's leaky image-level split. val_fraction None means 0.2
    for patient splits and the seed's 0.25 for image splits. early_stopping is a patience in
    epochs (on validation AUC, best weights restored) or None.
    """

    arch: str = "baseline"
    data_root: str | Path | None = None
    epochs: int | None = None
    batch_size: int | None = None
    image_size: int | None = None
    channels: int | None = None
    learning_rate: float = 1e-3
    seed: int = 0
    split_seed: int | None = None  # the validation split's seed (None: `seed`); ensemble members share it
    split_method: str = "patient"
    val_fraction: float | None = None
    class_weight: str | None = None
    augment: bool | str = False  # "none", "mild" (True) or "strong" (xray_core.augment)
    early_stopping: int | None = None
    selection: str = "stress"  # early stopping watches the pooled stress validation, or "plain" AUC
    arch_options: dict | None = None  # keyword settings of the builder (pneumonet: widths)
    lr_schedule: str | None = None  # None (constant) or "cosine"
    label_smoothing: float = 0.0
    threshold_method: str = "sensitivity"
    min_sensitivity: float = 0.95
    runs_root: str | Path | None = None
    run_id: str | None = None
    resume: str | None = None
    distributed: bool = False  # MultiWorkerMirroredStrategy from TF_CONFIG (xray_core.distributed)


# --------------------------------------------------------------------------- small helpers


def _versions() -> dict:
    import tensorflow as tf

    import xray_core

    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "xray_core": xray_core.__version__,
        "python": platform.python_version(),
    }


def _use_gpu_politely() -> list[str]:
    """Let TensorFlow take GPU memory as needed instead of all of it, so runs can share a GPU."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError as exc:
            # Raised once the GPU is initialised (a second train() in one process): harmless,
            # the first call already set it.
            print(f"note: GPU memory growth unchanged ({exc})", file=sys.stderr)
    return [gpu.name for gpu in gpus]


def balanced_class_weights(labels: np.ndarray) -> dict[int, float]:
    """n / (2 * n_c) per class, as scikit-learn's "balanced": each class weighs the same in total."""
    labels = np.asarray(labels, dtype=int)
    n = len(labels)
    return {c: float(n / (2 * max(1, int((labels == c).sum())))) for c in (0, 1)}


def _dataset(x, y, w, batch_size: int, *, shuffle: bool, seed: int, augment: bool | str):
    """A tf.data pipeline over in-memory arrays: seeded shuffle, optional augmentation, prefetch."""
    import tensorflow as tf

    from xray_core import augment as augment_mod

    tensors = (x, y) if w is None else (x, y, w)
    ds = tf.data.Dataset.from_tensor_slices(tensors)
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    # Training drops the last partial batch: one batch shape means one trace of the train step
    # (a second shape would cost a retrace); the reshuffle each epoch means every image is still
    # seen.
    ds = ds.batch(batch_size, drop_remainder=shuffle and len(x) > batch_size)
    ds = augment_mod.augment_dataset(ds, augment_mod.check_level(augment), seed)
    return ds.prefetch(tf.data.AUTOTUNE)


def _read_history(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        rows = []
        for row in csv.DictReader(fh):
            rows.append({k: (float(v) if v not in ("", None) else None) for k, v in row.items()})
    for row in rows:
        row["epoch"] = int(row["epoch"])
    return rows


def _two_columns(raw: np.ndarray) -> np.ndarray:
    """The seed's two-column view of any head (1-unit heads become [1 - p, p])."""
    if raw.shape[-1] >= 2:
        return raw[:, :2]
    return np.stack([1 - raw[:, 0], raw[:, 0]], axis=1)


# --------------------------------------------------------------------------- the training


def _resolve(config: TrainConfig) -> tuple[Path, dict, int]:
    """Create (or reopen, for resume) the run folder; return it, the saved config, start epoch."""
    if config.resume:
        run_dir = runs.run_path(config.resume, config.runs_root)
        saved = run_dir / runs.CONFIG_FILE
        if not saved.is_file():
            raise runs.RunNotFound(
                f"Cannot resume {config.resume!r}: {saved} does not exist. "
                "List resumable runs with `python -m xray_core runs`."
            )
        cfg = fileio.read_json(saved)
        status = runs.effective_status(fileio.read_json(run_dir / runs.STATUS_FILE)
                                       if (run_dir / runs.STATUS_FILE).is_file() else {})
        if status.get("state") in runs.ACTIVE_STATES and status.get("pid") not in (None, os.getpid()):
            raise runs.RunBusy(f"Run {config.resume!r} is still training (pid {status.get('pid')}); "
                               "it cannot be resumed twice.")
        meta = run_dir / runs.CHECKPOINT_META_FILE
        if not (run_dir / runs.CHECKPOINT_FILE).is_file() or not meta.is_file():
            raise TrainingDataError(
                f"Run {config.resume!r} has no checkpoint (it stopped before finishing an epoch); "
                "start a new training instead."
            )
        start = int(fileio.read_json(meta)["epoch"])
        if config.epochs is not None:
            cfg["epochs"] = int(config.epochs)
        if config.data_root is not None:
            cfg["data_root"] = str(config.data_root)
        cfg.setdefault("resumed", []).append({"from_epoch": start, "at": runs.now_iso()})
        (run_dir / runs.STOP_FILE).unlink(missing_ok=True)
        for leftover in run_dir.glob(fileio.TEMP_GLOB):
            leftover.unlink()  # temporary files of writes the killed process never finished
        return run_dir, cfg, start

    from xray_core import architectures

    if config.arch not in architectures.ARCHITECTURES:
        raise ValueError(
            f"Unknown architecture {config.arch!r}; choose one of: {', '.join(architectures.ARCHITECTURES)}."
        )
    spec = architectures.ARCHITECTURES[config.arch]
    if config.data_root is None:
        raise ValueError("No dataset folder given: pass data_root (on the command line, --data DIR).")
    if config.class_weight not in (None, "balanced"):
        raise ValueError(f"class_weight must be 'balanced' or None; got {config.class_weight!r}.")
    if config.split_method not in ("patient", "image"):
        raise ValueError(f"split must be 'patient' or 'image'; got {config.split_method!r}.")
    epochs = int(config.epochs if config.epochs is not None else spec.epochs)
    batch_size = int(config.batch_size if config.batch_size is not None else spec.batch_size)
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch size must be at least 1; got {epochs} and {batch_size}.")
    if config.early_stopping is not None and int(config.early_stopping) < 1:
        raise ValueError(f"early-stopping patience must be at least 1 epoch; got {config.early_stopping}.")
    image_size = int(config.image_size if config.image_size is not None else spec.image_size)
    channels = int(config.channels if config.channels is not None else spec.channels)
    architectures.check_input_shape((image_size, image_size, channels), spec.min_size)
    from xray_core import augment

    augment_level = augment.check_level(config.augment)
    if config.selection not in ("stress", "plain"):
        raise ValueError(f"selection must be 'stress' or 'plain'; got {config.selection!r}.")
    if config.lr_schedule not in (None, "cosine"):
        raise ValueError(f"lr_schedule must be None or 'cosine'; got {config.lr_schedule!r}.")
    if not 0 <= float(config.label_smoothing) < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5); got {config.label_smoothing!r}.")
    val_fraction = config.val_fraction
    if val_fraction is None:
        val_fraction = 0.2 if config.split_method == "patient" else 0.25

    if config.run_id:
        run_dir = runs.create_run_dir(config.run_id, config.runs_root)
    else:
        run_dir = runs.runs_root(config.runs_root) / runs.new_run_id(config.arch, config.runs_root)
    cfg = {
        "run_id": run_dir.name,
        "arch": config.arch,
        "data_root": str(Path(config.data_root).absolute()),
        "image_size": image_size,
        "channels": channels,
        "output_units": spec.output_units,
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": float(config.learning_rate),
        "seed": int(config.seed),
        "split": {"method": config.split_method, "val_fraction": float(val_fraction),
                  "seed": int(config.seed if config.split_seed is None else config.split_seed)},
        "class_weight": config.class_weight,
        "augment": augment_level,
        "early_stopping": None if config.early_stopping is None else {"patience": int(config.early_stopping)},
        "selection": config.selection,
        "arch_options": dict(config.arch_options or {}),
        "lr_schedule": config.lr_schedule,
        "label_smoothing": float(config.label_smoothing),
        "threshold": {"method": config.threshold_method, "min_sensitivity": float(config.min_sensitivity)},
        "versions": _versions(),
        "created": runs.now_iso(),
    }
    return run_dir, cfg, 0


def _load_split(df, cfg: dict, progress: Progress | None, what: str):
    from xray_core import data

    def report(done, total):
        if progress is not None:
            progress({"phase": "loading", "what": what, "done": done, "total": total})

    size = (cfg["image_size"], cfg["image_size"])
    result = data.load_images(df["path"].tolist(), size=size, channels=cfg["channels"], progress=report)
    labels = df["label"].to_numpy()[result.ok].astype(int)
    return result.images, labels, result.failed, df["path"].to_numpy()[result.ok]


def train(config: TrainConfig, progress: Progress | None = None) -> Path:
    """Train one run and return its folder. Raises (after writing status failed) on errors.

    progress, if given, receives dicts: {"phase": "loading", "done", "total"} while images load,
    then the status fields with "phase": "training" after every batch, then "evaluating"/"done".
    """
    if config.distributed:
        return _train_distributed(config, progress)
    return _train_one(config, progress)


def _train_distributed(config: TrainConfig, progress: Progress | None) -> Path:
    """One worker of a multi-worker training: the chief writes the run, the others a temporary
    copy (removed). The strategy comes first: TensorFlow wants it before any other TF work."""
    import dataclasses

    from xray_core import distributed

    cluster = distributed.cluster_spec()
    strategy = distributed.strategy()
    root = distributed.worker_runs_root(cluster, config.runs_root, resume=config.resume)
    return _train_one(dataclasses.replace(config, runs_root=root), progress, strategy=strategy)


def _train_one(config: TrainConfig, progress: Progress | None, strategy=None) -> Path:
    run_dir, cfg, initial_epoch = _resolve(config)
    if strategy is not None:
        from xray_core import distributed

        cfg["distributed"] = {"workers": distributed.n_workers(distributed.cluster_spec()),
                              "strategy": "MultiWorkerMirroredStrategy"}
    status = runs.StatusWriter(run_dir)
    status.update(state="queued", epochs=cfg["epochs"], epoch=initial_epoch, error=None)
    fileio.atomic_write_json(run_dir / runs.CONFIG_FILE, cfg)
    status.start_heartbeat()
    try:
        _train_in(run_dir, cfg, initial_epoch, status, progress, strategy=strategy)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            state, message = "cancelled", "Stopped from the keyboard (Ctrl-C) before finishing."
        else:
            state, message = "failed", f"{type(exc).__name__}: {exc}"
            fileio.atomic_write_text(run_dir / "error.log", traceback.format_exc())
        status.update(state=state, error=message, eta_seconds=None)
        raise
    finally:
        status.stop_heartbeat()
    return run_dir


def _train_in(run_dir: Path, cfg: dict, initial_epoch: int, status: runs.StatusWriter,
              progress: Progress | None, strategy=None) -> None:
    from xray_core import architectures, data

    keras.utils.set_random_seed(int(cfg["seed"]) + initial_epoch)
    gpus = _use_gpu_politely()
    status.update(state="running", device="GPU" if gpus else "CPU")

    df = data.index_dataset(cfg["data_root"])
    train_df, val_df = data.split_train(df, method=cfg["split"]["method"],
                                        val_fraction=cfg["split"]["val_fraction"],
                                        seed=int(cfg["split"].get("seed", cfg["seed"])))
    x_train, y_train, failed_train, _ = _load_split(train_df, cfg, progress, "train")
    x_val, y_val, failed_val, _ = _load_split(val_df, cfg, progress, "validation")
    skipped = [{"path": p, "reason": r, "split": s} for s, fl in (("train", failed_train), ("validation", failed_val))
               for p, r in fl]
    if len(x_train) == 0 or len(x_val) == 0:
        raise TrainingDataError(
            f"No readable images left for training ({len(x_train)}) or validation ({len(x_val)}) in "
            f"{cfg['data_root']}; see skipped_files.json in the run folder."
        )
    for name, labels in (("training", y_train), ("validation", y_val)):
        if len(np.unique(labels)) < 2:
            raise TrainingDataError(
                f"The {name} split holds only one class ({data.CLASSES[int(labels[0])]}); a "
                "classifier needs NORMAL and PNEUMONIA images on both sides. Add images or change the split."
            )
    fileio.atomic_write_json(run_dir / runs.SKIPPED_FILE, skipped)
    cfg_counts = {
        "train": {"n": int(len(y_train)), "pneumonia": int(y_train.sum())},
        "validation": {"n": int(len(y_val)), "pneumonia": int(y_val.sum())},
        "skipped": len(skipped),
    }
    cfg["counts"] = cfg_counts
    fileio.atomic_write_json(run_dir / runs.CONFIG_FILE, cfg)

    units = int(cfg["output_units"])
    t_train = architectures.encode_targets(y_train, units)
    t_val = architectures.encode_targets(y_val, units)
    weights = None
    if cfg.get("class_weight") == "balanced":
        cw = balanced_class_weights(y_train)
        weights = np.array([cw[int(c)] for c in y_train], np.float32)

    input_shape = (cfg["image_size"], cfg["image_size"], cfg["channels"])
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        if initial_epoch > 0:
            # Optimizer state and compiled metrics come back with the checkpoint (safe_mode on).
            model = keras.models.load_model(run_dir / runs.CHECKPOINT_FILE, safe_mode=True)
        else:
            steps = int(cfg["epochs"]) * max(1, len(x_train) // int(cfg["batch_size"]))
            model = architectures.build(cfg["arch"], input_shape=input_shape, learning_rate=cfg["learning_rate"],
                                        options=cfg.get("arch_options") or None,
                                        schedule_steps=steps if cfg.get("lr_schedule") == "cosine" else None,
                                        label_smoothing=float(cfg.get("label_smoothing") or 0.0))

    bs = int(cfg["batch_size"])
    train_ds = _dataset(x_train, t_train, weights, bs, shuffle=True, seed=int(cfg["seed"]),
                        augment=cfg.get("augment") or "none")
    val_ds = _dataset(x_val, t_val, None, max(bs, 256), shuffle=False, seed=0, augment=False)

    history_rows = [r for r in _read_history(run_dir / runs.HISTORY_FILE) if r["epoch"] <= initial_epoch]
    epochs = int(cfg["epochs"])
    batches = len(x_train) // bs if len(x_train) > bs else 1
    run_cb = RunCallback(run_dir, status, epochs=epochs, batches=batches, batch_size=bs,
                         n_train=len(x_train), initial_epoch=initial_epoch,
                         history_rows=history_rows, progress=progress)
    callbacks: list = []
    stopper = None
    if cfg.get("early_stopping"):
        monitor = "val_auc"
        if cfg.get("selection", "plain") == "stress":
            # Added first: it writes the stress figures into the epoch's logs, which the run
            # callback records in history.csv and early stopping watches.
            callbacks.append(StressSelection(val_df["path"].tolist(), val_df["label"].to_numpy(),
                                             size=(cfg["image_size"], cfg["image_size"]),
                                             channels=int(cfg["channels"]), units=units))
            monitor = "stress_score"
        stopper = keras.callbacks.EarlyStopping(
            monitor=monitor, mode="max", patience=int(cfg["early_stopping"]["patience"]),
            restore_best_weights=True)
        callbacks.append(stopper)
    callbacks.insert(len(callbacks) - (1 if stopper else 0), run_cb)
    # Training health after every epoch into status.json (collapse, chance AUC, stalls, divergence);
    # a NaN or infinite loss stops the run with a sentence (health.TrainingHealthError).
    callbacks.append(health.make_callback(status, n_pneumonia=int(y_val.sum()), n_normal=int(len(y_val) - y_val.sum()),
                                          history_rows=history_rows))

    started = time.monotonic()
    if initial_epoch < epochs:
        if strategy is not None:  # Keras 3's fit fails under a multi-worker strategy: our loop
            from xray_core import distributed
            from xray_core.model import pneumonia_column

            distributed.fit(model, train_ds, val_ds, strategy=strategy, batch_size=bs, epochs=epochs,
                            initial_epoch=initial_epoch, callbacks=callbacks, pneumonia_column=pneumonia_column(units))
        else:
            model.fit(train_ds, validation_data=val_ds, epochs=epochs, initial_epoch=initial_epoch,
                      callbacks=callbacks, verbose=0, shuffle=False)  # tf.data shuffles, seeded
    train_seconds = time.monotonic() - started + sum(
        float(r.get("seconds") or 0) for r in history_rows if r["epoch"] <= initial_epoch)

    if strategy is not None:
        from xray_core import distributed

        if not distributed.is_chief(distributed.cluster_spec()):
            return  # the chief evaluates and writes the run; this worker's folder is a temporary copy
    result: dict[str, Any] = {
        "train_seconds": round(train_seconds, 3), "params": int(model.count_params()),
        "epochs_run": int(run_cb.completed_epochs), "cancelled": bool(run_cb.cancelled),
        "selection": cfg.get("selection", "plain") if stopper is not None else "last epoch"}
    if stopper is not None and stopper.best_weights is not None:
        # The saved model holds this epoch's weights (restored), not the last epoch's.
        result["best_epoch"] = int(stopper.best_epoch) + 1
    _complete(run_dir, cfg, model, result, df=df, val_df=val_df, x_val=x_val, y_val=y_val, status=status,
              progress=progress)


def _complete(run_dir: Path, cfg: dict, model, result: dict, *, df, val_df, x_val, y_val,
              status: runs.StatusWriter, progress: Progress | None) -> None:
    """The end of every run: model, validation list, metrics.json, evaluation, final status."""
    status.update(state="running", phase="evaluating", eta_seconds=None)
    if progress is not None:
        progress(dict(status.current, phase="evaluating"))
    save_model_atomically(model, run_dir / runs.MODEL_FILE)

    from xray_core import evaluation, metrics, splits
    from xray_core import model as model_mod

    splits.write_validation_list(run_dir, val_df, cfg["data_root"])
    fileio.atomic_write_json(run_dir / runs.METRICS_FILE, result)
    evaluation.finalize_run(run_dir, progress=progress)
    loaded = model_mod.load_model(run_dir, cache=False)
    evaluation.merge_metrics(run_dir, {"seed_micro_recall": float(metrics.seed_micro_recall(
        y_val, _two_columns(model_mod.network_outputs(loaded.members[0], x_val)), threshold=0.5))})
    # The official test split, when present, is scored once here at the validation threshold;
    # the 16-image official val folder is too small to select on and is only reported.
    for split, key in (("test", "test"), ("val", "official_val")):
        if (df["split"] == split).any():
            evaluation.evaluate_run(runs.Run(run_dir), cfg["data_root"], split=key, refresh=True, cache=True)

    final = "cancelled" if result.get("cancelled") else "completed"
    status.update(state=final, phase="done", fraction=1.0 if final == "completed" else status.current["fraction"],
                  eta_seconds=0.0, error=None)
    (run_dir / runs.STOP_FILE).unlink(missing_ok=True)
    if progress is not None:
        progress(dict(status.current, phase="done"))


def save_run(network, config: TrainConfig, *, history: Sequence[dict] = (),
             progress: Progress | None = None) -> Path:
    """A completed run folder around a Keras network trained elsewhere (or never): what `train`
    writes, evaluated on config's dataset and validation split, so every reader takes it for a
    run. config gives the architecture and the input (image_size, channels) the network was built
    for; history (one dict per epoch, `callbacks.HISTORY_COLUMNS`) becomes history.csv."""
    from xray_core import data

    if config.resume or config.distributed:  # train()'s
        raise ValueError("save_run makes a new run folder: it neither resumes nor distributes.")
    run_dir, cfg, _ = _resolve(config)
    rows, status = [dict(row) for row in history], runs.StatusWriter(run_dir)
    status.update(state="running", epochs=len(rows), epoch=len(rows))
    try:
        if tuple(network.input_shape[1:]) != (cfg["image_size"], cfg["image_size"], cfg["channels"]):
            raise ValueError(f"The network takes inputs of shape {tuple(network.input_shape[1:])}, not the "
                             f"{cfg['image_size']} px, {cfg['channels']} channel(s) of the configuration.")
        df = data.index_dataset(cfg["data_root"])
        train_df, val_df = data.split_train(df, method=cfg["split"]["method"],
                                            val_fraction=cfg["split"]["val_fraction"], seed=cfg["split"]["seed"])
        x_val, y_val, failed, _ = _load_split(val_df, cfg, progress, "validation")
        cfg.update(epochs=len(rows), given_network=True, counts={
            "train": {"n": int(len(train_df)), "pneumonia": int(train_df["label"].sum())},
            "validation": {"n": int(len(y_val)), "pneumonia": int(y_val.sum())}, "skipped": len(failed)})
        fileio.atomic_write_json(run_dir / runs.CONFIG_FILE, cfg)
        fileio.atomic_write_json(run_dir / runs.SKIPPED_FILE, [{"path": p, "reason": r, "split": "validation"}
                                                                for p, r in failed])
        fileio.atomic_write_text(run_dir / runs.HISTORY_FILE, history_text(rows))
        result = {"train_seconds": round(sum(float(r.get("seconds") or 0) for r in rows), 3),
                  "params": int(network.count_params()), "epochs_run": len(rows), "selection": "given network"}
        _complete(run_dir, cfg, network, result, df=df, val_df=val_df, x_val=x_val, y_val=y_val, status=status,
                  progress=progress)
    except BaseException as exc:
        status.update(state="failed", error=f"{type(exc).__name__}: {exc}", eta_seconds=None)
        raise
    return run_dir
