"""CR masks of aligned exposures against the median of the others; their ignore masks.

The detection rule and its noise model are described in
:mod:`deepcr_jax.training.builder`, which cuts the result into training
stamps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from deepcr_jax import hst
from deepcr_jax.hst import DEFAULT_DQ_IGNORE_BITS, SATURATION_GROW, SATURATION_LEVEL
from deepcr_jax.simulate import cr_truth_mask

__all__ = ["GROW_RADIUS", "GROW_SNR", "SEED_SNR", "detect_crs", "exposure_ignore"]

#: Paper values: seed and grow thresholds (sigma), grow radius (px).
SEED_SNR, GROW_SNR, GROW_RADIUS = 5.0, 1.5, 1


def _stack(images: ArrayLike | Sequence[ArrayLike], min_exposures: int) -> np.ndarray:
    """(n, ny, nx) float32 copy of the exposures, with named errors."""
    if isinstance(min_exposures, bool) or not isinstance(min_exposures, (int, np.integer)) \
            or min_exposures < 1:
        raise ValueError(f"min_exposures must be an int >= 2; got {min_exposures!r}")
    if isinstance(images, np.ndarray):
        frames = list(images) if images.ndim == 3 else [images]
    else:
        frames = list(images)
    shapes = []
    for k, f in enumerate(frames):
        a = np.asarray(f)
        if a.ndim != 2:
            raise ValueError(f"images[{k}] must be 2-D (ny, nx); got shape {a.shape}")
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise TypeError(f"images[{k}] must hold real numbers; got dtype {a.dtype}")
        shapes.append(a.shape)
    if len(frames) < min_exposures:
        raise ValueError(
            f"images must hold at least {min_exposures} aligned exposures of one field (the CR mask of "
            f"each is made against the median of the others); got {len(frames)}"
            + ("; pass min_exposures=2 to allow a pair" if len(frames) == 2 else "")
        )
    bad = [k for k, s in enumerate(shapes) if s != shapes[0]]
    if bad:
        raise ValueError(
            f"images must share one pixel grid; images[0] has shape {shapes[0]} but "
            + ", ".join(f"images[{k}] has {shapes[k]}" for k in bad)
        )
    return np.stack([np.asarray(f, np.float32) for f in frames])


def _per_exposure(name: str, value: ArrayLike | None, n: int, *,
                  allow_zero: bool = True) -> np.ndarray | None:
    """A scalar or (n,) parameter as a finite float64 (n,) array."""
    if value is None:
        return None
    try:
        a = np.asarray(value, np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or one number per exposure; got {value!r}") from None
    if a.ndim == 0:
        a = np.full(n, float(a))
    if a.shape != (n,):
        raise ValueError(
            f"{name} must be a number or have shape ({n},), one per exposure; got shape {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(a < 0) or (not allow_zero and np.any(a == 0)):
        cmp = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {cmp}; got {a.tolist()}")
    return a


def _masks(name: str, value: ArrayLike | None, shape: tuple[int, ...]) -> np.ndarray | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        value = np.stack([np.asarray(v) for v in value])
    a = np.asarray(value)
    if a.shape != shape:
        raise ValueError(f"{name} must have the shape of the image stack {shape}; got {a.shape}")
    return a


def _int_arg(name: str, value, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ValueError(f"{name} must be an int >= {lo}; got {value!r}")
    return int(value)


# --------------------------------------------------------------------------
# masks


def exposure_ignore(
    images: ArrayLike | Sequence[ArrayLike],
    *,
    dq: ArrayLike | Sequence[ArrayLike] | None = None,
    dq_ignore_bits: int = DEFAULT_DQ_IGNORE_BITS,
    saturation: float | None = SATURATION_LEVEL,
    saturation_grow: int = SATURATION_GROW,
) -> np.ndarray:
    """Pixels to ignore in each exposure, as :func:`deepcr_jax.fits.read_fits` does.

    Parameters
    ----------
    images : array_like, (n, ny, nx), or sequence of (ny, nx)
        Exposures in electrons (also a single 2-D frame).
    dq : array_like of int, (n, ny, nx), optional
        HST data-quality arrays.
    dq_ignore_bits : int
        DQ bits that make a pixel ignored; default all but saturation (256,
        2048) and cosmic rays (4096, 8192).
    saturation : float or None
        Pixels with ``image >= saturation`` (e-) or DQ bits 256 / 2048 are
        saturated; None switches saturation masking off.
    saturation_grow : int
        Odd side of the box the saturation mask is grown by (paper: 7).

    Returns
    -------
    ndarray, (n, ny, nx), bool
        True = ignore (DQ bad pixel, grown saturation, or non-finite pixel).
    """
    x = _stack(images, 1)
    dq = _masks("dq", dq, x.shape)
    if dq is not None and not np.issubdtype(dq.dtype, np.integer):
        raise TypeError(f"dq must hold integers; got dtype {dq.dtype}")
    level = hst.check_saturation(saturation) if saturation is not None else None
    ignore = ~np.isfinite(x)
    for i in range(x.shape[0]):
        if dq is not None:
            ignore[i] |= hst.dq_ignore(dq[i], dq_ignore_bits)
        if level is not None:  # the rule read_fits applies: level or DQ saturation flags, grown
            ignore[i] |= hst.saturation_mask(x[i], level, saturation_grow, dq=None if dq is None else dq[i])
    return ignore


def _masked_median(stack: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median over axis 0 of the valid entries (NaN where none is valid) and their count."""
    vals = np.where(valid, stack, np.float32(np.inf))
    vals.sort(axis=0)
    k = valid.sum(axis=0)
    lo = np.take_along_axis(vals, np.maximum((k - 1) // 2, 0)[None], axis=0)[0]
    hi = np.take_along_axis(vals, np.maximum(k // 2, 0)[None], axis=0)[0]
    with np.errstate(invalid="ignore"):
        med = 0.5 * (lo + hi)
    med[k == 0] = np.nan
    return med, k


#: Variance of the median of k unit-variance normal values, times k (1 and 2: the mean).
_MEDIAN_VAR = np.array([1.0, 1.0, 1.0, 1.349, 1.193, 1.436, 1.302, 1.474, 1.367], np.float32)


def _median_var_factor(k: np.ndarray) -> np.ndarray:
    """``var(median of k) / sigma**2`` (pi/2/k beyond the table); inf for k = 0."""
    table = _MEDIAN_VAR[np.minimum(k, _MEDIAN_VAR.size - 1)]
    c = np.where(k < _MEDIAN_VAR.size, table, np.float32(np.pi / 2))
    with np.errstate(divide="ignore"):
        return c / k.astype(np.float32)


def _estimate_sky(frame: np.ndarray, valid: np.ndarray) -> float:
    """Background of a frame: SExtractor's mode of the 3-sigma-clipped pixels (every 4th per axis).

    ``2.5 median - 1.5 mean`` after 5 clipping passes (the median where the
    clipped distribution is too skewed). It is the background level, sky plus
    any diffuse light (e.g. the unresolved disk of a resolved galaxy).
    """
    v = frame[::4, ::4][valid[::4, ::4]].astype(np.float64)
    if v.size < 100:
        v = frame[valid].astype(np.float64)
    if v.size == 0:
        return 0.0
    med = float(np.median(v))
    for _ in range(5):
        mad = 1.4826 * float(np.median(np.abs(v - med)))
        if mad == 0:
            break
        v = v[np.abs(v - med) < 3 * mad]
        med = float(np.median(v))
    mean, std = float(v.mean()), float(v.std())
    return med if std == 0 or abs(mean - med) / std > 0.3 else 2.5 * med - 1.5 * mean


def _detect(x, ignore, readnoise, sky, exptime, seed_snr, grow_snr, grow_radius, iterations, reference_noise):
    """CR masks and the reference (median of the others) of every exposure."""
    n = x.shape[0]
    usable = ~ignore & np.isfinite(x)
    if sky is None:
        sky = np.array([_estimate_sky(x[i], usable[i]) for i in range(n)])
    t = np.ones(n) if exptime is None else exptime
    norm = (x - sky[:, None, None].astype(np.float32)) / t[:, None, None].astype(np.float32)
    cr = np.zeros(x.shape, bool)
    model = np.empty(x.shape, np.float32)
    for it in range(iterations):
        prev = cr.copy()
        for i in range(n):
            others = [j for j in range(n) if j != i]
            med, k = _masked_median(norm[others], usable[others] & ~prev[others])
            if it > 0:  # every other exposure flagged here: fall back to the first-pass reference
                miss = np.isnan(med)
                if miss.any():
                    med[miss], k[miss] = _masked_median(norm[others][:, miss], usable[others][:, miss])
            model[i] = np.float32(sky[i]) + np.float32(t[i]) * med
            ref = np.isfinite(model[i])
            diff = np.where(ref & usable[i], x[i] - model[i], np.nan)
            # sigma**2 = var_poisson + readnoise**2 with var_poisson = max(model, 0) (+ the reference's own)
            var = np.where(ref, np.maximum(model[i], 0.0), 0.0)
            if reference_noise:
                var = var + np.where(ref, (var + np.float32(readnoise[i]) ** 2) * _median_var_factor(k), 0.0)
            with np.errstate(invalid="ignore"):
                cr[i] = cr_truth_mask(diff, var, float(readnoise[i]),
                                      seed_snr=seed_snr, grow_snr=grow_snr, grow_radius=grow_radius)
            cr[i] &= usable[i] & ref
    no_ref = ~np.isfinite(model)
    return cr, model, no_ref, np.asarray(sky, np.float64)


def _check_rule(seed_snr, grow_snr, grow_radius, iterations):
    for name, v in (("seed_snr", seed_snr), ("grow_snr", grow_snr)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) \
                or not (np.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a positive number; got {v!r}")
    return _int_arg("grow_radius", grow_radius, 0), _int_arg("iterations", iterations, 1)


def detect_crs(
    images: ArrayLike | Sequence[ArrayLike],
    *,
    readnoise: ArrayLike,
    sky: ArrayLike | None = None,
    exptime: ArrayLike | None = None,
    ignore: ArrayLike | Sequence[ArrayLike] | None = None,
    seed_snr: float = SEED_SNR,
    grow_snr: float = GROW_SNR,
    grow_radius: int = GROW_RADIUS,
    iterations: int = 2,
    reference_noise: bool = False,
    min_exposures: int = 3,
) -> np.ndarray:
    """CR mask of each exposure against the median of the other exposures.

    See the module docstring for the reference, the noise model
    ``sigma = sqrt(max(model, 0) + readnoise**2)`` and the two-threshold rule.

    Parameters
    ----------
    images : array_like, (n, ny, nx), or sequence of n arrays (ny, nx)
        Aligned exposures of one field in electrons (sky not subtracted).
        Non-finite pixels are ignored.
    readnoise : float or array_like, (n,)
        Read noise in electrons, one value or one per exposure.
    sky : float or array_like, (n,), optional
        Sky level in electrons per pixel; default each exposure's background
        (mode of the sigma-clipped pixels: sky plus any diffuse light). It
        only sets the offset between exposures; the sky cancels otherwise.
    exptime : float or array_like, (n,), optional
        Exposure times (s) used to scale the other exposures' sources to this
        one; default all equal.
    ignore : array_like of bool, (n, ny, nx), optional
        True = pixel not usable (e.g. from :func:`exposure_ignore`); such
        pixels are left out of the references and never flagged.
    seed_snr, grow_snr : float
        Thresholds in sigma (paper: 5 and 1.5).
    grow_radius : int
        Half-side of the grow box in pixels (paper: 1; 0 disables growing).
    iterations : int
        Passes; from the second on, CRs found in the other exposures are left
        out of the reference.
    reference_noise : bool
        False (default, the paper's and AstroDrizzle's rule): sigma is the
        noise of one exposure. True: add the variance of the reference
        itself (the median of ``k`` others, ``c_k / k`` times the single-
        exposure variance; assumes similar exposure times), which lowers the
        false positives of few-exposure fields.
    min_exposures : int
        Fewest exposures accepted (default 3; 2 works, but then a CR in the
        other exposure inflates the noise and cannot be excluded).

    Returns
    -------
    ndarray, (n, ny, nx), bool
        True = cosmic ray. False at ignored pixels and where no other
        exposure has a usable pixel.

    Raises
    ------
    ValueError
        Fewer than ``min_exposures`` exposures, frames of different shapes,
        a non-finite or negative ``readnoise``/``sky``/``exptime``, or a mask
        of the wrong shape.
    """
    x = _stack(images, _int_arg("min_exposures", min_exposures, 2))
    n = x.shape[0]
    rn = _per_exposure("readnoise", readnoise, n)
    if rn is None:
        raise ValueError("readnoise must be given (electrons; e.g. 4.5 for ACS/WFC)")
    grow_radius, iterations = _check_rule(seed_snr, grow_snr, grow_radius, iterations)
    ign = _masks("ignore", ignore, x.shape)
    ign = np.zeros(x.shape, bool) if ign is None else ign.astype(bool)
    cr, _, _, _ = _detect(x, ign, rn, _per_exposure("sky", sky, n),
                          _per_exposure("exptime", exptime, n, allow_zero=False),
                          float(seed_snr), float(grow_snr), grow_radius, iterations, bool(reference_noise))
    return cr


# --------------------------------------------------------------------------
# stamps
