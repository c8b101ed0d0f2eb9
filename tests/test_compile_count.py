"""Bounded compilation (DESIGN.md contract 3), counted.

The rule: with default settings an engine (network, dtype, batch) compiles
once per tile size it is given, and :func:`deepcr_jax.tiling.choose_tile`
only ever gives the two of ``TILE_SIZES`` (256 and 1024): images that fit in
256² run as one 256 tile, larger ones as one 1024 tile when that computes
fewer pixels, else as overlapping 256 (or 1024) tiles. So a mask-only
``Cleaner`` compiles at most twice, whatever sequence of sizes it sees.
"""

from __future__ import annotations

import numpy as np

import deepcr_jax
from deepcr_jax.model import PAD_MULTIPLE
from deepcr_jax.tiling import TILE_SIZES, choose_tile

# stamps and frames mixed: odd sizes, below/at/above a 256 tile, one that fits 1024, one tiled by 256
SHAPES = [(64, 64), (100, 37), (256, 256), (3, 5), (300, 257), (700, 1000), (1500, 333), (255, 256), (64, 64)]


def _padded(shape):
    return tuple(-(-s // PAD_MULTIPLE) * PAD_MULTIPLE for s in shape)


def test_choose_tile_only_offers_two_sizes():
    assert TILE_SIZES == (256, 1024)
    for depth in (2, 3):
        for ny in (1, 7, 64, 200, 256, 257, 500, 1000, 1024, 1025, 2048, 4096):
            for nx in (1, 100, 256, 300, 1000, 2048):
                assert choose_tile((ny, nx), depth) in TILE_SIZES
    assert choose_tile((256, 256), 2) == 256
    assert choose_tile((1000, 1000), 2) == 1024
    assert choose_tile((4096, 2048), 2) == 256


def test_cleaner_compiles_once_per_tile_size(rng):
    """Nine images of seven sizes, stamps and frames mixed: two compilations (256 and 1024)."""
    cleaner = deepcr_jax.load("ACS-WFC")
    expected = {choose_tile(_padded(s), 2) for s in SHAPES}
    assert expected == set(TILE_SIZES)
    for k, shape in enumerate(SHAPES):
        img = rng.normal(60.0, 6.0, shape).astype(np.float32)
        mask = cleaner.clean(img)
        assert mask.shape == shape
        seen = {choose_tile(_padded(s), 2) for s in SHAPES[: k + 1]}
        assert cleaner.compilations == len(seen), (shape, cleaner.compilations)
    assert cleaner.compilations == 2
    # a stack of stamps of one size and the same sizes again: nothing new
    cleaner.clean(rng.normal(60.0, 6.0, (3, 120, 90)).astype(np.float32))
    cleaner.clean(rng.normal(60.0, 6.0, (700, 1000)).astype(np.float32))
    assert cleaner.compilations == 2
