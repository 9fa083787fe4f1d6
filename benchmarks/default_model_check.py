"""Confidence intervals for the bundled default model, and the retrain check against them.

Why: a single validation figure says nothing about how far a fresh training could land from
it. This script (1) rescores the default run on its own patient-level validation split,
checks the scores reproduce metrics.json, and stores 95 % percentile-bootstrap intervals
(`xray_core.metrics.bootstrap_ci`, images resampled) as metrics.json["validation_ci95"];
(2) with --retrain, reads an independent retrain's validation metrics (another seed, so
another split and initialisation) and reports whether each lies inside those intervals.

Usage:
    python benchmarks/default_model_check.py                     # CIs into trained_models/default
    python benchmarks/default_model_check.py --retrain /tmp/retrain/retrain-seed0 --retrain /tmp/retrain/retrain-seed1
Writes benchmarks/reports/default_model_check.md (and .json).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xray_core import data, metrics, runs  # noqa: E402

FIGURES = ("roc_auc", "sensitivity", "specificity", "accuracy")
REPORT = ROOT / "benchmarks" / "reports" / "default_model_check.md"


def validation_scores(run: runs.Run, data_root: str | None = None):
    """(labels, pneumonia scores) on the run's own validation split, rebuilt from its config."""
    cfg = run.config
    split = cfg["split"]
    df = data.index_dataset(data_root or cfg["data_root"])
    _, val = data.split_train(df, method=split["method"], val_fraction=split["val_fraction"], seed=int(cfg["seed"]))
    loaded = data.load_images(val["path"].tolist(), size=run.image_size, channels=run.channels)
    y = val["label"].to_numpy()[loaded.ok].astype(int)
    return y, run.predict_scores(loaded.images, batch_size=256)


def confidence_intervals(run: runs.Run, n_boot: int, seed: int, data_root: str | None = None) -> dict:
    y, scores = validation_scores(run, data_root)
    stored = run.metrics["validation"]
    again = metrics.binary_metrics(y, scores, threshold=run.threshold)
    for key in FIGURES:
        if abs(float(again[key]) - float(stored[key])) > 2e-3:
            raise SystemExit(f"Rescoring does not reproduce metrics.json: {key} {again[key]:.4f} vs "
                             f"{stored[key]:.4f}. Check the data folder and the library version.")
    ci = metrics.bootstrap_ci(y, scores, threshold=run.threshold, n_boot=n_boot, seed=seed)
    ci = {k: {kk: float(vv) for kk, vv in v.items()} for k, v in ci.items()}
    return {"level": 0.95, "n_boot": n_boot, "seed": seed, "resampled": "images", "n": int(len(y)), **ci}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="default")
    p.add_argument("--runs-dir", type=Path, default=runs.DEFAULT_RUNS_DIR)
    p.add_argument("--data", help="dataset folder (default: the one the run trained on)")
    p.add_argument("--n-boot", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--retrain", type=Path, action="append", default=[],
                   help="folder of an independent retrain run to check (repeatable)")
    p.add_argument("--report", type=Path, default=REPORT)
    args = p.parse_args(argv)

    run = runs.load_run(args.run, root=args.runs_dir)
    ci = (run.metrics or {}).get("validation_ci95")
    if ci is None or ci.get("n_boot") != args.n_boot or ci.get("seed") != args.seed:
        ci = confidence_intervals(run, args.n_boot, args.seed, args.data)
        current = runs.read_json(run.path / runs.METRICS_FILE)
        current["validation_ci95"] = ci
        runs.atomic_write_json(run.path / runs.METRICS_FILE, current)
    val = run.metrics["validation"]
    lines = [
        f"# Default model: validation intervals{' and retrain check' if args.retrain else ''}",
        "",
        f"Run `{run.run_id}` (seed {run.config['seed']}), validation n = {ci['n']} images of its patient-level "
        f"split, operating threshold {run.threshold:.4f}. 95 % percentile bootstrap, {ci['n_boot']} resamples of "
        "images (seed 0); images of one patient are resampled independently, so the intervals are slightly narrow.",
        "",
    ]
    result = {"run": run.run_id, "ci95": ci}
    if args.retrain:
        checks = []
        for folder in args.retrain:
            other = runs.load_run(folder.resolve())
            ov = other.metrics["validation"]
            inside = {k: bool(ci[k]["low"] <= float(ov[k]) <= ci[k]["high"]) for k in FIGURES}
            checks.append({"path": str(folder), "seed": other.config["seed"],
                           "threshold": other.threshold, "validation": {k: float(ov[k]) for k in FIGURES},
                           "inside": inside, "train_seconds": other.metrics.get("train_seconds"),
                           "epochs_run": other.metrics.get("epochs_run")})
        result["retrain"] = checks[0] if len(checks) == 1 else checks
        lines += ["| figure | default | 95 % CI | " + " | ".join(
            f"retrain seed {c['seed']} (threshold {c['threshold']:.4f})" for c in checks) + " |",
            "|" + "---|" * (3 + len(checks))]
        for k in FIGURES:
            cells = [f"{c['validation'][k]:.4f} {'(inside)' if c['inside'][k] else '(OUTSIDE)'}" for c in checks]
            lines.append(f"| {k} | {val[k]:.4f} | {ci[k]['low']:.4f} - {ci[k]['high']:.4f} | " + " | ".join(cells) + " |")
        lines.append("")
        for c in checks:
            lines.append(f"- seed {c['seed']}: {c['epochs_run']} epochs, {c['train_seconds']:.0f} s of training; "
                         + ("the same seed, so the same patient split and initial weights (threaded CPU kernels "
                            "are not bit-reproducible, so the weights still differ)." if c["seed"] == run.config["seed"]
                            else "another seed, so another patient split, initialisation and shuffling."))
        inside_all = all(all(c["inside"].values()) for c in checks)
    else:
        lines += ["| figure | default | 95 % CI |", "|---|---|---|"]
        for k in FIGURES:
            lines.append(f"| {k} | {val[k]:.4f} | {ci[k]['low']:.4f} - {ci[k]['high']:.4f} |")
    text = "\n".join(lines) + "\n"
    runs.atomic_write_text(args.report, text)
    runs.atomic_write_json(args.report.with_suffix(".json"), result)
    print(text)
    return 0 if not args.retrain or inside_all else 3


if __name__ == "__main__":
    sys.exit(main())
