"""HST data-quality and units policy: which pixels to ignore, what units the models see.

Ignored pixels (True = do not use) follow the deepCR paper (Zhang & Bloom
2020, sec. 2.3):

* **DQ flags** (:func:`dq_ignore`): every ACS/WFC3 DQ flag is a bad pixel
  **except** the saturation flags (256 full well, 2048 A/D) and the cosmic-ray
  flags (4096 AstroDrizzle, 8192 CR-SPLIT rejection and the flag deepcr-jax
  writes), see :data:`DEFAULT_DQ_IGNORE_BITS`. Old CR flags are not ignored:
  the network should see those pixels and re-detect them.
* **Saturation** (:func:`saturation_mask`): pixels at or above
  :data:`SATURATION_LEVEL` (70000 e-) *or* flagged saturated in DQ, grown by
  a :data:`SATURATION_GROW` (7x7) box so the wings and bleed trails of
  saturated stars are not taken for CRs. The simulator's ``ignore`` mask is
  the same function.

Units (:func:`unit_scale`): the zoo's HST models expect electrons (ACS and
WFC3/UVIS ``_flc`` SCI arrays, ``BUNIT='ELECTRONS'``). A count *rate*
(``BUNIT`` ending in ``/S``, e.g. ``ELECTRONS/S``) is multiplied by the
exposure time (``EXPTIME``); any other or missing ``BUNIT`` is used as is.

Everything here is numpy on plain arrays and header mappings; reading and
writing files is :mod:`deepcr_jax.fits`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "AUTO_FALLBACK",
    "AUTO_MODELS",
    "DEFAULT_DQ_FLAG",
    "DEFAULT_DQ_IGNORE_BITS",
    "DQ_CR_BITS",
    "DQ_SATURATION_BITS",
    "SATURATION_GROW",
    "SATURATION_LEVEL",
    "UNITS",
    "check_bit_mask",
    "check_box",
    "check_dq_flag",
    "check_saturation",
    "dq_ignore",
    "exposure_time",
    "model_for_instrument",
    "saturation_mask",
    "set_dq_flag",
    "unit_scale",
]

#: ACS/WFC3 DQ bits for saturation: 256 (full well) and 2048 (A/D converter).
DQ_SATURATION_BITS = 256 | 2048
#: ACS/WFC3 DQ bits for cosmic rays: 4096 (AstroDrizzle) and 8192 (CR-SPLIT rejection).
DQ_CR_BITS = 4096 | 8192
#: DQ bits that make a pixel ignored: all 16 bits except saturation and cosmic rays.
DEFAULT_DQ_IGNORE_BITS = 0xFFFF & ~DQ_SATURATION_BITS & ~DQ_CR_BITS
#: DQ bit deepcr-jax sets at CR-mask pixels.
DEFAULT_DQ_FLAG = 8192
#: Saturation level in electrons (deepCR paper: 70000 e-).
SATURATION_LEVEL = 70000.0
#: Side of the box the saturation mask is grown by (deepCR paper: 7x7).
SATURATION_GROW = 7
#: Unit policies: ``"auto"`` converts count rates with EXPTIME, ``"as-is"`` does not.
UNITS = ("auto", "as-is")

_RATE_SUFFIXES = ("/S", "/SEC", "S-1", "/SECOND")


# --------------------------------------------------------------------------
# argument checks


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_bit_mask(name: str, value: Any) -> int:
    """``value`` as an int if it is a non-negative integer bit mask, else ValueError naming ``name``."""
    if not _is_int(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer bit mask; got {value!r}")
    return int(value)


def check_dq_flag(dq_flag: Any) -> int:
    """``dq_flag`` as an int if it is a single DQ bit (a power of two, 1 to 32768), else ValueError."""
    if not _is_int(dq_flag) or dq_flag <= 0 or dq_flag > 32768 or dq_flag & (dq_flag - 1):
        raise ValueError(f"dq_flag must be a single bit, a power of two from 1 to 32768; got {dq_flag!r}")
    return int(dq_flag)


def check_box(name: str, value: Any) -> int:
    """``value`` as an int if it is a positive odd integer (a box side), else ValueError naming ``name``."""
    if not _is_int(value) and not (isinstance(value, float) and value.is_integer()):
        raise ValueError(f"{name} must be a positive odd integer; got {value!r}")
    if value < 1 or value % 2 == 0:
        raise ValueError(f"{name} must be a positive odd integer; got {value!r}")
    return int(value)


def check_saturation(saturation: Any) -> float | None:
    """``saturation`` as a float if it is a positive level (``inf`` allowed), None for None.

    ``inf`` means no saturation *level* (DQ saturation flags still count);
    None switches saturation masking off. Zero, negative, NaN and non-numbers
    raise ValueError: they would ignore every pixel or silently disable the mask.
    """
    if saturation is None:
        return None
    ok = isinstance(saturation, (int, float, np.integer, np.floating)) and not isinstance(saturation, bool)
    if not ok or not saturation > 0:  # NaN fails '> 0'
        raise ValueError(
            "saturation must be a positive level in the models' units (e.g. 70000 e-), inf for no level, "
            f"or None for no saturation masking; got {saturation!r}"
        )
    return float(saturation)


# --------------------------------------------------------------------------
# masks


def dq_ignore(dq: ArrayLike, ignore_bits: int = DEFAULT_DQ_IGNORE_BITS) -> np.ndarray:
    """Pixels a DQ array marks as bad.

    Parameters
    ----------
    dq : array_like of int, (ny, nx)
        An ACS/WFC3 data-quality array.
    ignore_bits : int, optional
        Bits that make a pixel ignored; default :data:`DEFAULT_DQ_IGNORE_BITS`
        (all but saturation and cosmic rays). 0 ignores nothing.

    Returns
    -------
    ndarray, (ny, nx), bool
        True = do not use this pixel.
    """
    bits = check_bit_mask("ignore_bits", ignore_bits)
    return (np.asarray(dq, np.int64) & bits) != 0


def _dilate_box(mask: np.ndarray, size: int) -> np.ndarray:
    """Binary dilation by a ``size`` x ``size`` box (separable, edges clipped)."""
    out = mask.copy()
    r = size // 2
    if r == 0 or not mask.any():
        return out
    for axis in (0, 1):
        src = out.copy()
        n = src.shape[axis]
        for s in range(1, min(r, n - 1) + 1):
            lo = [slice(None)] * 2
            hi = [slice(None)] * 2
            lo[axis], hi[axis] = slice(s, None), slice(None, -s)
            out[tuple(lo)] |= src[tuple(hi)]
            out[tuple(hi)] |= src[tuple(lo)]
    return out


def saturation_mask(
    image: ArrayLike,
    level: float = SATURATION_LEVEL,
    grow: int = SATURATION_GROW,
    *,
    dq: ArrayLike | None = None,
) -> np.ndarray:
    """Saturated pixels, grown: ``image >= level`` or DQ-saturated, dilated by a ``grow`` box.

    Parameters
    ----------
    image : array_like, (ny, nx)
        Image in electrons (the models' units). Compared in its own floating
        dtype; NaN pixels are not saturated.
    level : float, optional
        Saturation level in electrons (default 70000, as the deepCR paper).
    grow : int, optional
        Odd side of the box the mask is grown by (default 7; 1 = no growing).
    dq : array_like of int, (ny, nx), optional
        DQ array; pixels with bits 256 or 2048 (:data:`DQ_SATURATION_BITS`)
        are saturated too.

    Returns
    -------
    ndarray, (ny, nx), bool
        True = saturated or within ``grow // 2`` pixels of a saturated pixel
        (do not use).
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"image must be a 2-D array (ny, nx); got shape {image.shape}")
    grow = check_box("grow", grow)
    thr = image.dtype.type(level) if np.issubdtype(image.dtype, np.floating) else level
    with np.errstate(invalid="ignore"):
        sat = image >= thr
    if dq is not None:
        dq = np.asarray(dq)
        if dq.shape != image.shape:
            raise ValueError(f"dq must have the image's shape {image.shape}; got {dq.shape}")
        sat |= (dq.astype(np.int64) & DQ_SATURATION_BITS) != 0
    return _dilate_box(sat, grow)


