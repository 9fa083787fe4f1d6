"""LIME of P(pneumonia) for one chest X-ray, through the `lime` package.

`lime_image.LimeImageExplainer` does the work with its own hooks: `segment` is its
segmentation_fn, its hide_color fills a hidden superpixel (None: the superpixel's own mean), its
kernel weighs the samples (uniformly when kernel_width is None), its Ridge(alpha=1) fits the
scores its classifier returns (the probability or its log-odds). Only the sampling step
(`data_labels`) is ours: it draws an on/off design (`sample_masks`), scores it in batches through
`Model.predict_proba`, reports progress and honours a cancel signal. Defaults are the dashboard's;
`lime_settings("seed")` is the seed study's call. `panels.lime_panels` draws the result.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
from typing import Any, Callable

import numpy as np

from xray_core.model import CLASSES, PNEUMONIA  # what every explanation explains unless told otherwise

SEGMENTATIONS = ("quickshift", "slic", "grid")
SAMPLINGS = ("orthogonal", "lime")  # on/off designs, see sample_masks
SCALES = ("logit", "probability")  # what LIME fits: the label's log-odds or its probability
DEFAULT_SEGMENTATION_PARAMS: dict[str, dict[str, Any]] = {
    "quickshift": {"kernel_size": 4, "max_dist": 200, "ratio": 0.2},  # lime's default, the seed's
    "slic": {"n_segments": 40, "compactness": 40.0, "sigma": 1.0},  # a few dozen near-regular superpixels
    "grid": {"rows": 6, "cols": 6},
}
# The dashboard's recipe and explain_lime's defaults (benchmarks/reports/explain_*.md measure it).
DEFAULT_LIME: dict[str, Any] = {
    "segmentation": "slic", "segmentation_params": dict(DEFAULT_SEGMENTATION_PARAMS["slic"]),
    "num_samples": 512, "hide_color": None, "sampling": "orthogonal", "kernel_width": None, "scale": "logit"}
# The seed study's call of lime_image: quickshift, lime's random draws, black fill, its kernel, the probability.
SEED_LIME: dict[str, Any] = {
    "segmentation": "quickshift", "segmentation_params": dict(DEFAULT_SEGMENTATION_PARAMS["quickshift"]),
    "num_samples": 1000, "hide_color": 0.0, "sampling": "lime", "kernel_width": 0.25, "scale": "probability"}
RECIPES = {"dashboard": DEFAULT_LIME, "seed": SEED_LIME}
LIME_SAMPLE_CHOICES = (128, 256, 512, 1024, 2048, 4096, 8192)  # powers of two: the orthogonal design's sizes
TOP_SUPPORTING = 2  # panels 1 and 2 (the seed's num_features=2, positive_only)
TOP_PROS_CONS = 5  # panel 3 (the seed's num_features=5)
BATCH_SIZE = 32  # samples per model call: a progress and cancel check between calls


class ExplainError(ValueError):
    """An explanation was asked for with settings or an image it cannot use."""


class ExplainCancelled(RuntimeError):
    """The caller's cancel signal was set while LIME scored its samples."""


def lime_settings(recipe: str = "dashboard", *, num_samples: int | None = None,
                  segmentation: str | None = None) -> dict:
    """Keyword arguments of `explain_lime` for a recipe: Diagnose, the report and `xray explain` share them.

    Parameters
    ----------
    recipe : "dashboard" (DEFAULT_LIME) or "seed" (SEED_LIME, the seed study's call).
    num_samples : replaces the recipe's sample count.
    segmentation : replaces the recipe's method; another method takes its own default parameters.

    Returns
    -------
    dict
        A copy the caller may change: ``explain_lime(model, image, **lime_settings())``.
    """
    if recipe not in RECIPES:
        raise ExplainError(f"Unknown LIME recipe {recipe!r}; choose one of {', '.join(RECIPES)}.")
    settings = dict(RECIPES[recipe], segmentation_params=dict(RECIPES[recipe]["segmentation_params"]))
    if num_samples is not None:
        settings["num_samples"] = int(num_samples)
    if segmentation is not None and segmentation != settings["segmentation"]:
        settings.update(segmentation=segmentation, segmentation_params=None)
    return settings


