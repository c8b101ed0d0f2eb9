"""The native kernels as JAX operations (XLA FFI calls; CPU only).

Each function compiles and registers the kernels on first use
(:mod:`deepcr_jax.native._build`) and raises :class:`RuntimeError` where
they are unavailable.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from deepcr_jax.native._build import require

__all__ = [
    "NARROW_WIDTHS",
    "conv3x3_affine_relu",
    "conv3x3_affine_relu_bf16",
    "conv3x3_affine_relu_planar",
    "from_planar",
    "full_bounds",
    "narrow",
    "pack_pairs",
    "supports",
    "to_planar",
    "upconv2x2",
    "upconv2x2_bf16",
    "upconv2x2_planar",
]

#: output widths of the narrow kernels (planar rows, see :func:`conv3x3_affine_relu_planar`);
#: the wide kernels take multiples of 32
NARROW_WIDTHS = (4, 8, 16)


def narrow(out_channels: int) -> bool:
    """Whether a layer of ``out_channels`` runs the narrow kernels (4, 8 or 16 channels)."""
    return out_channels in NARROW_WIDTHS


def supports(in_channels: int, out_channels: int) -> bool:
    """Whether the kernels handle a 3x3 conv of this width (Co 4, 8, 16 or a multiple of 32)."""
    return in_channels >= 1 and (out_channels % 32 == 0 or narrow(out_channels))


def to_planar(x: jax.Array) -> jax.Array:
    """NHWC ``(..., ny, nx, c)`` -> planar rows ``(..., ny, c, nx)``, the narrow kernels' layout."""
    return jnp.swapaxes(x, -1, -2)


def from_planar(x: jax.Array) -> jax.Array:
    """Planar rows ``(..., ny, c, nx)`` -> NHWC ``(..., ny, nx, c)``."""
    return jnp.swapaxes(x, -1, -2)


def full_bounds(x: jax.Array, *, planar: bool = False) -> jax.Array:
    """Bounds ``(..., 4)`` int32 = (0, ny, 0, nx) for every image of ``x``.

    ``x`` is (..., ny, nx, c), or with ``planar`` (..., ny, c, nx).
    """
    return _bounds(x, x.shape[-3], x.shape[-1] if planar else x.shape[-2], planar)


def _bounds(x: jax.Array, ny: int, nx: int, planar: bool) -> jax.Array:
    """Bounds (0, ny, 0, nx) for every image of ``x``."""
    # computed from x so that under vmap it is batched like x
    zero = x[..., 0, :1, 0].astype(jnp.int32) * 0 if planar else x[..., 0, 0, :1].astype(jnp.int32) * 0
    return zero + jnp.array([0, ny, 0, nx], jnp.int32).reshape((1,) * (zero.ndim - 1) + (4,))


def _epilogue(epilogue, co: int) -> tuple[jax.Array, jax.Array, int]:
    """(head weights (co,), head bias (1,), kernel mode: 0 none, 1 identity, 2 sigmoid)."""
    if epilogue is None:
        return jnp.zeros((co,), jnp.float32), jnp.zeros((1,), jnp.float32), 0
    head_w, head_b, sigmoid = epilogue
    return head_w, head_b, 2 if sigmoid else 1


def conv3x3_affine_relu(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array,
    alpha: jax.Array,
    beta: jax.Array,
    *,
    x1: jax.Array | None = None,
    bounds: jax.Array | None = None,
    epilogue: tuple[jax.Array, jax.Array, bool] | None = None,
):
    """``relu((conv3x3_same(x, kernel) + bias) * alpha + beta)`` by the native kernel.

    Parameters
    ----------
    x : (..., ny, nx, c0) float32
        NHWC activations; leading dimensions are batch.
    kernel : (3, 3, c0 + c1, co) float32, HWIO; ``co`` a multiple of 32, or 4, 8, 16
        (the narrow kernels, which take planar rows: ``x`` and the result
        are transposed to them and back; :func:`conv3x3_affine_relu_planar`
        takes them as they are).
    bias, alpha, beta : (co,) float32
    x1 : (..., ny, nx, c1) float32, optional
        Second input: the conv reads the channel concatenation [x, x1]
        without it being built.
    bounds : (..., 4) int32, optional
        Per image: rows [r0, r1) and columns [c0, c1) inside the image;
        input pixels outside count as zero and outputs there are zero.
        Default the whole tile.
    epilogue : (w (co,), b (1,), sigmoid), optional
        Apply the 1x1 output conv ``a @ w + b`` (then the sigmoid if
        ``sigmoid``) in the epilogue; needs ``co`` 32 (or narrow).

    Returns
    -------
    (..., ny, nx, co) float32, or (..., ny, nx, 1) with ``epilogue``.

    Under ``jax.vmap`` only ``x``, ``x1`` and ``bounds`` may be batched.
    """
    if narrow(kernel.shape[-1]):
        y = conv3x3_affine_relu_planar(to_planar(x), kernel, bias, alpha, beta,
                                       x1=None if x1 is None else to_planar(x1), bounds=bounds, epilogue=epilogue)
        return from_planar(y)
    require()
    f32 = jnp.float32
    x = x.astype(f32)
    x1 = x[..., :0] if x1 is None else x1.astype(f32)
    bounds = full_bounds(x) if bounds is None else bounds.astype(jnp.int32)
    co = kernel.shape[-1]
    head_w, head_b, mode = _epilogue(epilogue, co)
    out = jax.ShapeDtypeStruct(x.shape[:-1] + ((co,) if epilogue is None else (1,)), f32)
    call = jax.ffi.ffi_call("deepcr_conv3x3_affine_relu", out, vmap_method="expand_dims")
    args = (kernel, bias, alpha, beta, jnp.reshape(head_w, (-1,)), jnp.reshape(head_b, (-1,)))
    return call(x, x1, bounds, *(a.astype(f32) for a in args), head=np.int32(mode))


