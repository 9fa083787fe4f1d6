"""The seed study's four CNNs, rebuilt layer for layer, plus a registry the UI and CLI read.

Each builder is a plain function of keyword settings that checks them first and names every
layer, so Grad-CAM and the UI never guess. The layer lists read like the tables in
shared/seed/NOTES.md section 2 (including the seed's oddities: Dense layers on 4-D feature
maps, which act as 1x1 convolutions, and a 2-unit sigmoid head trained with binary
cross-entropy on one-hot targets). Every model starts with ``Rescaling(1/255)`` so callers pass
raw 0..255 pixels.

Keras is imported at module top (the contract allows it here); importing this module is what
registers the pneumonia-column metrics, so import it before loading a saved ``model.keras``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable

import keras
import numpy as np
from keras import layers

from xray_core.arch_catalog import CATALOG, ArchInfo

# XLA compilation of the train step. "auto" lets Keras compile with XLA where an accelerator is
# present (GPU: no code change needed) and run plain graphs on CPU-only machines, where XLA was
# slower (benchmarks/reports/epochs-ablation.md).
DEFAULT_JIT_COMPILE: bool | str = "auto"

PNEUMONIA_THRESHOLD = 0.5


@dataclass(frozen=True)
class ArchSpec(ArchInfo):
    """An architecture of the catalog (`arch_catalog.ArchInfo`: name, settings) with its builder."""

    builder: Callable[..., "keras.Model"] | None = field(default=None, repr=False)


# --------------------------------------------------------------------------------------------
# Metrics on the pneumonia output
# --------------------------------------------------------------------------------------------


def pneumonia_column(output_units: int) -> int:
    """Column of the model output (and of the targets) that holds the pneumonia score; the rule
    itself lives with the model object (`xray_core.model.pneumonia_column`)."""
    from xray_core.model import pneumonia_column as rule

    return rule(output_units)


def _check_output_units(output_units) -> None:
    if output_units not in (1, 2):
        raise ValueError(
            f"output_units must be 1 (single sigmoid) or 2 (the seed's two-column head); "
            f"got {output_units!r}."
        )


def _column(tensor, column: int):
    """(N,), (N, 1) or (N, 2) -> (N,) float32 holding the requested column."""
    tensor = keras.ops.convert_to_tensor(tensor)
    tensor = keras.ops.cast(tensor, "float32")
    if len(tensor.shape) == 1:
        return tensor
    return tensor[:, column]


@keras.saving.register_keras_serializable(package="xray_core")
class PneumoniaConfusionMetric(keras.metrics.Metric):
    """Accuracy, sensitivity, specificity or precision of the pneumonia column at a threshold.

    A score at or above the threshold counts as PNEUMONIA, as in xray_core.metrics.

    Keras' own Recall/Precision on two one-hot columns micro-average over both columns (the
    seed's "recall", roughly accuracy); this metric looks only at the pneumonia column.
    """

    KINDS = ("accuracy", "sensitivity", "specificity", "precision")

    def __init__(self, kind="sensitivity", column=1, threshold=PNEUMONIA_THRESHOLD, name=None,
                 dtype=None):
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {self.KINDS}; got {kind!r}.")
        super().__init__(name=name or kind, dtype=dtype)
        self.kind = kind
        self.column = int(column)
        self.threshold = float(threshold)
        self.tp = self.add_variable((), initializer="zeros", name="tp")
        self.fp = self.add_variable((), initializer="zeros", name="fp")
        self.tn = self.add_variable((), initializer="zeros", name="tn")
        self.fn = self.add_variable((), initializer="zeros", name="fn")

    def update_state(self, y_true, y_pred, sample_weight=None):
        ops = keras.ops
        truth = ops.greater(_column(y_true, self.column), 0.5)
        pred = ops.greater_equal(_column(y_pred, self.column), self.threshold)
        weight = ops.ones_like(_column(y_pred, self.column))
        if sample_weight is not None:
            weight = weight * ops.reshape(ops.cast(sample_weight, "float32"), (-1,))

        def count(mask):
            return ops.sum(ops.where(mask, weight, ops.zeros_like(weight)))

        self.tp.assign_add(ops.cast(count(ops.logical_and(truth, pred)), self.dtype))
        self.fp.assign_add(ops.cast(count(ops.logical_and(ops.logical_not(truth), pred)), self.dtype))
        self.tn.assign_add(ops.cast(
            count(ops.logical_and(ops.logical_not(truth), ops.logical_not(pred))), self.dtype))
        self.fn.assign_add(ops.cast(count(ops.logical_and(truth, ops.logical_not(pred))), self.dtype))

    def result(self):
        ops = keras.ops
        tp, fp, tn, fn = self.tp, self.fp, self.tn, self.fn
        if self.kind == "accuracy":
            num, den = tp + tn, tp + tn + fp + fn
        elif self.kind == "sensitivity":
            num, den = tp, tp + fn
        elif self.kind == "specificity":
            num, den = tn, tn + fp
        else:
            num, den = tp, tp + fp
        # 0 when the denominator is empty (e.g. no positive predictions yet), like Keras' Recall.
        return ops.divide_no_nan(num, den)

    def reset_state(self):
        for v in (self.tp, self.fp, self.tn, self.fn):
            v.assign(0.0)

    def get_config(self):
        return {"kind": self.kind, "column": self.column, "threshold": self.threshold,
                "name": self.name, "dtype": self.dtype}


@keras.saving.register_keras_serializable(package="xray_core")
class PneumoniaAUC(keras.metrics.AUC):
    """ROC AUC of the pneumonia column only."""

    def __init__(self, column=1, name="auc", **kwargs):
        super().__init__(name=name, **kwargs)
        self.column = int(column)

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(_column(y_true, self.column), _column(y_pred, self.column),
                                    sample_weight=sample_weight)

    def get_config(self):
        config = super().get_config()
        config["column"] = self.column
        return config


def compile_metrics(output_units: int, threshold: float = PNEUMONIA_THRESHOLD) -> list:
    """Metrics named accuracy, sensitivity, specificity, precision, auc on the pneumonia score.

    So `history` (and history.csv) carries pneumonia-specific figures, with val_ twins.
    """
    column = pneumonia_column(output_units)
    return [PneumoniaConfusionMetric(kind, column=column, threshold=threshold, name=kind)
            for kind in PneumoniaConfusionMetric.KINDS] + [PneumoniaAUC(column=column, name="auc")]


def encode_targets(labels, output_units: int) -> np.ndarray:
    """Labels 0/1 (N,) -> float32 targets: one-hot (N, 2) for the seed's heads, (N, 1) otherwise."""
    _check_output_units(output_units)
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be a 1-D array of 0 (NORMAL) and 1 (PNEUMONIA).")
    labels = labels.astype("float32")
    if output_units == 2:
        return np.stack([1.0 - labels, labels], axis=1).astype("float32")
    return labels[:, None]


