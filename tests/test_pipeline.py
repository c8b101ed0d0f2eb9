"""The device-resident pipeline (issue 13) equals the host pipeline it replaced; its compilations; precision presets.

The reference, :func:`host_pipeline`, is the pipeline as it was before: numpy
preprocessing, tiles cut on the host with :func:`deepcr_jax.tiling.copy_window`,
the jitted network on each batch (:meth:`Engine.forward`), cores stitched on
the host, numpy postprocessing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from conftest import synthetic_field

import deepcr_jax
from deepcr_jax.engine import PRECISIONS, Engine, resolve_precision, runs_as
from deepcr_jax.model import PAD_MULTIPLE, load_params, postprocess, preprocess
from deepcr_jax.tiling import FRAME_MIN_PIXELS, TILE_SIZES, choose_tile, copy_window, frame_bucket, plan_tiles

#: the device pipeline against the host pipeline: the issue's bar (on the native CPU kernels they are
#: bit-identical: same network input bit for bit, same tiles; test_bit_identical_on_the_native_kernels)
PIPE_ATOL = 1e-6


_REFERENCE_ENGINES: dict = {}


@pytest.fixture(scope="module")
def mask_params():
    return load_params("ACS-WFC")


def reference_engine(params, tile: int, batch: int = 1) -> Engine:
    """An engine of its own for :func:`host_pipeline` (its forward does not count in the tested engines)."""
    key = (params.name, tile, batch)
    if key not in _REFERENCE_ENGINES:
        _REFERENCE_ENGINES[key] = Engine(params, tile=tile, batch=batch)
    return _REFERENCE_ENGINES[key]


def host_pipeline(engine: Engine, params, images: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """The pre-issue-13 pipeline: (n, ny, nx) images → postprocessed network output (n, ny, nx)."""
    x, undo = preprocess(params, images, mask, xp=np)
    b, s, c = engine.batch, engine.tile, params.in_channels
    outs = []
    for img in x:
        plan = plan_tiles(img.shape[:2], s, params.depth)
        out = np.empty(img.shape[:2], np.float32)
        for start in range(0, len(plan), b):
            ks = range(start, min(start + b, len(plan)))
            xb, vb = np.zeros((b, s, s, c), np.float32), np.zeros((b, s, s, 1), np.float32)
            for slot, k in enumerate(ks):
                ty, tx, *_ = plan.window(k)
                copy_window(img, ty, tx, xb[slot], vb[slot, ..., 0])
            y = np.asarray(engine.forward(xb, vb))
            for slot, k in enumerate(ks):
                _, _, oy, ox, ny, nx = plan.window(k)
                out[oy : oy + ny, ox : ox + nx] = y[slot, plan.halo : plan.halo + ny, plan.halo : plan.halo + nx]
        outs.append(out)
    return postprocess(params, np.stack(outs), undo, images, mask, xp=np)


def _images(rng, shape, n=1):
    return np.stack([synthetic_field(rng, shape, n_stars=3, n_crs=6)[0] for _ in range(n)])


def _check(cleaner, images, params=None, tile=None):
    """clean(images) probability and mask against the host pipeline on the same engine."""
    params = params or cleaner.params
    padded = tuple(-(-s // PAD_MULTIPLE) * PAD_MULTIPLE for s in images.shape[1:])
    engine = reference_engine(params, choose_tile(padded, params.depth, tile), cleaner.batch)
    want = host_pipeline(engine, params, images)
    got = cleaner.clean(images, binary=False)
    np.testing.assert_allclose(got, want, rtol=0, atol=PIPE_ATOL)
    t = np.float32(params.threshold)
    sure = np.abs(want - t) > PIPE_ATOL  # masks identical away from the threshold's rounding
    mask = cleaner.clean(images)
    assert mask.dtype == bool and mask.shape == images.shape
    np.testing.assert_array_equal(mask[sure], (want > t)[sure])
    np.testing.assert_array_equal(mask, got > t)  # the device's threshold is the host's
    return got


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (61, 64), (63, 60), (64, 64)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_stamps_equal_host_pipeline(shape, rng):
    cleaner = deepcr_jax.load("ACS-WFC", tile=64, batch=1)
    _check(cleaner, _images(rng, shape), tile=64)


def test_stacks_with_padding_slots_equal_host_pipeline(rng):
    """5 stamps, batch 2: a half-empty last batch; 64x64 stamps are sent as they are (no copy)."""
    for shape in ((37, 50), (64, 64)):
        cleaner = deepcr_jax.load("ACS-WFC", tile=64, batch=2)
        got = _check(cleaner, _images(rng, shape, n=5), tile=64)
        assert got.shape == (5, *shape)


@pytest.mark.parametrize(
    "shape", [(65, 64), (129, 130), (200, 17), (131, 257), (257, 300)], ids=lambda s: f"{s[0]}x{s[1]}"
)
def test_odd_sized_frames_equal_host_pipeline(shape, rng):
    cleaner = deepcr_jax.load("ACS-WFC", tile=64, batch=3)
    _check(cleaner, _images(rng, shape), tile=64)


def test_stack_of_frames_equals_host_pipeline(rng):
    cleaner = deepcr_jax.load("ACS-WFC", tile=64, batch=2)
    _check(cleaner, _images(rng, (90, 70), n=3), tile=64)


@pytest.mark.parametrize("tile", TILE_SIZES)
def test_every_tile_size_stamp_and_frame(tile, rng):
    """Each offered tile size, as one tile (a stamp) and tiled (a frame): two programs."""
    cleaner = deepcr_jax.load("ACS-WFC", tile=tile)
    for shape in ((tile - 3, 85), (tile + 37, 61)):
        _check(cleaner, _images(rng, shape), tile=tile)
    assert cleaner.compilations == 2


def test_every_frame_bucket_step(rng):
    """Frames in the buckets m * 2**e for m = 4..7 (and the smallest bucket)."""
    cleaner = deepcr_jax.load("ACS-WFC", tile=64, batch=4)
    shapes = [(70, 65), (256, 257), (256, 384), (256, 448), (256, 512)]
    buckets = [frame_bucket(a * b) for a, b in shapes]
    assert buckets == [FRAME_MIN_PIXELS, 5 << 14, 6 << 14, 7 << 14, 8 << 14]
    for shape in shapes:
        _check(cleaner, _images(rng, shape), tile=64)
    assert cleaner.compilations == len(set(buckets))


def test_frame_bucket_rule():
    assert frame_bucket(1) == frame_bucket(FRAME_MIN_PIXELS) == FRAME_MIN_PIXELS
    assert frame_bucket(2048 * 4096) == 1 << 23  # an ACS/WFC chip: no padding
    assert frame_bucket(2051 * 4096) == 5 << 21  # a WFC3/UVIS chip
    for p in (65537, 77100, 10**6, 3 * 10**7):
        b = frame_bucket(p)
        assert p <= b < 1.25 * p + 1
        e = b.bit_length() - 3
        assert b % (1 << e) == 0 and 4 <= b >> e <= 7, b  # m * 2**e with m in 4..7


def test_ignored_and_nan_pixels_equal_host_pipeline(rng):
    """Ignored pixels are filled on the host, then the same pipeline; their probability is 0."""
    from deepcr_jax.medmask import fill_ignored

    for shape, tile in (((60, 50), 64), ((150, 140), 64)):
        img = _images(rng, shape)[0]
        img[5, 7] = np.nan
        img[20:24, 30:33] = np.inf
        ignore = np.zeros(shape, bool)
        ignore[40:45, 0:4] = True
        bad = ignore | ~np.isfinite(img)
        cleaner = deepcr_jax.load("ACS-WFC", tile=tile)
        engine = reference_engine(cleaner.params, tile, cleaner.batch)
        want = host_pipeline(engine, cleaner.params, fill_ignored(img, bad)[None])[0]
        want[bad] = 0
        got = cleaner.clean(img, binary=False, ignore=ignore)
        np.testing.assert_allclose(got, want, rtol=0, atol=PIPE_ATOL)
        mask = cleaner.clean(img, ignore=ignore)
        assert not mask[bad].any()
        np.testing.assert_array_equal(mask, got > np.float32(cleaner.params.threshold))
        assert cleaner.last_report.n_ignored == int(bad.sum())


def test_standardised_model_equals_host_pipeline(rng):
    """WFC3-UVIS: per-image mean/std from the host, applied on the device; stamps and a frame."""
    params = load_params("WFC3-UVIS")
    cleaner = deepcr_jax.load("WFC3-UVIS", tile=64, batch=2)
    _check(cleaner, _images(rng, (40, 52), n=3) + 300.0, params, tile=64)
    _check(cleaner, _images(rng, (100, 90)) + 300.0, params, tile=64)


@pytest.mark.parametrize("shape", [(48, 60), (150, 100)], ids=["stamp", "frame"])
def test_inpainting_network_equals_host_pipeline(shape, rng):
    """The inpainter's merge (masked pixels predicted, the rest the input's bits) on the device."""
    name = "ACS-WFC-F606W-2-32"
    params = load_params(name)
    img, cr = synthetic_field(rng, shape, n_crs=10)
    cleaner = deepcr_jax.load(inpaint=name, tile=64, batch=2)
    engine = reference_engine(params, 64, 2)
    want = host_pipeline(engine, params, img[None], cr[None])[0]
    got = cleaner.inpaint(img, cr)
    np.testing.assert_allclose(got, want, rtol=0, atol=PIPE_ATOL * np.abs(img).max())
    np.testing.assert_array_equal(got[~cr], img[~cr])


def test_bit_identical_on_the_native_kernels(rng):
    """Scaled (2-4: /100) and standardised (WFC3-UVIS) models too: the division is numpy's, correctly rounded."""
    for name in ("ACS-WFC", "ACS-WFC-F606W-2-4", "WFC3-UVIS"):
        params = load_params(name)
        cleaner = deepcr_jax.load(name, tile=64, batch=2)
        if not cleaner.engine("mask", 64).native:
            pytest.skip("the native CPU kernels are not available")
        for images in (_images(rng, (60, 50), n=3) + 200.0, _images(rng, (150, 140)) + 200.0):
            want = host_pipeline(reference_engine(params, 64, 2), params, images)
            np.testing.assert_array_equal(cleaner.clean(images, binary=False), want, err_msg=name)


