"""Training stamps from aligned exposures of one field (HST CR-SPLIT / repeat exposures).

This is how the deepCR training set was made (Zhang & Bloom 2020, sec. 2),
without AstroDrizzle: the exposures must already share one pixel grid.

For every exposure ``i`` of a field of ``n >= 3`` exposures:

1. **Reference** -- the median of the *other* exposures, sky-subtracted and
   scaled to exposure ``i``::

       model_i = sky_i + t_i * median_{j != i} ((image_j - sky_j) / t_j)

   (``t`` = exposure times, all equal by default). Pixels ignored in an
   exposure ``j`` are left out of the median; with ``iterations=2`` (default)
   the pixels found to be CRs in the first pass are left out as well, so a CR
   in one of the other exposures does not bias the reference (this matters
   for 3 exposures, where the median of two values is their mean).
2. **Noise** -- per pixel, Poisson noise of the reference plus read noise::

       sigma_i = sqrt(max(model_i, 0) + readnoise_i**2)        (electrons)

   as AstroDrizzle's ``driz_cr`` (with no derivative term: the exposures are
   assumed aligned, not blotted). ``reference_noise=True`` adds the variance
   of the median itself, which cuts the false seeds of 3-4 exposure fields.
3. **Two-threshold rule** (the paper's values): a pixel is a CR *seed* if
   ``image_i - model_i > 5 sigma_i``; pixels within 1 px (3x3 box) of a seed
   are CRs too if ``image_i - model_i > 1.5 sigma_i`` (one pass, not
   iterated). Only positive deviations count. This is the rule of the
   simulator's truth mask (:func:`deepcr_jax.simulate.cr_truth_mask`), applied
   to the observed difference instead of the deposited charge.

Against the simulator's truth (4 repeat exposures, 400 s, extragalactic;
``tests/test_training_builder.py``): TPR 0.956, FPR 1.6e-3, of which 2.1e-4
on pixels with no CR charge at all -- the rest are CR peripheries whose charge
is just under the truth's 1.5 sigma while the noisy difference is over it.

**Ignore** (True = do not train or evaluate on the pixel), as
:func:`deepcr_jax.fits.read_fits`: DQ flags in ``dq_ignore_bits`` (all but
saturation and cosmic rays), saturation (``image >= 70000`` e- or DQ bits 256 /
2048) grown by a 7x7 box, non-finite pixels, and pixels with no usable
reference in any other exposure. CR masks are False at ignored pixels.
Non-finite image pixels are replaced by the reference (or the sky) so that
stamps hold finite numbers only.

**Stamps** -- each frame, less a ``border`` on every side (paper: 128 px, so
that dithered frames overlap fully), is cut into non-overlapping
``stamp_size`` squares (paper: 256); a remainder narrower than a stamp is
dropped. An ACS/WFC chip (2048 x 4096) gives 7 x 15 = 105 stamps, 210 per
two-chip exposure, as in the paper.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from deepcr_jax.hst import DEFAULT_DQ_IGNORE_BITS, SATURATION_GROW, SATURATION_LEVEL
from deepcr_jax.training.crdetect import (
    GROW_RADIUS,
    GROW_SNR,
    SEED_SNR,
    _check_rule,
    _detect,
    _int_arg,
    _masks,
    _per_exposure,
    _stack,
    detect_crs,
    exposure_ignore,
)

__all__ = [
    "TrainingStamps",
    "build_stamps",
    "build_stamps_from_fits",
    "detect_crs",
    "exposure_ignore",
    "stamp_origins",
]

#: Paper values: stamp size and border (px).
STAMP_SIZE, BORDER = 256, 128


@dataclasses.dataclass(frozen=True, eq=False)
class TrainingStamps:
    """Training stamps cut from the exposures of one or more fields.

    For the training pipeline: ``deepcr_jax.training.data.from_arrays(s.image,
    s.cr, s.ignore, s.sky, s.group)`` (the split then keeps fields apart).

    Attributes
    ----------
    image : ndarray, (n, s, s), float32
        Stamps in electrons (sky not subtracted); always finite.
    cr : ndarray, (n, s, s), bool
        True = cosmic ray (from the median of the other exposures).
    ignore : ndarray, (n, s, s), bool
        True = exclude from loss and metrics (DQ bad pixel, saturated and
        grown 7x7, non-finite, or no reference).
    sky : ndarray, (n,), float32
        Sky level of the stamp's exposure in electrons per pixel.
    group : ndarray, (n,), int32
        Field id given by the caller (for splits that keep fields apart).
    exposure : ndarray, (n,), int32
        Index of the stamp's exposure among the field's inputs.
    chip : ndarray, (n,), int32
        Index of the science array within the exposure (0 for arrays).
    origin : ndarray, (n, 2), int32
        ``(y0, x0)`` of the stamp's first pixel in its frame.
    """

    image: np.ndarray
    cr: np.ndarray
    ignore: np.ndarray
    sky: np.ndarray
    group: np.ndarray
    exposure: np.ndarray
    chip: np.ndarray
    origin: np.ndarray

    def __len__(self) -> int:
        return int(self.image.shape[0])

    def as_dict(self) -> dict[str, np.ndarray]:
        """The arrays by name (``image, cr, ignore, sky, group, exposure, chip, origin``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @staticmethod
    def concatenate(parts: Sequence[TrainingStamps]) -> TrainingStamps:
        """Stack the stamps of several builds (e.g. one per field) along axis 0.

        Parameters
        ----------
        parts : sequence of TrainingStamps
            At least one; all with the same stamp size.

        Returns
        -------
        TrainingStamps
        """
        parts = list(parts)
        if not parts or not all(isinstance(p, TrainingStamps) for p in parts):
            raise ValueError("parts must be a non-empty sequence of TrainingStamps")
        sizes = {p.image.shape[1:] for p in parts}
        if len(sizes) != 1:
            raise ValueError(f"parts must share one stamp shape; got {sorted(sizes)}")
        names = [f.name for f in dataclasses.fields(TrainingStamps)]
        return TrainingStamps(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in names})


