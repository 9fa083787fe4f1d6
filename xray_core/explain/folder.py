"""`explain RUN IMAGE --out DIR`: the four LIME panels, Grad-CAM and explanation.json on disk."""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

from xray_core.explain.faithfulness import trust_figures
from xray_core.explain.gradcam import grad_cam
from xray_core.explain.lime import CLASSES, explain_lime, lime_settings
from xray_core.explain.panels import lime_panels, make_overlay, png_bytes


PANEL_FILES = {
    "full": "lime_full.png",
    "partial": "lime_partial.png",
    "pros_cons": "lime_pros_cons.png",
    "heatmap": "lime_heatmap.png",
}
GRADCAM_FILE = "gradcam.png"
JSON_FILE = "explanation.json"


def explain_to_folder(run, image_path: str | os.PathLike, out_dir: str | os.PathLike, *, recipe: str = "dashboard",
                      num_samples: int | None = None, segmentation: str | None = None, seed: int = 0, label=None,
                      stability_seeds: int = 5) -> dict:
    """Write the four LIME panels, the Grad-CAM overlay and explanation.json into a folder.

    Parameters
    ----------
    run : a run id, run folder, `runs.Run` or loaded `Model`.
    image_path : the film (PNG, JPEG, BMP, TIFF or DICOM).
    out_dir : created when absent; the files in PANEL_FILES, GRADCAM_FILE and JSON_FILE are written.
    recipe, num_samples, segmentation : LIME's settings (`lime_settings`), by default Diagnose's.
    seed, label : as explain_lime.
    stability_seeds : seeds of the stability figure in the trust block.

    Returns
    -------
    dict
        What explanation.json holds: the prediction, LIME's weights and settings, Grad-CAM, trust.
    """
    from xray_core import fileio, imaging
    from xray_core.model import load_model

    gray = imaging.decode(Path(image_path))
    out = Path(out_dir)
    t = time.perf_counter()
    model = load_model(run)
    model.predict_proba(model.preprocess(gray)[None])  # loads the networks, so that LIME's time below is LIME's
    load_seconds = time.perf_counter() - t
    exp = explain_lime(model, gray, label=label, seed=seed,
                       **lime_settings(recipe, num_samples=num_samples, segmentation=segmentation))
    panels = lime_panels(gray, exp)
    cam = grad_cam(model, gray, label=exp.label)
    overlay = make_overlay(gray, cam.heatmap)
    trust = trust_figures(model, gray, exp, gradcam=cam, seeds=stability_seeds, random_seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    for key, name in PANEL_FILES.items():
        fileio.atomic_write_bytes(out / name, png_bytes(getattr(panels, key)))
    fileio.atomic_write_bytes(out / GRADCAM_FILE, png_bytes(overlay))
    report = {
        "run_id": model.run_id,
        "image": os.fspath(image_path),
        "image_shape": list(gray.shape),
        "prediction": {
            "probability_pneumonia": exp.probability,
            "threshold": model.threshold,
            "predicted_label": exp.predicted_label,
            "predicted_label_name": CLASSES[exp.predicted_label],
        },
        "lime": {**exp.to_dict(), "heatmap_legend": dataclasses.asdict(panels.legend)},
        "model_load_seconds": load_seconds,
        "gradcam": {"layer": cam.layer, "label": cam.label, "heatmap_shape": list(cam.heatmap.shape),
                    "seconds": cam.seconds},
        "trust": trust,
        "files": [*PANEL_FILES.values(), GRADCAM_FILE],
    }
    fileio.atomic_write_json(out / JSON_FILE, report)
    return report


def _cmd_explain(args: argparse.Namespace) -> int:
    from xray_core import runs

    run = runs.load_run(args.run, root=args.runs_dir)
    report = explain_to_folder(run, args.image, args.out_dir, recipe=args.recipe, num_samples=args.samples,
                               segmentation=args.segmentation, seed=args.seed, label=args.label,
                               stability_seeds=args.stability_seeds)
    if args.json:
        from xray_core.console import json_line

        json_line({"run": run.run_id, "image": str(args.image), "out_dir": str(args.out_dir),
                   "files": [*report["files"], JSON_FILE], "prediction": report["prediction"],
                   "trust": report["trust"]})
        return 0
    lime = report["lime"]
    trust = report["trust"]
    print(f"{run.run_id}: P(pneumonia) = {report['prediction']['probability_pneumonia']:.3f} "
          f"-> {report['prediction']['predicted_label_name']}; explained {lime['label_name']} "
          f"with {lime['n_superpixels']} superpixels, R^2 {lime['score_r2']:.2f}, "
          f"{lime['seconds']:.2f} s")
    areas = trust["deletion_area"]
    print(f"deletion area (lower is more faithful): LIME {areas['lime']:.3f}, "
          f"Grad-CAM {areas['gradcam']:.3f}, random {areas['random']:.3f}; "
          f"top-5 stability (Jaccard over {len(trust['stability']['seeds'])} seeds) "
          f"{trust['stability']['jaccard_mean']:.2f}")
    print(f"wrote {', '.join(report['files'])} and {JSON_FILE} to {args.out_dir}")
    return 0
