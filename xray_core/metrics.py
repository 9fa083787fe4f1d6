"""Honest binary metrics for the pneumonia score, on top of scikit-learn.

Conventions: labels 0 = NORMAL, 1 = PNEUMONIA; ``y_score`` is the pneumonia probability (for the
seed's two-column heads, column 1). An image is called PNEUMONIA when its score is **at or
above** the operating threshold (scikit-learn's ROC convention). Data come first and options are
keyword-only, as in ``sklearn.metrics``. Ratios that are undefined (e.g. sensitivity with no
pneumonia image) are ``nan``, never a silent 0.

No TensorFlow here: the dashboard imports this module on its first page.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "MetricsInputError", "OneClassError", "binary_metrics", "confusion_matrix",
    "choose_threshold", "seed_micro_recall", "roc_points", "bootstrap_ci", "site_figures",
]

#: What `site_figures` measures, in the order a report lists them.
SITE_FIGURES = ("accuracy", "sensitivity", "specificity", "ppv", "npv", "roc_auc", "ece", "brier")


class MetricsInputError(ValueError):
    """Labels or scores that cannot be scored (wrong shape, values, or lengths)."""


class OneClassError(MetricsInputError):
    """Only NORMAL or only PNEUMONIA images were given where both are needed."""


def _check_labels(y_true) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise MetricsInputError(
            f"y_true must be a 1-D array of labels 0 (NORMAL) / 1 (PNEUMONIA); got shape {y.shape}."
        )
    if y.size == 0:
        raise MetricsInputError("y_true is empty: there are no images to score.")
    if not np.isin(y, (0, 1)).all():
        bad = np.unique(y[~np.isin(y, (0, 1))])[:5].tolist()
        raise MetricsInputError(
            f"y_true must hold only 0 (NORMAL) and 1 (PNEUMONIA); got also {bad}."
        )
    return y.astype(np.int64)


def _check_scores(y_score, n: int) -> np.ndarray:
    s = np.asarray(y_score, dtype=np.float64)
    if s.ndim == 2 and s.shape[1] == 1:
        s = s[:, 0]
    if s.ndim != 1:
        raise MetricsInputError(
            f"y_score must be a 1-D array of pneumonia scores; got shape {s.shape}. For the seed's "
            f"two-column models pass column 1 (the PNEUMONIA output)."
        )
    if s.shape[0] != n:
        raise MetricsInputError(
            f"y_true has {n} labels but y_score has {s.shape[0]} scores; pass one score per image."
        )
    if not np.isfinite(s).all():
        raise MetricsInputError("y_score contains NaN or infinite values; check the model output.")
    return s


def _check_threshold(threshold) -> float:
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        t = float("nan")
    if not math.isfinite(t) or isinstance(threshold, bool):
        raise MetricsInputError(f"threshold must be a finite number; got {threshold!r}.")
    return t


def _ratio(num, den):
    """num/den, nan where den == 0 (works on scalars and arrays)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)
    return float(out) if out.ndim == 0 else out


def confusion_matrix(y_true, y_score, *, threshold: float = 0.5) -> np.ndarray:
    """2x2 counts [[tn, fp], [fn, tp]] (rows: true NORMAL, PNEUMONIA) at `threshold`."""
    from sklearn.metrics import confusion_matrix as sk_confusion_matrix

    y = _check_labels(y_true)
    s = _check_scores(y_score, y.size)
    t = _check_threshold(threshold)
    return sk_confusion_matrix(y, (s >= t).astype(np.int64), labels=[0, 1])


