"""Paired comparisons of two runs: DeLong against a hand-worked example and a brute-force
structural-components computation, McNemar against textbook figures, the paired bootstrap and
the plain reading."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from xray_core import comparison


# A worked example small enough to do by hand (2 pneumonia, 3 normal images):
# A: positives 0.9, 0.4; negatives 0.5, 0.1, 0.3  -> placements V10 = (1, 2/3), V01 = (1/2, 1, 1),
#    AUC 5/6.  B: positives 0.8, 0.7; negatives 0.75, 0.2, 0.7 (a tie) -> V10 = (1, 1/2),
#    V01 = (1/2, 1, 3/4), AUC 3/4.  S10 = [[1/18, 1/12], [1/12, 1/8]], S01 = [[1/12, 1/16],
#    [1/16, 1/16]]; S = S10/2 + S01/3 = [[1/18, 1/16], [1/16, 1/12]];
#    var(A - B) = 1/18 + 1/12 - 2/16 = 1/72; z = (1/12) / sqrt(1/72) = 1/sqrt(2).
Y = np.array([1, 1, 0, 0, 0])
A = np.array([0.9, 0.4, 0.5, 0.1, 0.3])
B = np.array([0.8, 0.7, 0.75, 0.2, 0.7])


def test_delong_matches_the_hand_worked_example():
    aucs, cov = comparison.delong_covariance(Y, A, B)
    np.testing.assert_allclose(aucs, [5 / 6, 3 / 4])
    np.testing.assert_allclose(cov, [[1 / 18, 1 / 16], [1 / 16, 1 / 12]])
    result = comparison.delong_test(Y, A, B)
    assert result["z"] == pytest.approx(1 / math.sqrt(2))
    assert result["p_value"] == pytest.approx(math.erfc(0.5), rel=1e-12)  # 2 * (1 - Phi(1/sqrt 2))
    assert result["se"] == pytest.approx(math.sqrt(1 / 72))
    assert result["low"] == pytest.approx(1 / 12 - 1.959964 * math.sqrt(1 / 72), abs=1e-6)


def _brute_force_delong(y, scores):
    """DeLong from its definition: the pairwise kernel psi over every (positive, negative) pair."""
    pos = [s[y == 1] for s in scores]
    neg = [s[y == 0] for s in scores]
    psi = [(p[:, None] > q[None, :]) + 0.5 * (p[:, None] == q[None, :]) for p, q in zip(pos, neg)]
    v10 = [k.mean(axis=1) for k in psi]
    v01 = [k.mean(axis=0) for k in psi]
    aucs = [k.mean() for k in psi]
    m, n = len(v10[0]), len(v01[0])
    cov = np.empty((len(scores), len(scores)))
    for r in range(len(scores)):
        for s in range(len(scores)):
            s10 = sum((v10[r][i] - aucs[r]) * (v10[s][i] - aucs[s]) for i in range(m)) / (m - 1)
            s01 = sum((v01[r][j] - aucs[r]) * (v01[s][j] - aucs[s]) for j in range(n)) / (n - 1)
            cov[r, s] = s10 / m + s01 / n
    return np.array(aucs), cov


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_delong_matches_a_brute_force_structural_components_computation(seed):
    rng = np.random.default_rng(seed)
    y = (rng.random(150) < 0.7).astype(int)
    # Rounded scores so that ties (within and across classes) are exercised.
    a = np.round(y * 0.8 + rng.normal(size=150), 1)
    b = np.round(y * 0.5 + 0.5 * a + rng.normal(size=150), 1)
    aucs, cov = comparison.delong_covariance(y, a, b)
    ref_aucs, ref_cov = _brute_force_delong(y, [a, b])
    np.testing.assert_allclose(aucs, ref_aucs, rtol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, rtol=1e-10)
    assert aucs[0] == pytest.approx(roc_auc_score(y, a))


def test_delong_identical_models_and_bad_input():
    result = comparison.delong_test(Y, A, A)
    assert (result["difference"], result["z"], result["p_value"]) == (0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="NORMAL and PNEUMONIA"):
        comparison.delong_test([1, 1, 1], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])
    with pytest.raises(ValueError, match="NaN or infinite"):
        comparison.delong_test(Y, A, [0.1, np.nan, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match="one score per image"):
        comparison.delong_test(Y, A, B[:3])


def test_mcnemar_chi_square_with_continuity_correction_on_agrestis_example():
    # Agresti, An Introduction to Categorical Data Analysis, presidential approval at two surveys:
    # 794 approve/approve, 150 approve/disapprove, 86 disapprove/approve, 570 disapprove/disapprove.
    # As verdicts: "A right, B wrong" 150 times, the reverse 86 times.
    y = np.ones(1600, int)
    a = np.r_[np.ones(794), np.ones(150), np.zeros(86), np.zeros(570)].astype(int)
    b = np.r_[np.ones(794), np.zeros(150), np.ones(86), np.zeros(570)].astype(int)
    result = comparison.mcnemar_test(y, a, b)
    assert (result["a_right_b_wrong"], result["a_wrong_b_right"]) == (150, 86)
    assert result["statistic"] == pytest.approx(63 ** 2 / 236)  # (|150 - 86| - 1)^2 / 236 = 16.82
    assert result["p_value"] == pytest.approx(math.erfc(math.sqrt(63 ** 2 / 236 / 2)), rel=1e-9)
    assert "continuity" in result["method"]
    assert (result["both_right"], result["both_wrong"]) == (794, 570)


def test_mcnemar_exact_for_few_discordant_images():
    # 6 images only A gets right, 1 only B: two-sided binomial p = 2 * (1 + 7) / 2^7 = 0.125.
    y = np.zeros(20, int)
    a = np.zeros(20, int)
    b = np.r_[np.ones(6), np.zeros(14)].astype(int)
    a[10] = 1
    result = comparison.mcnemar_test(y, a, b)
    assert (result["a_right_b_wrong"], result["a_wrong_b_right"]) == (6, 1)
    assert result["p_value"] == pytest.approx(0.125)
    assert result["method"].startswith("exact")
    # The switch: 24 discordant images -> exact, 25 -> chi-square.
    y = np.ones(25, int)
    assert comparison.mcnemar_test(y[:24], np.ones(24, int), np.zeros(24, int))["method"].startswith("exact")
    assert comparison.mcnemar_test(y, np.ones(25, int), np.zeros(25, int))["method"].startswith("chi")
    # Forcing the chi-square on the small example: (|6 - 1| - 1)^2 / 7.
    assert comparison.mcnemar_test(np.zeros(20, int), a, b, exact=False)["statistic"] == pytest.approx(16 / 7)
    with pytest.raises(ValueError, match="verdict 0/1"):
        comparison.mcnemar_test(y, np.full(25, 0.7), np.zeros(25, int))


def test_paired_bootstrap_keeps_the_pairing():
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.6).astype(int)
    a = y * 1.0 + rng.normal(size=400)
    b = a + rng.normal(scale=0.05, size=400)  # almost the same model
    out = comparison.paired_bootstrap(y, a, b, threshold_a=0.5, threshold_b=0.5, n_boot=400)
    assert out["roc_auc"]["a"]["estimate"] == pytest.approx(roc_auc_score(y, a))
    assert out["sensitivity"]["a"]["estimate"] == pytest.approx((a[y == 1] >= 0.5).mean())
    diff = out["roc_auc"]["difference"]
    width_diff = diff["high"] - diff["low"]
    width_a = out["roc_auc"]["a"]["high"] - out["roc_auc"]["a"]["low"]
    # Paired resampling: the difference of two near-identical models is far tighter than either AUC.
    assert width_diff < width_a / 5
    assert diff["low"] <= diff["estimate"] <= diff["high"]
    same = comparison.paired_bootstrap(y, a, a, threshold_a=0.5, threshold_b=0.5, n_boot=50)
    assert same["specificity"]["difference"] == {"estimate": 0.0, "low": 0.0, "high": 0.0}


def test_compare_and_reading_tell_a_clear_winner_from_a_tie():
    rng = np.random.default_rng(4)
    y = (rng.random(500) < 0.6).astype(int)
    good = y * 2.0 + rng.normal(size=500)
    poor = y * 0.3 + rng.normal(size=500)
    result = comparison.compare(y, poor, good, threshold_a=0.2, threshold_b=1.0, n_boot=200)
    text = comparison.reading(result, name_a="poor", name_b="good")
    assert result["delong"]["p_value"] < 1e-6
    assert text[0].startswith("good's AUC is higher than poor's")
    assert "good makes fewer mistakes" in text[1]
    tie = comparison.compare(y, good, good + rng.normal(scale=1e-3, size=500), threshold_a=1.0,
                             threshold_b=1.0, n_boot=200)
    text = comparison.reading(tie, name_a="x", name_b="y")
    assert text[0].startswith("No evidence that x and y differ in AUC")
    assert "no evidence that either makes fewer mistakes" in text[1]
    assert "includes 0" in text[2] and "includes 0" in text[3]


def test_align_pairs_by_image_and_refuses_different_images():
    fa = pd.DataFrame({"path": ["n/1", "p/2", "p/3"], "label": [0, 1, 1], "score": [0.1, 0.8, 0.6]})
    fb = pd.DataFrame({"path": ["p/3", "n/1", "p/2"], "label": [1, 0, 1], "score": [0.3, 0.2, 0.9]})
    y, a, b = comparison.align(fa, fb)
    assert y.tolist() == [0, 1, 1] and a.tolist() == [0.1, 0.8, 0.6] and b.tolist() == [0.2, 0.9, 0.3]
    other = fb.assign(path=["p/9", "n/1", "p/2"])
    with pytest.raises(comparison.NotComparable, match="different images .*2 in common"):
        comparison.align(fa, other, name_a="seed-baseline", name_b="x")
    with pytest.raises(comparison.NotComparable, match="different labels"):
        comparison.align(fa, fb.assign(label=[0, 0, 1]))


def test_single_run_intervals_and_the_numpy_roc_match_scikit_learn():
    from sklearn.metrics import roc_curve

    from app.compare_view import roc_curve as numpy_roc

    rng = np.random.default_rng(5)
    y = (rng.random(300) < 0.7).astype(int)
    s = np.round(y * 0.7 + rng.normal(size=300), 1)  # ties
    out = comparison.bootstrap_intervals(y, s, threshold=0.4, n_boot=300)
    assert out["roc_auc"]["estimate"] == pytest.approx(roc_auc_score(y, s))
    assert out["sensitivity"]["estimate"] == pytest.approx((s[y == 1] >= 0.4).mean())
    assert out["accuracy"]["estimate"] == pytest.approx(((s >= 0.4) == (y == 1)).mean())
    for key in ("sensitivity", "specificity", "accuracy", "roc_auc"):
        assert out[key]["low"] < out[key]["estimate"] < out[key]["high"]
    fpr, tpr, auc = numpy_roc(y, s)
    ref_fpr, ref_tpr, _ = roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    assert auc == pytest.approx(roc_auc_score(y, s))
