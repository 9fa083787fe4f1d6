"""Train and ship the seed study's four architectures as reference runs, and report them beside the
seed's own figures.

The seed study reported "recall" on a leaky image-level split (several images of one patient on
both sides), micro-averaged over two one-hot columns. These runs train the same four networks
with the seed's settings (100 px, Adam 1e-3, its epochs and batch sizes, no augmentation) on
this project's patient-level split, with one gray channel (the seed copied gray into 3), model 3
with balanced class weights (the fix for its collapse; the probe behind it is frozen in
benchmarks/reports/seed_model3_probe.json). Shipping a run prepares it for
`trained_models/seed-<arch>/`: model file without optimizer state, no absolute path, a model card.

    # train, one after the other (each a normal `python -m xray_core train` run)
    python -m tools.seed_runs --launch --data ../shared/data/chest_xray
    # after `python -m xray_core evaluate seed-<arch> --stress`: cards, shipped files, the report
    python -m tools.seed_runs --ship

The report goes to benchmarks/reports/seed_models.md (+ .json).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from xray_core import fileio, runs

ROOT = Path(__file__).resolve().parents[1]

SEED_ARCHS = ("baseline", "model2", "model3", "model4")
SEED_EPOCHS = {"baseline": 5, "model2": 5, "model3": 10, "model4": 15}
SEED_BATCH = {"baseline": 32, "model2": 32, "model3": 64, "model4": 64}
# Departures from the seed's recipe, by architecture (the one for model 3 is its fix).
CLASS_WEIGHT = {"model3": "balanced"}
REPORT = ROOT / "benchmarks" / "reports" / "seed_models.md"
PROBE_REPORT = ROOT / "benchmarks" / "reports" / "seed_model3_probe.json"
SHIPPED_FILES = ("config.json", "status.json", "history.csv", "metrics.json", "model.keras", "model.json",
                 "MODEL_CARD.md", "gate.json", "gate.npz", "conformal.json", "seen_hashes.txt", "validation.csv")

# The seed notebook's printed figures (shared/seed/NOTES.md sections 2 and 4). "val recall" is
# Keras' micro recall over both one-hot columns on the seed's image-level 25 % split; model 3's
# README figure of 95.39 % is really precision (its true val recall is 94.88 %). Holdout = the
# official 624-image test split, which this project never sees.
SEED_FIGURES = {
    "baseline": {"val_recall": 0.9702, "minutes": 1.630, "epochs": 5, "holdout": None},
    "model2": {"val_recall": 0.9717, "minutes": 2.386, "epochs": 5, "holdout": None},
    "model3": {"val_recall": 0.9488, "minutes": 12.065, "epochs": 10, "holdout": 0.8830},
    "model4": {"val_recall": 0.9763, "minutes": 30.330, "epochs": 15, "holdout": 0.8478},
}
# The seed's own models, reproduced with the seed's code and measured on new patients (the
# official test split) by the maintainers, as stated in issue 14 (accuracy, sensitivity,
# specificity, AUC). Not measured by this project.
SEED_NEW_PATIENTS = {
    "baseline": (0.787, 0.985, 0.457, 0.920),
    "model3": (0.779, 0.972, 0.457, 0.873),
}

DESCRIPTIONS = {
    "baseline": "one 5x5 convolution (32 filters), 2x2 pooling, Dense 16, two sigmoid outputs",
    "model2": "one wider 5x5 convolution (128 filters), 4x4 pooling, Dense 32 and 16, two sigmoid outputs",
    "model3": ("a 5x5 convolution (256 filters), per-pixel Dense 128, 4x4 pooling, dropout, per-pixel Dense 64, "
               "Dense 32, 16 and a sigmoid Dense 16, two sigmoid outputs (the model the seed's README picked)"),
    "model4": ("three convolutions (256, 128, 64 filters) with per-pixel Dense layers, pooling and dropout "
               "between them, Dense 32 and 16, two sigmoid outputs (the seed's deepest)"),
}


def run_id(arch: str) -> str:
    return f"seed-{arch}"


def train_command(arch: str, data: str | Path, epochs: int, seed: int = 0) -> list[str]:
    cmd = ["python", "-m", "xray_core", "train", "--arch", arch, "--data", str(data), "--epochs", str(epochs),
           "--batch-size", str(SEED_BATCH[arch]), "--image-size", "100", "--channels", "1", "--lr", "0.001",
           "--seed", str(seed), "--run-id", run_id(arch), "--quiet"]
    if arch in CLASS_WEIGHT:
        cmd[-3:-3] = ["--class-weight", CLASS_WEIGHT[arch]]
    return cmd


def launch(arch: str, data: Path, epochs: int, runs_dir: Path, seed: int) -> int:
    """One seed-style training through the project's CLI, in its own process."""
    cmd = train_command(arch, data, epochs, seed) + ["--runs-dir", str(runs_dir)]
    cmd[0] = sys.executable
    print("$", " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=ROOT)


# ------------------------------------------------------------------------------ shipping a run


def _relative_data_root(value):
    """A dataset path made relative to the project root (committed files hold no absolute path)."""
    if not isinstance(value, str) or not os.path.isabs(value):
        return value
    return Path(os.path.relpath(os.path.normpath(value), ROOT)).as_posix()


def _scrub(obj):
    """Every data_root in a JSON tree made relative; other values unchanged."""
    if isinstance(obj, dict):
        return {k: (_relative_data_root(v) if k == "data_root" else _scrub(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_scrub(v) for v in obj]
    return obj


def relative_paths(csv_file: Path, data_root: str | None) -> None:
    """Image paths in a predictions file made relative to the dataset folder; refuses to leave
    an absolute path behind."""
    import pandas as pd

    frame = pd.read_csv(csv_file)
    base = Path(os.path.normpath(os.path.join(ROOT, data_root))) if data_root else None

    def fix(p: str) -> str:
        q = Path(os.path.normpath(p))
        if not q.is_absolute():
            return p
        if base is not None and q.is_relative_to(base):
            return q.relative_to(base).as_posix()
        raise SystemExit(f"{csv_file} holds an absolute path outside the dataset folder: {p}")

    frame["path"] = [fix(str(p)) for p in frame["path"]]
    fileio.atomic_write_text(csv_file, frame.to_csv(index=False))


def add_seed_cut(path: Path) -> None:
    """metrics.json "validation_at_0.5": the seed's 0.5 cut on the network's own (uncalibrated)
    output, from the saved calibrated scores. Platt scaling sigmoid(logit(p) / T + b) is monotone,
    so raw p >= 0.5 exactly when the calibrated score >= sigmoid(b)."""
    import math

    from xray_core import metrics as metrics_mod

    m = fileio.read_json(path / runs.METRICS_FILE)
    scores = runs.read_predictions(path, "validation")
    spec = fileio.read_json(path / "model.json") if (path / "model.json").is_file() else {}
    if "validation_at_0.5" in m or scores is None:
        return
    cut = 1 / (1 + math.exp(-float(spec.get("bias") or 0.0)))
    entry = dict(metrics_mod.binary_metrics(scores[0], scores[1], threshold=cut), n=int(len(scores[0])))
    entry.update(threshold=0.5, note="the seed's 0.5 cut on the uncalibrated output "
                                     f"(calibrated score >= {cut:.4f})")
    fileio.atomic_write_json(path / runs.METRICS_FILE, dict(m, **{"validation_at_0.5": entry}))


def strip_optimizer(path: Path) -> tuple[int, int]:
    """Re-save model.keras without optimizer state (loaded uncompiled, safe_mode on); the scores
    must not change. Returns (bytes before, bytes after)."""
    import keras
    import numpy as np

    import zipfile

    before = path.stat().st_size
    with zipfile.ZipFile(path) as archive:
        if not (json.loads(archive.read("config.json")).get("compile_config") or {}).get("optimizer"):
            return before, before  # already saved without optimizer state: leave the bytes alone
    from xray_core.model import load_network

    model = load_network(path)
    tmp = path.with_name(f".{path.stem}.strip.tmp.keras")
    model.save(tmp)
    again = keras.models.load_model(tmp, safe_mode=True, compile=False)
    x = np.random.default_rng(0).uniform(0, 255, (4, *model.inputs[0].shape[1:])).astype("float32")
    if not np.allclose(np.asarray(model(x)), np.asarray(again(x)), atol=1e-6):
        tmp.unlink()
        raise RuntimeError(f"re-saving {path} changed its outputs; left it as it was.")
    os.replace(tmp, path)
    return before, path.stat().st_size


def _history(path: Path) -> list[dict]:
    with open(path / runs.HISTORY_FILE, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _f(v, digits=3) -> str:
    return "n/a" if v is None else f"{float(v):.{digits}f}"


def _ci(point, ci: dict | None) -> str:
    if point is None:
        return "n/a"
    if not ci:
        return f"{point:.3f}"
    return f"{point:.3f} ({ci['low']:.3f}-{ci['high']:.3f})"


def card(arch: str, path: Path, notes: dict[str, str]) -> str:
    """The model card of a shipped seed run, from its files."""
    from xray_core import health

    cfg = fileio.read_json(path / runs.CONFIG_FILE)
    m = fileio.read_json(path / runs.METRICS_FILE)
    hist = _history(path)
    val, at05 = m.get("validation") or {}, m.get("validation_at_0.5") or {}
    ci = m.get("validation_ci95") or {}
    scores = runs.read_predictions(path, "validation")
    if not ci and scores is not None:
        from xray_core import metrics as metrics_mod

        ci = metrics_mod.bootstrap_ci(scores[0], scores[1], threshold=float(m["threshold"]), n_boot=2000)
    stress = m.get("stress") or {}
    cal = m.get("calibration") or {}
    counts = cfg.get("counts") or {}
    seed = SEED_FIGURES[arch]
    warnings = health.assess([{k: (float(v) if v not in ("", None) else None) for k, v in r.items()} for r in hist],
                             val_scores=None if scores is None else scores[1], threshold=float(m.get("threshold", 0.5)))
    if at05.get("n") and at05.get("sensitivity") is not None:
        # Collapse at the seed's own 0.5 cut on the uncalibrated output, too.
        n_pos = int(at05.get("tp", 0) + at05.get("fn", 0))
        warnings += [w for w in health.check_collapse(
            [{"epoch": m.get("epochs_run"), "val_sensitivity": at05["sensitivity"],
              "val_specificity": at05["specificity"], "val_auc": at05.get("roc_auc")}],
            n_pneumonia=n_pos, n_normal=int(at05["n"]) - n_pos, threshold=0.5) if w.code not in {x.code for x in warnings}]
    size_kb = (path / runs.MODEL_FILE).stat().st_size / 1024
    lines = [
        f"# Model card: `{run_id(arch)}` (the seed study's `{arch}`)",
        "",
        "> **Research software, not a medical device.** A reference run for comparing the seed study's "
        "architectures; it must not be used to diagnose, triage or treat anyone.",
        "",
        "## Recipe",
        "",
        f"- Architecture: {DESCRIPTIONS[arch]}; {m.get('params', 0):,} parameters; model file {size_kb:,.0f} kB "
        "(weights only, no optimizer state).",
        f"- The seed's settings: {cfg['epochs']} epochs planned (seed: {SEED_EPOCHS[arch]}), batch "
        f"{cfg['batch_size']}, Adam learning rate {cfg['learning_rate']:g}, {cfg['image_size']}x{cfg['image_size']} px, "
        "binary cross-entropy on the seed's two sigmoid outputs, no augmentation. "
        f"Departures: 1 gray channel (the seed copied gray into 3)"
        + ("; balanced class weights (the fix for model 3's collapse, below)" if cfg.get("class_weight") else "")
        + (f"; early stopping with patience {cfg['early_stopping']['patience']}" if cfg.get("early_stopping") else "")
        + ".",
        f"- Epochs run: {m.get('epochs_run')}" + (f" (best epoch kept: {m['best_epoch']})" if m.get("best_epoch") else "")
        + f"; training time {_f(m.get('train_seconds'), 0)} s on 2 shared CPU cores.",
        f"- Data: the official train folder split by patient (seed {cfg['seed']}, 20 % of patients to validation): "
        f"{counts.get('train', {}).get('n', 'n/a')} training images, {counts.get('validation', {}).get('n', 'n/a')} "
        f"validation images ({counts.get('validation', {}).get('pneumonia', 'n/a')} PNEUMONIA), no patient on both "
        "sides. The official test split was never used.",
        f"- Reproduce: `{' '.join(train_command(arch, cfg.get('data_root') or 'data/chest_xray', int(cfg['epochs']), cfg['seed']))}`"
        + (" then `python -m xray_core evaluate " + run_id(arch) + " --stress`" if stress else "") + ".",
    ]
    if notes.get(arch):
        lines += ["", notes[arch]]
    lines += [
        "",
        "## Validation (this project's patient split)",
        "",
        f"Operating threshold **{_f(m.get('threshold'))}** ({m.get('threshold_policy') or m.get('threshold_method', 'n/a')}). "
        "In brackets: bootstrap 95 % intervals (images resampled).",
        "",
        "| | plain validation | stress validation (pooled) |",
        "|---|---|---|",
    ]
    pooled, pooled_ci = stress.get("pooled") or {}, stress.get("pooled_ci95") or {}
    for key, label in (("roc_auc", "ROC AUC"), ("sensitivity", "sensitivity at threshold"),
                       ("specificity", "specificity at threshold")):
        lines.append(f"| {label} | {_ci(val.get(key), ci.get(key))} | "
                     f"{_ci(pooled.get(key), pooled_ci.get(key)) if pooled else 'not computed'} |")
    lines.append(f"| accuracy at threshold | {_ci(val.get('accuracy'), ci.get('accuracy'))} | "
                 f"{_f(pooled.get('accuracy')) if pooled else 'not computed'} |")
    summary = stress.get("summary") or {}
    if summary:
        lines += ["", "Worst single stress change: " + "; ".join(
            f"{label} {_f(summary[key]['worst'])} ({summary[key]['worst_change']})"
            for key, label in (("roc_auc", "AUC"), ("sensitivity", "sensitivity"), ("specificity", "specificity"))
            if key in summary) + ". "
            f"Largest share of correctly called NORMAL films flipped to PNEUMONIA by one change: "
            f"{_f(summary.get('normal_flipped_max'))}."]
        changes = stress.get("changes") or {}
        if changes:
            lines += ["", "| change | AUC | sensitivity | specificity |", "|---|---|---|---|"]
            for name, c in changes.items():
                lines.append(f"| {name} | {_f(c.get('roc_auc'))} | {_f(c.get('sensitivity'))} | {_f(c.get('specificity'))} |")
    if cal:
        fitted = (f"Platt scaling (temperature {_f(cal.get('temperature'))}, bias {_f(cal.get('bias'))})"
                  if cal.get("bias") is not None else f"temperature {_f(cal.get('temperature'))}")
        lines += ["", f"Calibration: {fitted} fitted on {cal.get('fitted_on', 'validation')}; ECE (15 bins) "
                  f"{_f(cal.get('ece'))} after, {_f(cal.get('ece_uncalibrated'))} before"
                  + (f", {_f(cal.get('ece_plain'))} on the plain validation films." if cal.get("ece_plain") is not None
                     else ".")]
    lines += [
        "",
        "At the seed's 0.5 cut on the pneumonia output (plain validation): "
        f"sensitivity {_f(at05.get('sensitivity'))}, specificity {_f(at05.get('specificity'))}, "
        f"accuracy {_f(at05.get('accuracy'))}.",
        "",
        "## The seed's figures beside these",
        "",
        "| figure | this run | the seed |",
        "|---|---|---|",
        f"| the seed's \"recall\" (Keras Recall over both one-hot columns, 0.5) | {_f(m.get('seed_micro_recall'))} "
        f"(patient split) | {_f(seed['val_recall'])} (image-level split, patients on both sides) |",
        f"| holdout \"recall\" (official test split) | not measured (never used here) | "
        f"{_f(seed['holdout'])} |",
    ]
    if arch in SEED_NEW_PATIENTS:
        acc, sens, spec, auc = SEED_NEW_PATIENTS[arch]
        lines.append(f"| the seed's own model on new patients (acc / sens / spec / AUC, issue 14) | not measured "
                     f"here | {acc:.3f} / {sens:.3f} / {spec:.3f} / {auc:.3f} |")
    lines += [
        "",
        "The seed's \"recall\" is the share of images, NORMAL and PNEUMONIA alike, whose true-class output "
        "is above 0.5: close to accuracy, not pneumonia sensitivity, and blind to specificity.",
        "",
        "## Training health",
        "",
        ("No warning: no NaN loss, no collapse onto one class, no chance-level AUC, no stalled or diverging loss."
         if not warnings else "\n".join(f"- {w.text}" for w in warnings)),
        "",
        "## Limits",
        "",
        "- One hospital (Guangzhou Women and Children's Medical Center), children aged 1 to 5, frontal films "
        "only; figures on this validation split overstate what new patients will see (issue 10 measured the "
        "bundled model's specificity falling from 0.99 here to 0.60 on new patients).",
        "- The threshold was chosen on the same validation films it is reported on, so the figures at the "
        "threshold are optimistic.",
        "- The seed's architecture is kept as it was (two independent sigmoid outputs, dense layers on "
        "feature maps); it is a reference point, not a recommended model.",
        f"- Seed {cfg['seed']} only: another seed gives other figures.",
        "",
        "## Data",
        "",
        "Kermany D., Zhang K., Goldbaum M. (2018). *Large Dataset of Labeled Optical Coherence Tomography (OCT) "
        "and Chest X-Ray Images*, Mendeley Data, V3, doi:10.17632/rscbjbr9sj.3, licensed CC BY 4.0.",
    ]
    return "\n".join(lines) + "\n"


def ship(arch: str, runs_dir: Path, notes: dict[str, str]) -> dict:
    """Make a finished seed run ready to commit: model file without optimizer state, data_root
    relative, a model card. Returns sizes."""
    path = runs_dir / run_id(arch)
    status = fileio.read_json(path / runs.STATUS_FILE)
    if status.get("state") != "completed":
        raise SystemExit(f"{run_id(arch)} is {status.get('state')!r}, not completed; finish it first.")
    before, after = strip_optimizer(path / runs.MODEL_FILE)
    add_seed_cut(path)
    data_root = fileio.read_json(path / runs.CONFIG_FILE).get("data_root")
    for name in (runs.CONFIG_FILE, runs.METRICS_FILE):
        fileio.atomic_write_json(path / name, _scrub(fileio.read_json(path / name)))
    for csv_file in path.glob("predictions_*.csv"):
        relative_paths(csv_file, data_root)
    spec_file = path / "model.json"
    if spec_file.is_file():  # shipped: the CLI and the app never rewrite its files in place
        fileio.atomic_write_json(spec_file, dict(fileio.read_json(spec_file), bundled=True))
    fileio.atomic_write_text(path / "MODEL_CARD.md", card(arch, path, notes))
    shipped = [p for p in path.iterdir() if p.name in SHIPPED_FILES or p.name.startswith("predictions_")]
    return {"run": run_id(arch), "model_bytes_before": before, "model_bytes_after": after,
            "shipped_bytes": sum(p.stat().st_size for p in shipped)}


# ------------------------------------------------------------------------------ the report


def summarise(arch: str, runs_dir: Path, path: Path | None = None) -> dict | None:
    """One table row from a finished run folder, or None when the run is missing/unfinished."""
    path = path or runs_dir / run_id(arch)
    if not (path / runs.METRICS_FILE).is_file() or not (path / runs.STATUS_FILE).is_file():
        return None
    m = fileio.read_json(path / runs.METRICS_FILE)
    if fileio.read_json(path / runs.STATUS_FILE).get("state") != "completed" or "validation" not in m:
        return None
    config = fileio.read_json(path / runs.CONFIG_FILE)
    seconds = [float(r["seconds"]) for r in _history(path) if r.get("seconds")]
    at_half = m.get("validation_at_0.5") or {}
    at_t = m["validation"]
    stress = (m.get("stress") or {}).get("pooled") or {}
    worst = ((m.get("stress") or {}).get("summary") or {}).get("specificity") or {}
    return {
        "arch": arch, "label": arch, "epochs": len(seconds), "seed_epochs": SEED_EPOCHS.get(arch),
        "mean_epoch_s": sum(seconds) / len(seconds) if seconds else None,
        "auc": at_t["roc_auc"], "sens_05": at_half.get("sensitivity"), "spec_05": at_half.get("specificity"),
        "acc_05": at_half.get("accuracy"), "micro_recall": m.get("seed_micro_recall"),
        "threshold": m["threshold"], "sens_t": at_t["sensitivity"], "spec_t": at_t["specificity"],
        "stress_auc": stress.get("roc_auc"), "stress_spec": stress.get("specificity"),
        "stress_worst_spec": worst.get("worst"), "n_val": at_t.get("n"), "params": m.get("params"),
        "config": {k: config.get(k) for k in ("image_size", "channels", "batch_size", "class_weight", "augment",
                                              "seed", "split", "learning_rate")},
    }


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * float(v):.1f}"


def table(rows: list[dict]) -> str:
    head = ("| model | epochs run (seed) | mean s/epoch | params | val AUC | sens @0.5 | spec @0.5 | acc @0.5 | "
            "seed micro recall | threshold | sens @t | spec @t | stress AUC | stress spec @t | worst-change spec | "
            "seed: val recall (image split) | seed: holdout recall |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        s = SEED_FIGURES.get(r["arch"], {"val_recall": None, "holdout": None})
        lines.append(
            f"| {r['label']} | {r['epochs']} ({r['seed_epochs'] or '-'}) | {_f(r['mean_epoch_s'], 0)} | {r['params']:,} | "
            f"{r['auc']:.3f} | {_pct(r['sens_05'])} | {_pct(r['spec_05'])} | {_pct(r['acc_05'])} | "
            f"{_pct(r['micro_recall'])} | {r['threshold']:.3f} | {_pct(r['sens_t'])} | {_pct(r['spec_t'])} | "
            f"{_f(r['stress_auc'])} | {_pct(r['stress_spec'])} | {_pct(r['stress_worst_spec'])} | "
            f"{_pct(s['val_recall'])} | {_pct(s['holdout'])} |")
    return "\n".join(lines)


def report(rows: list[dict], missing: list[str], notes: str, probe: list[dict] | None, sizes: list[dict]) -> str:
    import tensorflow as tf

    n_val = next((r["n_val"] for r in rows if r.get("n_val")), None)
    parts = [
        "# The seed's four architectures through this pipeline",
        "",
        "Research software, not a medical device. Data: Kermany et al. 2018 (Mendeley Data V3, CC BY 4.0).",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores shared with other trainings and test suites; "
        f"Python {platform.python_version()}, TensorFlow {tf.__version__}. Commands: "
        "`python -m tools.seed_runs --launch --data ../shared/data/chest_xray` (or the four "
        "`python -m xray_core train` commands on the cards), `python -m xray_core evaluate seed-<arch> --stress`, "
        "then `python -m tools.seed_runs --ship`.",
        "",
        "Settings, as the seed trained them: 100x100 px, Adam 1e-3, binary cross-entropy on the 2-unit sigmoid "
        "head, the seed's batch sizes and epochs, no augmentation, seed 0. Departures: 1 gray channel (the seed "
        "copied gray into 3); model 3 with balanced class weights (its fix); validation is this project's "
        f"patient-level 80/20 split of the official train folder (n = {n_val} images, no patient on both sides), "
        "and pneumonia metrics are computed on the pneumonia column.",
        "",
        table(rows),
        "",
        "Columns: *@0.5* use the seed's 0.5 cut on the pneumonia column; *seed micro recall* is the seed's Keras "
        "`Recall()` over both one-hot columns (roughly accuracy); *@t* uses the run's operating threshold, chosen "
        "on the same validation films (optimistic); *stress* figures are the validation films under the fixed "
        "acquisition changes of `xray_core.stress`, pooled, and the worst single change. *seed:* columns are the "
        "notebook's printed figures (shared/seed/NOTES.md sections 2 and 4) on its leaky image-level split and on "
        "the official test split, which this project does not use. Seconds per epoch were measured while two or "
        "three trainings and other helpers' tests shared the 2 cores: compare them only roughly.",
    ]
    if probe:
        parts += ["", "## Why model 3 collapsed, and the fix", "",
                  "Subset probe (frozen in seed_model3_probe.json: 1,280 training and 400 validation images of the "
                  "patient split, batch 64, seed 0; epoch 0 is the initialisation). *dead dense1*: share of the 32 `dense1` ReLU "
                  "units never positive on the validation images; *saturated dense3*: share of the sigmoid "
                  "`dense3` outputs below 0.01 or above 0.99.", "",
                  "| variant | epoch | val AUC | called PNEUMONIA | score s.d. | dead dense1 | saturated dense3 | s |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in probe:
            parts.append(f"| {r['variant']} | {r['epoch']} | {r['val_auc']:.3f} | {_pct(r['called_pneumonia'])} % | "
                         f"{r['score_std']:.4f} | {_pct(r['dead_dense1'])} % | {_pct(r['saturated_dense3'])} % | "
                         f"{r['seconds'] if r['seconds'] is not None else '-'} |")
    if sizes:
        parts += ["", "Shipped sizes (model file without optimizer state; all shipped files of the run): " + "; ".join(
            f"{s['run']} {s['model_bytes_before'] / 1e6:.1f} -> {s['model_bytes_after'] / 1e6:.1f} MB, "
            f"{s['shipped_bytes'] / 1e6:.1f} MB in all" for s in sizes) + "."]
    if notes:
        parts += ["", notes]
    if missing:
        parts += ["", "Not yet run: " + ", ".join(missing) + "."]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--launch", action="store_true", help="train the runs first (sequentially)")
    p.add_argument("--ship", action="store_true", help="prepare finished runs for committing (cards, no optimizer)")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "chest_xray",
                   help="dataset folder for --launch")
    p.add_argument("--arch", action="append", choices=SEED_ARCHS, help="only this architecture (repeatable)")
    p.add_argument("--epochs", action="append", default=[], metavar="ARCH=N",
                   help="override an architecture's seed epochs, e.g. model4=6 (say so in --notes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs-dir", type=Path, default=runs.DEFAULT_RUNS_DIR)
    p.add_argument("--notes", default="", help="a paragraph appended to the report")
    p.add_argument("--card-note", action="append", default=[], metavar="ARCH=TEXT",
                   help="a paragraph for that architecture's model card (repeatable)")
    p.add_argument("--report", type=Path, default=REPORT)
    args = p.parse_args(argv)

    epochs = dict(SEED_EPOCHS)
    for item in args.epochs:
        arch, _, n = item.partition("=")
        if arch not in SEED_EPOCHS or not n.isdigit() or int(n) < 1:
            p.error(f"--epochs wants ARCH=N with ARCH one of {', '.join(SEED_ARCHS)} and N >= 1; got {item!r}.")
        epochs[arch] = int(n)
    card_notes = {}
    for item in args.card_note:
        arch, _, text = item.partition("=")
        if arch not in SEED_ARCHS or not text:
            p.error(f"--card-note wants ARCH=TEXT with ARCH one of {', '.join(SEED_ARCHS)}; got {item!r}.")
        card_notes[arch] = text
    chosen = args.arch or list(SEED_ARCHS)
    if args.launch:
        for arch in chosen:
            if launch(arch, args.data, epochs[arch], args.runs_dir, args.seed) != 0:
                print(f"training {arch} failed; see {args.runs_dir / run_id(arch)}", file=sys.stderr)
                return 1
    sizes = [ship(arch, args.runs_dir, card_notes) for arch in chosen] if args.ship else []
    rows, missing = [], []
    for arch in SEED_ARCHS:
        row = summarise(arch, args.runs_dir)
        (rows.append(row) if row else missing.append(arch))
    probe = fileio.read_json(PROBE_REPORT) if PROBE_REPORT.is_file() else None
    text = report(rows, missing, args.notes, probe, sizes)
    fileio.atomic_write_text(args.report, text)
    fileio.atomic_write_json(args.report.with_suffix(".json"), {"rows": rows, "sizes": sizes, "probe": probe})
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