def binary_metrics(y_true, y_score, *, threshold: float = 0.5) -> dict:
    """Sensitivity, specificity, precision, NPV, accuracy, F1, ROC AUC, PR AUC and the counts.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Labels, 0 NORMAL and 1 PNEUMONIA.
    y_score : array-like of shape (n,)
        P(pneumonia).
    threshold : float
        A score at or above it is called PNEUMONIA.

    Returns
    -------
    dict
        JSON-ready floats and ints (tn, fp, fn, tp, threshold, n too); a ratio without a
        denominator is nan, and the AUCs are nan when only one class is present.

    Raises
    ------
    MetricsInputError
        For labels or scores of the wrong shape, values or lengths.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = _check_labels(y_true)
    s = _check_scores(y_score, y.size)
    t = _check_threshold(threshold)
    (tn, fp), (fn, tp) = confusion_matrix(y, s, threshold=t)
    both = 0 < y.sum() < y.size
    return {
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "precision": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "accuracy": _ratio(tp + tn, y.size),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "roc_auc": float(roc_auc_score(y, s)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y, s)) if both else float("nan"),
        "tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp),
        "threshold": t,
        "n": int(y.size),
    }


def choose_threshold(y_true, y_score, *, min_sensitivity: float = 0.95,
                     method: str = "sensitivity") -> float:
    """Operating threshold chosen on validation scores.

    method="sensitivity" (default): the highest specificity among thresholds whose sensitivity
    is >= `min_sensitivity` (a screening tool must not miss pneumonia); ties go to the higher
    sensitivity. method="youden": maximise Youden's J = sensitivity + specificity - 1; ties go
    to the higher sensitivity.

    The value returned lies halfway between the lowest validation score called PNEUMONIA and
    the next lower score, so the same validation images are called positive whether a caller
    compares with >= or >.
    """
    from sklearn.metrics import roc_curve

    if method not in ("sensitivity", "youden"):
        raise MetricsInputError(
            f"method must be 'sensitivity' or 'youden'; got {method!r}."
        )
    try:
        target = float(min_sensitivity)
    except (TypeError, ValueError):
        target = float("nan")
    if not 0 < target <= 1:
        raise MetricsInputError(
            f"min_sensitivity must be a fraction in (0, 1]; got {min_sensitivity!r}."
        )
    y = _check_labels(y_true)
    s = _check_scores(y_score, y.size)
    if y.min() == y.max():
        only = "PNEUMONIA" if y[0] == 1 else "NORMAL"
        raise OneClassError(
            f"choosing a threshold needs both NORMAL and PNEUMONIA images, but all {y.size} "
            f"validation images are {only}. Use a validation split that holds both classes."
        )
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    # Skip sklearn's first point (threshold +inf: nothing called positive).
    fpr, tpr, thresholds = fpr[1:], tpr[1:], thresholds[1:]
    if method == "sensitivity":
        ok = tpr >= target - 1e-12
        # lexsort: last key is primary. Lowest fpr first, then highest tpr.
        candidates = np.flatnonzero(ok)
        order = np.lexsort((-tpr[candidates], fpr[candidates]))
        k = candidates[order[0]]
    else:
        j = tpr - fpr
        candidates = np.flatnonzero(j >= j.max() - 1e-12)
        k = candidates[np.argmax(tpr[candidates])]
    chosen = float(thresholds[k])
    lower = s[s < chosen]
    if lower.size:
        return (chosen + float(lower.max())) / 2
    return chosen / 2 if chosen > 0 else chosen


def seed_micro_recall(y_true, scores_2col, *, threshold: float = 0.5) -> float:
    """The seed notebook's "recall": Keras Recall() micro-averaged over two one-hot columns.

    NOT pneumonia sensitivity. Each image contributes one one-hot entry equal to 1 (its true
    class column); this is the fraction of those entries whose output is > threshold, i.e. the
    share of images, NORMAL and PNEUMONIA alike, whose true-class output exceeds 0.5, which is
    close to accuracy. Provided only so the seed's published figures compare like for like
    (shared/seed/NOTES.md section 5 item 2).

    y_true: labels (N,) or one-hot (N, 2); scores_2col: the model's two outputs (N, 2).
    """
    t = _check_threshold(threshold)
    scores = np.asarray(scores_2col, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] != 2:
        raise MetricsInputError(
            f"seed_micro_recall needs the two-column outputs of a seed model, shape (N, 2); got "
            f"shape {scores.shape}."
        )
    onehot = np.asarray(y_true)
    if onehot.ndim == 1:
        labels = _check_labels(onehot)
        onehot = np.stack([1 - labels, labels], axis=1)
    if onehot.shape != scores.shape or not np.isin(onehot, (0, 1)).all():
        raise MetricsInputError(
            f"y_true must be labels (N,) or one-hot (N, 2) matching scores {scores.shape}; got "
            f"shape {onehot.shape}."
        )
    positives = onehot == 1
    if not positives.any():
        raise MetricsInputError("y_true has no entries equal to 1, so recall is undefined.")
    return float((scores[positives] > t).mean())


def roc_points(y_true, y_score):
    """ROC curve as a DataFrame with columns fpr, tpr, threshold (for plotting).

    The first row has threshold +inf (no image called PNEUMONIA), as in scikit-learn.
    """
    import pandas as pd
    from sklearn.metrics import roc_curve

    y = _check_labels(y_true)
    s = _check_scores(y_score, y.size)
    if y.min() == y.max():
        raise OneClassError(
            f"an ROC curve needs both NORMAL and PNEUMONIA images; all {y.size} images are "
            f"{'PNEUMONIA' if y[0] == 1 else 'NORMAL'}."
        )
    fpr, tpr, thresholds = roc_curve(y, s)
    return pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": thresholds})


def _auc_rows(weights_pos: np.ndarray, weights_neg: np.ndarray) -> np.ndarray:
    """ROC AUC for each row of per-unique-score weights (sorted by score), ties counted 1/2."""
    neg_below = np.cumsum(weights_neg, axis=1) - weights_neg
    wins = (weights_pos * (neg_below + 0.5 * weights_neg)).sum(axis=1)
    return _ratio(wins, weights_pos.sum(axis=1) * weights_neg.sum(axis=1))


def bootstrap_ci(y_true, y_score, *, threshold: float, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> dict:
    """Percentile bootstrap confidence intervals, resampling images with replacement.

    Parameters
    ----------
    y_true, y_score : array-like of shape (n,)
        Labels (0/1) and P(pneumonia).
    threshold : float
        The operating threshold the verdicts are taken at.
    n_boot, seed, level : int, int, float
        Resamples (at least 10), their seed, and the interval's level.

    Returns
    -------
    dict
        {"sensitivity"|"specificity"|"accuracy"|"roc_auc": {"estimate", "low", "high"}}.
        Resamples in which a figure is undefined (e.g. no pneumonia image drawn) are left out
        of that figure's interval.
    """
    y = _check_labels(y_true)
    s = _check_scores(y_score, y.size)
    t = _check_threshold(threshold)
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 10:
        raise MetricsInputError(f"n_boot must be a whole number >= 10; got {n_boot!r}.")
    if not 0 < float(level) < 1:
        raise MetricsInputError(f"level must be a fraction in (0, 1); got {level!r}.")
    n = y.size
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(int(n_boot), n))
    yd = y[draws].astype(bool)
    pred = (s >= t)[draws]
    tp = (yd & pred).sum(axis=1)
    fn = (yd & ~pred).sum(axis=1)
    tn = (~yd & ~pred).sum(axis=1)
    fp = (~yd & pred).sum(axis=1)

    uniq, inverse = np.unique(s, return_inverse=True)
    flat = (np.arange(int(n_boot))[:, None] * uniq.size + inverse[draws]).ravel()
    size = int(n_boot) * uniq.size
    w_pos = np.bincount(flat, weights=yd.ravel(), minlength=size).reshape(int(n_boot), -1)
    w_neg = np.bincount(flat, weights=1.0 - yd.ravel(), minlength=size).reshape(int(n_boot), -1)

    samples = {
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "accuracy": (tp + tn) / n,
        "roc_auc": _auc_rows(w_pos, w_neg),
    }
    point = binary_metrics(y, s, threshold=t)
    tail = (1 - float(level)) / 2 * 100
    out = {}
    for name, values in samples.items():
        values = np.asarray(values, dtype=np.float64)
        finite = values[np.isfinite(values)]
        if finite.size:
            low, high = np.percentile(finite, [tail, 100 - tail])
        else:
            low = high = float("nan")
        out[name] = {"estimate": point[name], "low": float(low), "high": float(high)}
    return out


def _weighted_figures(weights: np.ndarray, y: np.ndarray, s: np.ndarray, pred: np.ndarray,
                      n_bins: int) -> dict[str, np.ndarray]:
    """SITE_FIGURES for each row of film weights (b, n): a resample's count of each film."""
    w = np.asarray(weights, dtype=np.float64)
    pos, neg = y == 1, y == 0
    tp, fn = w[:, pos & pred].sum(axis=1), w[:, pos & ~pred].sum(axis=1)
    tn, fp = w[:, neg & ~pred].sum(axis=1), w[:, neg & pred].sum(axis=1)
    total = w.sum(axis=1)
    order = np.argsort(s, kind="mergesort")
    starts = np.r_[0, np.flatnonzero(np.diff(s[order])) + 1]
    w_pos = np.add.reduceat(w[:, order] * y[order], starts, axis=1)
    w_neg = np.add.reduceat(w[:, order] * (1 - y[order]), starts, axis=1)
    # the 15 equal-width bins of stress.expected_calibration_error: a score on an edge joins the lower bin
    edges = np.linspace(0, 1, n_bins + 1)
    bins = np.clip(np.digitize(s, edges[1:-1], right=True), 0, n_bins - 1)
    gap = (w * (s - y)) @ np.eye(n_bins)[bins]
    return {
        "accuracy": _ratio(tp + tn, total), "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp), "ppv": _ratio(tp, tp + fp), "npv": _ratio(tn, tn + fn),
        "roc_auc": _auc_rows(w_pos, w_neg), "ece": _ratio(np.abs(gap).sum(axis=1), total),
        "brier": _ratio(w @ (s - y) ** 2, total),
    }