# --------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------


def check_input_shape(input_shape, min_size: int) -> tuple[int, int, int]:
    try:
        h, w, c = (int(v) for v in input_shape)
        ok = tuple(input_shape) == (h, w, c)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            f"input_shape must be (height, width, channels) with whole numbers; got {input_shape!r}."
        )
    if c not in (1, 3):
        raise ValueError(
            f"channels must be 1 (gray) or 3 (the original study's duplicated gray); got {c} in "
            f"input_shape {input_shape!r}."
        )
    if h < min_size or w < min_size:
        raise ValueError(
            f"this architecture needs images of at least {min_size}x{min_size} pixels; got "
            f"input_shape {input_shape!r}. Use a larger image size."
        )
    return h, w, c


def _check_learning_rate(learning_rate) -> float:
    try:
        lr = float(learning_rate)
    except (TypeError, ValueError):
        lr = float("nan")
    if not math.isfinite(lr) or lr <= 0 or isinstance(learning_rate, bool):
        raise ValueError(f"learning_rate must be a positive number; got {learning_rate!r}.")
    return lr


def _assemble(name: str, input_shape, stack: list) -> keras.Model:
    """Chain named layers after a named Input and Rescaling(1/255) into a functional model."""
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    for layer in stack:
        x = layer(x)
    return keras.Model(inputs, x, name=name)