def test_engine_run_still_gives_the_network_output(mask_params, rng):
    """Engine.run (preprocessed, padded input) through the device programs == the host pipeline's network output."""
    engine = Engine(mask_params, tile=64, batch=2)
    for shape in ((40, 44), (132, 96)):
        padded = preprocess(mask_params, _images(rng, shape), xp=np)[0][0]
        (got,) = engine.run([padded])
        np.testing.assert_allclose(got, host_pipeline(engine, mask_params, padded[None, ..., 0])[0], atol=PIPE_ATOL)
    with pytest.raises(ValueError, match="network takes 1 channel"):
        engine.run([np.zeros((8, 8, 2), np.float32)])


def test_threshold_on_device_is_probability_above_threshold(mask_params, rng):
    engine = Engine(mask_params, tile=64, batch=1)
    images = _images(rng, (70, 90), n=2)
    prob = engine.process(images)
    for t in (0.1, 0.5, 0.93):
        np.testing.assert_array_equal(engine.process(images, threshold=t), prob > np.float32(t))
    with pytest.raises(ValueError, match="masks are for inpainting networks"):
        engine.process(images, images > 0)


# --------------------------------------------------------------------------
# compilations


def _program(shape, depth=2):
    """The program an image of ``shape`` runs in (the stated rule)."""
    padded = tuple(-(-s // PAD_MULTIPLE) * PAD_MULTIPLE for s in shape)
    tile = choose_tile(padded, depth)
    if plan_tiles(padded, tile, depth).halo == 0:
        return ("stamps", tile)
    return ("frame", tile, frame_bucket(shape[0] * shape[1]))


def test_compilations_over_mixed_sizes_stay_within_the_rule(rng):
    """One program per tile size for images that fit one tile, one per (tile size, bucket) for larger ones."""
    cleaner = deepcr_jax.load("ACS-WFC", batch=2)
    shapes = [(64, 64), (3, 5), (256, 256), (300, 257), (250, 300), (100, 37), (1500, 333), (510, 40), (64, 64)]
    seen = set()
    for shape in shapes:
        cleaner.clean(rng.normal(60.0, 6.0, shape).astype(np.float32))
        seen.add(_program(shape))
        assert cleaner.compilations == len(seen), (shape, seen)
    cleaner.clean(rng.normal(60.0, 6.0, (3, 120, 90)).astype(np.float32))  # a stack of stamps
    cleaner.clean(rng.normal(60.0, 6.0, (2, 300, 257)).astype(np.float32))  # a stack of frames
    assert cleaner.compilations == len(seen) == 4


# --------------------------------------------------------------------------
# precision presets


def test_precision_names_and_aliases():
    assert PRECISIONS == ("exact", "bf16", "tf32")
    assert resolve_precision() == "exact"
    for name in PRECISIONS:
        assert resolve_precision(name) == name
    assert resolve_precision(dtype="float32") == "exact"
    assert resolve_precision(dtype="bfloat16") == resolve_precision(dtype=jax.numpy.bfloat16) == "bf16"
    assert resolve_precision("bf16", dtype="bfloat16") == "bf16"
    assert runs_as("tf32", "cpu") == "exact" and runs_as("tf32", "gpu") == "tf32"
    assert runs_as("bf16", "cpu") == "bf16" and runs_as("exact", "tpu") == "exact"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"precision": "fp16"}, r"precision must be 'exact', 'bf16' or 'tf32'; got 'fp16'"),
        ({"precision": "float32"}, r"precision must be 'exact', 'bf16' or 'tf32'; got 'float32'"),
        ({"precision": 32}, r"precision must be 'exact', 'bf16' or 'tf32'; got 32"),
        ({"dtype": "float16"}, r"dtype must be 'float32' or 'bfloat16'; got 'float16'"),
        ({"dtype": "float32", "precision": "bf16"}, r"dtype='float32' means precision='exact', which disagrees"),
    ],
    ids=["unknown", "dtype-name-as-precision", "not-a-string", "bad-dtype", "conflict"],
)
def test_precision_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        resolve_precision(**kwargs)
    with pytest.raises(ValueError, match=match):
        deepcr_jax.load(**kwargs)
    with pytest.raises(ValueError, match=match):
        deepcr_jax.clean(np.zeros((8, 8), np.float32), **kwargs)


