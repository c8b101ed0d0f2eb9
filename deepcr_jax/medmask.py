"""Masked 5×5 median inpainting (``medmask``) and ignored-pixel filling, in JAX.

``medmask`` has deepCR's semantics (``deepCR.util.medmask``): each masked
pixel becomes the median of the *usable* pixels of the 5×5 window centred on
it (clipped at the image edge), where a pixel is usable if it is unmasked and
its value is not exactly 0 (deepCR multiplies the image by the inverse mask
and then drops zeros, so genuine zero-valued pixels are never sampled); the
median of an even count is the mean of the two middle values. A pixel whose
window has no usable pixel gets the median of the whole image. (deepCR tests
``sum != 0`` rather than "any usable pixel"; the two differ only when the
usable values sum to exactly zero.)

Only the masked pixels are computed: their windows are gathered into a
``(k, 25)`` array (``k`` rounded up to a power of two, so that compilations
stay few) and sorted on the device.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["fill_ignored", "medmask", "window_medians"]

_OFFSETS = np.arange(-2, 3)


@jax.jit
def _medians_at(image: jax.Array, usable: jax.Array, ys: jax.Array, xs: jax.Array):
    ny, nx = image.shape
    yy = ys[:, None, None] + _OFFSETS[None, :, None]
    xx = xs[:, None, None] + _OFFSETS[None, None, :]
    inside = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
    yc, xc = jnp.clip(yy, 0, ny - 1), jnp.clip(xx, 0, nx - 1)
    ok = (inside & usable[yc, xc]).reshape(len(ys), 25)
    vals = image[yc, xc].reshape(len(ys), 25)
    srt = jnp.sort(jnp.where(ok, vals, jnp.inf), axis=1)
    k = jnp.sum(ok, axis=1)
    lo = jnp.take_along_axis(srt, jnp.maximum((k - 1) // 2, 0)[:, None], axis=1)[:, 0]
    hi = jnp.take_along_axis(srt, (k // 2)[:, None], axis=1)[:, 0]
    return (lo + hi) / 2, k > 0


def _bucket(k: int) -> int:
    return max(256, 1 << (max(k, 1) - 1).bit_length())


def window_medians(
    image: np.ndarray, usable: np.ndarray, ys: np.ndarray, xs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Median of the usable pixels in the 5×5 window around each (ys, xs).

    Parameters
    ----------
    image : ndarray (ny, nx) float32
    usable : ndarray (ny, nx) bool
        Pixels that may be sampled.
    ys, xs : ndarray (k,) int
        Window centres.

    Returns
    -------
    medians : ndarray (k,) float32
        Undefined where ``found`` is False.
    found : ndarray (k,) bool
        Whether the window held any usable pixel.
    """
    k = len(ys)
    if k == 0:
        return np.zeros(0, np.float32), np.zeros(0, bool)
    n = _bucket(k)
    py = np.zeros(n, np.int32)
    px = np.zeros(n, np.int32)
    py[:k], px[:k] = ys, xs
    med, found = _medians_at(jnp.asarray(image, jnp.float32), jnp.asarray(usable), py, px)
    return np.asarray(med)[:k], np.asarray(found)[:k]


def medmask(image, mask, exclude=None) -> np.ndarray:
    """Replace masked pixels by the median of their 5×5 neighbourhood (deepCR semantics).

    Parameters
    ----------
    image : array_like (ny, nx)
        Finite values, any real dtype (computed in float32).
    mask : array_like (ny, nx)
        True / nonzero where pixels are to be replaced (e.g. cosmic rays).
    exclude : array_like of bool (ny, nx), optional
        Further pixels never to sample (e.g. filled bad pixels); they are
        not replaced unless also in ``mask``.

    Returns
    -------
    ndarray (ny, nx) float32
        A new image: masked pixels replaced, all others unchanged.
    """
    img = np.array(image, dtype=np.float32)
    m = np.asarray(mask)
    if img.ndim != 2 or m.shape != img.shape:
        raise ValueError(f"image must be 2-D and mask the same shape; got {img.shape} and {m.shape}")
    m = m.astype(bool)
    usable = ~m & (img != 0)
    if exclude is not None:
        usable &= ~np.asarray(exclude, bool)
    ys, xs = np.nonzero(m)
    med, found = window_medians(img, usable, ys, xs)
    fallback = np.float32(np.median(img))
    img[ys, xs] = np.where(found, med, fallback)
    return img


def fill_ignored(image: np.ndarray, ignore: np.ndarray, max_passes: int = 16) -> np.ndarray:
    """Fill ignored pixels from their surroundings, growing inwards.

    Each pass replaces every ignored pixel that has at least one usable
    pixel in its 5×5 window by the median of those; the filled pixels become
    usable for the next pass, so holes close from their edges (2 px per
    pass). After ``max_passes`` passes, anything left gets the median of the
    originally usable pixels (0 if there are none).

    Parameters
    ----------
    image : ndarray (ny, nx) float32
        Values at ignored pixels are not read (may be NaN/inf).
    ignore : ndarray (ny, nx) bool
        True where pixels are to be filled.

    Returns
    -------
    ndarray (ny, nx) float32, finite everywhere.
    """
    out = np.array(image, dtype=np.float32)
    todo = np.asarray(ignore, bool).copy()
    if not todo.any():
        return out
    good = ~todo
    fallback = np.float32(np.median(out[good])) if good.any() else np.float32(0)
    out[todo] = 0
    for _ in range(max_passes):
        ys, xs = np.nonzero(todo)
        if len(ys) == 0:
            break
        med, found = window_medians(out, ~todo, ys, xs)
        out[ys[found], xs[found]] = med[found]
        if not found.any():
            break
        todo[ys[found], xs[found]] = False
    out[todo] = fallback
    return out
