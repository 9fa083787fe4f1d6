"""LIME for one chest X-ray: superpixels, seeded samples, the local linear fit, typed result.

The algorithm is lime 0.2's (`lime_image.LimeImageExplainer` with `hide_color=0`, cosine
distance, kernel width 0.25, Ridge(alpha=1), every superpixel kept), re-implemented so the
perturbed images are built in a few vectorised steps and scored in large batches. With the same
segments and seed it draws the same samples as lime and gives the same weights
(tests/test_explain.py checks this against lime itself). By default it explains P(pneumonia),
whatever the verdict.

Beyond lime: `sampling="paired"` draws antithetic pairs (each sample and its complement) and
`kernel_width=None` weighs every sample alike; together they cancel the even-order interactions
between superpixels in the fit (tests/test_explain.py), which steadies the top superpixels across
seeds. `scale="logit"` fits the log-odds of the explained probability instead of the probability:
a network's answer is far closer to additive in its superpixels on that scale (a sigmoid flattens
differences near 0 and 1), so less of it is left to alias into the weights, and the top superpixels
of a confident film agree across seeds far more often (benchmarks/reports/explain_design.md).
The dashboard's settings are adapter.DEFAULT_LIME.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable

import numpy as np

from xray_core.explain.adapter import (
    HIDE_COLOR, CLASSES, PNEUMONIA, DEFAULT_SEGMENTATION_PARAMS, DISPLAY_SIZE, ExplainError, HEATMAP_CMAP,
    KERNEL_WIDTH, SAMPLINGS, SCALES, SEGMENTATIONS, TOP_PROS_CONS, TOP_SUPPORTING, _check_label, as_adapter, to_gray,
)
from xray_core.explain.fastscore import _auto_batch_size, make_scorer
from xray_core.explain.panels import HeatmapLegend, LimePanels, lime_panels
from xray_core.model import logit


def segment(model_input: np.ndarray, method: str = "quickshift", *, params: dict | None = None,
            seed: int = 0) -> np.ndarray:
    """Superpixels of a model input (h, w, c) 0..255 -> int32 (h, w) labels 0..n-1.

    Segmentation runs on the gray image as RGB in 0..1, as in the seed (lime turns gray into RGB;
    the seed's pixels were divided by 255, which quickshift's `ratio` and `max_dist` assume).
    Labels are renumbered 0..n-1 because lime indexes its samples by label.
    """
    from skimage import segmentation as sks

    if method not in SEGMENTATIONS:
        raise ExplainError(
            f"Unknown segmentation {method!r}; choose one of: {', '.join(SEGMENTATIONS)}."
        )
    settings = dict(DEFAULT_SEGMENTATION_PARAMS[method])
    settings.update(params or {})
    rgb = np.repeat(np.asarray(model_input, np.float64)[..., :1] / 255.0, 3, axis=2)
    try:
        if method == "grid":
            return _grid(np.shape(model_input)[:2], **settings)
        if method == "quickshift":
            labels = sks.quickshift(rgb, rng=int(seed), **settings)
        elif method == "slic":
            labels = sks.slic(rgb, start_label=0, **settings)
        else:
            labels = sks.felzenszwalb(rgb, **settings)
    except TypeError as exc:
        raise ExplainError(
            f"Segmentation {method!r} does not accept {sorted(settings)}: {exc}. "
            f"Its defaults here are {DEFAULT_SEGMENTATION_PARAMS[method]}."
        ) from None
    _, inverse = np.unique(labels, return_inverse=True)
    return inverse.reshape(labels.shape).astype(np.int32)


def hidden_fill(x: np.ndarray, segments: np.ndarray, hide_color: float | None) -> np.ndarray | None:
    """What a hidden superpixel shows, float32 (h, w, c), for make_scorer: None (the scorer's own
    black) for HIDE_COLOR, a flat gray level, or with hide_color=None each superpixel's mean
    (lime's hide_color=None)."""
    if hide_color is None:
        n = int(segments.max()) + 1
        counts = np.maximum(np.bincount(segments.ravel(), minlength=n), 1)
        means = np.stack([np.bincount(segments.ravel(), weights=x[..., c].ravel(), minlength=n) / counts
                          for c in range(x.shape[-1])], axis=1)  # (n, c)
        return means[segments].astype(np.float32)  # (h, w, c)
    if float(hide_color) == HIDE_COLOR:
        return None
    return np.full(x.shape, float(hide_color), np.float32)


def _grid(shape: tuple[int, int], rows: int, cols: int) -> np.ndarray:
    """int32 (h, w) labels of a rows x cols grid of near-equal rectangles, row by row."""
    h, w = (int(v) for v in shape)
    rows, cols = int(rows), int(cols)
    if not (1 <= rows <= h and 1 <= cols <= w):
        raise ExplainError(f"A grid of {rows} x {cols} cells does not fit a {w}x{h} px image.")
    r = np.arange(h) * rows // h
    c = np.arange(w) * cols // w
    return (r[:, None] * cols + c[None, :]).astype(np.int32)


@dataclasses.dataclass
class LimeExplanation:
    """One LIME explanation: the prediction, the superpixels, their weights and the panels."""

    label: int  # the explained class (0 NORMAL, 1 PNEUMONIA)
    predicted_label: int  # the model's label at its operating threshold
    probability: float  # pneumonia probability of the unperturbed image
    label_score: float  # the model's probability for the explained label (LIME fits it, or its log-odds)
    segments: np.ndarray  # int32 (h, w) at model input size, labels 0..n-1
    weights: np.ndarray  # float64 (n,): weight of superpixel k for `label`
    intercept: float
    score: float  # weighted R^2 of the local linear fit
    local_prediction: float  # the linear fit's value at the unperturbed image (on `scale`)
    num_samples: int
    segmentation: str
    segmentation_params: dict
    seed: int
    seconds: float  # wall time of the whole call
    timings: dict  # seconds per stage: segmentation, setup, model, fit, panels; fast_path (bool)
    model_input: np.ndarray  # float32 (h, w, c) 0..255, what the model saw
    top_supporting: list  # superpixels of panels 1-2 (positive weight, largest first)
    top_abs: list  # superpixels of panel 3 (largest |weight| first)
    legend: HeatmapLegend
    panels: LimePanels | None
    hide_color: float | None = HIDE_COLOR  # what a hidden superpixel showed (None: its own mean)
    sampling: str = "lime"  # the on/off design (see _sample_masks)
    kernel_width: float | None = KERNEL_WIDTH  # lime's kernel width (None: every sample weighs alike)
    scale: str = "probability"  # what was fitted: the label's probability or its log-odds ("logit")

    @property
    def label_name(self) -> str:
        return CLASSES[self.label]

    @property
    def n_superpixels(self) -> int:
        return int(len(self.weights))

    def weight_map(self) -> np.ndarray:
        """float (h, w): each pixel's superpixel weight."""
        return self.weights[self.segments]

    def to_dict(self) -> dict:
        """JSON-ready summary (no images)."""
        return {
            "label": self.label,
            "label_name": self.label_name,
            "predicted_label": self.predicted_label,
            "predicted_label_name": CLASSES[self.predicted_label],
            "probability_pneumonia": self.probability,
            "label_score": self.label_score,
            "weights": {str(k): float(w) for k, w in enumerate(self.weights)},
            "superpixel_pixels": {str(k): int(n) for k, n in enumerate(np.bincount(self.segments.ravel(), minlength=self.n_superpixels))},
            "n_superpixels": self.n_superpixels,
            "intercept": self.intercept,
            "score_r2": self.score,
            "local_prediction": self.local_prediction,
            "num_samples": self.num_samples,
            "segmentation": self.segmentation,
            "segmentation_params": self.segmentation_params,
            "seed": self.seed,
            "top_supporting": self.top_supporting,
            "top_abs": self.top_abs,
            "heatmap_legend": dataclasses.asdict(self.legend),
            "seconds": self.seconds,
            "timings": self.timings,
            "hide_color": self.hide_color,
            "sampling": self.sampling,
            "kernel_width": self.kernel_width,
            "scale": self.scale,
        }


def _sample_masks(n_superpixels: int, num_samples: int, seed: int, sampling: str = "lime") -> np.ndarray:
    """The on/off design, int (num_samples, n): row 0 is the unperturbed image (all on).

    "lime": lime's samples, each superpixel on or off with probability 1/2 (same RNG stream as
    lime). "paired": the same draws, each followed by its complement (antithetic pairs; row 1 is
    all off), so effects that are even in the switched superpixels cancel in the fit.
    "paired_stratified": as paired, but the number switched off in each pair's first member is
    drawn uniformly from 1..n-1 before the superpixels are chosen.
    "orthogonal": see _orthogonal_masks.
    """
    if sampling not in SAMPLINGS:
        raise ExplainError(f"Unknown sampling {sampling!r}; choose one of: {', '.join(SAMPLINGS)}.")
    rs = np.random.RandomState(seed)
    n, m = int(n_superpixels), int(num_samples)
    if sampling == "orthogonal":
        return _orthogonal_masks(n, m, rs)
    if sampling == "lime":
        data = rs.randint(0, 2, m * n).reshape((m, n))
        data[0, :] = 1
        return data
    half = (m + 1) // 2
    if sampling == "paired":
        first = rs.randint(0, 2, half * n).reshape((half, n))
    else:
        off = rs.randint(1, max(n, 2), half)  # switched off: 1..n-1
        ranks = np.argsort(rs.random_sample((half, n)), axis=1)
        first = (ranks >= off[:, None]).astype(np.int64)  # `off` random superpixels switched off
    first[0, :] = 1
    data = np.empty((2 * half, n), dtype=first.dtype)
    data[0::2] = first
    data[1::2] = 1 - first
    return data[:m]


def _orthogonal_masks(n: int, m: int, rs: np.random.RandomState) -> np.ndarray:
    """A two-level orthogonal design: the m rows of the Sylvester-Hadamard matrix of order m, on n
    of its columns of odd weight (row r, column c: on unless r & c has an odd number of bits).
    Every superpixel is hidden in exactly half the samples, every two are uncorrelated, and each
    row's complement is in the design (a fold-over: row 0 is all on, row m - 1 all off), so a
    superpixel's weight is clear of every two-superpixel interaction instead of only on average,
    as with random pairs. The columns are _low_aberration_columns(n, m); the seed assigns them to
    the superpixels."""
    if m < 2 * n or m & (m - 1):
        raise ExplainError(
            f"Orthogonal sampling needs a power of two of at least twice the superpixels ({2 * n}) as the "
            f"number of samples; got {m}. Choose a power of two that large (1024, 2048, 4096, ...), a "
            "segmentation with fewer superpixels, or sampling='paired' for any count.")
    chosen = np.asarray(_low_aberration_columns(n, m))[rs.permutation(n)]
    parity = np.bitwise_count(np.arange(m)[:, None] & chosen[None, :]) % 2
    return (1 - parity).astype(np.int64)


@functools.lru_cache(maxsize=32)
def _low_aberration_columns(n: int, m: int, starts: int = 20) -> tuple[int, ...]:
    """n odd-weight columns of the order-m Sylvester-Hadamard matrix that form few four-column words
    (a ^ b == c ^ d): each word aliases a three-superpixel interaction into a weight, and those
    aliases are what moves the weights from one assignment of columns to the next. Greedy: each
    step adds the column that closes the fewest new words (ties drawn by a fixed generator); the
    best of `starts` starts. For 36 columns of 1,024 rows: 59 words, where 36 random odd columns
    form about 115 (tests/test_explain.py counts them from the design)."""
    rng = np.random.default_rng(0)
    odd = np.arange(1, m)[np.bitwise_count(np.arange(1, m)) % 2 == 1]
    best: tuple[int, list[int]] | None = None
    for _ in range(starts):
        pair_xors = np.zeros(m, np.int64)  # how many chosen pairs have each XOR
        taken = np.zeros(m, bool)
        cols = [int(rng.choice(odd))]
        taken[cols[0]] = True
        while len(cols) < n:
            current = np.asarray(cols)
            new_words = pair_xors[odd[:, None] ^ current[None, :]].sum(axis=1)
            new_words[taken[odd]] = np.iinfo(np.int64).max
            c = int(odd[rng.choice(np.flatnonzero(new_words == new_words.min()))])
            pair_xors[c ^ current] += 1
            taken[c] = True
            cols.append(c)
        words = int((pair_xors * (pair_xors - 1) // 2).sum() // 3)
        if best is None or words < best[0]:
            best = (words, cols)
    return tuple(best[1])


def _kernel_weights(data: np.ndarray, kernel_width: float | None = KERNEL_WIDTH) -> np.ndarray:
    """lime's sample weights: sqrt(exp(-d^2 / width^2)), d the cosine distance to the unperturbed
    row (sklearn puts an all-off row at distance 1); None weighs every sample alike."""
    if kernel_width is None:
        return np.ones(len(data))
    from sklearn.metrics import pairwise_distances

    distances = pairwise_distances(data, data[0].reshape(1, -1), metric="cosine").ravel()
    return np.sqrt(np.exp(-(distances**2) / float(kernel_width) ** 2))


def _fit_local_model(data: np.ndarray, targets: np.ndarray, kernel_width: float | None = KERNEL_WIDTH):
    """lime_base.explain_instance_with_data with every feature kept: weighted Ridge(alpha=1)."""
    from sklearn.linear_model import Ridge

    sample_weight = _kernel_weights(data, kernel_width)
    model = Ridge(alpha=1.0, fit_intercept=True)
    model.fit(data, targets, sample_weight=sample_weight)
    score = model.score(data, targets, sample_weight=sample_weight)
    local_pred = model.predict(data[0].reshape(1, -1))[0]
    return model.coef_.astype(np.float64), float(model.intercept_), float(score), float(local_pred)


def explain_lime(run_or_model, image: np.ndarray, label=None, *, num_samples: int = 1000,
                 segmentation: str = "quickshift", segmentation_params: dict | None = None,
                 seed: int = 0, progress: Callable[[int, int], None] | None = None,
                 batch_size: int | None = None, panels: bool = True,
                 display_size: int = DISPLAY_SIZE, fast: bool = True,
                 hide_color: float | None = HIDE_COLOR, sampling: str = "lime",
                 kernel_width: float | None = KERNEL_WIDTH, scale: str = "probability") -> LimeExplanation:
    """Explain one image with LIME; returns weights per superpixel and the four panels.

    Parameters
    ----------
    run_or_model : runs.Run, ModelAdapter or keras.Model (input settings read from its shapes)
    image : uint8 (H, W) gray, or (H, W, 3|4) which is converted to gray; any size. It is
        prepared exactly as the run was trained (resized to the model input, channels repeated).
    label : 0/1/"NORMAL"/"PNEUMONIA"; None (the default) explains P(pneumonia), whatever the verdict.
    num_samples : perturbed images scored by the model (row 0 is the unperturbed image).
    segmentation, segmentation_params : "quickshift" (the seed's kernel_size=4, max_dist=200,
        ratio=0.2), "slic", "felzenszwalb" or "grid" (rows x cols rectangles); params override
        DEFAULT_SEGMENTATION_PARAMS.
    seed : seeds the sampling (lime's random_state) and quickshift's tie-breaking.
    progress : called as progress(samples_scored, num_samples) after each model batch.
    batch_size : samples per model call; None picks the largest that fits about 1 GB of activations.
    panels : False skips drawing (stability runs only need weights).
    hide_color : what a hidden superpixel shows: a gray level (0, black, the seed's and the
        default), or None for the superpixel's own mean (lime's hide_color=None), which the
        dashboard uses (DEFAULT_LIME): steadier weights on radiographs, see
        benchmarks/reports/explain_faithfulness.md.
    sampling : the on/off design, "lime" (lime's own draws, the default), "paired" or
        "paired_stratified" (antithetic pairs), or "orthogonal" (a fold-over orthogonal design,
        the dashboard's; num_samples a power of two); see _sample_masks.
    kernel_width : lime's cosine-distance kernel width (0.25, lime's default); None weighs every
        sample alike (with paired sampling, this keeps each pair's two halves balanced).
    scale : "probability" (lime's) fits the label's probability; "logit" fits its log-odds
        (probabilities clipped to [1e-7, 1 - 1e-7]), the dashboard's: the weights are then in
        log-odds, and the top superpixels steadier across seeds.
    fast : use the exact local-prefix shortcut where the architecture allows it (see above);
        False always scores whole perturbed images (the reference path).
    """
    t_start = time.perf_counter()
    adapter = as_adapter(run_or_model)
    label = _check_label(label)
    num_samples = int(num_samples)
    if scale not in SCALES:
        raise ExplainError(f"Unknown scale {scale!r}; choose one of: {', '.join(SCALES)}.")
    if num_samples < 2:
        raise ExplainError(f"num_samples must be at least 2 (1,000 is a good start), got {num_samples}.")
    gray = to_gray(image)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    x = adapter.prepare(gray)
    settings = dict(DEFAULT_SEGMENTATION_PARAMS.get(segmentation, {}))
    settings.update(segmentation_params or {})
    segments = segment(x, segmentation, params=segmentation_params, seed=seed)
    n = int(segments.max()) + 1
    timings["segmentation"] = time.perf_counter() - t

    t = time.perf_counter()
    data = _sample_masks(n, num_samples, seed, sampling)
    fill = hidden_fill(x, segments, hide_color)
    scorer = make_scorer(adapter, x, segments, fast=fast, fill=fill)
    batch = int(batch_size) if batch_size else _auto_batch_size(adapter, scorer)
    timings["setup"] = time.perf_counter() - t
    scores = np.empty((num_samples, 2), dtype=np.float64)
    t = time.perf_counter()
    for start in range(0, num_samples, batch):
        rows = data[start : start + batch]
        scores[start : start + len(rows)] = scorer(rows, batch)
        if progress is not None:
            progress(min(start + batch, num_samples), num_samples)
    timings["model"] = time.perf_counter() - t
    timings["fast_path"] = bool(scorer.fast)

    probs0 = scores[0]  # row 0 is the unperturbed image
    predicted = adapter.predicted_label(probs0)
    if label is None:
        label = PNEUMONIA

    t = time.perf_counter()
    targets = scores[:, label] if scale == "probability" else logit(scores[:, label])
    weights, intercept, r2, local_pred = _fit_local_model(data, targets, kernel_width)
    timings["fit"] = time.perf_counter() - t

    order_abs = sorted(range(n), key=lambda k: (-abs(weights[k]), k))
    top_abs = order_abs[:TOP_PROS_CONS]
    top_supporting = [k for k in order_abs if weights[k] > 0][:TOP_SUPPORTING]
    vmax = float(np.max(np.abs(weights))) if n else 0.0
    legend = HeatmapLegend(vmin=-vmax, vmax=vmax, cmap=HEATMAP_CMAP)

    drawn = None
    if panels:
        t = time.perf_counter()
        drawn = lime_panels(gray, segments, weights, top_supporting, top_abs, legend, display_size)
        timings["panels"] = time.perf_counter() - t

    return LimeExplanation(
        label=int(label), predicted_label=predicted, probability=float(probs0[1]),
        label_score=float(probs0[label]), segments=segments, weights=weights,
        intercept=intercept, score=r2, local_prediction=local_pred, num_samples=num_samples,
        segmentation=segmentation, segmentation_params=settings, seed=int(seed),
        seconds=time.perf_counter() - t_start, timings=timings, model_input=x,
        top_supporting=[int(k) for k in top_supporting], top_abs=[int(k) for k in top_abs],
        legend=legend, panels=drawn, hide_color=None if hide_color is None else float(hide_color),
        sampling=sampling, kernel_width=None if kernel_width is None else float(kernel_width), scale=scale,
    )
