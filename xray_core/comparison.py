"""Is run A better than run B on the same images, beyond chance?

Three paired comparisons of two models scored on the same validation images:

- :func:`delong_test`: DeLong, DeLong & Clarke-Pearson (1988) for the difference of two
  correlated ROC AUCs, with the fast mid-rank computation of Sun & Xu (2014).
- :func:`mcnemar_test`: McNemar's test for the verdicts at each run's own operating threshold,
  exact (two-sided binomial) when fewer than 25 images are discordant, else chi-square with
  continuity correction; the result says which.
- :func:`paired_bootstrap`: percentile intervals for sensitivity, specificity and AUC of each run
  and of their differences, resampling images (within each class) with the SAME draws for both runs.

:func:`compare` runs all three and :func:`reading` turns them into plain sentences
("no evidence that A and B differ ...", "A's AUC is higher, p = ..."). :func:`align` pairs two
runs' per-image score files and refuses, with a sentence, when they were not scored on the
same images. Data first, options keyword-only, as in scikit-learn. No TensorFlow here.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

__all__ = [
    "NotComparable", "delong_test", "delong_covariance", "mcnemar_test", "paired_bootstrap",
    "bootstrap_intervals",
    "compare", "reading", "align", "EXACT_BELOW",
]

#: McNemar uses the exact binomial test when the discordant count is below this.
EXACT_BELOW = 25


class NotComparable(ValueError):
    """Two runs' scores cannot be compared pair by pair (different images or labels)."""


# --------------------------------------------------------------------------- input checks


def _labels(y_true) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1 or y.size == 0 or not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must be a non-empty 1-D array of 0 (NORMAL) and 1 (PNEUMONIA).")
    if y.min() == y.max():
        raise ValueError(
            f"comparing two models needs NORMAL and PNEUMONIA images; all {y.size} images are "
            f"{'PNEUMONIA' if y[0] == 1 else 'NORMAL'}."
        )
    return y.astype(np.int64)


def _scores(score, n: int, name: str) -> np.ndarray:
    s = np.asarray(score, dtype=np.float64)
    if s.ndim != 1 or s.size != n:
        raise ValueError(f"{name} must be a 1-D array with one score per image ({n}); got shape {s.shape}.")
    if not np.isfinite(s).all():
        raise ValueError(f"{name} holds NaN or infinite scores; the model that produced them is broken.")
    return s


def _normal_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2))


def _normal_ppf(q: float) -> float:
    return NormalDist().inv_cdf(q)


# --------------------------------------------------------------------------- DeLong


def _midranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of each row, ties sharing the mean of their ranks (numpy only, no SciPy import:
    the Compare page pays for every import)."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    out = np.empty_like(x)
    for i, row in enumerate(x):
        _, inverse, counts = np.unique(row, return_inverse=True, return_counts=True)
        starts = np.cumsum(counts) - counts
        out[i] = starts[inverse] + (counts[inverse] + 1) / 2.0
    return out


def delong_covariance(y_true, *scores) -> tuple[np.ndarray, np.ndarray]:
    """(AUCs (k,), covariance (k, k)) of k models' ROC AUCs on the same images, by DeLong.

    The structural components (placements) come from mid-ranks: for model r, a positive's
    component is the share of negatives it outranks (ties 1/2), a negative's is the share of
    positives that outrank it. The covariance is S10 / m + S01 / n (m positives, n negatives).
    """
    y = _labels(y_true)
    k = len(scores)
    if k < 1:
        raise ValueError("delong_covariance needs at least one model's scores.")
    s = np.stack([_scores(v, y.size, f"scores[{i}]") for i, v in enumerate(scores)])
    pos, neg = s[:, y == 1], s[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    tz = _midranks(np.concatenate([pos, neg], axis=1))
    tx, ty = _midranks(pos), _midranks(neg)
    v10 = (tz[:, :m] - tx) / n            # per positive: share of negatives below it
    v01 = 1.0 - (tz[:, m:] - ty) / m      # per negative: share of positives above it
    aucs = v10.mean(axis=1)
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((k, k))
    s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((k, k))
    return aucs, s10 / m + s01 / n


def delong_test(y_true, score_a, score_b, *, level: float = 0.95) -> dict:
    """DeLong's test of AUC(A) = AUC(B) for two models scored on the same images (two-sided).

    Returns auc_a, auc_b, difference (A - B), se, z, p_value and the normal interval of the
    difference at `level` (low, high).
    """
    if not 0 < float(level) < 1:
        raise ValueError(f"level must be a fraction in (0, 1); got {level!r}.")
    aucs, cov = delong_covariance(y_true, score_a, score_b)
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = math.sqrt(max(var, 0.0))
    if se == 0:
        z, p = (0.0, 1.0) if diff == 0 else (math.copysign(math.inf, diff), 0.0)
    else:
        z = diff / se
        p = min(1.0, 2 * _normal_sf(abs(z)))
    half = _normal_ppf(0.5 + float(level) / 2) * se
    return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "difference": diff, "se": se,
            "z": z, "p_value": p, "low": diff - half, "high": diff + half, "level": float(level),
            "method": "DeLong (1988), paired"}


