"""Tests for deepcr_jax.metrics on hand-computable cases."""

from __future__ import annotations

import numpy as np
import pytest

from deepcr_jax import metrics as M


def test_confusion_hand_case():
    pred = np.array([[1, 0], [1, 1]], bool)
    truth = np.array([[1, 1], [0, 1]], bool)
    assert M.confusion(pred, truth) == (2, 0, 1, 1)
    ignore = np.array([[0, 0], [1, 0]], bool)
    assert M.confusion(pred, truth, ignore) == (2, 0, 0, 1)


def test_confusion_batched_sums_images():
    pred = np.zeros((2, 3, 3), bool)
    truth = np.zeros((2, 3, 3), bool)
    pred[0, 1, 1] = truth[0, 1, 1] = True  # tp
    pred[1, 0, 0] = True  # fp
    truth[1, 2, 2] = True  # fn
    assert M.confusion(pred, truth) == (1, 15, 1, 1)
    # 0/1 integers are accepted as booleans
    assert M.confusion(pred.astype(int), truth.astype(np.uint8)) == (1, 15, 1, 1)


def test_roc_tiny_hand_case():
    prob = np.array([[0.1, 0.4], [0.35, 0.8]])
    truth = np.array([[0, 0], [1, 1]], bool)
    fpr, tpr, thr = M.roc(prob, truth, thresholds=[0.9, 0.0, 0.2, 0.4, 0.5])
    assert np.array_equal(thr, [0.0, 0.2, 0.4, 0.5, 0.9])
    # prediction is prob > t (strict): at t=0.4 the 0.4 pixel is negative
    assert np.allclose(fpr, [1.0, 0.5, 0.0, 0.0, 0.0])
    assert np.allclose(tpr, [1.0, 1.0, 0.5, 0.5, 0.0])


def test_roc_ignore_excluded():
    prob = np.array([[0.9, 0.9], [0.1, 0.9]])
    truth = np.array([[1, 0], [1, 0]], bool)
    ignore = np.array([[0, 1], [1, 0]], bool)
    fpr, tpr, _ = M.roc(prob, truth, ignore, thresholds=[0.5])
    assert fpr[0] == 1.0 and tpr[0] == 1.0  # only (0,0) tp and (1,1) fp remain


def test_roc_matches_brute_force_on_random_stack():
    rng = np.random.default_rng(0)
    prob = rng.uniform(size=(3, 17, 13)).astype(np.float32)
    truth = rng.uniform(size=prob.shape) < 0.2
    ignore = rng.uniform(size=prob.shape) < 0.1
    thr = np.concatenate([[0.5], prob.ravel()[:20].astype(np.float64), [0.0, 1.0]])
    fpr, tpr, t = M.roc(prob, truth, ignore, thresholds=thr)
    for j, tj in enumerate(t):
        tp, tn, fp, fn = M.confusion(prob > tj, truth, ignore)
        assert fpr[j] == fp / (fp + tn)
        assert tpr[j] == tp / (tp + fn)


def test_roc_dilated_tpr_with_undilated_fpr():
    prob = np.zeros((5, 5))
    prob[2, 2] = 1.0
    truth = np.zeros((5, 5), bool)
    truth[2, 2] = truth[2, 3] = True
    truth[0, 4] = True  # not adjacent to any prediction
    fpr, tpr, _ = M.roc(prob, truth, thresholds=[0.5])
    fd, td, _ = M.roc(prob, truth, thresholds=[0.5], dilate=True)
    assert tpr[0] == pytest.approx(1 / 3) and td[0] == pytest.approx(2 / 3)
    assert fpr[0] == 0.0 and fd[0] == 0.0  # FPR stays the non-dilated value


def test_roc_dilation_per_image_and_ignore():
    prob = np.zeros((2, 5, 5))
    truth = np.zeros((2, 5, 5), bool)
    prob[0, 2, 2] = 1.0
    truth[1, 2, 3] = True  # next to image 0's prediction, but in another image
    _, td, _ = M.roc(prob, truth, thresholds=[0.5], dilate=True)
    assert td[0] == 0.0
    # a prediction on an ignored pixel does not spread to its neighbours
    prob2 = np.zeros((5, 5))
    prob2[2, 2] = 1.0
    truth2 = np.zeros((5, 5), bool)
    truth2[2, 3] = True
    ign = np.zeros((5, 5), bool)
    ign[2, 2] = True
    _, td2, _ = M.roc(prob2, truth2, ign, thresholds=[0.5], dilate=True)
    assert td2[0] == 0.0
    _, td3, _ = M.roc(prob2, truth2, thresholds=[0.5], dilate=True)
    assert td3[0] == 1.0


def test_tpr_at_fpr_interpolation():
    fpr = np.array([0.01, 0.0, 0.001])
    tpr = np.array([0.9, 0.0, 0.5])
    assert M.tpr_at_fpr(fpr, tpr, 0.0005) == pytest.approx(0.25)
    assert M.tpr_at_fpr(fpr, tpr, 0.005) == pytest.approx(0.5 + 0.4 * 4 / 9)
    assert M.tpr_at_fpr(fpr, tpr, 0.001) == pytest.approx(0.5)
    # beyond the last point the curve runs to (1, 1)
    assert M.tpr_at_fpr(fpr, tpr, 0.505) == pytest.approx(0.95)
    # repeated FPR values: the best TPR is used
    assert M.tpr_at_fpr([0.001, 0.001], [0.2, 0.6], 0.001) == pytest.approx(0.6)
    d = M.tpr_at_paper_fprs(fpr, tpr)
    assert set(d) == {0.0005, 0.005} and d[0.0005] == pytest.approx(0.25)


def test_inpaint_mse_by_hand():
    pred = np.array([[1.0, 2.0], [3.0, 4.0]])
    truth = np.array([[1.0, 0.0], [0.0, 0.0]])
    mask = np.array([[1, 1], [1, 0]], bool)
    assert M.inpaint_mse(pred, truth, mask) == pytest.approx((0 + 4 + 9) / 3)
    ign = np.array([[0, 0], [1, 0]], bool)
    assert M.inpaint_mse(pred, truth, mask, ign) == pytest.approx(2.0)
    assert np.isnan(M.inpaint_mse(pred, truth, np.zeros((2, 2), bool)))


def test_bad_arguments():
    with pytest.raises(ValueError, match="pred"):
        M.confusion(np.zeros((2, 2), bool), np.zeros((2, 3), bool))
    with pytest.raises(ValueError, match="truth"):
        M.confusion(np.zeros((2, 2), bool), np.full((2, 2), 0.5))
    with pytest.raises(ValueError, match="ignore"):
        M.roc(np.zeros((2, 2)), np.zeros((2, 2), bool), np.zeros((3, 2), bool))
    with pytest.raises(ValueError, match="thresholds"):
        M.roc(np.zeros((2, 2)), np.zeros((2, 2), bool), thresholds=[])
    with pytest.raises(ValueError, match="target"):
        M.tpr_at_fpr([0.1], [0.5], 1.5)
    with pytest.raises(ValueError, match="mask"):
        M.inpaint_mse(np.zeros((2, 2)), np.zeros((2, 2)), np.zeros((2, 1), bool))
