"""Shift-stress validation: each validation film under plausible acquisition changes.

A random (even patient-level) split of `train/` shares the machines, technologists and framing
habits of the training films, so it cannot see what changes on new patients. Films from other
periods and rooms differ in collimation (how much neck and abdomen is in the frame), the child's
size and position, the aspect ratio before the resize, exposure and sharpness. Each change below
is one such difference, applied to the decoded film at its own resolution before the model's
resize, with fixed parameters (no randomness), so every run is measured on the same images.

Model selection (epoch, ensemble members), the operating threshold, the calibration and the
conformal sets of a run are chosen on the pooled stress set (every change, plus the plain
films); the card reports each change apart, and the worst.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageFilter

from xray_core import imaging, metrics

PLAIN = "plain"
# The changes scored after every epoch to pick the best one (the full set is scored once, at the
# end): framing and habitus changes, which move a model's verdicts most, plus two intensity ones.
SELECTION_CHANGES = ("crop_top_bottom_10", "crop_sides_10", "zoom_in_25", "zoom_out_10", "shift_down_10",
                     "taller_narrower", "narrower_15", "gamma_1.25", "blur")


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    return imaging.resize(img, (max(1, int(round(h))), max(1, int(round(w)))))


def border_median(img: np.ndarray, frac: float = 0.02) -> int:
    """Median gray level of the outer `frac` band of the film: what lies beyond the collimation."""
    h, w = img.shape
    bh, bw = max(1, int(h * frac)), max(1, int(w * frac))
    band = np.concatenate([img[:bh].ravel(), img[-bh:].ravel(), img[:, :bw].ravel(), img[:, -bw:].ravel()])
    return int(np.median(band))


def _crop(img: np.ndarray, top: float = 0.0, bottom: float = 0.0, left: float = 0.0,
          right: float = 0.0) -> np.ndarray:
    """Cut fractions off each edge, then resize back to the original size (tighter framing)."""
    h, w = img.shape
    t, b = int(round(h * top)), h - int(round(h * bottom))
    l, r = int(round(w * left)), w - int(round(w * right))
    return _resize(img[t:b, l:r], h, w)


def _place(img: np.ndarray, content: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Put `content` on a canvas of img's size filled with img's border median, its top-left at
    (dy, dx) (may be negative: the content is clipped)."""
    h, w = img.shape
    canvas = np.full((h, w), border_median(img), np.uint8)
    ch, cw = content.shape
    y0, x0 = max(0, dy), max(0, dx)
    y1, x1 = min(h, dy + ch), min(w, dx + cw)
    if y1 > y0 and x1 > x0:
        canvas[y0:y1, x0:x1] = content[y0 - dy : y1 - dy, x0 - dx : x1 - dx]
    return canvas


def zoom(img: np.ndarray, factor: float) -> np.ndarray:
    """factor > 1: zoom in (crop the centre 1/factor, resize back); < 1: zoom out (shrink the
    film and pad with its border median)."""
    h, w = img.shape
    if factor >= 1:
        m = (1 - 1 / factor) / 2
        return _crop(img, m, m, m, m)
    small = _resize(img, h * factor, w * factor)
    return _place(img, small, (h - small.shape[0]) // 2, (w - small.shape[1]) // 2)


def shift(img: np.ndarray, dy_frac: float) -> np.ndarray:
    """Move the film up (negative) or down (positive) by a fraction of its height."""
    return _place(img, img, int(round(img.shape[0] * dy_frac)), 0)


def stretch(img: np.ndarray, *, sy: float = 1.0, sx: float = 1.0) -> np.ndarray:
    """Scale the anatomy by sy vertically and sx horizontally about the centre, keeping the
    frame: > 1 crops what leaves the frame, < 1 pads with the border median (body habitus:
    a taller, narrower chest)."""
    h, w = img.shape
    scaled = _resize(img, h * sy, w * sx)
    return _place(img, scaled, (h - scaled.shape[0]) // 2, (w - scaled.shape[1]) // 2)


def gamma(img: np.ndarray, g: float) -> np.ndarray:
    lut = np.rint(255.0 * (np.arange(256) / 255.0) ** g).astype(np.uint8)
    return lut[img]


def contrast(img: np.ndarray, factor: float) -> np.ndarray:
    mean = float(img.mean())
    return np.clip(np.rint(mean + factor * (img.astype(np.float32) - mean)), 0, 255).astype(np.uint8)


def blur(img: np.ndarray, sigma_frac: float = 1 / 150) -> np.ndarray:
    """Gaussian blur with sigma proportional to the film's size (1.5 px at 224 px)."""
    radius = max(0.5, sigma_frac * min(img.shape))
    return np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(radius)), np.uint8)


def down_up(img: np.ndarray, factor: int = 2) -> np.ndarray:
    """Resample to 1/factor and back: a detector or archive of lower resolution."""
    h, w = img.shape
    return _resize(_resize(img, h / factor, w / factor), h, w)


@dataclass(frozen=True)
class Change:
    name: str
    description: str
    kind: str  # "framing", "habitus" or "intensity"
    apply: Callable[[np.ndarray], np.ndarray]


