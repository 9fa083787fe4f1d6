"""Train one run into its folder: `train(TrainConfig(...)) -> Path`.

The run folder is the only channel between a training process and the rest of the project
(dashboard, CLI, another process): config.json first, then status.json (throttled, plus a
heartbeat), history.csv and a checkpoint after every epoch, model.keras and metrics.json at the
end. Everything goes through `runs.atomic_write_*`, so a kill at any instant leaves readable
files, and `train(TrainConfig(resume=RUN))` continues from the last completed epoch.

A GPU is used automatically when TensorFlow sees one (with memory growth on, so two trainings
can share it); nothing here forces the CPU.
"""

from __future__ import annotations

import csv
import io
import math
import os
import platform
import sys
import time
import traceback
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

import keras
import numpy as np

from xray_core import runs
from xray_core.model import pneumonia_column

HISTORY_COLUMNS = [
    "epoch", "loss", "accuracy", "sensitivity", "specificity", "precision", "auc",
    "val_loss", "val_accuracy", "val_sensitivity", "val_specificity", "val_precision", "val_auc",
    "seconds", "images_per_second",
]

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


def augmentation_layers(seed: int):
    """The mild augmentation (see `xray_core.augment`): kept for callers of the first default."""
    from xray_core import augment

    return augment.mild_layers(seed)


def _dataset(x, y, w, batch_size: int, *, shuffle: bool, seed: int, augment: bool | str):
    """A tf.data pipeline over in-memory arrays: seeded shuffle, optional augmentation, prefetch."""
    import tensorflow as tf

    from xray_core import augment as augment_mod

    tensors = (x, y) if w is None else (x, y, w)
    ds = tf.data.Dataset.from_tensor_slices(tensors)
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    # Training drops the last partial batch: one batch shape means one trace of the train step
    # (a second shape costs a retrace, seconds on small data); the reshuffle each epoch means
    # every image is still seen.
    ds = ds.batch(batch_size, drop_remainder=shuffle and len(x) > batch_size)
    ds = augment_mod.augment_dataset(ds, augment_mod.check_level(augment), seed)
    return ds.prefetch(tf.data.AUTOTUNE)


def _history_text(rows: list[dict]) -> str:
    extra = sorted({k for r in rows for k in r} - set(HISTORY_COLUMNS))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=HISTORY_COLUMNS + extra, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return out.getvalue()


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


def _save_model_atomically(model, path: Path) -> None:
    """model.save() to a temporary .keras in the same folder, then rename (atomic)."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.keras")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _two_columns(raw: np.ndarray) -> np.ndarray:
    """The seed's two-column view of any head (1-unit heads become [1 - p, p])."""
    if raw.shape[-1] >= 2:
        return raw[:, :2]
    return np.stack([1 - raw[:, 0], raw[:, 0]], axis=1)


# --------------------------------------------------------------------------- callbacks


