"""A synthetic site on real films: the shipped default with its logits shifted by a known amount,
validated on the default's own validation list (patients its networks never trained on), then
recalibrated; the cross-fitted calibration error must come down by a stated margin."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REAL_DATA, requires_real_data
from tests.test_site import check_printed_figures
from xray_core import fileio, site, site_report
from xray_core.model import load_model

ROOT = Path(__file__).resolve().parents[1]
SHIFT = -2.0  # added to the default's logit: the site's films read 2 log-odds less pneumonic

pytestmark = [requires_real_data, pytest.mark.slow]


@pytest.fixture(scope="module")
def shifted_site(tmp_path_factory):
    """(runs folder, label list): `shifted`, the default's networks with bias + SHIFT, and a CSV of
    the default's 1,044 validation films."""
    folder = tmp_path_factory.mktemp("shifted")
    default = load_model("default")
    run = folder / "runs" / "shifted"
    run.mkdir(parents=True)
    fileio.atomic_write_json(run / "model.json", {
        "parent": os.path.relpath(default.path, run), "temperature": default.temperature,
        "bias": default.bias + SHIFT, "threshold": default.threshold})
    fileio.atomic_write_json(run / "status.json", {"state": "completed"})
    listing = folder / "site.csv"
    with open(default.path / "validation.csv", newline="") as src, open(listing, "w", newline="") as dst:
        out = csv.writer(dst)
        out.writerow(["path", "label"])
        for row in csv.DictReader(src):
            out.writerow([REAL_DATA / row["path"], "PNEUMONIA" if row["label"] == "1" else "NORMAL"])
    return folder / "runs", listing


def test_recalibration_undoes_a_known_shift_on_held_folds(shifted_site, tmp_path):
    runs_root, listing = shifted_site
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "xray_core", "validate", "shifted", str(listing), "--runs-dir",
                           str(runs_root), "--out-dir", str(out), "--json", "--workers", "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["n"] > 1000 and report["clusters"] == "patients"
    # the printed figures are the per-film CSV's, recomputed with scikit-learn and numpy
    check_printed_figures(report, pd.read_csv(out / "films.csv", keep_default_na=False, na_values=[""]))
    shifted_ece = report["figures"]["ece"]["estimate"]
    assert shifted_ece > 0.06  # the shift does miscalibrate these films

    result = site.recalibrate(runs_root / "shifted", out="site", root=runs_root,
                              table=site_report.read_films(out / "films.csv"))
    cross = result["cross_fitted"]["figures"]
    # the same films, but for the one the networks trained on (left out of a fit)
    assert result["left_out_training_films"] == 1
    assert result["before"]["figures"]["ece"]["estimate"] == pytest.approx(shifted_ece, abs=0.002)
    # the stated margin, on held folds: at most 0.03, and at most half the shifted run's
    assert cross["ece"]["estimate"] <= 0.03 and cross["ece"]["estimate"] <= shifted_ece / 2
    assert cross["sensitivity"]["estimate"] >= 0.93 and cross["specificity"]["estimate"] >= 0.90
    # the fit undoes the shift: Platt's bias moves back by about SHIFT
    assert result["bias"] - (load_model("default").bias + SHIFT) == pytest.approx(-SHIFT, abs=1.5)
    derived = load_model(runs_root / "site")
    assert derived.networks_dir == load_model("default").path
    assert sum(p.stat().st_size for p in (runs_root / "site").iterdir()) < 100_000
