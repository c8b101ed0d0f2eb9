"""The device-resident pipeline of ``clean``: tiles cut, run, stitched and thresholded on the device.

Two jitted programs per :class:`~deepcr_jax.engine.Engine` do all the work
between the images' arrival on the device and the result's departure:

* **stamps** — images that fit in one tile (``S × S``, no halo): a batch of
  them arrives as one ``(batch, S, S[, 2])`` array, each image at the top
  left (shifted by deepCR's top/left zero padding); the program scales
  (and standardises), runs the network with the valid rectangle of each
  slot, merges an inpainting network's prediction and thresholds a mask
  network's probability. One compilation per tile size, whatever the sizes
  of the stamps and of the stack.
* **frame** — one larger image in a flat buffer of a bucketed length
  (:func:`deepcr_jax.tiling.frame_bucket`) with its shape as runtime
  values; a loop over batches of tiles whose count is a runtime value too
  cuts each tile with row slices (``dynamic_slice`` at runtime offsets),
  runs the network, and scatters the tile's core into the flat result.
  One compilation per (tile size, bucket), whatever the frame's shape.

Both take the raw images (finite, in the model's units) and the
preprocessing of :func:`deepcr_jax.model.preprocess` as runtime values
(``scale``, per-image ``mean`` and ``std``): ``x / scale`` then
``(x - mean) / std``, zero outside the image; deepCR's zero padding to a
multiple of 4 at the top/left is the offset ``(py, px)``. The arithmetic is
:func:`~deepcr_jax.model.preprocess`'s, elementwise, so the network sees the
same input bit for bit, and the stitched cores are the whole-image forward
(:mod:`deepcr_jax.tiling`).

With several devices the stamps' batch axis is split over them; a frame is
replicated, each device runs its share of every batch of tiles and the
disjoint cores are summed (``psum``) into the result.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = ["META_FRAME", "META_STAMP", "STATS", "frame_program", "network_input", "stamp_program"]

#: Per-slot stamp metadata (int32): top/left padding, image rows and columns.
META_STAMP = ("py", "px", "ny", "nx")
#: Frame metadata (int32): image shape, top/left padding, tiles per row, tiles in all.
META_FRAME = ("ny", "nx", "py", "px", "tiles_x", "n_tiles")
#: Preprocessing values (float32): divide by ``scale``, standardise with ``mean``/``std``;
#: ``merge`` 1: an inpainting network's output becomes the image with its masked pixels predicted.
STATS = ("scale", "mean", "std", "merge")

Forward = Callable[[jax.Array, jax.Array], jax.Array]


def _divide(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a / b`` correctly rounded, as numpy divides: ``b`` (a scalar per image) materialised at ``a``'s shape.

    XLA rewrites a division by a broadcast scalar into a multiplication by
    its reciprocal (one rounding more: about half of the quotients differ
    from numpy's by an ulp); the optimisation barrier keeps the
    divisor an array, so the division stays a division.
    """
    return a / jax.lax.optimization_barrier(jnp.broadcast_to(b, a.shape))


def network_input(raw: jax.Array, inside: jax.Array, stats: jax.Array, channels: int) -> jax.Array:
    """:func:`~deepcr_jax.model.preprocess` at the device: the network input of raw tile values.

    ``raw`` (b, S, S) or (b, S, S, 2) (image, then the inpainting mask),
    ``inside`` (b, S, S) bool: pixels of the image (zero elsewhere, as the
    padding is), ``stats`` (b, 4) or (4,) of :data:`STATS`.
    """
    stats = stats.reshape(-1, 1, 1, len(STATS)) if stats.ndim == 2 else stats
    scale, mean, std = stats[..., 0], stats[..., 1], stats[..., 2]
    img = raw[..., 0] if channels == 2 else raw
    x = jnp.where(inside, _divide(_divide(img, scale) - mean, std), jnp.float32(0))
    if channels == 1:
        return x[..., None]
    m = jnp.where(inside, raw[..., 1], jnp.float32(0))
    return jnp.stack([x * (1 - m), m], axis=-1)


def _merge(y: jax.Array, raw: jax.Array, stats: jax.Array, channels: int) -> jax.Array:
    """Inpainting networks, ``merge`` 1: :func:`~deepcr_jax.model.postprocess` (masked pixels predicted)."""
    if channels == 1:
        return y
    stats = stats.reshape(-1, 1, 1, len(STATS)) if stats.ndim == 2 else stats
    scale, mean, std, merge = (stats[..., i] for i in range(4))
    pred = (y * std + mean) * scale
    merged = jnp.where(raw[..., 1] != 0, pred, raw[..., 0])
    return jnp.where(merge != 0, merged, y)