def build_baseline(*, input_shape=(100, 100, 1)) -> keras.Model:
    """Seed "base_line": one 5x5 conv, 2x2 pool, Dense 16, two sigmoid outputs."""
    check_input_shape(input_shape, ARCHITECTURES["baseline"].min_size)
    return _assemble("baseline", input_shape, [
        layers.Conv2D(32, 5, padding="same", activation="relu", name="conv1"),
        layers.MaxPooling2D(2, name="pool1"),
        layers.Flatten(name="flatten"),
        layers.Dense(16, activation="relu", name="dense1"),
        layers.Dense(2, activation="sigmoid", name="output"),
    ])


def build_model2(*, input_shape=(100, 100, 1)) -> keras.Model:
    """Seed "model 2": a wider 5x5 conv (128), 4x4 pool, Dense 32 -> 16, two sigmoid outputs."""
    check_input_shape(input_shape, ARCHITECTURES["model2"].min_size)
    return _assemble("model2", input_shape, [
        layers.Conv2D(128, 5, padding="same", activation="relu", name="conv1"),
        layers.MaxPooling2D(4, name="pool1"),
        layers.Flatten(name="flatten"),
        layers.Dense(32, activation="relu", name="dense1"),
        layers.Dense(16, activation="relu", name="dense2"),
        layers.Dense(2, activation="sigmoid", name="output"),
    ])


def build_model3(*, input_shape=(100, 100, 1)) -> keras.Model:
    """Seed "model 3" (model_3.yaml): conv 256, per-pixel Dense 128/64, dropout, sigmoid Dense 16."""
    check_input_shape(input_shape, ARCHITECTURES["model3"].min_size)
    return _assemble("model3", input_shape, [
        layers.Conv2D(256, 5, padding="same", activation="relu", name="conv1"),
        layers.Dense(128, activation="relu", name="pixel_dense1"),
        layers.MaxPooling2D(4, name="pool1"),
        layers.Dropout(0.2, name="dropout1"),
        layers.Dense(64, activation="relu", name="pixel_dense2"),
        layers.Flatten(name="flatten"),
        layers.Dense(32, activation="relu", name="dense1"),
        layers.Dense(16, activation="relu", name="dense2"),
        layers.Dense(16, activation="sigmoid", name="dense3"),
        layers.Dense(2, activation="sigmoid", name="output"),
    ])


def build_model4(*, input_shape=(100, 100, 1)) -> keras.Model:
    """Seed "model 4" (model_4.yaml): three convs with per-pixel Dense layers between them."""
    check_input_shape(input_shape, ARCHITECTURES["model4"].min_size)
    return _assemble("model4", input_shape, [
        layers.Conv2D(256, 5, padding="same", activation="relu", name="conv1"),
        layers.Dense(128, activation="tanh", name="pixel_dense1"),
        layers.MaxPooling2D(2, name="pool1"),
        layers.Conv2D(128, 4, padding="valid", activation="relu", name="conv2"),
        layers.MaxPooling2D(4, name="pool2"),
        layers.Dropout(0.2, name="dropout1"),
        layers.Dense(64, activation="relu", name="pixel_dense2"),
        layers.Dense(32, activation="relu", name="pixel_dense3"),
        layers.Dropout(0.2, name="dropout2"),
        layers.Conv2D(64, 5, padding="same", activation="sigmoid", name="conv3"),
        layers.MaxPooling2D(4, name="pool3"),
        layers.Flatten(name="flatten"),
        layers.Dense(32, activation="relu", name="dense1"),
        layers.Dense(16, activation="tanh", name="dense2"),
        layers.Dense(2, activation="sigmoid", name="output"),
    ])


