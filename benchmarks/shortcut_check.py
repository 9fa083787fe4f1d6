"""Where does the default model look? Grad-CAM and LIME mass inside the lungs vs borders/corners.

Why: chest X-ray classifiers can learn shortcuts (burned-in side markers, text, collimation
edges, scanner borders) instead of lung findings. On a seeded sample of the run's own
validation images (half NORMAL, half PNEUMONIA) this measures, for the predicted label:

* Grad-CAM: the share of the heat (resized to the model input) that falls inside a central
  lung box, in the outer border frame and in the four corner squares, and where its peak lies;
* LIME: the same shares for the positive superpixel weight (evidence for the predicted label);
  superpixels are SLIC by default (a few dozen at 128 px) because quickshift gives ~10 large
  ones that straddle lung and border.

Each share is shown beside the region's share of the image area, which is what a heat spread
evenly would give. Regions, as fractions of height/width: lung box rows 0.10-0.80, columns
0.12-0.88 (the lung fields on these squashed pediatric films, with the mediastinum); border =
the outer 10 % frame; corners = four 15 % x 15 % squares (where side markers usually sit).

Usage: python benchmarks/shortcut_check.py [--run default] [--n 40] [--lime-samples 1000]
Writes benchmarks/reports/shortcut_check.md and .json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xray_core import explain, fileio, imaging, runs  # noqa: E402
from xray_core.architectures import last_conv_layer_name  # noqa: E402
from xray_core.model import load_model  # noqa: E402

LUNG_ROWS = (0.10, 0.80)
LUNG_COLS = (0.12, 0.88)
BORDER = 0.10
CORNER = 0.15
REPORT = ROOT / "benchmarks" / "reports" / "shortcut_check.md"


def region_masks(shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Boolean (h, w) masks for the lung box, the border frame and the corner squares."""
    h, w = shape
    rows = (np.arange(h) + 0.5) / h
    cols = (np.arange(w) + 0.5) / w
    r, c = np.meshgrid(rows, cols, indexing="ij")
    lung = (r >= LUNG_ROWS[0]) & (r < LUNG_ROWS[1]) & (c >= LUNG_COLS[0]) & (c < LUNG_COLS[1])
    border = (r < BORDER) | (r >= 1 - BORDER) | (c < BORDER) | (c >= 1 - BORDER)
    corner = ((r < CORNER) | (r >= 1 - CORNER)) & ((c < CORNER) | (c >= 1 - CORNER))
    return {"lung_box": lung, "border": border, "corners": corner}


def shares(mass: np.ndarray, masks: dict[str, np.ndarray]) -> dict[str, float] | None:
    """Share of a non-negative map's total inside each region (None when the map is all zero)."""
    mass = np.clip(np.asarray(mass, np.float64), 0, None)
    total = float(mass.sum())
    if total <= 0:
        return None
    out = {name: float(mass[m].sum() / total) for name, m in masks.items()}
    # The peak is the centroid of the pixels at the maximum: for Grad-CAM that is the argmax; for
    # LIME's piecewise-constant map it is the middle of the top superpixel, not its first pixel.
    rows, cols = np.nonzero(mass >= mass.max())
    peak = (int(round(rows.mean())), int(round(cols.mean())))
    for name, m in masks.items():
        out[f"peak_in_{name}"] = bool(m[peak])
    return out


