"""Argument checks and the bootstrap draw shared by the evaluation modules (private)."""

from __future__ import annotations

import numpy as np

__all__ = ["as_bool", "check_same", "resample_weights", "valid_pixels"]


def as_bool(name: str, a) -> np.ndarray:
    """``a`` as a bool array; 0/1 numbers are accepted, anything else is an error naming ``name``."""
    a = np.asarray(a)
    if a.dtype != bool:
        if not np.all((a == 0) | (a == 1)):
            raise ValueError(f"{name} must be boolean (or 0/1); got dtype {a.dtype}")
        a = a.astype(bool)
    return a


def check_same(name: str, a: np.ndarray, ref: np.ndarray, ref_name: str) -> None:
    """Raise unless ``a`` has the shape of ``ref``."""
    if a.shape != ref.shape:
        raise ValueError(f"{name} must have the shape of {ref_name} {ref.shape}; got {a.shape}")


def valid_pixels(truth: np.ndarray, ignore) -> np.ndarray | None:
    """``~ignore`` checked against ``truth``'s shape; None when ``ignore`` is None."""
    if ignore is None:
        return None
    ign = as_bool("ignore", ignore)
    check_same("ignore", ign, truth, "truth")
    return ~ign


def resample_weights(rng: np.random.Generator, n: int) -> np.ndarray:
    """One bootstrap resample of ``n`` images as counts: how often each image was drawn, shape (n,)."""
    return np.bincount(rng.integers(0, n, n), minlength=n)
