"""The four shipped seed runs (issue 14): each beats chance on real validation films by a margin,
none is collapsed onto one class at its operating threshold, and each carries what Diagnose needs."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tests.conftest import REAL_DATA, requires_real_data
from xray_core import imaging
from xray_core.model import load_model
from xray_core.runs import DEFAULT_RUNS_DIR

SEED_RUNS = ("seed-baseline", "seed-model2", "seed-model3", "seed-model4")
PER_CLASS = 30


def _films(run_dir):
    """30 NORMAL and 30 PNEUMONIA films of the run's own validation split (every 7th of each class)."""
    with open(run_dir / "predictions_validation.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    picked = []
    for label in ("0", "1"):
        picked += [r for r in rows if r["label"] == label][::7][:PER_CLASS]
    return [REAL_DATA / r["path"] for r in picked], np.array([int(r["label"]) for r in picked])


@requires_real_data
@pytest.mark.parametrize("run_id", SEED_RUNS)
def test_a_seed_run_beats_chance_and_is_not_collapsed(run_id):
    run_dir = DEFAULT_RUNS_DIR / run_id
    model = load_model(run_dir, cache=False)
    paths, y = _films(run_dir)
    p = model.predict_proba(model.prepare_batch([imaging.decode(f) for f in paths]))
    assert roc_auc_score(y, p) >= 0.9  # chance is 0.5
    called = p >= model.threshold
    # not collapsed: most NORMAL films called NORMAL and most PNEUMONIA films called PNEUMONIA
    assert called[y == 1].mean() >= 0.8 and (~called[y == 0]).mean() >= 0.8


@pytest.mark.parametrize("run_id", SEED_RUNS)
def test_a_seed_run_ships_its_gate_sets_and_seen_files(run_id):
    run_dir = DEFAULT_RUNS_DIR / run_id
    for name in ("gate.json", "gate.npz", "conformal.json", "seen_hashes.txt"):
        assert (run_dir / name).is_file(), f"{run_id} lacks {name}"
    seen = [line.split() for line in (run_dir / "seen_hashes.txt").read_text().splitlines()]
    # every training and validation film of the run's split, by content hash
    assert {role for _, role in seen} == {"training", "validation"} and len(seen) >= 5000
