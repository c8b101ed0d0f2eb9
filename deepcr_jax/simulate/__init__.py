"""Simulated HST ACS/WFC F606W single exposures with exact cosmic-ray truth.

The simulator produces ``_flc``-like frames in electrons (bias subtracted,
sky not subtracted) for the three field types of the deepCR paper, together
with the CR-free image, the deposited CR charge, the ground-truth CR mask and
the saturation ``ignore`` mask.

Model summary
-------------
* **Optics**: polychromatic diffraction PSF of the HST pupil (0.33
  obscuration, spider vanes), Gaussian jitter, pixel integration and a 3x3
  charge-diffusion kernel; FWHM ~1.9 px at 0.05"/px.  Point sources are
  placed with 1/5-pixel sub-pixel accuracy; core kernels are tapered between
  16 and 24 px and stars brighter than 500 e-/s get an r^-3 far-wing halo.
* **Scenes**: ``"extragalactic"`` (Sersic galaxies + few stars),
  ``"globular"`` (King-profile star cluster, many saturated stars) and
  ``"resolved"`` (dense faint stars on exponential-disk diffuse light).
* **Noise**: Poisson noise on sky + sources, Gaussian read noise
  (default 4.5 e-).  Sky rate drawn uniformly in 0.10-0.20 e-/s/px unless
  given.
* **Cosmic rays**: 0.65 events/cm^2/s on 15 micron pixels (~120 events per
  256x256 stamp per 1000 s; ~1.8 % of pixels masked at 1000 s with
  0.15 e-/s/px sky), isotropic incidence through a 13 micron active layer
  (mostly 1-4 px hits, heavy tail of long tracks, 4 % curly "worms"),
  Landau-straggled deposits of ~2000 e- per vertical crossing (150 e- per
  micron) with a log-normal species spread, and depth-dependent charge
  diffusion (sigma 0.12-0.7 px).  CR charge is added without Poisson noise.
  The rate/amplitude pair was tuned so that the reference deepCR ACS-WFC
  model and LACosmic reach detection rates close to the paper's Table 2.
* **Saturation**: charge above an 80000 e- full well bleeds along columns;
  ``ignore`` = (image >= 70000 e-) dilated by a 7x7 box.
* **Truth mask**: see :func:`cr_truth_mask` (5 sigma seed, 1.5 sigma one-pass
  grow within 1 px, sigma from the CR-free expectation).

Layout: ``_exposure`` (one exposure, the model's parameters), ``_dataset``
(stamp stacks and their ``.npz`` files), ``_files`` (``_flc``-like FITS files), ``_scene``/``_psf``/``_cosmics``/
``_detector`` (the physics); the saturation rule is
:func:`deepcr_jax.hst.saturation_mask`, shared with real frames.
"""

from __future__ import annotations

from ._dataset import EXPTIME_RANGE, StampBatch, example_image, load_dataset, make_stamps, save_dataset
from ._detector import bleed_columns, cr_truth_mask, saturation_ignore
from ._exposure import (
    CHIP_SHAPE,
    CR_RATE,
    DEFAULT_EXPTIME,
    FIELDS,
    FULL_WELL,
    READNOISE,
    SATURATION_LEVEL,
    Exposure,
    cosmic_ray_charge,
    psf_fwhm,
    simulate_chip,
    simulate_exposure,
)
from ._files import write_flc

__all__ = [
    "CHIP_SHAPE",
    "CR_RATE",
    "DEFAULT_EXPTIME",
    "EXPTIME_RANGE",
    "FIELDS",
    "FULL_WELL",
    "READNOISE",
    "SATURATION_LEVEL",
    "Exposure",
    "StampBatch",
    "bleed_columns",
    "cosmic_ray_charge",
    "cr_truth_mask",
    "example_image",
    "load_dataset",
    "make_stamps",
    "psf_fwhm",
    "saturation_ignore",
    "save_dataset",
    "simulate_chip",
    "simulate_exposure",
    "write_flc",
]
