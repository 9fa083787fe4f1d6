"""One film's explanation as Diagnose shows it: LIME, Grad-CAM and the drawn panels, as plain data.

`explain_film` is what an explanation worker (`xray_core.serving.worker`) computes for a page;
`Explained` holds plain data only (dataclasses of arrays and numbers, PNG bytes), so it can be
sent from one process to another.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import numpy as np

from xray_core.explain.gradcam import grad_cam
from xray_core.explain.lime import ExplainCancelled, LimeExplanation, explain_lime, lime_settings
from xray_core.explain.panels import HeatmapLegend, lime_panels, make_overlay, png_bytes

PANEL_NAMES = ("full", "partial", "pros_cons", "heatmap", "gradcam")


@dataclasses.dataclass(frozen=True)
class Explained:
    """One film's explanation as plain data: what the page shows and what its downloads hold.

    `key` is the job's `serving.JobKey` (film hash, model fingerprint, options), so a page can
    check that a result is the one of the film it shows. It holds no file name: two users may send
    the same bytes under different names.
    """

    key: Any
    lime: LimeExplanation
    legend: HeatmapLegend  # the weight heatmap's colour scale
    heatmap: np.ndarray  # Grad-CAM, float32 0..1 at the last convolutional map's size
    cam_layer: str
    cam_seconds: float
    panels: dict  # name (PANEL_NAMES) -> PNG bytes at display size, over the film
    seconds: float  # the whole explanation, drawing included


def explain_film(model, image: np.ndarray, *, num_samples: int = 512, segmentation: str = "slic", seed: int = 0,
                 progress: Callable[[int, int], None] | None = None, cancel: Callable[[], bool] | None = None,
                 key: Any = None) -> Explained:
    """LIME (the dashboard's recipe at these settings) and Grad-CAM of P(pneumonia), drawn over
    `image` (the decoded 2-D film) as the Diagnose panels. Raises ExplainCancelled when `cancel()`
    turns true, ExplainError for settings this film cannot take."""
    t0 = time.perf_counter()
    settings = lime_settings(num_samples=num_samples, segmentation=segmentation)
    lime = explain_lime(model, image, seed=seed, progress=progress, cancel=cancel, **settings)
    if cancel is not None and cancel():
        raise ExplainCancelled("The explanation was cancelled after LIME.")
    drawn = lime_panels(image, lime)
    cam = grad_cam(model, image)
    if cancel is not None and cancel():
        raise ExplainCancelled("The explanation was cancelled after Grad-CAM.")
    pictures = {**drawn.as_dict(), "gradcam": make_overlay(image, cam.heatmap)}
    panels = {name: png_bytes(pictures[name], compress_level=1) for name in PANEL_NAMES}  # quick, about as small
    return Explained(key=key, lime=lime, legend=drawn.legend, heatmap=cam.heatmap, cam_layer=cam.layer,
                     cam_seconds=cam.seconds, panels=panels, seconds=time.perf_counter() - t0)
