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

from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from deepcr_jax import native

__all__ = ["Affine", "BatchNorm", "ConvTranspose2x2", "DoubleConv", "UNet", "WeightNormConv"]

Norm = Literal["batch", "weight", "affine", "none"]
Head = Literal["sigmoid", "identity"]

#: torch's BatchNorm2d momentum used by deepCR (fraction of the new batch statistic).
TORCH_BN_MOMENTUM = 0.005
BN_EPS = 1e-5


class BatchNorm(nn.Module):
    """BatchNorm over all axes but the last, with torch's semantics.

    Training normalises with the biased batch variance and updates the running
    variance with the unbiased one, as ``torch.nn.BatchNorm2d`` does.

    Parameters ``scale``/``bias`` (C,); batch statistics ``mean``/``var`` (C,).
    """

    momentum: float = TORCH_BN_MOMENTUM
    epsilon: float = BN_EPS

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        if train:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x, axis=axes)
            var = jnp.mean(jnp.square(x - _channel(mean, x.ndim)), axis=axes)
            if not self.is_initializing():
                n = x.size // c
                unbiased = var * (n / max(n - 1, 1))
                m = self.momentum
                ra_mean.value = (1 - m) * ra_mean.value + m * jax.lax.stop_gradient(mean)
                ra_var.value = (1 - m) * ra_var.value + m * jax.lax.stop_gradient(unbiased)
        else:
            mean, var = ra_mean.value, ra_var.value
        inv = scale * jax.lax.rsqrt(var + self.epsilon)
        return (x - _channel(mean, x.ndim)) * _channel(inv, x.ndim) + _channel(bias, x.ndim)


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
    """Stride-1 'same' convolution; ``kernel`` (k, k, in, out) HWIO, ``bias`` (out,)."""

    features: int
    size: int = 3

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = torch_uniform(self.size * self.size * x.shape[-1])
        kernel = self.param("kernel", init, (self.size, self.size, x.shape[-1], self.features))
        bias = self.param("bias", init, (self.features,))
        return _conv(x, kernel, bias)


