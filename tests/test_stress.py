"""The shift-stress validation: each change does what it says, and the report reads it right."""

from __future__ import annotations

import numpy as np
import pytest

from xray_core import stress


def _film(h=100, w=80):
    """A synthetic film: dark border, a bright 'chest' block, a marker row near the top."""
    img = np.full((h, w), 10, np.uint8)
    img[20:80, 15:65] = 200
    img[25, 15:65] = 255
    return img


def test_framing_changes_move_the_anatomy_as_named():
    img = _film()
    rows = lambda im: np.flatnonzero((im > 100).mean(axis=1) > 0.3)  # noqa: E731
    cols = lambda im: np.flatnonzero((im > 100).mean(axis=0) > 0.3)  # noqa: E731
    # Cropping top and bottom stretches the chest vertically, not horizontally.
    tb = stress.CHANGES["crop_top_bottom_10"].apply(img)
    assert tb.shape == img.shape
    assert len(rows(tb)) > len(rows(img)) + 8 and abs(len(cols(tb)) - len(cols(img))) <= 1
    sides = stress.CHANGES["crop_sides_10"].apply(img)
    assert len(cols(sides)) > len(cols(img)) + 8 and abs(len(rows(sides)) - len(rows(img))) <= 1
    # Zooming out shrinks it and pads with the border's median (10), never black.
    out = stress.CHANGES["zoom_out_10"].apply(img)
    assert len(rows(out)) < len(rows(img)) and out[0, 0] == 10 and out.min() >= 10
    # A shift up by 10 % moves the marker row up by 10 rows; the uncovered bottom is border grey.
    up = stress.CHANGES["shift_up_10"].apply(img)
    assert np.flatnonzero(up[:, 40] == 255)[0] == 15 and np.all(up[-10:] == 10)
    down = stress.CHANGES["shift_down_10"].apply(img)
    assert np.flatnonzero(down[:, 40] == 255)[0] == 35
    taller = stress.CHANGES["taller_15"].apply(img)
    assert len(rows(taller)) > len(rows(img)) and abs(len(cols(taller)) - len(cols(img))) <= 1
    narrower = stress.CHANGES["narrower_15"].apply(img)
    assert len(cols(narrower)) < len(cols(img)) and narrower[50, 0] == 10


def test_intensity_changes():
    ramp = np.tile(np.arange(256, dtype=np.uint8), (4, 1))
    assert stress.CHANGES["gamma_0.8"].apply(ramp)[0, 128] > 128
    assert stress.CHANGES["gamma_1.25"].apply(ramp)[0, 128] < 128
    low = stress.CHANGES["contrast_0.8"].apply(ramp)
    assert low.std() == pytest.approx(0.8 * ramp.std(), rel=0.02)
    noisy = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    assert stress.CHANGES["blur"].apply(noisy).std() < 0.7 * noisy.std()
    assert stress.CHANGES["down_up_2x"].apply(noisy).std() < noisy.std()


def test_report_finds_the_worst_change_and_the_flipped_normals():
    y = np.array([0] * 50 + [1] * 50)
    rng = np.random.default_rng(0)
    plain = np.where(y == 1, 0.9, 0.1) + rng.normal(0, 0.01, 100)
    framed = plain.copy()
    framed[:20] = 0.8  # 20 of 50 normal films now called PNEUMONIA at threshold 0.5
    scores = {"plain": plain, "crop_top_bottom_10": framed, "gamma_0.8": plain}
    rep = stress.stress_report(y, scores, threshold=0.5, n_boot=50)
    assert rep["changes"]["crop_top_bottom_10"]["specificity"] == pytest.approx(0.6)
    assert rep["changes"]["crop_top_bottom_10"]["normal_flipped"] == pytest.approx(0.4)
    assert rep["summary"]["specificity"]["worst"] == pytest.approx(0.6)
    assert rep["summary"]["specificity"]["worst_change"] == "crop_top_bottom_10"
    assert rep["summary"]["specificity"]["mean"] == pytest.approx(0.8)
    assert rep["pooled"]["specificity"] == pytest.approx(0.8)  # changes only, plain left out
    ci = rep["pooled_ci95"]["specificity"]
    assert ci["low"] < 0.8 < ci["high"]


def test_calibration_helpers():
    rng = np.random.default_rng(1)
    p_true = rng.uniform(0.02, 0.98, 4000)
    y = (rng.uniform(size=p_true.size) < p_true).astype(int)
    ece_good, bins = stress.expected_calibration_error(y, p_true)
    assert ece_good < 0.03 and sum(b["n"] for b in bins) == 4000
    # Overconfident scores (logits doubled): ECE grows, and the fitted temperature is about 2.
    z = np.log(p_true) - np.log1p(-p_true)
    over = 1 / (1 + np.exp(-2 * z))
    assert stress.expected_calibration_error(y, over)[0] > 0.05
    assert stress.fit_temperature(y, over) == pytest.approx(2.0, rel=0.15)


def test_platt_scaling_also_undoes_a_shifted_prior():
    """Balanced class weights train a model as if both classes were equally common: its logits are
    shifted. A temperature cannot undo a shift; Platt's bias can, and the ECE falls with it."""
    from xray_core.model import calibrate

    rng = np.random.default_rng(2)
    p_true = rng.uniform(0.02, 0.98, 6000)
    y = (rng.uniform(size=p_true.size) < p_true).astype(int)
    z = np.log(p_true) - np.log1p(-p_true)
    shifted = 1 / (1 + np.exp(-(1.5 * z - 1.0)))  # overconfident and biased towards NORMAL
    t, b = stress.fit_platt(y, shifted)
    assert t == pytest.approx(1.5, rel=0.1) and b == pytest.approx(1.0 / 1.5, abs=0.15)
    only_t = calibrate(shifted, stress.fit_temperature(y, shifted))
    both = calibrate(shifted, t, b)
    assert stress.expected_calibration_error(y, both)[0] < 0.02
    assert stress.expected_calibration_error(y, both)[0] < stress.expected_calibration_error(y, only_t)[0]
    assert np.all(np.diff(both[np.argsort(shifted)]) >= 0)  # monotone: the ranking is untouched