# --------------------------------------------------------------------------
# validation


def stamp_origins(shape: tuple[int, int], stamp_size: int = STAMP_SIZE, border: int = BORDER) -> np.ndarray:
    """Top-left corners of the stamps cut from a frame.

    Parameters
    ----------
    shape : (int, int)
        Frame shape ``(ny, nx)``.
    stamp_size : int
        Side of the square stamps in pixels.
    border : int
        Pixels discarded on every side of the frame.

    Returns
    -------
    ndarray, (k, 2), int32
        ``(y0, x0)`` of each stamp, row-major; stamps do not overlap and lie
        inside ``[border, ny - border) x [border, nx - border)``.

    Raises
    ------
    ValueError
        The frame minus the border is smaller than one stamp.
    """
    stamp_size = _int_arg("stamp_size", stamp_size, 1)
    border = _int_arg("border", border, 0)
    ny, nx = (int(s) for s in shape)
    ys = np.arange(border, ny - border - stamp_size + 1, stamp_size)
    xs = np.arange(border, nx - border - stamp_size + 1, stamp_size)
    if ys.size == 0 or xs.size == 0:
        raise ValueError(
            f"frames of shape {(ny, nx)} are too small for stamp_size={stamp_size} with border={border} "
            f"(need at least {stamp_size + 2 * border} px per side)"
        )
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([yy.ravel(), xx.ravel()], axis=1).astype(np.int32)


