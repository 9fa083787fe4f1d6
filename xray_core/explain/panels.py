"""Drawing explanations: the seed's four LIME panels, the Grad-CAM overlay, PNG bytes.

Computation lives in lime.py / gradcam.py and returns arrays; this module only draws them at
display size over the original image (its own aspect ratio).
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np

from xray_core.explain.lime import to_gray

DISPLAY_SIZE = 512  # long side of every panel, in pixels
BOUNDARY_COLOR = (255, 255, 0)  # skimage.mark_boundaries' default yellow, as in the seed
SUPPORT_COLOR = (0, 200, 0)
OPPOSE_COLOR = (230, 0, 0)
PROS_CONS_ALPHA = 0.45  # colour over anatomy: strong enough to read, weak enough to see through
HEATMAP_CMAP = "RdBu"  # the seed's map: red against, blue for the label
GRADCAM_CMAP = "jet"
GRADCAM_ALPHA = 0.4


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


def resize_float(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
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


@dataclasses.dataclass
class HeatmapLegend:
    """What a colour bar beside the heatmap panel needs: the weights' range is -vmax..vmax."""

    vmin: float
    vmax: float
    cmap: str


@dataclasses.dataclass
class LimePanels:
    """The seed's four pictures, RGB uint8 (H, W, 3) at display size, and the heatmap's legend."""

    full: np.ndarray  # 1: image with outlines of the top supporting superpixels
    partial: np.ndarray  # 2: only those superpixels, the rest black
    pros_cons: np.ndarray  # 3: top 5 by |weight|, green supports / red opposes the label
    heatmap: np.ndarray  # 4: every superpixel filled with its weight
    legend: HeatmapLegend

    def as_dict(self) -> dict[str, np.ndarray]:
        """The four pictures by name."""
        return {"full": self.full, "partial": self.partial, "pros_cons": self.pros_cons, "heatmap": self.heatmap}


def lime_panels(image: np.ndarray, explanation, *, display_size: int = DISPLAY_SIZE) -> LimePanels:
    """Draw an explanation's four panels over the original image, in its own aspect ratio.

    Parameters
    ----------
    image : the uint8 image that was explained, any size.
    explanation : a LimeExplanation (its segments, weights, top_supporting and top_abs).
    display_size : long side of each panel in pixels.

    Returns
    -------
    LimePanels
        Superpixels are scaled up with nearest neighbour and outlined at display resolution, so
        edges stay crisp.
    """
    from xray_core import imaging

    gray = to_gray(image)
    weights = np.asarray(explanation.weights, np.float64)
    top_supporting, top_abs = explanation.top_supporting, explanation.top_abs
    vmax = float(np.max(np.abs(weights))) if weights.size else 0.0
    legend = HeatmapLegend(vmin=-vmax, vmax=vmax, cmap=HEATMAP_CMAP)
    shape = display_shape(gray.shape, display_size)
    base = _gray_rgb(imaging.resize(gray, shape))  # (H, W, 3) uint8
    seg = upsample_nearest(np.asarray(explanation.segments), shape)  # (H, W) int32
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

    return LimePanels(full=full, partial=partial, pros_cons=pros_cons, heatmap=heat, legend=legend)


def make_overlay(image: np.ndarray, heatmap: np.ndarray, *, alpha: float = GRADCAM_ALPHA,
                 display_size: int = DISPLAY_SIZE, cmap: str = GRADCAM_CMAP) -> np.ndarray:
    """The image at display size with a 0..1 heat map (Grad-CAM's, any shape) over it.

    Parameters
    ----------
    image : the uint8 image, any size.
    heatmap : float in 0..1, any shape (resized bilinearly).
    alpha, display_size, cmap : the heat's opacity, the long side in pixels, a matplotlib colormap.

    Returns
    -------
    uint8 (H, W, 3) RGB.
    """
    from xray_core import imaging

    gray = to_gray(image)
    shape = display_shape(gray.shape, display_size)
    base = _gray_rgb(imaging.resize(gray, shape)).astype(np.float32)
    heat = np.clip(resize_float(np.asarray(heatmap, np.float32), shape), 0.0, 1.0)
    colour = _colormap_lut(cmap)[np.round(heat * 255).astype(np.int64)].astype(np.float32)
    return np.clip((1 - alpha) * base + alpha * colour + 0.5, 0, 255).astype(np.uint8)


def png_bytes(rgb: np.ndarray, *, compress_level: int = -1) -> bytes:
    """Encode a uint8 gray or RGB array as PNG, in memory; `compress_level` is zlib's (-1 its default,
    1 much quicker and about as small on flat colour over a film, for the dashboard's panels)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(rgb, np.uint8)).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()
