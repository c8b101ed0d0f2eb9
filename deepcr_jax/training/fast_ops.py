"""Faster training on CPU: the UNet's heavy operations with hand-written gradients.

XLA:CPU spends most of a training step outside the forward convolutions:
in its convolution weight gradient, in the gradient of batch-statistics
BatchNorm (the autodiff of mean and variance makes many passes over the
activations) and in the gradient of the 2x2 max pool (a ``select_and_scatter``,
slower than the pool itself by two orders of magnitude). :func:`make_ops`
returns a :class:`deepcr_jax.nets.Ops` that replaces them:

* ``conv3x3``: the native CPU kernels (:mod:`deepcr_jax.training.native_conv`);
* ``batch_norm_relu``: :func:`batch_norm_relu`, a :func:`jax.custom_vjp`
  whose backward is the closed form (two passes: the two per-channel sums on
  a native kernel, then ``dx``), the batch statistics on a one-pass native
  kernel;
* ``max_pool2``: :func:`max_pool2`, whose backward routes each gradient to
  the first maximum of its window (row-major order, as XLA's
  ``select_and_scatter`` does) in one elementwise pass.

Same parameters, same results up to float32 rounding (the tests compare
them with XLA's gradients), and deterministic. The config field
``kernels`` chooses: ``"auto"`` (the default) uses them when the default
backend is the CPU, training is on one device and the native kernels build;
``"native"`` insists (an error where they cannot run); ``"xla"`` keeps the
plain flax graph.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from deepcr_jax.nets import Ops
from deepcr_jax.training import native_conv

__all__ = ["KERNEL_CHOICES", "batch_norm_relu", "make_ops", "max_pool2"]

#: values of ``TrainConfig.kernels``
KERNEL_CHOICES = ("auto", "native", "xla")


def _vec(v: jax.Array, ndim: int) -> jax.Array:
    return v.reshape((1,) * (ndim - 1) + (-1,))


# --------------------------------------------------------------- BatchNorm


def _native_ok(x: jax.Array) -> bool:
    return x.dtype == jnp.float32 and x.shape[-1] % 16 == 0 and x.size > 0 and native_conv.available()


def _stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-channel mean and biased variance over all axes but the last."""
    if _native_ok(x):  # one pass (XLA:CPU materialises (x - mean)**2 for its second reduction)
        c = x.shape[-1]
        out = (jax.ShapeDtypeStruct((c,), jnp.float32),) * 2
        return jax.ffi.ffi_call("deepcr_channel_stats", out, vmap_method="sequential")(x)
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axis=axes)
    return mean, jnp.mean(jnp.square(x - _vec(mean, x.ndim)), axis=axes)


def _grad_sums(ct, x, mean, inv, scale, bias):
    """(sum g, sum g * xhat) over all axes but the last, g = ct where the BatchNorm output is > 0."""
    if _native_ok(x):
        c = x.shape[-1]
        out = (jax.ShapeDtypeStruct((c,), jnp.float32),) * 2
        return jax.ffi.ffi_call("deepcr_bn_relu_grad_sums", out, vmap_method="sequential")(
            ct, x, mean, inv, scale, bias)
    xhat, g = _masked(ct, x, mean, inv, scale, bias)
    axes = tuple(range(x.ndim - 1))
    return jnp.sum(g, axis=axes), jnp.sum(g * xhat, axis=axes)


def _normalize(x, mean, inv, scale, bias):
    return (x - _vec(mean, x.ndim)) * _vec(scale * inv, x.ndim) + _vec(bias, x.ndim)


def _masked(ct, x, mean, inv, scale, bias):
    xhat = (x - _vec(mean, x.ndim)) * _vec(inv, x.ndim)
    return xhat, jnp.where(_normalize(x, mean, inv, scale, bias) > 0, ct, jnp.zeros((), ct.dtype))


def batch_norm_relu(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float,
                    stats: tuple[jax.Array, jax.Array] | None = None):
    """BatchNorm, then ReLU: ``(relu(y), mean, var)``, ``y = (x - mean) / sqrt(var + eps) * scale + bias``.

    ``stats`` None (BatchNorm phase 1): ``mean`` and the biased ``var`` (C,)
    are the batch statistics, over all axes of ``x`` but the last. Else the
    given ``(mean, var)`` (the running statistics; phase 2 and evaluation),
    returned as they are. What :class:`deepcr_jax.nets.BatchNorm`
    (``relu=True``) computes, with closed-form gradients (those of the
    statistics included). For float32 with a multiple of 16 channels the
    per-channel reductions run on native kernels (one pass each, a fixed
    summation order); the elementwise parts are XLA's.
    """
    if stats is None:
        return _batch_bn_relu(x, scale, bias, eps)
    mean, var = stats
    return _frozen_bn_relu(x, scale, bias, mean, var, eps), mean, var


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _batch_bn_relu(x, scale, bias, eps):
    return _bn_forward(x, scale, bias, eps)[0]


def _bn_forward(x, scale, bias, eps):
    mean, var = _stats(x)
    inv = jax.lax.rsqrt(var + eps)
    y = jnp.maximum(_normalize(x, mean, inv, scale, bias), jnp.zeros((), x.dtype))
    return (y, mean, var), (x, mean, inv, scale, bias)