# --------------------------------------------------------------------------- McNemar


def mcnemar_test(y_true, pred_a, pred_b, *, exact: bool | None = None) -> dict:
    """McNemar's test: do A and B make different numbers of mistakes on the same images?

    pred_a, pred_b: verdicts 0/1 (NORMAL/PNEUMONIA), e.g. score >= the run's threshold.
    b = images A gets right and B wrong, c = the reverse. exact None chooses the exact two-sided
    binomial test when b + c < EXACT_BELOW, else chi-square (1 df) with continuity correction,
    (|b - c| - 1)^2 / (b + c). The result's "method" says which was used.
    """
    y = np.asarray(y_true)
    if y.ndim != 1 or y.size == 0 or not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must be a non-empty 1-D array of 0 (NORMAL) and 1 (PNEUMONIA).")
    a, b_ = (np.asarray(p) for p in (pred_a, pred_b))
    for name, p in (("pred_a", a), ("pred_b", b_)):
        if p.shape != y.shape or not np.isin(p, (0, 1)).all():
            raise ValueError(f"{name} must hold one verdict 0/1 per image ({y.size}); got shape {p.shape}.")
    right_a, right_b = a == y, b_ == y
    b = int((right_a & ~right_b).sum())
    c = int((~right_a & right_b).sum())
    d = b + c
    use_exact = d < EXACT_BELOW if exact is None else bool(exact)
    if d == 0:
        stat, p = 0.0, 1.0
    elif use_exact:
        stat = float(min(b, c))
        tail = sum(math.comb(d, k) for k in range(min(b, c) + 1)) / 2.0 ** d
        p = min(1.0, 2 * tail)
    else:
        stat = (abs(b - c) - 1) ** 2 / d
        p = math.erfc(math.sqrt(stat / 2))  # chi-square survival function with 1 degree of freedom
    method = ("exact binomial (two-sided)" if use_exact
              else "chi-square with continuity correction (1 df)")
    return {"a_right_b_wrong": b, "a_wrong_b_right": c, "discordant": d,
            "both_right": int((right_a & right_b).sum()), "both_wrong": int((~right_a & ~right_b).sum()),
            "statistic": float(stat), "p_value": float(p), "method": method}


# --------------------------------------------------------------------------- paired bootstrap


def _boot_auc(score: np.ndarray, pos_draws: np.ndarray, neg_draws: np.ndarray) -> np.ndarray:
    """AUC of each resample (rows of drawn positive and negative image indices), ties counted 1/2.

    Each row is summarised as how often each distinct score was drawn among positives and among
    negatives; the AUC is then one cumulative sum over the sorted distinct scores."""
    _, inverse = np.unique(score, return_inverse=True)
    k = int(inverse.max()) + 1
    rows = pos_draws.shape[0]
    offset = (np.arange(rows) * k)[:, None]
    w_pos = np.bincount((offset + inverse[pos_draws]).ravel(), minlength=rows * k).reshape(rows, k)
    w_neg = np.bincount((offset + inverse[neg_draws]).ravel(), minlength=rows * k).reshape(rows, k)
    neg_below = np.cumsum(w_neg, axis=1) - w_neg
    wins = (w_pos * (neg_below + 0.5 * w_neg)).sum(axis=1)
    return wins / (pos_draws.shape[1] * neg_draws.shape[1])


def _stratified_draws(y: np.ndarray, *, n_boot, level, seed: int):
    """Check the bootstrap settings and draw n_boot resamples within each class (seeded):
    (positive indices, negative indices, (n_boot, n_pos) draws, (n_boot, n_neg) draws)."""
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 10:
        raise ValueError(f"n_boot must be a whole number >= 10; got {n_boot!r}.")
    if not 0 < float(level) < 1:
        raise ValueError(f"level must be a fraction in (0, 1); got {level!r}.")
    rng = np.random.default_rng(seed)
    pos_idx, neg_idx = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    pos_draws = pos_idx[rng.integers(0, pos_idx.size, (n_boot, pos_idx.size))]
    neg_draws = neg_idx[rng.integers(0, neg_idx.size, (n_boot, neg_idx.size))]
    return pos_idx, neg_idx, pos_draws, neg_draws


