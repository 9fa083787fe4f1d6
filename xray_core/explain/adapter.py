"""The model side of an explanation: which network, which input, which probability.

`as_adapter` turns an `xray_core.model.Model` (the product's model object), a `runs.Run`, a bare
Keras model or a ModelAdapter into one ModelAdapter. For a Model, the class scores are
`Model.predict_proba` (one forward path, calibration included): (1 - p, p). Constants shared by
the explanation modules live here too.
"""

from __future__ import annotations

import dataclasses
import threading
import weakref
from pathlib import Path
from typing import Any

import numpy as np


CLASSES = ("NORMAL", "PNEUMONIA")
PNEUMONIA = 1  # what every explanation explains unless told otherwise: P(pneumonia)
SEGMENTATIONS = ("quickshift", "slic", "felzenszwalb", "grid")
SAMPLINGS = ("lime", "paired", "paired_stratified", "orthogonal")  # on/off designs, see lime._sample_masks
SCALES = ("probability", "logit")  # what LIME fits: the label's probability (lime's) or its log-odds
# What the dashboard, the report and the faithfulness benchmark use: a deterministic, near-regular
# segmentation (SLIC with a fixed compactness: 33-36 superpixels, median 36, on the 192 px input of
# a 224 px film), the 512 samples of an orthogonal fold-over design with low-aberration columns, every
# sample weighing alike, each hidden superpixel shown as its own mean, the log-odds of P(pneumonia)
# fitted. Chosen on films of the trained default for top-5 stability over seeds 0-4 within the time
# budget (2 s a call on 2 CPU cores): benchmarks/reports/explain_settings.md (segmentation, fill,
# weights; 9 of its 10 films were training films, drawn from a wrongly rebuilt split, not re-run),
# explain_design.md (design, scale), explain_samples.md (samples; the run's validation films).
DEFAULT_LIME = {"segmentation": "slic", "segmentation_params": {"n_segments": 40, "compactness": 40.0, "sigma": 1.0},
                "num_samples": 512, "hide_color": None, "sampling": "orthogonal", "kernel_width": None,
                "scale": "logit"}
LIME_SAMPLE_CHOICES = (128, 256, 512, 1024, 2048, 4096, 8192)  # powers of two: the orthogonal design's sizes
DEFAULT_SEGMENTATION = "slic"  # see DEFAULT_SEGMENTATION_PARAMS and benchmarks/reports/explain_faithfulness.md
# quickshift: lime's default, as the seed used it. slic / felzenszwalb: chosen to give a few dozen
# superpixels on a 100-128 px model input (about 10 samples per superpixel at 1,000 samples).
DEFAULT_SEGMENTATION_PARAMS: dict[str, dict[str, Any]] = {
    "quickshift": {"kernel_size": 4, "max_dist": 200, "ratio": 0.2},
    "slic": {"n_segments": 60, "compactness": 10.0, "sigma": 1.0},
    "felzenszwalb": {"scale": 100.0, "sigma": 0.8, "min_size": 40},
    "grid": {"rows": 6, "cols": 6},
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


RECIPES = ("dashboard", "seed")  # DEFAULT_LIME, or the seed study's call (explain_lime's own defaults)


def lime_settings(recipe: str = "dashboard", *, num_samples: int | None = None,
                  segmentation: str | None = None) -> dict:
    """Keyword arguments of `explain_lime` for a recipe, so Diagnose, the report and `xray explain`
    explain a film alike: "dashboard" is DEFAULT_LIME; "seed" the seed study's call (quickshift,
    1,000 random samples, black fill, the probability fitted). A sample count or segmentation
    given replaces the recipe's; another segmentation than the recipe's takes its own defaults."""
    if recipe not in RECIPES:
        raise ExplainError(f"Unknown LIME recipe {recipe!r}; choose one of {', '.join(RECIPES)}.")
    settings = {}
    if recipe == "dashboard":
        settings = dict(DEFAULT_LIME, segmentation_params=dict(DEFAULT_LIME["segmentation_params"]))
    if num_samples is not None:
        settings["num_samples"] = int(num_samples)
    if segmentation is not None and segmentation != settings.get("segmentation"):
        settings.update(segmentation=segmentation, segmentation_params=None)
    return settings


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
    source: Any = None  # the xray_core.model.Model this adapter speaks for (None: a bare network)

    @property
    def members(self) -> list:
        """The networks Grad-CAM looks into: the Model's members, or the one bare network."""
        return list(self.source.members) if self.source is not None else [self.model]

    @property
    def fast_ok(self) -> bool:
        """Whether LIME may score samples with the exact look-up (one uncalibrated network only)."""
        return self.source is None or (self.source.n_members == 1 and self.source.temperature == 1.0
                                       and self.source.bias == 0.0)

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

        return imaging.to_model_input(gray, self.image_size, channels=self.channels)

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
        if self.source is not None:  # the product's one forward path (members, calibration)
            if len(x) == 0:
                return np.zeros((0, 2))
            p = self.source.predict_proba(x, batch_size=batch_size)
            return np.stack([1.0 - p, p], axis=1)
        forward = compiled_forward(self.model, self.input_shape)
        parts = [np.asarray(forward(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
        if not parts:
            return np.zeros((0, 2))
        return self.to_class_columns(np.concatenate(parts, axis=0).astype(np.float64))

    def to_class_columns(self, out: np.ndarray) -> np.ndarray:
        """Raw network outputs (N, units) -> (N, 2) scores for (NORMAL, PNEUMONIA).

        For a Model, column 1 is P(pneumonia) (its pneumonia column) and column 0 is 1 - p, as in
        `Model.predict_proba`; a bare 2-unit network gives its own two columns.
        """
        if self.source is not None:
            from xray_core.model import pneumonia_column

            p = out.reshape(len(out), -1)[:, pneumonia_column(self.output_units)]
            return np.stack([1.0 - p, p], axis=1)
        if self.output_units == 1:
            p = out.reshape(len(out), -1)[:, 0]
            return np.stack([1.0 - p, p], axis=1)
        return out[:, :2]

    def predicted_label(self, probs_row: np.ndarray) -> int:
        return int(probs_row[1] >= self.threshold)


def as_adapter(run_or_model: Any, *, threshold: float | None = None) -> ModelAdapter:
    """A ModelAdapter from an `xray_core.model.Model`, a `runs.Run` (loaded as its Model), a run
    folder path, an adapter, or a bare Keras model (shapes read from it)."""
    from xray_core import runs
    from xray_core.model import Model, load_model

    if isinstance(run_or_model, ModelAdapter):
        return run_or_model
    if isinstance(run_or_model, (runs.Run, Path)):
        run_or_model = load_model(run_or_model)
    if isinstance(run_or_model, Model):
        m = run_or_model
        return ModelAdapter(
            m.members[0], m.input_size, m.channels, m.output_units,
            threshold=m.threshold if threshold is None else threshold, name=f"run {m.run_id!r}", source=m,
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
        f"Cannot explain a {type(run_or_model).__name__}: pass a model (xray_core.model.load_model), "
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
