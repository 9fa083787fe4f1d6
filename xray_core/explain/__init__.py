"""Explanations for one chest X-ray: LIME's four panels, Grad-CAM, and figures to judge them by.

Rooms with one job each: `lime` (LIME through the lime package: weights per superpixel) and
`gradcam` compute arrays from an `xray_core.model.Model`; `faithfulness` measures deletion curves
and stability; `panels` draws; `folder` is the `explain` command; `film` is Diagnose's explanation
of one film as plain data (`explain_film`), which `xray_core.serving` runs in worker processes.
Every explanation is of P(pneumonia) unless another label is asked for. The package exports the
functions, their settings and result types; helpers (`lime.to_gray`, `panels.png_bytes`, ...)
import from their module.

lime, TensorFlow, scikit-image, scikit-learn and matplotlib are imported inside the functions
that need them, so `import xray_core.explain` stays fast.
"""

from xray_core.explain.faithfulness import (
    DeletionCurve, Stability, deletion_curve, gradcam_order, lime_order, random_order, stability, trust_figures,
)
from xray_core.explain.film import PANEL_NAMES, Explained, explain_film
from xray_core.explain.folder import GRADCAM_FILE, JSON_FILE, PANEL_FILES, explain_to_folder
from xray_core.explain.gradcam import GradCam, grad_cam
from xray_core.explain.lime import (
    CLASSES, DEFAULT_LIME, LIME_SAMPLE_CHOICES, PNEUMONIA, SEED_LIME, SEGMENTATIONS, ExplainCancelled, ExplainError,
    LimeExplanation, explain_lime, lime_settings, segment,
)
from xray_core.explain.panels import (
    BOUNDARY_COLOR, DISPLAY_SIZE, HeatmapLegend, LimePanels, boundaries, display_shape, lime_panels, make_overlay,
    upsample_nearest,
)

__all__ = [
    "DeletionCurve", "Stability", "deletion_curve", "gradcam_order", "lime_order", "random_order", "stability",
    "trust_figures", "PANEL_NAMES", "Explained", "explain_film", "GRADCAM_FILE", "JSON_FILE", "PANEL_FILES",
    "explain_to_folder", "GradCam", "grad_cam", "CLASSES", "DEFAULT_LIME", "LIME_SAMPLE_CHOICES", "PNEUMONIA",
    "SEED_LIME", "SEGMENTATIONS", "ExplainCancelled", "ExplainError", "LimeExplanation", "explain_lime",
    "lime_settings", "segment", "BOUNDARY_COLOR", "DISPLAY_SIZE", "HeatmapLegend", "LimePanels", "boundaries",
    "display_shape", "lime_panels", "make_overlay", "upsample_nearest",
]