def build_pneumonet(*, input_shape=(128, 128, 1), widths=(16, 48, 96, 192), dropout=0.3,
                    standardise=True, bn_momentum=0.9) -> keras.Model:
    """The bundled default model: a compact CNN for CPUs with one pneumonia output.

    Per-image standardisation (zero mean, unit variance over the whole image) first, so exposure
    and contrast differences between films matter less; a plain 3x3 stride-2 stem and a 2x2 pool
    bring 128 px down to 32 px cheaply; then three blocks of separable 3x3 convolutions with
    batch normalisation (1, 2, 2 convs; 2x2 pools between blocks); global average pooling,
    dropout and a single sigmoid unit. Batch normalisation uses momentum 0.9 instead of Keras'
    0.99: with the hundred-odd batches of an epoch on this dataset, the slower moving statistics
    lag the weights and squash validation scores towards 1 for the first epochs. The last convolution, ``block3_sepconv2`` (8x8 at 128 px), is Grad-CAM's layer.
    """
    check_input_shape(input_shape, ARCHITECTURES["pneumonet"].min_size)
    try:
        widths = tuple(int(v) for v in widths)
    except (TypeError, ValueError):
        widths = ()
    if len(widths) != 4 or min(widths) < 1:
        raise ValueError(f"widths must be four positive whole numbers (stem, block1..3); got {widths!r}.")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a fraction in [0, 1); got {dropout!r}.")
    if not isinstance(bn_momentum, (int, float)) or not 0 < bn_momentum < 1:
        raise ValueError(f"bn_momentum must be in (0, 1); got {bn_momentum!r}.")
    stem, w1, w2, w3 = widths
    stack = []
    if standardise:
        # LayerNormalization over (h, w, c) without gamma/beta is per-image standardisation,
        # built in, so the saved model loads with safe_mode=True and no custom code.
        stack.append(layers.LayerNormalization(axis=(1, 2, 3), center=False, scale=False, epsilon=1e-3,
                                               name="standardise"))
    stack += [
        layers.Conv2D(stem, 3, strides=2, padding="same", use_bias=False, name="stem_conv"),
        layers.BatchNormalization(momentum=bn_momentum, name="stem_bn"),
        layers.ReLU(name="stem_relu"),
        layers.MaxPooling2D(2, name="stem_pool"),
    ]
    for block, (filters, convs, pool) in enumerate(((w1, 1, True), (w2, 2, True), (w3, 2, False)), start=1):
        for i in range(1, convs + 1):
            stack += [
                layers.SeparableConv2D(filters, 3, padding="same", use_bias=False,
                                       name=f"block{block}_sepconv{i}"),
                layers.BatchNormalization(momentum=bn_momentum, name=f"block{block}_bn{i}"),
                layers.ReLU(name=f"block{block}_relu{i}"),
            ]
        if pool:
            stack.append(layers.MaxPooling2D(2, name=f"block{block}_pool"))
    stack += [
        layers.GlobalAveragePooling2D(name="gap"),
        layers.Dropout(dropout, name="dropout"),
        layers.Dense(1, activation="sigmoid", name="pneumonia"),
    ]
    return _assemble("pneumonet", input_shape, stack)


_BUILDERS = {"baseline": build_baseline, "model2": build_model2, "model3": build_model3, "model4": build_model4,
             "pneumonet": build_pneumonet}
ARCHITECTURES: dict[str, ArchSpec] = {
    name: ArchSpec(**asdict(info), builder=_BUILDERS[name]) for name, info in CATALOG.items()
}


def _spec(name: str) -> ArchSpec:
    if name not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture {name!r}; choose one of: {', '.join(ARCHITECTURES)}."
        )
    return ARCHITECTURES[name]