class WeightNormConv(nn.Module):
    """3×3 'same' conv with weight normalisation: kernel = g · v / ‖v‖.

    ``v`` (3, 3, in, out) HWIO, ``g`` (out,), ``bias`` (out,); the norm runs
    over the three non-output axes (torch ``weight_norm(dim=0)``).
    """

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = torch_uniform(9 * x.shape[-1])
        v = self.param("v", init, (3, 3, x.shape[-1], self.features))
        g = self.param("g", lambda key, shape: jnp.sqrt(jnp.sum(v**2, axis=(0, 1, 2))), (self.features,))
        bias = self.param("bias", init, (self.features,))
        return _conv(x, weight_norm_kernel(g, v), bias)


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
    zero padding.
    """

    features: int
    norm: Norm = "batch"

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        train: bool = False,
        valid: jax.Array | None = None,
    ) -> jax.Array:
        for i in range(2):
            x = _apply_valid(x, valid)
            x = (WeightNormConv if self.norm == "weight" else Conv)(self.features, name=f"conv{i}")(x)
            if self.norm == "batch":
                x = BatchNorm(name=f"bn{i}")(x, train=train)
            elif self.norm == "affine":
                x = Affine(self.features, name=f"bn{i}")(x)
            x = nn.relu(x)
        return x


class Up(nn.Module):
    """Upsample ×2 (transposed conv ``up``), concatenate [skip, up], DoubleConv ``conv``."""

    features: int
    norm: Norm = "batch"

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
        return DoubleConv(self.features, self.norm, name="conv")(x, train=train, valid=valid)


def max_pool2(x: jax.Array) -> jax.Array:
    """2×2 max pool, stride 2, NHWC (floors odd sizes like torch)."""
    return nn.max_pool(x, (2, 2), strides=(2, 2))


class UNet(nn.Module):
    """deepCR UNet, depth 2 or 3.

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

    Call with ``x`` of shape ``(n, ny, nx, in_channels)``, ``ny`` and ``nx``
    multiples of ``2**(depth-1)``; returns ``(n, ny, nx, out_channels)``.
    ``valid`` (n, ny, nx, 1), optional, marks the pixels inside the image
    (1) for tiles that extend past its edge (see :class:`DoubleConv`); the
    valid region must sit on the ``2**(depth-1)`` pooling grid.

    ``compute_dtype`` (e.g. ``jnp.bfloat16``), optional: the dtype of the
    inner layers. The first block (``inc``, which sees the raw image with
    its large dynamic range) and the output head stay in the input's dtype;
    everything between runs in ``compute_dtype``. None: the input's dtype
    throughout. ``fuse``: float32 inference of ``"affine"``/``"weight"``/
    ``"none"`` networks with ``hidden`` a multiple of 32 through the native
    CPU kernels (:mod:`deepcr_jax.native`, see :func:`_fused_forward`); CPU
    backend only; other networks ignore it. Outputs outside ``valid`` are
    then 0 (they are undefined either way).
    """

    depth: int = 2
    hidden: int = 32
    out_channels: int = 1
    norm: Norm = "batch"
    head: Head = "sigmoid"
    compute_dtype: Any = None
    fuse: bool = False

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        train: bool = False,
        valid: jax.Array | None = None,
    ) -> jax.Array:
        if self.depth not in (2, 3):
            raise ValueError(f"depth must be 2 or 3; got {self.depth}")
        h = self.hidden
        # every layer's width is a multiple of h, so the first conv decides
        native_ok = x.dtype == jnp.float32 and native.supports(x.shape[-1], h) and self.out_channels == 1
        if self.fuse and native_ok and not train and self.compute_dtype is None and self.norm != "batch":
            return _fused_forward(self.variables["params"], x, valid, self.depth, self.norm, self.head)
        v1 = valid
        v2 = None if valid is None else max_pool2(valid)
        kw = dict(train=train)
        x1 = DoubleConv(h, self.norm, name="inc")(x, valid=v1, **kw)
        io_dtype = x1.dtype
        if self.compute_dtype is not None:
            x1 = x1.astype(self.compute_dtype)
            v1 = None if v1 is None else v1.astype(self.compute_dtype)
            v2 = None if v2 is None else v2.astype(self.compute_dtype)
        x2 = DoubleConv(2 * h, self.norm, name="down1")(max_pool2(x1), valid=v2, **kw)
        if self.depth == 3:
            v3 = None if valid is None else max_pool2(v2)
            x3 = DoubleConv(4 * h, self.norm, name="down2")(max_pool2(x2), valid=v3, **kw)
            x2 = Up(2 * h, self.norm, name="up7")(x3, x2, valid=v2, **kw)
        y = Up(h, self.norm, name="up8")(x2, x1, valid=v1, **kw)
        y = Conv(self.out_channels, size=1, name="outc")(y.astype(io_dtype))
        return nn.sigmoid(y) if self.head == "sigmoid" else y


# --------------------------------------------------------------------------
# inference through the native CPU kernels


def valid_bounds(valid: jax.Array) -> jax.Array:
    """Bounds (n, 4) int32 of each image's valid rectangle: rows [r0, r1), columns [c0, c1).

    ``valid`` (n, ny, nx, 1) is 1 on a rectangle (the image inside a tile),
    0 elsewhere; an image with no valid pixel gets (0, 0, 0, 0).
    """
    v = valid[..., 0] > 0
    rows, cols = jnp.any(v, axis=2), jnp.any(v, axis=1)

    def span(m):
        first = jnp.argmax(m, axis=-1)
        last = m.shape[-1] - jnp.argmax(m[:, ::-1], axis=-1)
        return first, last

    (r0, r1), (c0, c1) = span(rows), span(cols)
    b = jnp.stack([r0, r1, c0, c1], axis=-1).astype(jnp.int32)
    return jnp.where(jnp.any(rows, axis=-1, keepdims=True), b, 0)


def _pooled(bounds: jax.Array) -> jax.Array:
    """Bounds at half resolution: what ``max_pool2`` does to the valid mask."""
    return jnp.stack([bounds[:, 0] // 2, (bounds[:, 1] + 1) // 2, bounds[:, 2] // 2, (bounds[:, 3] + 1) // 2], -1)


def _fused_forward(params, x: jax.Array, valid: jax.Array | None, depth: int, norm: Norm, head: Head) -> jax.Array:
    """:class:`UNet`'s inference forward, every layer but the pooling in native kernels.

    Each conv → norm → ReLU is one kernel call; tiles that reach past the
    image edge pass their valid rectangle as bounds (no masking passes); the
    up blocks read [skip, upsampled] without concatenating; the 1×1 output
    conv and sigmoid run in the last conv's epilogue.
    """

    def conv_block(p, x, bounds, x1=None, out=None):
        for i in range(2):
            c = p[f"conv{i}"]
            kernel = weight_norm_kernel(c["g"], c["v"]) if norm == "weight" else c["kernel"]
            co = kernel.shape[-1]
            if norm == "affine":
                alpha, beta = p[f"bn{i}"]["alpha"], p[f"bn{i}"]["beta"]
            else:
                alpha, beta = jnp.ones((co,), jnp.float32), jnp.zeros((co,), jnp.float32)
            fuse_head = out is not None and i == 1 and co == 32
            x = native.conv3x3_affine_relu(
                x, kernel, c["bias"], alpha, beta, x1=x1 if i == 0 else None, bounds=bounds,
                head=out if fuse_head else None,
            )
            if out is not None and i == 1 and not fuse_head:
                w, b, sigmoid = out
                x = jnp.einsum("nhwc,c->nhw", x, w)[..., None] + _channel(b, 4)
                x = nn.sigmoid(x) if sigmoid else x
        return x

    b1 = native.full_bounds(x) if valid is None else valid_bounds(valid)
    b2 = _pooled(b1)
    outc = params["outc"]
    head_w, head_b = outc["kernel"][0, 0, :, 0], outc["bias"]
    def up_block(p, low, skip, bounds, out=None):
        up = native.upconv2x2(low, p["up"]["kernel"], p["up"]["bias"])
        return conv_block(p["conv"], skip, bounds, x1=up, out=out)

    x1 = conv_block(params["inc"], x, b1)
    x2 = conv_block(params["down1"], max_pool2(x1), b2)
    if depth == 3:
        x3 = conv_block(params["down2"], max_pool2(x2), _pooled(b2))
        x2 = up_block(params["up7"], x3, x2, b2)
    return up_block(params["up8"], x2, x1, b1, out=(head_w, head_b, head == "sigmoid"))
