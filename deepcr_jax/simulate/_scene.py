"""Astronomical scenes for the three field types (private helper).

Fluxes use the ACS/WFC F606W AB zero point ``ZEROPOINT`` (magnitude giving
1 e-/s).  A scene is a plain dict of numpy arrays in e-/s; ``render_rate``
turns it into an expected count-rate image (e-/s/pixel) by sub-pixel
placement of point sources with the effective PSF and PSF convolution of
Sersic galaxies and diffuse light.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.fft as sfft
from scipy.special import gamma as gamma_fn

from . import _psf

__all__: list[str] = []

ZEROPOINT = 26.5
_TILE = 512
#: Stars brighter than this (e-/s, F606W ~19.8 mag) also get the far-wing halo.
HALO_MIN_RATE = 500.0


def mag_to_rate(mag: np.ndarray) -> np.ndarray:
    """AB magnitude -> e-/s in F606W."""
    return 10.0 ** (-0.4 * (np.asarray(mag, dtype=np.float64) - ZEROPOINT))


def _power_law_mags(rng: np.random.Generator, n: int, lo: float, hi: float, slope: float):
    """Magnitudes with dN/dm proportional to 10**(slope*m) on [lo, hi]."""
    u = rng.uniform(size=n)
    a = 10 ** (slope * lo)
    b = 10 ** (slope * hi)
    return np.log10(a + u * (b - a)) / slope


def _uniform_positions(rng, n, ny, nx, margin):
    y = rng.uniform(-0.5 - margin, ny - 0.5 + margin, n)
    x = rng.uniform(-0.5 - margin, nx - 0.5 + margin, n)
    return y, x


def _area(ny, nx, margin):
    return (ny + 2 * margin) * (nx + 2 * margin)


def _thinned_positions(rng, density_fn, peak, ny, nx, margin):
    """Inhomogeneous Poisson points by thinning; density in objects/px^2."""
    n = rng.poisson(peak * _area(ny, nx, margin))
    y, x = _uniform_positions(rng, n, ny, nx, margin)
    keep = rng.uniform(size=n) * peak < density_fn(y, x)
    return y[keep], x[keep]


def _empty_stars():
    return {"y": np.zeros(0), "x": np.zeros(0), "rate": np.zeros(0)}


def draw_scene(field: str, shape: tuple[int, int], rng: np.random.Generator) -> dict:
    """Draw a random scene catalogue for ``field`` on an image of ``shape``."""
    ny, nx = shape
    m = _psf.KERNEL_RADIUS
    stamp = ny * nx / 65536.0  # area in units of a 256x256 stamp
    scene: dict = {"stars": _empty_stars(), "galaxies": None, "diffuse": []}
    if field == "extragalactic":
        ng = rng.poisson(22 * _area(ny, nx, 40) / 65536.0)
        gy, gx = _uniform_positions(rng, ng, ny, nx, 40)
        gm = _power_law_mags(rng, ng, 19.0, 28.5, 0.25)
        nb = rng.poisson(0.15 * stamp)
        by, bx = _uniform_positions(rng, nb, ny, nx, 40)
        bm = rng.uniform(16.5, 19.5, nb)
        gy, gx, gm = np.r_[gy, by], np.r_[gx, bx], np.r_[gm, bm]
        n_all = gm.size
        re = 20.0 * 10 ** (-0.13 * (gm - 20.0)) * 10 ** (0.25 * rng.standard_normal(n_all))
        scene["galaxies"] = {
            "y": gy,
            "x": gx,
            "rate": mag_to_rate(gm),
            "re": np.clip(re, 0.6, 60.0),
            "n": np.exp(rng.uniform(np.log(0.5), np.log(4.0), n_all)),
            "q": rng.uniform(0.2, 1.0, n_all),
            "pa": rng.uniform(0, np.pi, n_all),
        }
        ns = rng.poisson(4 * _area(ny, nx, m) / 65536.0)
        sy, sx = _uniform_positions(rng, ns, ny, nx, m)
        scene["stars"] = {"y": sy, "x": sx, "rate": mag_to_rate(rng.uniform(16.0, 27.0, ns))}
    elif field == "globular":
        # cluster centred on a 4096x4096 ACS/WFC field; the image is a random
        # region of it (a stamp) or the given frame placed at a random offset
        rc = float(np.exp(rng.uniform(np.log(100.0), np.log(800.0))))
        rt = 30.0 * rc
        yc = (ny - 1) / 2 + rng.uniform(-1.0, 1.0) * max(2048.0 - ny / 2, 0.0)
        xc = (nx - 1) / 2 + rng.uniform(-1.0, 1.0) * max(2048.0 - nx / 2, 0.0)
        sigma0 = rng.uniform(0.03, 0.12)  # stars / px^2 at the centre (m < 27.5)
        ct = (1 + (rt / rc) ** 2) ** -0.5

        def king(y, x):
            r2 = ((y - yc) ** 2 + (x - xc) ** 2) / rc**2
            return sigma0 * np.clip((1 + r2) ** -0.5 - ct, 0, None) ** 2 / (1 - ct) ** 2

        # peak density over the stamp: at the point of the stamp nearest the centre
        py = np.clip(yc, -m, ny + m)
        px = np.clip(xc, -m, nx + m)
        peak = float(king(np.array(py), np.array(px))) * 1.0001 + 1e-12
        sy, sx = _thinned_positions(rng, king, peak, ny, nx, m)
        smag = _power_law_mags(rng, sy.size, 12.5, 27.5, 0.3)
        scene["stars"] = {"y": sy, "x": sx, "rate": mag_to_rate(smag)}
        amp = rng.uniform(0.02, 0.3)  # e-/s/px of unresolved light at centre
        scene["diffuse"].append(("king", amp, yc, xc, rc, rt))
    elif field == "resolved":
        h = rng.uniform(300.0, 1500.0)
        r0 = rng.uniform(0.0, 2.0) * h
        ang = rng.uniform(0, 2 * np.pi)
        yc = (ny - 1) / 2 + r0 * np.sin(ang)
        xc = (nx - 1) / 2 + r0 * np.cos(ang)
        sigma_here = rng.uniform(0.05, 0.35)  # stars / px^2 at the stamp centre
        s0 = sigma_here * np.exp(r0 / h)

        def disk(y, x):
            return s0 * np.exp(-np.hypot(y - yc, x - xc) / h)

        py = np.clip(yc, -m, ny + m)
        px = np.clip(xc, -m, nx + m)
        peak = float(disk(np.array(py), np.array(px))) * 1.0001
        sy, sx = _thinned_positions(rng, disk, peak, ny, nx, m)
        smag = _power_law_mags(rng, sy.size, 21.5, 29.5, 0.35)
        nf = rng.poisson(2 * _area(ny, nx, m) / 65536.0)  # foreground stars
        fy, fx = _uniform_positions(rng, nf, ny, nx, m)
        fmag = rng.uniform(15.0, 24.0, nf)
        scene["stars"] = {
            "y": np.r_[sy, fy],
            "x": np.r_[sx, fx],
            "rate": mag_to_rate(np.r_[smag, fmag]),
        }
        amp_here = rng.uniform(0.1, 1.5)  # e-/s/px of unresolved light
        scene["diffuse"].append(("exp", amp_here * np.exp(r0 / h), yc, xc, h, 0.0))
    else:  # pragma: no cover - validated by the caller
        raise ValueError(f"unknown field {field!r}")
    return scene


# --------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------


def _sersic_bn(n):
    return 2 * n - 1 / 3 + 4 / (405 * n) + 46 / (25515 * n**2)


def _add_galaxies(canvas: np.ndarray, y0: int, x0: int, gal: dict) -> None:
    """Add pixel-averaged Sersic profiles (e-/s) to ``canvas`` in place.

    ``canvas[0, 0]`` corresponds to image pixel ``(y0, x0)``.
    """
    hc, wc = canvas.shape
    for k in range(gal["y"].size):
        yg, xg = gal["y"][k], gal["x"][k]
        re, n, q, pa = gal["re"][k], gal["n"][k], gal["q"][k], gal["pa"][k]
        rmax = min(8.0 * re, 150.0)
        ya = max(int(np.floor(yg - rmax)), y0)
        yb = min(int(np.ceil(yg + rmax)) + 1, y0 + hc)
        xa = max(int(np.floor(xg - rmax)), x0)
        xb = min(int(np.ceil(xg + rmax)) + 1, x0 + wc)
        if ya >= yb or xa >= xb:
            continue
        s = 5 if re < 2 else (3 if re < 6 else 1)
        sub = (np.arange(s) + 0.5) / s - 0.5
        yy = (np.arange(ya, yb)[:, None] + sub[None, :]).ravel() - yg
        xx = (np.arange(xa, xb)[:, None] + sub[None, :]).ravel() - xg
        c, si = np.cos(pa), np.sin(pa)
        u = xx[None, :] * c + yy[:, None] * si
        v = (-xx[None, :] * si + yy[:, None] * c) / q
        r = np.hypot(u, v)
        bn = _sersic_bn(n)
        prof = np.exp(-bn * ((r / re) ** (1.0 / n) - 1.0))
        prof = prof.reshape(yb - ya, s, xb - xa, s).mean(axis=(1, 3))
        total = 2 * np.pi * q * re**2 * n * np.exp(bn) * bn ** (-2 * n) * gamma_fn(2 * n)
        canvas[ya - y0 : yb - y0, xa - x0 : xb - x0] += gal["rate"][k] * prof / total


def _diffuse(comp: tuple, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    kind, amp, yc, xc, a, b = comp
    if kind == "king":
        rc, rt = a, b
        ct = (1 + (rt / rc) ** 2) ** -0.5
        r2 = ((yy - yc) ** 2 + (xx - xc) ** 2) / rc**2
        return amp * np.clip((1 + r2) ** -0.5 - ct, 0, None) ** 2 / (1 - ct) ** 2
    return amp * np.exp(-np.hypot(yy - yc, xx - xc) / a)


@lru_cache(maxsize=2)
def _halo_fft(fft_shape: tuple[int, int]) -> np.ndarray:
    return sfft.rfft2(_psf.halo_kernel(), s=fft_shape)


def _render_halos(stars: dict, ty: int, tx: int, th: int, tw: int) -> np.ndarray | None:
    """Far wings of bright stars on the tile (nearest-pixel placement)."""
    h = _psf.HALO_RADIUS
    bright = stars["rate"] > HALO_MIN_RATE
    if not bright.any():
        return None
    cy = np.rint(stars["y"][bright]).astype(np.int64) - ty + h
    cx = np.rint(stars["x"][bright]).astype(np.int64) - tx + h
    hc, wc = th + 2 * h, tw + 2 * h
    ok = (cy >= 0) & (cy < hc) & (cx >= 0) & (cx < wc)
    if not ok.any():
        return None
    plane = np.bincount(cy[ok] * wc + cx[ok], weights=stars["rate"][bright][ok], minlength=hc * wc).reshape(
        hc, wc
    )
    fft_shape = (sfft.next_fast_len(hc + 2 * h), sfft.next_fast_len(wc + 2 * h, real=True))
    full = sfft.irfft2(sfft.rfft2(plane, s=fft_shape) * _halo_fft(fft_shape), s=fft_shape)
    return full[2 * h : 2 * h + th, 2 * h : 2 * h + tw]


@lru_cache(maxsize=2)
def _kernel_fft(fft_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    ks = _psf.phase_kernels(True)
    p = _psf.N_PHASE
    kf = sfft.rfft2(ks.reshape(p * p, *ks.shape[2:]), s=fft_shape, axes=(-2, -1))
    ke = sfft.rfft2(_psf.phase_kernels(False)[0, 0], s=fft_shape)
    return kf, ke


def render_rate(scene: dict, shape: tuple[int, int]) -> np.ndarray:
    """Expected source count rate (e-/s/pixel), float64 ``(ny, nx)``."""
    ny, nx = shape
    out = np.empty((ny, nx))
    for ty in range(0, ny, _TILE):
        for tx in range(0, nx, _TILE):
            th, tw = min(_TILE, ny - ty), min(_TILE, nx - tx)
            out[ty : ty + th, tx : tx + tw] = _render_tile(scene, ty, tx, th, tw)
    return out


def _render_tile(scene: dict, ty: int, tx: int, th: int, tw: int) -> np.ndarray:
    r = _psf.KERNEL_RADIUS
    p = _psf.N_PHASE
    hc, wc = th + 2 * r, tw + 2 * r
    fft_shape = (sfft.next_fast_len(hc + 2 * r), sfft.next_fast_len(wc + 2 * r, real=True))
    kf, ke = _kernel_fft(fft_shape)

    st = scene["stars"]
    qy = np.rint(st["y"] * p).astype(np.int64)
    qx = np.rint(st["x"] * p).astype(np.int64)
    iy, py = np.divmod(qy, p)
    ix, px = np.divmod(qx, p)
    cy = iy - ty + r
    cx = ix - tx + r
    ok = (cy >= 0) & (cy < hc) & (cx >= 0) & (cx < wc)
    acc = np.zeros(fft_shape[0] * (fft_shape[1] // 2 + 1), dtype=np.complex128)
    acc = acc.reshape(fft_shape[0], fft_shape[1] // 2 + 1)
    if ok.any():
        phase = (py * p + px)[ok]
        flat = (phase * hc + cy[ok]) * wc + cx[ok]
        planes = np.bincount(flat, weights=st["rate"][ok], minlength=p * p * hc * wc)
        planes = planes.reshape(p * p, hc, wc)
        used = np.flatnonzero(planes.any(axis=(1, 2)))
        pf = sfft.rfft2(planes[used], s=fft_shape, axes=(-2, -1))
        acc += np.einsum("kij,kij->ij", pf, kf[used])
    ext = np.zeros((hc, wc))
    if scene["galaxies"] is not None:
        _add_galaxies(ext, ty - r, tx - r, scene["galaxies"])
    if scene["diffuse"]:
        yy = np.arange(ty - r, ty - r + hc, dtype=np.float64)[:, None]
        xx = np.arange(tx - r, tx - r + wc, dtype=np.float64)[None, :]
        for comp in scene["diffuse"]:
            ext += _diffuse(comp, yy, xx)
    if ext.any():
        acc += sfft.rfft2(ext, s=fft_shape) * ke
    full = sfft.irfft2(acc, s=fft_shape)
    out = full[2 * r : 2 * r + th, 2 * r : 2 * r + tw]
    halo = _render_halos(st, ty, tx, th, tw)
    if halo is not None:
        out = out + halo
    return out