def build_stamps(
    images: ArrayLike | Sequence[ArrayLike],
    *,
    readnoise: ArrayLike,
    dq: ArrayLike | Sequence[ArrayLike] | None = None,
    ignore: ArrayLike | Sequence[ArrayLike] | None = None,
    sky: ArrayLike | None = None,
    exptime: ArrayLike | None = None,
    group: int = 0,
    chip: int = 0,
    stamp_size: int = STAMP_SIZE,
    border: int = BORDER,
    dq_ignore_bits: int = DEFAULT_DQ_IGNORE_BITS,
    saturation: float | None = SATURATION_LEVEL,
    saturation_grow: int = SATURATION_GROW,
    seed_snr: float = SEED_SNR,
    grow_snr: float = GROW_SNR,
    grow_radius: int = GROW_RADIUS,
    iterations: int = 2,
    reference_noise: bool = False,
    min_exposures: int = 3,
) -> TrainingStamps:
    """Training stamps (image, CR mask, ignore mask, sky) from aligned exposures of one field.

    Parameters
    ----------
    images : array_like, (n, ny, nx), or sequence of n arrays (ny, nx)
        Aligned exposures (same pixel grid) in electrons, sky not subtracted.
        Non-finite pixels are ignored and filled with the reference.
    readnoise : float or array_like, (n,)
        Read noise in electrons.
    dq : array_like of int, (n, ny, nx), optional
        Data-quality arrays (HST bit conventions, see :func:`exposure_ignore`).
    ignore : array_like of bool, (n, ny, nx), optional
        Extra pixels to ignore (True = ignore), OR'ed with the DQ/saturation
        mask.
    sky : float or array_like, (n,), optional
        Sky in electrons per pixel; default estimated per exposure (see
        :func:`detect_crs`; includes diffuse light). Returned per stamp.
    exptime : float or array_like, (n,), optional
        Exposure times (s); default all equal.
    group : int
        Field id stored with every stamp.
    chip : int
        Chip index stored with every stamp.
    stamp_size, border : int
        Stamp side and the border discarded on each side (paper: 256, 128).
    dq_ignore_bits, saturation, saturation_grow
        See :func:`exposure_ignore`.
    seed_snr, grow_snr, grow_radius, iterations, reference_noise, min_exposures
        See :func:`detect_crs`.

    Returns
    -------
    TrainingStamps
        ``n * k`` stamps, exposure-major then row-major (``k`` from
        :func:`stamp_origins`): ``image`` (N, s, s) float32 e-, ``cr`` and
        ``ignore`` (N, s, s) bool (True = CR / ignored), ``sky`` (N,) e-.

    Raises
    ------
    ValueError
        As :func:`detect_crs`; also frames too small for one stamp.
    """
    x = _stack(images, _int_arg("min_exposures", min_exposures, 2))
    n = x.shape[0]
    rn = _per_exposure("readnoise", readnoise, n)
    if rn is None:
        raise ValueError("readnoise must be given (electrons; e.g. 4.5 for ACS/WFC)")
    sky = _per_exposure("sky", sky, n)
    exptime = _per_exposure("exptime", exptime, n, allow_zero=False)
    grow_radius, iterations = _check_rule(seed_snr, grow_snr, grow_radius, iterations)
    group = _int_arg("group", group, 0)
    chip = _int_arg("chip", chip, 0)
    origins = stamp_origins(x.shape[1:], stamp_size, border)
    extra = _masks("ignore", ignore, x.shape)
    ign = exposure_ignore(x, dq=dq, dq_ignore_bits=dq_ignore_bits, saturation=saturation,
                          saturation_grow=saturation_grow)
    if extra is not None:
        ign |= extra.astype(bool)
    cr, model, no_ref, sky = _detect(x, ign, rn, sky, exptime, float(seed_snr), float(grow_snr),
                                     grow_radius, iterations, bool(reference_noise))
    ign |= no_ref
    bad = ~np.isfinite(x)
    if bad.any():
        fill = np.where(np.isfinite(model), model, sky[:, None, None].astype(np.float32))
        x[bad] = fill[bad]
    s = stamp_size
    k = len(origins)
    kinds = (("image", np.float32), ("cr", bool), ("ignore", bool))
    out = {name: np.empty((n * k, s, s), dt) for name, dt in kinds}
    for i in range(n):
        for m, (y0, x0) in enumerate(origins):
            win = (i, slice(y0, y0 + s), slice(x0, x0 + s))
            out["image"][i * k + m] = x[win]
            out["cr"][i * k + m] = cr[win]
            out["ignore"][i * k + m] = ign[win]
    return TrainingStamps(
        image=out["image"],
        cr=out["cr"],
        ignore=out["ignore"],
        sky=np.repeat(sky, k).astype(np.float32),
        group=np.full(n * k, group, np.int32),
        exposure=np.repeat(np.arange(n, dtype=np.int32), k),
        chip=np.full(n * k, chip, np.int32),
        origin=np.tile(origins, (n, 1)),
    )


def _header_readnoise(header) -> float | None:
    vals = [header.get(f"READNSE{a}") for a in "ABCD"]
    vals = [float(v) for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0]
    return float(np.mean(vals)) if vals else None


