"""xray_core.metrics against hand-computed confusion matrices and edge cases."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from xray_core import metrics as M

# 4 PNEUMONIA then 6 NORMAL. At threshold 0.5: TP .9 .8 .6 | FN .3 | FP .7 | TN .2 .1 .4 .45 .05
LABELS = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
SCORES = np.array([.9, .8, .6, .3, .7, .2, .1, .4, .45, .05])


def test_binary_metrics_hand_computed():
    m = M.binary_metrics(LABELS, SCORES, threshold=0.5)
    assert (m["tn"], m["fp"], m["fn"], m["tp"]) == (5, 1, 1, 3)
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(5 / 6)
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["npv"] == pytest.approx(5 / 6)
    assert m["accuracy"] == pytest.approx(8 / 10)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert m["roc_auc"] == pytest.approx(20 / 24)  # 20 of 24 (pos, neg) pairs ordered right
    # Average precision: positives at ranks 1, 2, 4, 7 -> mean(1/1, 2/2, 3/4, 4/7).
    assert m["pr_auc"] == pytest.approx((1 + 1 + 3 / 4 + 4 / 7) / 4)
    assert m["threshold"] == 0.5 and m["n"] == 10


def test_binary_metrics_threshold_is_inclusive_and_keyword_only():
    at = M.binary_metrics(LABELS, SCORES, threshold=0.6)
    assert (at["tp"], at["fp"]) == (3, 1)  # .6 itself is called PNEUMONIA
    above = M.binary_metrics(LABELS, SCORES, threshold=0.61)
    assert (above["tp"], above["fp"]) == (2, 1)
    with pytest.raises(TypeError):
        M.binary_metrics(LABELS, SCORES, 0.5)
    assert M.confusion_matrix(LABELS, SCORES, threshold=0.5).tolist() == [[5, 1], [1, 3]]


def test_undefined_ratios_are_nan_not_zero():
    nothing_positive = M.binary_metrics(LABELS, SCORES, threshold=0.95)
    assert nothing_positive["tp"] == 0 and nothing_positive["fp"] == 0
    assert math.isnan(nothing_positive["precision"])
    assert nothing_positive["sensitivity"] == 0.0 and nothing_positive["f1"] == 0.0
    normal_only = M.binary_metrics([0, 0, 0], [.1, .7, .2])
    assert math.isnan(normal_only["sensitivity"]) and math.isnan(normal_only["roc_auc"])
    assert normal_only["specificity"] == pytest.approx(2 / 3)
    column = M.binary_metrics(np.array([[1], [0]]), np.array([[.8], [.1]]))
    assert column["accuracy"] == 1.0


@pytest.mark.parametrize("y, s, match", [
    ([0, 1, 2], [.1, .2, .3], "only 0 .NORMAL. and 1"),
    ([0, 1], [.1, .2, .3], "2 labels but y_score has 3"),
    ([0, 1], [[.9, .1], [.2, .8]], "pass column 1"),
    ([0, 1], [.1, float("nan")], "NaN"),
    ([], [], "empty"),
])
def test_bad_inputs_are_explained(y, s, match):
    with pytest.raises(M.MetricsInputError, match=match):
        M.binary_metrics(y, s)


def test_choose_threshold_default_keeps_sensitivity():
    t = M.choose_threshold(LABELS, SCORES)
    # Sensitivity >= .95 needs every pneumonia image (lowest at .3): halfway to the next score .2.
    assert t == pytest.approx(0.25)
    m = M.binary_metrics(LABELS, SCORES, threshold=t)
    assert m["sensitivity"] == 1.0 and m["specificity"] == pytest.approx(3 / 6)
    # A lower target allows a stricter threshold: .6 catches 3/4 with one false positive (.7).
    t75 = M.choose_threshold(LABELS, SCORES, min_sensitivity=0.75)
    assert t75 == pytest.approx((0.6 + 0.45) / 2)
    assert M.binary_metrics(LABELS, SCORES, threshold=t75)["specificity"] == pytest.approx(5 / 6)


def test_choose_threshold_youden():
    # J per cut: .9 .25, .8 .5, .7 .33, .6 .58, .45 .42, .4 .25, .3 .5 -> best at .6.
    assert M.choose_threshold(LABELS, SCORES, method="youden") == pytest.approx(0.525)
    # Ties in J go to the higher sensitivity: both cuts below give J = .5.
    y = [1, 1, 0, 0]
    s = [.9, .6, .7, .1]
    t = M.choose_threshold(y, s, method="youden")
    assert M.binary_metrics(y, s, threshold=t)["sensitivity"] == 1.0


def test_choose_threshold_with_tied_scores_and_errors():
    y = [1, 1, 0, 0, 1]
    s = [.5, .5, .5, .2, .9]
    t = M.choose_threshold(y, s)
    assert t == pytest.approx(0.35)
    with pytest.raises(M.OneClassError, match="all 3 validation images are NORMAL"):
        M.choose_threshold([0, 0, 0], [.1, .2, .3])
    with pytest.raises(M.MetricsInputError, match="'best'"):
        M.choose_threshold(LABELS, SCORES, method="best")
    with pytest.raises(M.MetricsInputError, match="got 1.5"):
        M.choose_threshold(LABELS, SCORES, min_sensitivity=1.5)


# Two-column seed outputs: column 0 NORMAL, column 1 PNEUMONIA.
SEED_LABELS = np.array([1, 1, 0, 0, 0, 0])
SEED_OUT = np.array([[.1, .9], [.7, .3], [.9, .2], [.8, .1], [.7, .4], [.3, .6]])


def test_seed_micro_recall_is_not_sensitivity():
    # True-class outputs: .9 yes, .3 no, .9 yes, .8 yes, .7 yes, .3 no -> 4/6.
    assert M.seed_micro_recall(SEED_LABELS, SEED_OUT) == pytest.approx(4 / 6)
    onehot = np.stack([1 - SEED_LABELS, SEED_LABELS], axis=1)
    assert M.seed_micro_recall(onehot, SEED_OUT) == pytest.approx(4 / 6)
    assert M.binary_metrics(SEED_LABELS, SEED_OUT[:, 1])["sensitivity"] == pytest.approx(1 / 2)
    with pytest.raises(M.MetricsInputError, match=r"\(N, 2\)"):
        M.seed_micro_recall(SEED_LABELS, SEED_OUT[:, 1])


def test_seed_micro_recall_matches_keras_recall():
    keras = pytest.importorskip("keras")
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 50)
    out = rng.uniform(size=(50, 2))
    recall = keras.metrics.Recall()
    recall.update_state(np.stack([1 - labels, labels], axis=1), out)
    assert M.seed_micro_recall(labels, out) == pytest.approx(float(recall.result()), abs=1e-6)


def test_roc_points():
    roc = M.roc_points(LABELS, SCORES)
    assert list(roc.columns) == ["fpr", "tpr", "threshold"]
    assert (roc["fpr"].iloc[0], roc["tpr"].iloc[0]) == (0.0, 0.0)
    assert (roc["fpr"].iloc[-1], roc["tpr"].iloc[-1]) == (1.0, 1.0)
    assert np.isinf(roc["threshold"].iloc[0])
    assert np.trapezoid(roc["tpr"], roc["fpr"]) == pytest.approx(20 / 24)
    with pytest.raises(M.OneClassError):
        M.roc_points([1, 1], [.2, .3])


def test_vectorised_bootstrap_auc_matches_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40)
    s = np.round(rng.uniform(size=40), 1)  # many ties
    uniq, inverse = np.unique(s, return_inverse=True)
    for _ in range(5):
        idx = rng.integers(0, 40, 40)
        w_pos = np.bincount(inverse[idx], weights=y[idx], minlength=uniq.size)
        w_neg = np.bincount(inverse[idx], weights=1 - y[idx], minlength=uniq.size)
        got = M._auc_rows(w_pos[None], w_neg[None])[0]
        assert got == pytest.approx(roc_auc_score(y[idx], s[idx]))


def test_bootstrap_ci_seeded_and_bracketing():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    s = np.clip(y * 0.3 + rng.uniform(size=200) * 0.7, 0, 1)
    ci = M.bootstrap_ci(y, s, threshold=0.5, n_boot=300, seed=7)
    assert set(ci) == {"sensitivity", "specificity", "accuracy", "roc_auc"}
    point = M.binary_metrics(y, s, threshold=0.5)
    for name, c in ci.items():
        assert c["estimate"] == pytest.approx(point[name])
        assert c["low"] <= c["estimate"] <= c["high"]
        assert 0 < c["high"] - c["low"] < 0.3
    assert ci == M.bootstrap_ci(y, s, threshold=0.5, n_boot=300, seed=7)
    assert ci != M.bootstrap_ci(y, s, threshold=0.5, n_boot=300, seed=8)
    with pytest.raises(M.MetricsInputError, match="n_boot"):
        M.bootstrap_ci(y, s, threshold=0.5, n_boot=0)


def test_bootstrap_ci_with_a_rare_class_skips_undefined_resamples():
    y = np.array([1] + [0] * 29)
    s = np.linspace(0.9, 0.0, 30)
    ci = M.bootstrap_ci(y, s, threshold=0.5, n_boot=200, seed=0)
    assert ci["sensitivity"]["low"] == ci["sensitivity"]["high"] == 1.0
    assert np.isfinite(ci["specificity"]["low"])


def test_metrics_module_does_not_import_tensorflow():
    code = "import sys, xray_core.metrics; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_roc_points_one_class_error_names_the_class():
    """The sentence says which class is alone (found by mutation testing: the message was unchecked)."""
    with pytest.raises(M.OneClassError, match=r"all 3 images are PNEUMONIA\.$"):
        M.roc_points([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(M.OneClassError, match=r"all 2 images are NORMAL\.$"):
        M.roc_points([0, 0], [0.1, 0.2])
    with pytest.raises(M.OneClassError, match=r"all 1 images are PNEUMONIA\.$"):
        M.roc_points([1], [0.5])


# ----------------------------------------------------------------------------- edges found by mutation testing


def test_one_pneumonia_image_is_enough_for_every_figure():
    # A single PNEUMONIA image: sensitivity is 1/1 (not undefined) and both AUCs exist.
    m = M.binary_metrics([1, 0, 0], [.9, .1, .2])
    assert m["sensitivity"] == 1.0 and m["precision"] == 1.0 and m["npv"] == 1.0
    assert m["roc_auc"] == 1.0 and m["pr_auc"] == 1.0
    only_one_wrong = M.binary_metrics([1, 0, 0], [.3, .1, .6])
    assert only_one_wrong["sensitivity"] == 0.0 and only_one_wrong["roc_auc"] == pytest.approx(0.5)


def test_one_class_gives_nan_aucs_without_warnings(recwarn):
    for y in ([0, 0, 0], [1, 1, 1]):
        m = M.binary_metrics(y, [.1, .7, .2])
        assert math.isnan(m["roc_auc"]) and math.isnan(m["pr_auc"]), y
    assert not [w for w in recwarn if "sklearn" in str(w.filename) or "class" in str(w.message)]


def test_metrics_are_plain_json_numbers():
    import json

    m = M.binary_metrics(LABELS, SCORES, threshold=0.5)
    assert all(type(v) in (float, int) for v in m.values()), {k: type(v) for k, v in m.items()}
    assert json.loads(json.dumps(m))["sensitivity"] == 0.75


def test_scores_in_an_object_array_are_read_as_numbers():
    # e.g. a pandas column of dtype object (Python floats after a None was dropped)
    m = M.binary_metrics(LABELS, SCORES.astype(object), threshold=0.5)
    assert (m["tp"], m["fp"]) == (3, 1) and m["roc_auc"] == pytest.approx(20 / 24)


def test_nan_score_message():
    with pytest.raises(M.MetricsInputError, match=r"^y_score contains NaN or infinite values; check the model "
                                                  r"output\.$"):
        M.binary_metrics([0, 1], [.1, float("inf")])


def test_confusion_matrix_default_threshold_and_one_class():
    assert M.confusion_matrix(LABELS, SCORES).tolist() == [[5, 1], [1, 3]]  # default 0.5
    # Only NORMAL images, all called NORMAL: still a 2x2 table.
    assert M.confusion_matrix([0, 0], [.1, .2]).tolist() == [[2, 0], [0, 0]]
    assert M.confusion_matrix([1], [.9]).tolist() == [[0, 0], [0, 1]]


def test_choose_threshold_target_bounds():
    # min_sensitivity 1 is allowed (catch every pneumonia image); 0 and non-numbers are not.
    assert M.choose_threshold(LABELS, SCORES, min_sensitivity=1) == pytest.approx(0.25)
    for bad in (0, -0.5, 1.01, "high", None):
        with pytest.raises(M.MetricsInputError, match=r"min_sensitivity must be a fraction in \(0, 1\]"):
            M.choose_threshold(LABELS, SCORES, min_sensitivity=bad)


def test_choose_threshold_one_class_message_names_the_class():
    with pytest.raises(M.OneClassError, match=r"but all 2 validation images are PNEUMONIA\. Use a validation"):
        M.choose_threshold([1, 1], [.2, .9])
    with pytest.raises(M.OneClassError, match=r"all 1 validation images are PNEUMONIA"):
        M.choose_threshold([1], [.2])


def test_choose_threshold_prefers_the_higher_sensitivity_at_the_same_specificity():
    # At no false positive, .9 catches half the pneumonia and .8 all of it: .8 is kept, halfway to .3.
    assert M.choose_threshold([1, 1, 0, 0], [.9, .8, .3, .2], min_sensitivity=0.5) == pytest.approx(0.55)


def test_choose_threshold_below_the_lowest_score():
    # Every image must be called PNEUMONIA and the lowest score is a pneumonia one: half of it.
    assert M.choose_threshold([1, 0, 1], [.9, .5, .2], min_sensitivity=1.0) == pytest.approx(0.1)


def test_bootstrap_ci_defaults_and_threshold():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 60)
    s = np.clip(y * 0.3 + rng.uniform(size=60) * 0.7, 0, 1)
    # Defaults: 1000 resamples, seed 0.
    assert M.bootstrap_ci(y, s, threshold=0.3) == M.bootstrap_ci(y, s, threshold=0.3, n_boot=1000, seed=0)
    ci = M.bootstrap_ci(y, s, threshold=0.3, n_boot=50)
    point = M.binary_metrics(y, s, threshold=0.3)
    for name in ("sensitivity", "specificity", "accuracy"):
        assert ci[name]["estimate"] == point[name]  # at the given threshold, not at 0.5


def test_bootstrap_ci_threshold_is_inclusive_too():
    y = np.array([1] * 10 + [0] * 10)
    s = np.array([0.5] * 10 + [0.1] * 10)  # every pneumonia score sits exactly at the threshold
    ci = M.bootstrap_ci(y, s, threshold=0.5, n_boot=50)
    assert ci["sensitivity"] == {"estimate": 1.0, "low": 1.0, "high": 1.0}


def test_bootstrap_ci_settings_are_checked():
    y, s = LABELS, SCORES
    assert M.bootstrap_ci(y, s, threshold=0.5, n_boot=10)["accuracy"]["estimate"] == 0.8
    for bad in (9, 50.0, True, "100"):
        with pytest.raises(M.MetricsInputError, match=r"n_boot must be a whole number >= 10; got "):
            M.bootstrap_ci(y, s, threshold=0.5, n_boot=bad)
    for bad in (0, 1, 1.5, -0.2):
        with pytest.raises(M.MetricsInputError, match=rf"^level must be a fraction in \(0, 1\); got {bad}\.$"):
            M.bootstrap_ci(y, s, threshold=0.5, level=bad)


def test_bootstrap_ci_level_picks_the_percentiles():
    # Two images, one right and one wrong: a resample's accuracy is 0, 1/2 or 1 with chances 1/4, 1/2, 1/4.
    # The 95 % interval spans 0..1; the 40 % interval (30th..70th percentile) is the middle value only.
    y, s = [1, 0], [0.9, 0.8]
    wide = M.bootstrap_ci(y, s, threshold=0.5, n_boot=4000, level=0.95)["accuracy"]
    assert (wide["low"], wide["high"]) == (0.0, 1.0)
    narrow = M.bootstrap_ci(y, s, threshold=0.5, n_boot=4000, level=0.4)["accuracy"]
    assert (narrow["low"], narrow["high"]) == (0.5, 0.5)


def test_bootstrap_ci_figure_undefined_in_every_resample_is_nan():
    ci = M.bootstrap_ci([0, 0, 0, 0], [.1, .6, .2, .3], threshold=0.5, n_boot=20)
    sens = ci["sensitivity"]
    assert math.isnan(sens["estimate"]) and math.isnan(sens["low"]) and math.isnan(sens["high"])
    assert type(sens["low"]) is float
    assert ci["specificity"]["estimate"] == 0.75
