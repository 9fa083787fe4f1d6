"""Training health: plain-language warnings about a training that is going wrong, while it runs.

Pure functions over history rows (the dicts of history.csv: ``loss``, ``val_loss``, ``val_auc``,
``val_sensitivity``, ``val_specificity``, ...) and validation scores, each returning a list of
:class:`HealthWarning`. :func:`assess` runs them all. :func:`make_callback` wraps them in a Keras
callback that writes the warnings into status.json (``health``) after every epoch and stops the
training at the first NaN or infinite loss.

The conditions, each with a suggestion a user can act on:

- ``nan_loss`` (severity ``stop``): the loss is NaN or infinite; the weights are garbage from there on.
- ``collapsed``: the model gives the same verdict for >= 99 % of the validation images.
- ``chance_auc``: validation ROC AUC <= 0.55 after 3 or more epochs (it ranks no better than a coin).
- ``loss_flat``: the training loss has not fallen by 1 % over the last 3 epochs.
- ``diverging``: validation loss rose for 2 epochs in a row while the training loss fell.

No TensorFlow at import time: the dashboard reads these warnings from status.json.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "HealthWarning", "TrainingHealthError", "check_finite_loss", "check_collapse",
    "check_collapse_scores", "check_chance_auc", "check_loss_flat", "check_diverging", "assess",
    "predicted_share", "make_callback", "from_status",
]

#: A model giving one verdict to at least this share of validation images is "collapsed".
COLLAPSE_SHARE = 0.99
#: Validation AUC at or below this after CHANCE_AFTER_EPOCHS epochs is "no better than chance".
CHANCE_AUC = 0.55
CHANCE_AFTER_EPOCHS = 3
#: The training loss must fall by at least this fraction over FLAT_WINDOW epochs.
FLAT_MIN_DROP = 0.01
FLAT_WINDOW = 3
#: Validation loss rising this many epochs in a row while training loss falls is "diverging".
DIVERGE_EPOCHS = 2

SEVERITIES = ("stop", "warning")


class TrainingHealthError(ArithmeticError):
    """Raised by the health callback to stop a training whose loss is no longer a number."""


@dataclass(frozen=True)
class HealthWarning:
    """One finding: a stable code, how serious it is, the epoch, and two plain sentences."""

    code: str
    severity: str  # "stop" (the run cannot continue) or "warning"
    epoch: int | None
    message: str
    suggestion: str

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def text(self) -> str:
        where = f"Epoch {self.epoch}: " if self.epoch is not None else ""
        return f"{where}{self.message} {self.suggestion}"


# --------------------------------------------------------------------------- helpers


def _number(row: Mapping[str, Any], key: str) -> float | None:
    """row[key] as a float, or None when missing or empty (NaN and inf are kept)."""
    value = row.get(key)
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _rows(history: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """History as a list of mappings (accepts a pandas DataFrame too), in epoch order."""
    if hasattr(history, "to_dict") and hasattr(history, "columns"):
        history = history.to_dict("records")
    rows = list(history)
    for row in rows:
        if not isinstance(row, Mapping):
            raise TypeError(f"history rows must be mappings (dicts of history.csv); got {type(row).__name__}.")
    return rows


def _epoch(row: Mapping[str, Any], index: int) -> int:
    value = _number(row, "epoch")
    return int(value) if value is not None and math.isfinite(value) else index + 1


def predicted_share(y_score, *, threshold: float = 0.5) -> tuple[float, str]:
    """(share, class) of the majority verdict among the scores at a threshold.

    A score at or above the threshold is PNEUMONIA, as in xray_core.metrics.
    """
    s = np.asarray(y_score, dtype=np.float64).ravel()
    if s.size == 0:
        raise ValueError("predicted_share needs at least one validation score; got none.")
    positive = float((s >= threshold).mean())
    return (positive, "PNEUMONIA") if positive >= 0.5 else (1.0 - positive, "NORMAL")


# --------------------------------------------------------------------------- checks


def check_finite_loss(history, *, loss: float | None = None, epoch: int | None = None) -> list[HealthWarning]:
    """A ``stop`` warning when any epoch's training or validation loss (or `loss`, e.g. one
    batch's) is NaN or infinite."""
    found = []
    if loss is not None and not math.isfinite(float(loss)):
        found.append((epoch, "training", float(loss)))
    for i, row in enumerate(_rows(history)):
        for key, what in (("loss", "training"), ("val_loss", "validation")):
            value = _number(row, key)
            if value is not None and not math.isfinite(value):
                found.append((_epoch(row, i), what, value))
                break
    if not found:
        return []
    ep, what, value = found[0]
    return [HealthWarning(
        "nan_loss", "stop", ep,
        f"The {what} loss became {'NaN' if math.isnan(value) else 'infinite'}, so the weights are no "
        f"longer numbers and the training was stopped.",
        "Lower the learning rate (for example 10 times), check the images for blank or corrupt "
        "files, and start a new training (or resume from the last good checkpoint).",
    )]


