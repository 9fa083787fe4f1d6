"""Figures to judge an explanation by: deletion curves (LIME, Grad-CAM, random) and stability.

A faithful ranking of superpixels makes the explained probability fall fast as they are hidden
(lower deletion area); a stable one picks the same top superpixels whatever the seed.
"""

from __future__ import annotations

import dataclasses
import itertools
import time

import numpy as np

from xray_core.explain.gradcam import GradCam, grad_cam
from xray_core.explain.lime import (
    BATCH_SIZE, CLASSES, DEFAULT_LIME, DEFAULT_SEGMENTATION_PARAMS, TOP_PROS_CONS, ExplainError, LimeExplanation,
    check_model, class_scores, explain_lime, hidden_fill, label_index, to_gray,
)
from xray_core.explain.panels import resize_float


@dataclasses.dataclass
class DeletionCurve:
    """The label's probability as superpixels are hidden, most important first (lower area: more faithful)."""

    fractions: list  # share of superpixels hidden at each step, 0 .. 1
    probabilities: list  # the model's score for the label at each step
    area: float  # trapezoid area under probabilities over fractions (0 .. 1)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def deletion_curve(model, image: np.ndarray, segments: np.ndarray, order, label, *,
                   steps: int | None = None, hide_color: float | None = None) -> DeletionCurve:
    """Hide superpixels in `order`, most important first, and score the label at each step.

    Parameters
    ----------
    model : xray_core.model.Model
    image : uint8 (H, W) gray or (H, W, 3|4), as given to explain_lime.
    segments : int (h, w) labels at model input size (LimeExplanation.segments).
    order : every superpixel once, most important first (lime_order, gradcam_order, random_order).
    label : 0, 1, "NORMAL" or "PNEUMONIA".
    steps : points after the start; None: one per superpixel.
    hide_color : what a hidden superpixel shows, as in explain_lime: None its own mean, or a gray
        level (0 black). Measure an explanation with its own fill (LimeExplanation.hide_color).

    Returns
    -------
    DeletionCurve
    """
    check_model(model)
    if label is None:
        raise ExplainError("deletion_curve needs the label to follow (0 NORMAL or 1 PNEUMONIA).")
    label = label_index(label)
    x = model.preprocess(to_gray(image))
    segments = np.asarray(segments)
    n = int(segments.max()) + 1
    order = [int(k) for k in order]
    if sorted(order) != list(range(n)):
        raise ExplainError(f"order must list every superpixel 0..{n - 1} once, got {len(order)} entries.")
    steps = n if steps is None else int(np.clip(steps, 1, n))
    counts = np.unique(np.round(np.linspace(0, n, steps + 1)).astype(int))
    rows = np.ones((len(counts), n), dtype=bool)
    for i, c in enumerate(counts):
        rows[i, order[:c]] = False
    fill = hidden_fill(x, segments, hide_color).astype(np.float32)
    probs = np.concatenate([class_scores(model, np.where(part[:, segments][..., None], x[None], fill[None]))[:, label]
                            for part in np.array_split(rows, -(-len(rows) // BATCH_SIZE))])
    fractions = counts / n
    area = float(np.sum((probs[1:] + probs[:-1]) / 2 * np.diff(fractions)))
    return DeletionCurve(fractions=[float(f) for f in fractions],
                         probabilities=[float(p) for p in probs], area=area)


def lime_order(weights: np.ndarray) -> list[int]:
    """Superpixels from most supporting to most opposing the label."""
    return [int(k) for k in np.argsort(-np.asarray(weights), kind="stable")]


def gradcam_order(heatmap: np.ndarray, segments: np.ndarray) -> list[int]:
    """Superpixels by mean Grad-CAM heat (heat resized to the segments' size), hottest first."""
    heat = resize_float(heatmap, segments.shape)
    n = int(segments.max()) + 1
    mean = np.bincount(segments.ravel(), weights=heat.ravel(), minlength=n) / np.maximum(
        np.bincount(segments.ravel(), minlength=n), 1)
    return [int(k) for k in np.argsort(-mean, kind="stable")]


def random_order(n: int, seed: int = 0) -> list[int]:
    """The n superpixels in a random order (the baseline of the deletion curves)."""
    return [int(k) for k in np.random.default_rng(seed).permutation(n)]


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """|a & b| / |a | b| of two boolean masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


NEAR_TIE = 2.0  # a top-k edge whose gap is within this many seed-to-seed deviations is a near-tie


@dataclasses.dataclass
class Stability:
    """How much the top superpixels move when only the seed changes.

    `cut_margin` and `cut_spread` say whether the top k end at a near-tie: with the superpixels
    ranked by their |weight| averaged over the seeds, the gap between the k-th and the (k+1)-th,
    and the larger seed-to-seed standard deviation of those two |weights|. None when the seeds
    segment differently (quickshift) or there are no more than k superpixels.
    """

    seeds: list
    jaccard_mean: float  # mean over seed pairs of the pixel Jaccard of the top-k regions
    jaccard_min: float
    top_k: int
    n_superpixels: list  # per seed (quickshift's tie-breaking is seeded too)
    cut_margin: float | None = None
    cut_spread: float | None = None

    @property
    def near_tie(self) -> bool:
        """Whether the k-th and (k+1)-th superpixels are within NEAR_TIE spreads of each other."""
        return self.cut_margin is not None and self.cut_margin <= NEAR_TIE * self.cut_spread

    def to_dict(self) -> dict:
        return dict(dataclasses.asdict(self), near_tie=self.near_tie)


def stability(model, image: np.ndarray, label=None, *, seeds: int | list = 5, top_k: int = TOP_PROS_CONS,
              first: LimeExplanation | None = None, **settings) -> Stability:
    """How much the top-k superpixels (by |weight|) move when only LIME's seed changes.

    Parameters
    ----------
    model, image, label : as explain_lime.
    seeds : how many seeds (0, 1, ...), or the seeds themselves; at least two.
    top_k : superpixels compared (panel 3's five).
    first : an explanation already made with one of the seeds and the same settings, reused.
    **settings : explain_lime's keyword arguments (default the dashboard's).

    Returns
    -------
    Stability
        The pairwise Jaccard overlap of the top-k regions, measured on pixels (superpixels of
        different seeds need not match one-to-one), and whether the top k end at a near-tie.
    """
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if len(seed_list) < 2:
        raise ExplainError("stability needs at least two seeds.")
    wanted = {**DEFAULT_LIME, **settings}
    wanted["segmentation_params"] = {**DEFAULT_SEGMENTATION_PARAMS.get(wanted["segmentation"], {}),
                                     **(settings.get("segmentation_params") or {})}
    masks, counts, weights = [], [], []
    for s in seed_list:
        if first is not None and first.seed == s and first.settings() == wanted:
            exp = first
        else:
            exp = explain_lime(model, image, label=label, seed=s, **wanted)
        label = exp.label  # every seed explains the same label
        top = sorted(range(exp.n_superpixels), key=lambda k: (-abs(exp.weights[k]), k))[:top_k]
        masks.append(np.isin(exp.segments, top))
        counts.append(exp.n_superpixels)
        weights.append(np.abs(exp.weights))
    pairs = [jaccard(a, b) for a, b in itertools.combinations(masks, 2)]
    margin = spread = None
    if len(set(counts)) == 1 and counts[0] > top_k:
        a = np.array(weights)
        rank = sorted(range(counts[0]), key=lambda k: (-a[:, k].mean(), k))
        inside, outside = rank[top_k - 1], rank[top_k]
        margin = float(a[:, inside].mean() - a[:, outside].mean())
        spread = float(max(a[:, inside].std(ddof=1), a[:, outside].std(ddof=1)))
    return Stability(seeds=seed_list, jaccard_mean=float(np.mean(pairs)),
                     jaccard_min=float(np.min(pairs)), top_k=top_k, n_superpixels=counts,
                     cut_margin=margin, cut_spread=spread)


def trust_figures(model, image: np.ndarray, explanation: LimeExplanation | None = None, *,
                  gradcam: GradCam | None = None, seeds: int = 5, steps: int | None = None,
                  random_seed: int = 0) -> dict:
    """Deletion areas of LIME's, Grad-CAM's and a random order, and LIME's stability, as plain numbers.

    Parameters
    ----------
    model, image : as explain_lime.
    explanation, gradcam : reused when given (their label, LIME settings and fill are followed
        throughout); without them, made with the dashboard's settings.
    seeds, steps : for `stability` and `deletion_curve`.
    random_seed : the random order's seed.

    Returns
    -------
    dict
        JSON-ready: label, deletion areas and curves, the fill, stability, seconds.
    """
    t0 = time.perf_counter()
    if explanation is None:
        explanation = explain_lime(model, image)
    label = explanation.label
    if gradcam is None or gradcam.label != label:
        gradcam = grad_cam(model, image, label=label)
    segments = explanation.segments
    n = explanation.n_superpixels
    orders = {
        "lime": lime_order(explanation.weights),
        "gradcam": gradcam_order(gradcam.heatmap, segments),
        "random": random_order(n, random_seed),
    }
    fill = explanation.hide_color  # hidden regions look as they did when LIME was fitted
    deletion = {name: deletion_curve(model, image, segments, order, label, steps=steps, hide_color=fill).to_dict()
                for name, order in orders.items()}
    stab = stability(model, image, label=label, seeds=seeds, first=explanation, **explanation.settings())
    return {
        "label": label, "label_name": CLASSES[label], "n_superpixels": n,
        "deletion_area": {name: curve["area"] for name, curve in deletion.items()},
        "deletion_fill": "superpixel mean" if fill is None else fill, "deletion_curves": deletion,
        "random_seed": random_seed, "stability": stab.to_dict(), "seconds": time.perf_counter() - t0,
    }
