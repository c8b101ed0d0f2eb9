"""Evaluation metrics for CR detection and inpainting (numpy only).

Conventions: masks are boolean with True = cosmic ray; ``ignore`` pixels
(True = exclude, e.g. saturated) are left out of every count.  Arrays may be
single images ``(ny, nx)`` or stacks ``(n, ny, nx)``; spatial operations
(3x3 dilation) act on the last two axes only.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import maximum_filter

__all__ = [
    "PAPER_FPRS",
    "confusion",
    "default_thresholds",
    "inpaint_mse",
    "roc",
    "tpr_at_fpr",
    "tpr_at_paper_fprs",
]

#: False-positive rates quoted in the deepCR paper (0.05 % and 0.5 %).
PAPER_FPRS: tuple[float, float] = (0.0005, 0.005)
_CHUNK = 1 << 22


def _as_bool(name: str, a) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != bool:
        if not np.all((a == 0) | (a == 1)):
            raise ValueError(f"{name} must be boolean (or 0/1), got dtype {a.dtype}")
        a = a.astype(bool)
    return a


def _check_same(name: str, a: np.ndarray, ref: np.ndarray, ref_name: str) -> None:
    if a.shape != ref.shape:
        raise ValueError(f"{name} must have the shape of {ref_name} {ref.shape}, got {a.shape}")


def _valid(truth: np.ndarray, ignore) -> np.ndarray | None:
    if ignore is None:
        return None
    ign = _as_bool("ignore", ignore)
    _check_same("ignore", ign, truth, "truth")
    return ~ign


def confusion(pred, truth, ignore=None) -> tuple[int, int, int, int]:
    """Confusion-matrix counts of a binary CR prediction.

    Parameters
    ----------
    pred, truth : array_like of bool, shape (ny, nx) or (n, ny, nx)
        Predicted and true CR masks (True = CR).
    ignore : array_like of bool, same shape, optional
        Pixels to exclude from all counts.

    Returns
    -------
    (tp, tn, fp, fn) : tuple of int
    """
    truth = _as_bool("truth", truth)
    pred = _as_bool("pred", pred)
    _check_same("pred", pred, truth, "truth")
    valid = _valid(truth, ignore)
    if valid is None:
        valid = np.ones(truth.shape, dtype=bool)
    tp = int(np.count_nonzero(pred & truth & valid))
    fp = int(np.count_nonzero(pred & ~truth & valid))
    fn = int(np.count_nonzero(~pred & truth & valid))
    tn = int(np.count_nonzero(~pred & ~truth & valid))
    return tp, tn, fp, fn


def default_thresholds() -> np.ndarray:
    """Thresholds for probability outputs: dense near 0 and 1 (ascending)."""
    lin = np.linspace(0.0, 1.0, 101)
    lo = np.logspace(-8, -1, 71)
    return np.unique(np.concatenate([lin, lo, 1.0 - lo]))


def _count_above(values: np.ndarray, thr: np.ndarray) -> np.ndarray:
    """For each threshold ``thr[j]`` (ascending), the number of ``values > thr[j]``."""
    counts = np.zeros(thr.size + 1, dtype=np.int64)
    flat = values.ravel()
    for s in range(0, flat.size, _CHUNK):
        k = np.searchsorted(thr, flat[s : s + _CHUNK], side="left")  # #thr < v
        counts += np.bincount(k, minlength=thr.size + 1)
    # value with k thresholds below it is "> thr[j]" for all j < k
    return counts[::-1].cumsum()[::-1][1:]


def _dilate_scores(prob: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """3x3 maximum filter per image: threshold(max3x3(p)) == dilate(threshold(p))."""
    p = np.array(prob, dtype=np.float64, copy=True)
    if valid is not None:
        p[~valid] = -np.inf  # predictions on ignored pixels do not spread
    size = (1,) * (p.ndim - 2) + (3, 3)
    return maximum_filter(p, size=size, mode="constant", cval=-np.inf)


def roc(
    prob,
    truth,
    ignore=None,
    thresholds=None,
    *,
    dilate: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve of a CR score map, exact for the given thresholds.

    A pixel is predicted CR at threshold ``t`` when ``prob > t``.  Counting
    is histogram based (one ``searchsorted`` per chunk of pixels), so memory
    does not grow with the number of thresholds.

    Parameters
    ----------
    prob : array_like of float, shape (ny, nx) or (n, ny, nx)
        CR score, e.g. deepCR probabilities in [0, 1].
    truth : array_like of bool, same shape
        True CR mask (True = CR).
    ignore : array_like of bool, same shape, optional
        Pixels excluded from every count.
    thresholds : array_like of float, optional
        Thresholds to evaluate (any order, duplicates removed); default
        :func:`default_thresholds`.
    dilate : bool
        If True, the TPR is computed from predictions dilated by a 3x3 box
        (per image), while the FPR stays that of the non-dilated prediction
        (deepCR paper Sec. 4.1).  Predictions on ignored pixels are not
        dilated into their neighbours.

    Returns
    -------
    fpr, tpr : ndarray, shape (n_thresholds,), float64
        False- and true-positive rates, ordered like ``thresholds``.
        ``nan`` where there are no negative (resp. positive) pixels.
    thresholds : ndarray, shape (n_thresholds,)
        The sorted unique thresholds.
    """
    truth = _as_bool("truth", truth)
    prob = np.asarray(prob)
    _check_same("prob", prob, truth, "truth")
    if truth.ndim < 2:
        raise ValueError(f"truth must have at least 2 dimensions, got shape {truth.shape}")
    if not np.issubdtype(prob.dtype, np.number):
        raise ValueError(f"prob must be numeric, got dtype {prob.dtype}")
    thr = default_thresholds() if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    thr = np.unique(thr.ravel())
    if thr.size == 0 or not np.all(np.isfinite(thr)):
        raise ValueError("thresholds must be a non-empty array of finite numbers")
    valid = _valid(truth, ignore)
    neg_sel = ~truth if valid is None else (~truth & valid)
    pos_sel = truth if valid is None else (truth & valid)
    n_neg = np.count_nonzero(neg_sel)
    n_pos = np.count_nonzero(pos_sel)
    fp = _count_above(prob[neg_sel], thr)
    score_pos = _dilate_scores(prob, valid) if dilate else prob
    tp = _count_above(score_pos[pos_sel], thr)
    with np.errstate(invalid="ignore", divide="ignore"):
        fpr = fp / n_neg if n_neg else np.full(thr.size, np.nan)
        tpr = tp / n_pos if n_pos else np.full(thr.size, np.nan)
    return np.asarray(fpr, dtype=np.float64), np.asarray(tpr, dtype=np.float64), thr