def test_presets_on_this_cpu(mask_params, rng):
    """tf32 on a CPU runs exact float32 (and says so); dtype= still selects bf16."""
    cpu = jax.devices("cpu")[:1]
    tf32 = Engine(mask_params, tile=64, batch=1, devices=cpu, precision="tf32")
    exact = Engine(mask_params, tile=64, batch=1, devices=cpu)
    assert (tf32.requested_precision, tf32.precision, exact.precision) == ("tf32", "exact", "exact")
    assert tf32.dtype == exact.dtype == np.float32 and tf32.isa == exact.isa
    bf16 = Engine(mask_params, tile=64, batch=1, dtype="bfloat16", devices=cpu)
    assert bf16.precision == "bf16" and bf16.dtype == jax.numpy.bfloat16
    images = _images(rng, (50, 70))
    np.testing.assert_array_equal(tf32.process(images), exact.process(images))
    c = deepcr_jax.load(precision="tf32")
    assert c.precision == "tf32" and c.dtype == "float32"
    assert deepcr_jax.load(dtype="bfloat16").precision == "bf16"
    from deepcr_jax.api import cached_cleaner

    assert cached_cleaner("ACS-WFC", None, None, None, "float32") is cached_cleaner("ACS-WFC", None, None, None)


def test_cli_precision_option():
    from deepcr_jax.cli import build_parser
    from deepcr_jax.cli._common import load_cleaner

    parser = build_parser()
    args = parser.parse_args(["clean", "x.fits", "--precision", "tf32"])
    assert args.precision == "tf32" and load_cleaner(args).precision == "tf32"
    assert parser.parse_args(["clean", "x.fits"]).precision == "exact"
    with pytest.raises(SystemExit):
        parser.parse_args(["clean", "x.fits", "--precision", "fp16"])