class RunCallback(keras.callbacks.Callback):
    """Writes the run folder while Keras trains: status, history, checkpoint; obeys STOP.

    status.json: after each batch (throttled by the StatusWriter to ~2 writes/s) with epoch,
    batch, fraction done, images/s and ETA. After each completed epoch: history.csv (rewritten
    whole, atomically), then checkpoint.keras and checkpoint.json. A STOP file in the run
    folder, checked every batch, ends training after that batch.
    """

    def __init__(self, run_dir: Path, status: runs.StatusWriter, *, epochs: int, batches: int,
                 batch_size: int, n_train: int, initial_epoch: int, history_rows: list[dict],
                 progress: Progress | None = None):
        super().__init__()
        self.run_dir = run_dir
        self.status = status
        self.epochs = epochs
        self.batches = batches
        self.batch_size = batch_size
        self.n_train = n_train
        self.initial_epoch = initial_epoch
        self.rows = history_rows
        self.progress = progress
        self.cancelled = False
        self.completed_epochs = initial_epoch
        self._epoch_start = time.monotonic()
        self._train_start = time.monotonic()
        self._epoch_seconds: list[float] = []
        self._batch_in_epoch = 0
        self._last_batch_end = self._epoch_start

    def _report(self, force: bool, **fields: Any) -> None:
        self.status.update(force=force, **fields)
        if self.progress is not None:
            self.progress(dict(self.status.current, phase="training"))

    def on_train_begin(self, logs=None):
        self._train_start = time.monotonic()
        self._report(True, state="running", epochs=self.epochs, batches=self.batches,
                     epoch=self.initial_epoch + 1, batch=0,
                     fraction=self.initial_epoch / self.epochs)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.monotonic()
        self._batch_in_epoch = 0
        self._last_batch_end = self._epoch_start
        self._report(True, epoch=epoch + 1, batch=0)

    def on_train_batch_end(self, batch, logs=None):
        self._batch_in_epoch = batch + 1
        self._last_batch_end = time.monotonic()
        if (self.run_dir / runs.STOP_FILE).exists():
            self.cancelled = True
            self.model.stop_training = True
        elapsed = time.monotonic() - self._epoch_start
        done = batch + 1
        images = done * self.batch_size if self.batches > 1 else self.n_train
        ips = images / elapsed if elapsed > 0 else None
        epoch_index = self.completed_epochs
        fraction = (epoch_index + done / self.batches) / self.epochs
        per_epoch = (
            float(np.mean(self._epoch_seconds)) if self._epoch_seconds else elapsed / done * self.batches
        )
        remaining_epochs = self.epochs - epoch_index - 1
        eta = max(0.0, per_epoch - elapsed) + remaining_epochs * per_epoch
        self._report(
            self.cancelled or done == self.batches, batch=done, fraction=min(1.0, fraction),
            images_per_second=None if ips is None else round(ips, 1), eta_seconds=round(eta, 1),
        )

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.monotonic() - self._epoch_start
        if self.cancelled and self._batch_in_epoch < self.batches:
            return  # a partial epoch: neither a history row nor a checkpoint
        self._epoch_seconds.append(seconds)
        row = {"epoch": epoch + 1}
        for key, value in (logs or {}).items():
            row[key] = float(value)
        row["seconds"] = round(seconds, 3)
        # Throughput of the training steps alone; `seconds` also counts the validation pass.
        seen = self.batches * self.batch_size if self.batches > 1 else self.n_train
        fit_seconds = self._last_batch_end - self._epoch_start
        row["images_per_second"] = round(seen / fit_seconds, 1) if fit_seconds > 0 else None
        self.rows[:] = [r for r in self.rows if r["epoch"] < epoch + 1] + [row]
        runs.atomic_write_text(self.run_dir / runs.HISTORY_FILE, _history_text(self.rows))
        _save_model_atomically(self.model, self.run_dir / runs.CHECKPOINT_FILE)
        runs.atomic_write_json(self.run_dir / runs.CHECKPOINT_META_FILE,
                               {"epoch": epoch + 1, "saved": runs.now_iso()})
        self.completed_epochs = epoch + 1
        self._report(True, fraction=self.completed_epochs / self.epochs)


