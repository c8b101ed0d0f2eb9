"""The bf16 native kernels (AVX-512-BF16, AMX) against the float32 kernels and the flax bf16 network.

Each test runs once per bf16 path this CPU has (:func:`deepcr_jax.native.cpu_bf16_paths`,
detected at run time); on a CPU with none they are skipped, and the forced
fallback (``DEEPCR_JAX_NATIVE_ISA=fp32``) is tested everywhere.

Tolerances, stated once: the kernels sum in float32 and round the result once
to bfloat16, so against the float32 kernel fed the same bf16-rounded inputs
and weights they differ by at most one bf16 rounding of the output (relative
2**-9, held at 2**-8) plus float32 summation-order error (``KERNEL_ATOL``).
The whole network against ``UNet(compute_dtype=bfloat16)`` (which also rounds
after every bias add and affine): probabilities within ``NET_ATOL``.
"""

from __future__ import annotations

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepcr_jax import native
from deepcr_jax.engine import Engine
from deepcr_jax.model import load_params
from deepcr_jax.native import unet as native_unet

KERNEL_RTOL = 2.0**-8
KERNEL_ATOL = 1e-4
NET_ATOL = 0.03  # times the output scale; measured: 0.006 (mask probabilities), 0.025 (inpaint 3-32)

requires_native = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "c++")) is None or os.environ.get("DEEPCR_JAX_NATIVE") == "0",
    reason="no C++ compiler: the native kernel cannot be built here",
)


def _paths():
    if shutil.which(os.environ.get("CXX", "c++")) is None or os.environ.get("DEEPCR_JAX_NATIVE") == "0":
        return []
    return list(native.cpu_bf16_paths())


PATHS = pytest.mark.parametrize("path", _paths() or [pytest.param(None, marks=pytest.mark.skip("no bf16 path"))])


@pytest.fixture(autouse=True)
def _on_cpu():
    with jax.default_device(jax.devices("cpu")[0]):
        yield


def _bf(a):
    """float32 values of ``a`` rounded to bfloat16."""
    return np.asarray(jnp.asarray(a).astype(jnp.bfloat16).astype(jnp.float32))


def _operands(rng, shape, ci, co):
    x = rng.standard_normal(shape + (ci,)).astype(np.float32)
    w = (rng.standard_normal((3, 3, ci, co)) / np.sqrt(9 * ci)).astype(np.float32)
    b, alpha, beta = (rng.standard_normal(co).astype(np.float32) for _ in range(3))
    return x, w, b, alpha, beta


def _close(got, want):
    got = np.asarray(got, np.float32)
    np.testing.assert_allclose(got, want, rtol=KERNEL_RTOL, atol=KERNEL_ATOL)


@requires_native
@PATHS
@pytest.mark.parametrize(
    "shape, ci, co",
    [
        ((1, 1, 1), 32, 32),  # a 1x1 image
        ((2, 5, 3), 1, 32),  # one input channel (padded to a pair)
        ((1, 2, 14), 32, 32),  # a register block plus the two border columns
        ((1, 3, 15), 32, 64),
        ((1, 13, 29), 96, 64),
        ((1, 6, 70), 64, 32),  # longer than two AMX blocks
        ((3, 16, 16), 32, 32),
        ((2, 2, 7, 9), 64, 32),  # two leading batch dimensions
        ((1, 4, 9), 3, 32),  # odd channels
    ],
)
def test_bf16_kernel_matches_fp32_kernel(rng, path, shape, ci, co):
    x, w, b, alpha, beta = _operands(rng, shape, ci, co)
    got = jax.jit(lambda *a: native.conv3x3_affine_relu_bf16(*a, path=path))(x, w, b, alpha, beta)
    want = np.asarray(native.conv3x3_affine_relu(_bf(x), _bf(w), b, alpha, beta))
    assert got.shape == shape + (co,) and got.dtype == jnp.bfloat16
    _close(got, want)


@requires_native
@PATHS
def test_bf16_kernel_under_vmap(rng, path):
    x, w, b, alpha, beta = _operands(rng, (3, 1, 10, 40), 32, 32)
    fn = jax.vmap(lambda x: native.conv3x3_affine_relu_bf16(x, w, b, alpha, beta, path=path))
    want = np.asarray(native.conv3x3_affine_relu(_bf(x), _bf(w), b, alpha, beta))
    _close(jax.jit(fn)(x), want)


@requires_native
@PATHS
@pytest.mark.parametrize("shape", [(2, 6, 17), (1, 20, 45)])
def test_bf16_two_inputs_bounds_and_head(rng, path, shape):
    """[x0, x1] without concatenation, zero outside each image's bounds, fused float32 1x1 head."""
    x, w, b, alpha, beta = _operands(rng, shape, 64, 32)
    x0, x1 = x[..., :32], x[..., 32:]
    n, ny, nx = shape
    bounds = np.array([[1, ny - 2, 3, nx - 1], [0, ny, 0, nx]] if ny > 10 else [[2, ny, 0, 13], [0, 0, 0, 0]],
                      np.int32)[:n]
    valid = np.zeros(shape + (1,), np.float32)
    for k, (r0, r1, c0, c1) in enumerate(bounds):
        valid[k, r0:r1, c0:c1] = 1.0
    want = np.asarray(native.conv3x3_affine_relu(_bf(x0), _bf(w), b, alpha, beta, x1=_bf(x1), bounds=bounds))
    got = native.conv3x3_affine_relu_bf16(x0, w, b, alpha, beta, x1=x1, bounds=bounds, path=path)
    _close(got, want)
    assert not np.asarray(got, np.float32)[valid[..., 0] == 0].any()
    hw, hb = rng.standard_normal(32).astype(np.float32), rng.standard_normal(1).astype(np.float32)
    head = native.conv3x3_affine_relu(_bf(x0), _bf(w), b, alpha, beta, x1=_bf(x1), bounds=bounds,
                                      epilogue=(hw, hb, True))
    got = native.conv3x3_affine_relu_bf16(x0, w, b, alpha, beta, x1=x1, bounds=bounds, path=path,
                                          epilogue=(hw, hb, True))
    assert got.dtype == jnp.float32 and got.shape == shape + (1,)
    np.testing.assert_allclose(np.asarray(got), np.asarray(head), rtol=0, atol=KERNEL_ATOL)


