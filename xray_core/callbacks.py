"""The Keras callbacks of a training: the run folder written while it trains, and the
shift-stress scores that model selection watches."""

from __future__ import annotations

import csv
import io
import os
import time
from pathlib import Path
from typing import Any, Callable

import keras
import numpy as np

from xray_core import fileio, runs
from xray_core.model import pneumonia_column

Progress = Callable[[dict], None]

HISTORY_COLUMNS = [
    "epoch", "loss", "accuracy", "sensitivity", "specificity", "precision", "auc",
    "val_loss", "val_accuracy", "val_sensitivity", "val_specificity", "val_precision", "val_auc",
    "seconds", "images_per_second",
]


def history_text(rows: list[dict]) -> str:
    extra = sorted({k for r in rows for k in r} - set(HISTORY_COLUMNS))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=HISTORY_COLUMNS + extra, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return out.getvalue()


def save_model_atomically(model, path: str | os.PathLike) -> None:
    """model.save() to a temporary .keras in the same folder, then rename (atomic)."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.keras")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
        self._epoch_seconds: list[float] = []
        self._batch_in_epoch = 0
        self._last_batch_end = self._epoch_start

    def _report(self, force: bool, **fields: Any) -> None:
        self.status.update(force=force, **fields)
        if self.progress is not None:
            self.progress(dict(self.status.current, phase="training"))

    def on_train_begin(self, logs=None):
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
        fileio.atomic_write_text(self.run_dir / runs.HISTORY_FILE, history_text(self.rows))
        save_model_atomically(self.model, self.run_dir / runs.CHECKPOINT_FILE)
        fileio.atomic_write_json(self.run_dir / runs.CHECKPOINT_META_FILE,
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

    def _scores(self, x: np.ndarray) -> np.ndarray:
        from xray_core.model import network_outputs

        return network_outputs(self.model, x, batch_size=self.batch_size)[:, self.column]

    def on_epoch_end(self, epoch, logs=None):
        from xray_core import stress

        scores = {name: self._scores(x) for name, x in self.inputs.items()}
        sel = stress.selection_score(self.labels, scores)
        if logs is not None:
            logs["stress_specificity"] = sel["specificity"]
            logs["stress_auc"] = sel["roc_auc"]
            logs["stress_score"] = sel["score"]