def conv3x3_affine_relu_planar(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array,
    alpha: jax.Array,
    beta: jax.Array,
    *,
    x1: jax.Array | None = None,
    bounds: jax.Array | None = None,
    epilogue: tuple[jax.Array, jax.Array, bool] | None = None,
    pool: bool = False,
):
    """:func:`conv3x3_affine_relu` for 4, 8 or 16 output channels, in planar rows.

    ``x`` (..., ny, c0, nx) and ``x1`` (..., ny, c1, nx): each image row's
    channels one after another, each a line of ``nx`` pixels (the narrow
    kernels vectorise over neighbouring pixels); :func:`to_planar` turns
    NHWC into this. ``kernel`` (3, 3, c0 + c1, co) HWIO with ``co`` in
    :data:`NARROW_WIDTHS`; ``bounds``, ``epilogue`` (any ``co``) as for
    :func:`conv3x3_affine_relu`. ``pool``: the conv reads the 2x2 max pool
    of ``x`` (stride 2, odd sizes floored, as ``deepcr_jax.nets.max_pool2``)
    without it being built; ``bounds`` then refer to the pooled image and
    ``x1`` must be None. Returns (..., ny, co, nx) float32 (``ny``, ``nx``
    the pooled sizes with ``pool``), or (..., ny, 1, nx) with ``epilogue``.
    """
    require()
    f32 = jnp.float32
    co = kernel.shape[-1]
    if not narrow(co):
        raise ValueError(f"the narrow kernels take {NARROW_WIDTHS} output channels; got {co}")
    if pool and x1 is not None:
        raise ValueError("the pooled conv reads x only (x1 must be None)")
    x = x.astype(f32)
    ny, nx = (x.shape[-3] // 2, x.shape[-1] // 2) if pool else (x.shape[-3], x.shape[-1])
    x1 = x[..., :ny, :0, :nx] if x1 is None else x1.astype(f32)
    bounds = _bounds(x, ny, nx, planar=True) if bounds is None else bounds.astype(jnp.int32)
    head_w, head_b, mode = _epilogue(epilogue, co)
    out = jax.ShapeDtypeStruct(x.shape[:-3] + (ny, co if epilogue is None else 1, nx), f32)
    call = jax.ffi.ffi_call("deepcr_conv3x3_narrow", out, vmap_method="expand_dims")
    args = (kernel, bias, alpha, beta, jnp.reshape(head_w, (-1,)), jnp.reshape(head_b, (-1,)))
    return call(x, x1, bounds, *(a.astype(f32) for a in args), head=np.int32(mode), pool=np.int32(pool))


def upconv2x2_planar(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """:func:`upconv2x2` for 4, 8 or 16 output channels, in planar rows.

    ``x`` (..., h, ci, w), ``kernel`` (2, 2, ci, co) with ``co`` in
    :data:`NARROW_WIDTHS`; returns (..., 2h, co, 2w) float32.
    """
    require()
    f32 = jnp.float32
    co = kernel.shape[-1]
    if not narrow(co):
        raise ValueError(f"the narrow kernels take {NARROW_WIDTHS} output channels; got {co}")
    out = jax.ShapeDtypeStruct(x.shape[:-3] + (2 * x.shape[-3], co, 2 * x.shape[-1]), f32)
    call = jax.ffi.ffi_call("deepcr_upconv2x2_narrow", out, vmap_method="expand_dims")
    return call(x.astype(f32), kernel.astype(f32), bias.astype(f32))


def upconv2x2(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """2x2 stride-2 transposed convolution (torch ``ConvTranspose2d(k=2, s=2)``).

    ``x`` (..., h, w, ci), ``kernel`` (2, 2, ci, co) with ``co`` a multiple
    of 32 (or 4, 8, 16: the narrow kernel, through planar rows), ``bias``
    (co,); returns (..., 2h, 2w, co) float32 with
    ``y[2i+a, 2j+b] = x[i, j] @ kernel[a, b] + bias``.
    """
    if narrow(kernel.shape[-1]):
        return from_planar(upconv2x2_planar(to_planar(x), kernel, bias))
    require()
    f32 = jnp.float32
    out = jax.ShapeDtypeStruct(x.shape[:-3] + (2 * x.shape[-3], 2 * x.shape[-2], kernel.shape[-1]), f32)
    call = jax.ffi.ffi_call("deepcr_upconv2x2", out, vmap_method="expand_dims")
    return call(x.astype(f32), kernel.astype(f32), bias.astype(f32))


def _even_channels(x: jax.Array) -> jax.Array:
    """``x`` with a zero channel appended where its channel count is odd (the bf16 kernels read pairs)."""
    if x.shape[-1] % 2 == 0:
        return x
    return jnp.concatenate([x, jnp.zeros(x.shape[:-1] + (1,), x.dtype)], axis=-1)


def pack_pairs(kernel: jax.Array, splits: tuple[int, ...]) -> jax.Array:
    """HWIO ``kernel`` (kh, kw, ci, co) -> bf16 (kh, kw, ci' / 2, co, 2): input channels in pairs.

    ``splits`` are the channel counts of the inputs the kernel reads in
    order (x0, x1); each is padded with a zero row to an even count, as
    :func:`_even_channels` pads the inputs.
    """
    parts, start = [], 0
    for c in splits:
        w = kernel[:, :, start : start + c]
        if c % 2:
            w = jnp.concatenate([w, jnp.zeros_like(w[:, :, :1])], axis=2)
        parts.append(w)
        start += c
    w = jnp.concatenate(parts, axis=2).astype(jnp.bfloat16)
    kh, kw, ci, co = w.shape
    return jnp.transpose(w.reshape(kh, kw, ci // 2, 2, co), (0, 1, 2, 4, 3))


_PATH_CODES = {"avx512bf16": 1, "amx": 2}


def conv3x3_affine_relu_bf16(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array,
    alpha: jax.Array,
    beta: jax.Array,
    *,
    path: str,
    x1: jax.Array | None = None,
    bounds: jax.Array | None = None,
    epilogue: tuple[jax.Array, jax.Array, bool] | None = None,
):
    """:func:`conv3x3_affine_relu` with bfloat16 inputs and weights, float32 sums.

    ``x`` (and ``x1``) are cast to bfloat16 and ``kernel`` (HWIO, float32
    or bf16) rounded to bfloat16; the sums, bias, affine and ReLU run in
    float32 and the activation is rounded once to bfloat16 (nearest even).
    ``path`` is the instruction path, ``"avx512bf16"`` or ``"amx"`` (one of
    :func:`deepcr_jax.native.cpu_bf16_paths`). Odd channel counts are
    padded to even with zeros.

    Returns (..., ny, nx, co) bfloat16, or with ``epilogue`` the 1x1 head
    (..., ny, nx, 1) float32 computed from the float32 activation.
    """
    require()
    f32, bf = jnp.float32, jnp.bfloat16
    splits = (x.shape[-1],) if x1 is None else (x.shape[-1], x1.shape[-1])
    if sum(splits) != kernel.shape[2]:
        raise ValueError(f"kernel reads {kernel.shape[2]} input channels; x and x1 have {splits}")
    w = pack_pairs(kernel, splits)
    x = _even_channels(x.astype(bf))
    x1 = x[..., :0] if x1 is None else _even_channels(x1.astype(bf))
    bounds = full_bounds(x) if bounds is None else bounds.astype(jnp.int32)
    co = kernel.shape[-1]
    head_w, head_b, mode = _epilogue(epilogue, co)
    out_dtype = bf if epilogue is None else f32
    out = jax.ShapeDtypeStruct(x.shape[:-1] + ((co,) if epilogue is None else (1,)), out_dtype)
    call = jax.ffi.ffi_call("deepcr_conv3x3_bf16", out, vmap_method="expand_dims")
    args = (bias, alpha, beta, jnp.reshape(head_w, (-1,)), jnp.reshape(head_b, (-1,)))
    return call(x, x1, bounds, w, *(a.astype(f32) for a in args), head=np.int32(mode),
                path=np.int32(_PATH_CODES[path]))


def upconv2x2_bf16(x: jax.Array, kernel: jax.Array, bias: jax.Array, *, path: str) -> jax.Array:
    """:func:`upconv2x2` with bfloat16 input and weights, float32 sums, bfloat16 out."""
    require()
    bf = jnp.bfloat16
    x = _even_channels(x.astype(bf))
    w = pack_pairs(kernel, (kernel.shape[2],))
    out = jax.ShapeDtypeStruct(x.shape[:-3] + (2 * x.shape[-3], 2 * x.shape[-2], kernel.shape[-1]), bf)
    call = jax.ffi.ffi_call("deepcr_upconv2x2_bf16", out, vmap_method="expand_dims")
    return call(x, w, bias.astype(jnp.float32), path=np.int32(_PATH_CODES[path]))
