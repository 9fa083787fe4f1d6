"""The bundled default model: it loads safely, is small, and holds up on films it never trained on.

The figures are computed here from images (the validation films listed in the run's
validation.csv, from ../shared/data), never read back from metrics.json; they are skipped where
the real data is absent. The bars sit well above chance and below the model's own figures, so a
broken model, a wrong pneumonia column, a lost calibration or a framing-sensitive model fails.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REAL_DATA, requires_real_data

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "trained_models" / "default"
MAX_BUNDLE_BYTES = 25 * 1024 * 1024
FRAMING = ("crop_top_bottom_10", "crop_sides_10", "crop_bottom_10", "zoom_in_15", "zoom_in_25", "zoom_out_10",
           "shift_up_10", "shift_down_10", "taller_15", "narrower_15", "taller_narrower")


@pytest.fixture(scope="module")
def model():
    from xray_core.model import load_model

    return load_model("default", root=ROOT / "trained_models")


@pytest.fixture(scope="module")
def validation():
    """(films at 224 px, labels, paths) of every validation film of the default run."""
    from xray_core import evaluation

    with open(DEFAULT / "validation.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    paths = [str(REAL_DATA / r["path"]) for r in rows]
    films, ok = evaluation.load_films(paths)
    labels = np.array([int(r["label"]) for r in rows])[ok]
    return films, labels, [p for p, k in zip(paths, ok) if k]


def test_run_folder_is_complete_small_and_portable():
    spec = json.loads((DEFAULT / "model.json").read_text())
    files = ["config.json", "history.csv", "metrics.json", "status.json", "model.json", "MODEL_CARD.md",
             "validation.csv", *spec["members"]]
    for name in files:
        assert (DEFAULT / name).is_file(), f"trained_models/default/{name} is missing"
    assert sum((DEFAULT / f).stat().st_size for f in spec["members"]) <= MAX_BUNDLE_BYTES
    assert not list(DEFAULT.glob("checkpoint.*"))
    assert spec["bundled"] is True and len(spec["members"]) == 3
    config_text = (DEFAULT / "config.json").read_text()
    assert str(Path.home()) + "/" not in config_text and str(ROOT.parent) + "/" not in config_text  # no machine paths
    with open(DEFAULT / "validation.csv", newline="") as fh:
        assert all(not Path(r["path"]).is_absolute() for r in csv.DictReader(fh))


def test_default_loads_in_safe_mode_as_a_calibrated_ensemble(model):
    from xray_core import architectures

    assert model.n_members == 3 and model.channels == 1 and model.input_size == (192, 192)
    assert 0.2 < model.temperature < 5 and model.temperature != 1.0  # calibration was fitted and is applied
    for net in model.members:  # keras.models.load_model(..., safe_mode=True)
        assert architectures.last_conv_layer_name(net) == "block3_sepconv2"
    x = np.random.default_rng(0).uniform(0, 255, size=(4, 192, 192, 1)).astype(np.float32)
    members = model.forward(x).member_proba
    assert members.shape == (4, 3)


@requires_real_data
def test_default_beats_chance_by_a_wide_margin_on_plain_validation_films(model, validation):
    from xray_core import metrics, stress

    films, y, paths = validation
    assert len(y) > 1000 and 200 < (y == 0).sum() < 400
    from xray_core import data

    scores = model.predict_proba(data.load_images(paths, size=model.input_size).images)
    m = metrics.binary_metrics(y, scores, threshold=model.threshold)
    assert m["roc_auc"] >= 0.98
    # The threshold keeps sensitivity >= 0.95 on the pooled stress set, not on the plain films
    # alone (there it was 0.914 when chosen): the bar here is a margin below that, far above chance.
    assert m["sensitivity"] >= 0.88 and m["specificity"] >= 0.95
    ece, _ = stress.expected_calibration_error(y, scores)
    assert ece <= 0.05
    # The figures the card states are the ones the images give (same model, within 1e-5).
    stored = json.loads((DEFAULT / "metrics.json").read_text())["validation"]
    assert m["roc_auc"] == pytest.approx(stored["roc_auc"], abs=1e-5)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (stored["tp"], stored["fp"], stored["tn"], stored["fn"])


@pytest.mark.slow
@requires_real_data
def test_default_holds_up_under_shift_stress(model, validation):
    from xray_core import metrics, stress

    films, y, _ = validation
    rng = np.random.default_rng(0)
    idx = np.sort(np.concatenate([rng.choice(np.flatnonzero(y == 0), 150, replace=False),
                                  rng.choice(np.flatnonzero(y == 1), 150, replace=False)]))
    sample = [films[i] for i in idx]
    scores = stress.stress_scores(model, sample)
    for name, s in scores.items():
        m = metrics.binary_metrics(y[idx], s, threshold=model.threshold)
        assert m["roc_auc"] >= 0.97, name
        assert m["specificity"] >= 0.88 and m["sensitivity"] >= 0.80, (name, m["specificity"], m["sensitivity"])


@pytest.mark.slow
@requires_real_data
def test_framing_changes_flip_few_normal_films(model, validation):
    """The first default turned 76 % of NORMAL films to PNEUMONIA when 10 % was cut off the top and
    bottom; no framing change may flip more than 10 % now."""
    from xray_core import stress

    films, y, _ = validation
    normals = [films[i] for i in np.flatnonzero(y == 0)]
    scores = stress.stress_scores(model, normals, changes=FRAMING)
    called_normal = scores[stress.PLAIN] < model.threshold
    assert called_normal.mean() > 0.9
    for name in FRAMING:
        flipped = (called_normal & (scores[name] >= model.threshold)).sum() / called_normal.sum()
        assert flipped <= 0.10, (name, flipped)


@requires_real_data
def test_default_on_the_official_val_folder_and_full_resolution_films(model):
    """The 16 official val films (full resolution, never used for any choice) and the 118
    full-resolution originals: decoded like an upload, most called right."""
    from xray_core import imaging

    for folder, minimum in ((REAL_DATA / "val", 14), (REAL_DATA.parent / "originals", 108)):
        paths = sorted(p for c in ("NORMAL", "PNEUMONIA") for p in (folder / c).iterdir())
        y = np.array([int(p.parent.name == "PNEUMONIA") for p in paths])
        p = model.predict_proba([imaging.decode(path) for path in paths])
        correct = int(((p >= model.threshold).astype(int) == y).sum())
        assert correct >= minimum, (folder.name, correct, len(y))
