"""The generalization ablation: what each part of the default's recipe does under shift stress.

Every row is scored on the same validation films (the default's patient-level split of train/,
stored in its validation.csv), plain and under each change of `xray_core.stress`, and gets its
own temperature and threshold fitted on the pooled stress set (highest specificity with
sensitivity >= 0.95), exactly as a run is finalized. Rows:

- the first default (pneumonet, 128 px, mild augmentation, selected on plain validation AUC),
  read from git history (--first-default COMMIT), as shipped before this recipe;
- each member of the new default alone (pneumonet widened, 192 px, strong framing augmentation,
  cosine schedule, epoch selected on the stress validation);
- the first two members averaged; all members averaged without calibration; all members with
  Platt scaling (the shipped model).

The two single-change runs of the report (one change of the recipe at a time), trained first:
    python -m xray_core train --arch pneumonet --data ../shared/data/chest_xray --image-size 192 \
      --widths 24 64 128 256 --augment mild --epochs 14 --lr-schedule cosine --class-weight balanced \
      --early-stopping 6 --run-id ablation-mild-192
    python -m xray_core train --arch pneumonet --data ../shared/data/chest_xray --image-size 128 \
      --augment strong --epochs 14 --lr-schedule cosine --class-weight balanced --early-stopping 6 \
      --run-id ablation-strong-128

Usage (a few minutes on 2 CPU cores):
    python benchmarks/generalization.py --data ../shared/data/chest_xray \
      --extra-run trained_models/ablation-mild-192 --extra-run trained_models/ablation-strong-128
Writes benchmarks/reports/generalization.md and .json. Nothing in trained_models/ is modified.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xray_core import evaluation, fileio, runs  # noqa: E402
from xray_core import model as model_mod  # noqa: E402

REPORT = ROOT / "benchmarks" / "reports" / "generalization"
FIRST_DEFAULT_COMMIT = "200ccf5"


def _first_default(commit: str, folder: Path) -> Path:
    """The first default's run folder, as committed at `commit`, in a temporary folder."""
    run = folder / "first-default"
    run.mkdir()
    for name in ("model.keras", "config.json", "metrics.json"):
        blob = subprocess.run(["git", "show", f"{commit}:trained_models/default/{name}"], cwd=ROOT,
                              check=True, capture_output=True).stdout
        (run / name).write_bytes(blob)
    return run


def _member_model(path: Path, files: list[str], size: int, channels: int) -> model_mod.Model:
    return model_mod.Model(path, spec={"members": files, "temperature": 1.0, "input_size": [size, size],
                                       "channels": channels})