def _span(lo: jax.Array, n: jax.Array, size: int) -> jax.Array:
    """(b, size) bool: ``lo <= i < lo + n`` for i in range(size); ``lo``, ``n`` (b,)."""
    i = jnp.arange(size, dtype=jnp.int32)[None, :]
    return (i >= lo[:, None]) & (i < (lo + n)[:, None])


def stamp_program(
    forward: Forward, x: jax.Array, meta: jax.Array, stats: jax.Array, threshold: jax.Array, *, channels: int,
    with_mask: bool,
):
    """One batch of stamps: ``x`` (b, S, S[, 2]) raw values at (py, px), zeros elsewhere.

    ``meta`` (b, 4) int32 of :data:`META_STAMP` (a padding slot has
    ``ny = nx = 0``), ``stats`` (b, 4) float32 of :data:`STATS`.
    Returns the network output (b, S, S) float32 (inpainting, ``merge``:
    the merged image) and, ``with_mask``, ``output > threshold`` (bool).
    """
    s = x.shape[1]
    py, px, ny, nx = (meta[:, i] for i in range(4))
    inside = _span(py, ny, s)[:, :, None] & _span(px, nx, s)[:, None, :]
    zero = jnp.zeros_like(py)
    valid = _span(zero, py + ny, s)[:, :, None] & _span(zero, px + nx, s)[:, None, :]
    y = forward(network_input(x, inside, stats, channels), valid[..., None].astype(jnp.float32))
    y = _merge(y, x, stats, channels)
    return (y, y > threshold) if with_mask else (y,)


def frame_program(
    forward: Forward,
    buf: jax.Array,
    meta: jax.Array,
    stats: jax.Array,
    threshold: jax.Array,
    *,
    tile: int,
    halo: int,
    per_device: int,
    n_devices: int,
    channels: int,
    with_mask: bool,
):
    """One frame: ``buf`` (tile + L + tile[, 2]) holds pixel (y, x) at ``tile + y * nx + x``.

    ``meta`` (6,) int32 of :data:`META_FRAME`, ``stats`` (4,) float32 of
    :data:`STATS`. Tiles of side ``tile`` with cores of ``tile - 2 * halo``
    on the grid of :func:`deepcr_jax.tiling.plan_tiles` (in the padded
    image) run ``per_device`` at a time on each of ``n_devices`` devices
    (inside ``shard_map`` when several: axis ``"batch"``). Returns the
    stitched output in ``buf``'s layout (float32; 0 outside the image) and,
    ``with_mask``, ``output > threshold``.
    """
    s, h, b = tile, halo, per_device
    core = s - 2 * h
    ny, nx, py, px, tiles_x, n_tiles = (meta[i] for i in range(6))
    total = buf.shape[0]
    dev = jax.lax.axis_index("batch") if n_devices > 1 else 0
    n_batches = (n_tiles + b * n_devices - 1) // (b * n_devices)
    r = jnp.arange(s, dtype=jnp.int32)[None, :]
    in_core = (r >= h) & (r < h + core)
    in_core = in_core[:, :, None] & in_core[:, None, :]  # (1, S, S)
    row_slice = jax.vmap(jax.vmap(lambda start: jax.lax.dynamic_slice_in_dim(buf, start, s, axis=0)))

    def step(i, out):
        k = (i * n_devices + dev) * b + jnp.arange(b, dtype=jnp.int32)
        live = k < n_tiles
        gy, gx = k // tiles_x, k % tiles_x
        rows = (gy * core - h)[:, None] + r  # (b, S) rows of the padded image
        cols = (gx * core - h)[:, None] + r
        y, x = rows - py, cols - px  # rows, columns of the image
        rin, cin = (y >= 0) & (y < ny), (x >= 0) & (x < nx)
        # each tile row is one slice of S pixels from the flat buffer (rows outside the image: any row,
        # masked); the margins of `tile` pixels keep every slice inside the buffer, so none is clamped
        raw = row_slice(s + jnp.where(rin, y, 0) * nx + x[:, :1])
        inside = rin[:, :, None] & cin[:, None, :]
        vrow = (rows >= 0) & (rows < py + ny) & live[:, None]
        valid = vrow[:, :, None] & ((cols >= 0) & (cols < px + nx))[:, None, :]
        out_tile = forward(network_input(raw, inside, stats, channels), valid[..., None].astype(jnp.float32))
        out_tile = _merge(out_tile, raw, stats, channels)
        write = inside & in_core & live[:, None, None]
        idx = jnp.where(write, s + y[:, :, None] * nx + x[:, None, :], total)
        return out.at[idx].set(out_tile, mode="drop")

    out = jax.lax.fori_loop(0, n_batches, step, jnp.zeros((total,), jnp.float32))
    if n_devices > 1:
        out = jax.lax.psum(out, "batch")  # cores are disjoint: each pixel is one device's value plus zeros
    return (out, out > threshold) if with_mask else (out,)
