"""Grad-CAM (Selvaraju et al. 2017) of P(pneumonia): the heat of the last convolutional map.

Computation only (arrays); `panels.make_overlay` draws it. For an ensemble the heat is computed
per member network and averaged.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from xray_core.explain.adapter import (
    CLASSES, PNEUMONIA, ExplainError, ModelAdapter, _CACHE_LOCK, _GRADCAM_CACHE, _check_label,
    as_adapter, to_gray,
)
from xray_core.explain.panels import _resize_float


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


def _compiled_gradcam(adapter: ModelAdapter, layer_name: str, model=None):
    """tf.function (x (1,h,w,c), label int32) -> (heat (hc,wc), class scores (1, units)).

    `model` is one network (an ensemble member); default the adapter's. For a Model's network
    the target is its pneumonia column p (NORMAL: 1 - p), as in `Model.predict_proba`.
    """
    model = adapter.model if model is None else model
    units = int(model.outputs[0].shape[-1])
    column = None
    if adapter.source is not None or units == 1:
        from xray_core.model import pneumonia_column

        column = pneumonia_column(units)
    key = (adapter.input_shape, layer_name, units, column)
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

            @tf.function(input_signature=[
                tf.TensorSpec((1, *adapter.input_shape), tf.float32),
                tf.TensorSpec((), tf.int32),
            ])
            def gradcam(x, label):
                with tf.GradientTape() as tape:
                    features, out = feature_model(x, training=False)  # (1,hc,wc,k), (1,units)
                    if column is not None:
                        p = out[:, column]
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
    """Grad-CAM heat of P(pneumonia) (or of `label` when given) from the last convolutional layer.

    `architectures.last_conv_layer_name` picks the layer (a per-pixel Dense on a 4-D map counts
    as a 1x1 conv, so model3 uses its 25x25 map). An ensemble's heat is the mean of its
    members' heats (each scaled to a peak of 1), scaled again. Draw it with `make_overlay`.
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
        label = PNEUMONIA
    heats = []
    for member in adapter.members:
        fn = _compiled_gradcam(adapter, layer or _last_conv_layer_name(member), member)
        heat, _ = fn(tf.constant(x[None]), tf.constant(label, tf.int32))
        heat = np.asarray(heat, dtype=np.float32)
        if heat.ndim != 2:
            raise ExplainError(f"Layer {layer_name!r} does not output a spatial map; pick a conv layer.")
        heats.append(heat if not heats or heat.shape == heats[0].shape else _resize_float(heat, heats[0].shape))
    heat = np.mean(heats, axis=0).astype(np.float32)
    if len(heats) > 1 and heat.max() > 0:
        heat = heat / heat.max()
    return GradCam(heatmap=heat, label=int(label), predicted_label=predicted,
                   probability=float(probs[1]), layer=layer_name,
                   seconds=time.perf_counter() - t0, model_input=x)
