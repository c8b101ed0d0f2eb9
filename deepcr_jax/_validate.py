"""Checks of what callers pass to the public functions: images, masks, thresholds."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

__all__ = ["as_images", "as_mask", "check_threshold"]

_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _real_dtype(dtype: np.dtype) -> bool:
    """Real numbers: integers and floats (bfloat16 included); not bool, complex, dates, objects."""
    if dtype.name == "bfloat16":
        return True
    return dtype != bool and dtype.kind not in "cmMOSUV" and np.issubdtype(dtype, np.number)


def as_images(image: Any, name: str = "image") -> tuple[np.ndarray, bool, np.ndarray]:
    """A float32 copy as (n, ny, nx), whether the input was 2-D, and its masked pixels.

    ``image`` is (ny, nx) or (n, ny, nx), any real dtype (numpy, JAX,
    bfloat16, ``numpy.ma.MaskedArray``). The third result, (n, ny, nx)
    bool, is True at a masked array's masked pixels (all False otherwise);
    callers treat them as ignored. Finite values beyond float32's range
    (|x| > 3.4e38, float64 input) are refused rather than turned into inf.
    """
    masked = np.ma.getmaskarray(image) if isinstance(image, np.ma.MaskedArray) else None
    arr = np.ma.getdata(image) if masked is not None else np.asarray(image)
    if not _real_dtype(arr.dtype):
        raise TypeError(f"{name} must be a real numeric array; got dtype {arr.dtype}")
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name} must be 2-D (ny, nx) or 3-D (n, ny, nx); got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty; got shape {arr.shape}")
    if arr.dtype.itemsize > 4 and arr.dtype.kind == "f":
        big = np.isfinite(arr) & (np.abs(arr) > _FLOAT32_MAX)
        if big.any():
            raise ValueError(
                f"{name} has {int(big.sum())} finite pixel(s) beyond float32's range (|x| > 3.4e38); "
                "rescale it or mark them in ignore"
            )
    single = arr.ndim == 2
    out = np.array(arr[None] if single else arr, dtype=np.float32)
    if masked is None:
        return out, single, np.zeros(out.shape, bool)
    return out, single, np.array(masked[None] if single else masked, bool)


def as_mask(mask: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    """``mask`` as a bool array of ``shape`` (None: all False); clear errors naming ``name``."""
    if mask is None:
        return np.zeros(shape, bool)
    m = np.ma.filled(mask, True) if isinstance(mask, np.ma.MaskedArray) else np.asarray(mask)
    if not (m.dtype == bool or _real_dtype(m.dtype)):
        raise TypeError(f"{name} must be a boolean array; got dtype {m.dtype}")
    if m.shape != shape:
        raise ValueError(f"{name} must have the image's shape {shape}; got {m.shape}")
    return m.astype(bool)


def check_threshold(threshold: Any) -> float:
    """A probability threshold as float in [0, 1]; TypeError/ValueError naming what came."""
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        raise TypeError(f"threshold must be a number in [0, 1]; got {threshold!r}")
    t = float(threshold)
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"threshold must be in [0, 1]; got {threshold!r}")
    return t
