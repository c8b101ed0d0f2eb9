"""CR detection scores: confusion counts, ROC curves, TPR at fixed FPR, bootstrap errors.

Conventions (as the deepCR paper, Zhang & Bloom 2020, Sec. 4.1): masks are
boolean with True = cosmic ray; ``ignore`` (True = excluded, e.g. saturated)
pixels are left out of every count. Arrays are single images ``(ny, nx)`` or
stacks ``(n, ny, nx)``; spatial operations (3x3 dilation) act on the last two
axes, i.e. per image. A pixel is predicted CR at threshold ``t`` when its
score is ``> t``. The dilated TPR counts a CR pixel as found when a predicted
pixel lies in its 3x3 neighbourhood, at the FPR of the non-dilated prediction.

Per-image counts (:func:`roc_counts`) are the unit of work: summed they give
the pooled ROC of a whole test set (identical to :func:`roc` on the stack),
reweighted they give bootstrap resamples over images (:func:`summarize_counts`),
and they add up over batches (validation during training).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import maximum_filter

from ._arrays import as_bool, check_same, resample_weights, valid_pixels

__all__ = [
    "N_BOOT",
    "PAPER_FPRS",
    "confusion",
    "default_thresholds",
    "dilate",
    "pooled_rates",
    "roc",
    "roc_counts",
    "summarize_counts",
    "summarize_roc",
    "tpr_at_fpr",
]

#: False-positive rates of the paper's Table 2 (0.05 % and 0.5 %).
PAPER_FPRS: tuple[float, float] = (0.0005, 0.005)
#: Default number of bootstrap resamples (over images) for standard errors.
N_BOOT = 200
_CHUNK = 1 << 22


def confusion(pred, truth, ignore=None) -> tuple[int, int, int, int]:
    """Confusion-matrix counts of a binary CR prediction.

    Parameters
    ----------
    pred, truth : array_like of bool, shape (ny, nx) or (n, ny, nx)
        Predicted and true CR masks (True = CR); 0/1 numbers are accepted.
    ignore : array_like of bool, same shape, optional
        True = pixel excluded from all counts.

    Returns
    -------
    (tp, tn, fp, fn) : tuple of int
    """
    truth = as_bool("truth", truth)
    pred = as_bool("pred", pred)
    check_same("pred", pred, truth, "truth")
    valid = valid_pixels(truth, ignore)
    if valid is None:
        valid = np.ones(truth.shape, dtype=bool)
    tp = int(np.count_nonzero(pred & truth & valid))
    fp = int(np.count_nonzero(pred & ~truth & valid))
    fn = int(np.count_nonzero(~pred & truth & valid))
    tn = int(np.count_nonzero(~pred & ~truth & valid))
    return tp, tn, fp, fn


def default_thresholds() -> np.ndarray:
    """Probability thresholds, dense near 0 and 1: ndarray float64 (k,), ascending."""
    lin = np.linspace(0.0, 1.0, 101)
    lo = np.logspace(-8, -1, 71)
    return np.unique(np.concatenate([lin, lo, 1.0 - lo]))


def dilate(mask, pixels: int = 1) -> np.ndarray:
    """Grow a mask by ``pixels`` in every direction (a (2p+1)x(2p+1) box), per image.

    Parameters
    ----------
    mask : array_like of bool, shape (ny, nx) or (n, ny, nx)
        True = CR (or any flagged pixel).
    pixels : int
        Box half-width p >= 0; 1 gives the paper's 3x3 dilation.

    Returns
    -------
    ndarray of bool, same shape
    """
    mask = as_bool("mask", mask)
    if mask.ndim < 2:
        raise ValueError(f"mask must be 2-D (ny, nx) or 3-D (n, ny, nx); got shape {mask.shape}")
    if isinstance(pixels, bool) or not isinstance(pixels, (int, np.integer)) or pixels < 0:
        raise ValueError(f"pixels must be a non-negative int; got {pixels!r}")
    if pixels == 0:
        return mask.copy()
    size = (1,) * (mask.ndim - 2) + (2 * pixels + 1,) * 2
    return maximum_filter(mask, size=size, mode="constant", cval=False)


def _thresholds(thresholds) -> np.ndarray:
    thr = default_thresholds() if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    thr = np.unique(thr.ravel())
    if thr.size == 0 or not np.all(np.isfinite(thr)):
        raise ValueError(f"thresholds must be a non-empty array of finite numbers; got {thresholds!r}")
    return thr


def _count_above(values: np.ndarray, thr: np.ndarray) -> np.ndarray:
    """For each threshold ``thr[j]`` (ascending), the number of ``values > thr[j]``."""
    counts = np.zeros(thr.size + 1, dtype=np.int64)
    flat = values.ravel()
    for s in range(0, flat.size, _CHUNK):
        k = np.searchsorted(thr, flat[s : s + _CHUNK], side="left")  # number of thr < v
        counts += np.bincount(k, minlength=thr.size + 1)
    # a value with k thresholds below it is "> thr[j]" for all j < k
    return counts[::-1].cumsum()[::-1][1:]


def _dilate_scores(prob: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """3x3 maximum filter per image: threshold(max3x3(p)) == dilate(threshold(p))."""
    p = np.array(prob, dtype=np.float64, copy=True)
    if valid is not None:
        p[~valid] = -np.inf  # predictions on ignored pixels do not spread
    size = (1,) * (p.ndim - 2) + (3, 3)
    return maximum_filter(p, size=size, mode="constant", cval=-np.inf)


def _checked(prob, truth):
    truth = as_bool("truth", truth)
    prob = np.asarray(prob)
    check_same("prob", prob, truth, "truth")
    if truth.ndim < 2:
        raise ValueError(f"truth must be 2-D (ny, nx) or 3-D (n, ny, nx); got shape {truth.shape}")
    if not np.issubdtype(prob.dtype, np.number):
        raise ValueError(f"prob must be numeric; got dtype {prob.dtype}")
    return prob, truth


def _counts(prob, truth, valid, thr, dilated: bool):
    """(fp, tp[, tp_dilated], n_neg, n_pos) of one image or stack at thresholds ``thr``."""
    neg = ~truth if valid is None else ~truth & valid
    pos = truth if valid is None else truth & valid
    fp = _count_above(prob[neg], thr)
    tp = _count_above(prob[pos], thr)
    tpd = _count_above(_dilate_scores(prob, valid)[pos], thr) if dilated else None
    return fp, tp, tpd, int(np.count_nonzero(neg)), int(np.count_nonzero(pos))


def roc(prob, truth, ignore=None, thresholds=None, *, dilate: bool = False):
    """ROC curve of a CR score map, exact at the given thresholds.

    Counting is histogram based (one ``searchsorted`` per chunk of pixels),
    so memory does not grow with the number of thresholds.

    Parameters
    ----------
    prob : array_like of float, shape (ny, nx) or (n, ny, nx)
        CR score, e.g. deepCR probabilities in [0, 1]; CR where ``prob > t``.
    truth : array_like of bool, same shape
        True CR mask (True = CR).
    ignore : array_like of bool, same shape, optional
        True = pixel excluded from every count.
    thresholds : array_like of float, optional
        Thresholds (any order, duplicates removed); default
        :func:`default_thresholds`.
    dilate : bool
        Return the TPR of the 3x3-dilated prediction (per image; predictions
        on ignored pixels do not spread); the FPR stays the non-dilated one.

    Returns
    -------
    fpr, tpr : ndarray float64, shape (k,)
        Rates at the sorted thresholds; ``nan`` where there are no negative
        (resp. positive) pixels.
    thresholds : ndarray float64, shape (k,)
        The sorted unique thresholds.
    """
    prob, truth = _checked(prob, truth)
    thr = _thresholds(thresholds)
    fp, tp, tpd, n_neg, n_pos = _counts(prob, truth, valid_pixels(truth, ignore), thr, dilate)
    nan = np.full(thr.size, np.nan)
    fpr = fp / n_neg if n_neg else nan
    tpr = (tpd if dilate else tp) / n_pos if n_pos else nan
    return np.asarray(fpr, dtype=np.float64), np.asarray(tpr, dtype=np.float64), thr


def roc_counts(score, truth, ignore=None, thresholds=None) -> dict:
    """Per-image ROC counts (plain and 3x3-dilated) of a stack of score maps.

    Parameters
    ----------
    score : array_like of float, shape (n, ny, nx)
        CR score (``score > t`` is a CR at threshold ``t``).
    truth : array_like of bool, shape (n, ny, nx)
        True CR masks (True = CR).
    ignore : array_like of bool, shape (n, ny, nx), optional
        True = pixel excluded from every count.
    thresholds : array_like of float, optional
        Default :func:`default_thresholds`; sorted and made unique.

    Returns
    -------
    dict
        ``thresholds`` (k,) float64; ``fp``, ``tp``, ``tp_dilated`` (n, k)
        int64; ``n_neg``, ``n_pos`` (n,) int64: scored CR-free and CR
        pixels. Counts of several batches concatenate along axis 0.
    """
    score, truth = _checked(score, truth)
    if truth.ndim != 3:
        raise ValueError(f"truth must be 3-D (n, ny, nx); got shape {truth.shape}")
    valid = valid_pixels(truth, ignore)
    thr = _thresholds(thresholds)
    rows = [
        _counts(score[i], truth[i], None if valid is None else valid[i], thr, True) for i in range(len(truth))
    ]
    out = {"thresholds": thr}
    for j, key in enumerate(("fp", "tp", "tp_dilated", "n_neg", "n_pos")):
        out[key] = np.array([r[j] for r in rows], dtype=np.int64).reshape(len(rows), *np.shape(rows[0][j]))
    return out


def pooled_rates(counts: dict, weights=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pooled (FPR, TPR, dilated TPR), each (k,) float64, from :func:`roc_counts` output.

    ``weights`` (n,) weighs the images (bootstrap multiplicities); default 1.
    """
    w = np.ones(len(counts["n_pos"])) if weights is None else np.asarray(weights, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        fpr = (w @ counts["fp"]) / (w @ counts["n_neg"])
        tpr = (w @ counts["tp"]) / (w @ counts["n_pos"])
        tprd = (w @ counts["tp_dilated"]) / (w @ counts["n_pos"])
    return fpr, tpr, tprd


def tpr_at_fpr(fpr, tpr, target: float) -> float:
    """TPR at a given FPR by linear interpolation along the ROC curve.

    The end points ``(0, 0)`` and ``(1, 1)`` are added, points are sorted by
    FPR, the best TPR is kept for repeated FPRs and the curve is made
    monotone before interpolating.

    Parameters
    ----------
    fpr, tpr : array_like, shape (k,)
        ROC points in any order (e.g. from :func:`roc`); non-finite ones are dropped.
    target : float
        FPR at which to read the curve, in [0, 1].

    Returns
    -------
    float
    """
    fpr = np.asarray(fpr, dtype=np.float64).ravel()
    tpr = np.asarray(tpr, dtype=np.float64).ravel()
    if fpr.shape != tpr.shape:
        raise ValueError(f"fpr and tpr must have the same length; got {fpr.size} and {tpr.size}")
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"target must be in [0, 1]; got {target!r}")
    ok = np.isfinite(fpr) & np.isfinite(tpr)
    x = np.concatenate([[0.0], fpr[ok], [1.0]])
    y = np.concatenate([[0.0], tpr[ok], [1.0]])
    ux, inv = np.unique(x, return_inverse=True)
    uy = np.full(ux.size, -np.inf)
    np.maximum.at(uy, inv, y)
    uy = np.maximum.accumulate(uy)
    return float(np.interp(target, ux, uy))


