"""Fitting a run's input gate (xray_core.gate) on its own films: training films only for what is
learned (the mean film, the thumbnails' principal components, the features' covariance, the
range of gray levels), the validation films for the thresholds, and inverted, rotated, cropped,
noisy and flat copies of validation films to report what the gate catches. Nothing here uses
outside images.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterable

import numpy as np

from xray_core.gate import (
    GATE_ARRAYS, GATE_JSON, MARGIN, PIXEL_COMPONENTS, SEEN_HASHES, VAL_QUANTILE, FittedGate, GateError,
    check_batch, feature_distance, file_hash, intensity_stats, orientation_scores, pixel_distance, thumbnails,
)


def corruptions(x: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Unsuitable copies of prepared films (n, h, w, c): what the gate must catch."""
    rng = np.random.default_rng(seed)
    x = np.asarray(x, np.float32)
    h, w = x.shape[1:3]
    crop = x[:, : h // 3, : w // 3]
    from PIL import Image

    cropped = np.stack([np.asarray(Image.fromarray(c[..., 0], mode="F").resize((w, h), Image.BILINEAR))
                        for c in crop])[..., None].repeat(x.shape[3], axis=3)
    return {
        "inverted": 255.0 - x,
        "rotated 90": np.rot90(x, 1, axes=(1, 2)).copy(),
        "upside down": np.rot90(x, 2, axes=(1, 2)).copy(),
        "corner crop": cropped.astype(np.float32),
        "noise": rng.uniform(0, 255, x.shape).astype(np.float32),
        "flat": np.full(x.shape, 128.0, np.float32) + rng.normal(0, 1, x.shape).astype(np.float32),
    }


def fit_gate(model, train_x: np.ndarray, val_x: np.ndarray, *, seed: int = 0,
             seen: dict[str, Iterable[str | os.PathLike]] | None = None,
             save: bool = True) -> FittedGate:
    """Fit the gate on training films `train_x` and set its thresholds on validation films `val_x`.

    Both are prepared model inputs (n, h, w, c) 0..255. `seen` maps "training"/"validation" to
    file paths whose sha256 goes to seen_hashes.txt. Saves into the run folder when `save`.
    """
    from sklearn.covariance import LedoitWolf

    t0 = time.perf_counter()
    train_x = np.asarray(train_x, np.float32)
    val_x = np.asarray(val_x, np.float32)
    if len(train_x) < 50 or len(val_x) < 20:
        raise GateError(f"Fitting the gate needs at least 50 training and 20 validation films, got "
                        f"{len(train_x)} and {len(val_x)}.")
    thumbs = thumbnails(train_x)
    template = thumbs.mean(axis=0)
    pix_mean = template.copy()
    centred = thumbs - pix_mean
    k = min(PIXEL_COMPONENTS, len(thumbs) - 1)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    comps = vt[:k]
    var = s[:k] ** 2 / (len(thumbs) - 1)
    resid = centred - (centred @ comps.T) @ comps
    resid_var = float(np.sum(resid**2) / (len(thumbs) * (thumbs.shape[1] - k)))

    feats = np.asarray(_features(model, train_x), np.float64)
    lw = LedoitWolf().fit(feats)
    stats = intensity_stats(train_x)
    lo, hi = np.quantile(stats, [0.0005, 0.9995], axis=0)
    span = hi - lo
    g = FittedGate(template=template, pix_mean=pix_mean, pix_components=comps, pix_var=var,
                   pix_residual_var=max(resid_var, 1e-9), feat_mean=lw.location_,
                   feat_precision=lw.precision_, hist_low=lo - 0.1 * span, hist_high=hi + 0.1 * span,
                   thresholds={"feature": 1.0, "pixel": 1.0, "orientation": 1.0}, info={})

    # Thresholds on the validation films.
    val_feats = np.asarray(_features(model, val_x), np.float64)
    val_thumbs = thumbnails(val_x)
    fd = feature_distance(val_feats, g)
    pdist = pixel_distance(val_thumbs, g)
    orient = orientation_scores(val_thumbs, template)
    g.thresholds["feature"] = float(np.quantile(fd, VAL_QUANTILE) * MARGIN)
    g.thresholds["pixel"] = float(np.quantile(pdist, VAL_QUANTILE) * MARGIN)
    turned_gap = orient[:, 1:4].max(axis=1) - orient[:, 0]
    g.thresholds["orientation"] = float(max(np.quantile(turned_gap, 0.999) + 0.05, 0.1))

    # How it does: real validation films (what it must let through) and corrupted copies.
    val_results = check_batch(model, x=val_x, features=val_feats, gate=g)
    caught = {}
    rng = np.random.default_rng(seed)
    sample = val_x[rng.choice(len(val_x), size=min(200, len(val_x)), replace=False)]
    for name, bad in corruptions(sample, seed).items():
        res = check_batch(model, x=bad, gate=g)
        caught[name] = float(np.mean([not r.in_distribution for r in res]))
    g.info = {
        "n_train": int(len(train_x)), "n_validation": int(len(val_x)),
        "validation_flagged": float(np.mean([not r.in_distribution for r in val_results])),
        "corruptions_caught": caught, "n_corrupted_each": int(len(sample)),
        "feature_dim": int(feats.shape[1]), "pixel_components": int(k),
        "val_quantile": VAL_QUANTILE, "margin": MARGIN, "seconds": round(time.perf_counter() - t0, 1),
    }
    if save:
        g.save(model.path)
        if seen:
            write_seen_hashes(model.path, seen)
    return g


def _features(model, x: np.ndarray, batch: int = 256) -> np.ndarray:
    return np.concatenate([model.forward(x[i:i + batch]).features for i in range(0, len(x), batch)])


def write_seen_hashes(folder: str | os.PathLike, seen: dict[str, Iterable[str | os.PathLike]]) -> Path:
    from xray_core import fileio

    lines = []
    for split, paths in seen.items():
        for p in paths:
            lines.append(f"{file_hash(Path(p).read_bytes())} {split}")
    lines.sort()
    return fileio.atomic_write_text(Path(folder) / SEEN_HASHES, "\n".join(lines) + "\n")


def fit_gate_for_run(run, data_root: str | os.PathLike, *, progress=None) -> FittedGate:
    """Fit and save the gate of a run from its own training/validation split of `data_root`.

    The validation films are the run's stored list (splits.validation_rows: validation.csv, or
    the split rebuilt from its config for older runs); the training films are the rest of the
    train folder.
    """
    from xray_core import data, runs, splits
    from xray_core.model import load_model

    model = load_model(run)
    root = data.find_dataset(data_root)
    val_paths, _ = splits.validation_rows(runs.Run(model.path), str(root))
    held_out = {str(Path(p).resolve()) for p in val_paths}
    df = data.index_dataset(root)
    train_paths = [p for p in df.loc[df["split"] == "train", "path"] if str(Path(p).resolve()) not in held_out]
    size = tuple(model.input_size)
    loaded = {}
    for name, paths in (("training", train_paths), ("validation", val_paths)):
        res = data.load_images(paths, size=size, channels=model.channels, progress=progress)
        loaded[name] = res.images
    seen = {"training": train_paths, "validation": val_paths}
    return fit_gate(model, loaded["training"], loaded["validation"], seed=0, seen=seen)


# ----------------------------------------------------------------------------- CLI


def _cmd_fit_gate(args) -> int:
    from xray_core import runs

    run = runs.load_run(args.run, root=args.runs_dir)
    g = fit_gate_for_run(run, args.data)
    info = g.info
    if args.json:
        from xray_core.console import json_line

        json_line({"run": run.run_id, "path": str(run.path), **info,
                   "wrote": [GATE_ARRAYS, GATE_JSON, SEEN_HASHES]})
        return 0
    caught = ", ".join(f"{k} {v:.0%}" for k, v in info["corruptions_caught"].items())
    print(f"{run.run_id}: gate fitted on {info['n_train']} training films in {info['seconds']} s; "
          f"{info['validation_flagged']:.1%} of {info['n_validation']} validation films flagged; "
          f"corrupted validation copies caught: {caught}.")
    print(f"wrote {GATE_ARRAYS}, {GATE_JSON} and {SEEN_HASHES} to {run.path}")
    return 0