def _collapse_warning(share: float, cls: str, epoch: int | None, auc: float | None,
                      threshold: float) -> HealthWarning:
    ranking = ""
    if auc is not None and math.isfinite(auc):
        ranking = (f" Its validation ROC AUC is {auc:.3f}"
                   + (", so it still ranks the images; the operating threshold chosen at the end may "
                      "separate them." if auc > CHANCE_AUC else ", so it does not rank them either.")
                   )
    return HealthWarning(
        "collapsed", "warning", epoch,
        f"The model calls {share:.1%} of the validation images {cls} at threshold {threshold:g}: it "
        f"has collapsed onto one class.{ranking}",
        "Use class weights (--class-weight balanced), a lower learning rate (for example 1e-4) or "
        "more epochs; some architectures (the original study's model 3) stay stuck for several epochs before "
        "they learn.",
    )


def check_collapse(history, *, n_pneumonia: int, n_normal: int, threshold: float = 0.5,
                   max_share: float = COLLAPSE_SHARE) -> list[HealthWarning]:
    """Collapse at the last epoch, from its validation sensitivity and specificity.

    The share of validation images called PNEUMONIA is
    (sensitivity * n_pneumonia + (1 - specificity) * n_normal) / n, exact for the metrics'
    threshold (0.5 in training).
    """
    rows = _rows(history)
    if n_pneumonia < 0 or n_normal < 0 or n_pneumonia + n_normal == 0:
        raise ValueError(f"check_collapse needs the validation class counts; got {n_pneumonia} "
                         f"pneumonia and {n_normal} normal images.")
    if not rows:
        return []
    last = rows[-1]
    sens, spec = _number(last, "val_sensitivity"), _number(last, "val_specificity")
    if sens is None or spec is None or not (math.isfinite(sens) and math.isfinite(spec)):
        return []
    positive = (sens * n_pneumonia + (1 - spec) * n_normal) / (n_pneumonia + n_normal)
    share, cls = (positive, "PNEUMONIA") if positive >= 0.5 else (1 - positive, "NORMAL")
    if share < max_share:
        return []
    return [_collapse_warning(share, cls, _epoch(last, len(rows) - 1), _number(last, "val_auc"), threshold)]


def check_collapse_scores(y_score, *, threshold: float = 0.5, epoch: int | None = None,
                          auc: float | None = None, max_share: float = COLLAPSE_SHARE) -> list[HealthWarning]:
    """Collapse from validation scores directly (e.g. a finished run's predictions)."""
    share, cls = predicted_share(y_score, threshold=threshold)
    if share < max_share:
        return []
    return [_collapse_warning(share, cls, epoch, auc, threshold)]