def set_dq_flag(dq: np.ndarray, mask: ArrayLike, flag: int) -> np.ndarray:
    """``dq | flag`` at ``mask`` pixels, in DQ's dtype when the result fits (else uint16, int32).

    Parameters
    ----------
    dq : ndarray of int, (ny, nx)
        DQ array (not modified).
    mask : array_like of bool, (ny, nx)
        True where the flag is set (cosmic rays).
    flag : int
        A single bit (:func:`check_dq_flag`).

    Returns
    -------
    ndarray of int, (ny, nx)
    """
    flag = check_dq_flag(flag)
    new = np.asarray(dq, np.int64) | np.where(mask, flag, 0)
    for dtype in (dq.dtype, np.uint16, np.int32):
        info = np.iinfo(dtype)
        if new.min(initial=0) >= info.min and new.max(initial=0) <= info.max:
            return new.astype(dtype)
    return new.astype(np.int64)  # pragma: no cover - flags are at most 16 bits


# --------------------------------------------------------------------------
# units


def exposure_time(*headers: Mapping[str, Any]) -> float | None:
    """The first positive numeric ``EXPTIME`` (seconds) among ``headers``, else None."""
    for h in headers:
        value = h.get("EXPTIME")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return float(value)
    return None


def unit_scale(
    bunit: str,
    header: Mapping[str, Any],
    primary: Mapping[str, Any],
    units: str = "auto",
    where: str = "data",
) -> float:
    """Factor that brings data in ``bunit`` to the models' units (counts, electrons for HST).

    Parameters
    ----------
    bunit : str
        The science array's ``BUNIT`` ('' when absent).
    header, primary : mapping
        The science and primary headers, searched in that order for ``EXPTIME``.
    units : {"auto", "as-is"}, optional
        ``"auto"``: a count rate (``BUNIT`` ending in ``/S``) gives the
        exposure time, anything else 1. ``"as-is"``: always 1.
    where : str, optional
        Names the data in the error message (e.g. ``"file.fits[SCI,1]"``).

    Returns
    -------
    float
        The data are multiplied by this (the exposure time in s, or 1).

    Raises
    ------
    ValueError
        ``units`` unknown, or a count rate without a positive ``EXPTIME``.
    """
    if units not in UNITS:
        raise ValueError(f"units must be 'auto' or 'as-is'; got {units!r}")
    if units == "as-is":
        return 1.0
    u = bunit.strip().upper().replace(" ", "")
    if not u.endswith(_RATE_SUFFIXES):
        return 1.0
    exptime = exposure_time(header, primary)
    if exptime is None:
        raise ValueError(
            f"{where}: BUNIT {bunit!r} is a count rate and the models expect electrons, "
            "but there is no positive EXPTIME to convert with; pass units='as-is' "
            "(CLI: --units as-is) to use the data unconverted"
        )
    return exptime


