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