def paired_bootstrap(y_true, score_a, score_b, *, threshold_a: float, threshold_b: float,
                     n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Percentile intervals for sensitivity, specificity and AUC of A, of B and of A - B.

    Each resample draws images with replacement within each class (so every resample has the
    original numbers of NORMAL and PNEUMONIA images) and uses the SAME draw for both runs, which
    keeps the pairing. Returns {metric: {"a"|"b"|"difference": {"estimate", "low", "high"}}}.
    """
    y = _labels(y_true)
    sa = _scores(score_a, y.size, "score_a")
    sb = _scores(score_b, y.size, "score_b")
    pos_idx, neg_idx, pos_draws, neg_draws = _stratified_draws(y, n_boot=n_boot, level=level, seed=seed)

    def figures(s, t):
        called = s >= t
        return {"sensitivity": called[pos_draws].mean(axis=1), "specificity": 1 - called[neg_draws].mean(axis=1),
                "roc_auc": _boot_auc(s, pos_draws, neg_draws)}

    def point(s, t):
        called = s >= t
        return {"sensitivity": float(called[y == 1].mean()), "specificity": float(1 - called[y == 0].mean()),
                "roc_auc": float(_boot_auc(s, pos_idx[None, :], neg_idx[None, :])[0])}

    boot_a, boot_b = figures(sa, float(threshold_a)), figures(sb, float(threshold_b))
    est_a, est_b = point(sa, float(threshold_a)), point(sb, float(threshold_b))
    tail = (1 - float(level)) / 2 * 100

    def interval(values, estimate):
        low, high = np.percentile(values, [tail, 100 - tail])
        return {"estimate": estimate, "low": float(low), "high": float(high)}

    out = {}
    for key in ("sensitivity", "specificity", "roc_auc"):
        out[key] = {"a": interval(boot_a[key], est_a[key]), "b": interval(boot_b[key], est_b[key]),
                    "difference": interval(boot_a[key] - boot_b[key], est_a[key] - est_b[key])}
    out["n_boot"], out["level"], out["seed"] = int(n_boot), float(level), int(seed)
    return out


def bootstrap_intervals(y_true, y_score, *, threshold: float, n_boot: int = 1000, seed: int = 0,
                        level: float = 0.95) -> dict:
    """One run's sensitivity, specificity, accuracy and AUC with percentile intervals, resampling
    images within each class (as paired_bootstrap). {figure: {"estimate", "low", "high"}}."""
    y = _labels(y_true)
    s = _scores(y_score, y.size, "y_score")
    pos_idx, neg_idx, pos_draws, neg_draws = _stratified_draws(y, n_boot=n_boot, level=level, seed=seed)
    called = s >= float(threshold)
    sens, spec = called[pos_draws].mean(axis=1), 1 - called[neg_draws].mean(axis=1)
    samples = {"sensitivity": sens, "specificity": spec,
               "accuracy": (sens * pos_idx.size + spec * neg_idx.size) / y.size,
               "roc_auc": _boot_auc(s, pos_draws, neg_draws)}
    point_sens, point_spec = float(called[y == 1].mean()), float(1 - called[y == 0].mean())
    points = {"sensitivity": point_sens, "specificity": point_spec,
              "accuracy": float((called == (y == 1)).mean()),
              "roc_auc": float(_boot_auc(s, pos_idx[None, :], neg_idx[None, :])[0])}
    tail = (1 - float(level)) / 2 * 100
    out = {}
    for key, values in samples.items():
        low, high = np.percentile(values, [tail, 100 - tail])
        out[key] = {"estimate": points[key], "low": float(low), "high": float(high)}
    return out


# --------------------------------------------------------------------------- all together


def compare(y_true, score_a, score_b, *, threshold_a: float, threshold_b: float, n_boot: int = 2000,
            seed: int = 0, level: float = 0.95) -> dict:
    """DeLong, McNemar (verdicts at each run's threshold) and the paired bootstrap, in one dict."""
    y = _labels(y_true)
    sa = _scores(score_a, y.size, "score_a")
    sb = _scores(score_b, y.size, "score_b")
    return {
        "n": int(y.size), "n_pneumonia": int(y.sum()), "n_normal": int(y.size - y.sum()),
        "threshold_a": float(threshold_a), "threshold_b": float(threshold_b),
        "delong": delong_test(y, sa, sb, level=level),
        "mcnemar": mcnemar_test(y, (sa >= threshold_a).astype(int), (sb >= threshold_b).astype(int)),
        "bootstrap": paired_bootstrap(y, sa, sb, threshold_a=threshold_a, threshold_b=threshold_b,
                                      n_boot=n_boot, seed=seed, level=level),
    }


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def reading(result: dict, *, name_a: str = "A", name_b: str = "B", alpha: float = 0.05) -> list[str]:
    """Plain-language sentences for a :func:`compare` result (no multiplicity correction: with
    many pairs, some small p-values arise by chance; say so where many pairs are shown)."""
    out = []
    d = result["delong"]
    if d["p_value"] < alpha:
        hi, lo = (name_a, name_b) if d["difference"] > 0 else (name_b, name_a)
        out.append(f"{hi}'s AUC is higher than {lo}'s ({max(d['auc_a'], d['auc_b']):.3f} vs "
                   f"{min(d['auc_a'], d['auc_b']):.3f}, difference {abs(d['difference']):.3f}, "
                   f"{int(round(d['level'] * 100))} % CI {abs(d['difference']) - (d['high'] - d['low']) / 2:.3f} to "
                   f"{abs(d['difference']) + (d['high'] - d['low']) / 2:.3f}; DeLong {_p(d['p_value'])}).")
    else:
        out.append(f"No evidence that {name_a} and {name_b} differ in AUC ({d['auc_a']:.3f} vs "
                   f"{d['auc_b']:.3f}; DeLong {_p(d['p_value'])}).")
    mc = result["mcnemar"]
    b, c = mc["a_right_b_wrong"], mc["a_wrong_b_right"]
    counts = (f"{name_a} is right where {name_b} is wrong on {b} image{'s' * (b != 1)}, the reverse on "
              f"{c}")
    if mc["p_value"] < alpha:
        better = name_a if b > c else name_b
        out.append(f"At their operating thresholds {better} makes fewer mistakes: {counts} "
                   f"(McNemar, {mc['method']}, {_p(mc['p_value'])}).")
    else:
        out.append(f"At their operating thresholds there is no evidence that either makes fewer mistakes: "
                   f"{counts} (McNemar, {mc['method']}, {_p(mc['p_value'])}).")
    boot = result["bootstrap"]
    for key, label in (("sensitivity", "Sensitivity"), ("specificity", "Specificity")):
        diff = boot[key]["difference"]
        pct = int(round(boot["level"] * 100))
        span = f"{diff['estimate']:+.3f} ({pct} % CI {diff['low']:+.3f} to {diff['high']:+.3f})"
        if diff["low"] > 0 or diff["high"] < 0:
            out.append(f"{label} {name_a} minus {name_b}: {span}; the interval excludes 0.")
        else:
            out.append(f"{label} {name_a} minus {name_b}: {span}; the interval includes 0, so no clear difference.")
    return out


# --------------------------------------------------------------------------- pairing two runs


def align(frame_a, frame_b, *, name_a: str = "A", name_b: str = "B"):
    """Pair two runs' per-image scores (DataFrames with path, label, score) by image.

    Returns (y_true, score_a, score_b) in a common order. Raises NotComparable, with a sentence,
    when the two were not scored on exactly the same images with the same labels (e.g. runs
    trained with different seeds or split settings validate on different patients).
    """
    for name, frame in ((name_a, frame_a), (name_b, frame_b)):
        missing = {"path", "label", "score"} - set(getattr(frame, "columns", []))
        if missing:
            raise ValueError(f"{name}'s scores need columns path, label and score; missing {sorted(missing)}.")
        if frame["path"].duplicated().any():
            raise ValueError(f"{name}'s scores list some images twice; rescore the run.")
    pa, pb = set(frame_a["path"]), set(frame_b["path"])
    if pa != pb:
        shared = len(pa & pb)
        raise NotComparable(
            f"{name_a} and {name_b} were validated on different images ({len(pa)} and {len(pb)} images, "
            f"{shared} in common): their validation splits differ (another seed, split method or "
            f"fraction), so a paired test would be meaningless. Train them with the same seed and split "
            f"settings to compare them."
        )
    merged = frame_a[["path", "label", "score"]].merge(frame_b[["path", "label", "score"]], on="path",
                                                       suffixes=("_a", "_b")).sort_values("path")
    if (merged["label_a"] != merged["label_b"]).any():
        raise NotComparable(f"{name_a} and {name_b} give different labels to the same images; their "
                            "datasets differ, so they cannot be compared pair by pair.")
    return (merged["label_a"].to_numpy(dtype=int), merged["score_a"].to_numpy(dtype=float),
            merged["score_b"].to_numpy(dtype=float))

