"""Single exposures: :func:`simulate_exposure`, :func:`simulate_chip`, :func:`cosmic_ray_charge`.

The physics is in the private helpers (``_scene``, ``_psf``, ``_cosmics``,
``_detector``); this module holds the exposure model's parameters, checks
the arguments and assembles an :class:`Exposure`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deepcr_jax.hst import SATURATION_GROW, SATURATION_LEVEL

from . import _cosmics, _psf, _scene
from ._detector import bleed_columns, cr_truth_mask, saturation_ignore

__all__ = [
    "CHIP_SHAPE",
    "CR_RATE",
    "DEFAULT_EXPTIME",
    "FIELDS",
    "FULL_WELL",
    "READNOISE",
    "SATURATION_LEVEL",
    "Exposure",
    "cosmic_ray_charge",
    "psf_fwhm",
    "simulate_chip",
    "simulate_exposure",
]

#: Supported field types.
FIELDS: tuple[str, ...] = ("extragalactic", "globular", "resolved")
#: Default exposure time (s) per field (deepCR test-set exposures).
DEFAULT_EXPTIME: dict[str, float] = {"extragalactic": 400.0, "globular": 350.0, "resolved": 540.0}
#: Cosmic-ray events per cm^2 per second (15 micron pixels).
CR_RATE: float = _cosmics.CR_RATE
#: Default Gaussian read noise (electrons).
READNOISE: float = 4.5
#: Pixel full well (electrons); excess bleeds along columns.
FULL_WELL: float = 80000.0
#: Shape (ny, nx) of one ACS/WFC chip.
CHIP_SHAPE: tuple[int, int] = (2048, 4096)
_SKY_RATE_RANGE = (0.10, 0.20)


@dataclass(frozen=True, eq=False)
class Exposure:
    """One simulated exposure.

    Attributes
    ----------
    image : ndarray, (ny, nx), float32
        Observed frame in electrons (sky + sources + CRs + read noise,
        saturated/bled).
    clean : ndarray, (ny, nx), float32
        The same frame without cosmic rays (same noise realisation).
    cr_mask : ndarray, (ny, nx), bool
        Ground-truth CR mask, True = cosmic ray.
    ignore : ndarray, (ny, nx), bool
        True for pixels to exclude (saturation mask dilated 7x7).
    cr_charge : ndarray, (ny, nx), float32
        Deposited CR charge in electrons.
    expected : ndarray, (ny, nx), float32
        Noise-free expected sky + source electrons (before saturation).
    field : str
        Field type.
    exptime : float
        Exposure time in seconds.
    sky : float
        Sky level in electrons per pixel.
    readnoise : float
        Read noise in electrons.
    n_cosmic_rays : int
        Number of CR events drawn (including ones landing just outside).
    """

    image: np.ndarray
    clean: np.ndarray
    cr_mask: np.ndarray
    ignore: np.ndarray
    cr_charge: np.ndarray
    expected: np.ndarray
    field: str
    exptime: float
    sky: float
    readnoise: float
    n_cosmic_rays: int


# --------------------------------------------------------------------------
# argument checks (shared with ._dataset)


def _rng(seed) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed >= 0:
        return np.random.default_rng(int(seed))
    raise ValueError(f"seed must be a non-negative int or numpy Generator, got {seed!r}")


def _check_field(field: str) -> str:
    if field not in FIELDS:
        raise ValueError(f"field must be one of {FIELDS}, got {field!r}")
    return field


def _check_shape(shape) -> tuple[int, int]:
    try:
        ny, nx = (int(s) for s in shape)
        ok = all(int(s) == s for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be a pair of positive ints (ny, nx), got {shape!r}") from None
    if not ok or ny < 1 or nx < 1:
        raise ValueError(f"shape must be a pair of positive ints (ny, nx), got {shape!r}")
    return ny, nx


def _check_positive(name: str, value, allow_zero: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        cmp = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {cmp}, got {value!r}")
    return v


# --------------------------------------------------------------------------
# exposures


def cosmic_ray_charge(
    shape: tuple[int, int],
    exptime: float,
    *,
    seed: int | np.random.Generator,
    rate: float = CR_RATE,
) -> np.ndarray:
    """Deposited cosmic-ray charge for an exposure of ``exptime`` seconds.

    Parameters
    ----------
    shape : (int, int)
        Image shape ``(ny, nx)``.
    exptime : float
        Exposure time in seconds (> 0).  The expected number of events is
        ``rate * area * exptime`` with 15 micron pixels.
    seed : int or numpy.random.Generator
        Random seed or generator.
    rate : float
        Events per cm^2 per second (default :data:`CR_RATE`).

    Returns
    -------
    ndarray, (ny, nx), float64
        CR charge in electrons (zero where no CR deposited charge).
    """
    shape = _check_shape(shape)
    exptime = _check_positive("exptime", exptime)
    rate = _check_positive("rate", rate, allow_zero=True)
    charge, _ = _cosmics.cosmic_ray_charge(shape, exptime, _rng(seed), rate)
    return charge


def simulate_exposure(
    field: str,
    shape: tuple[int, int] = (256, 256),
    *,
    seed: int | np.random.Generator,
    exptime: float | None = None,
    sky_rate: float | None = None,
    readnoise: float = READNOISE,
    cr_rate: float = CR_RATE,
    full_well: float = FULL_WELL,
    saturation_level: float = SATURATION_LEVEL,
    scene_seed: int | np.random.Generator | None = None,
) -> Exposure:
    """Simulate one ACS/WFC F606W ``_flc``-like exposure in electrons.

    Parameters
    ----------
    field : {"extragalactic", "globular", "resolved"}
        Field type.
    shape : (int, int)
        Output shape ``(ny, nx)``; large frames are rendered in 512x512
        tiles, so a full chip (:data:`CHIP_SHAPE`) is fine.
    seed : int or numpy.random.Generator
        Random seed; the same seed gives bit-identical output.
    exptime : float, optional
        Exposure time in seconds; default ``DEFAULT_EXPTIME[field]``.
    sky_rate : float, optional
        Sky count rate in e-/s/pixel; default drawn uniformly in [0.10, 0.20].
    readnoise : float
        Gaussian read noise in electrons.
    cr_rate : float
        Cosmic-ray events per cm^2 per second.
    full_well : float
        Full-well capacity (e-); charge above it bleeds along columns.
    saturation_level : float
        Pixels with ``image >= saturation_level`` (e-) are saturated; the
        ``ignore`` mask is their 7x7 dilation.
    scene_seed : int or numpy.random.Generator, optional
        If given, the scene (sources) is drawn from this seed instead of
        ``seed``, which then drives only the sky draw, photon and read noise
        and cosmic rays: exposures with the same ``scene_seed`` (and the same
        ``field``, ``shape``, ``exptime`` and ``sky_rate``) are repeat
        exposures of one field with independent noise and CRs. None
        (default) draws everything from ``seed``, as before.

    Returns
    -------
    Exposure
        Arrays of shape ``(ny, nx)``; see :class:`Exposure`.  The CR mask
        follows :func:`cr_truth_mask` with ``expected`` and ``readnoise``.
    """
    field = _check_field(field)
    shape = _check_shape(shape)
    exptime = DEFAULT_EXPTIME[field] if exptime is None else _check_positive("exptime", exptime)
    readnoise = _check_positive("readnoise", readnoise, allow_zero=True)
    cr_rate = _check_positive("cr_rate", cr_rate, allow_zero=True)
    full_well = _check_positive("full_well", full_well)
    saturation_level = _check_positive("saturation_level", saturation_level)
    rng = _rng(seed)
    if sky_rate is None:
        sky_rate = float(rng.uniform(*_SKY_RATE_RANGE))
    else:
        sky_rate = _check_positive("sky_rate", sky_rate, allow_zero=True)

    scene = _scene.draw_scene(field, shape, rng if scene_seed is None else _rng(scene_seed))
    sky = sky_rate * exptime
    expected = _scene.render_rate(scene, shape) * exptime
    np.maximum(expected, 0.0, out=expected)  # FFT round-off
    expected += sky
    photo = rng.poisson(expected).astype(np.float64)
    cr, n_cr = _cosmics.cosmic_ray_charge(shape, exptime, rng, cr_rate)
    noise = rng.normal(0.0, readnoise, shape) if readnoise > 0 else np.zeros(shape)

    clean = bleed_columns(photo, full_well)
    clean += noise
    photo += cr
    image = bleed_columns(photo, full_well)
    image += noise
    return Exposure(
        image=image.astype(np.float32),
        clean=clean.astype(np.float32),
        cr_mask=cr_truth_mask(cr, expected, readnoise),
        ignore=saturation_ignore(image, saturation_level, SATURATION_GROW),
        cr_charge=cr.astype(np.float32),
        expected=expected.astype(np.float32),
        field=field,
        exptime=float(exptime),
        sky=float(sky),
        readnoise=float(readnoise),
        n_cosmic_rays=int(n_cr),
    )


def simulate_chip(
    field: str,
    *,
    seed: int | np.random.Generator,
    exptime: float | None = None,
    **kwargs,
) -> Exposure:
    """Simulate a full 2048 x 4096 ACS/WFC chip; see :func:`simulate_exposure`.

    Sources are rendered in 512x512 tiles (peak memory ~1.1 GB, ~7 s on
    two CPU cores).  Extra keyword arguments are passed on.
    """
    return simulate_exposure(field, CHIP_SHAPE, seed=seed, exptime=exptime, **kwargs)


def psf_fwhm() -> float:
    """FWHM in pixels of the effective point-source PSF (x profile)."""
    return _psf.fwhm_pixels()
