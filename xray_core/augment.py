"""Training-time augmentation of chest radiographs, in TensorFlow, on batches.

Two levels:

- "mild": small perturbations (rotation +-5 deg, shift and zoom +-5..10 %, brightness and
  contrast +-10 %).
- "strong": so that framing carries no information. Each film gets its own random affine map
  with independent vertical and horizontal zoom (0.80x..1.30x: tighter or looser collimation,
  a taller or wider chest), translation up to 10 %, rotation up to 7 deg, the uncovered margin
  filled with the film's border mean (as a collimator leaves it); then gamma 0.75..1.33,
  contrast 0.7..1.3, Gaussian noise and, for a third of the batches, a down-up resample
  (a softer detector). These are the changes the shift-stress validation measures
  (`xray_core.stress`), drawn at random instead of fixed.

Never horizontal flips: the heart sits on the patient's left, a mirrored film is not a plausible
radiograph.
"""

from __future__ import annotations

import math

LEVELS = ("none", "mild", "strong")


def check_level(level) -> str:
    """True/False (augmentation on or off) -> "mild"/"none"; a level name is returned as is."""
    if level is True:
        return "mild"
    if level in (False, None):
        return "none"
    if level not in LEVELS:
        raise ValueError(f"augmentation must be one of {', '.join(LEVELS)}; got {level!r}.")
    return level


def mild_layers(seed: int):
    import keras

    return keras.Sequential(
        [
            keras.layers.RandomRotation(5 / 360, fill_mode="nearest", seed=seed, name="aug_rotate"),
            keras.layers.RandomTranslation(0.05, 0.05, fill_mode="nearest", seed=seed + 1, name="aug_shift"),
            keras.layers.RandomZoom(0.1, fill_mode="nearest", seed=seed + 2, name="aug_zoom"),
            keras.layers.RandomBrightness(0.1, value_range=(0, 255), seed=seed + 3, name="aug_brightness"),
            keras.layers.RandomContrast(0.1, value_range=(0, 255), seed=seed + 4, name="aug_contrast"),
        ],
        name="augment",
    )


def _affine_transforms(tf, n, h, w, seed_pair):
    """(n, 8) projective transforms mapping output to input pixel coordinates:
    x_in = cx + (cos t (x-cx) + sin t (y-cy)) / sx + tx, y_in = cy + (-sin t (x-cx) + cos t (y-cy)) / sy + ty."""
    seeds = tf.random.experimental.stateless_split(seed_pair, 5)
    log_lo, log_hi = math.log(0.80), math.log(1.30)
    sy = tf.exp(tf.random.stateless_uniform((n,), seeds[0], log_lo, log_hi))
    sx = tf.exp(tf.random.stateless_uniform((n,), seeds[1], log_lo, log_hi))
    theta = tf.random.stateless_uniform((n,), seeds[2], -7.0, 7.0) * (math.pi / 180.0)
    ty = tf.random.stateless_uniform((n,), seeds[3], -0.10, 0.10) * h
    tx = tf.random.stateless_uniform((n,), seeds[4], -0.10, 0.10) * w
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    cos, sin = tf.cos(theta), tf.sin(theta)
    a0, a1 = cos / sx, sin / sx
    b0, b1 = -sin / sy, cos / sy
    a2 = cx - a0 * cx - a1 * cy + tx
    b2 = cy - b0 * cx - b1 * cy + ty
    zeros = tf.zeros_like(a0)
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def strong(images, seed_pair):
    """Strongly augment a batch (n, h, w, c) float32 in 0..255; seed_pair: int32/int64 (2,) tensor."""
    import tensorflow as tf

    images = tf.convert_to_tensor(images, tf.float32)
    shape = tf.shape(images)
    n, h, w = shape[0], shape[1], shape[2]
    hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
    seeds = tf.random.experimental.stateless_split(seed_pair, 6)

    # Geometry: fill the uncovered margin with the film's border mean (exactly, by shifting
    # the film so the border mean is 0 and filling with 0).
    band = tf.maximum(1, h // 50)
    border = tf.concat([
        tf.reshape(images[:, :band], (n, -1)), tf.reshape(images[:, -band:], (n, -1)),
        tf.reshape(images[:, :, :band], (n, -1)), tf.reshape(images[:, :, -band:], (n, -1)),
    ], axis=1)
    fill = tf.reduce_mean(border, axis=1)[:, None, None, None]
    transforms = _affine_transforms(tf, n, hf, wf, seeds[0])
    moved = tf.raw_ops.ImageProjectiveTransformV3(
        images=images - fill, transforms=transforms, output_shape=tf.stack([h, w]),
        interpolation="BILINEAR", fill_mode="CONSTANT", fill_value=0.0)
    x = moved + fill

    # Intensity: gamma, contrast about the film's mean, noise.
    x = tf.clip_by_value(x, 0.0, 255.0) / 255.0
    g = tf.exp(tf.random.stateless_uniform((n, 1, 1, 1), seeds[1], math.log(0.75), math.log(1.33)))
    x = tf.pow(x + 1e-6, g)
    c = tf.random.stateless_uniform((n, 1, 1, 1), seeds[2], 0.7, 1.3)
    mean = tf.reduce_mean(x, axis=(1, 2, 3), keepdims=True)
    x = mean + c * (x - mean)
    sigma = tf.random.stateless_uniform((n, 1, 1, 1), seeds[3], 0.0, 4.0 / 255.0)
    x = x + sigma * tf.random.stateless_normal(tf.shape(x), seeds[4])

    # Resolution: a third of the batches are resampled down by 1.5..3x and back.
    u = tf.random.stateless_uniform((2,), seeds[5])
    factor = 1.5 + 1.5 * u[1]
    small = tf.stack([tf.cast(hf / factor, tf.int32), tf.cast(wf / factor, tf.int32)])
    x = tf.cond(u[0] < 1.0 / 3.0,
                lambda: tf.image.resize(tf.image.resize(x, small, "bilinear"), tf.stack([h, w]), "bilinear"),
                lambda: x)
    return tf.clip_by_value(x, 0.0, 1.0) * 255.0


def augment_dataset(ds, level: str, seed: int):
    """Augment a tf.data dataset of (images, *rest) batches at `level` ("none" returns ds).

    The strong level draws each batch's randomness from a seeded random stream that is drawn
    anew every epoch (stateless ops: reproducible for a seed, safe in parallel map calls)."""
    level = check_level(level)
    if level == "none":
        return ds
    import tensorflow as tf

    if level == "mild":
        layers = mild_layers(seed)
        return ds.map(lambda *b: (layers(b[0], training=True),) + tuple(b[1:]),
                      num_parallel_calls=tf.data.AUTOTUNE)
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return tf.data.Dataset.zip((ds, seeds)).map(
        lambda batch, s: (strong(batch[0], s),) + tuple(batch[1:]), num_parallel_calls=tf.data.AUTOTUNE)
