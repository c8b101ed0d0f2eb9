"""Training losses: BCE with an ignore mask (deepCR-mask), masked MSE (deepCR-inpaint).

Both return ``(sum, count)`` pieces as well as the mean, so that the mean over
a global batch split across devices, or over a whole validation set split
into batches, is the exact pixel mean.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["bce_terms", "bce_with_ignore", "inpaint_mse", "inpaint_terms"]


def bce_terms(logits: jax.Array, cr: jax.Array, ignore: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Summed BCE and pixel count over the pixels not ignored.

    Parameters
    ----------
    logits : array, shape (n, ny, nx)
        Network output before the sigmoid (CR log-odds).
    cr : array, shape (n, ny, nx)
        1 = cosmic ray, 0 = not (float 0/1).
    ignore : array, shape (n, ny, nx)
        1 = pixel excluded (from the sum and from the count).

    Returns
    -------
    total, count : scalar float32 arrays
        ``sum((1 - ignore) * bce)`` and ``sum(1 - ignore)``.

    Notes
    -----
    ``bce = softplus(z) - y z = -[y log σ(z) + (1 - y) log(1 - σ(z))]``,
    exact and stable for any logit (no clipping needed).
    """
    keep = 1.0 - ignore
    per_pixel = jax.nn.softplus(logits) - cr * logits
    return jnp.sum(keep * per_pixel), jnp.sum(keep)


def bce_with_ignore(logits: jax.Array, cr: jax.Array, ignore: jax.Array) -> jax.Array:
    """Mean binary cross-entropy over the pixels that are not ignored (paper eq. 1).

    Shapes and meaning as :func:`bce_terms`; returns a scalar. Ignored pixels
    are excluded from the sum *and* from the denominator (0 if every pixel
    is ignored).

    deepCR 0.3.1's trainer instead evaluates ``BCELoss(p * (1 - ignore),
    y * (1 - ignore))``: an ignored pixel contributes BCE(0, 0) = 0 to the sum
    but is still counted in the mean's denominator, so its loss is scaled by
    the fraction of pixels not ignored. The gradients point the same way;
    the values differ by that factor.
    """
    total, count = bce_terms(logits, cr, ignore)
    return total / jnp.maximum(count, 1.0)


def inpaint_terms(pred: jax.Array, target: jax.Array, inpaint_mask: jax.Array, cr: jax.Array,
                  ignore: jax.Array, weight: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Summed squared error and count over ``M_I ∧ ¬M_CR ∧ ¬ignore`` (paper eq. 2).

    Parameters
    ----------
    pred : array, shape (n, ny, nx)
        Network prediction (network units: image / scale, standardised if so configured).
    target : array, shape (n, ny, nx)
        The input image in the same units (its pixels under the inpainting
        mask are the truth; they were zeroed in the network's input).
    inpaint_mask : array, shape (n, ny, nx)
        ``M_I``: 1 = pixel hidden from the network and to be predicted.
    cr, ignore : array, shape (n, ny, nx)
        1 = cosmic ray / ignored: excluded (their values are not the truth).
    weight : array, shape (n, ny, nx), optional
        Per-pixel loss weight (>= 0; None: 1 everywhere). It scales each
        selected pixel's squared error *and* its share of ``count``, so the
        ratio is a weighted mean.

    Returns
    -------
    total, count : scalar float32 arrays
        ``sum(w * sel * (pred - target)**2)`` and ``sum(w * sel)``.
    """
    sel = inpaint_mask * (1.0 - cr) * (1.0 - ignore)
    if weight is not None:
        sel = sel * weight
    return jnp.sum(sel * jnp.square(pred - target)), jnp.sum(sel)


def inpaint_mse(pred: jax.Array, target: jax.Array, inpaint_mask: jax.Array, cr: jax.Array,
                ignore: jax.Array) -> jax.Array:
    """Mean squared error over ``M_I ∧ ¬M_CR ∧ ¬ignore`` (paper eq. 2), a scalar.

    The mean is over the selected pixels (0 if none). The paper's
    expectation, and deepCR's trainer (``MSELoss`` of the masked products),
    divide by all pixels instead, which scales the loss by the mask's
    density; the network's input is ``[image * (1 - M_I), M_I]``.
    """
    total, count = inpaint_terms(pred, target, inpaint_mask, cr, ignore)
    return total / jnp.maximum(count, 1.0)