# --------------------------------------------------------------------------
# instruments

#: (INSTRUME, DETECTOR or None for any) -> zoo mask model, for ``model="auto"``.
AUTO_MODELS = {("ACS", "WFC"): "ACS-WFC", ("WFC3", "UVIS"): "WFC3-UVIS", ("DECAM", None): "decam"}
#: The model ``"auto"`` falls back to (with a warning) for other instruments.
AUTO_FALLBACK = "ACS-WFC"


def model_for_instrument(*headers: Mapping[str, Any]) -> tuple[str, str | None]:
    """The zoo mask model for the instrument in ``headers`` (``--model auto``).

    ``INSTRUME``/``DETECTOR`` are taken from the first header that has them:
    ACS/WFC gives ``ACS-WFC``, WFC3/UVIS ``WFC3-UVIS``, DECam ``decam``.

    Returns
    -------
    (str, str or None)
        The model name and, for any other instrument, a warning saying that
        :data:`AUTO_FALLBACK` is used instead (None when the match is exact).
    """
    instrument = next((str(h["INSTRUME"]) for h in headers if h.get("INSTRUME")), "")
    detector = next((str(h["DETECTOR"]) for h in headers if h.get("DETECTOR")), "")
    inst, det = instrument.strip().upper(), detector.strip().upper()
    for (want_inst, want_det), name in AUTO_MODELS.items():
        if inst == want_inst and (want_det is None or det == want_det):
            return name, None
    what = f"INSTRUME={instrument!r} DETECTOR={detector!r}" if instrument else "no INSTRUME keyword"
    return AUTO_FALLBACK, f"no zoo model for {what}; using {AUTO_FALLBACK}"