def _row(name: str, recipe: str, y, raw: dict, minutes: float | None, calibrate: bool = True) -> dict:
    figures, _ = evaluation.stress_figures(y, raw, calibrate=calibrate, n_boot=500)
    s = figures["stress"]
    val = figures["validation"]
    ci = figures["validation_ci95"]
    return {
        "model": name, "recipe": recipe,
        "plain_auc": val["roc_auc"], "plain_auc_ci": [ci["roc_auc"]["low"], ci["roc_auc"]["high"]],
        "plain_sensitivity": val["sensitivity"], "plain_specificity": val["specificity"],
        "stress_auc_pooled": s["pooled"]["roc_auc"],
        "stress_auc_worst": s["summary"]["roc_auc"]["worst"],
        "stress_specificity_pooled": s["pooled"]["specificity"],
        "stress_specificity_pooled_ci": [s["pooled_ci95"]["specificity"]["low"], s["pooled_ci95"]["specificity"]["high"]],
        "stress_sensitivity_pooled": s["pooled"]["sensitivity"],
        "stress_specificity_worst": s["summary"]["specificity"]["worst"],
        "worst_change": s["summary"]["specificity"]["worst_change"],
        "normal_flipped_max": s["summary"]["normal_flipped_max"],
        "ece_stress": figures["calibration"]["ece"], "ece_plain": figures["calibration"]["ece_plain"],
        "temperature": figures["calibration"]["temperature"], "bias": figures["calibration"].get("bias", 0.0),
        "threshold": figures["threshold"],
        "train_minutes": minutes, "changes": s["changes"],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="dataset folder (the train/ split is used)")
    ap.add_argument("--ensemble", type=Path, default=ROOT / "trained_models" / "default",
                    help="the ensemble run folder (default: trained_models/default)")
    ap.add_argument("--first-default", default=FIRST_DEFAULT_COMMIT,
                    help=f"git commit holding the first default (default {FIRST_DEFAULT_COMMIT})")
    ap.add_argument("--extra-run", type=Path, action="append", default=[],
                    help="a single-network run folder trained on the same split, as one more row (e.g. one "
                         "change of the recipe at a time); repeatable")
    ap.add_argument("--out", type=Path, default=REPORT, help="report path without extension")
    args = ap.parse_args(argv)

    started = time.time()
    ens = runs.load_run(args.ensemble)
    cfg = ens.config
    spec = json.loads((ens.path / model_mod.SPEC_FILE).read_text())
    files = spec["members"]
    size, channels = int(cfg["image_size"]), int(cfg["channels"])
    paths, labels = evaluation.validation_rows(ens, str(args.data.absolute()))
    member_minutes = [(m.get("train_seconds") or 0) / 60 for m in cfg.get("members") or []]

    raws = {}
    with tempfile.TemporaryDirectory() as tmp:
        first = _first_default(args.first_default, Path(tmp))
        fcfg = json.loads((first / "config.json").read_text())
        first_model = _member_model(first, ["model.keras"], int(fcfg["image_size"]), int(fcfg["channels"]))
        y, _, raws["first"] = evaluation.raw_stress_scores(first_model, paths, labels)
        first_minutes = json.loads((first / "metrics.json").read_text()).get("train_seconds", 0) / 60
        for i, f in enumerate(files):
            _, _, raws[i] = evaluation.raw_stress_scores(_member_model(ens.path, [f], size, channels), paths, labels)
        extras = []
        for path in args.extra_run:
            ecfg = json.loads((path / "config.json").read_text())
            emodel = _member_model(path, ["model.keras"], int(ecfg["image_size"]), int(ecfg["channels"]))
            _, _, raw = evaluation.raw_stress_scores(emodel, paths, labels)
            emet = json.loads((path / "metrics.json").read_text())
            recipe = (f"pneumonet {(ecfg.get('arch_options') or {}).get('widths') or 'default widths'}, "
                      f"{ecfg['image_size']} px, {ecfg.get('augment')} augmentation, {ecfg.get('selection')} selection")
            extras.append((path.name, recipe, raw, (emet.get("train_seconds") or 0) / 60))

    def mean_of(keys):
        return {c: np.mean([raws[k][c] for k in keys], axis=0) for c in raws[keys[0]]}

    recipe_new = f"pneumonet {cfg.get('arch_options', {}).get('widths')}, {size} px, strong augmentation, stress selection"
    rows = [_row("first default", "pneumonet, 128 px, mild augmentation, plain-AUC selection", y, raws["first"],
                 first_minutes)]
    rows += [_row(name, recipe, y, raw, minutes) for name, recipe, raw, minutes in extras]
    for i in range(len(files)):
        rows.append(_row(f"member {i} alone", recipe_new, y, raws[i],
                         member_minutes[i] if i < len(member_minutes) else None))
    if len(files) > 2:
        rows.append(_row("members 0+1", "mean of two members", y, mean_of([0, 1]), sum(member_minutes[:2])))
    everyone = list(range(len(files)))
    rows.append(_row(f"ensemble of {len(files)}, uncalibrated", "mean of all members, no calibration", y,
                     mean_of(everyone), sum(member_minutes), calibrate=False))
    rows.append(_row(f"ensemble of {len(files)} (shipped)", "mean of all members, Platt-scaled", y,
                     mean_of(everyone), sum(member_minutes)))

    import keras
    import tensorflow as tf

    meta = {"machine": f"{platform.machine()}, {_cpus()} CPUs, no GPU" if not tf.config.list_physical_devices("GPU")
            else platform.machine(),
            "python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "command": "python benchmarks/generalization.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "validation_films": int(len(y)), "normal": int((y == 0).sum()), "pneumonia": int((y == 1).sum()),
            "seconds": round(time.time() - started, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fileio.atomic_write_json(args.out.with_suffix(".json"), {"meta": meta, "rows": rows})
    fileio.atomic_write_text(args.out.with_suffix(".md"), _markdown(meta, rows))
    print(_markdown(meta, rows))
    return 0


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _f(v, d=3):
    return "-" if v is None else f"{v:.{d}f}"


def _markdown(meta: dict, rows: list[dict]) -> str:
    out = ["# Generalization ablation: plain and shift-stress validation", "",
           f"Machine: {meta['machine']}; Python {meta['python']}, TensorFlow {meta['tensorflow']}, Keras "
           f"{meta['keras']}. Command: `{meta['command']}` ({meta['seconds']} s).", "",
           f"Validation: {meta['validation_films']} films ({meta['normal']} NORMAL, {meta['pneumonia']} PNEUMONIA) "
           "from the patient-level split of the official train/ folder; no test image is used. Each row's "
           "calibration (Platt: temperature and bias) and threshold are fitted on the pooled stress set (plain + every change), the threshold "
           "for sensitivity >= 0.95 there. *Stress spec* is the pooled stress set's specificity at that "
           "threshold (95 % interval resampling films), *worst spec* the lowest of any single change, *flipped* "
           "the largest share of NORMAL films called NORMAL plain that one change turns to PNEUMONIA.", "",
           "| model | recipe | plain AUC | stress AUC (pooled / worst) | stress spec (95 % CI) | stress sens "
           "| worst spec (change) | flipped | ECE stress / plain | T, bias | train min |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["stress_specificity_pooled_ci"]
        out.append(f"| {r['model']} | {r['recipe']} | {_f(r['plain_auc'])} | {_f(r['stress_auc_pooled'])} / "
                   f"{_f(r['stress_auc_worst'])} | {_f(r['stress_specificity_pooled'])} ({_f(lo)}-{_f(hi)}) | "
                   f"{_f(r['stress_sensitivity_pooled'])} | {_f(r['stress_specificity_worst'])} "
                   f"({r['worst_change']}) | {_f(r['normal_flipped_max'], 2)} | {_f(r['ece_stress'])} / "
                   f"{_f(r['ece_plain'])} | {_f(r['temperature'], 2)}, {_f(r['bias'], 2)} | {_f(r['train_minutes'], 1)} |")
    shipped = rows[-1]
    out += ["", f"## Per change: {shipped['model']}", "",
            "| change | kind | AUC | sensitivity | specificity | NORMAL flipped |", "|---|---|---|---|---|---|"]
    for name, c in shipped["changes"].items():
        out.append(f"| {name} | {c.get('kind', '-')} | {_f(c['roc_auc'])} | {_f(c['sensitivity'])} | "
                   f"{_f(c['specificity'])} | {_f(c.get('normal_flipped'), 2)} |")
    first = rows[0]
    out += ["", f"## Per change: {first['model']}", "",
            "| change | AUC | sensitivity | specificity | NORMAL flipped |", "|---|---|---|---|---|"]
    for name, c in first["changes"].items():
        out.append(f"| {name} | {_f(c['roc_auc'])} | {_f(c['sensitivity'])} | {_f(c['specificity'])} | "
                   f"{_f(c.get('normal_flipped'), 2)} |")
    out += ["", "Figures on validation films from the same hospital as training (Kermany et al. 2018, CC BY 4.0). "
            "They are not a measurement on new patients; research software, not a medical device.", ""]
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
