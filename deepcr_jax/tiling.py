"""Seam-free tiling of large images into fixed-shape network inputs.

The network is run on square tiles of a fixed size ``S`` so that one compiled
function serves every image size. Each tile is a core of ``S - 2*halo``
pixels plus a halo that covers the network's receptive field, so the core's
output depends only on pixels inside the tile. Tiles may reach past the
image edge: the part outside is zero and flagged invalid, and the network
zeroes its features there before every convolution (``valid`` in
:class:`deepcr_jax.nets.UNet`), which reproduces exactly the zero padding the
whole-image forward applies at the image border. Tile origins sit on the
pooling grid (multiples of ``2**depth``), so pooling windows never straddle
a tile or image edge differently from the whole-image forward.

An image that fits in one tile is placed at the tile's origin without a
halo: the whole image is computed at once, exactly.

All coordinates here are in the *padded* image (deepCR zero-pads the
top/left to a multiple of 4 before the network).
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = [
    "FRAME_MIN_PIXELS",
    "TILE_SIZES",
    "TilePlan",
    "choose_tile",
    "copy_window",
    "default_halo",
    "frame_bucket",
    "plan_tiles",
    "receptive_radius",
]

#: Tile sides offered (network input S × S); by default each image runs with
#: the one that computes the fewest pixels (:func:`choose_tile`). Two sizes,
#: so that with default settings the images that fit in one tile compile at
#: most two programs per engine (network, precision, batch), one per size
#: here, and larger images one per (size here, :func:`frame_bucket`).
TILE_SIZES = (256, 1024)

#: Smallest frame bucket (pixels): frames of up to 256 × 256 pixels share it.
FRAME_MIN_PIXELS = 1 << 16

# Largest distance (pixels) at which an input pixel can influence an output
# pixel: 3×3 convs add 1 level-pixel each (2 per block, encoder and decoder),
# each 2×2 pool / up-sample adds the misalignment of one level-pixel.
#   depth 2: 2 + 1 + 4 + 1 + 2 = 10
#   depth 3: 2 + 1 + 4 + 2 + 8 + 2 + 4 + 1 + 2 = 26
_RECEPTIVE_RADIUS = {2: 10, 3: 26}


def receptive_radius(depth: int) -> int:
    """Receptive-field radius (pixels) of the deepCR UNet of this depth."""
    try:
        return _RECEPTIVE_RADIUS[depth]
    except KeyError:
        raise ValueError(f"depth must be 2 or 3; got {depth}") from None


def grid(depth: int) -> int:
    """Alignment of tile origins and sizes: the ``2**depth`` pooling grid."""
    return 2**depth


def default_halo(depth: int) -> int:
    """Smallest halo on the pooling grid that covers the receptive field."""
    g = grid(depth)
    return -(-receptive_radius(depth) // g) * g


@dataclasses.dataclass(frozen=True)
class TilePlan:
    """Where the tiles of one (padded) image go.

    Attributes
    ----------
    shape : (int, int)
        Padded image shape ``(ny, nx)``.
    tile : int
        Tile side ``S`` (network input is ``S × S``).
    halo : int
        Pixels of context on each side of a core (0 when the image fits in
        one tile).
    origins : list of (int, int)
        Top-left corner of each tile's *core* in image coordinates; the tile
        itself starts ``halo`` pixels above/left of it.
    """

    shape: tuple[int, int]
    tile: int
    halo: int
    origins: tuple[tuple[int, int], ...]

    @property
    def core(self) -> int:
        return self.tile - 2 * self.halo

    def __len__(self) -> int:
        return len(self.origins)

    def window(self, index: int) -> tuple[int, int, int, int, int, int]:
        """Tile ``index``: (tile_y0, tile_x0, out_y0, out_x0, out_ny, out_nx).

        ``tile_*0`` is where the tile starts in the image (may be negative);
        ``out_*`` is the block of the image its core fills (clipped to the
        image); inside the tile that block starts at ``halo``.
        """
        oy, ox = self.origins[index]
        ny, nx = self.shape
        c = self.core
        return (oy - self.halo, ox - self.halo, oy, ox, min(c, ny - oy), min(c, nx - ox))


def plan_tiles(shape: tuple[int, int], tile: int, depth: int, halo: int | None = None) -> TilePlan:
    """Plan the tiles for a padded image of ``shape``.

    Parameters
    ----------
    shape : (int, int)
        Padded image shape ``(ny, nx)``.
    tile : int
        Tile side; a multiple of ``2**depth`` larger than ``2 * halo``.
    depth : int
        Network depth (sets the grid and the receptive field).
    halo : int, optional
        Context around each core; default :func:`default_halo`. Must be a
        multiple of ``2**depth`` no smaller than the receptive radius for
        exact results.
    """
    g = grid(depth)
    halo = default_halo(depth) if halo is None else halo
    if tile % g:
        raise ValueError(f"tile must be a multiple of {g} for a depth-{depth} network; got {tile}")
    if halo % g or halo < 0:
        raise ValueError(f"halo must be a non-negative multiple of {g}; got {halo}")
    ny, nx = shape
    if ny <= tile and nx <= tile:
        return TilePlan((ny, nx), tile, 0, ((0, 0),))
    core = tile - 2 * halo
    if core < g:
        raise ValueError(f"tile {tile} is too small for halo {halo}: need tile > {2 * halo + g - 1}")
    origins = tuple((y, x) for y in range(0, ny, core) for x in range(0, nx, core))
    return TilePlan((ny, nx), tile, halo, origins)


def copy_window(src: np.ndarray, ty: int, tx: int, out: np.ndarray, valid: np.ndarray) -> None:
    """Copy the ``S × S`` window of ``src`` starting at (ty, tx) into ``out``.

    ``src`` is (ny, nx) or (ny, nx, c); the window may reach past its edges
    (also with negative ``ty``/``tx``): those pixels become 0 in ``out`` and
    0 in ``valid`` (S, S), the rest 1. ``out`` and ``valid`` are overwritten.
    """
    s = out.shape[0]
    ny, nx = src.shape[:2]
    y0, y1 = max(ty, 0), min(ty + s, ny)
    x0, x1 = max(tx, 0), min(tx + s, nx)
    out[...] = 0
    valid[...] = 0
    if y1 > y0 and x1 > x0:
        out[y0 - ty : y1 - ty, x0 - tx : x1 - tx] = src[y0:y1, x0:x1]
        valid[y0 - ty : y1 - ty, x0 - tx : x1 - tx] = 1


def frame_bucket(pixels: int) -> int:
    """Length (pixels) of the flat device buffer that holds a frame of ``pixels`` pixels.

    The smallest ``m * 2**e`` with ``m`` in 4, 5, 6, 7 (four steps per
    doubling) that holds ``pixels``, and at least :data:`FRAME_MIN_PIXELS`:
    the padding is at most a quarter of the frame, and the device pipeline compiles
    once per bucket (:mod:`deepcr_jax.pipeline`). An ACS/WFC chip
    (2048 × 4096) is exactly ``2**23``; a WFC3/UVIS chip (2051 × 4096)
    ``5 * 2**21``.
    """
    p = max(int(pixels), FRAME_MIN_PIXELS)
    e = p.bit_length() - 3
    return -(-p // (1 << e)) << e


def choose_tile(shape: tuple[int, int], depth: int, tile: int | None = None) -> int:
    """Tile side for a padded image of ``shape`` (ny, nx) and a network of ``depth``.

    The caller's ``tile`` if given (raised to the smallest offered size
    that holds a deeper network's halo, if too small). Otherwise the
    offered size (:data:`TILE_SIZES`, 256 and 1024) that computes the
    fewest pixels in total (tiles × S², halos and padding included), the
    larger one on ties. The rule, hence the bound on compilations: every
    image that fits in 256² runs as one 256 tile (stamps of any size up to
    256, zero-padded: the native CPU kernels skip the padding through their
    bounds); a larger one as one 1024 tile when it fits and that computes
    fewer pixels than overlapping 256 tiles (a 1000² image), else as
    seam-free 256 tiles (a 300² image, a 4096×2048 chip) or 1024 tiles.
    """
    smallest = 2 * default_halo(depth) + grid(depth)
    if tile is not None:
        if max(shape) > tile and tile <= smallest:
            return next(t for t in TILE_SIZES if t > smallest)
        return tile
    options = [t for t in TILE_SIZES if t > smallest or max(shape) <= t]
    return min(options, key=lambda t: (len(plan_tiles(shape, t, depth)) * t * t, -t))
