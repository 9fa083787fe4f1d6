"""Presets and ensembles: the bundled default's recipe, trained as members and assembled.

`train_preset("default", data)` trains one run per member (`<run_id>-member<i>`, seeds seed+i,
one shared validation split) with `training.train`, then `assemble_ensemble` makes one run
folder whose model averages them, calibrated and thresholded on the shift-stress validation by
`evaluation.finalize_run`. `xray_core.model.Model` loads it like any run.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from xray_core import fileio, runs
from xray_core.training import Progress, TrainConfig, train

# The recipe of the bundled default, chosen to hold up on new patients: each choice on the
# shift-stress validation (benchmarks/reports/generalization.md holds the ablation behind it).
PRESETS: dict[str, dict] = {
    "default": {
        "arch": "pneumonet", "image_size": 192, "channels": 1, "epochs": 14, "batch_size": 32,
        "learning_rate": 1e-3, "lr_schedule": "cosine", "class_weight": "balanced", "augment": "strong",
        "early_stopping": 6, "selection": "stress", "arch_options": {"widths": [24, 64, 128, 256]},
        "members": 3,
    },
}


def preset_config(name: str, **overrides) -> tuple[dict, int]:
    """(TrainConfig keyword settings, number of ensemble members) of a named preset."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; choose one of: {', '.join(PRESETS)}.")
    settings = dict(PRESETS[name])
    members = int(overrides.pop("members", None) or settings.pop("members", 1))
    settings.pop("members", None)
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return settings, members


def train_preset(name: str, data_root: str | os.PathLike, *, run_id: str | None = None,
                 runs_root: str | os.PathLike | None = None, progress: Progress | None = None,
                 members: int | None = None, seed: int = 0, **overrides) -> Path:
    """Train a preset: one run per member (`<run_id>-member<i>`, seeds seed+i, one shared
    validation split), then assemble them into the run `<run_id>` (an ensemble when members > 1).

    Rerunning the same command continues where it stopped: completed members are reused and an
    interrupted one resumes from its last epoch.
    """
    settings, k = preset_config(name, members=members, **overrides)
    run_id = run_id or runs.new_run_id(f"{name}-ensemble", runs_root, create=False)
    runs.validate_run_id(run_id)
    member_dirs = []
    for i in range(k):
        member_id = f"{run_id}-member{i}"
        path = runs.run_path(member_id, runs_root)
        state = runs.read_run_info(path).state if path.is_dir() else None
        if state == "completed" and (path / runs.MODEL_FILE).is_file():
            member_dirs.append(path)
            continue
        if state is not None and (path / runs.CHECKPOINT_FILE).is_file():
            member_dirs.append(train(TrainConfig(resume=member_id, runs_root=runs_root), progress=progress))
            continue
        member_dirs.append(train(TrainConfig(
            data_root=data_root, seed=seed + i, split_seed=seed, run_id=member_id, runs_root=runs_root,
            **settings), progress=progress))
    return assemble_ensemble(member_dirs, run_id=run_id, runs_root=runs_root, progress=progress,
                             preset=name)


def assemble_ensemble(member_dirs, *, run_id: str, runs_root: str | os.PathLike | None = None,
                      progress: Progress | None = None, preset: str | None = None,
                      bundled: bool = False) -> Path:
    """One run folder from trained member runs: their networks (member-<i>.keras), member 0's
    history, a config naming the members; then calibrated, thresholded and reported on the shared
    validation split under shift stress (`evaluation.finalize_run`). Members must share the input
    and the validation split."""
    from xray_core import evaluation, splits
    from xray_core import model as model_mod

    target = runs.run_path(run_id, runs_root)
    if evaluation.is_bundled(target):
        raise ValueError(f"The run {run_id!r} ships with the project and is not replaced; give the new ensemble "
                         "another --run-id.")
    member_dirs = [Path(p) for p in member_dirs]
    configs = [fileio.read_json(p / runs.CONFIG_FILE) for p in member_dirs]
    keys = [(c["image_size"], c["channels"], json_key(c.get("split")), c["data_root"]) for c in configs]
    if len(set(keys)) != 1:
        raise ValueError("Ensemble members must share image size, channels, validation split and dataset; "
                         f"got {keys}.")
    staging = target.parent / f".assembling-{run_id}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    names = []
    for i, p in enumerate(member_dirs):
        name = runs.MODEL_FILE if i == 0 else f"member-{i}.keras"
        shutil.copy2(p / runs.MODEL_FILE, staging / name)
        names.append(name)
    for f in (runs.HISTORY_FILE, splits.VALIDATION_FILE, runs.SKIPPED_FILE):
        if (member_dirs[0] / f).is_file():
            shutil.copy2(member_dirs[0] / f, staging / f)
    cfg = dict(configs[0])
    cfg.update(run_id=run_id, preset=preset, seed=[c["seed"] for c in configs],
               epochs=[c["epochs"] for c in configs],  # each member's own (they may differ)
               members=[{"run_id": p.name, "seed": c["seed"],
                         "best_epoch": (fileio.read_json(p / runs.METRICS_FILE) or {}).get("best_epoch"),
                         "epochs_run": (fileio.read_json(p / runs.METRICS_FILE) or {}).get("epochs_run"),
                         "train_seconds": (fileio.read_json(p / runs.METRICS_FILE) or {}).get("train_seconds")}
                        for p, c in zip(member_dirs, configs)],
               created=runs.now_iso())
    fileio.atomic_write_json(staging / runs.CONFIG_FILE, cfg)
    fileio.atomic_write_json(staging / runs.STATUS_FILE, {"state": "completed", "updated": runs.now_iso()})
    member_metrics = [fileio.read_json(p / runs.METRICS_FILE) for p in member_dirs]
    fileio.atomic_write_json(staging / runs.METRICS_FILE, {
        "train_seconds": round(sum(float(m.get("train_seconds") or 0) for m in member_metrics), 3),
        "params": int(sum(int(m.get("params") or 0) for m in member_metrics)),
        "epochs_run": [m.get("epochs_run") for m in member_metrics],
        "selection": member_metrics[0].get("selection"),
    })
    model_mod.write_spec(staging, members=names, input_size=(cfg["image_size"], cfg["image_size"]),
                         channels=int(cfg["channels"]), threshold=0.5, extra={"bundled": bool(bundled)})
    if target.exists():
        old = target.parent / f".replaced-{run_id}-{os.getpid()}"
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old)
    else:
        os.replace(staging, target)
    evaluation.finalize_run(target, progress=progress)
    return target


def json_key(value) -> str:
    return json.dumps(value, sort_keys=True)
