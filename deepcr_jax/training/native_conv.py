"""The 3x3 convolution of training on the native CPU kernels (forward and both gradients).

XLA:CPU's convolution is slow in the backward pass: its weight gradient
runs at a fraction of the forward's speed. :func:`conv3x3` is a drop-in
for the UNet's ``conv3x3_same(x, kernel) + bias`` (:func:`deepcr_jax.nets._conv`)
as a :func:`jax.custom_vjp` whose three parts run on the kernels of
``deepcr_jax/native/conv3x3_grad.cc``:

* forward: ``y = conv(x, kernel) + bias`` (``deepcr_conv3x3_plain``);
* input gradient: the same kernel on ``dy`` with the kernel flipped in space
  and transposed in channels;
* weight and bias gradients: ``deepcr_conv3x3_weight_grad``, a
  fixed-order (deterministic) reduction over the pixels.

All float32, NHWC / HWIO, accumulated in float32: the results agree with
XLA's to float32 rounding, and two runs give bit-identical results. Shapes
the kernels do not take (output channels not a multiple of 16, other dtypes,
other kernel sizes) fall back to XLA's convolution, per call; so does the
input gradient when the layer's input channels are not a multiple of 16
(only the first layer's, which training never needs).

:func:`deepcr_jax.training.fast_ops.make_ops` decides where it is used.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["available", "conv3x3", "supports", "xla_conv3x3"]

#: channel granularity of the kernels (one float32 vector of AVX-512)
_LANES = 16


def xla_conv3x3(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """``conv_same(x, kernel) + bias`` by XLA (what :class:`deepcr_jax.nets.Conv` computes)."""
    pad = kernel.shape[0] // 2
    y = jax.lax.conv_general_dilated(
        x, kernel.astype(x.dtype), window_strides=(1, 1), padding=((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return y + bias.astype(x.dtype).reshape((1,) * (y.ndim - 1) + (-1,))


def available() -> bool:
    """Whether the native kernels are compiled and registered (CPU; ``DEEPCR_JAX_NATIVE`` not 0)."""
    from deepcr_jax.native._build import available as native_available

    return native_available()


def supports(x: jax.Array, kernel: jax.Array) -> bool:
    """Whether :func:`conv3x3` runs this call on the native kernels (else it is XLA's conv)."""
    return (
        x.ndim >= 3
        and x.dtype == jnp.float32
        and kernel.dtype == jnp.float32
        and kernel.shape[:2] == (3, 3)
        and kernel.shape[2] == x.shape[-1]
        and kernel.shape[3] % _LANES == 0
    )


def _plain(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    out = jax.ShapeDtypeStruct(x.shape[:-1] + (kernel.shape[-1],), jnp.float32)
    return jax.ffi.ffi_call("deepcr_conv3x3_plain", out, vmap_method="sequential")(x, kernel, bias)


def _weight_grad(x: jax.Array, dy: jax.Array) -> tuple[jax.Array, jax.Array]:
    ci, co = x.shape[-1], dy.shape[-1]
    out = (jax.ShapeDtypeStruct((3, 3, ci, co), jnp.float32), jax.ShapeDtypeStruct((co,), jnp.float32))
    return jax.ffi.ffi_call("deepcr_conv3x3_weight_grad", out, vmap_method="sequential")(x, dy)


@jax.custom_vjp
def _native(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    return _plain(x, kernel, bias)


def _native_fwd(x, kernel, bias):
    return _plain(x, kernel, bias), (x, kernel)


def _native_bwd(res, dy):
    x, kernel = res
    ci = x.shape[-1]
    if ci % _LANES == 0:
        flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)  # (3, 3, Co, Ci)
        dx = _plain(dy, flipped, jnp.zeros((ci,), jnp.float32))
    else:  # the first layer (1 or 2 input channels): unused in training, so XLA drops it
        dx = jax.vjp(lambda v: xla_conv3x3(v, kernel, jnp.zeros((kernel.shape[-1],), jnp.float32)), x)[1](dy)[0]
    dw, db = _weight_grad(x, dy)
    return dx, dw, db


_native.defvjp(_native_fwd, _native_bwd)


def conv3x3(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """``conv3x3_same(x, kernel) + bias`` (NHWC, HWIO) on the native CPU kernels, differentiable.

    Parameters
    ----------
    x : (..., ny, nx, ci) float32
    kernel : (3, 3, ci, co) float32
    bias : (co,) float32

    Returns
    -------
    (..., ny, nx, co) float32. Calls :func:`supports` rejects go to XLA's conv.
    The native kernels must be available (:func:`available`); only CPU.
    """
    if not supports(x, kernel):
        return xla_conv3x3(x, kernel, bias)
    from deepcr_jax.native._build import require

    require()  # compiles and registers the kernels on first use
    return _native(x, kernel, bias.astype(jnp.float32))