def site_figures(y_true, y_score, *, threshold, groups=None, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95, n_bins: int = 15) -> dict:
    """A site acceptance test's figures with percentile bootstrap intervals over patients.

    Accuracy, sensitivity, specificity, PPV, NPV (at `threshold`), ROC AUC, the calibration
    error (ECE, `n_bins` equal-width bins, as `stress.expected_calibration_error`) and the Brier
    score.

    Parameters
    ----------
    y_true, y_score : array-like of shape (n,)
        Labels (0/1) and P(pneumonia).
    threshold : float or array-like of shape (n,)
        One number, or one per film (cross-fitted verdicts, each film at the threshold fitted
        without its fold).
    groups : array-like of shape (n,), optional
        A patient id per film: a resample draws patients with all their films, since one
        patient's films are not independent; None draws films.

    Returns
    -------
    dict
        {figure: {"estimate", "low", "high"}} (keys SITE_FIGURES) plus "n", "clusters" and
        "n_clusters"; a figure undefined on a resample (no PNEUMONIA film drawn) is left out
        of its interval.
    """
    y = _check_labels(y_true)
    s = _check_scores(y_score, y.size)
    t = np.asarray(threshold, dtype=np.float64)
    if t.ndim == 0:
        t = np.full(y.size, _check_threshold(threshold))
    if t.shape != (y.size,) or not np.isfinite(t).all():
        raise MetricsInputError(f"threshold must be one finite number or one per film ({y.size}); got shape "
                                f"{t.shape}.")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 10:
        raise MetricsInputError(f"n_boot must be a whole number >= 10; got {n_boot!r}.")
    if not 0 < float(level) < 1:
        raise MetricsInputError(f"level must be a fraction in (0, 1); got {level!r}.")
    if groups is None:
        cluster = np.arange(y.size)
    else:
        g = np.asarray(groups, dtype=object)
        if g.shape != (y.size,):
            raise MetricsInputError(f"groups must hold one patient id per film ({y.size}); got shape {g.shape}.")
        cluster = np.unique(g.astype(str), return_inverse=True)[1].ravel()
    n_clusters = int(cluster.max()) + 1
    pred = s >= t
    point = _weighted_figures(np.ones((1, y.size)), y, s, pred, n_bins)
    rng = np.random.default_rng(seed)
    samples: dict[str, list] = {name: [] for name in SITE_FIGURES}
    for start in range(0, int(n_boot), 200):  # bounded memory: 200 resamples x films at a time
        b = min(200, int(n_boot) - start)
        draws = rng.integers(0, n_clusters, size=(b, n_clusters))
        drawn = np.zeros((b, n_clusters))
        np.add.at(drawn, (np.repeat(np.arange(b), n_clusters), draws.ravel()), 1.0)
        for name, values in _weighted_figures(drawn[:, cluster], y, s, pred, n_bins).items():
            samples[name].append(values)
    tail = (1 - float(level)) / 2 * 100
    out: dict = {}
    for name in SITE_FIGURES:
        values = np.concatenate(samples[name])
        finite = values[np.isfinite(values)]
        low, high = np.percentile(finite, [tail, 100 - tail]) if finite.size else (np.nan, np.nan)
        out[name] = {"estimate": float(point[name][0]), "low": float(low), "high": float(high)}
    out.update(n=int(y.size), clusters="films" if groups is None else "patients", n_clusters=n_clusters)
    return out
