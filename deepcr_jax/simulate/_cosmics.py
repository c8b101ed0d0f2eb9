"""Cosmic-ray charge deposition for ACS/WFC-like CCDs (private helper).

Physical model (all numbers are module constants):

* Events arrive as a Poisson process with ``CR_RATE`` events per cm^2 per
  second of exposure on 15 micron pixels (so the count scales linearly with
  exposure time and detector area).  Start points are uniform over the image
  extended by ``_MARGIN`` pixels so that tracks can enter from outside.
* Incidence is isotropic over the upper hemisphere, weighted by the
  projected area (``cos(theta)`` distributed as ``sqrt(U)``).  A particle
  crosses an active layer of ``DEPTH_UM`` micron, giving a projected track of
  ``DEPTH_UM / 15 * tan(theta)`` pixels (most hits are 1-2 px, a heavy tail
  of long tracks) and a path length ``DEPTH_UM / cos(theta)``.
* The deposited charge is ``Q_MPV_PER_UM * path * f_L * f_s`` where ``f_L``
  is a Landau-distributed straggling factor (mode 1, long power-law tail,
  clipped at ``_LANDAU_MAX``) and ``f_s`` a log-normal spread in stopping
  power (mixture of particle species/energies).
* ``WORM_FRACTION`` of events are low-energy electrons producing curly
  "worm" tracks (a random walk with a drifting direction).
* Along the track the charge is split into sub-deposits with Gamma(3)
  fluctuations.  Each sub-deposit diffuses as a 2-D Gaussian whose sigma
  grows linearly from ``SIGMA_FRONT`` (generated near the collecting gates)
  to ``SIGMA_BACK`` (generated at the back surface), and is integrated
  exactly over the pixel grid.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr

__all__: list[str] = []

PIXEL_UM = 15.0
#: Cosmic-ray events per cm^2 per second.
CR_RATE = 0.65
#: Thickness of the charge-collecting silicon layer in micron.
DEPTH_UM = 13.0
#: Most probable deposit per micron of path (electrons), ~MIP in silicon.
Q_MPV_PER_UM = 150.0
#: Log-normal sigma of the stopping-power spread between particles.
SPECIES_SIGMA = 0.45
#: Width of the Landau straggling factor relative to its mode.
LANDAU_WIDTH = 0.12
_LANDAU_MAX = 60.0
WORM_FRACTION = 0.04
SIGMA_FRONT = 0.12
SIGMA_BACK = 0.7
_MARGIN = 16
_POINTS_PER_PX = 5
_MAX_TAN = 200.0
_WIN = 2  # deposit window half-size (pixels)
#: Mode of the standard (Chambers-Mallows-Stuck, alpha=1, beta=1) stable law.
_LANDAU_MODE = -0.45


def _landau(rng: np.random.Generator, n: int) -> np.ndarray:
    """Standard Landau variates via the Chambers-Mallows-Stuck construction."""
    v = rng.uniform(-np.pi / 2, np.pi / 2, n)
    w = rng.exponential(1.0, n)
    h = np.pi / 2 + v
    return (2 / np.pi) * (h * np.tan(v) - np.log((np.pi / 2) * w * np.cos(v) / h))


def _straggling(rng: np.random.Generator, n: int) -> np.ndarray:
    x = _landau(rng, n)
    f = 1.0 + LANDAU_WIDTH * (x - _LANDAU_MODE)
    return np.clip(f, 0.35, _LANDAU_MAX)


def expected_events(shape: tuple[int, int], exptime: float, rate: float) -> float:
    """Mean number of CR events hitting the margin-extended area."""
    ny, nx = shape
    area_cm2 = (ny + 2 * _MARGIN) * (nx + 2 * _MARGIN) * (PIXEL_UM * 1e-4) ** 2
    return rate * area_cm2 * exptime


def _tracks(rng: np.random.Generator, n: int, ny: int, nx: int):
    """Sub-deposit positions, charges and diffusion sigmas for ``n`` events."""
    y0 = rng.uniform(-0.5 - _MARGIN, ny - 0.5 + _MARGIN, n)
    x0 = rng.uniform(-0.5 - _MARGIN, nx - 0.5 + _MARGIN, n)
    cos_t = np.sqrt(rng.uniform(1e-12, 1.0, n))
    tan_t = np.minimum(np.sqrt(1 - cos_t**2) / cos_t, _MAX_TAN)
    phi = rng.uniform(0, 2 * np.pi, n)
    path_um = DEPTH_UM * np.sqrt(1 + tan_t**2)
    charge = Q_MPV_PER_UM * path_um * _straggling(rng, n) * np.exp(SPECIES_SIGMA * rng.standard_normal(n))
    length = DEPTH_UM / PIXEL_UM * tan_t
    is_worm = rng.uniform(size=n) < WORM_FRACTION

    # straight tracks
    npts = np.ceil(length * _POINTS_PER_PX).astype(np.int64) + 1
    ev = np.repeat(np.arange(n), npts)
    starts = np.cumsum(npts) - npts
    k = np.arange(ev.size) - starts[ev]
    t = (k + 0.5) / npts[ev]
    ys = y0[ev] + t * length[ev] * np.sin(phi[ev])
    xs = x0[ev] + t * length[ev] * np.cos(phi[ev])
    sig = SIGMA_FRONT + (SIGMA_BACK - SIGMA_FRONT) * t

    # worms: replace straight geometry with a random walk of 0.5 px steps
    widx = np.flatnonzero(is_worm)
    if widx.size:
        nsteps = rng.integers(6, 60, widx.size)
        wev = np.repeat(widx, nsteps)
        wstart = np.cumsum(nsteps) - nsteps
        wk = np.arange(wev.size) - np.repeat(wstart, nsteps)
        dphi = rng.normal(0.0, 0.45, wev.size)
        dphi[wk == 0] = 0.0
        # cumulative direction per worm
        ang = np.cumsum(dphi)
        ang -= np.repeat(ang[wstart], nsteps) - np.repeat(phi[widx], nsteps)
        dy = 0.5 * np.sin(ang)
        dx = 0.5 * np.cos(ang)
        cy = np.cumsum(dy)
        cx = np.cumsum(dx)
        cy -= np.repeat(cy[wstart] - dy[wstart], nsteps)
        cx -= np.repeat(cx[wstart] - dx[wstart], nsteps)
        wy = y0[wev] + cy
        wx = x0[wev] + cx
        wsig = np.repeat(rng.uniform(SIGMA_FRONT, SIGMA_BACK, widx.size), nsteps)
        # worms: ~ 1.5x MIP deposit per micron of 2-D path
        charge[widx] = 1.5 * Q_MPV_PER_UM * PIXEL_UM * 0.5 * nsteps * _straggling(rng, widx.size)
        keep = ~is_worm[ev]
        ev = np.concatenate([ev[keep], wev])
        ys = np.concatenate([ys[keep], wy])
        xs = np.concatenate([xs[keep], wx])
        sig = np.concatenate([sig[keep], wsig])

    # split each event's charge with Gamma(3) fluctuations along the track
    g = rng.gamma(3.0, 1.0, ev.size)
    tot = np.bincount(ev, weights=g, minlength=n)
    q = charge[ev] * g / tot[ev]
    return ys, xs, sig, q, n


def deposit(
    ys: np.ndarray, xs: np.ndarray, sig: np.ndarray, q: np.ndarray, shape: tuple[int, int]
) -> np.ndarray:
    """Integrate Gaussian charge clouds over pixels; returns float64 (ny, nx)."""
    ny, nx = shape
    out = np.zeros(ny * nx)
    if ys.size == 0:
        return out.reshape(shape)
    offs = np.arange(-_WIN, _WIN + 1)
    iy = np.rint(ys).astype(np.int64)[:, None] + offs
    ix = np.rint(xs).astype(np.int64)[:, None] + offs
    s = sig[:, None]
    fy = ndtr((iy + 0.5 - ys[:, None]) / s) - ndtr((iy - 0.5 - ys[:, None]) / s)
    fx = ndtr((ix + 0.5 - xs[:, None]) / s) - ndtr((ix - 0.5 - xs[:, None]) / s)
    w = q[:, None, None] * fy[:, :, None] * fx[:, None, :]
    IY = np.broadcast_to(iy[:, :, None], w.shape)
    IX = np.broadcast_to(ix[:, None, :], w.shape)
    ok = (IY >= 0) & (IY < ny) & (IX >= 0) & (IX < nx)
    out += np.bincount((IY[ok] * nx + IX[ok]), weights=w[ok], minlength=ny * nx)
    return out.reshape(shape)


def cosmic_ray_charge(
    shape: tuple[int, int], exptime: float, rng: np.random.Generator, rate: float
) -> tuple[np.ndarray, int]:
    """Draw CR events and return ``(charge_map_float64, n_events)``."""
    ny, nx = shape
    n = int(rng.poisson(expected_events(shape, exptime, rate)))
    ys, xs, sig, q, _ = _tracks(rng, n, ny, nx)
    return deposit(ys, xs, sig, q, shape), n