def test_cli_precision_reaches_the_batch_driver(tmp_path):
    """With --manifest the batch driver cleans at the asked preset and records it."""
    import json

    from test_fits import make_flc

    from deepcr_jax.cli import main

    make_flc(tmp_path / "a_flc.fits")
    argv = ["clean", str(tmp_path / "a_flc.fits"), "--outdir", str(tmp_path / "out"), "--precision", "bf16"]
    assert main([*argv, "--manifest", str(tmp_path / "m.jsonl")]) == 0
    lines = [json.loads(ln) for ln in (tmp_path / "m.jsonl").read_text().splitlines() if ln.strip()]
    assert [(r["status"], r["settings"]["precision"]) for r in lines] == [("cleaned", "bf16")]


# --------------------------------------------------------------------------
# eight devices


def test_eight_devices_equal_one_device(tmp_path, rng):
    """Stamps (batch split over 8 devices), a stack with padding slots, frames (tiles shared out) == 1 device."""
    images = {
        "stamp": _images(rng, (50, 61)),
        "stack": _images(rng, (64, 64), n=11),
        "frame": _images(rng, (300, 260)),
        "frames": _images(rng, (131, 70), n=2),
    }
    np.savez(tmp_path / "in.npz", **images)
    script = textwrap.dedent(
        f"""
        import jax, numpy as np, deepcr_jax
        assert jax.local_device_count() == 8, jax.local_devices()
        data = np.load({str(tmp_path / "in.npz")!r})
        c = deepcr_jax.load("ACS-WFC", tile=64, batch=5)
        assert c.engine("mask", 64).batch == 8
        out = {{k: c.clean(data[k], binary=False) for k in data.files}}
        out.update({{k + "_mask": c.clean(data[k]) for k in data.files}})
        np.savez({str(tmp_path / "out.npz")!r}, **out)
        """
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=300)
    got = np.load(tmp_path / "out.npz")
    one = deepcr_jax.load("ACS-WFC", tile=64, batch=5)
    for k, img in images.items():
        p1 = one.clean(img, binary=False)
        np.testing.assert_allclose(got[k], p1, rtol=0, atol=PIPE_ATOL, err_msg=k)
        sure = np.abs(p1 - np.float32(0.5)) > PIPE_ATOL
        np.testing.assert_array_equal(got[k + "_mask"][sure], one.clean(img)[sure], err_msg=k)


def test_bf16_request_on_a_narrow_network_reports_what_runs():
    """The 2-4 network has no inner level wide enough for the bf16 kernels: it runs (and says) float32."""
    from deepcr_jax import native
    from deepcr_jax.engine import Engine
    from deepcr_jax.model import load_params

    if not native.available():
        pytest.skip("native kernels unavailable")
    engine = Engine(load_params("ACS-WFC-F606W-2-4"), tile=256, batch=1, dtype="bfloat16")
    assert engine.native and engine.isa == "fp32"
