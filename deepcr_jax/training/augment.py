"""Augmentation inside the jitted step, from a PRNG key (no host randomness).

* exposure gain (opt-in, not in the paper): the whole stamp times
  ``g ~ logU[1, gain_max]`` (a ``g``-times longer exposure: sources, sky and
  CR charge alike), pixels at or above the saturation level afterwards joining
  ``ignore`` grown as the saturation rule grows them, so bright unsaturated
  source cores, which few stamps hold, are seen more often;
* sky level (paper eq. 4): ``image + alpha * sky`` with ``alpha ~ U[lo, hi]``
  per stamp (paper: [-0.9, 3]), equivalent to an exposure time
  ``(1 + alpha) t`` with sources dimmed by ``1 + alpha``; the CR charge is unchanged;
* inpainting masks (paper §3.1, Fig. 2): the OR of 1..``max_donors`` CR masks
  of *other* stamps of the batch, so the hidden pixels are CR-free truth;
* the 8 symmetries of the square (flips and transposes), per stamp, the same
  transform on the image and every mask.

All functions take ``(B, ny, nx)`` arrays and are pure; under ``jit`` with the
batch sharded over devices they give the same values as on one device
(``jax.random`` values do not depend on the sharding).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["dihedral", "donor_masks", "gain_augment", "sky_augment"]


def sky_augment(key: jax.Array, image: jax.Array, sky: jax.Array, lo: float, hi: float) -> jax.Array:
    """Add ``alpha * sky`` to each stamp, ``alpha ~ U[lo, hi]``.

    Parameters
    ----------
    key : PRNG key
    image : array, shape (B, ny, nx)
        Images in the data's units (e-).
    sky : array, shape (B,)
        Sky level per stamp, same units.
    lo, hi : float
        alpha range; ``lo == hi == 0`` returns ``image`` unchanged.

    Returns
    -------
    array, shape (B, ny, nx)
    """
    if lo == 0 and hi == 0:
        return image
    alpha = jax.random.uniform(key, sky.shape, jnp.float32, lo, hi)
    return image + (alpha * sky)[:, None, None]


def gain_augment(key: jax.Array, image: jax.Array, sky: jax.Array, ignore: jax.Array, gain_max: float,
                 saturation: float, grow: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Multiply each stamp by ``g ~ logU[1, gain_max]``; newly saturated pixels join ``ignore``.

    Parameters
    ----------
    key : PRNG key
    image : array, shape (B, ny, nx)
        Images in the data's units (e-).
    sky : array, shape (B,)
        Sky level per stamp, same units (scaled alike).
    ignore : array, shape (B, ny, nx), float32 0/1
        1 = pixel excluded from the loss.
    gain_max : float
        Largest gain (>= 1); 1 returns the inputs unchanged.
    saturation : float
        Saturation level in the data's units (ACS: 70000 e-): pixels with
        ``g * image >= saturation`` are ignored, as a real exposure that long
        would have saturated them.
    grow : int
        Side (px, odd) of the box the saturated pixels are grown by (ACS: 7).

    Returns
    -------
    image, sky, ignore : arrays of the input shapes
    """
    if gain_max == 1:
        return image, sky, ignore
    g = jnp.exp(jax.random.uniform(key, sky.shape, jnp.float32, 0.0, jnp.log(gain_max)))
    image = image * g[:, None, None]
    sat = (image >= saturation).astype(ignore.dtype)
    sat = jax.lax.reduce_window(sat, 0.0, jax.lax.max, (1, grow, grow), (1, 1, 1), "SAME")
    return image, sky * g, jnp.maximum(ignore, sat)


def donor_masks(key: jax.Array, cr: jax.Array, max_donors: int) -> jax.Array:
    """Inpainting masks: for stamp i, the OR of ``k_i ~ U{1..max_donors}`` CR masks of other stamps.

    Parameters
    ----------
    key : PRNG key
    cr : array, shape (B, ny, nx), B >= 2
        CR masks of the batch (1 = cosmic ray).
    max_donors : int
        Largest number of donor masks (paper: up to 9); donors may repeat.

    Returns
    -------
    array, shape (B, ny, nx), float32 0/1
        ``M_I`` (1 = pixel hidden from the network, to be predicted).
    """
    b = cr.shape[0]
    if b < 2:
        raise ValueError(f"donor masks need a batch of >= 2 stamps; got {b}")
    k_n, k_d = jax.random.split(key)
    n = jax.random.randint(k_n, (b,), 1, max_donors + 1)
    offsets = jax.random.randint(k_d, (max_donors, b), 1, b)  # never 0: never the stamp itself
    idx = (jnp.arange(b)[None, :] + offsets) % b
    out = jnp.zeros_like(cr)
    for d in range(max_donors):
        use = (n > d).astype(cr.dtype)[:, None, None]
        out = jnp.maximum(out, cr[idx[d]] * use)
    return out


def dihedral(key: jax.Array, *arrays: jax.Array) -> tuple[jax.Array, ...]:
    """One random symmetry of the square per stamp, applied alike to all ``arrays``.

    Each array is (B, n, n) (square stamps); stamp i is flipped vertically,
    horizontally and transposed each with probability 1/2 (together: the 8
    rotations/reflections, uniformly).
    """
    b = arrays[0].shape[0]
    f = jax.random.bernoulli(key, 0.5, (3, b))[:, :, None, None]
    out = []
    for a in arrays:
        a = jnp.where(f[0], a[:, ::-1, :], a)
        a = jnp.where(f[1], a[:, :, ::-1], a)
        a = jnp.where(f[2], jnp.swapaxes(a, 1, 2), a)
        out.append(a)
    return tuple(out)
