"""The bundled default model: it loads safely, is small, meets its validation bar and answers.

The loading and metrics checks need no real data (the run folder is committed), so they run on
a fresh machine; the prediction check reads real images from ../shared/data where present.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REAL_DATA, SHARED_DATA, requires_real_data

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "trained_models" / "default"
MAX_MODEL_BYTES = 25 * 1024 * 1024


@pytest.fixture(scope="module")
def run():
    from xray_core import runs

    return runs.load_run("default", root=ROOT / "trained_models")


def test_run_folder_is_complete_and_small():
    for name in ("config.json", "history.csv", "metrics.json", "status.json", "model.keras", "MODEL_CARD.md"):
        assert (DEFAULT / name).is_file(), f"trained_models/default/{name} is missing"
    assert (DEFAULT / "model.keras").stat().st_size <= MAX_MODEL_BYTES
    # Checkpoints are training scratch; the bundled run ships only the final model.
    assert not list(DEFAULT.glob("checkpoint.*"))
    status = json.loads((DEFAULT / "status.json").read_text())
    assert status["state"] == "completed"


def test_default_loads_in_safe_mode_and_scores(run):
    from xray_core import architectures

    assert run.config["arch"] == "pneumonet"
    assert run.output_units == 1 and run.channels == 1
    model = run.model  # keras.models.load_model(..., safe_mode=True)
    assert model.get_layer("rescale") is not None
    assert architectures.last_conv_layer_name(model) == "block3_sepconv2"
    h, w = run.image_size
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(3, h, w, run.channels)).astype(np.float32)
    scores = run.predict_scores(x)
    assert scores.shape == (3,)
    assert np.all((scores >= 0) & (scores <= 1))


def test_validation_meets_the_bar(run):
    m = run.metrics
    val = m["validation"]
    assert val["roc_auc"] >= 0.97
    assert val["sensitivity"] >= 0.95
    assert val["threshold"] == pytest.approx(m["threshold"])
    assert run.threshold == pytest.approx(m["threshold"])
    assert 0.0 < m["threshold"] < 1.0
    # The committed 95 % bootstrap intervals bracket the point estimates they belong to.
    ci = m["validation_ci95"]
    for key in ("sensitivity", "specificity", "accuracy", "roc_auc"):
        assert ci[key]["low"] <= val[key] <= ci[key]["high"], key


def test_model_card_states_the_essentials(run):
    card = (DEFAULT / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "10.17632/rscbjbr9sj.3" in card
    assert "not a medical device" in card.lower()
    assert f"{run.threshold:.3f}" in card
    assert "python -m xray_core train --arch pneumonet" in card


@requires_real_data
def test_predict_cli_answers_for_real_images():
    picks = [
        next((REAL_DATA / "train" / "NORMAL").glob("*.jpeg")),
        next((REAL_DATA / "train" / "PNEUMONIA").glob("*.jpeg")),
    ]
    picks += sorted((REAL_DATA / "val" / "PNEUMONIA").glob("*.jpeg"))[:1]  # full resolution
    picks += sorted((SHARED_DATA / "originals" / "NORMAL").glob("*.jpeg"))[:1]
    proc = subprocess.run(
        [sys.executable, "-m", "xray_core", "predict", "default", *map(str, picks), "--json",
         "--runs-dir", str(ROOT / "trained_models")],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    answers = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [a["image"] for a in answers] == [str(p) for p in picks]
    for a in answers:
        assert a["label"] in ("NORMAL", "PNEUMONIA")
        assert 0.0 <= a["probability"] <= 1.0
        assert a["run"] == "default"
