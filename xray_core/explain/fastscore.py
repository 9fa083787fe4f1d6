"""Scoring LIME's perturbed images fast, and exactly.

LIME's perturbed images are the original with whole superpixels set to 0. For the seed's four
architectures (any chain that starts [Rescaling] -> one stride-1 "same" conv -> per-pixel
layers -> [one p x p pooling -> per-pixel layers]), each cell of the feature map after those
layers depends only on a small window of the image ((p + k - 1)^2 pixels), and that window can
only take 2^t states, t being the number of superpixels it touches (1 inside a superpixel, 2-4
near edges). So the features of every cell in every state are computed once per explanation
(a table of a few thousand rows), and each sample is then a table look-up followed by the rest
of the model. The numbers are the model's own (equal up to float rounding), and model3, whose
256-filter conv and per-pixel Dense at full resolution are nearly all of its cost, gets many
times faster. Other models (the default pneumonet, ensembles) take the plain path: perturbed
images scored in large batches through the adapter's one forward function.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any

import numpy as np

from xray_core.explain.adapter import HIDE_COLOR, ModelAdapter, _CACHE_LOCK


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

    def __init__(self, adapter: ModelAdapter, x: np.ndarray, segments: np.ndarray, fill: np.ndarray | None = None):
        self.adapter, self.x, self.segments, self.fill = adapter, x, segments, fill

    def __call__(self, rows: np.ndarray, batch_size: int) -> np.ndarray:
        out = []
        for start in range(0, len(rows), batch_size):
            imgs = _perturbed(self.x, self.segments, rows[start : start + batch_size], self.fill)
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


def make_scorer(adapter: ModelAdapter, x: np.ndarray, segments: np.ndarray, *, fast: bool = True,
                fill: np.ndarray | None = None):
    """A function rows (B, n) of 0/1 per superpixel -> (B, 2) class scores of those perturbations.

    `fill` (h, w, c) is what a hidden superpixel shows (None: HIDE_COLOR, black); the exact
    look-up needs black, so any other fill takes the plain path.
    """
    plan = _local_plan(adapter.model) if fast and adapter.fast_ok and fill is None else None
    if plan is None:
        return _PlainScorer(adapter, x, segments, fill)
    touched, counts, windows = _touched_superpixels(segments, plan)
    if touched.shape[1] > MAX_TOUCHED:
        return _PlainScorer(adapter, x, segments)
    return _LocalScorer(adapter, plan, x, segments, touched, counts, windows)


def _perturbed(model_input: np.ndarray, segments: np.ndarray, rows: np.ndarray,
               fill: np.ndarray | None = None) -> np.ndarray:
    """float32 (B, h, w, c): the image with each row's switched-off superpixels set to HIDE_COLOR
    (or to `fill`, an (h, w, c) image, e.g. each superpixel's mean)."""
    keep = rows[:, segments].astype(bool)  # (B, h, w)
    hidden = np.float32(HIDE_COLOR) if fill is None else np.asarray(fill, np.float32)[None]
    out = np.where(keep[..., None], model_input[None], hidden)
    return out.astype(np.float32, copy=False)


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
