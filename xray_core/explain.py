"""Explanations for one chest X-ray: LIME's four panels, Grad-CAM, and figures to judge them by.

Everything here returns plain arrays and numbers; pages only draw them. The LIME algorithm is
lime 0.2's (`lime_image.LimeImageExplainer` with `hide_color=0`, cosine distance, kernel width
0.25, Ridge(alpha=1), every superpixel kept), re-implemented so that the perturbed images are
built in a few vectorised steps and scored in large batches by one traced function per model
and input shape; for conv-first models (the seed's four) the samples are scored by an exact
table look-up instead (see "fast LIME scoring"). With the same segments and seed it draws the
same random samples as lime and gives the same weights (`tests/test_explain.py` checks this
against lime itself, and the look-up against the model's own outputs).

TensorFlow, scikit-image, scikit-learn and matplotlib are imported inside the functions that
need them, so `import xray_core.explain` (and `python -m xray_core --help`) stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import itertools
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable

import numpy as np

CLASSES = ("NORMAL", "PNEUMONIA")

SEGMENTATIONS = ("quickshift", "slic", "felzenszwalb")
# quickshift: lime's default, as the seed used it. slic / felzenszwalb: chosen to give a few dozen
# superpixels on a 100-128 px model input (about 10 samples per superpixel at 1,000 samples).
DEFAULT_SEGMENTATION_PARAMS: dict[str, dict[str, Any]] = {
    "quickshift": {"kernel_size": 4, "max_dist": 200, "ratio": 0.2},
    "slic": {"n_segments": 60, "compactness": 10.0, "sigma": 1.0},
    "felzenszwalb": {"scale": 100.0, "sigma": 0.8, "min_size": 40},
}
KERNEL_WIDTH = 0.25  # lime_image's default
HIDE_COLOR = 0.0  # the seed's hide_color: hidden superpixels are black
HEATMAP_CMAP = "RdBu"  # the seed's map: red against, blue for the label
GRADCAM_CMAP = "jet"
DISPLAY_SIZE = 512  # long side of every panel, in pixels
TOP_SUPPORTING = 2  # panels 1 and 2 (the seed's num_features=2, positive_only)
TOP_PROS_CONS = 5  # panel 3 (the seed's num_features=5)
BOUNDARY_COLOR = (255, 255, 0)  # skimage.mark_boundaries' default yellow, as in the seed
SUPPORT_COLOR = (0, 200, 0)
OPPOSE_COLOR = (230, 0, 0)
PROS_CONS_ALPHA = 0.45  # colour over anatomy: strong enough to read, weak enough to see through
GRADCAM_ALPHA = 0.4


class ExplainError(ValueError):
    """An explanation was asked for with settings or an image it cannot use."""


# ----------------------------------------------------------------------------- model adapter


@dataclasses.dataclass(eq=False)
class ModelAdapter:
    """A Keras model plus the input settings it was trained with.

    `runs.Run` carries these settings itself; a bare model can be wrapped directly. Pixels are
    float32 0..255 (the model rescales inside). `threshold` is the operating threshold that
    turns the pneumonia probability into the predicted label.
    """

    model: Any
    image_size: tuple[int, int]
    channels: int
    output_units: int
    threshold: float = 0.5
    name: str = "model"

    def __post_init__(self):
        h, w = (int(v) for v in self.image_size)
        self.image_size = (h, w)
        self.channels = int(self.channels)
        self.output_units = int(self.output_units)
        if self.channels not in (1, 3):
            raise ExplainError(f"channels must be 1 or 3, got {self.channels}.")
        if self.output_units not in (1, 2):
            raise ExplainError(
                f"The model has {self.output_units} output units; explanations need a 1-unit "
                "(pneumonia probability) or 2-unit (NORMAL, PNEUMONIA) head."
            )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (*self.image_size, self.channels)

    def prepare(self, gray: np.ndarray) -> np.ndarray:
        """2-D uint8 image of any size -> float32 (h, w, c) 0..255, exactly as in training."""
        from xray_core import imaging

        return imaging.to_model_input(gray, self.image_size, self.channels)

    def class_probabilities(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """float32 (N, h, w, c) -> float64 (N, 2): column k is the model's score for CLASSES[k].

        2-unit heads give their two columns (the seed's sigmoids need not sum to 1); a 1-unit
        head's p becomes (1 - p, p).
        """
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 3:
            x = x[None]
        if x.shape[1:] != self.input_shape:
            raise ExplainError(
                f"{self.name} expects images of shape (N, {', '.join(map(str, self.input_shape))}) "
                f"but got {x.shape}; prepare images with ModelAdapter.prepare()."
            )
        forward = compiled_forward(self.model, self.input_shape)
        parts = [np.asarray(forward(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
        if not parts:
            return np.zeros((0, 2))
        return self.to_class_columns(np.concatenate(parts, axis=0).astype(np.float64))

    def to_class_columns(self, out: np.ndarray) -> np.ndarray:
        """Raw model outputs (N, units) -> (N, 2) scores for (NORMAL, PNEUMONIA)."""
        if self.output_units == 1:
            p = out.reshape(len(out), -1)[:, 0]
            return np.stack([1.0 - p, p], axis=1)
        return out[:, :2]

    def predicted_label(self, probs_row: np.ndarray) -> int:
        return int(probs_row[1] >= self.threshold)


def as_adapter(run_or_model: Any, *, threshold: float | None = None) -> ModelAdapter:
    """A ModelAdapter from a `runs.Run`, an adapter, or a bare Keras model (shapes read from it)."""
    if isinstance(run_or_model, ModelAdapter):
        return run_or_model
    if hasattr(run_or_model, "prepare") and hasattr(run_or_model, "run_id"):
        run = run_or_model
        return ModelAdapter(
            run.model, run.image_size, run.channels, run.output_units,
            threshold=run.threshold if threshold is None else threshold, name=f"run {run.run_id!r}",
        )
    if hasattr(run_or_model, "layers") and hasattr(run_or_model, "inputs"):
        model = run_or_model
        in_shape = tuple(model.inputs[0].shape)
        out_shape = tuple(model.outputs[0].shape)
        if len(in_shape) != 4 or None in in_shape[1:]:
            raise ExplainError(
                f"Model {model.name!r} has input shape {in_shape}; explanations need a fixed "
                "(height, width, channels) input. Wrap it in ModelAdapter with explicit settings."
            )
        return ModelAdapter(
            model, in_shape[1:3], in_shape[3], out_shape[-1],
            threshold=0.5 if threshold is None else threshold, name=f"model {model.name!r}",
        )
    raise ExplainError(
        f"Cannot explain a {type(run_or_model).__name__}: pass a run (xray_core.runs.load_run), "
        "a Keras model, or a ModelAdapter."
    )


_FORWARD_CACHE: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()
_GRADCAM_CACHE: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def compiled_forward(model: Any, input_shape: tuple[int, int, int]):
    """`model(x, training=False)` as one tf.function per (model, input shape), traced once.

    The batch dimension is left open in the signature, so no batch size retraces. The function
    holds the model weakly: the cache entry goes away with the model.
    """
    input_shape = tuple(int(v) for v in input_shape)
    with _CACHE_LOCK:
        per_model = _FORWARD_CACHE.setdefault(model, {})
        fn = per_model.get(input_shape)
        if fn is None:
            import tensorflow as tf

            ref = weakref.ref(model)

            @tf.function(input_signature=[tf.TensorSpec((None, *input_shape), tf.float32)])
            def forward(x):
                return ref()(x, training=False)

            per_model[input_shape] = fn = forward
    return fn


# ----------------------------------------------------------------------------- fast LIME scoring
#
# LIME's perturbed images are the original with whole superpixels set to 0. For the seed's four
# architectures (any chain that starts [Rescaling] -> one stride-1 "same" conv -> per-pixel
# layers -> [one p x p pooling -> per-pixel layers]), each cell of the feature map after those
# layers depends only on a small window of the image ((p + k - 1)^2 pixels), and that window can
# only take 2^t states, t being the number of superpixels it touches (1 inside a superpixel, 2-4
# near edges). So the features of every cell in every state are computed once per explanation
# (a table of a few thousand rows), and each sample is then a table look-up followed by the rest
# of the model. The numbers are the model's own (equal up to float rounding), and model3, whose
# 256-filter conv and per-pixel Dense at full resolution are nearly all of its cost, gets many
# times faster. Other models take the plain path: perturbed images, scored in large batches by
# one traced function.

LOOKUP_COST = 32  # multiply-adds one looked-up feature costs, roughly (measured on 2 cores)
MAX_TOUCHED = 8  # a window touching more superpixels (2^8 states) takes the plain path
_PER_PIXEL_LAYERS = ("Dense", "Activation", "Dropout", "ReLU", "LeakyReLU", "BatchNormalization",
                     "SpatialDropout2D", "GaussianDropout", "GaussianNoise", "ActivityRegularization")
_POOLS = ("MaxPooling2D", "AveragePooling2D")


@dataclasses.dataclass(eq=False)
class _LocalPlan:
    """How to split a chain model: [rescale] conv per-pixel* [pool per-pixel*] | suffix."""

    scale: float  # Rescaling's scale (1.0 when there is none)
    conv: Any
    radius: int  # (kernel - 1) // 2
    before_pool: list
    pool: Any  # a p x p pooling layer with stride p, or None (p = 1)
    pool_size: int
    after_pool: list
    suffix: list
    features: int  # channels of the table (after the local prefix)

    @property
    def window(self) -> int:
        return self.pool_size + 2 * self.radius


_PLAN_CACHE: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()
_NO_PLAN = object()


def _local_plan(model) -> _LocalPlan | None:
    """The local-prefix split of `model`, or None when it is not a simple chain of that shape."""
    with _CACHE_LOCK:
        cached = _PLAN_CACHE.get(model)
    if cached is not None:
        return None if cached is _NO_PLAN else cached
    plan = _find_local_plan(model)
    with _CACHE_LOCK:
        _PLAN_CACHE[model] = _NO_PLAN if plan is None else plan
    return plan


def _per_pixel_run(layers: list, i: int) -> tuple[list, int] | None:
    run = []
    while i < len(layers) and type(layers[i]).__name__ in _PER_PIXEL_LAYERS:
        layer = layers[i]
        if type(layer).__name__ == "BatchNormalization" and layer.axis not in (-1, 3, [3], [-1]):
            return None
        run.append(layer)
        i += 1
    return run, i


def _dense_macs(layers: list) -> int:
    return sum(int(np.prod(layer.kernel.shape)) for layer in layers if type(layer).__name__ == "Dense")


def _find_local_plan(model) -> _LocalPlan | None:
    layers = list(getattr(model, "layers", []))
    try:
        if len(model.inputs) != 1 or len(model.outputs) != 1 or len(layers) < 3:
            return None
        if type(layers[0]).__name__ != "InputLayer" or model.outputs[0] is not layers[-1].output:
            return None
        for prev, layer in zip(layers[:-1], layers[1:]):
            if layer.input is not prev.output:
                return None
    except (AttributeError, ValueError):
        return None
    i = 1
    scale = 1.0
    if type(layers[i]).__name__ == "Rescaling":
        if float(np.max(np.abs(layers[i].offset))) != 0.0 or np.ndim(layers[i].scale) != 0:
            return None
        scale = float(layers[i].scale)
        i += 1
    conv = layers[i]
    if type(conv).__name__ != "Conv2D":
        return None
    k = tuple(conv.kernel_size)
    if (conv.padding != "same" or tuple(conv.strides) != (1, 1) or tuple(conv.dilation_rate) != (1, 1)
            or conv.groups != 1 or conv.data_format != "channels_last" or k[0] != k[1] or k[0] % 2 == 0):
        return None
    found = _per_pixel_run(layers, i + 1)
    if found is None:
        return None
    before_pool, i = found
    pool, p, after_pool = None, 1, []
    if i < len(layers) and type(layers[i]).__name__ in _POOLS:
        layer = layers[i]
        size, strides = tuple(layer.pool_size), tuple(layer.strides)
        if size[0] == size[1] and strides == size and layer.padding == "valid":
            pool, p = layer, int(size[0])
            found = _per_pixel_run(layers, i + 1)
            if found is None:
                return None
            after_pool, i = found
    suffix = layers[i:]
    if not suffix:
        return None
    features = int(layers[i - 1].output.shape[-1])
    # Worth it only when computing a cell costs more than looking its features up.
    macs = p * p * (int(np.prod(conv.kernel.shape)) + _dense_macs(before_pool)) + _dense_macs(after_pool)
    if macs < LOOKUP_COST * features:
        return None
    return _LocalPlan(scale=scale, conv=conv, radius=(k[0] - 1) // 2, before_pool=before_pool,
                      pool=pool, pool_size=p, after_pool=after_pool, suffix=suffix, features=features)


_LOCAL_CACHE: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def _compiled_local(model, plan: _LocalPlan, input_shape: tuple[int, int, int]):
    """(features_fn, scores_fn): tf.functions traced once per model and input shape."""
    with _CACHE_LOCK:
        per_model = _LOCAL_CACHE.setdefault(model, {})
        fns = per_model.get(input_shape)
        if fns is not None:
            return fns
        import tensorflow as tf

        h, w, c = input_shape
        hp, wp = h // plan.pool_size, w // plan.pool_size
        side = plan.window

        @tf.function(input_signature=[tf.TensorSpec((None, side, side, c), tf.float32)])
        def features(windows):  # (E, side, side, c) raw pixels -> (E, F): one cell's features
            z = tf.nn.conv2d(windows * plan.scale, plan.conv.kernel, strides=1, padding="VALID")
            if plan.conv.use_bias:
                z = z + plan.conv.bias
            z = plan.conv.activation(z)  # (E, p, p, F1)
            for layer in plan.before_pool:
                z = layer(z, training=False)
            if plan.pool is not None:
                z = plan.pool(z)  # (E, 1, 1, F)
            for layer in plan.after_pool:
                z = layer(z, training=False)
            return tf.reshape(z, (-1, plan.features))

        @tf.function(input_signature=[
            tf.TensorSpec((None, None), tf.int32),  # rows (B, n + 1): 0/1 per superpixel, then a 0
            tf.TensorSpec((hp * wp, None), tf.int32),  # touched (cells, T): superpixels per window
            tf.TensorSpec((hp * wp,), tf.int32),  # offset (cells,): first table row of each cell
            tf.TensorSpec((None, plan.features), tf.float32),  # table (E, F)
        ])
        def scores(rows, touched, offset, table):
            bits = tf.gather(rows, touched, axis=1)  # (B, cells, T)
            weights = tf.bitwise.left_shift(1, tf.range(tf.shape(touched)[1]))  # (T,)
            code = tf.reduce_sum(bits * weights, axis=2)  # (B, cells): the state of each window
            z = tf.gather(table, offset[None, :] + code)  # (B, cells, F)
            z = tf.reshape(z, (-1, hp, wp, plan.features))
            for layer in plan.suffix:
                z = layer(z, training=False)
            return z

        per_model[input_shape] = fns = (features, scores)
    return fns


class _PlainScorer:
    """Perturbed images, scored in batches by the model's traced forward function."""

    fast = False

    def __init__(self, adapter: ModelAdapter, x: np.ndarray, segments: np.ndarray):
        self.adapter, self.x, self.segments = adapter, x, segments

    def __call__(self, rows: np.ndarray, batch_size: int) -> np.ndarray:
        out = []
        for start in range(0, len(rows), batch_size):
            imgs = _perturbed(self.x, self.segments, rows[start : start + batch_size])
            out.append(self.adapter.class_probabilities(imgs, batch_size=batch_size))
        return np.concatenate(out, axis=0)


class _LocalScorer:
    """The exact look-up described above; same outputs as _PlainScorer up to float rounding."""

    fast = True

    def __init__(self, adapter: ModelAdapter, plan: _LocalPlan, x: np.ndarray, segments: np.ndarray,
                 touched: np.ndarray, counts: np.ndarray, windows: np.ndarray):
        self.adapter = adapter
        c = adapter.channels
        n = int(segments.max()) + 1
        features, self.scores = _compiled_local(adapter.model, plan, adapter.input_shape)
        image_windows = _cell_windows(x, plan)  # (cells, side, side, c), zero outside the image
        side = plan.window
        # bit of each window position's superpixel in its cell's state code (-1: outside the image)
        match = windows[:, :, None] == touched[:, None, :]  # (cells, side*side, T)
        position_bit = np.where(match.any(axis=2), match.argmax(axis=2), -1)
        states = 1 << counts  # (cells,)
        self.offset = np.concatenate([[0], np.cumsum(states)[:-1]]).astype(np.int32)
        cell = np.repeat(np.arange(len(states)), states)  # (E,)
        code = np.arange(len(cell)) - np.repeat(self.offset, states)  # (E,)
        table = []
        chunk = max(1, 2**22 // (side * side * max(c, 1) * 64))
        for i in range(0, len(cell), chunk):
            bit = position_bit[cell[i : i + chunk]]  # (e, side*side)
            keep = np.where(bit < 0, 1, (code[i : i + chunk, None] >> np.maximum(bit, 0)) & 1)
            masked = image_windows[cell[i : i + chunk]] * keep.reshape(-1, side, side, 1)
            table.append(np.asarray(features(masked.astype(np.float32))))
        self.table = np.concatenate(table, axis=0)  # (E, F)
        self.touched = touched.astype(np.int32)  # padding entries point at column n, always 0
        self.n = n

    def __call__(self, rows: np.ndarray, batch_size: int) -> np.ndarray:
        out = []
        for start in range(0, len(rows), batch_size):
            part = np.asarray(rows[start : start + batch_size], dtype=np.int32)
            part = np.concatenate([part, np.zeros((len(part), 1), np.int32)], axis=1)
            raw = np.asarray(self.scores(part, self.touched, self.offset, self.table))
            out.append(self.adapter.to_class_columns(raw.astype(np.float64)))
        return np.concatenate(out, axis=0)


def _cell_windows(values: np.ndarray, plan: _LocalPlan, fill=0) -> np.ndarray:
    """(cells, side, side, ...) windows of `values` (h, w, ...) behind each cell of the prefix map."""
    r, p, side = plan.radius, plan.pool_size, plan.window
    h, w = values.shape[:2]
    pad = [(r, r), (r, r)] + [(0, 0)] * (values.ndim - 2)
    padded = np.pad(values, pad, constant_values=fill)
    view = np.lib.stride_tricks.sliding_window_view(padded, (side, side), axis=(0, 1))[::p, ::p]
    view = view[: h // p, : w // p]  # (hp, wp, ..., side, side)
    view = np.moveaxis(view, (-2, -1), (2, 3))  # (hp, wp, side, side, ...)
    return view.reshape(-1, side, side, *values.shape[2:])


def _touched_superpixels(segments: np.ndarray, plan: _LocalPlan):
    """Per cell: the superpixels in its window (padded with n), their count, and the window's labels."""
    n = int(segments.max()) + 1
    windows = _cell_windows(segments, plan, fill=n)
    windows = windows.reshape(len(windows), -1)  # (cells, side*side)
    ordered = np.sort(windows, axis=1)
    first = np.ones(ordered.shape, dtype=bool)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    first &= ordered != n
    counts = first.sum(axis=1)
    t = max(int(counts.max()), 1)
    touched = np.full((len(windows), t), n, dtype=np.int64)
    rank = np.cumsum(first, axis=1) - 1
    rows_idx, cols_idx = np.nonzero(first)
    touched[rows_idx, rank[rows_idx, cols_idx]] = ordered[rows_idx, cols_idx]
    return touched, counts, windows


def make_scorer(adapter: ModelAdapter, x: np.ndarray, segments: np.ndarray, fast: bool = True):
    """A function rows (B, n) of 0/1 per superpixel -> (B, 2) class scores of those perturbations."""
    plan = _local_plan(adapter.model) if fast else None
    if plan is None:
        return _PlainScorer(adapter, x, segments)
    touched, counts, windows = _touched_superpixels(segments, plan)
    if touched.shape[1] > MAX_TOUCHED:
        return _PlainScorer(adapter, x, segments)
    return _LocalScorer(adapter, plan, x, segments, touched, counts, windows)


# ----------------------------------------------------------------------------- images


def to_gray(image: np.ndarray) -> np.ndarray:
    """2-D uint8 as given; 3-D (h, w, 1|3|4) uint8 -> gray with ITU-R 601 luma (as Pillow's "L")."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ExplainError(
            f"The image must be uint8 pixels (0..255), got {image.dtype}; "
            "read files with xray_core.imaging.decode."
        )
    if image.ndim == 2:
        gray = image
    elif image.ndim == 3 and image.shape[2] == 1:
        gray = image[..., 0]
    elif image.ndim == 3 and image.shape[2] in (3, 4):
        rgb = image[..., :3].astype(np.float32)
        gray = np.clip(rgb @ np.array([0.299, 0.587, 0.114], np.float32) + 0.5, 0, 255).astype(np.uint8)
    else:
        raise ExplainError(
            f"The image must be 2-D gray or 3-D (height, width, 1/3/4 channels); got shape {image.shape}."
        )
    if min(gray.shape) < 4:
        raise ExplainError(f"The image is too small to explain ({gray.shape[1]}x{gray.shape[0]} px).")
    return np.ascontiguousarray(gray)


def display_shape(shape: tuple[int, int], size: int = DISPLAY_SIZE) -> tuple[int, int]:
    """(H, W) with the original's aspect ratio and `size` pixels on the long side."""
    h, w = shape
    scale = size / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def upsample_nearest(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a 2-D label/weight map: superpixel edges stay crisp."""
    h, w = labels.shape
    H, W = shape
    rows = np.minimum(((np.arange(H) + 0.5) * h / H).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(W) + 0.5) * w / W).astype(np.int64), w - 1)
    return labels[rows[:, None], cols[None, :]]


def _resize_float(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map (Grad-CAM heat) with Pillow's 32-bit float mode."""
    from PIL import Image

    H, W = shape
    return np.asarray(
        Image.fromarray(np.asarray(values, np.float32), mode="F").resize((W, H), Image.BILINEAR),
        dtype=np.float32,
    )


def _gray_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


def boundaries(labels: np.ndarray, thickness: int = 1) -> np.ndarray:
    """bool (H, W): pixels where the label changes to the right or below, thickened."""
    edge = np.zeros(labels.shape, dtype=bool)
    diff_x = labels[:, :-1] != labels[:, 1:]
    diff_y = labels[:-1, :] != labels[1:, :]
    edge[:, :-1] |= diff_x
    edge[:, 1:] |= diff_x
    edge[:-1, :] |= diff_y
    edge[1:, :] |= diff_y
    if thickness > 1:
        from scipy import ndimage

        edge = ndimage.binary_dilation(edge, iterations=thickness - 1)
    return edge


def _outline(seg_display: np.ndarray, selected, thickness: int) -> np.ndarray:
    """Outline of each selected superpixel (neighbouring selected ones keep their shared edge)."""
    selected = np.asarray(list(selected), dtype=seg_display.dtype)
    if selected.size == 0:
        return np.zeros(seg_display.shape, dtype=bool)
    lab = np.where(np.isin(seg_display, selected), seg_display, -1)
    return boundaries(lab, thickness)


def _colormap_lut(name: str) -> np.ndarray:
    """uint8 (256, 3) lookup table for a matplotlib colormap (matplotlib comes with lime)."""
    import matplotlib

    return (matplotlib.colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3] * 255 + 0.5).astype(np.uint8)


def _boundary_thickness(shape: tuple[int, int]) -> int:
    return max(1, round(max(shape) / 256))


# ----------------------------------------------------------------------------- segmentation


def segment(model_input: np.ndarray, method: str = "quickshift", params: dict | None = None,
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


# ----------------------------------------------------------------------------- LIME


@dataclasses.dataclass
class HeatmapLegend:
    """What a colour bar beside the heatmap panel needs."""

    vmin: float
    vmax: float
    cmap: str


@dataclasses.dataclass
class LimePanels:
    """The seed's four pictures, RGB uint8 (H, W, 3) at display size."""

    full: np.ndarray  # 1: image with outlines of the top supporting superpixels
    partial: np.ndarray  # 2: only those superpixels, the rest black
    pros_cons: np.ndarray  # 3: top 5 by |weight|, green supports / red opposes the label
    heatmap: np.ndarray  # 4: every superpixel filled with its weight (legend: LimeExplanation.legend)

    def as_dict(self) -> dict[str, np.ndarray]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class LimeExplanation:
    """One LIME explanation: the prediction, the superpixels, their weights and the panels."""

    label: int  # the explained class (0 NORMAL, 1 PNEUMONIA)
    predicted_label: int  # the model's label at its operating threshold
    probability: float  # pneumonia probability of the unperturbed image
    label_score: float  # the model's score for the explained label (the quantity LIME fits)
    segments: np.ndarray  # int32 (h, w) at model input size, labels 0..n-1
    weights: np.ndarray  # float64 (n,): weight of superpixel k for `label`
    intercept: float
    score: float  # weighted R^2 of the local linear fit
    local_prediction: float  # the linear fit's value at the unperturbed image
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
        }


def _check_label(label) -> int | None:
    if label is None:
        return None
    if isinstance(label, str):
        if label.upper() not in CLASSES:
            raise ExplainError(f"Unknown label {label!r}; use one of {CLASSES} or 0/1.")
        return CLASSES.index(label.upper())
    if label not in (0, 1) or isinstance(label, bool):
        raise ExplainError(f"label must be 0 (NORMAL), 1 (PNEUMONIA) or None, got {label!r}.")
    return int(label)


def _sample_masks(n_superpixels: int, num_samples: int, seed: int) -> np.ndarray:
    """lime's samples: random on/off per superpixel, row 0 all on (same RNG stream as lime)."""
    rs = np.random.RandomState(seed)
    data = rs.randint(0, 2, num_samples * n_superpixels).reshape((num_samples, n_superpixels))
    data[0, :] = 1
    return data


def _perturbed(model_input: np.ndarray, segments: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """float32 (B, h, w, c): the image with each row's switched-off superpixels set to HIDE_COLOR."""
    keep = rows[:, segments].astype(bool)  # (B, h, w)
    out = np.where(keep[..., None], model_input[None], np.float32(HIDE_COLOR))
    return out.astype(np.float32, copy=False)


def _fit_local_model(data: np.ndarray, targets: np.ndarray, kernel_width: float = KERNEL_WIDTH):
    """lime_base.explain_instance_with_data with every feature kept: weighted Ridge(alpha=1)."""
    from sklearn.linear_model import Ridge
    from sklearn.metrics import pairwise_distances

    distances = pairwise_distances(data, data[0].reshape(1, -1), metric="cosine").ravel()
    sample_weight = np.sqrt(np.exp(-(distances**2) / kernel_width**2))
    model = Ridge(alpha=1.0, fit_intercept=True)
    model.fit(data, targets, sample_weight=sample_weight)
    score = model.score(data, targets, sample_weight=sample_weight)
    local_pred = model.predict(data[0].reshape(1, -1))[0]
    return model.coef_.astype(np.float64), float(model.intercept_), float(score), float(local_pred)


def _auto_batch_size(adapter: ModelAdapter, scorer=None, budget_bytes: float = 1.0e9) -> int:
    """Samples per model call: as many as fit an activation budget (model3's maps are big)."""
    if isinstance(scorer, _LocalScorer):
        cells = len(scorer.offset)
        per_sample = 4 * cells * (3 * scorer.table.shape[1] + 2 * scorer.touched.shape[1] + 2)
        return int(np.clip(budget_bytes // max(per_sample, 1), 16, 1024))
    # Whole images: past ~100 per call, CPU caches suffer more than call overhead shrinks.
    floats = 0
    for layer in getattr(adapter.model, "layers", []):
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):
            continue
        floats += int(np.prod([d for d in shape[1:] if d is not None]))
    per_sample = max(4 * floats, 1)
    return int(np.clip(budget_bytes / 4 // per_sample, 16, 128))


def explain_lime(run_or_model, image: np.ndarray, label=None, num_samples: int = 1000,
                 segmentation: str = "quickshift", segmentation_params: dict | None = None,
                 seed: int = 0, progress: Callable[[int, int], None] | None = None, *,
                 batch_size: int | None = None, panels: bool = True,
                 display_size: int = DISPLAY_SIZE, fast: bool = True) -> LimeExplanation:
    """Explain one image with LIME; returns weights per superpixel and the four panels.

    Parameters
    ----------
    run_or_model : runs.Run, ModelAdapter or keras.Model (input settings read from its shapes)
    image : uint8 (H, W) gray, or (H, W, 3|4) which is converted to gray; any size. It is
        prepared exactly as the run was trained (resized to the model input, channels repeated).
    label : 0/1/"NORMAL"/"PNEUMONIA", or None for the label predicted at the operating threshold.
    num_samples : perturbed images scored by the model (row 0 is the unperturbed image).
    segmentation, segmentation_params : "quickshift" (the seed's kernel_size=4, max_dist=200,
        ratio=0.2), "slic" or "felzenszwalb"; params override DEFAULT_SEGMENTATION_PARAMS.
    seed : seeds the sampling (lime's random_state) and quickshift's tie-breaking.
    progress : called as progress(samples_scored, num_samples) after each model batch.
    batch_size : samples per model call; None picks the largest that fits about 1 GB of activations.
    panels : False skips drawing (stability runs only need weights).
    fast : use the exact local-prefix shortcut where the architecture allows it (see above);
        False always scores whole perturbed images (the reference path).
    """
    t_start = time.perf_counter()
    adapter = as_adapter(run_or_model)
    label = _check_label(label)
    num_samples = int(num_samples)
    if num_samples < 2:
        raise ExplainError(f"num_samples must be at least 2 (1,000 is a good start), got {num_samples}.")
    gray = to_gray(image)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    x = adapter.prepare(gray)
    settings = dict(DEFAULT_SEGMENTATION_PARAMS.get(segmentation, {}))
    settings.update(segmentation_params or {})
    segments = segment(x, segmentation, segmentation_params, seed)
    n = int(segments.max()) + 1
    timings["segmentation"] = time.perf_counter() - t

    t = time.perf_counter()
    data = _sample_masks(n, num_samples, seed)
    scorer = make_scorer(adapter, x, segments, fast=fast)
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
        label = predicted

    t = time.perf_counter()
    weights, intercept, r2, local_pred = _fit_local_model(data, scores[:, label])
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
        legend=legend, panels=drawn,
    )


def lime_panels(gray: np.ndarray, segments: np.ndarray, weights: np.ndarray, top_supporting,
                top_abs, legend: HeatmapLegend, display_size: int = DISPLAY_SIZE) -> LimePanels:
    """Draw the four panels at display size over the original image (its own aspect ratio).

    Superpixels (computed at model input size) are scaled up with nearest neighbour, and
    outlines are drawn at display resolution, so edges stay crisp.
    """
    from xray_core import imaging

    shape = display_shape(gray.shape, display_size)
    base = _gray_rgb(imaging.resize(gray, shape))  # (H, W, 3) uint8
    seg = upsample_nearest(segments, shape)  # (H, W) int32
    thick = _boundary_thickness(shape)
    yellow = np.array(BOUNDARY_COLOR, np.uint8)

    support_edge = _outline(seg, top_supporting, thick)
    full = base.copy()
    full[support_edge] = yellow

    partial = np.zeros_like(base)
    inside = np.isin(seg, np.asarray(top_supporting, dtype=seg.dtype))
    partial[inside] = base[inside]
    partial[support_edge] = yellow

    pros_cons = base.astype(np.float32)
    for k in top_abs:
        if weights[k] == 0:
            continue
        colour = np.array(SUPPORT_COLOR if weights[k] > 0 else OPPOSE_COLOR, np.float32)
        region = seg == k
        pros_cons[region] = (1 - PROS_CONS_ALPHA) * pros_cons[region] + PROS_CONS_ALPHA * colour
    pros_cons = np.clip(pros_cons + 0.5, 0, 255).astype(np.uint8)
    pros_cons[_outline(seg, top_abs, thick)] = yellow

    lut = _colormap_lut(legend.cmap)
    if legend.vmax > 0:
        unit = (weights / legend.vmax + 1.0) / 2.0  # -vmax -> 0, 0 -> 0.5, +vmax -> 1
    else:
        unit = np.full(weights.shape, 0.5)
    idx = np.clip(np.round(unit * 255), 0, 255).astype(np.int64)
    heat = lut[idx][seg]
    edges = boundaries(seg, 1)
    heat[edges] = (0.6 * heat[edges]).astype(np.uint8)  # thin dark edges between superpixels

    return LimePanels(full=full, partial=partial, pros_cons=pros_cons, heatmap=heat)


# ----------------------------------------------------------------------------- Grad-CAM


@dataclasses.dataclass
class GradCam:
    """Grad-CAM for one image: the class-discriminative heat of the last feature map."""

    heatmap: np.ndarray  # float32 (hc, wc) in 0..1, the last conv layer's spatial size
    label: int
    predicted_label: int
    probability: float  # pneumonia probability
    layer: str  # the layer whose feature map was used
    seconds: float
    model_input: np.ndarray  # float32 (h, w, c)

    @property
    def label_name(self) -> str:
        return CLASSES[self.label]

    def heat_at(self, shape: tuple[int, int]) -> np.ndarray:
        """float32 heat resized (bilinear) to shape, e.g. the model input (h, w)."""
        return _resize_float(self.heatmap, shape)


def _last_conv_layer_name(model) -> str:
    from xray_core import architectures

    return architectures.last_conv_layer_name(model)


def _compiled_gradcam(adapter: ModelAdapter, layer_name: str):
    """tf.function (x (1,h,w,c), label int32) -> (heat (hc,wc), class scores (1, units))."""
    model = adapter.model
    key = (adapter.input_shape, layer_name, adapter.output_units)
    with _CACHE_LOCK:
        per_model = _GRADCAM_CACHE.setdefault(model, {})
        fn = per_model.get(key)
        if fn is None:
            import keras
            import tensorflow as tf

            feature_model = keras.Model(
                model.inputs, [model.get_layer(layer_name).output, model.outputs[0]],
                name=f"{model.name}_gradcam",
            )
            one_unit = adapter.output_units == 1

            @tf.function(input_signature=[
                tf.TensorSpec((1, *adapter.input_shape), tf.float32),
                tf.TensorSpec((), tf.int32),
            ])
            def gradcam(x, label):
                with tf.GradientTape() as tape:
                    features, out = feature_model(x, training=False)  # (1,hc,wc,k), (1,units)
                    if one_unit:
                        p = out[:, 0]
                        target = tf.where(label == 1, p, 1.0 - p)
                    else:
                        target = tf.gather(out, label, axis=1)
                grads = tape.gradient(target, features)  # (1, hc, wc, k)
                channel_weights = tf.reduce_mean(grads, axis=(0, 1, 2))  # (k,)
                heat = tf.nn.relu(tf.tensordot(features[0], channel_weights, axes=1))  # (hc, wc)
                peak = tf.reduce_max(heat)
                heat = tf.where(peak > 0, heat / tf.maximum(peak, 1e-12), heat)
                return heat, out

            per_model[key] = fn = gradcam
    return fn


def grad_cam(run_or_model, image: np.ndarray, label=None, *, layer: str | None = None) -> GradCam:
    """Grad-CAM heat for `label` (predicted one when None) from the last convolutional layer.

    `architectures.last_conv_layer_name` picks the layer (a per-pixel Dense on a 4-D map counts
    as a 1x1 conv, so model3 uses its 25x25 map). Draw it with `make_overlay`.
    """
    import tensorflow as tf

    t0 = time.perf_counter()
    adapter = as_adapter(run_or_model)
    label = _check_label(label)
    gray = to_gray(image)
    x = adapter.prepare(gray)  # (h, w, c)
    layer_name = layer or _last_conv_layer_name(adapter.model)
    probs = adapter.class_probabilities(x[None])[0]
    predicted = adapter.predicted_label(probs)
    if label is None:
        label = predicted
    fn = _compiled_gradcam(adapter, layer_name)
    heat, _ = fn(tf.constant(x[None]), tf.constant(label, tf.int32))
    heat = np.asarray(heat, dtype=np.float32)
    if heat.ndim != 2:
        raise ExplainError(f"Layer {layer_name!r} does not output a spatial map; pick a conv layer.")
    return GradCam(heatmap=heat, label=int(label), predicted_label=predicted,
                   probability=float(probs[1]), layer=layer_name,
                   seconds=time.perf_counter() - t0, model_input=x)


def make_overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = GRADCAM_ALPHA,
                 display_size: int = DISPLAY_SIZE, cmap: str = GRADCAM_CMAP) -> np.ndarray:
    """RGB uint8 (H, W, 3): the image at display size with the 0..1 heat (any shape) over it."""
    gray = to_gray(image)
    from xray_core import imaging

    shape = display_shape(gray.shape, display_size)
    base = _gray_rgb(imaging.resize(gray, shape)).astype(np.float32)
    heat = np.clip(_resize_float(np.asarray(heatmap, np.float32), shape), 0.0, 1.0)
    colour = _colormap_lut(cmap)[np.round(heat * 255).astype(np.int64)].astype(np.float32)
    return np.clip((1 - alpha) * base + alpha * colour + 0.5, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- trust figures


@dataclasses.dataclass
class DeletionCurve:
    """The label's probability as superpixels are hidden, most important first.

    A faithful order makes it fall fast: a lower area means a more faithful explanation.
    """

    fractions: list  # share of superpixels hidden at each step, 0 .. 1
    probabilities: list  # the model's score for the label at each step
    area: float  # trapezoid area under probabilities over fractions (0 .. 1)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def deletion_curve(run_or_model, image: np.ndarray, segments: np.ndarray, order, label,
                   steps: int | None = None) -> DeletionCurve:
    """Hide superpixels (set to HIDE_COLOR) in `order`, most important first, and score each step.

    `segments` is (h, w) at model input size (e.g. LimeExplanation.segments); `steps` points
    after the start (None: one per superpixel).
    """
    adapter = as_adapter(run_or_model)
    label = _check_label(label)
    if label is None:
        raise ExplainError("deletion_curve needs the label to follow (0 NORMAL or 1 PNEUMONIA).")
    x = adapter.prepare(to_gray(image))
    segments = np.asarray(segments)
    n = int(segments.max()) + 1
    order = [int(k) for k in order]
    if sorted(order) != list(range(n)):
        raise ExplainError(f"order must list every superpixel 0..{n - 1} once, got {len(order)} entries.")
    steps = n if steps is None else int(np.clip(steps, 1, n))
    counts = np.unique(np.round(np.linspace(0, n, steps + 1)).astype(int))
    rows = np.ones((len(counts), n), dtype=np.int64)
    for i, c in enumerate(counts):
        rows[i, order[:c]] = 0
    scorer = make_scorer(adapter, x, segments)
    probs = scorer(rows, _auto_batch_size(adapter, scorer))[:, label]
    fractions = counts / n
    area = float(np.sum((probs[1:] + probs[:-1]) / 2 * np.diff(fractions)))
    return DeletionCurve(fractions=[float(f) for f in fractions],
                         probabilities=[float(p) for p in probs], area=area)


def lime_order(weights: np.ndarray) -> list[int]:
    """Superpixels from most supporting to most opposing the label."""
    return [int(k) for k in np.argsort(-np.asarray(weights), kind="stable")]


def gradcam_order(heatmap: np.ndarray, segments: np.ndarray) -> list[int]:
    """Superpixels by mean Grad-CAM heat (heat resized to the segments' size), hottest first."""
    heat = _resize_float(heatmap, segments.shape)
    n = int(segments.max()) + 1
    mean = np.bincount(segments.ravel(), weights=heat.ravel(), minlength=n) / np.maximum(
        np.bincount(segments.ravel(), minlength=n), 1)
    return [int(k) for k in np.argsort(-mean, kind="stable")]


def random_order(n: int, seed: int = 0) -> list[int]:
    return [int(k) for k in np.random.default_rng(seed).permutation(n)]


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """|a & b| / |a | b| of two boolean masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


@dataclasses.dataclass
class Stability:
    """How much the top superpixels move when only the seed changes."""

    seeds: list
    jaccard_mean: float  # mean over seed pairs of the pixel Jaccard of the top-k regions
    jaccard_min: float
    top_k: int
    n_superpixels: list  # per seed (quickshift's tie-breaking is seeded too)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def stability(run_or_model, image: np.ndarray, label=None, seeds: int | list = 5, *,
              num_samples: int = 1000, segmentation: str = "quickshift",
              segmentation_params: dict | None = None, top_k: int = TOP_PROS_CONS,
              first: LimeExplanation | None = None) -> Stability:
    """Mean pairwise Jaccard overlap of the top-k superpixels (by |weight|) over several seeds.

    Overlap is measured on pixels, because superpixels of different seeds need not match
    one-to-one. `first` reuses an explanation already made with one of the seeds.
    """
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if len(seed_list) < 2:
        raise ExplainError("stability needs at least two seeds.")
    masks, counts = [], []
    for s in seed_list:
        if first is not None and first.seed == s and first.num_samples == num_samples \
                and first.segmentation == segmentation:
            exp = first
        else:
            exp = explain_lime(run_or_model, image, label=label, num_samples=num_samples,
                               segmentation=segmentation, segmentation_params=segmentation_params,
                               seed=s, panels=False)
        label = exp.label  # every seed explains the same label
        top = sorted(range(exp.n_superpixels), key=lambda k: (-abs(exp.weights[k]), k))[:top_k]
        masks.append(np.isin(exp.segments, top))
        counts.append(exp.n_superpixels)
    pairs = [jaccard(a, b) for a, b in itertools.combinations(masks, 2)]
    return Stability(seeds=seed_list, jaccard_mean=float(np.mean(pairs)),
                     jaccard_min=float(np.min(pairs)), top_k=top_k, n_superpixels=counts)


def trust_figures(run_or_model, image: np.ndarray, explanation: LimeExplanation | None = None,
                  gradcam: GradCam | None = None, *, seeds: int = 5, steps: int | None = None,
                  random_seed: int = 0, num_samples: int | None = None) -> dict:
    """Deletion areas (LIME, Grad-CAM, random) and LIME stability, as plain numbers.

    Reuses `explanation` / `gradcam` when given (their label is followed throughout).
    """
    t0 = time.perf_counter()
    adapter = as_adapter(run_or_model)
    if explanation is None:
        explanation = explain_lime(adapter, image, num_samples=num_samples or 1000, panels=False)
    label = explanation.label
    if gradcam is None or gradcam.label != label:
        gradcam = grad_cam(adapter, image, label=label)
    segments = explanation.segments
    n = explanation.n_superpixels
    orders = {
        "lime": lime_order(explanation.weights),
        "gradcam": gradcam_order(gradcam.heatmap, segments),
        "random": random_order(n, random_seed),
    }
    deletion = {name: deletion_curve(adapter, image, segments, order, label, steps).to_dict()
                for name, order in orders.items()}
    stab = stability(adapter, image, label=label, seeds=seeds,
                     num_samples=num_samples or explanation.num_samples,
                     segmentation=explanation.segmentation,
                     segmentation_params=explanation.segmentation_params, first=explanation)
    return {
        "label": label,
        "label_name": CLASSES[label],
        "n_superpixels": n,
        "deletion_area": {name: curve["area"] for name, curve in deletion.items()},
        "deletion_curves": deletion,
        "random_seed": random_seed,
        "stability": stab.to_dict(),
        "seconds": time.perf_counter() - t0,
    }


# ----------------------------------------------------------------------------- CLI


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode a uint8 gray or RGB array as PNG, in memory (the CLI's files, the Diagnose zip)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(rgb, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


PANEL_FILES = {
    "full": "lime_full.png",
    "partial": "lime_partial.png",
    "pros_cons": "lime_pros_cons.png",
    "heatmap": "lime_heatmap.png",
}
GRADCAM_FILE = "gradcam.png"
JSON_FILE = "explanation.json"


def explain_to_folder(run, image_path: str | Path, out_dir: str | Path, *, num_samples: int = 1000,
                      segmentation: str = "quickshift", seed: int = 0, label=None,
                      stability_seeds: int = 5) -> dict:
    """Write the four LIME panels, the Grad-CAM overlay and explanation.json into out_dir."""
    from xray_core import imaging, runs

    gray = imaging.decode(Path(image_path))
    out = Path(out_dir)
    t = time.perf_counter()
    adapter = as_adapter(run)  # loads the model, so that LIME's time below is LIME's
    load_seconds = time.perf_counter() - t
    exp = explain_lime(adapter, gray, label=label, num_samples=num_samples,
                       segmentation=segmentation, seed=seed)
    cam = grad_cam(adapter, gray, label=exp.label)
    overlay = make_overlay(gray, cam.heatmap)
    trust = trust_figures(adapter, gray, exp, cam, seeds=stability_seeds, random_seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    for key, name in PANEL_FILES.items():
        runs.atomic_write_bytes(out / name, png_bytes(getattr(exp.panels, key)))
    runs.atomic_write_bytes(out / GRADCAM_FILE, png_bytes(overlay))
    report = {
        "run_id": getattr(run, "run_id", None),
        "image": str(image_path),
        "image_shape": list(gray.shape),
        "prediction": {
            "probability_pneumonia": exp.probability,
            "threshold": adapter.threshold,
            "predicted_label": exp.predicted_label,
            "predicted_label_name": CLASSES[exp.predicted_label],
        },
        "lime": exp.to_dict(),
        "model_load_seconds": load_seconds,
        "gradcam": {"layer": cam.layer, "label": cam.label, "heatmap_shape": list(cam.heatmap.shape),
                    "seconds": cam.seconds},
        "trust": trust,
        "files": [*PANEL_FILES.values(), GRADCAM_FILE],
    }
    runs.atomic_write_json(out / JSON_FILE, report)
    return report


def _cmd_explain(args: argparse.Namespace) -> int:
    from xray_core import runs

    run = runs.load_run(args.run, root=args.runs_dir)
    report = explain_to_folder(run, args.image, args.out, num_samples=args.samples,
                               segmentation=args.segmentation, seed=args.seed, label=args.label,
                               stability_seeds=args.stability_seeds)
    lime = report["lime"]
    trust = report["trust"]
    print(f"{run.run_id}: P(pneumonia) = {report['prediction']['probability_pneumonia']:.3f} "
          f"-> {report['prediction']['predicted_label_name']}; explained {lime['label_name']} "
          f"with {lime['n_superpixels']} superpixels, R^2 {lime['score_r2']:.2f}, "
          f"{lime['seconds']:.2f} s")
    areas = trust["deletion_area"]
    print(f"deletion area (lower is more faithful): LIME {areas['lime']:.3f}, "
          f"Grad-CAM {areas['gradcam']:.3f}, random {areas['random']:.3f}; "
          f"top-5 stability (Jaccard over {len(trust['stability']['seeds'])} seeds) "
          f"{trust['stability']['jaccard_mean']:.2f}")
    print(f"wrote {', '.join(report['files'])} and {JSON_FILE} to {args.out}")
    return 0
