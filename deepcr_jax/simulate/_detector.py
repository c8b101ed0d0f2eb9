"""Detector effects and mask definitions (private helper, re-exported)."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_dilation

from deepcr_jax.hst import SATURATION_GROW, SATURATION_LEVEL, check_box, saturation_mask

__all__ = ["bleed_columns", "cr_truth_mask", "saturation_ignore"]


def _check_2d(name: str, a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (ny, nx), got shape {a.shape}")
    return a


def bleed_columns(charge: np.ndarray, full_well: float) -> np.ndarray:
    """Spill charge above the full well up and down the CCD columns.

    For every pixel holding more than ``full_well`` electrons, an interval of
    the column around it is grown one pixel at a time, alternating up
    (increasing row index) and down, until the interval can hold all the
    charge it contains.  All pixels of the interval are then set to
    ``full_well`` except the last one added, which receives the remainder,
    so charge is conserved.  When the interval reaches a chip edge it
    continues in the other direction only; if the whole column is full the
    excess is lost.

    Parameters
    ----------
    charge : ndarray, shape (ny, nx)
        Collected charge in electrons (not modified).
    full_well : float
        Pixel full-well capacity in electrons; must be positive.

    Returns
    -------
    ndarray, shape (ny, nx), float64
        Charge after blooming, every pixel ``<= full_well``.
    """
    charge = _check_2d("charge", charge)
    if not full_well > 0:
        raise ValueError(f"full_well must be positive, got {full_well!r}")
    out = np.array(charge, dtype=np.float64, copy=True)
    ny = out.shape[0]
    for j in np.flatnonzero((out > full_well).any(axis=0)):
        col = out[:, j]
        while True:
            over = np.flatnonzero(col > full_well)
            if over.size == 0:
                break
            i = int(over[0])
            up = np.arange(i + 1, ny)
            dn = np.arange(i - 1, -1, -1)
            m = min(up.size, dn.size)
            inter = np.empty(2 * m, dtype=np.int64)
            inter[0::2] = up[:m]
            inter[1::2] = dn[:m]
            order = np.concatenate([[i], inter, up[m:], dn[m:]])
            cum = np.cumsum(col[order])
            fits = cum <= full_well * np.arange(1, order.size + 1)
            if not fits.any():  # column cannot hold the charge: clip
                col[:] = full_well
                break
            k = int(np.argmax(fits))
            col[order[:k]] = full_well
            col[order[k]] = cum[k] - full_well * k
    return out


def cr_truth_mask(
    cr_charge: np.ndarray,
    expected: np.ndarray,
    readnoise: float,
    seed_snr: float = 5.0,
    grow_snr: float = 1.5,
    grow_radius: int = 1,
) -> np.ndarray:
    """Ground-truth CR mask with the drizzlepac-style two-threshold rule.

    With ``sigma = sqrt(max(expected, 0) + readnoise**2)`` (the Poisson plus
    read noise of the CR-free expectation, in electrons):

    1. *seed* pixels: ``cr_charge > seed_snr * sigma``;
    2. *grow* (one pass, not iterated, as drizzlepac's ``driz_cr_grow``):
       pixels within a ``(2*grow_radius+1)`` square box of any seed pixel
       whose ``cr_charge > grow_snr * sigma``.

    The mask is ``seed | grow``.

    Parameters
    ----------
    cr_charge : ndarray, shape (ny, nx)
        Deposited CR charge in electrons.
    expected : ndarray, shape (ny, nx)
        Noise-free expected sky + source electrons (no CRs).
    readnoise : float
        Gaussian read noise in electrons (>= 0).
    seed_snr, grow_snr : float
        Thresholds in units of sigma; the defaults 5 and 1.5 are the values
        used to build the deepCR training set.
    grow_radius : int
        Radius of the square grow box (0 disables growing).

    Returns
    -------
    ndarray, shape (ny, nx), bool
        True where the pixel is a cosmic ray.
    """
    cr_charge = _check_2d("cr_charge", cr_charge)
    expected = _check_2d("expected", expected)
    if cr_charge.shape != expected.shape:
        raise ValueError(f"expected must have the shape of cr_charge {cr_charge.shape}, got {expected.shape}")
    if not readnoise >= 0:
        raise ValueError(f"readnoise must be >= 0, got {readnoise!r}")
    if not seed_snr > 0 or not grow_snr > 0:
        raise ValueError("seed_snr and grow_snr must be positive")
    if int(grow_radius) != grow_radius or grow_radius < 0:
        raise ValueError(f"grow_radius must be a non-negative integer, got {grow_radius!r}")
    sigma = np.sqrt(np.maximum(expected, 0.0) + float(readnoise) ** 2)
    seed = cr_charge > seed_snr * sigma
    if grow_radius == 0:
        return seed
    box = np.ones((2 * grow_radius + 1,) * 2, dtype=bool)
    near = binary_dilation(seed, structure=box)
    return seed | (near & (cr_charge > grow_snr * sigma))


def saturation_ignore(
    image: np.ndarray, level: float = SATURATION_LEVEL, size: int = SATURATION_GROW
) -> np.ndarray:
    """Pixels to ignore: ``image >= level`` dilated by a ``size x size`` box.

    The same rule as real frames get (:func:`deepcr_jax.hst.saturation_mask`,
    without DQ).

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
        Image in electrons.
    level : float
        Saturation threshold in electrons (paper: 70000).
    size : int
        Odd side of the square dilation kernel (paper: 7).

    Returns
    -------
    ndarray, shape (ny, nx), bool
        True where the pixel must be excluded from training/evaluation.
    """
    return saturation_mask(_check_2d("image", image), level, check_box("size", size))