def build(name: str, input_shape=(100, 100, 1), *, learning_rate: float = 1e-3,
          jit_compile: bool | str | None = None, options: dict | None = None,
          schedule_steps: int | None = None, label_smoothing: float = 0.0) -> keras.Model:
    """Build and compile architecture `name`: Adam(learning_rate), binary cross-entropy.

    Targets are one-hot (N, 2) for 2-unit heads and (N, 1) for 1-unit heads (`encode_targets`).
    Compiled metrics are the pneumonia-column figures of `compile_metrics`.
    `jit_compile=None` uses DEFAULT_JIT_COMPILE.
    Seed with `keras.utils.set_random_seed` before calling for reproducible initial weights.
    """
    spec = _spec(name)
    lr = _check_learning_rate(learning_rate)
    check_input_shape(input_shape, spec.min_size)
    model = spec.builder(input_shape=tuple(int(v) for v in input_shape), **dict(options or {}))
    if schedule_steps:
        # Cosine decay to 5 % of the initial rate over the whole training.
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=int(schedule_steps), alpha=0.05)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr),
        loss=keras.losses.BinaryCrossentropy(label_smoothing=float(label_smoothing)),
        metrics=compile_metrics(spec.output_units),
        jit_compile=DEFAULT_JIT_COMPILE if jit_compile is None else jit_compile,
    )
    return model


# Layers that compute a spatial feature map from learned filters (per-pixel Dense = 1x1 conv).
_FEATURE_LAYERS = (layers.Conv2D, layers.SeparableConv2D, layers.DepthwiseConv2D, layers.Dense)


def last_conv_layer_name(model: keras.Model) -> str:
    """Name of the last layer that outputs a learned spatial feature map, for Grad-CAM.

    A Conv2D (or separable/depthwise conv), or a Dense applied to a 4-D map (a 1x1 conv), whose
    output is (N, h, w, c). For model3 that is the per-pixel Dense after pooling (25x25 at
    100 px), not the first conv.
    """
    for layer in reversed(model.layers):
        if isinstance(layer, _FEATURE_LAYERS) and len(layer.output.shape) == 4:
            return layer.name
    raise ValueError(
        f"model {model.name!r} has no convolution layer with a spatial output, so Grad-CAM "
        f"cannot be computed for it."
    )


def _layer_config(layer) -> str:
    """A short human description of a layer's settings, like the seed tables' Config column."""
    if isinstance(layer, layers.Conv2D):
        k = layer.kernel_size
        return (f"{layer.filters} filters, {k[0]}x{k[1]}, padding {layer.padding}, "
                f"{layer.activation.__name__}")
    if isinstance(layer, layers.Dense):
        return f"{layer.units}, {layer.activation.__name__}"
    if isinstance(layer, layers.MaxPooling2D):
        p = layer.pool_size
        return f"{p[0]}x{p[1]}"
    if isinstance(layer, layers.Dropout):
        return f"rate {layer.rate}"
    if isinstance(layer, layers.SeparableConv2D):
        k = layer.kernel_size
        return f"{layer.filters} filters, {k[0]}x{k[1]} depthwise + 1x1, padding {layer.padding}"
    if isinstance(layer, layers.BatchNormalization):
        return f"momentum {layer.momentum:g}"
    if isinstance(layer, layers.LayerNormalization):
        return "per image: zero mean, unit variance"
    if isinstance(layer, layers.Rescaling):
        return f"x {layer.scale:.6g} (pixels 0..255 -> 0..1)"
    return ""


def layer_table(name: str, input_shape=(100, 100, 1)):
    """The model's layers as a DataFrame (layer, type, config, output shape, params) for the UI."""
    import pandas as pd

    spec = _spec(name)
    model = spec.builder(input_shape=tuple(input_shape))
    rows = []
    for layer in model.layers:
        if isinstance(layer, layers.InputLayer):
            continue
        shape = tuple(layer.output.shape[1:])
        kind = type(layer).__name__
        if isinstance(layer, layers.Dense) and len(shape) == 3:
            kind = "Dense (per pixel)"
        rows.append({
            "layer": layer.name,
            "type": kind,
            "config": _layer_config(layer),
            "output shape": str(shape if len(shape) > 1 else shape[0]),
            "params": int(layer.count_params()),
        })
    return pd.DataFrame(rows, columns=["layer", "type", "config", "output shape", "params"])