def summarize_roc(fpr, tpr, tpr_dilated, params, param_name: str, fprs=PAPER_FPRS) -> dict:
    """TPR at fixed FPRs plus the curve, for one method on one test set.

    Parameters
    ----------
    fpr, tpr, tpr_dilated : array_like, shape (k,)
        ROC points: FPR of the non-dilated prediction, its TPR, and the TPR
        of the 3x3-dilated prediction at the same setting.
    params : array_like, shape (k,)
        The setting of each point (probability threshold, ``sigclip``...).
    param_name : str
        Name of that setting, the key of ``params`` in ``roc``.
    fprs : sequence of float
        Target FPRs; default the paper's :data:`PAPER_FPRS`.

    Returns
    -------
    dict
        ``tpr`` and ``tpr_dilated`` (keyed by ``str(fpr)``, e.g. ``"0.0005"``,
        read off with :func:`tpr_at_fpr`); ``fpr_range`` spanned by the
        points; ``extrapolated``: per target whether it lies outside that
        range (the value then leans on an added end point); ``roc``: the
        points sorted by FPR (lists).
    """
    fpr, tpr, tprd, params = (np.asarray(a, dtype=np.float64) for a in (fpr, tpr, tpr_dilated, params))
    order = np.lexsort((tpr, fpr))
    fpr, tpr, tprd, params = fpr[order], tpr[order], tprd[order], params[order]
    ok = np.isfinite(fpr)
    lo, hi = (float(fpr[ok].min()), float(fpr[ok].max())) if ok.any() else (float("nan"),) * 2
    out = {"tpr": {}, "tpr_dilated": {}, "extrapolated": {}, "fpr_range": [lo, hi]}
    for t in fprs:
        out["tpr"][str(t)] = tpr_at_fpr(fpr, tpr, t)
        out["tpr_dilated"][str(t)] = tpr_at_fpr(fpr, tprd, t)
        out["extrapolated"][str(t)] = bool(not lo <= t <= hi)
    out["roc"] = {
        "fpr": fpr.tolist(),
        "tpr": tpr.tolist(),
        "tpr_dilated": tprd.tolist(),
        param_name: params.tolist(),
    }
    return out


