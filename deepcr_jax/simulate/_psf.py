"""Point-spread function of HST ACS/WFC in F606W (private helper).

The PSF is computed from first principles: the Fraunhofer diffraction
pattern of the HST pupil (2.4 m primary, 0.33 linear central obscuration,
four secondary-mirror support vanes) at five wavelengths spanning F606W,
sampled on a grid ``OVERSAMPLE`` times finer than the 0.05" detector pixel.
It is then blurred by a Gaussian (pointing jitter plus residual aberrations),
integrated over the square pixel and convolved with a 3x3 CCD
charge-diffusion kernel.  The result is an *effective* PSF whose samples at
integer pixel offsets give pixel values directly.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.fft as sfft
from scipy.ndimage import map_coordinates

__all__: list[str] = []

#: Sub-pixel sampling of the fine PSF grid.
OVERSAMPLE = 10
#: Number of sub-pixel phases per axis used to place point sources.
N_PHASE = 5
#: Half-size in pixels of the rendered PSF kernels (kernel is 2R+1 square).
KERNEL_RADIUS = 24

_PIXEL_SCALE_ARCSEC = 0.05
_DIAMETER_M = 2.4
_OBSCURATION = 0.33
_SPIDER_WIDTH_M = 0.038
_SPIDER_ANGLE_DEG = 45.0
#: Wavelengths (micron) and relative weights approximating the F606W band.
_WAVELENGTHS_UM = np.array([0.48, 0.53, 0.58, 0.63, 0.68])
_WAVE_WEIGHTS = np.array([0.7, 1.0, 1.0, 1.0, 0.8])
#: Gaussian sigma (pixels) for jitter + aberrations; tuned so FWHM ~ 2 px.
_JITTER_SIGMA_PX = 0.45
#: ACS/WFC-like charge-diffusion kernel at ~600 nm (sums to one).
DIFFUSION_KERNEL = np.array([[0.02, 0.08, 0.02], [0.08, 0.60, 0.08], [0.02, 0.08, 0.02]], dtype=np.float64)
_PUPIL_SAMPLES = 64


def _pupil(n: int) -> np.ndarray:
    """Binary HST-like pupil sampled with ``n`` points across the diameter."""
    c = (np.arange(n) - (n - 1) / 2) / (n / 2)  # in units of the radius
    yy, xx = np.meshgrid(c, c, indexing="ij")
    rr = np.hypot(xx, yy)
    pupil = (rr <= 1.0) & (rr >= _OBSCURATION)
    half_w = _SPIDER_WIDTH_M / _DIAMETER_M  # half-width in radius units
    ang = np.deg2rad(_SPIDER_ANGLE_DEG)
    for k in range(2):
        a = ang + k * np.pi / 2
        dist = np.abs(-np.sin(a) * xx + np.cos(a) * yy)
        pupil &= dist > half_w
    return pupil.astype(np.float64)


def _optical_psf_fine(size_fine: int) -> np.ndarray:
    """Polychromatic diffraction PSF on the fine grid (odd size, centred)."""
    n = _PUPIL_SAMPLES
    pupil = _pupil(n)
    out = np.zeros((size_fine, size_fine))
    half = size_fine // 2
    coords = np.arange(size_fine) - half
    for lam, w in zip(_WAVELENGTHS_UM, _WAVE_WEIGHTS):
        lam_over_d_px = (lam * 1e-6 / _DIAMETER_M) * 206264.806 / _PIXEL_SCALE_ARCSEC
        # FFT sample spacing in lambda/D units is n / nfft; want 1/OVERSAMPLE px.
        nfft_exact = n * OVERSAMPLE * lam_over_d_px
        nfft = int(np.ceil(nfft_exact))
        nfft = max(nfft, size_fine + 2)
        field = np.zeros((nfft, nfft), dtype=np.complex128)
        field[:n, :n] = pupil
        inten = np.abs(sfft.fftshift(sfft.fft2(field))) ** 2
        # Resample to exactly 1/OVERSAMPLE px spacing (spacing of inten grid
        # is nfft_exact/nfft fine samples per FFT sample).
        ctr = nfft // 2
        scale = nfft / nfft_exact
        yy, xx = np.meshgrid(coords * scale + ctr, coords * scale + ctr, indexing="ij")
        samp = map_coordinates(inten, [yy, xx], order=1, mode="constant")
        out += w * samp / samp.sum()
    return out / out.sum()


def _gaussian_1d(sigma: float, step: float, radius: int) -> np.ndarray:
    x = np.arange(-radius, radius + 1) * step
    g = np.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def _convolve_sep(img: np.ndarray, k: np.ndarray) -> np.ndarray:
    from scipy.ndimage import convolve1d

    img = convolve1d(img, k, axis=0, mode="constant")
    return convolve1d(img, k, axis=1, mode="constant")


@lru_cache(maxsize=4)
def effective_psf_fine(include_pixel: bool = True) -> np.ndarray:
    """Effective PSF on the fine grid (spacing 1/OVERSAMPLE px), unit sum.

    With ``include_pixel`` the PSF is integrated over the square pixel; this
    is the kernel for point sources.  Without it, the kernel is meant for
    extended sources whose intrinsic profile is already pixel-averaged.
    """
    os_ = OVERSAMPLE
    size = (2 * KERNEL_RADIUS + 3) * os_ + 1
    psf = _optical_psf_fine(size)
    g = _gaussian_1d(_JITTER_SIGMA_PX, 1.0 / os_, int(np.ceil(4 * _JITTER_SIGMA_PX * os_)))
    psf = _convolve_sep(psf, g)
    if include_pixel:
        box = np.ones(os_ + 1)
        box[0] = box[-1] = 0.5
        psf = _convolve_sep(psf, box / box.sum())
    # charge diffusion: 3x3 kernel at one-pixel (os_ fine samples) spacing
    diff = np.zeros_like(psf)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            wgt = DIFFUSION_KERNEL[dy + 1, dx + 1]
            diff += wgt * np.roll(np.roll(psf, dy * os_, axis=0), dx * os_, axis=1)
    psf = diff
    psf.setflags(write=False)
    return psf / psf.sum()


#: Start of the radial taper of the core kernels (pixels); zero at KERNEL_RADIUS.
TAPER_START = 16.0
#: Half-size in pixels of the far-wing (halo) kernel used for bright stars.
HALO_RADIUS = 128


def _taper(r: np.ndarray) -> np.ndarray:
    """1 inside TAPER_START, cos^2 roll-off to 0 at KERNEL_RADIUS."""
    x = np.clip((r - TAPER_START) / (KERNEL_RADIUS - TAPER_START), 0.0, 1.0)
    return np.cos(0.5 * np.pi * x) ** 2


@lru_cache(maxsize=1)
def halo_kernel() -> np.ndarray:
    """Far wings of the point-source PSF for bright stars, phase 0.

    The azimuthal median of the effective PSF between 10 and 22 px is fitted
    by ``A / r**3`` (the diffraction envelope); the halo is that law times
    ``1 - taper(r)`` (complementing the tapered core kernels) and rolled off
    smoothly to zero at ``HALO_RADIUS``.  Shape ``(2H+1, 2H+1)``.
    """
    fine = effective_psf_fine(True)
    c = fine.shape[0] // 2
    r_core = KERNEL_RADIUS
    offs = np.arange(-r_core, r_core + 1)
    k = fine[np.ix_(c + offs * OVERSAMPLE, c + offs * OVERSAMPLE)]
    k = k / k.sum()  # per-pixel units, like the phase kernels
    rr = np.hypot(*np.meshgrid(offs, offs, indexing="ij"))
    sel = (rr >= 10) & (rr <= 22)
    amp = float(np.median(k[sel] * rr[sel] ** 3))
    h = HALO_RADIUS
    o = np.arange(-h, h + 1)
    r = np.hypot(*np.meshgrid(o, o, indexing="ij"))
    out_taper = np.cos(0.5 * np.pi * np.clip((r - 0.75 * h) / (0.25 * h), 0, 1)) ** 2
    halo = amp / np.maximum(r, 1.0) ** 3 * (1.0 - _taper(r)) * out_taper
    halo.setflags(write=False)
    return halo


@lru_cache(maxsize=4)
def phase_kernels(include_pixel: bool = True) -> np.ndarray:
    """Pixel-level kernels for every sub-pixel phase.

    Returns an array ``(N_PHASE, N_PHASE, 2R+1, 2R+1)``; entry ``[py, px]``
    is the image of a unit-flux point source located at
    ``(py / N_PHASE, px / N_PHASE)`` pixels from the centre of the central
    kernel pixel ``[R, R]``.  Kernels are tapered radially (see ``_taper``)
    to avoid a square truncation edge and normalised to unit sum.
    """
    fine = effective_psf_fine(include_pixel)
    os_ = OVERSAMPLE
    step = os_ // N_PHASE
    c = fine.shape[0] // 2
    r = KERNEL_RADIUS
    offs = np.arange(-r, r + 1) * os_
    out = np.empty((N_PHASE, N_PHASE, 2 * r + 1, 2 * r + 1))
    for py in range(N_PHASE):
        iy = c + offs - py * step
        for px in range(N_PHASE):
            ix = c + offs - px * step
            k = fine[np.ix_(iy, ix)]
            dy = np.arange(-r, r + 1) - py / N_PHASE
            dx = np.arange(-r, r + 1) - px / N_PHASE
            k = k * _taper(np.hypot(dy[:, None], dx[None, :]))
            out[py, px] = k / k.sum()
    out.setflags(write=False)
    return out


def fwhm_pixels() -> float:
    """FWHM (pixels) of the effective point-source PSF along the x axis."""
    fine = effective_psf_fine(True)
    c = fine.shape[0] // 2
    prof = fine[c]
    half = prof[c] / 2
    right = prof[c:]
    i = int(np.argmax(right < half))
    x0, x1 = i - 1, i
    f = (right[x0] - half) / (right[x0] - right[x1])
    return 2 * (x0 + f) / OVERSAMPLE