def to_gray(image: np.ndarray) -> np.ndarray:
    """2-D uint8 as given; 3-D (h, w, 1|3|4) uint8 -> gray with ITU-R 601 luma (as Pillow's "L")."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ExplainError(f"The image must be uint8 pixels (0..255), got {image.dtype}; "
                           "read files with xray_core.imaging.decode.")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    elif image.ndim == 3 and image.shape[2] in (3, 4):
        rgb = image[..., :3].astype(np.float32)
        image = np.clip(rgb @ np.array([0.299, 0.587, 0.114], np.float32) + 0.5, 0, 255).astype(np.uint8)
    elif image.ndim != 2:
        raise ExplainError(f"The image must be 2-D gray or 3-D (height, width, 1/3/4 channels); "
                           f"got shape {image.shape}.")
    if min(image.shape) < 4:
        raise ExplainError(f"The image is too small to explain ({image.shape[1]}x{image.shape[0]} px).")
    return np.ascontiguousarray(image)


def label_index(label) -> int:
    """0/1/"NORMAL"/"PNEUMONIA" -> the class index; None -> PNEUMONIA."""
    if label is None:
        return PNEUMONIA
    if isinstance(label, str) and label.upper() in CLASSES:
        return CLASSES.index(label.upper())
    if label in (0, 1) and not isinstance(label, (bool, str)):
        return int(label)
    raise ExplainError(f"Unknown label {label!r}; use 0 (NORMAL), 1 (PNEUMONIA), their names or None.")


def check_model(model) -> None:
    """Refuse what is not an `xray_core.model.Model` (or has its interface) with a sentence."""
    if not all(hasattr(model, name) for name in ("predict_proba", "preprocess", "threshold", "channels")):
        raise ExplainError(f"Cannot explain with a {type(model).__name__}: pass a run's model, "
                           "xray_core.model.load_model(run).")


def segment(model_input: np.ndarray, method: str = "slic", *, params: dict | None = None,
            seed: int = 0) -> np.ndarray:
    """Superpixels of a model input.

    Parameters
    ----------
    model_input : (h, w, c) in 0..255; segmented as gray RGB in 0..1, the scale quickshift's
        `ratio` and `max_dist` assume (lime's image, the seed's pixels divided by 255).
    method : one of SEGMENTATIONS; `params` update its DEFAULT_SEGMENTATION_PARAMS.
    seed : quickshift's tie-breaking.

    Returns
    -------
    int32 (h, w) labels 0..n-1 (lime indexes its samples by label).
    """
    from skimage import segmentation as sks

    if method not in SEGMENTATIONS:
        raise ExplainError(f"Unknown segmentation {method!r}; choose one of: {', '.join(SEGMENTATIONS)}.")
    settings = {**DEFAULT_SEGMENTATION_PARAMS[method], **(params or {})}
    rgb = np.repeat(np.asarray(model_input, np.float64)[..., :1] / 255.0, 3, axis=2)
    try:
        if method == "grid":
            return _grid(np.shape(model_input)[:2], **settings)
        if method == "quickshift":
            labels = sks.quickshift(rgb, rng=int(seed), **settings)
        else:
            labels = sks.slic(rgb, start_label=0, **settings)
    except TypeError as exc:
        raise ExplainError(f"Segmentation {method!r} does not accept {sorted(settings)}: {exc}. "
                           f"Its defaults here are {DEFAULT_SEGMENTATION_PARAMS[method]}.") from None
    _, inverse = np.unique(labels, return_inverse=True)
    return inverse.reshape(labels.shape).astype(np.int32)


def _grid(shape: tuple[int, int], rows: int, cols: int) -> np.ndarray:
    """int32 (h, w) labels of a rows x cols grid of near-equal rectangles, row by row."""
    h, w = (int(v) for v in shape)
    rows, cols = int(rows), int(cols)
    if not (1 <= rows <= h and 1 <= cols <= w):
        raise ExplainError(f"A grid of {rows} x {cols} cells does not fit a {w}x{h} px image.")
    return ((np.arange(h) * rows // h)[:, None] * cols + (np.arange(w) * cols // w)[None, :]).astype(np.int32)


def sample_masks(n_superpixels: int, num_samples: int, rs: np.random.RandomState,
                 sampling: str = "orthogonal") -> np.ndarray:
    """The on/off design, int (num_samples, n): row 0 is the unperturbed image (all on).

    "lime": lime's own draws (each superpixel on or off with probability 1/2, the same stream as
    `LimeImageExplainer.data_labels`). "orthogonal": see _orthogonal_masks.
    """
    if sampling not in SAMPLINGS:
        raise ExplainError(f"Unknown sampling {sampling!r}; choose one of: {', '.join(SAMPLINGS)}.")
    n, m = int(n_superpixels), int(num_samples)
    if sampling == "orthogonal":
        return _orthogonal_masks(n, m, rs)
    data = rs.randint(0, 2, m * n).reshape((m, n))
    data[0, :] = 1
    return data


def _orthogonal_masks(n: int, m: int, rs: np.random.RandomState) -> np.ndarray:
    """A two-level orthogonal design: the m rows of the Sylvester-Hadamard matrix of order m, on n
    of its columns of odd weight (row r, column c: on unless r & c has an odd number of bits).
    Every superpixel is hidden in exactly half the samples, every two are uncorrelated, and each
    row's complement is in the design (a fold-over: row 0 is all on, row m - 1 all off), so a
    superpixel's weight is clear of every two-superpixel interaction. The columns are
    _low_aberration_columns(n, m); the random state assigns them to the superpixels."""
    if m < 2 * n or m & (m - 1):
        raise ExplainError(
            f"Orthogonal sampling needs a power of two of at least twice the superpixels ({2 * n}) as the "
            f"number of samples; got {m}. Choose a power of two that large (1024, 2048, 4096, ...), a "
            "segmentation with fewer superpixels, or sampling='lime' for any count.")
    chosen = np.asarray(_low_aberration_columns(n, m))[rs.permutation(n)]
    parity = np.bitwise_count(np.arange(m)[:, None] & chosen[None, :]) % 2
    return (1 - parity).astype(np.int64)


@functools.lru_cache(maxsize=32)
def _low_aberration_columns(n: int, m: int, starts: int = 20) -> tuple[int, ...]:
    """n odd-weight columns of the order-m Sylvester-Hadamard matrix that form few four-column words
    (a ^ b == c ^ d): each word aliases a three-superpixel interaction into a weight, and those
    aliases are what moves the weights from one assignment of columns to the next. Greedy: each
    step adds the column that closes the fewest new words (ties drawn by a fixed generator); the
    best of `starts` starts (tests/test_explain.py counts the words)."""
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


def hidden_fill(x: np.ndarray, segments: np.ndarray, hide_color: float | None) -> np.ndarray:
    """What a hidden superpixel shows, float64 like x: a flat gray level, or with hide_color=None
    each superpixel's own mean (lime's fudged image); for deletion curves."""
    x = np.asarray(x, np.float64)
    if hide_color is not None:
        return np.full(x.shape, float(hide_color))
    n = int(segments.max()) + 1
    counts = np.maximum(np.bincount(segments.ravel(), minlength=n), 1)
    means = np.stack([np.bincount(segments.ravel(), weights=x[..., c].ravel(), minlength=n) / counts
                      for c in range(x.shape[-1])], axis=1)
    return means[segments]


def class_scores(model, images: np.ndarray) -> np.ndarray:
    """float64 (N, 2) probabilities of (NORMAL, PNEUMONIA), (1 - p, p) with p = model.predict_proba,
    for images (N, h, w, >= c) 0..255 (lime's RGB images give the model its channels)."""
    p = np.asarray(model.predict_proba(np.asarray(images, np.float32)[..., : model.channels]), np.float64)
    return np.stack([1.0 - p, p], axis=1)


def _cancelled(cancel) -> bool:
    if cancel is None:
        return False
    return cancel.is_set() if isinstance(cancel, threading.Event) else bool(cancel())


@functools.cache
def _explainer_class():
    """LimeImageExplainer with our sampling step (lime is imported on first use: it takes a second)."""
    from lime.lime_image import LimeImageExplainer

    class DesignedLimeExplainer(LimeImageExplainer):
        """lime's explainer whose data_labels draws `sampling`'s design from lime's random state and
        scores it in batches (float32 images in the model's `channels`: lime's RGB channels of a
        gray image are equal), with progress and cancellation between batches."""

        def __init__(self, *, sampling: str, kernel_width: float | None, random_state: int, channels: int,
                     progress: Callable[[int, int], None] | None = None, cancel=None):
            kernel = (lambda d, kernel_width: np.ones_like(d)) if kernel_width is None else None
            super().__init__(kernel_width=0.25 if kernel_width is None else float(kernel_width), kernel=kernel,
                             feature_selection="none", random_state=random_state)
            self.sampling, self.channels, self.progress, self.cancel = sampling, int(channels), progress, cancel
            self.model_seconds = 0.0

        def data_labels(self, image, fudged_image, segments, classifier_fn, num_samples, batch_size=BATCH_SIZE):
            t = time.perf_counter()
            data = sample_masks(int(segments.max()) + 1, num_samples, self.random_state, self.sampling)
            shown = np.asarray(image[..., : self.channels], np.float32)[None]
            hidden = np.asarray(fudged_image[..., : self.channels], np.float32)[None]
            labels = []
            for start in range(0, num_samples, batch_size):
                if _cancelled(self.cancel):
                    raise ExplainCancelled(f"LIME was cancelled after {start} of {num_samples} samples.")
                keep = data[start : start + batch_size][:, segments].astype(bool)[..., None]
                labels.append(classifier_fn(np.where(keep, shown, hidden)))
                if self.progress is not None:
                    self.progress(min(start + batch_size, num_samples), num_samples)
            self.model_seconds = time.perf_counter() - t
            return data, np.concatenate(labels, axis=0)

    return DesignedLimeExplainer


@dataclasses.dataclass
class LimeExplanation:
    """One LIME explanation of a label's score: the superpixels and their weights."""

    label: int  # the explained class (0 NORMAL, 1 PNEUMONIA)
    predicted_label: int  # the model's label at its operating threshold
    probability: float  # P(pneumonia) of the unperturbed image
    label_score: float  # the model's probability for the explained label (LIME fits it, or its log-odds)
    segments: np.ndarray  # int32 (h, w) at model input size, labels 0..n-1
    weights: np.ndarray  # float64 (n,): weight of superpixel k for `label`, on `scale`
    intercept: float
    score: float  # weighted R^2 of the local linear fit
    local_prediction: float  # the linear fit's value at the unperturbed image (on `scale`)
    num_samples: int
    segmentation: str
    segmentation_params: dict
    seed: int
    seconds: float  # wall time of the whole call
    timings: dict  # seconds: segmentation, model (sampling and scoring), fit (the rest: fill, kernel, ridge)
    model_input: np.ndarray  # float32 (h, w, c) 0..255, what the model saw
    top_supporting: list  # superpixels of panels 1-2 (positive weight, largest first)
    top_abs: list  # superpixels of panel 3 (largest |weight| first)
    hide_color: float | None  # what a hidden superpixel showed (None: its own mean)
    sampling: str  # the on/off design (see sample_masks)
    kernel_width: float | None  # lime's kernel width (None: every sample weighs alike)
    scale: str  # what was fitted: the label's probability or its log-odds ("logit")

    @property
    def label_name(self) -> str:
        return CLASSES[self.label]

    @property
    def n_superpixels(self) -> int:
        return int(len(self.weights))

    def settings(self) -> dict:
        """The keyword arguments of explain_lime that made this explanation (seed and label aside)."""
        return {k: getattr(self, k) for k in DEFAULT_LIME}

    def to_dict(self) -> dict:
        """JSON-ready summary (no images)."""
        sizes = np.bincount(self.segments.ravel(), minlength=self.n_superpixels)
        return {
            "label": self.label, "label_name": self.label_name, "predicted_label": self.predicted_label,
            "predicted_label_name": CLASSES[self.predicted_label], "probability_pneumonia": self.probability,
            "label_score": self.label_score, "weights": {str(k): float(w) for k, w in enumerate(self.weights)},
            "superpixel_pixels": {str(k): int(n) for k, n in enumerate(sizes)}, "n_superpixels": self.n_superpixels,
            "intercept": self.intercept, "score_r2": self.score, "local_prediction": self.local_prediction,
            "seed": self.seed, "top_supporting": self.top_supporting, "top_abs": self.top_abs,
            "seconds": self.seconds, "timings": self.timings, **self.settings(),
        }


def explain_lime(model, image: np.ndarray, label=None, *, num_samples: int = 512, segmentation: str = "slic",
                 segmentation_params: dict | None = None, seed: int = 0, hide_color: float | None = None,
                 sampling: str = "orthogonal", kernel_width: float | None = None, scale: str = "logit",
                 batch_size: int = BATCH_SIZE, progress: Callable[[int, int], None] | None = None,
                 cancel: threading.Event | Callable[[], bool] | None = None) -> LimeExplanation:
    """Explain one image's P(pneumonia) (or `label`'s score) with LIME: weights per superpixel.

    Parameters
    ----------
    model : xray_core.model.Model
        The run's model; samples are scored by `model.predict_proba`.
    image : uint8 (H, W) gray, or (H, W, 3|4) made gray; any size (`model.preprocess` prepares it).
    label : 0, 1, "NORMAL", "PNEUMONIA" or None (P(pneumonia), whatever the verdict).
    num_samples : perturbed images scored, row 0 the image itself; the orthogonal design takes a
        power of two at least twice the superpixels.
    segmentation, segmentation_params : one of SEGMENTATIONS; the params update its
        DEFAULT_SEGMENTATION_PARAMS.
    seed : lime's random_state (the design's draw) and quickshift's tie-breaking.
    hide_color : what a hidden superpixel shows: None its own mean (lime's), or a gray level (0 black).
    sampling : the on/off design, "orthogonal" or "lime" (see sample_masks).
    kernel_width : lime's cosine-distance kernel width (0.25 is lime's); None weighs samples alike.
    scale : "logit" fits the label's log-odds (probabilities clipped to [1e-7, 1 - 1e-7]), closer to
        additive in the superpixels than the probability, which "probability" fits.
    batch_size, progress, cancel : samples per model call; progress(done, num_samples) is called
        after each batch; a set threading.Event or a callable returning True, checked before each
        batch, stops the call with ExplainCancelled.

    Returns
    -------
    LimeExplanation
        Draw it with `panels.lime_panels(image, explanation)`.
    """
    from xray_core.model import logit

    t0 = time.perf_counter()
    check_model(model)
    label = label_index(label)
    num_samples = int(num_samples)
    for name, value, choices in (("scale", scale, SCALES), ("sampling", sampling, SAMPLINGS),
                                 ("segmentation", segmentation, SEGMENTATIONS)):
        if value not in choices:
            raise ExplainError(f"Unknown {name} {value!r}; choose one of: {', '.join(choices)}.")
    if num_samples < 2:
        raise ExplainError(f"num_samples must be at least 2 (512 is the dashboard's), got {num_samples}.")
    gray = to_gray(image)
    x = model.preprocess(gray)  # (h, w, c) float32
    params = {**DEFAULT_SEGMENTATION_PARAMS[segmentation], **(segmentation_params or {})}
    timings: dict[str, float] = {}
    found: list[np.ndarray] = []

    def segmentation_fn(rgb: np.ndarray) -> np.ndarray:
        t = time.perf_counter()
        found.append(segment(rgb, segmentation, params=params, seed=seed))
        timings["segmentation"] = time.perf_counter() - t
        return found[0]

    unperturbed: list[float] = []

    def classifier_fn(images: np.ndarray) -> np.ndarray:
        probs = class_scores(model, images)
        if not unperturbed:
            unperturbed.append(float(probs[0, PNEUMONIA]))  # the first batch starts with the image itself
        return probs if scale == "probability" else logit(probs)

    explainer = _explainer_class()(sampling=sampling, kernel_width=kernel_width, random_state=int(seed),
                                   channels=model.channels, progress=progress, cancel=cancel)
    # lime takes the image as RGB (a 2-D image becomes three equal channels) in float64, so that
    # each superpixel's mean fill is computed in float64 before the model's float32.
    result = explainer.explain_instance(
        x[..., 0].astype(np.float64), classifier_fn, labels=(label,), hide_color=hide_color, top_labels=None,
        num_features=np.iinfo(np.int32).max, num_samples=num_samples, batch_size=int(batch_size),
        segmentation_fn=segmentation_fn, random_seed=int(seed))
    timings["model"] = explainer.model_seconds
    segments = found[0]
    n = int(segments.max()) + 1
    weights = np.zeros(n)
    for k, w in result.local_exp[label]:
        weights[k] = w
    timings["fit"] = time.perf_counter() - t0 - sum(timings.values())
    p = unperturbed[0]
    order_abs = sorted(range(n), key=lambda k: (-abs(weights[k]), k))
    return LimeExplanation(
        label=label, predicted_label=int(p >= model.threshold), probability=p,
        label_score=p if label == PNEUMONIA else 1.0 - p, segments=segments, weights=weights,
        intercept=float(result.intercept[label]), score=float(result.score),
        local_prediction=float(np.ravel(result.local_pred)[0]), num_samples=num_samples,
        segmentation=segmentation, segmentation_params=params, seed=int(seed),
        seconds=time.perf_counter() - t0, timings=timings, model_input=x,
        top_supporting=[k for k in order_abs if weights[k] > 0][:TOP_SUPPORTING], top_abs=order_abs[:TOP_PROS_CONS],
        hide_color=None if hide_color is None else float(hide_color), sampling=sampling,
        kernel_width=None if kernel_width is None else float(kernel_width), scale=scale,
    )
