"""The deepCR UNet in flax.linen (NHWC).

The network mirrors the reference PyTorch modules of deepCR 0.3.1 (``inc``,
``down1``, ``down2``, ``up7``, ``up8``, ``outc``), so that converted weights map
one to one. Nothing here is device-, batch- or jit-specific: callers ``jit``
and ``vmap`` at their own edge.

Normalisation variants
----------------------
``"batch"``
    conv → BatchNorm → ReLU, twice per block (torch semantics: momentum 0.005,
    eps 1e-5, unbiased running variance).
``"weight"``
    weight-normalised conv (kernel = g · v / ‖v‖, norm over all axes but the
    output channel) → ReLU.
``"affine"``
    conv → per-channel ``x * alpha + beta`` → ReLU: BatchNorm in inference
    form. Inference runs BatchNorm networks as this variant.
``"none"``
    plain conv → ReLU. Inference runs weight-norm networks as this variant,
    with the weight-norm folded into the conv kernels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from deepcr_jax._compile import run_once
from deepcr_jax.arch import blocks

__all__ = ["Affine", "BatchNorm", "ConvTranspose2x2", "DoubleConv", "Ops", "UNet", "WeightNormConv", "init_variables"]

Norm = Literal["batch", "weight", "affine", "none"]
Head = Literal["sigmoid", "identity"]

#: torch's BatchNorm2d momentum used by deepCR (fraction of the new batch statistic).
TORCH_BN_MOMENTUM = 0.005
BN_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class Ops:
    """Other implementations of the network's heaviest operations; None: the default.

    Each must compute what the default computes (same parameters, same
    results up to float rounding); training sets them on CPU, where XLA's
    gradients of these operations are slow (:mod:`deepcr_jax.training.fast_ops`).

    Attributes
    ----------
    conv3x3 : callable, optional
        ``(x, kernel, bias) -> conv3x3_same(x, kernel) + bias`` (NHWC, HWIO).
    batch_norm_relu : callable, optional
        ``(x, scale, bias, eps, stats) -> (relu(y), mean, var)``: BatchNorm
        and ReLU as :class:`BatchNorm` with ``relu=True`` computes them:
        ``stats`` None (``train=True``): on the batch statistics (``mean``
        and the biased ``var`` over all axes but the last); else on the
        given running ``(mean, var)``.
    max_pool2 : callable, optional
        ``x -> max_pool2(x)`` (2×2, stride 2, NHWC, even sizes).
    """

    conv3x3: Callable | None = None
    batch_norm_relu: Callable | None = None
    max_pool2: Callable | None = None


def _op(ops: Ops | None, name: str, default: Callable) -> Callable:
    fn = None if ops is None else getattr(ops, name)
    return default if fn is None else fn


class BatchNorm(nn.Module):
    """BatchNorm over all axes but the last, with torch's semantics.

    Training normalises with the biased batch variance and updates the running
    variance with the unbiased one, as ``torch.nn.BatchNorm2d`` does.

    Parameters ``scale``/``bias`` (C,); batch statistics ``mean``/``var`` (C,).
    ``relu``: apply ReLU to the output. ``ops.batch_norm_relu`` (see
    :class:`Ops`), if set, computes the output with ``relu``.
    """

    momentum: float = TORCH_BN_MOMENTUM
    epsilon: float = BN_EPS
    relu: bool = False
    ops: Ops | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        fused = _op(self.ops, "batch_norm_relu", None) if self.relu else None
        if fused is not None:
            y, mean, var = fused(x, scale, bias, self.epsilon, None if train else (ra_mean.value, ra_var.value))
        elif train:  # statistics in float32 whatever the activations' dtype
            axes, xs = tuple(range(x.ndim - 1)), x.astype(jnp.float32)
            mean = jnp.mean(xs, axis=axes)
            var = jnp.mean(jnp.square(xs - _channel(mean, x.ndim)), axis=axes)
        else:
            mean, var = ra_mean.value, ra_var.value
        if train and not self.is_initializing():
            n = x.size // c
            unbiased = var * (n / max(n - 1, 1))
            m = self.momentum
            ra_mean.value = (1 - m) * ra_mean.value + m * jax.lax.stop_gradient(mean)
            ra_var.value = (1 - m) * ra_var.value + m * jax.lax.stop_gradient(unbiased)
        if fused is not None:
            return y
        inv = scale * jax.lax.rsqrt(var + self.epsilon)
        y = ((x - _channel(mean, x.ndim)) * _channel(inv, x.ndim) + _channel(bias, x.ndim)).astype(x.dtype)
        return nn.relu(y) if self.relu else y


class Affine(nn.Module):
    """Per-channel ``x * alpha + beta``: BatchNorm in inference form.

    ``alpha`` = scale / sqrt(var + eps) and ``beta`` = bias - mean * alpha
    are computed once, on the host, exactly as torch's CPU kernel does (see
    :func:`deepcr_jax.convert.inference_variables`); the multiply-add is
    then one fused operation, as in torch.
    """

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        alpha = self.param("alpha", nn.initializers.ones, (self.features,), jnp.float32)
        beta = self.param("beta", nn.initializers.zeros, (self.features,), jnp.float32)
        return _affine(x, alpha, beta)


def _affine(x: jax.Array, alpha: jax.Array, beta: jax.Array) -> jax.Array:
    """Per-channel ``x * alpha + beta`` in ``x``'s dtype (NHWC, alpha/beta (C,))."""
    return x * _channel(alpha, x.ndim).astype(x.dtype) + _channel(beta, x.ndim).astype(x.dtype)


