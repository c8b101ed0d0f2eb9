"""Contracts 2 and 3: seam-free tiling equals the whole-image forward; compile once; devices."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import synthetic_field

import deepcr_jax
from deepcr_jax.engine import Engine
from deepcr_jax.model import load_params, network_forward, preprocess
from deepcr_jax.tiling import TILE_SIZES, default_halo, plan_tiles, receptive_radius

TILE_ATOL = 1e-5


def _whole(params, padded):
    return np.asarray(network_forward(params, padded[None]))[0]


def _padded_field(rng, shape, params):
    """A synthetic field as the network's input (ny', nx', channels), through the model's preprocessing."""
    img, cr = synthetic_field(rng, shape, n_stars=max(4, shape[0] * shape[1] // 2000))
    mask = cr[None] if params.kind == "inpaint" else None
    return preprocess(params, img[None], mask, xp=np)[0][0]


@pytest.mark.parametrize("tile", TILE_SIZES)
def test_tiled_equals_whole_image_depth2(tile, rng):
    params = load_params("ACS-WFC")
    shape = (tile + 37, tile // 2 + 61) if tile < 1024 else (1100, 45)
    padded = _padded_field(rng, shape, params)
    plan = plan_tiles(padded.shape[:2], tile, params.depth)
    assert len(plan) > 1, "the image must need several tiles"
    got = Engine(params, tile=tile, batch=2).run([padded])[0]
    want = _whole(params, padded)
    np.testing.assert_allclose(got, want, rtol=0, atol=TILE_ATOL)


@pytest.mark.parametrize("tile", [128, 256])
def test_tiled_equals_whole_image_depth3_inpainting_net(tile, rng):
    params = load_params("ACS-WFC-F606W-3-32")
    padded = _padded_field(rng, (tile + 45, 2 * tile - 3), params)
    got = Engine(params, tile=tile, batch=3).run([padded])[0]
    want = _whole(params, padded)
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=0, atol=TILE_ATOL * max(scale, 1.0))


@pytest.mark.parametrize(
    "shape",
    [(1, 1), (3, 5), (63, 64), (64, 64), (65, 64), (129, 130), (200, 17)],
    ids=lambda s: f"{s[0]}x{s[1]}",
)
def test_clean_tiled_equals_predict_for_odd_sizes(shape, rng):
    """Through the public API: tile 64 (tiled) == whole-image predict, borders included."""
    img = rng.normal(60, 6, shape).astype(np.float32)
    img[shape[0] // 2, shape[1] // 2] += 2000
    params = load_params("ACS-WFC")
    want = np.asarray(deepcr_jax.predict(params, img[None]))[0]
    got = deepcr_jax.clean(img, binary=False, tile=64)
    np.testing.assert_allclose(got, want, rtol=0, atol=TILE_ATOL)


def test_halo_covers_receptive_field():
    """An input change moves outputs exactly within the stated radius, never beyond."""
    import jax

    for name in ("ACS-WFC", "ACS-WFC-F606W-3-32"):
        params = load_params(name)
        r = receptive_radius(params.depth)
        assert default_halo(params.depth) >= r and default_halo(params.depth) % 2**params.depth == 0
        n = 96
        x = np.random.default_rng(1).normal(0, 1, (1, n, n, params.in_channels)).astype(np.float32)
        g = jax.grad(lambda x, p=params: network_forward(p, x)[0, 48, 49])(x)
        ys, xs = np.nonzero(np.abs(np.asarray(g)[0]).sum(-1))
        reach = max(np.abs(ys - 48).max(), np.abs(xs - 49).max())
        assert 0 < reach <= r


def test_second_image_of_another_size_does_not_recompile(rng):
    """Frames of any shape in one bucket share a program; stamps and stacks of any size share another."""
    cleaner = deepcr_jax.load("ACS-WFC", tile=128, batch=2)
    cleaner.clean(rng.normal(50, 5, (300, 200)).astype(np.float32))  # a frame: 60000 px, bucket 2**16
    assert cleaner.compilations == 1
    cleaner.clean(rng.normal(50, 5, (131, 257)).astype(np.float32))  # other shape, odd tile count, same bucket
    assert cleaner.compilations == 1
    cleaner.clean(rng.normal(50, 5, (40, 41)).astype(np.float32))  # smaller than a tile: the stamps program
    cleaner.clean(rng.normal(50, 5, (3, 40, 41)).astype(np.float32))  # a stack
    cleaner.clean(rng.normal(50, 5, (5, 128, 125)).astype(np.float32))  # another stack, odd batch count
    assert cleaner.compilations == 2


def test_stack_equals_per_image(rng):
    stack = np.stack([synthetic_field(rng, (96, 80))[0] for _ in range(3)])
    cleaner = deepcr_jax.load("ACS-WFC", tile=64, batch=4)
    got = cleaner.clean(stack, binary=False)
    assert got.shape == stack.shape
    for i in range(3):
        np.testing.assert_allclose(got[i], cleaner.clean(stack[i], binary=False), rtol=0, atol=0)


def test_eight_devices_equal_one_device(tmp_path, rng):
    """The batch axis sharded over 8 (host-platform) devices gives the 1-device result."""
    img, _ = synthetic_field(rng, (300, 260))
    np.save(tmp_path / "img.npy", img)
    script = textwrap.dedent(
        f"""
        import jax, numpy as np, deepcr_jax
        assert jax.local_device_count() == 8, jax.local_devices()
        img = np.load({str(tmp_path / "img.npy")!r})
        c = deepcr_jax.load("ACS-WFC", tile=64, batch=5)
        assert c.engine("mask", 64).batch == 8
        np.save({str(tmp_path / "p8.npy")!r}, c.clean(img, binary=False))
        """
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=300)
    p8 = np.load(tmp_path / "p8.npy")
    p1 = deepcr_jax.clean(img, binary=False, tile=64, batch=5)
    np.testing.assert_allclose(p8, p1, rtol=0, atol=1e-6)


def test_bfloat16_masks_agree_with_float32(rng):
    img, _ = synthetic_field(rng, (128, 128), n_crs=30)
    p32 = deepcr_jax.clean(img, binary=False, tile=128)
    p16 = deepcr_jax.clean(img, binary=False, tile=128, dtype="bfloat16")
    assert p16.dtype == np.float32
    agree = np.mean((p16 > 0.5) == (p32 > 0.5))
    assert agree >= 0.999, agree
