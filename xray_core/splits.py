"""A run's validation films: the list stored in its folder when it was trained, read back the same
way by everything that needs them (finalising the run, fitting its gate, the benchmarks).
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np

from xray_core import fileio, runs

VALIDATION_FILE = "validation.csv"  # the run's validation films: path (relative to data_root), label


def write_validation_list(run_dir: str | os.PathLike, val_df, data_root: str | os.PathLike) -> Path:
    """Store the run's validation split (file list) so every later evaluation reuses it as is."""
    base = Path(data_root).absolute()
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["path", "label"])
    for path, label in zip(val_df["path"], val_df["label"]):
        p = Path(path).absolute()
        writer.writerow([(p.relative_to(base) if p.is_relative_to(base) else p).as_posix(), int(label)])
    return fileio.atomic_write_text(Path(run_dir) / VALIDATION_FILE, out.getvalue())


def validation_rows(run: runs.Run, data_root: str) -> tuple[list[str], np.ndarray]:
    """(paths, labels) of the run's validation films: its stored list, or (older runs) the split
    rebuilt from its config (same method, fraction and seed, hence the same patients)."""
    from xray_core import data

    stored = run.path / VALIDATION_FILE
    if stored.is_file():
        with open(stored, encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
        paths = [str(Path(data_root) / r["path"]) if not os.path.isabs(r["path"]) else r["path"] for r in rows]
        return paths, np.array([int(r["label"]) for r in rows], dtype=int)
    cfg = run.config
    split_cfg = cfg.get("split") or {"method": "patient", "val_fraction": 0.2}
    df = data.index_dataset(data_root)
    seed = split_cfg.get("seed", cfg.get("seed", 0))
    _, val = data.split_train(df, method=split_cfg["method"], val_fraction=split_cfg["val_fraction"],
                              seed=int(seed[0] if isinstance(seed, list) else seed))
    return val["path"].tolist(), val["label"].to_numpy().astype(int)