def check_chance_auc(history, *, max_auc: float = CHANCE_AUC,
                     after_epochs: int = CHANCE_AFTER_EPOCHS) -> list[HealthWarning]:
    """Validation AUC <= max_auc at the last epoch, once `after_epochs` epochs have run."""
    rows = _rows(history)
    if len(rows) < 1:
        return []
    last = rows[-1]
    ep = _epoch(last, len(rows) - 1)
    auc = _number(last, "val_auc")
    if ep < after_epochs or auc is None or not math.isfinite(auc) or auc > max_auc:
        return []
    return [HealthWarning(
        "chance_auc", "warning", ep,
        f"After {ep} epochs the validation ROC AUC is {auc:.3f}: the model ranks pneumonia and "
        f"normal films no better than chance (0.5).",
        "Stop and retrain with class weights (--class-weight balanced) or a lower learning rate; "
        "if it stays at chance, check that the labels and images load correctly on the Dataset page.",
    )]


def check_loss_flat(history, *, window: int = FLAT_WINDOW,
                    min_drop: float = FLAT_MIN_DROP) -> list[HealthWarning]:
    """The training loss of the last epoch is not `min_drop` (relative) below the loss
    `window - 1` epochs earlier."""
    rows = _rows(history)
    if window < 2:
        raise ValueError(f"window must be at least 2 epochs; got {window}.")
    if len(rows) < window:
        return []
    first, last = _number(rows[-window], "loss"), _number(rows[-1], "loss")
    if first is None or last is None or not (math.isfinite(first) and math.isfinite(last)):
        return []
    if last < first * (1 - min_drop):
        return []
    ep = _epoch(rows[-1], len(rows) - 1)
    return [HealthWarning(
        "loss_flat", "warning", ep,
        f"The training loss has not decreased over the last {window} epochs ({first:.4f} at epoch "
        f"{_epoch(rows[-window], len(rows) - window)}, {last:.4f} now): the model is no longer learning.",
        "If it is also collapsed or at chance, lower the learning rate or add class weights; if "
        "validation is already good, fewer epochs (or early stopping) would do.",
    )]


def check_diverging(history, *, epochs: int = DIVERGE_EPOCHS) -> list[HealthWarning]:
    """Validation loss rose in each of the last `epochs` epochs while the training loss fell."""
    rows = _rows(history)
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1; got {epochs}.")
    if len(rows) < epochs + 1:
        return []
    tail = rows[-(epochs + 1):]
    val = [_number(r, "val_loss") for r in tail]
    train = [_number(r, "loss") for r in tail]
    if any(v is None or not math.isfinite(v) for v in val + train):
        return []
    val_up = all(b > a for a, b in zip(val, val[1:]))
    train_down = train[-1] < train[0]
    if not (val_up and train_down):
        return []
    ep = _epoch(rows[-1], len(rows) - 1)
    return [HealthWarning(
        "diverging", "warning", ep,
        f"Validation loss rose for {epochs} epochs in a row ({val[0]:.4f} to {val[-1]:.4f}) while the "
        f"training loss fell ({train[0]:.4f} to {train[-1]:.4f}): the model is starting to memorise "
        f"the training images (overfitting).",
        "Use early stopping (it keeps the best epoch), augmentation, or fewer epochs.",
    )]


def assess(history, *, n_pneumonia: int | None = None, n_normal: int | None = None,
           val_scores=None, threshold: float = 0.5) -> list[HealthWarning]:
    """Every check over a history (and optionally the class counts or final validation scores).

    A NaN loss returns only that warning: the other figures mean nothing after it.
    """
    rows = _rows(history)
    nan = check_finite_loss(rows)
    if nan:
        return nan
    out: list[HealthWarning] = []
    if val_scores is not None:
        auc = _number(rows[-1], "val_auc") if rows else None
        out += check_collapse_scores(val_scores, threshold=threshold,
                                     epoch=_epoch(rows[-1], len(rows) - 1) if rows else None, auc=auc)
    elif n_pneumonia is not None and n_normal is not None:
        out += check_collapse(rows, n_pneumonia=n_pneumonia, n_normal=n_normal, threshold=threshold)
    out += check_chance_auc(rows)
    out += check_loss_flat(rows)
    out += check_diverging(rows)
    return out


