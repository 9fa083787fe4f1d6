"""Scores to figures for a run: the validation split it was selected on, under shift stress, with
calibration and the operating threshold; the test and official val folders when present.

`finalize_run` is the last step of every training (and of an ensemble's assembly): it scores the
run's validation films plain and under every stress change (`xray_core.stress`), fits the
temperature and chooses the threshold on the pooled stress set, and writes model.json,
metrics.json, predictions_validation.csv and predictions_stress.csv. `evaluate_run` scores
other splits at that threshold. Every score comes from `xray_core.model.Model`.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from xray_core import fileio, metrics, runs, splits

Progress = Callable[[dict], None]

STRESS_PREDICTIONS_FILE = "predictions_stress.csv"
# Validation films are brought to this size before a stress change, whatever their resolution:
# the dataset copy this project trains on is 224 px, and full-resolution films (1-3 k px) would
# cost minutes per run for no difference the model (<= 224 px) can see.
STRESS_SOURCE_SIZE = 224
MIN_SENSITIVITY = 0.95

_SPLIT_KEYS = {"val": "validation", "validation": "validation", "test": "test", "official_val": "official_val"}


class EvaluationError(ValueError):
    """A split that cannot be scored (no images, none readable)."""


def split_key(split: str) -> str:
    """The metrics.json / predictions file key of a split name."""
    if split not in _SPLIT_KEYS:
        raise ValueError(f"split must be one of val, test, official_val; got {split!r}.")
    return _SPLIT_KEYS[split]


def data_root_of(run: runs.Run, data_root: str | os.PathLike | None) -> str:
    """The dataset folder to score: the one given, else the one the run trained on."""
    root = str(Path(data_root).absolute()) if data_root is not None else run.config.get("data_root")
    if not root:
        raise ValueError(f"Run {run.run_id!r} does not record its dataset folder; pass one (--data DIR).")
    return root


# --------------------------------------------------------------------------- validation films


def load_films(paths: list[str], *, size: int = STRESS_SOURCE_SIZE, progress: Progress | None = None):
    """Decoded films (2-D uint8 at size x size) and the mask of the files that could be read."""
    from xray_core import data

    report = (lambda d, t: progress({"phase": "loading", "what": "validation", "done": d, "total": t})) \
        if progress else None
    result = data.load_images(paths, size=(size, size), channels=1, progress=report)
    films = [np.rint(im[..., 0]).astype(np.uint8) for im in result.images]
    return films, result.ok


# --------------------------------------------------------------------------- finalize


def finalize_run(run_dir: str | os.PathLike, *, data_root: str | os.PathLike | None = None,
                 min_sensitivity: float | None = None, method: str | None = None, n_boot: int = 1000,
                 fit_gate: bool = True, progress: Progress | None = None) -> dict:
    """Score the run's validation films plain and under shift stress, calibrate, choose the
    threshold, and write model.json, metrics.json and the prediction files; then fit the run's
    conformal sets and (with fit_gate) its input gate. Returns the metrics written (merged into
    any metrics.json already there).

    The temperature is fitted, and the threshold chosen (by default the run's setting: highest
    specificity with sensitivity >= min_sensitivity, or Youden's J), on the pooled stress set:
    plain films and every change together.
    """
    from xray_core import model as model_mod

    run = runs.load_run(Path(run_dir))
    root = data_root_of(run, data_root)
    # The networks as one LiteRT program in the run (what every verdict runs), made now, with the
    # networks final; model.json records which network files it was made from.
    model_mod.Model(run.path).save_program()
    old_spec = fileio.read_json(run.path / model_mod.SPEC_FILE) if (run.path / model_mod.SPEC_FILE).is_file() else {}
    members = old_spec.get("members") or [runs.MODEL_FILE]
    extra = {k: v for k, v in old_spec.items()
             if k not in ("members", "input_size", "channels", "threshold", "temperature", "bias", "threshold_policy")}
    cfg = run.config
    policy = cfg.get("threshold") or {}
    method = method or policy.get("method") or "sensitivity"
    min_sensitivity = float(min_sensitivity or policy.get("min_sensitivity") or MIN_SENSITIVITY)
    # Scored uncalibrated (temperature 1), whatever model.json holds now.
    m = model_mod.Model(run.path, spec={"members": members, "temperature": 1.0, "bias": 0.0,
                                        "input_size": [cfg["image_size"], cfg["image_size"]],
                                        "channels": int(cfg["channels"]), "litert": old_spec.get("litert")})

    paths, labels = splits.validation_rows(run, root)
    y, kept, raw = raw_stress_scores(m, paths, labels, progress=progress)
    result, scores = stress_figures(y, raw, method=method, min_sensitivity=min_sensitivity, n_boot=n_boot)
    threshold, temperature = result["threshold"], result["calibration"]["temperature"]
    bias = result["calibration"]["bias"]
    described = result["threshold_policy"]
    plain = scores["plain"]
    model_mod.write_spec(run.path, members=members, input_size=(cfg["image_size"], cfg["image_size"]),
                         channels=int(cfg["channels"]), threshold=threshold, temperature=temperature,
                         bias=bias, threshold_policy=described, extra=extra)
    runs.write_predictions(run.path, "validation", kept, y, plain, root)
    _write_stress_predictions(run.path, kept, y, scores, root)
    merged = merge_metrics(run.path, result)
    # What the model needs at the point of use, fitted on the same films: the conformal sets
    # (on the stress predictions just written) and the input gate (training films only).
    from xray_core import gate_fit, uncertainty

    uncertainty.calibrate_run(run.path)
    if fit_gate:
        try:
            gate_fit.fit_gate_for_run(run.path, root)
            merged = merge_metrics(run.path, {"gate": {"fitted": True}})
        except gate_fit.GateError as exc:  # too few films (a toy dataset): say so in the run, not silently
            merged = merge_metrics(run.path, {"gate": {"fitted": False, "reason": str(exc)}})
    return merged


def raw_stress_scores(m, paths, labels, *, progress: Progress | None = None):
    """(labels, readable paths, {change: uncalibrated P(pneumonia)}) of a model with temperature 1
    on validation films, plain and under every stress change."""
    from xray_core import data, stress

    films, ok = load_films(list(paths), progress=progress)
    y = np.asarray(labels, dtype=int)[ok]
    kept = [p for p, k in zip(paths, ok) if k]
    if len(y) == 0 or y.min() == y.max():
        raise EvaluationError("The validation split needs readable NORMAL and PNEUMONIA films.")
    if progress is not None:
        progress({"phase": "evaluating", "what": "stress"})
    raw = stress.stress_scores(m, films, include_plain=False)
    # The plain films are scored as any image is at inference: decoded and resized straight to the
    # model's input (the stress changes need the films at STRESS_SOURCE_SIZE first).
    direct = data.load_images(kept, size=m.input_size, channels=m.channels)
    return y, kept, {stress.PLAIN: m.predict_proba(direct.images), **raw}


def stress_figures(y, raw: dict[str, np.ndarray], *, method: str = "sensitivity",
                   min_sensitivity: float = MIN_SENSITIVITY, n_boot: int = 1000,
                   calibrate: bool = True) -> tuple[dict, dict[str, np.ndarray]]:
    """Calibration (temperature on the pooled stress set), threshold (chosen on it) and the plain
    and stress figures, from uncalibrated scores. Returns (figures, calibrated scores)."""
    from xray_core import stress
    from xray_core import model as model_mod

    y_pool, raw_pool = stress.pooled(y, raw)
    temperature, bias = stress.fit_platt(y_pool, raw_pool) if calibrate else (1.0, 0.0)
    scores = {name: model_mod.calibrate(s, temperature, bias) for name, s in raw.items()}
    _, pool = stress.pooled(y, scores)
    threshold = float(metrics.choose_threshold(y_pool, pool, min_sensitivity=min_sensitivity, method=method))
    described = (f"highest specificity with sensitivity >= {min_sensitivity:g}" if method == "sensitivity"
                 else "Youden's J") + " on the pooled stress validation"
    plain = scores[stress.PLAIN]
    ece_raw, _ = stress.expected_calibration_error(y_pool, raw_pool)
    ece_pool, bins_pool = stress.expected_calibration_error(y_pool, pool)
    ece_plain, bins_plain = stress.expected_calibration_error(y, plain)
    result: dict[str, Any] = {
        "validation": dict(metrics.binary_metrics(y, plain, threshold=threshold), n=int(len(y))),
        "validation_ci95": metrics.bootstrap_ci(y, plain, threshold=threshold, n_boot=n_boot),
        "stress": stress.stress_report(y, scores, threshold=threshold, n_boot=n_boot),
        "calibration": {"method": "Platt scaling" if calibrate else "none", "temperature": temperature, "bias": bias,
                        "fitted_on": "pooled stress validation", "ece": ece_pool, "ece_uncalibrated": ece_raw,
                        "bins": bins_pool, "ece_plain": ece_plain, "bins_plain": bins_plain, "n_bins": 15},
        "threshold": threshold,
        "threshold_method": method,
        "threshold_policy": described,
        "validation_files": int(len(y)),
    }
    return result, scores


def _write_stress_predictions(run_dir: Path, paths, labels, scores: dict[str, np.ndarray], data_root) -> Path:
    base = Path(data_root).absolute()
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["path", "label", "score", "change"])
    rel = [(Path(p).relative_to(base) if Path(p).is_relative_to(base) else Path(p)).as_posix() for p in paths]
    for change, s in scores.items():
        for p, label, score in zip(rel, labels, s):
            writer.writerow([p, int(label), repr(float(score)), change])
    return fileio.atomic_write_text(run_dir / STRESS_PREDICTIONS_FILE, out.getvalue())


# --------------------------------------------------------------------------- other splits


def evaluate_run(run: runs.Run | str | os.PathLike, data_root: str | os.PathLike | None = None, *,
                 split: str = "val", root: str | os.PathLike | None = None, refresh: bool = False,
                 progress: Progress | None = None, cache: bool | None = None) -> dict:
    """Metrics of a finished run on one split, at its operating threshold.

    split "val" is the run's own validation split; "test" the dataset's test folder;
    "official_val" the 16-image val folder. With cache the result is merged into the run's
    metrics.json; the default caches for runs the user trained and never for a shipped run
    (model.json "bundled"), whose files are part of the project."""
    from xray_core import model as model_mod

    if not isinstance(run, runs.Run):
        run = runs.load_run(run, root=root)
    if cache is None:
        cache = not is_bundled(run.path)
    key = split_key(split)
    root_dir = data_root_of(run, data_root)
    cached = (run.metrics or {}).get(key)
    if cached and not refresh and cached.get("data_root", run.config.get("data_root")) == root_dir:
        return cached
    m = model_mod.load_model(run)
    y, scores, failed = predict_split(run, root_dir, key, progress, write=cache)
    entry = dict(metrics.binary_metrics(y, scores, threshold=m.threshold), n=int(len(y)),
                 data_root=root_dir, skipped=failed)
    entry = fileio.to_jsonable(entry)  # NaN -> None, as it reads back from metrics.json
    if cache:
        merge_metrics(run.path, {key: entry})
    return entry


def predict_split(run: runs.Run, data_root: str, key: str, progress: Progress | None = None, *,
                  write: bool = True) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Score one split with the run's model; (y_true, y_score, unreadable paths). With write,
    the scores are kept in predictions_<key>.csv."""
    from xray_core import data
    from xray_core import model as model_mod

    if key == "validation":
        paths, labels = splits.validation_rows(run, data_root)
    else:
        df = data.index_dataset(data_root)
        rows = df[df["split"] == ("test" if key == "test" else "val")]
        paths, labels = rows["path"].tolist(), rows["label"].to_numpy().astype(int)
    if len(paths) == 0:
        folder = "test" if key == "test" else "val"
        raise data.DatasetLayoutError(
            f"{data_root} has no {folder}/ images to evaluate on. Choose another split or dataset folder."
        )
    m = model_mod.load_model(run)
    report = (lambda d, t: progress({"phase": "loading", "done": d, "total": t})) if progress else None
    result = data.load_images(paths, size=m.input_size, channels=m.channels, progress=report)
    y = labels[result.ok]
    if len(y) == 0:
        raise EvaluationError(f"None of the {len(paths)} images of that split could be read.")
    from xray_core import case

    kept = np.asarray(paths)[result.ok]
    scores = np.array([a.probability for a in case.assess_prepared(m, result.images, kept)], np.float64)
    if write:
        runs.write_predictions(run.path, key, kept, y, scores, data_root)
    return y, scores, [p for p, _ in result.failed]


def split_scores(run: runs.Run | str | os.PathLike, split: str = "validation", *,
                 data_root: str | os.PathLike | None = None, root: str | os.PathLike | None = None,
                 progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(y_true, y_score) of a run on a split, for ROC curves and other threshold-free figures:
    from the run's predictions_<split>.csv when it has one, else scored now without writing."""
    if not isinstance(run, runs.Run):
        run = runs.load_run(run, root=root)
    key = split_key(split)
    saved = runs.read_predictions(run.path, key)
    if saved is not None:
        return saved
    y, scores, _ = predict_split(run, data_root_of(run, data_root), key, progress, write=False)
    return y, scores


def is_bundled(run_dir: str | os.PathLike) -> bool:
    """Whether a run ships with the project (its files are tracked: never rewrite them)."""
    from xray_core import model as model_mod

    spec = Path(run_dir) / model_mod.SPEC_FILE
    return spec.is_file() and bool(fileio.read_json(spec).get("bundled"))


def merge_metrics(run_dir: str | os.PathLike, entries: dict) -> dict:
    """Read-modify-write metrics.json under an exclusive lock (two evaluations may race)."""
    path = Path(run_dir) / runs.METRICS_FILE

    def merge():
        current = fileio.read_json(path) if path.is_file() else {}
        current.update(fileio.to_jsonable(entries))
        fileio.atomic_write_json(path, current)
        return current

    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; the write itself is still atomic
        return merge()
    with open(run_dir / ".metrics.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return merge()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
