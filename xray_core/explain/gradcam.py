"""Grad-CAM (Selvaraju et al. 2017) of P(pneumonia): the heat of the last convolutional map.

Computation only (arrays); `panels.make_overlay` draws it. The heat is computed on each of the
model's member networks (the one place in `explain` that looks inside a network, so the one that
imports TensorFlow) and averaged.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import weakref
from typing import Any

import numpy as np

from xray_core.explain.lime import ExplainError, check_model, label_index, to_gray
from xray_core.explain.panels import resize_float

_CACHE: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


@dataclasses.dataclass
class GradCam:
    """Grad-CAM for one image: the class-discriminative heat of the last feature map."""

    heatmap: np.ndarray  # float32 (hc, wc) in 0..1, the last conv layer's spatial size
    label: int  # the explained class (0 NORMAL, 1 PNEUMONIA)
    probability: float  # P(pneumonia) of the image (model.predict_proba)
    layer: str  # the layer whose feature map was used (the first member's)
    seconds: float


def _compiled(network, layer_name: str, input_shape: tuple[int, int, int]):
    """tf.function (x (1,h,w,c), label int32) -> heat (hc, wc), traced once per network and layer.

    The target is the network's pneumonia column p (NORMAL: 1 - p), as in `Model.predict_proba`.
    """
    from xray_core.model import pneumonia_column

    column = pneumonia_column(int(network.outputs[0].shape[-1]))
    key = (input_shape, layer_name)
    with _CACHE_LOCK:
        per_network = _CACHE.setdefault(network, {})
        fn = per_network.get(key)
        if fn is None:
            import keras
            import tensorflow as tf

            feature_model = keras.Model(network.inputs, [network.get_layer(layer_name).output, network.outputs[0]])

            # autograph=False: no Python control flow to convert, and no generated source file in the temp folder
            @tf.function(input_signature=[tf.TensorSpec((1, *input_shape), tf.float32), tf.TensorSpec((), tf.int32)],
                         autograph=False)
            def gradcam(x, label):
                with tf.GradientTape() as tape:
                    features, out = feature_model(x, training=False)  # (1,hc,wc,k), (1,units)
                    p = out[:, column]
                    target = tf.where(label == 1, p, 1.0 - p)
                grads = tape.gradient(target, features)  # (1, hc, wc, k)
                channel_weights = tf.reduce_mean(grads, axis=(0, 1, 2))  # (k,)
                heat = tf.nn.relu(tf.tensordot(features[0], channel_weights, axes=1))  # (hc, wc)
                peak = tf.reduce_max(heat)
                return tf.where(peak > 0, heat / tf.maximum(peak, 1e-12), heat)

            per_network[key] = fn = gradcam
    return fn


def grad_cam(model, image: np.ndarray, label=None, *, layer: str | None = None) -> GradCam:
    """Grad-CAM heat of P(pneumonia) (or of `label`) from the last convolutional layer.

    Parameters
    ----------
    model : xray_core.model.Model
        Its `members` are the networks looked into.
    image : uint8 (H, W) gray or (H, W, 3|4); prepared by `model.preprocess`.
    label : 0, 1, "NORMAL", "PNEUMONIA" or None (P(pneumonia)).
    layer : a layer name; default `architectures.last_conv_layer_name` of each member (a
        per-pixel Dense on a 4-D map counts as a 1x1 conv, so model3 uses its 25x25 map).

    Returns
    -------
    GradCam
        An ensemble's heat is the mean of its members' heats (each scaled to a peak of 1), scaled
        again. Draw it with `panels.make_overlay`.
    """
    import tensorflow as tf

    from xray_core import architectures

    t0 = time.perf_counter()
    check_model(model)
    label = label_index(label)
    x = model.preprocess(to_gray(image))  # (h, w, c)
    p = float(model.predict_proba(x[None])[0])
    heats, names = [], []
    for network in model.members:
        name = layer or architectures.last_conv_layer_name(network)
        fn = _compiled(network, name, x.shape)
        heat = np.asarray(fn(tf.constant(x[None]), tf.constant(label, tf.int32)), np.float32)
        if heat.ndim != 2:
            raise ExplainError(f"Layer {name!r} does not output a spatial map; pick a conv layer.")
        heats.append(heat if not heats or heat.shape == heats[0].shape else resize_float(heat, heats[0].shape))
        names.append(name)
    heat = np.mean(heats, axis=0).astype(np.float32)
    if len(heats) > 1 and heat.max() > 0:
        heat = heat / heat.max()
    return GradCam(heatmap=heat, label=label, probability=p, layer=names[0], seconds=time.perf_counter() - t0)