class StressSelection(keras.callbacks.Callback):
    """After each epoch, score the validation films under the selection changes of
    `xray_core.stress` and put the pooled figures into the epoch's logs: stress_specificity (at
    the threshold that keeps sensitivity >= 0.95), stress_auc and stress_score, which early
    stopping maximises. The stressed inputs are built once."""

    def __init__(self, paths, labels, *, size, channels: int, units: int, batch_size: int = 256):
        super().__init__()
        from xray_core import evaluation, stress

        films, ok = evaluation.load_films(list(paths))
        self.labels = np.asarray(labels, dtype=int)[ok]
        self.inputs = stress.stressed_inputs(films, size=size, channels=channels,
                                             changes=stress.SELECTION_CHANGES)
        self.column = pneumonia_column(units)
        self.batch_size = batch_size
        self._fn = None

    def _scores(self, x: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        if self._fn is None:
            model = self.model
            self._fn = tf.function(lambda b: model(b, training=False), reduce_retracing=True)
        parts = [np.asarray(self._fn(x[i : i + self.batch_size])) for i in range(0, len(x), self.batch_size)]
        return np.concatenate(parts, axis=0)[:, self.column]

    def on_epoch_end(self, epoch, logs=None):
        from xray_core import stress

        scores = {name: self._scores(x) for name, x in self.inputs.items()}
        sel = stress.selection_score(self.labels, scores)
        if logs is not None:
            logs["stress_specificity"] = sel["specificity"]
            logs["stress_auc"] = sel["roc_auc"]
            logs["stress_score"] = sel["score"]


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
        cfg = runs.read_json(saved)
        status = runs.effective_status(runs.read_json(run_dir / runs.STATUS_FILE)
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
        start = int(runs.read_json(meta)["epoch"])
        if config.epochs is not None:
            cfg["epochs"] = int(config.epochs)
        if config.data_root is not None:
            cfg["data_root"] = str(config.data_root)
        cfg.setdefault("resumed", []).append({"from_epoch": start, "at": runs.now_iso()})
        (run_dir / runs.STOP_FILE).unlink(missing_ok=True)
        for leftover in run_dir.glob(".*.tmp*"):
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
    architectures._check_input_shape((image_size, image_size, channels), spec.min_size)
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
    run_dir, cfg, initial_epoch = _resolve(config)
    status = runs.StatusWriter(run_dir)
    status.update(state="queued", epochs=cfg["epochs"], epoch=initial_epoch, error=None)
    runs.atomic_write_json(run_dir / runs.CONFIG_FILE, cfg)
    status.start_heartbeat()
    try:
        _train_in(run_dir, cfg, initial_epoch, status, progress)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            state, message = "cancelled", "Stopped from the keyboard (Ctrl-C) before finishing."
        else:
            state, message = "failed", f"{type(exc).__name__}: {exc}"
            runs.atomic_write_text(run_dir / "error.log", traceback.format_exc())
        status.update(state=state, error=message, eta_seconds=None)
        raise
    finally:
        status.stop_heartbeat()
    return run_dir


def _train_in(run_dir: Path, cfg: dict, initial_epoch: int, status: runs.StatusWriter,
              progress: Progress | None) -> None:
    from xray_core import architectures, data, metrics

    keras.utils.set_random_seed(int(cfg["seed"]) + initial_epoch)
    gpus = _use_gpu_politely()
    status.update(state="running", device="GPU" if gpus else "CPU")

    df = data.index_dataset(cfg["data_root"])
    train_df, val_df = data.split_train(df, method=cfg["split"]["method"],
                                        val_fraction=cfg["split"]["val_fraction"],
                                        seed=int(cfg["split"].get("seed", cfg["seed"])))
    x_train, y_train, failed_train, _ = _load_split(train_df, cfg, progress, "train")
    x_val, y_val, failed_val, paths_val = _load_split(val_df, cfg, progress, "validation")
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
    runs.atomic_write_json(run_dir / runs.SKIPPED_FILE, skipped)
    cfg_counts = {
        "train": {"n": int(len(y_train)), "pneumonia": int(y_train.sum())},
        "validation": {"n": int(len(y_val)), "pneumonia": int(y_val.sum())},
        "skipped": len(skipped),
    }
    cfg["counts"] = cfg_counts
    runs.atomic_write_json(run_dir / runs.CONFIG_FILE, cfg)

    units = int(cfg["output_units"])
    t_train = architectures.encode_targets(y_train, units)
    t_val = architectures.encode_targets(y_val, units)
    weights = None
    if cfg.get("class_weight") == "balanced":
        cw = balanced_class_weights(y_train)
        weights = np.array([cw[int(c)] for c in y_train], np.float32)

    input_shape = (cfg["image_size"], cfg["image_size"], cfg["channels"])
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

    started = time.monotonic()
    if initial_epoch < epochs:
        model.fit(train_ds, validation_data=val_ds, epochs=epochs, initial_epoch=initial_epoch,
                  callbacks=callbacks, verbose=0, shuffle=False)  # tf.data shuffles, seeded
    train_seconds = time.monotonic() - started + sum(
        float(r.get("seconds") or 0) for r in history_rows if r["epoch"] <= initial_epoch)

    status.update(state="running", phase="evaluating", eta_seconds=None)
    if progress is not None:
        progress(dict(status.current, phase="evaluating"))
    _save_model_atomically(model, run_dir / runs.MODEL_FILE)

    from xray_core import evaluation
    from xray_core import model as model_mod

    evaluation.write_validation_list(run_dir, val_df, cfg["data_root"])
    result: dict[str, Any] = {
        "train_seconds": round(train_seconds, 3),
        "params": int(model.count_params()),
        "epochs_run": int(run_cb.completed_epochs),
        "cancelled": bool(run_cb.cancelled),
        "selection": cfg.get("selection", "plain") if stopper is not None else "last epoch",
    }
    if stopper is not None and stopper.best_weights is not None:
        # The saved model holds this epoch's weights (restored), not the last epoch's.
        result["best_epoch"] = int(stopper.best_epoch) + 1
    runs.atomic_write_json(run_dir / runs.METRICS_FILE, result)
    evaluation.finalize_run(run_dir, progress=progress)
    loaded = model_mod.load_model(run_dir, cache=False)
    evaluation._merge_metrics(run_dir, {"seed_micro_recall": float(metrics.seed_micro_recall(
        y_val, _two_columns(loaded.head_outputs(x_val)), threshold=0.5))})
    # The official test split, when present, is scored once here at the validation threshold;
    # the 16-image official val folder is too small to select on and is only reported.
    for split, key in (("test", "test"), ("val", "official_val")):
        if (df["split"] == split).any():
            evaluation.evaluate_run(runs.Run(run_dir), cfg["data_root"], key, refresh=True, cache=True)

    final = "cancelled" if run_cb.cancelled else "completed"
    status.update(state=final, phase="done", fraction=1.0 if final == "completed" else status.current["fraction"],
                  eta_seconds=0.0, error=None)
    (run_dir / runs.STOP_FILE).unlink(missing_ok=True)
    if progress is not None:
        progress(dict(status.current, phase="done"))


# --------------------------------------------------------------------------- presets and ensembles

# The recipe of the bundled default (issue: hold up on new patients). Chosen on the shift-stress
# validation; benchmarks/generalization.py keeps the ablation behind it.
PRESETS: dict[str, dict] = {
    "default": {
        "arch": "pneumonet", "image_size": 192, "channels": 1, "epochs": 24, "batch_size": 32,
        "learning_rate": 1e-3, "lr_schedule": "cosine", "class_weight": "balanced", "augment": "strong",
        "early_stopping": 6, "selection": "stress", "arch_options": {"widths": [24, 64, 128, 256]},
        "members": 3,
    },
}


def preset_config(name: str, **overrides) -> tuple[dict, int]:
    """(TrainConfig keyword settings, number of ensemble members) of a named preset."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; choose one of: {', '.join(PRESETS)}.")
    settings = dict(PRESETS[name])
    members = int(overrides.pop("members", None) or settings.pop("members", 1))
    settings.pop("members", None)
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return settings, members


def train_preset(name: str, data_root: str | Path, *, run_id: str | None = None,
                 runs_root: str | Path | None = None, progress: Progress | None = None,
                 members: int | None = None, seed: int = 0, **overrides) -> Path:
    """Train a preset: one run per member (`<run_id>-member<i>`, seeds seed+i, one shared
    validation split), then assemble them into the run `<run_id>` (an ensemble when members > 1).

    Rerunning the same command continues where it stopped: completed members are reused and an
    interrupted one resumes from its last epoch.
    """
    settings, k = preset_config(name, members=members, **overrides)
    run_id = run_id or runs.new_run_id(f"{name}-ensemble", runs_root, create=False)
    runs.validate_run_id(run_id)
    member_dirs = []
    for i in range(k):
        member_id = f"{run_id}-member{i}"
        path = runs.run_path(member_id, runs_root)
        state = runs._run_info(path).state if path.is_dir() else None
        if state == "completed" and (path / runs.MODEL_FILE).is_file():
            member_dirs.append(path)
            continue
        if state is not None and (path / runs.CHECKPOINT_FILE).is_file():
            member_dirs.append(train(TrainConfig(resume=member_id, runs_root=runs_root), progress=progress))
            continue
        member_dirs.append(train(TrainConfig(
            data_root=data_root, seed=seed + i, split_seed=seed, run_id=member_id, runs_root=runs_root,
            **settings), progress=progress))
    return assemble_ensemble(member_dirs, run_id=run_id, runs_root=runs_root, progress=progress,
                             preset=name)


def assemble_ensemble(member_dirs, *, run_id: str, runs_root: str | Path | None = None,
                      progress: Progress | None = None, preset: str | None = None,
                      bundled: bool = False) -> Path:
    """One run folder from trained member runs: their networks (member-<i>.keras), member 0's
    history, a config naming the members; then calibrated, thresholded and reported on the shared
    validation split under shift stress (`evaluation.finalize_run`). Members must share the input
    and the validation split."""
    import shutil

    from xray_core import evaluation
    from xray_core import model as model_mod

    member_dirs = [Path(p) for p in member_dirs]
    configs = [runs.read_json(p / runs.CONFIG_FILE) for p in member_dirs]
    keys = [(c["image_size"], c["channels"], json_key(c.get("split")), c["data_root"]) for c in configs]
    if len(set(keys)) != 1:
        raise ValueError("Ensemble members must share image size, channels, validation split and dataset; "
                         f"got {keys}.")
    target = runs.run_path(run_id, runs_root)
    staging = target.parent / f".assembling-{run_id}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    names = []
    for i, p in enumerate(member_dirs):
        name = runs.MODEL_FILE if i == 0 else f"member-{i}.keras"
        shutil.copy2(p / runs.MODEL_FILE, staging / name)
        names.append(name)
    for f in (runs.HISTORY_FILE, evaluation.VALIDATION_FILE, runs.SKIPPED_FILE):
        if (member_dirs[0] / f).is_file():
            shutil.copy2(member_dirs[0] / f, staging / f)
    cfg = dict(configs[0])
    cfg.update(run_id=run_id, preset=preset, seed=[c["seed"] for c in configs],
               members=[{"run_id": p.name, "seed": c["seed"],
                         "best_epoch": (runs.read_json(p / runs.METRICS_FILE) or {}).get("best_epoch"),
                         "epochs_run": (runs.read_json(p / runs.METRICS_FILE) or {}).get("epochs_run"),
                         "train_seconds": (runs.read_json(p / runs.METRICS_FILE) or {}).get("train_seconds")}
                        for p, c in zip(member_dirs, configs)],
               created=runs.now_iso())
    runs.atomic_write_json(staging / runs.CONFIG_FILE, cfg)
    runs.atomic_write_json(staging / runs.STATUS_FILE, {"state": "completed", "updated": runs.now_iso()})
    member_metrics = [runs.read_json(p / runs.METRICS_FILE) for p in member_dirs]
    runs.atomic_write_json(staging / runs.METRICS_FILE, {
        "train_seconds": round(sum(float(m.get("train_seconds") or 0) for m in member_metrics), 3),
        "params": int(sum(int(m.get("params") or 0) for m in member_metrics)),
        "epochs_run": [m.get("epochs_run") for m in member_metrics],
        "selection": member_metrics[0].get("selection"),
    })
    model_mod.write_spec(staging, members=names, input_size=(cfg["image_size"], cfg["image_size"]),
                         channels=int(cfg["channels"]), threshold=0.5, extra={"bundled": bool(bundled)})
    if target.exists():
        old = target.parent / f".replaced-{run_id}-{os.getpid()}"
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old)
    else:
        os.replace(staging, target)
    evaluation.finalize_run(target, progress=progress)
    return target


def json_key(value) -> str:
    import json

    return json.dumps(value, sort_keys=True)