CHANGES: dict[str, Change] = {c.name: c for c in (
    Change("crop_top_bottom_10", "10 % cut off the top and the bottom, resized back", "framing",
           lambda im: _crop(im, top=0.10, bottom=0.10)),
    Change("crop_sides_10", "10 % cut off each side, resized back", "framing",
           lambda im: _crop(im, left=0.10, right=0.10)),
    Change("crop_bottom_10", "10 % cut off the bottom (less abdomen), resized back", "framing",
           lambda im: _crop(im, bottom=0.10)),
    Change("zoom_in_15", "zoomed in 15 % (centre crop, resized back)", "framing", lambda im: zoom(im, 1.15)),
    Change("zoom_in_25", "zoomed in 25 % (tighter collimation)", "framing", lambda im: zoom(im, 1.25)),
    Change("zoom_out_10", "zoomed out 10 %, padded with the border's median", "framing",
           lambda im: zoom(im, 1 / 1.10)),
    Change("shift_up_10", "moved up by 10 % of the height", "framing", lambda im: shift(im, -0.10)),
    Change("shift_down_10", "moved down by 10 % of the height", "framing", lambda im: shift(im, 0.10)),
    Change("taller_15", "anatomy stretched 15 % taller (an older, longer chest)", "habitus",
           lambda im: stretch(im, sy=1.15)),
    Change("narrower_15", "anatomy 15 % narrower, sides padded (a slimmer chest)", "habitus",
           lambda im: stretch(im, sx=0.85)),
    Change("taller_narrower", "10 % taller and 10 % narrower together", "habitus",
           lambda im: stretch(im, sy=1.10, sx=0.90)),
    Change("gamma_0.8", "gamma 0.8 (brighter mid-tones)", "intensity", lambda im: gamma(im, 0.8)),
    Change("gamma_1.25", "gamma 1.25 (darker mid-tones)", "intensity", lambda im: gamma(im, 1.25)),
    Change("contrast_0.8", "contrast reduced to 80 %", "intensity", lambda im: contrast(im, 0.8)),
    Change("blur", "Gaussian blur (sigma 1/150 of the short side)", "intensity", blur),
    Change("down_up_2x", "resampled to half resolution and back", "intensity", down_up),
)}


def stressed_inputs(images: Sequence[np.ndarray], *, size, channels: int = 1,
                    changes: Sequence[str] | None = None, include_plain: bool = True) -> dict[str, np.ndarray]:
    """{change: (n, h, w, c) float32 model inputs} for decoded films (2-D uint8 at their own size)."""
    names = ([PLAIN] if include_plain else []) + list(CHANGES if changes is None else changes)
    unknown = [n for n in names if n != PLAIN and n not in CHANGES]
    if unknown:
        raise ValueError(f"Unknown stress change(s) {unknown}; choose from {', '.join(CHANGES)}.")
    h, w = imaging.check_size(size)
    out = {}
    for name in names:
        fn = (lambda im: im) if name == PLAIN else CHANGES[name].apply
        batch = np.zeros((len(images), h, w, channels), np.float32)
        for i, im in enumerate(images):
            batch[i] = imaging.to_model_input(fn(np.asarray(im)), (h, w), channels=channels)
        out[name] = batch
    return out


def stress_scores(model, images: Sequence[np.ndarray], changes: Sequence[str] | None = None, *,
                  include_plain: bool = True) -> dict[str, np.ndarray]:
    """{change: (n,) P(pneumonia)} of a `xray_core.model.Model` for each change (and "plain")."""
    inputs = stressed_inputs(images, size=model.input_size, channels=model.channels, changes=changes,
                             include_plain=include_plain)
    return {name: model.predict_proba(x) for name, x in inputs.items()}


