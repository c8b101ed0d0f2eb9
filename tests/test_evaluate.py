"""Tests for deepcr_jax.evaluate on hand-computable cases (fast: numpy, tiny arrays)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from deepcr_jax import evaluate as ev
from deepcr_jax.evaluate import baselines

# ---------------------------------------------------------------------------
# detection

# 4x4 score map, CRs at (0,0), (0,1), (3,0), (3,3): see test_roc_counts_by_hand
PROB = np.array(
    [
        [0.9, 0.2, 0.0, 0.0],
        [0.6, 0.1, 0.0, 0.0],
        [0.0, 0.0, 0.7, 0.0],
        [0.0, 0.0, 0.0, 0.3],
    ]
)
TRUTH = np.zeros((4, 4), bool)
TRUTH[0, 0] = TRUTH[0, 1] = TRUTH[3, 0] = TRUTH[3, 3] = True
THRESHOLDS = [0.65, 0.05, 0.25]  # any order: sorted to 0.05, 0.25, 0.65


def test_confusion_hand_case():
    pred = np.array([[1, 0], [1, 1]], bool)
    truth = np.array([[1, 1], [0, 1]], bool)
    assert ev.confusion(pred, truth) == (2, 0, 1, 1)
    ignore = np.array([[0, 0], [1, 0]], bool)
    assert ev.confusion(pred, truth, ignore) == (2, 0, 0, 1)
    # 0/1 integers are booleans; stacks are summed over images
    stack = np.stack([pred, ~pred]).astype(np.uint8)
    assert ev.confusion(stack, np.stack([truth, truth])) == (3, 1, 1, 3)


def test_roc_counts_by_hand():
    """Counted by hand: prediction is score > t, dilated TPR from 3x3 maxima of the scores."""
    score = np.stack([PROB, np.zeros((4, 4))])
    truth = np.stack([TRUTH, np.eye(4, dtype=bool) & (np.arange(4) == 2)[:, None]])  # image 1: one CR
    c = ev.roc_counts(score, truth, thresholds=THRESHOLDS)
    assert np.array_equal(c["thresholds"], [0.05, 0.25, 0.65])
    # t=0.05: 0.9 0.2 0.6 0.1 0.7 0.3 -> tp (0,0) (0,1) (3,3), fp (1,0) (1,1) (2,2)
    # t=0.25: 0.9 0.6 0.7 0.3 -> tp (0,0) (3,3), fp (1,0) (2,2); t=0.65: 0.9 0.7 -> tp 1, fp 1
    assert c["tp"].tolist() == [[3, 2, 1], [0, 0, 0]]
    assert c["fp"].tolist() == [[3, 2, 1], [0, 0, 0]]
    # dilated: (0,0), (0,1) see 0.9, (3,3) sees 0.7, (3,0) sees only zeros
    assert c["tp_dilated"].tolist() == [[3, 3, 3], [0, 0, 0]]
    assert c["n_pos"].tolist() == [4, 1] and c["n_neg"].tolist() == [12, 15]
    # the pooled rates are roc() on the whole stack
    fpr, tpr, tprd = ev.pooled_rates(c)
    f2, t2, _ = ev.roc(score, truth, thresholds=THRESHOLDS)
    _, td2, _ = ev.roc(score, truth, thresholds=THRESHOLDS, dilate=True)
    assert np.allclose(fpr, f2) and np.allclose(tpr, t2) and np.allclose(tprd, td2)
    assert np.allclose(fpr, [3 / 27, 2 / 27, 1 / 27]) and np.allclose(tprd, [3 / 5] * 3)


def test_roc_counts_by_hand_with_ignore():
    ignore = np.zeros((4, 4), bool)
    ignore[2, 2] = ignore[0, 1] = True  # a false positive and a CR leave the counts
    c = ev.roc_counts(PROB[None], TRUTH[None], ignore[None], THRESHOLDS)
    assert c["n_pos"].tolist() == [3] and c["n_neg"].tolist() == [11]
    assert c["tp"][0].tolist() == [2, 2, 1]  # (0,0), (3,3) | (0,0), (3,3) | (0,0)
    assert c["fp"][0].tolist() == [2, 1, 0]  # (1,0), (1,1) | (1,0) | -
    # the ignored 0.7 at (2,2) does not spread: (3,3) keeps its own 0.3
    assert c["tp_dilated"][0].tolist() == [2, 2, 1]
    fpr, tpr, _ = ev.roc(PROB, TRUTH, ignore, THRESHOLDS)
    assert np.allclose(fpr, [2 / 11, 1 / 11, 0]) and np.allclose(tpr, [2 / 3, 2 / 3, 1 / 3])


def test_roc_matches_brute_force_on_random_stack(rng):
    prob = rng.uniform(size=(3, 17, 13)).astype(np.float32)
    truth = rng.uniform(size=prob.shape) < 0.2
    ignore = rng.uniform(size=prob.shape) < 0.1
    thr = np.concatenate([[0.5], prob.ravel()[:20].astype(np.float64), [0.0, 1.0]])
    fpr, tpr, t = ev.roc(prob, truth, ignore, thresholds=thr)
    for j, tj in enumerate(t):
        tp, tn, fp, fn = ev.confusion(prob > tj, truth, ignore)
        assert fpr[j] == fp / (fp + tn) and tpr[j] == tp / (tp + fn)


def test_dilated_roc_is_per_image():
    prob = np.zeros((2, 5, 5))
    truth = np.zeros((2, 5, 5), bool)
    prob[0, 2, 2] = 1.0
    truth[1, 2, 3] = True  # beside image 0's prediction, but in another image
    _, td, _ = ev.roc(prob, truth, thresholds=[0.5], dilate=True)
    assert td[0] == 0.0


def test_dilate_by_hand():
    m = np.zeros((2, 5, 5), bool)
    m[0, 0, 0] = m[1, 2, 2] = True
    d = ev.dilate(m)
    assert d[0].sum() == 4 and d[0, :2, :2].all()  # clipped at the corner
    assert d[1].sum() == 9 and d[1, 1:4, 1:4].all()
    assert ev.dilate(m, 2)[1].all() and np.array_equal(ev.dilate(m, 0), m)
    with pytest.raises(ValueError, match="pixels"):
        ev.dilate(m, -1)


def test_tpr_at_fpr_interpolation():
    fpr = np.array([0.01, 0.0, 0.001])
    tpr = np.array([0.9, 0.0, 0.5])
    assert ev.tpr_at_fpr(fpr, tpr, 0.0005) == pytest.approx(0.25)
    assert ev.tpr_at_fpr(fpr, tpr, 0.005) == pytest.approx(0.5 + 0.4 * 4 / 9)
    assert ev.tpr_at_fpr(fpr, tpr, 0.001) == pytest.approx(0.5)
    assert ev.tpr_at_fpr(fpr, tpr, 0.505) == pytest.approx(0.95)  # towards the end point (1, 1)
    assert ev.tpr_at_fpr([0.001, 0.001], [0.2, 0.6], 0.001) == pytest.approx(0.6)  # best TPR kept
    assert ev.tpr_at_fpr([0.001, np.nan], [0.5, 0.9], 0.001) == pytest.approx(0.5)  # nan dropped


def test_summarize_counts():
    score = np.stack([PROB, PROB.T])
    truth = np.stack([TRUTH, TRUTH.T])
    c = ev.roc_counts(score, truth, thresholds=THRESHOLDS)
    res = ev.summarize_counts(c, "threshold", n_boot=20, seed=1)
    fpr, tpr, _ = ev.roc(score, truth, thresholds=THRESHOLDS)
    for t in ev.PAPER_FPRS:
        assert res["tpr"][str(t)] == pytest.approx(ev.tpr_at_fpr(fpr, tpr, t))
        assert res["extrapolated"][str(t)]  # 0.05 % and 0.5 % lie below the smallest FPR, 1/24
    assert res["roc"]["threshold"] == [0.65, 0.25, 0.05]  # sorted by FPR
    assert res["tpr_se"]["0.005"] == pytest.approx(0.0, abs=1e-12)  # both images are the same up to a transpose
    again = ev.summarize_counts(c, "threshold", n_boot=20, seed=1)
    assert again == res
    assert np.isnan(ev.summarize_counts(c, "threshold", n_boot=0)["tpr_se"]["0.005"])


def test_bad_arguments():
    with pytest.raises(ValueError, match="pred"):
        ev.confusion(np.zeros((2, 2), bool), np.zeros((2, 3), bool))
    with pytest.raises(ValueError, match="truth"):
        ev.confusion(np.zeros((2, 2), bool), np.full((2, 2), 0.5))
    with pytest.raises(ValueError, match="ignore"):
        ev.roc(np.zeros((2, 2)), np.zeros((2, 2), bool), np.zeros((3, 2), bool))
    with pytest.raises(ValueError, match="thresholds"):
        ev.roc(np.zeros((2, 2)), np.zeros((2, 2), bool), thresholds=[])
    with pytest.raises(ValueError, match="3-D"):
        ev.roc_counts(np.zeros((2, 2)), np.zeros((2, 2), bool))
    with pytest.raises(ValueError, match="target"):
        ev.tpr_at_fpr([0.1], [0.5], 1.5)
    with pytest.raises(ValueError, match="mask"):
        ev.inpaint_mse(np.zeros((2, 2)), np.zeros((2, 2)), np.zeros((2, 1), bool))


# ---------------------------------------------------------------------------
# inpainting


def _distinct_masks(n: int, offset: int) -> np.ndarray:
    """n masks of 4x4, mask i flags exactly pixel (offset + i) (flat index): each is recognisable."""
    m = np.zeros((n, 16), bool)
    m[np.arange(n), offset + np.arange(n)] = True
    return m.reshape(n, 4, 4)


def test_donor_masks_deterministic_and_never_own():
    sets = {"a": _distinct_masks(4, 0), "b": _distinct_masks(3, 4), "c": _distinct_masks(5, 7)}
    out = ev.donor_masks(sets, seed=5)
    again = ev.donor_masks(sets, seed=5)
    other = ev.donor_masks(sets, seed=6)
    assert list(out) == ["a", "b", "c"]
    for k, v in sets.items():
        masks, donors = out[k]
        assert masks.shape == v.shape and masks.dtype == bool
        assert np.array_equal(masks, again[k][0]) and donors == again[k][1]
        for i, (dk, di) in enumerate(donors):
            assert (dk, di) != (k, i)  # never the image's own mask
            assert np.array_equal(masks[i], sets[dk][di])
            assert not np.array_equal(masks[i], v[i])
    assert any(out[k][1] != other[k][1] for k in sets)
    with pytest.raises(ValueError, match="at least 2"):
        ev.donor_masks({"a": _distinct_masks(1, 0)}, seed=0)


def test_inpaint_mse_by_hand():
    pred = np.array([[1.0, 2.0], [3.0, 4.0]])
    truth = np.array([[1.0, 0.0], [0.0, 0.0]])
    mask = np.array([[1, 1], [1, 0]], bool)
    assert ev.inpaint_mse(pred, truth, mask) == pytest.approx((0 + 4 + 9) / 3)
    ign = np.array([[0, 0], [1, 0]], bool)
    assert ev.inpaint_mse(pred, truth, mask, ign) == pytest.approx(2.0)
    assert np.isnan(ev.inpaint_mse(pred, truth, np.zeros((2, 2), bool)))


def test_mse_summary_by_hand():
    image = np.array([[[10.0, 10.0], [10.0, 10.0]], [[20.0, 20.0], [20.0, 20.0]]])
    batch = SimpleNamespace(image=image, clean=image - 1.0, readnoise=np.array([2.0, 3.0]))
    pred = image + np.array([[[1.0, 2.0], [0.0, 0.0]], [[3.0, 0.0], [0.0, 0.0]]])
    scored = np.array([[[1, 1], [0, 0]], [[1, 0], [0, 0]]], bool)
    r = ev.mse_summary(pred, batch, scored, n_boot=10)
    assert r["mse_e2"] == pytest.approx((1 + 4 + 9) / 3) and r["n_pixels"] == 3
    assert r["mse_paper_units"] == pytest.approx(r["mse_e2"] / 1e4)
    assert r["mean_stamp_mse_e2"] == pytest.approx((2.5 + 9) / 2)
    assert r["noise_floor_e2"] == pytest.approx((9 + 4 + 9 + 4 + 19 + 9) / 3)  # clean + readnoise^2
    assert r["mse_vs_clean_e2"] == pytest.approx((4 + 9 + 16) / 3)
    assert r["median_sq_err_e2"] == 4.0


def test_stamp_sse_by_hand():
    truth = np.zeros((2, 2, 2))
    pred = np.array([[[1.0, 2.0], [3.0, 4.0]], [[5.0, 0.0], [0.0, 0.0]]])
    scored = np.array([[[1, 1], [0, 0]], [[1, 0], [0, 1]]], bool)
    sse, npx = ev.stamp_sse(pred, truth, scored)
    np.testing.assert_array_equal(sse, [5.0, 25.0])
    np.testing.assert_array_equal(npx, [2, 2])
    with pytest.raises(ValueError, match="shape"):
        ev.stamp_sse(pred[0], truth[0], scored[0])
    with pytest.raises(ValueError):
        ev.stamp_sse(pred, truth[:1], scored)


def test_paired_mse_ratio_by_hand_and_its_interval():
    npx = np.array([10, 10, 10, 0])
    r = ev.paired_mse_ratio([1.0, 2.0, 3.0, 0.0], [2.0, 2.0, 6.0, 0.0], npx, n_boot=400)
    assert r["ratio"] == pytest.approx(6 / 10) and r["n_images"] == 3
    assert r["mse_a_e2"] == pytest.approx(6 / 30) and r["mse_b_e2"] == pytest.approx(10 / 30)
    assert r["a_better_images"] == pytest.approx(2 / 3)
    assert r["top_image"] == 2 and r["top_share"] == pytest.approx(3 / 4)
    assert r["ratio_without_top"] == pytest.approx(3 / 4)
    assert r["ratio_lo"] <= r["ratio"] <= r["ratio_hi"] <= 1.0 and r["p_a_worse"] == 0.0
    # A better on every stamp but one, which decides the pooled ratio: the interval spans 1
    a = np.r_[np.full(99, 1.0), 500.0]
    b = np.r_[np.full(99, 2.0), 100.0]
    r = ev.paired_mse_ratio(a, b, np.full(100, 5), n_boot=1000, seed=1)
    assert r["ratio"] > 1 and r["a_better_images"] == pytest.approx(0.99)
    assert r["top_image"] == 99 and r["ratio_without_top"] == pytest.approx(0.5)
    assert r["ratio_lo"] < 1 < r["ratio_hi"] and 0.3 < r["p_a_worse"] < 0.9
    again = ev.paired_mse_ratio(a, b, np.full(100, 5), n_boot=1000, seed=1)
    assert again == r


@pytest.mark.parametrize(
    ("sse_a", "sse_b", "npx", "kw", "match"),
    [
        ([1.0, 2.0], [1.0], [1, 1], {}, "one length"),
        ([1.0, -2.0], [1.0, 1.0], [1, 1], {}, ">= 0"),
        ([1.0, np.nan], [1.0, 1.0], [1, 1], {}, "finite"),
        ([1.0, 2.0], [1.0, 1.0], [1.5, 1.0], {}, "integer"),
        ([1.0, 2.0], [1.0, 1.0], [0, 0], {}, "no image"),
        ([1.0, 2.0], [1.0, 1.0], [1, 1], {"n_boot": 0}, "n_boot"),
        ([1.0, 2.0], [1.0, 1.0], [1, 1], {"level": 1.0}, "level"),
    ],
)
def test_paired_mse_ratio_rejects_bad_input(sse_a, sse_b, npx, kw, match):
    with pytest.raises(ValueError, match=match):
        ev.paired_mse_ratio(sse_a, sse_b, np.asarray(npx), **kw)


def test_end_to_end_mse_by_hand():
    """CR-free image 0; CRs at (0,0) (0,1) (1,1); the pipeline replaced (0,0) (1,0) (1,1)."""
    clean = np.zeros((1, 3, 3))
    cr = np.zeros((1, 3, 3), bool)
    cr[0, 0, 0] = cr[0, 0, 1] = cr[0, 1, 1] = True
    replaced = np.zeros((1, 3, 3), bool)
    replaced[0, 0, 0] = replaced[0, 1, 0] = replaced[0, 1, 1] = True
    cleaned = np.zeros((1, 3, 3))
    cleaned[0, 0, 0] = 1.0  # inpainted CR pixel, error 1
    cleaned[0, 1, 1] = 3.0  # inpainted CR pixel, error 3
    cleaned[0, 1, 0] = 2.0  # false positive, inpainted with error 2
    cleaned[0, 0, 1] = 10.0  # missed CR: its charge is still there
    cleaned[0, 2, 2] = 7.0  # untouched, not a CR: never scored
    r = ev.end_to_end_mse(cleaned, clean, replaced, cr)
    assert r["mse_replaced_e2"] == pytest.approx((1 + 4 + 9) / 3) and r["n_replaced"] == 3
    assert r["mse_cr_e2"] == pytest.approx((1 + 100 + 9) / 3) and r["n_cr"] == 3
    assert r["mse_cr_replaced_e2"] == pytest.approx(5.0) and r["n_cr_replaced"] == 2
    assert r["mse_cr_missed_e2"] == pytest.approx(100.0) and r["n_cr_missed"] == 1
    assert r["mse_false_e2"] == pytest.approx(4.0) and r["n_false"] == 1
    assert r["sse_cr_missed_fraction"] == pytest.approx(100 / 110)
    ignore = np.zeros((1, 3, 3), bool)
    ignore[0, 0, 1] = True  # the missed CR is saturated: left out
    r = ev.end_to_end_mse(cleaned, clean, replaced, cr, ignore)
    assert r["mse_cr_e2"] == pytest.approx(5.0) and r["n_cr_missed"] == 0
    assert np.isnan(r["mse_cr_missed_e2"]) and r["sse_cr_missed_fraction"] == 0.0


# ---------------------------------------------------------------------------
# baselines and test set


def test_optional_dependency_error_names_the_extra():
    with pytest.raises(ImportError, match=r"deepcr-jax\[bench\]"):
        baselines._require("not_a_real_module_xyz", "not-a-package", "LACosmic")


def test_biharmonic_fills_a_plane_exactly():
    pytest.importorskip("skimage")
    yy, xx = np.mgrid[:16, :16]
    img = (3.0 * yy + 2.0 * xx + 100.0)[None]
    mask = np.zeros_like(img, bool)
    mask[0, 5:8, 6:9] = True
    out = ev.biharmonic(img + 1000.0 * mask, mask)
    assert out.dtype == np.float32 and np.allclose(out, img, atol=1e-3)


def test_lacosmic_counts_shapes_and_monotone():
    pytest.importorskip("astroscrappy")
    rng = np.random.default_rng(0)
    img = rng.normal(100.0, 10.0, size=(2, 48, 48)).astype(np.float32)
    cr = np.zeros(img.shape, bool)
    cr[:, 20, 10:14] = True
    img[cr] += 2000.0
    ignore = np.zeros(img.shape, bool)
    c = ev.lacosmic_counts(img, cr, ignore, ev.OBJLIM["extragalactic"], sigclips=(3.0, 6.0, 50.0))
    assert c["tp"].shape == c["fp"].shape == c["tp_dilated"].shape == (2, 3)
    assert c["thresholds"].tolist() == [3.0, 6.0, 50.0] and c["n_pos"].tolist() == [4, 4]
    assert (c["tp"][:, 0] == 4).all() and (np.diff(c["fp"], axis=1) <= 0).all()


def test_make_test_set_is_deterministic():
    a = ev.make_test_set(2, 11, shape=(32, 32), fields=("globular",))
    b = ev.make_test_set(2, 11, shape=(32, 32), fields=("globular",))
    one = ev.make_test_set(1, 11, shape=(32, 32), fields=("globular",))["globular"]
    other = ev.make_test_set(1, 12, shape=(32, 32), fields=("globular",))["globular"]
    ga, gb = a["globular"], b["globular"]
    assert list(a) == ["globular"] and len(ga) == 2 and ga.image.shape == (2, 32, 32)
    for name in ("image", "clean", "cr_mask", "ignore"):
        assert np.array_equal(getattr(ga, name), getattr(gb, name))
        assert np.array_equal(getattr(ev.head(ga, 1), name), getattr(one, name))  # first k independent of n
    assert not np.array_equal(one.image, other.image)
    assert ev.field_seed(11, 1) == ev.field_seed(11, 1) != ev.field_seed(11, 0)
    d = ev.describe_batch(ga)
    assert d["n_stamps"] == 2 and 0 <= d["cr_pixel_fraction"] < 1
    with pytest.raises(ValueError, match="fields"):
        ev.make_test_set(1, 0, fields=("cluster",))
