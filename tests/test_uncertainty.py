"""Split-conformal prediction sets: coverage on held-back films, what is shown, and the run's file."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import REAL_DATA, requires_real_data
from xray_core import runs, uncertainty
from xray_core.uncertainty import Conformal, fit_conformal


def scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A noisy classifier: 70 % pneumonia, P(pneumonia) = sigmoid(+-2 + noise)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.7).astype(int)
    p = 1 / (1 + np.exp(-(2.0 * (2 * y - 1) + rng.normal(0, 1.5, n))))
    return y, p


@pytest.mark.parametrize("alpha", [0.1, 0.2])
def test_held_back_coverage_is_the_nominal_level(alpha):
    for seed in range(3):
        y, p = scores(4000, seed)
        conf = fit_conformal(y[:2000], p[:2000], alpha=alpha)
        held = uncertainty.coverage(conf, y[2000:], p[2000:])
        assert abs(held - (1 - alpha)) <= 0.03, (seed, held)


def test_a_badly_calibrated_rule_fails_the_same_check():
    """The coverage check can fail: a q taken from the wrong quantile misses the level."""
    y, p = scores(4000, 0)
    right = fit_conformal(y[:2000], p[:2000], alpha=0.1)
    wrong = Conformal(alpha=0.1, qhat=right.qhat * 0.3, n_calibration=2000, source="wrong")
    assert abs(uncertainty.coverage(wrong, y[2000:], p[2000:]) - 0.9) > 0.03


def test_shown_sets():
    conf = Conformal(alpha=0.1, qhat=0.2, n_calibration=100, source="t")
    assert conf.prediction_set(0.95, threshold=0.5) == ["PNEUMONIA"]
    assert conf.prediction_set(0.05, threshold=0.5) == ["NORMAL"]
    assert conf.raw_set(0.5) == []  # neither class reaches the level ...
    assert conf.prediction_set(0.5, threshold=0.5) == ["NORMAL", "PNEUMONIA"]  # ... shown as needs review
    # {NORMAL} by the conformal rule but PNEUMONIA at a low operating threshold: needs review
    assert conf.raw_set(0.15) == ["NORMAL"]
    assert conf.prediction_set(0.15, threshold=0.1) == ["NORMAL", "PNEUMONIA"]
    wide = Conformal(alpha=0.1, qhat=0.7, n_calibration=100, source="t")
    assert wide.raw_set(0.5) == ["NORMAL", "PNEUMONIA"]
    u = uncertainty.describe(0.5, 0.5, conf)
    assert u.uncertain and u.label == uncertainty.UNCERTAIN
    sure = uncertainty.describe(0.97, 0.5, conf)
    assert not sure.uncertain and sure.label == "{PNEUMONIA}"


def test_ensemble_spread():
    u = uncertainty.describe(0.6, 0.5, None, member_p=[0.4, 0.6, 0.8])
    assert u.member_spread == pytest.approx(0.4)
    assert u.member_std == pytest.approx(np.std([0.4, 0.6, 0.8]))
    assert u.prediction_set is None and u.label == "not calibrated"
    single = uncertainty.describe(0.6, 0.5, None)
    assert single.member_spread is None


def test_bad_calibration_input_is_a_sentence():
    with pytest.raises(uncertainty.UncertaintyError, match="too few"):
        fit_conformal([0, 1, 1], [0.1, 0.9, 0.8], alpha=0.1)
    with pytest.raises(uncertainty.UncertaintyError, match="labels but"):
        fit_conformal([0, 1], [0.1], alpha=0.1)
    with pytest.raises(uncertainty.UncertaintyError, match="0 \\(NORMAL\\) or 1"):
        fit_conformal([0, 2] * 20, [0.1, 0.9] * 20)


def test_calibrate_run_prefers_the_stress_predictions(tmp_path):
    y, p = scores(300, 1)
    runs.write_predictions(tmp_path, "validation", [f"v{i}.png" for i in range(300)], y, p)
    conf = uncertainty.calibrate_run(tmp_path)
    assert conf.source == "predictions_validation.csv"
    ys, ps = scores(300, 2)
    ps = np.clip(ps * 0.5 + 0.25, 0, 1)  # a harder, shifted set: wider sets
    runs.write_predictions(tmp_path, "stress", [f"s{i}.png" for i in range(300)], ys, ps)
    stressed = uncertainty.calibrate_run(tmp_path)
    assert stressed.source == "predictions_stress.csv"
    assert stressed.qhat > conf.qhat
    loaded = uncertainty.load_conformal(tmp_path)
    assert loaded.qhat == pytest.approx(stressed.qhat)
    with pytest.raises(uncertainty.UncertaintyError, match="neither"):
        uncertainty.calibrate_run(tmp_path / "empty")


def test_one_member_has_no_spread(tiny_run):
    from xray_core import case
    from xray_core.model import load_model

    runs_root, run_id = tiny_run
    model = load_model(runs_root / run_id)
    films = [case.Film(name=str(v), image=np.full((48, 48), v, np.uint8)) for v in (40, 200)]
    conf = Conformal(alpha=0.1, qhat=0.3, n_calibration=50, source="t")
    out = [a.uncertainty for a in case.assess_films(model, films, conformal=conf)]
    p = model.predict_proba(model.prepare_batch([f.image for f in films]))
    assert [u.member_probabilities[0] for u in out] == pytest.approx(list(p))
    assert all(u.member_spread is None for u in out)


@requires_real_data
def test_default_model_coverage_on_held_back_validation_films():
    """Calibrate on half of the default run's validation films, measure on the other half, 20 times."""
    from xray_core import data
    from xray_core.model import load_model

    model = load_model("default")
    cfg = model.config
    _, val = data.split_train(data.index_dataset(REAL_DATA), method=cfg["split"]["method"],
                              val_fraction=cfg["split"]["val_fraction"], seed=cfg["seed"])
    x = data.load_images(val["path"].tolist(), size=model.input_size, channels=model.channels).images
    p = model.predict_proba(x)
    y = val["label"].to_numpy()
    rng = np.random.default_rng(0)
    held = []
    for _ in range(20):
        order = rng.permutation(len(y))
        cal, test = order[: len(y) // 2], order[len(y) // 2:]
        conf = fit_conformal(y[cal], p[cal], alpha=0.1)
        held.append(uncertainty.coverage(conf, y[test], p[test]))
        assert abs(held[-1] - 0.9) <= 0.05
    assert abs(np.mean(held) - 0.9) <= 0.03, held