@requires_native
@PATHS
@pytest.mark.parametrize("shape, ci, co", [((2, 3, 5), 64, 32), ((1, 7, 50), 64, 64), ((1, 1, 1), 32, 32),
                                           ((1, 2, 3), 6, 32)])
def test_bf16_upconv_matches_fp32(rng, path, shape, ci, co):
    x = rng.standard_normal(shape + (ci,)).astype(np.float32)
    k = rng.standard_normal((2, 2, ci, co)).astype(np.float32)
    bias = rng.standard_normal(co).astype(np.float32)
    got = jax.jit(lambda *a: native.upconv2x2_bf16(*a, path=path))(x, k, bias)
    want = np.asarray(native.upconv2x2(_bf(x), _bf(k), bias))
    assert got.dtype == jnp.bfloat16 and got.shape == want.shape
    _close(got, want)


@requires_native
@PATHS
@pytest.mark.parametrize("model", ["ACS-WFC", "ACS-WFC-F606W-3-32", "ACS-WFC-F606W-2-32"])
def test_bf16_network_matches_flax_bf16(rng, path, model):
    """The fused bf16 network against UNet(compute_dtype=bfloat16), inside and outside a valid mask."""
    params = load_params(model)
    x = rng.normal(50.0, 20.0, size=(2, 48, 64, params.in_channels)).astype(np.float32) / params.scale
    x[..., 0] += 400.0 * (rng.random(x.shape[:-1]) < 0.01) / params.scale  # a few CR-like spikes
    valid = np.zeros((2, 48, 64, 1), np.float32)
    valid[0, :40, :56] = 1.0
    valid[1, 8:, 8:] = 1.0
    flax16 = params.module.clone(compute_dtype=jnp.bfloat16)
    want = np.asarray(flax16.apply(params.variables, x, valid=valid))
    with jax.default_matmul_precision("highest"):
        exact = np.asarray(params.module.apply(params.variables, x, valid=valid))
    fwd = jax.jit(lambda v, x, m: native_unet.forward(v, x, m, depth=params.depth, norm=params.norm,
                                                      head=params.head, bf16=path))
    got = np.asarray(fwd(params.variables, x, valid))
    inside = valid[..., 0] > 0
    scale = max(float(np.abs(exact).max()), 1.0)
    np.testing.assert_allclose(got[inside], want[inside], rtol=0, atol=NET_ATOL * scale)
    # one rounding per layer instead of three: no further from float32 than flax's bf16 network
    assert np.abs(got - exact)[inside].mean() <= 1.5 * np.abs(want - exact)[inside].mean() + 1e-6


@requires_native
def test_engine_chooses_bf16_path(monkeypatch):
    params = load_params("ACS-WFC")
    cpu = jax.devices("cpu")[:1]
    assert Engine(params, tile=64, batch=1, devices=cpu).isa == "fp32"
    monkeypatch.delenv("DEEPCR_JAX_NATIVE_ISA", raising=False)
    best = next((p for p in ("amx", "avx512bf16") if p in native.cpu_bf16_paths()), "fp32")
    assert Engine(params, tile=64, batch=1, dtype="bfloat16", devices=cpu).isa == best
    for path in native.cpu_bf16_paths():
        monkeypatch.setenv("DEEPCR_JAX_NATIVE_ISA", path)
        assert Engine(params, tile=64, batch=1, dtype="bfloat16", devices=cpu).isa == path


@requires_native
def test_forced_fp32_fallback(monkeypatch, rng):
    """DEEPCR_JAX_NATIVE_ISA=fp32: bf16 requests run the float32 kernels, float32 results."""
    monkeypatch.setenv("DEEPCR_JAX_NATIVE_ISA", "fp32")
    params = load_params("ACS-WFC")
    cpu = jax.devices("cpu")[:1]
    e16 = Engine(params, tile=64, batch=1, dtype="bfloat16", devices=cpu)
    e32 = Engine(params, tile=64, batch=1, devices=cpu)
    assert e16.isa == "fp32" and native.bf16_path() is None
    img = rng.normal(50.0, 10.0, size=(40, 52)).astype(np.float32) / params.scale
    np.testing.assert_array_equal(e16.run([img])[0], e32.run([img])[0])


def test_forcing_an_unknown_or_missing_path_raises(monkeypatch):
    monkeypatch.setenv("DEEPCR_JAX_NATIVE_ISA", "sse2")
    with pytest.raises(ValueError, match="DEEPCR_JAX_NATIVE_ISA"):
        native.bf16_path()
    missing = [p for p in ("amx", "avx512bf16") if p not in native.cpu_bf16_paths()]
    if missing:
        monkeypatch.setenv("DEEPCR_JAX_NATIVE_ISA", missing[0])
        with pytest.raises(RuntimeError, match=missing[0]):
            native.bf16_path()
