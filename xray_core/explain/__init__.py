"""Explanations for one chest X-ray: LIME's four panels, Grad-CAM, and figures to judge them by.

A package of rooms with one job each: `adapter` (which model and probability: the model object's
`predict_proba`), `lime` and `gradcam` (compute arrays), `fastscore` (exact fast scoring of LIME
samples for the seed's conv-first models), `faithfulness` (deletion curves, stability),
`panels` (drawing, apart from computing) and `folder` (the `explain` command). Every
explanation is of P(pneumonia) unless another label is asked for explicitly.

TensorFlow, scikit-image, scikit-learn and matplotlib are imported inside the functions that
need them, so `import xray_core.explain` stays fast.
"""

from xray_core.explain.adapter import (
    BOUNDARY_COLOR, CLASSES, DEFAULT_LIME, LIME_SAMPLE_CHOICES, DEFAULT_SEGMENTATION, DEFAULT_SEGMENTATION_PARAMS, DISPLAY_SIZE, HIDE_COLOR, PNEUMONIA,
    RECIPES, SEGMENTATIONS, TOP_PROS_CONS, TOP_SUPPORTING, ExplainError, ModelAdapter, as_adapter,
    compiled_forward, lime_settings, to_gray,
)
from xray_core.explain.fastscore import (
    make_scorer,
)
from xray_core.explain.faithfulness import (
    DeletionCurve, Stability, deletion_curve, gradcam_order, jaccard, lime_order, random_order,
    stability, trust_figures,
)
from xray_core.explain.folder import (
    GRADCAM_FILE, JSON_FILE, PANEL_FILES, explain_to_folder,
)
from xray_core.explain.gradcam import GradCam, grad_cam
from xray_core.explain.lime import LimeExplanation, explain_lime, segment
from xray_core.explain.panels import (
    HeatmapLegend, LimePanels, boundaries, display_shape,
    lime_panels, make_overlay, png_bytes, upsample_nearest,
)

__all__ = [
    "CLASSES", "PNEUMONIA", "SEGMENTATIONS", "DEFAULT_SEGMENTATION", "DEFAULT_LIME", "LIME_SAMPLE_CHOICES", "DEFAULT_SEGMENTATION_PARAMS", "DISPLAY_SIZE", "ExplainError",
    "RECIPES", "ModelAdapter", "as_adapter", "compiled_forward", "lime_settings", "to_gray", "make_scorer", "DeletionCurve", "Stability",
    "deletion_curve", "gradcam_order", "jaccard", "lime_order", "random_order", "stability",
    "trust_figures", "GRADCAM_FILE", "JSON_FILE", "PANEL_FILES", "explain_to_folder", "GradCam", "grad_cam",
    "LimeExplanation", "explain_lime", "segment", "HeatmapLegend", "LimePanels", "boundaries",
    "display_shape", "lime_panels", "make_overlay", "png_bytes", "upsample_nearest", "BOUNDARY_COLOR",
    "HIDE_COLOR", "TOP_PROS_CONS", "TOP_SUPPORTING",
]