def build_stamps_from_fits(
    paths: Sequence[str | os.PathLike],
    *,
    group: int = 0,
    readnoise: ArrayLike | None = None,
    sky: ArrayLike | None = None,
    dq_ignore_bits: int = DEFAULT_DQ_IGNORE_BITS,
    saturation: float | None = SATURATION_LEVEL,
    saturation_grow: int = SATURATION_GROW,
    units: str = "auto",
    **kwargs,
) -> TrainingStamps:
    """Training stamps from aligned FITS exposures of one field (e.g. ACS ``_flc`` CR-SPLITs).

    Each file is read with :func:`deepcr_jax.fits.read_fits` (every ``SCI``
    extension with its ``DQ``; ignore mask from DQ bits, grown saturation and
    non-finite pixels; count rates converted to electrons). Chip ``c`` of
    every file is built against chip ``c`` of the others, so the files must
    hold the same science extensions (``EXTNAME,EXTVER``) with the same shapes.

    Parameters
    ----------
    paths : sequence of str or path-like
        At least 3 files (see ``min_exposures``) of one field on one grid.
    group : int
        Field id stored with every stamp.
    readnoise : float or array_like, (n,), optional
        Read noise (e-) per file; default the mean of the primary header's
        ``READNSEA``..``READNSED`` keywords.
    sky : float or array_like, (n,), optional
        Sky (e-/px) per file; default estimated per chip.
    dq_ignore_bits, saturation, saturation_grow, units
        Passed to :func:`deepcr_jax.fits.read_fits`.
    **kwargs
        Passed to :func:`build_stamps` (``stamp_size``, ``border``,
        ``seed_snr``, ``min_exposures``...).

    Returns
    -------
    TrainingStamps
        Chip-major, then exposure, then row-major; ``chip`` is the chip's
        position in the file, ``exposure`` the file's position in ``paths``.

    Raises
    ------
    ValueError
        Too few files, files whose science extensions or shapes differ, no
        read noise in the header and none given; errors of ``read_fits``.
    """
    from astropy.io import fits

    from deepcr_jax.fits import read_fits

    if isinstance(paths, (str, os.PathLike)):
        raise TypeError("paths must be a sequence of FITS files (one per exposure), not a single path")
    paths = [os.fspath(p) for p in paths]
    min_exposures = kwargs.get("min_exposures", 3)
    if len(paths) < min_exposures:
        raise ValueError(f"paths must name at least {min_exposures} exposures of one field; got {len(paths)}")
    for bad in ("dq", "ignore", "exptime", "chip", "readnoise"):
        if bad in kwargs:
            raise TypeError(f"build_stamps_from_fits() takes {bad} from the files, not as an argument")
    chips = [read_fits(p, dq_ignore_bits=dq_ignore_bits, saturation=saturation,
                       saturation_grow=saturation_grow, units=units) for p in paths]
    layout = [(c.label, c.image.shape) for c in chips[0]]
    for p, cs in zip(paths[1:], chips[1:]):
        got = [(c.label, c.image.shape) for c in cs]
        if got != layout:
            raise ValueError(f"{p!r} has science arrays {got}, but {paths[0]!r} has {layout}; "
                             "the exposures must share chips and pixel grid")
    primaries = [fits.getheader(p, 0) for p in paths]
    if readnoise is None:
        rn = [_header_readnoise(h) for h in primaries]
        missing = [p for p, r in zip(paths, rn) if r is None]
        if missing:
            raise ValueError(f"no READNSEA..READNSED keywords in {missing[0]!r}; pass readnoise= (electrons)")
        readnoise = rn
    times = []
    for cs, h in zip(chips, primaries):
        t = cs[0].header.get("EXPTIME", h.get("EXPTIME"))
        times.append(float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) and t > 0 else None)
    exptime = None if any(t is None for t in times) else times
    parts = []
    for c in range(len(layout)):
        parts.append(build_stamps([cs[c].image for cs in chips], ignore=[cs[c].ignore for cs in chips],
                                  readnoise=readnoise, sky=sky, exptime=exptime, group=group, chip=c,
                                  saturation=None, **kwargs))
    return TrainingStamps.concatenate(parts)
