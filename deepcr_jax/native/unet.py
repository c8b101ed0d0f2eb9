"""The UNet's inference forward through the native CPU kernels.

Same network, same parameters as :class:`deepcr_jax.nets.UNet` in inference
form (``norm`` ``"affine"``: BatchNorm as a per-channel affine; ``"weight"``
or ``"none"``: weight-norm or plain convs), every layer but the pooling in
native kernels: each conv → norm → ReLU is one kernel call; tiles that reach
past the image edge pass their valid rectangle as bounds (no masking passes);
the up blocks read [skip, upsampled] without concatenating; the 1×1 output
conv and sigmoid run in the last conv's epilogue. The engine chooses this
path (:func:`supported`) on CPU devices in float32, and in bfloat16 with
the bf16 kernels (AVX-512-BF16 or AMX, whichever the CPU has).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from deepcr_jax.arch import blocks
from deepcr_jax.native.ops import (
    conv3x3_affine_relu,
    conv3x3_affine_relu_bf16,
    full_bounds,
    supports,
    upconv2x2,
    upconv2x2_bf16,
)
from deepcr_jax.nets import max_pool2, weight_norm_kernel

__all__ = ["forward", "supported", "valid_bounds"]


def supported(norm: str, hidden: int, in_channels: int, out_channels: int = 1) -> bool:
    """Whether :func:`forward` runs a network of this form (the kernels' widths)."""
    # every layer's width is a multiple of hidden, so the first conv decides
    return norm in ("affine", "weight", "none") and out_channels == 1 and supports(in_channels, hidden)


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


def _conv_block(p, x, bounds, norm: str, x1=None, head=None, path=None):
    """Two conv → norm → ReLU kernels; ``head`` (w, b, sigmoid) after the second.

    ``path`` None: the float32 kernels; else the bf16 kernels on that path.
    """
    for i in range(2):
        c = p[f"conv{i}"]
        kernel = weight_norm_kernel(c["g"], c["v"]) if "v" in c else c["kernel"]
        co = kernel.shape[-1]
        if norm == "affine":
            alpha, beta = p[f"bn{i}"]["alpha"], p[f"bn{i}"]["beta"]
        else:
            alpha, beta = jnp.ones((co,), jnp.float32), jnp.zeros((co,), jnp.float32)
        last = head is not None and i == 1
        fuse_head = last and co == 32  # the kernel's epilogue holds 32 channels
        conv = conv3x3_affine_relu if path is None else functools.partial(conv3x3_affine_relu_bf16, path=path)
        x = conv(
            x, kernel, c["bias"], alpha, beta, x1=x1 if i == 0 else None, bounds=bounds,
            epilogue=head if fuse_head else None,
        )
        if last and not fuse_head:
            w, b, sigmoid = head
            x = jnp.einsum("nhwc,c->nhw", x.astype(jnp.float32), w)[..., None] + b.reshape(1, 1, 1, -1)
            x = jax.nn.sigmoid(x) if sigmoid else x
    return x


def forward(
    variables, x: jax.Array, valid: jax.Array | None, *, depth: int, norm: str, head: str, bf16: str | None = None
) -> jax.Array:
    """Inference forward of the UNet ``variables`` (``{"params": ...}``), native kernels.

    ``x`` (n, ny, nx, in_channels) float32, ``valid`` (n, ny, nx, 1) or
    None; returns (n, ny, nx, 1) float32 (outputs outside ``valid`` are 0).
    ``bf16``: None for float32 throughout; a path of
    :func:`deepcr_jax.native.cpu_bf16_paths` (``"avx512bf16"``, ``"amx"``)
    runs the inner layers as ``UNet(compute_dtype=jnp.bfloat16)`` does:
    the first block (``inc``, which sees the raw image) and the 1×1 head in
    float32, everything between with bfloat16 activations and weights,
    float32 sums. Activations are stored as bfloat16 between layers (half
    the memory traffic; the bf16 kernels read channel pairs, and AMX tiles
    load them in place).
    """
    params = variables["params"]
    outc = params["outc"]
    out = (outc["kernel"][0, 0, :, 0], outc["bias"], head == "sigmoid")
    bounds = full_bounds(x) if valid is None else valid_bounds(valid)
    net = blocks(depth, params["inc"]["conv0"]["bias"].shape[0], x.shape[-1])
    levels = []
    for block in net:
        last = block is net[-1]
        if block.role == "encoder":
            if block.pool:
                x, bounds = max_pool2(x), _pooled(bounds)
            inner = bf16 if block.name != "inc" else None
            x = _conv_block(params[block.name], x, bounds, norm, path=inner)
            if block.name == "inc" and bf16 is not None:
                x = x.astype(jnp.bfloat16)
            levels.append((x, bounds))
        else:
            if len(levels) == depth:
                levels.pop()
            skip, bounds = levels.pop()
            p = params[block.name]
            if bf16 is None:
                up = upconv2x2(x, p["up"]["kernel"], p["up"]["bias"])
            else:
                up = upconv2x2_bf16(x, p["up"]["kernel"], p["up"]["bias"], path=bf16)
            x = _conv_block(p["conv"], skip, bounds, norm, x1=up, head=out if last else None, path=bf16)
    return x