def _bn_bwd(eps, res, cts):
    del eps
    x, mean, inv, scale, bias = res
    ct_y, ct_mean, ct_var = cts
    n = x.size // x.shape[-1]
    d_bias, d_scale = _grad_sums(ct_y, x, mean, inv, scale, bias)
    xhat, g = _masked(ct_y, x, mean, inv, scale, bias)
    dx = _vec(scale * inv, x.ndim) * (g - (_vec(d_bias, x.ndim) + xhat * _vec(d_scale, x.ndim)) / n)
    # the statistics' own cotangents: d mean / dx = 1/n, d var / dx = 2 (x - mean) / n
    dx = dx + (_vec(ct_mean, x.ndim) + xhat * _vec(2 * ct_var / inv, x.ndim)) / n
    return dx, d_scale, d_bias


_batch_bn_relu.defvjp(_bn_forward, _bn_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(5,))
def _frozen_bn_relu(x, scale, bias, mean, var, eps):
    return _frozen_forward(x, scale, bias, mean, var, eps)[0]


def _frozen_forward(x, scale, bias, mean, var, eps):
    inv = jax.lax.rsqrt(var + eps)
    y = jnp.maximum(_normalize(x, mean, inv, scale, bias), jnp.zeros((), x.dtype))
    return y, (x, mean, inv, scale, bias)


def _frozen_bwd(eps, res, ct):
    del eps
    x, mean, inv, scale, bias = res
    d_bias, d_scale = _grad_sums(ct, x, mean, inv, scale, bias)
    _, g = _masked(ct, x, mean, inv, scale, bias)
    dx = _vec(scale * inv, x.ndim) * g
    d_mean = -scale * inv * d_bias
    d_var = -0.5 * scale * jnp.square(inv) * d_scale
    return dx, d_scale, d_bias, d_mean, d_var


_frozen_bn_relu.defvjp(_frozen_forward, _frozen_bwd)


# ---------------------------------------------------------------- max pool


def _windows(x: jax.Array) -> jax.Array:
    """(n, h, w, c) -> (n, h/2, 2, w/2, 2, c), odd trailing rows/columns dropped (as nn.max_pool)."""
    n, h, w, c = x.shape
    x = x[:, : h - h % 2, : w - w % 2]
    return x.reshape(n, h // 2, 2, w // 2, 2, c)


@jax.custom_vjp
def max_pool2(x: jax.Array) -> jax.Array:
    """2x2 max pool, stride 2, NHWC (:func:`deepcr_jax.nets.max_pool2`) with a one-pass gradient."""
    return jnp.max(_windows(x), axis=(2, 4))


def _pool_fwd(x):
    y = max_pool2(x)
    return y, (x, y)


def _pool_bwd(res, dy):
    x, y = res
    win = _windows(x)
    # position (0..3, row-major) of each window's first maximum
    first = jnp.full(y.shape, 3, jnp.int32)
    for k in (2, 1, 0):
        first = jnp.where(win[:, :, k // 2, :, k % 2] == y, k, first)
    pos = (2 * jnp.arange(2)[:, None] + jnp.arange(2)[None, :]).reshape(1, 1, 2, 1, 2, 1)
    dx = jnp.where(first[:, :, None, :, None] == pos, dy[:, :, None, :, None], jnp.zeros((), dy.dtype))
    n, h, w, c = x.shape
    dx = dx.reshape(n, h - h % 2, w - w % 2, c)
    if h % 2 or w % 2:
        dx = jnp.pad(dx, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    return (dx,)


max_pool2.defvjp(_pool_fwd, _pool_bwd)


# ---------------------------------------------------------------- choice


def make_ops(choice: str, mesh: Mesh | None = None) -> Ops | None:
    """The :class:`~deepcr_jax.nets.Ops` for a config's ``kernels`` field (None: plain flax/XLA).

    ``"auto"``: these operations when the default backend is the CPU, the
    step runs on one device (no ``mesh`` of several) and the native kernels
    are available; else None. ``"native"``: these operations, a
    :class:`RuntimeError` where the native kernels cannot run (not the CPU
    backend, or they do not build). ``"xla"``: None.
    """
    if choice not in KERNEL_CHOICES:
        raise ValueError(f"kernels must be one of {', '.join(map(repr, KERNEL_CHOICES))}; got {choice!r}")
    if choice == "xla":
        return None
    on_cpu = jax.default_backend() == "cpu"
    if choice == "auto" and not (on_cpu and (mesh is None or mesh.devices.size == 1) and native_conv.available()):
        return None
    if not on_cpu:
        raise RuntimeError(f"kernels='native' needs the CPU backend; the default backend is {jax.default_backend()}")
    if not native_conv.available():
        from deepcr_jax.native._build import status

        raise RuntimeError(f"kernels='native': the native CPU kernels are unavailable: {status()[1]}")
    return Ops(conv3x3=native_conv.conv3x3, batch_norm_relu=batch_norm_relu, max_pool2=max_pool2)
