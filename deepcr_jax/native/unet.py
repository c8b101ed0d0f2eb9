"""The UNet's inference forward through the native CPU kernels.

Same network, same parameters as :class:`deepcr_jax.nets.UNet` in inference
form (``norm`` ``"affine"``: BatchNorm as a per-channel affine; ``"weight"``
or ``"none"``: weight-norm or plain convs), every layer but the pooling in
native kernels: each conv → norm → ReLU is one kernel call; tiles that reach
past the image edge pass their valid rectangle as bounds (no masking passes);
the up blocks read [skip, upsampled] without concatenating; the 1×1 output
conv and sigmoid run in the last conv's epilogue. Levels of 4, 8 or 16
channels (deepCR-2-4) run the narrow kernels, whose activations are planar
rows (n, ny, c, nx), and which also do the pooling before a narrow level
(the conv reads the max pool as it goes); levels of a multiple of 32 run the
wide ones, in NHWC; a network with both (hidden 8 or 16 at depth 3, hidden
16 at depth 2) changes layout between levels. The engine chooses
this path (:func:`supported`) on CPU devices in float32, and in bfloat16
with the bf16 kernels (AVX-512-BF16 or AMX, whichever the CPU has) for the
wide inner levels; narrow levels run the float32 kernels in either case
(:func:`bf16_path`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from deepcr_jax import native
from deepcr_jax.arch import blocks
from deepcr_jax.native.ops import (
    conv3x3_affine_relu,
    conv3x3_affine_relu_bf16,
    conv3x3_affine_relu_planar,
    from_planar,
    full_bounds,
    narrow,
    supports,
    to_planar,
    upconv2x2,
    upconv2x2_bf16,
    upconv2x2_planar,
)
from deepcr_jax.nets import max_pool2, weight_norm_kernel

__all__ = ["bf16_path", "forward", "supported", "valid_bounds"]


def supported(norm: str, hidden: int, in_channels: int, out_channels: int = 1) -> bool:
    """Whether :func:`forward` runs a network of this form (the kernels' widths)."""
    # level k has hidden * 2**k channels: all narrow or multiples of 32 when hidden is one of
    # 4, 8, 16 or a multiple of 32, so the first conv decides
    return norm in ("affine", "weight", "none") and out_channels == 1 and supports(in_channels, hidden)


def bf16_path(hidden: int, depth: int) -> str | None:
    """The bf16 kernel path ``dtype="bfloat16"`` runs for this network, or None for float32 throughout.

    :func:`deepcr_jax.native.bf16_path` where some inner level (any but the
    first block's) is wide enough for the bf16 kernels (a multiple of 32
    channels); None where every inner level is narrow (deepCR-2-4: those
    run the float32 narrow kernels, so ``dtype="bfloat16"`` gives the
    float32 result). ``DEEPCR_JAX_NATIVE_ISA`` is checked either way.
    """
    path = native.bf16_path()
    inner = [b.out_channels for b in blocks(depth, hidden, 1) if b.name != "inc"]
    return path if any(not narrow(c) for c in inner) else None


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


def _max_pool2_planar(x: jax.Array) -> jax.Array:
    """``max_pool2`` in planar rows (..., ny, c, nx) (floors odd sizes likewise)."""
    *lead, ny, c, nx = x.shape
    x = x[..., : ny // 2 * 2, :, : nx // 2 * 2]
    return jnp.max(x.reshape(*lead, ny // 2, 2, c, nx // 2, 2), axis=(-4, -1))


def _layout(x: jax.Array, planar: bool, want: bool) -> jax.Array:
    """``x`` (planar rows when ``planar``) in the layout ``want`` asks for."""
    if planar == want:
        return x
    return to_planar(x) if want else from_planar(x)


def _conv_block(p, x, bounds, norm: str, x1=None, head=None, path=None, pool=False):
    """Two conv → norm → ReLU kernels; ``head`` (w, b, sigmoid) after the second.

    ``path`` None: the float32 kernels; else the bf16 kernels on that path.
    Narrow blocks (4, 8 or 16 channels) take and give planar rows and
    always run the float32 kernels; ``pool``: a narrow block's first conv
    reads the 2x2 max pool of ``x``.
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
        if narrow(co):  # any narrow width holds the head
            conv, fuse_head = functools.partial(conv3x3_affine_relu_planar, pool=pool and i == 0), last
        elif path is None:
            conv, fuse_head = conv3x3_affine_relu, last and co == 32  # the wide epilogue holds 32 channels
        else:
            conv, fuse_head = functools.partial(conv3x3_affine_relu_bf16, path=path), last and co == 32
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
    runs the inner wide levels as ``UNet(compute_dtype=jnp.bfloat16)`` does:
    the first block (``inc``, which sees the raw image) and the 1×1 head in
    float32, everything between with bfloat16 activations and weights,
    float32 sums. Activations are stored as bfloat16 between layers (half
    the memory traffic; the bf16 kernels read channel pairs, and AMX tiles
    load them in place). Narrow levels run in float32 either way
    (:func:`bf16_path` says which path a network takes).
    """
    params = variables["params"]
    outc = params["outc"]
    out = (outc["kernel"][0, 0, :, 0], outc["bias"], head == "sigmoid")
    bounds = full_bounds(x) if valid is None else valid_bounds(valid)
    net = blocks(depth, params["inc"]["conv0"]["bias"].shape[0], x.shape[-1])
    planar = False  # the layout x is in
    levels = []
    for block in net:
        last = block is net[-1]
        want = narrow(block.out_channels)
        if block.role == "encoder":
            fused_pool = block.pool and planar and want  # the narrow kernel pools as it reads
            if block.pool:
                if not fused_pool:
                    x = _max_pool2_planar(x) if planar else max_pool2(x)
                bounds = _pooled(bounds)
            x, planar = _layout(x, planar, want), want
            inner = bf16 if block.name != "inc" else None
            x = _conv_block(params[block.name], x, bounds, norm, path=inner, pool=fused_pool)
            if block.name == "inc" and bf16 is not None and not want:
                x = x.astype(jnp.bfloat16)
            levels.append((x, bounds))
        else:
            if len(levels) == depth:
                levels.pop()
            skip, bounds = levels.pop()
            p = params[block.name]
            x, planar = _layout(x, planar, want), want
            if want:
                up = upconv2x2_planar(x, p["up"]["kernel"], p["up"]["bias"])
            elif bf16 is None:
                up = upconv2x2(x, p["up"]["kernel"], p["up"]["bias"])
            else:
                up = upconv2x2_bf16(x, p["up"]["kernel"], p["up"]["bias"], path=bf16)
            x = _conv_block(p["conv"], skip, bounds, norm, x1=up, head=out if last else None, path=bf16)
    return _layout(x, planar, False)
