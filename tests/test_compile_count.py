"""Bounded compilation (DESIGN.md contract 3), counted.

The rule: an engine (network, precision, batch) compiles one program per
tile size for the images that fit in one tile (any size up to it, alone or
in stacks of any length) and one per (tile size, frame bucket) for larger
images; :func:`deepcr_jax.tiling.choose_tile` only ever gives the two of
``TILE_SIZES`` (256 and 1024: images that fit in 256² run as one 256 tile,
larger ones as one 1024 tile when that computes fewer pixels, else as
overlapping 256 or 1024 tiles), and :func:`deepcr_jax.tiling.frame_bucket`
rounds a larger image's pixel count up to ``m * 2**e`` (``m`` in 4..7, at
least ``2**16``). So a mask-only ``Cleaner`` compiles at most twice for
stamps, and once per bucket of frame sizes it meets (one for a run of
same-sized chips).
"""

from __future__ import annotations

import numpy as np

import deepcr_jax
from deepcr_jax.model import PAD_MULTIPLE
from deepcr_jax.tiling import TILE_SIZES, choose_tile, frame_bucket, plan_tiles

# stamps and frames mixed: odd sizes, below/at/above a 256 tile, one that fits 1024, two tiled by 256
SHAPES = [(64, 64), (100, 37), (256, 256), (3, 5), (300, 257), (700, 1000), (1500, 333), (255, 256), (64, 64)]


def _padded(shape):
    return tuple(-(-s // PAD_MULTIPLE) * PAD_MULTIPLE for s in shape)


def program(shape, depth: int = 2) -> tuple:
    """The program an image of ``shape`` runs in, by the rule: ("stamps", S) or ("frame", S, bucket)."""
    tile = choose_tile(_padded(shape), depth)
    if plan_tiles(_padded(shape), tile, depth).halo == 0:
        return ("stamps", tile)
    return ("frame", tile, frame_bucket(shape[0] * shape[1]))


def test_choose_tile_only_offers_two_sizes():
    assert TILE_SIZES == (256, 1024)
    for depth in (2, 3):
        for ny in (1, 7, 64, 200, 256, 257, 500, 1000, 1024, 1025, 2048, 4096):
            for nx in (1, 100, 256, 300, 1000, 2048):
                assert choose_tile((ny, nx), depth) in TILE_SIZES
    assert choose_tile((256, 256), 2) == 256
    assert choose_tile((1000, 1000), 2) == 1024
    assert choose_tile((4096, 2048), 2) == 256


def test_cleaner_compiles_once_per_program_of_the_rule(rng):
    """Nine images of seven sizes, stamps and frames mixed: four programs (stamps 256 and 1024, two frame buckets)."""
    cleaner = deepcr_jax.load("ACS-WFC")
    programs = [program(s) for s in SHAPES]
    assert {p[1] for p in programs} == set(TILE_SIZES)
    for k, shape in enumerate(SHAPES):
        img = rng.normal(60.0, 6.0, shape).astype(np.float32)
        mask = cleaner.clean(img)
        assert mask.shape == shape
        assert cleaner.compilations == len(set(programs[: k + 1])), (shape, cleaner.compilations)
    assert cleaner.compilations == 4
    # a stack of stamps, a frame of another shape in a bucket already met, the same sizes again: nothing new
    assert program((290, 270)) == program((300, 257))
    cleaner.clean(rng.normal(60.0, 6.0, (3, 120, 90)).astype(np.float32))
    cleaner.clean(rng.normal(60.0, 6.0, (290, 270)).astype(np.float32))
    cleaner.clean(rng.normal(60.0, 6.0, (700, 1000)).astype(np.float32))
    assert cleaner.compilations == 4