def tpr_at_fpr(fpr, tpr, target: float) -> float:
    """TPR at a given FPR by linear interpolation along the ROC curve.

    The points ``(0, 0)`` and ``(1, 1)`` (reject all / accept all) are added,
    points are sorted by FPR and, for repeated FPR values, the best TPR is
    kept before interpolating.

    Parameters
    ----------
    fpr, tpr : array_like, shape (k,)
        ROC curve points in any order (e.g. from :func:`roc`).
    target : float
        FPR at which to read the curve, in [0, 1].

    Returns
    -------
    float
    """
    fpr = np.asarray(fpr, dtype=np.float64).ravel()
    tpr = np.asarray(tpr, dtype=np.float64).ravel()
    if fpr.shape != tpr.shape:
        raise ValueError(f"fpr and tpr must have the same length, got {fpr.size} and {tpr.size}")
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"target must be in [0, 1], got {target!r}")
    ok = np.isfinite(fpr) & np.isfinite(tpr)
    x = np.concatenate([[0.0], fpr[ok], [1.0]])
    y = np.concatenate([[0.0], tpr[ok], [1.0]])
    ux, inv = np.unique(x, return_inverse=True)
    uy = np.full(ux.size, -np.inf)
    np.maximum.at(uy, inv, y)
    uy = np.maximum.accumulate(uy)  # ROC hull is monotone
    return float(np.interp(target, ux, uy))


def tpr_at_paper_fprs(fpr, tpr) -> dict[float, float]:
    """TPR at the paper's FPRs of 0.05 % and 0.5 %: ``{0.0005: .., 0.005: ..}``."""
    return {t: tpr_at_fpr(fpr, tpr, t) for t in PAPER_FPRS}


def inpaint_mse(pred, truth, mask, ignore=None) -> float:
    """Mean squared error of inpainted pixels.

    Parameters
    ----------
    pred, truth : array_like of float, shape (ny, nx) or (n, ny, nx)
        Inpainted image and ground-truth (CR-free) image, same units.
    mask : array_like of bool, same shape
        Pixels over which the error is averaged (the inpainting mask).
    ignore : array_like of bool, same shape, optional
        Pixels excluded even if in ``mask``.

    Returns
    -------
    float
        ``mean((pred - truth)**2)`` over ``mask & ~ignore``; ``nan`` if that
        selection is empty.
    """
    pred = np.asarray(pred, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    mask = _as_bool("mask", mask)
    _check_same("pred", pred, truth, "truth")
    _check_same("mask", mask, truth, "truth")
    sel = mask
    if ignore is not None:
        ign = _as_bool("ignore", ignore)
        _check_same("ignore", ign, truth, "truth")
        sel = mask & ~ign
    if not sel.any():
        return float("nan")
    d = pred[sel] - truth[sel]
    return float(np.mean(d * d))