def sample_validation(run: runs.Run, data_root: str, n: int, seed: int):
    """n validation images of the run's own split (its stored list), half per class, seeded."""
    import pandas as pd

    from xray_core import evaluation

    paths, labels = evaluation.validation_rows(run, data_root)
    val = pd.DataFrame({"path": paths, "label": labels, "filename": [Path(p).name for p in paths]})
    rng = np.random.default_rng(seed)
    picks = []
    for label in (0, 1):
        rows = val[val["label"] == label]
        take = min(len(rows), n // 2 + (n % 2 if label == 1 else 0))
        picks.append(rows.iloc[np.sort(rng.choice(len(rows), size=take, replace=False))])
    return pd.concat(picks, ignore_index=True)


def _summary(values: list[dict], key: str) -> dict:
    arr = np.array([v[key] for v in values if v is not None], dtype=np.float64)
    if arr.size == 0:
        return {"mean": None, "median": None, "n": 0}
    return {"mean": float(arr.mean()), "median": float(np.median(arr)), "n": int(arr.size)}


def _row(name: str, results: list[dict], masks: dict, key: str) -> str:
    vals = [r[key] for r in results]
    cells = []
    for region in ("lung_box", "border", "corners"):
        s = _summary(vals, region)
        cells.append("n/a" if s["mean"] is None else f"{100 * s['mean']:.1f} / {100 * s['median']:.1f}")
    peaks = [v for v in vals if v is not None]
    peak_cells = [f"{sum(v[f'peak_in_{r}'] for v in peaks)}/{len(peaks)}" for r in ("lung_box", "border", "corners")]
    return f"| {name} | " + " | ".join(cells) + " | " + " | ".join(peak_cells) + " |"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="default", help="run id (default: the bundled default model)")
    p.add_argument("--runs-dir", type=Path, default=runs.DEFAULT_RUNS_DIR)
    p.add_argument("--data", type=Path, help="dataset folder (default: the one the run trained on)")
    p.add_argument("--n", type=int, default=40, help="validation images, half per class (default 40)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lime-samples", type=int, default=1000, help="0 skips LIME")
    p.add_argument("--segmentation", default="slic", choices=explain.SEGMENTATIONS,
                   help="LIME superpixels (default slic: a few dozen on a 128 px input, finer than "
                        "quickshift's ~10, so regions can be told apart)")
    p.add_argument("--report", type=Path, default=REPORT)
    args = p.parse_args(argv)

    run = runs.load_run(args.run, root=args.runs_dir)
    model = load_model(run)
    data_root = str(args.data) if args.data else run.config["data_root"]
    sample = sample_validation(run, data_root, args.n, args.seed)
    masks = region_masks(model.input_size)
    area = {name: float(m.mean()) for name, m in masks.items()}

    results = []
    t0 = time.perf_counter()
    for i, row in enumerate(sample.itertuples(index=False)):
        gray = imaging.decode(row.path)
        cam = explain.grad_cam(model, gray)
        entry = {"filename": row.filename, "label": int(row.label), "predicted": cam.predicted_label,
                 "probability": cam.probability, "gradcam": shares(cam.heat_at(model.input_size), masks)}
        if args.lime_samples:
            lime = explain.explain_lime(model, gray, seed=args.seed, **explain.lime_settings(
                "seed", num_samples=args.lime_samples, segmentation=args.segmentation))
            entry["lime_positive"] = shares(lime.weight_map(), masks)
            entry["lime_superpixels"] = lime.n_superpixels
        results.append(entry)
        print(f"{i + 1}/{len(sample)} {row.filename} p={cam.probability:.3f}", flush=True)
    seconds = time.perf_counter() - t0

    correct = sum(int(r["predicted"] == r["label"]) for r in results)
    lines = [
        f"# Shortcut check: where run `{run.run_id}` looks",
        "",
        f"Reproduce: `python benchmarks/shortcut_check.py --run {args.run} --n {args.n} "
        f"--lime-samples {args.lime_samples} --segmentation {args.segmentation} --seed {args.seed}` "
        f"({seconds:.0f} s on this machine, shared CPU).",
        "",
        f"{len(results)} validation images of the run's own patient-level split ({sum(r['label'] == 0 for r in results)} "
        f"NORMAL, {sum(r['label'] == 1 for r in results)} PNEUMONIA, seeded), explained for the label predicted "
        f"at the operating threshold ({correct}/{len(results)} correct). Model input {model.input_size[0]}x"
        f"{model.input_size[1]}; Grad-CAM layer `{last_conv_layer_name(model.members[0])}`"
        f" of each of its {model.n_members} network(s).",
        "",
        f"Regions: lung box = rows {LUNG_ROWS[0]:.2f}-{LUNG_ROWS[1]:.2f}, columns {LUNG_COLS[0]:.2f}-"
        f"{LUNG_COLS[1]:.2f} of the image ({100 * area['lung_box']:.0f} % of its area); border = outer "
        f"{100 * BORDER:.0f} % frame ({100 * area['border']:.0f} %); corners = four {100 * CORNER:.0f} % squares "
        f"({100 * area['corners']:.0f} %). A map spread evenly would put exactly those area shares in each.",
        "",
        "| map | lung box % (mean / median) | border % | corners % | peak in lung box | peak in border | peak in corner |",
        "|---|---|---|---|---|---|---|",
        f"| uniform (area) | {100 * area['lung_box']:.1f} | {100 * area['border']:.1f} | {100 * area['corners']:.1f} | | | |",
        _row("Grad-CAM, all", results, masks, "gradcam"),
    ]
    for label, name in ((0, "NORMAL"), (1, "PNEUMONIA")):
        lines.append(_row(f"Grad-CAM, true {name}", [r for r in results if r["label"] == label], masks, "gradcam"))
    if args.lime_samples:
        lines.append(_row(f"LIME positive weight ({args.lime_samples} samples, {args.segmentation})", results, masks,
                          "lime_positive"))
        n_sp = [r["lime_superpixels"] for r in results]
        lines += ["", f"LIME superpixels per image: median {int(np.median(n_sp))} (min {min(n_sp)}, max {max(n_sp)})."]
    empty = sum(r["gradcam"] is None for r in results)
    if empty:
        lines += ["", f"{empty} image(s) had an all-zero Grad-CAM map (no positive evidence) and are left out."]
    text = "\n".join(lines) + "\n"
    fileio.atomic_write_text(args.report, text)
    fileio.atomic_write_json(args.report.with_suffix(".json"),
                           {"run": run.run_id, "regions": {"lung_rows": LUNG_ROWS, "lung_cols": LUNG_COLS,
                                                           "border": BORDER, "corner": CORNER, "area": area},
                            "seconds": seconds, "images": results})
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