def summarize_counts(
    counts: dict, param_name: str, params=None, *, n_boot: int = N_BOOT, seed: int = 0, fprs=PAPER_FPRS
) -> dict:
    """Pooled ROC summary of per-image counts, with bootstrap standard errors.

    Parameters
    ----------
    counts : dict
        From :func:`roc_counts` (or assembled the same way).
    param_name : str
        Label of the ROC points' setting (``"threshold"``, ``"sigclip"``).
    params : array_like, shape (k,), optional
        Setting per point; default ``counts["thresholds"]``.
    n_boot : int
        Bootstrap resamples of the images (0: none).
    seed : int
        Seed of the bootstrap (``default_rng([seed, 3])``).
    fprs : sequence of float
        Target FPRs.

    Returns
    -------
    dict
        :func:`summarize_roc` output plus ``tpr_se`` and ``tpr_dilated_se``
        (standard deviation of the TPRs at the targets over resamples of
        the images: the sampling error of the test set) and ``n_boot``.
    """
    fpr, tpr, tprd = pooled_rates(counts)
    res = summarize_roc(fpr, tpr, tprd, counts["thresholds"] if params is None else params, param_name, fprs)
    n = len(counts["n_pos"])
    rng = np.random.default_rng([seed, 3])
    boots = {str(t): ([], []) for t in fprs}
    for _ in range(n_boot):
        bf, bt, btd = pooled_rates(counts, resample_weights(rng, n))
        for t in fprs:
            boots[str(t)][0].append(tpr_at_fpr(bf, bt, t))
            boots[str(t)][1].append(tpr_at_fpr(bf, btd, t))
    res["tpr_se"] = {k: float(np.std(v[0])) if v[0] else float("nan") for k, v in boots.items()}
    res["tpr_dilated_se"] = {k: float(np.std(v[1])) if v[1] else float("nan") for k, v in boots.items()}
    res["n_boot"] = n_boot
    return res