def pooled(y_true, scores: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """All changes (and plain) stacked into one set: (labels, scores)."""
    y = np.asarray(y_true, dtype=int)
    names = list(scores)
    return np.tile(y, len(names)), np.concatenate([np.asarray(scores[n], np.float64) for n in names])


def selection_score(y_true, scores: dict[str, np.ndarray], *, min_sensitivity: float = 0.95) -> dict:
    """What model selection maximises: the pooled stress set's specificity at the threshold that
    keeps its sensitivity >= min_sensitivity, with the pooled AUC as a tie-breaker."""
    y, s = pooled(y_true, scores)
    t = metrics.choose_threshold(y, s, min_sensitivity=min_sensitivity)
    m = metrics.binary_metrics(y, s, threshold=t)
    return {"specificity": m["specificity"], "sensitivity": m["sensitivity"], "roc_auc": m["roc_auc"],
            "threshold": t, "score": m["specificity"] + 0.1 * m["roc_auc"]}


def stress_report(y_true, scores: dict[str, np.ndarray], *, threshold: float, n_boot: int = 1000,
                  seed: int = 0) -> dict:
    """Per change: AUC, sensitivity and specificity at `threshold`; overall: worst case and mean
    over the changes, and the pooled set with bootstrap 95 % intervals (resampling films, so the
    changes of one film move together)."""
    y = np.asarray(y_true, dtype=int)
    per_change = {}
    for name, s in scores.items():
        m = metrics.binary_metrics(y, s, threshold=threshold)
        entry = {k: m[k] for k in ("roc_auc", "sensitivity", "specificity", "accuracy", "tn", "fp", "fn", "tp")}
        if name != PLAIN:
            entry.update(description=CHANGES[name].description, kind=CHANGES[name].kind)
            # How many NORMAL films called NORMAL on the plain image change verdict under this change.
            if PLAIN in scores:
                plain_normal = (y == 0) & (np.asarray(scores[PLAIN]) < threshold)
                flipped = plain_normal & (np.asarray(s) >= threshold)
                entry["normal_flipped"] = float(flipped.sum() / max(1, plain_normal.sum()))
        per_change[name] = entry
    changed = [n for n in scores if n != PLAIN]
    summary = {}
    for key in ("roc_auc", "sensitivity", "specificity"):
        values = np.array([per_change[n][key] for n in changed], dtype=np.float64)
        worst = changed[int(np.nanargmin(values))]
        summary[key] = {"worst": float(np.nanmin(values)), "worst_change": worst, "mean": float(np.nanmean(values))}
    summary["normal_flipped_max"] = max((per_change[n].get("normal_flipped", 0.0) for n in changed), default=0.0)
    stress_only = {n: scores[n] for n in changed}
    yp, sp = pooled(y, stress_only)
    pooled_metrics = metrics.binary_metrics(yp, sp, threshold=threshold)
    ci = _cluster_bootstrap(y, stress_only, threshold=threshold, n_boot=n_boot, seed=seed)
    return {"threshold": float(threshold), "n_films": int(len(y)), "changes": per_change, "summary": summary,
            "pooled": {k: pooled_metrics[k] for k in ("roc_auc", "sensitivity", "specificity", "accuracy", "n")},
            "pooled_ci95": ci}


def _cluster_bootstrap(y: np.ndarray, scores: dict[str, np.ndarray], *, threshold: float, n_boot: int,
                       seed: int) -> dict:
    """Percentile intervals of the pooled stress figures, resampling films (with all their
    changes), not stressed images: the changes of one film are not independent."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    mat = np.stack([np.asarray(scores[n], np.float64) for n in scores], axis=1)  # (n, k)
    n = len(y)
    out = {"sensitivity": [], "specificity": [], "roc_auc": []}
    for _ in range(int(n_boot)):
        idx = rng.integers(0, n, n)
        yy = np.repeat(y[idx], mat.shape[1])
        ss = mat[idx].ravel()
        if yy.min() == yy.max():
            continue
        pred = ss >= threshold
        out["sensitivity"].append(pred[yy == 1].mean())
        out["specificity"].append((~pred[yy == 0]).mean())
        out["roc_auc"].append(roc_auc_score(yy, ss))
    return {k: {"low": float(np.percentile(v, 2.5)), "high": float(np.percentile(v, 97.5))} for k, v in out.items()}


def expected_calibration_error(y_true, y_prob, *, n_bins: int = 15) -> tuple[float, list[dict]]:
    """ECE with equal-width bins on P(pneumonia), and the reliability diagram's bins."""
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_prob, dtype=np.float64)
    edges = np.linspace(0, 1, n_bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1], right=True), 0, n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        sel = idx == b
        if not sel.any():
            continue
        conf, frac = float(p[sel].mean()), float(y[sel].mean())
        ece += sel.mean() * abs(conf - frac)
        bins.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "mean_pred": conf,
                     "frac_pos": frac, "n": int(sel.sum())})
    return float(ece), bins


def fit_temperature(y_true, y_prob) -> float:
    """The temperature T minimising the log loss of sigmoid(logit(p) / T) (bounded 0.05..20)."""
    from scipy.optimize import minimize_scalar

    from xray_core.model import logit

    y = np.asarray(y_true, dtype=np.float64)
    z = logit(y_prob)

    def nll(log_t):
        zt = z / np.exp(log_t)
        return float(np.mean(np.logaddexp(0, zt) - y * zt))

    res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(res.x))


def fit_platt(y_true, y_prob) -> tuple[float, float]:
    """Platt scaling (T, bias) minimising the log loss of sigmoid(logit(p) / T + bias).

    Unlike a temperature alone, the bias also corrects a shifted prior (balanced class weights
    train a model as if the classes were equally common)."""
    from scipy.optimize import minimize

    from xray_core.model import logit

    y = np.asarray(y_true, dtype=np.float64)
    z = logit(y_prob)

    def nll(params):
        zt = z * np.exp(-params[0]) + params[1]
        return float(np.mean(np.logaddexp(0, zt) - y * zt))

    start = np.array([np.log(fit_temperature(y, y_prob)), 0.0])
    res = minimize(nll, start, method="Nelder-Mead", options={"xatol": 1e-6, "fatol": 1e-9, "maxiter": 2000})
    log_t = float(np.clip(res.x[0], np.log(0.05), np.log(20.0)))
    return float(np.exp(log_t)), float(res.x[1])