def from_status(status: Mapping[str, Any] | None) -> list[HealthWarning]:
    """The warnings a status.json holds (``health``), as HealthWarning objects; malformed entries
    are skipped (status.json is written by other processes and other versions)."""
    items = (status or {}).get("health") or []
    out = []
    if not isinstance(items, Sequence):
        return out
    for item in items:
        if not isinstance(item, Mapping) or item.get("severity") not in SEVERITIES:
            continue
        epoch = item.get("epoch")
        out.append(HealthWarning(str(item.get("code", "")), str(item["severity"]),
                                 int(epoch) if isinstance(epoch, (int, float)) else None,
                                 str(item.get("message", "")), str(item.get("suggestion", ""))))
    return out


# --------------------------------------------------------------------------- Keras callback

_CALLBACK_CLASS = None


def make_callback(status=None, *, n_pneumonia: int | None = None, n_normal: int | None = None,
                  history_rows: list | None = None, on_warnings=None):
    """A Keras callback that checks health after every epoch and stops at a NaN loss.

    status: a runs.StatusWriter (``update(health=[...])`` after each epoch) or None.
    n_pneumonia / n_normal: validation class counts, for the collapse check.
    history_rows: rows of epochs already run (a resumed run), so windows span the resume.
    on_warnings: optional function called with the list of HealthWarning after each epoch.

    A NaN or infinite batch loss raises TrainingHealthError (an ArithmeticError) out of fit(),
    after writing the warning to status.json, so the run ends as failed with that sentence.
    The callback's ``warnings`` attribute holds the latest list.
    """
    global _CALLBACK_CLASS
    if _CALLBACK_CLASS is None:
        import keras

        class HealthCallback(keras.callbacks.Callback):
            def __init__(self, status, n_pneumonia, n_normal, history_rows, on_warnings):
                super().__init__()
                self.status = status
                self.n_pneumonia = n_pneumonia
                self.n_normal = n_normal
                self.rows = [dict(r) for r in (history_rows or [])]
                self.on_warnings = on_warnings
                self.warnings: list[HealthWarning] = []
                self._epoch = 0

            def _publish(self, warnings):
                self.warnings = list(warnings)
                if self.status is not None:
                    self.status.update(health=[w.to_dict() for w in self.warnings])
                if self.on_warnings is not None:
                    self.on_warnings(self.warnings)

            def on_epoch_begin(self, epoch, logs=None):
                self._epoch = epoch + 1

            def on_train_batch_end(self, batch, logs=None):
                loss = (logs or {}).get("loss")
                if loss is None:
                    return
                loss = float(loss)
                if not math.isfinite(loss):
                    found = check_finite_loss([], loss=loss, epoch=self._epoch)
                    self._publish(found)
                    self.model.stop_training = True
                    raise TrainingHealthError(f"Epoch {self._epoch}, batch {batch + 1}: {found[0].message} "
                                              f"{found[0].suggestion}")

            def on_epoch_end(self, epoch, logs=None):
                row = {"epoch": epoch + 1}
                row.update({k: float(v) for k, v in (logs or {}).items() if np.ndim(v) == 0})
                self.rows = [r for r in self.rows if int(r.get("epoch", 0)) < epoch + 1] + [row]
                counts = {}
                if self.n_pneumonia is not None and self.n_normal is not None:
                    counts = {"n_pneumonia": int(self.n_pneumonia), "n_normal": int(self.n_normal)}
                found = assess(self.rows, **counts)
                self._publish(found)
                if any(w.severity == "stop" for w in found):
                    self.model.stop_training = True
                    raise TrainingHealthError(found[0].text)

        _CALLBACK_CLASS = HealthCallback
    return _CALLBACK_CLASS(status, n_pneumonia, n_normal, history_rows, on_warnings)
