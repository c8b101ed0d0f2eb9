"""Simulated exposures written as HST ``_flc``-like FITS files."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ._exposure import simulate_exposure

__all__ = ["write_flc"]


def write_flc(
    path: str | os.PathLike,
    seeds: Sequence[int],
    shape: tuple[int, int] = (256, 256),
    *,
    field: str = "extragalactic",
    overwrite: bool = False,
) -> Path:
    """Write an ACS/WFC ``_flc``-like file of simulated chips: one SCI/DQ pair per seed.

    Parameters
    ----------
    path : path-like
        Output file (written atomically; an existing file raises
        :class:`FileExistsError` unless ``overwrite``).
    seeds : sequence of int
        One simulated exposure per seed (:func:`simulate_exposure`); chip
        ``k`` (1-based) is ``SCI``/``DQ`` with ``EXTVER = k``.
    shape : (ny, nx)
        Chip shape in pixels.
    field : str
        Scene type (see :data:`FIELDS`).

    The primary header says ``INSTRUME = ACS``, ``DETECTOR = WFC``; SCI is
    float32 in electrons (``BUNIT = ELECTRONS``), DQ is int16 zeros.
    Returns the path.
    """
    from astropy.io import fits

    from deepcr_jax.fits import write_hdulist

    primary = fits.PrimaryHDU()
    primary.header["INSTRUME"], primary.header["DETECTOR"] = "ACS", "WFC"
    hdus = [primary]
    for ver, seed in enumerate(seeds, start=1):
        exp = simulate_exposure(field, shape, seed=seed)
        sci = fits.ImageHDU(exp.image, name="SCI", ver=ver)
        sci.header["BUNIT"] = "ELECTRONS"
        hdus += [sci, fits.ImageHDU(np.zeros(shape, np.int16), name="DQ", ver=ver)]
    primary.header["NEXTEND"] = len(hdus) - 1
    return write_hdulist(fits.HDUList(hdus), path, overwrite=overwrite)