def torch_uniform(fan_in: int):
    """torch's default conv initialiser: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / fan_in**0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _conv(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    pad = kernel.shape[0] // 2
    y = jax.lax.conv_general_dilated(
        x,
        kernel.astype(x.dtype),
        window_strides=(1, 1),
        padding=((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return y + _channel(bias.astype(x.dtype), y.ndim)


def _channel(v: jax.Array, ndim: int) -> jax.Array:
    """Per-channel vector (C,) shaped to broadcast over NHWC without rank promotion."""
    return v.reshape((1,) * (ndim - 1) + (-1,))


class Conv(nn.Module):
    """Stride-1 'same' convolution; ``kernel`` (k, k, in, out) HWIO, ``bias`` (out,).

    ``ops.conv3x3`` (see :class:`Ops`), if set, computes the 3×3 ones.
    """

    features: int
    size: int = 3
    ops: Ops | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = torch_uniform(self.size * self.size * x.shape[-1])
        kernel = self.param("kernel", init, (self.size, self.size, x.shape[-1], self.features))
        bias = self.param("bias", init, (self.features,))
        return (_op(self.ops, "conv3x3", _conv) if self.size == 3 else _conv)(x, kernel, bias)


class WeightNormConv(nn.Module):
    """3×3 'same' conv with weight normalisation: kernel = g · v / ‖v‖.

    ``v`` (3, 3, in, out) HWIO, ``g`` (out,), ``bias`` (out,); the norm runs
    over the three non-output axes (torch ``weight_norm(dim=0)``).
    ``ops.conv3x3`` as for :class:`Conv`.
    """

    features: int
    ops: Ops | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = torch_uniform(9 * x.shape[-1])
        v = self.param("v", init, (3, 3, x.shape[-1], self.features))
        g = self.param("g", lambda key, shape: jnp.sqrt(jnp.sum(v**2, axis=(0, 1, 2))), (self.features,))
        bias = self.param("bias", init, (self.features,))
        return _op(self.ops, "conv3x3", _conv)(x, weight_norm_kernel(g, v), bias)


def weight_norm_kernel(g: jax.Array, v: jax.Array) -> jax.Array:
    """Kernel g · v / ‖v‖ for HWIO ``v`` (norm over all axes but the last)."""
    norm = jnp.sqrt(jnp.sum(jnp.square(v), axis=(0, 1, 2)))
    return v * _channel(g / norm, v.ndim)


class ConvTranspose2x2(nn.Module):
    """2×2, stride-2 transposed convolution (torch ``ConvTranspose2d(k=2, s=2)``).

    ``kernel`` (2, 2, in, out): output pixel (2i+a, 2j+b) = Σ_c x[i, j, c] ·
    kernel[a, b, c, :] + bias. With stride equal to the kernel size the output
    blocks do not overlap, so this is an exact einsum + reshape.
    """

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n, h, w, c = x.shape
        init = torch_uniform(4 * self.features)  # torch takes fan-in from dim 1 here
        kernel = self.param("kernel", init, (2, 2, c, self.features))
        bias = self.param("bias", init, (self.features,))
        y = jnp.einsum("nhwc,abco->nhawbo", x, kernel.astype(x.dtype))
        y = y.reshape(n, 2 * h, 2 * w, self.features)
        return y + _channel(bias.astype(x.dtype), y.ndim)


def _apply_valid(x: jax.Array, valid: jax.Array | None) -> jax.Array:
    return x if valid is None else x * valid.astype(x.dtype)


class DoubleConv(nn.Module):
    """(conv 3×3 → [norm] → ReLU) × 2; submodules ``conv0``/``conv1`` (+ ``bn0``/``bn1``).

    ``valid`` (n, ny, nx, 1), optional: 1 inside the image, 0 outside. Each
    conv's input is multiplied by it, so a tile that reaches past the image
    edge computes exactly what the whole-image forward computes with its
    zero padding. ``ops``: see :class:`Ops`.
    """

    features: int
    norm: Norm = "batch"
    ops: Ops | None = None

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        train: bool = False,
        valid: jax.Array | None = None,
    ) -> jax.Array:
        for i in range(2):
            x = _apply_valid(x, valid)
            conv = WeightNormConv if self.norm == "weight" else Conv
            x = conv(self.features, ops=self.ops, name=f"conv{i}")(x)
            if self.norm == "batch":  # with its ReLU (ops may fuse the two)
                x = BatchNorm(relu=True, ops=self.ops, name=f"bn{i}")(x, train=train)
            else:
                x = nn.relu(Affine(self.features, name=f"bn{i}")(x) if self.norm == "affine" else x)
        return x


class Up(nn.Module):
    """Upsample ×2 (transposed conv ``up``), concatenate [skip, up], DoubleConv ``conv``."""

    features: int
    norm: Norm = "batch"
    ops: Ops | None = None

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        skip: jax.Array,
        train: bool = False,
        valid: jax.Array | None = None,
    ) -> jax.Array:
        x = ConvTranspose2x2(self.features, name="up")(x)
        x = jnp.concatenate([skip, x], axis=-1)
        return DoubleConv(self.features, self.norm, self.ops, name="conv")(x, train=train, valid=valid)


def max_pool2(x: jax.Array) -> jax.Array:
    """2×2 max pool, stride 2, NHWC (floors odd sizes like torch)."""
    return nn.max_pool(x, (2, 2), strides=(2, 2))


class UNet(nn.Module):
    """deepCR UNet, depth 2 or 3 (its blocks: :func:`deepcr_jax.arch.blocks`).

    Parameters
    ----------
    depth : {2, 3}
        Number of resolution levels (deepCR-``depth``-``hidden``).
    hidden : int
        Channels of the first level; level k has ``hidden * 2**k``.
    out_channels : int
        Output channels (1 for all deepCR models).
    norm : {"batch", "weight", "affine", "none"}
        Normalisation inside each conv block.
    head : {"sigmoid", "identity"}
        Output activation: ``sigmoid`` for CR-probability (mask) networks,
        ``identity`` for inpainting networks.
    compute_dtype : dtype, optional
        The dtype of the inner layers (e.g. ``jnp.bfloat16``). The first
        block (``inc``, which sees the raw image with its large dynamic
        range) and the output head stay in the input's dtype. None: the
        input's dtype throughout.
    ops : Ops, optional
        Other implementations of the convolutions, batch-statistics
        BatchNorm and max pool (training sets them on CPU); same parameters
        and results. None: the defaults.

    Call with ``x`` of shape ``(n, ny, nx, in_channels)``, ``ny`` and ``nx``
    multiples of ``2**(depth-1)``; returns ``(n, ny, nx, out_channels)``.
    ``valid`` (n, ny, nx, 1), optional, marks the pixels inside the image
    (1) for tiles that extend past its edge (see :class:`DoubleConv`); the
    valid region must sit on the ``2**(depth-1)`` pooling grid. ``train``
    runs BatchNorm on batch statistics and updates the running ones
    (``mutable=["batch_stats"]``).
    """

    depth: int = 2
    hidden: int = 32
    out_channels: int = 1
    norm: Norm = "batch"
    head: Head = "sigmoid"
    compute_dtype: Any = None
    ops: Ops | None = None

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        train: bool = False,
        valid: jax.Array | None = None,
    ) -> jax.Array:
        io_dtype = x.dtype
        levels: list[tuple[jax.Array, jax.Array | None]] = []  # encoder outputs and their valid masks
        v = valid
        for block in blocks(self.depth, self.hidden, x.shape[-1]):
            if block.role == "encoder":
                if block.pool:
                    pool = _op(self.ops, "max_pool2", max_pool2)
                    x, v = pool(x), None if v is None else pool(v)
                x = DoubleConv(block.out_channels, self.norm, self.ops, name=block.name)(x, train=train, valid=v)
                if block.name == "inc" and self.compute_dtype is not None:
                    x = x.astype(self.compute_dtype)
                    v = None if v is None else v.astype(self.compute_dtype)
                levels.append((x, v))
            else:
                if len(levels) == self.depth:  # the deepest level feeds the first up block
                    levels.pop()
                skip, v = levels.pop()
                x = Up(block.out_channels, self.norm, self.ops, name=block.name)(x, skip, train=train, valid=v)
        y = Conv(self.out_channels, size=1, name="outc")(x.astype(io_dtype))
        return nn.sigmoid(y) if self.head == "sigmoid" else y


def init_variables(module: nn.Module, key: jax.Array, x: jax.Array, **kwargs: Any) -> dict:
    """``module.init(key, x, **kwargs)``, compiled once and fast.

    Parameters
    ----------
    module : flax Module
        E.g. a :class:`UNet`.
    key : PRNG key
        Draws the initial weights.
    x : array, shape (n, ny, nx, c)
        An example input (only its shape and dtype matter for the weights).
    **kwargs
        Passed to ``module.init`` (e.g. ``train=False``).

    Returns
    -------
    dict
        The variables (``{"params", ...}``), as ``module.init`` returns them
        up to 1 ulp (see :func:`deepcr_jax._compile.run_once`: eager or
        optimised ``init`` of a UNet spends ~35 s compiling its random draws
        on one CPU core).
    """
    return run_once(lambda k, x: module.init(k, x, **kwargs), key, x)
