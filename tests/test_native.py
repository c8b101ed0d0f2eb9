"""The native CPU conv kernel (deepcr_jax.native) against XLA's convolution.

The parity tests (test_parity.py) run the zoo through the kernel against the
PyTorch reference; here the kernel itself is held to XLA's conv on shapes
that exercise its blocking (1-pixel images, rows shorter and longer than a
register block, odd sizes, one input channel, stacked batch dimensions),
for the wide kernels (multiples of 32 channels) and the narrow ones (4, 8,
16 channels, planar rows).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import deepcr_jax
from deepcr_jax import native
from deepcr_jax.engine import Engine
from deepcr_jax.model import load_params
from deepcr_jax.native import ops
from deepcr_jax.native import unet as native_unet
from deepcr_jax.native.unet import valid_bounds
from deepcr_jax.nets import ConvTranspose2x2, UNet, init_variables, max_pool2

requires_native = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "c++")) is None or os.environ.get("DEEPCR_JAX_NATIVE") == "0",
    reason="no C++ compiler: the native kernel cannot be built here",
)


@pytest.fixture(autouse=True)
def _on_cpu():
    """The kernels are CPU-only: run these tests there also where a GPU is the default."""
    with jax.default_device(jax.devices("cpu")[0]):
        yield


def _xla(x, w, b, alpha, beta):
    y = jax.lax.conv_general_dilated(
        x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest"
    )
    b, alpha, beta = (jnp.reshape(v, (1, 1, 1, -1)) for v in (b, alpha, beta))
    return jnp.maximum((y + b) * alpha + beta, 0.0)


def _operands(rng, shape, ci, co):
    x = rng.standard_normal(shape + (ci,)).astype(np.float32)
    w = (rng.standard_normal((3, 3, ci, co)) / np.sqrt(9 * ci)).astype(np.float32)
    b, alpha, beta = (rng.standard_normal(co).astype(np.float32) for _ in range(3))
    return x, w, b, alpha, beta


@requires_native
def test_kernel_builds():
    ok, why = native.status()
    assert ok, why
    assert os.path.exists(why)


def test_stale_builds_are_pruned(tmp_path):
    from deepcr_jax.native._build import STALE_BUILD_S, prune_stale_builds

    names = ("deepcr_native-keep.so", "deepcr_native-old.so", "deepcr_native-recent.so", "other-old.so")
    for name in names:
        (tmp_path / name).write_bytes(b"")
    old = os.stat(tmp_path / names[0]).st_mtime - STALE_BUILD_S - 60
    for name in (names[0], names[1], names[3]):
        os.utime(tmp_path / name, (old, old))
    removed = prune_stale_builds(str(tmp_path), str(tmp_path / names[0]))
    assert removed == [str(tmp_path / names[1])]
    assert sorted(os.listdir(tmp_path)) == sorted(set(names) - {names[1]})
    assert prune_stale_builds(str(tmp_path / "missing"), "") == []


def _nhwc_matches_xla(rng, shape, ci, co):
    """The NHWC kernel (jitted) against XLA's conv; returns ``(operands, result)``."""
    operands = _operands(rng, shape, ci, co)
    x = operands[0]
    got = np.asarray(jax.jit(native.conv3x3_affine_relu)(*operands))
    want = np.asarray(_xla(x.reshape((-1,) + x.shape[-3:]), *operands[1:])).reshape(got.shape)
    assert got.shape == shape + (co,) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    return operands, got


def _vmapped_matches_xla(rng, shape, ci, co):
    """The NHWC kernel under ``vmap`` over a leading axis against XLA's conv; returns ``(operands, want)``."""
    operands = _operands(rng, shape, ci, co)
    x = operands[0]
    got = jax.vmap(native.conv3x3_affine_relu, in_axes=(0, None, None, None, None))(*operands)
    want = _xla(x.reshape((-1,) + x.shape[-3:]), *operands[1:]).reshape(got.shape)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    return operands, want


@requires_native
@pytest.mark.parametrize(
    "shape, ci, co",
    [
        ((1, 1, 1), 32, 32),
        ((2, 5, 3), 1, 32),
        ((1, 2, 14), 32, 32),  # exactly one register block plus the two border columns
        ((1, 3, 15), 32, 64),
        ((1, 13, 29), 96, 64),
        ((3, 16, 16), 32, 32),
        ((2, 2, 7, 9), 64, 32),  # two leading batch dimensions
    ],
)
def test_kernel_matches_xla(rng, shape, ci, co):
    _nhwc_matches_xla(rng, shape, ci, co)


@requires_native
def test_kernel_under_vmap(rng):
    _vmapped_matches_xla(rng, (3, 1, 10, 20), 32, 32)


@requires_native
@pytest.mark.parametrize("shape", [(2, 6, 17), (1, 20, 31)])
def test_kernel_two_inputs_bounds_and_head(rng, shape):
    """[x0, x1] without concatenation, zero outside each image's bounds, fused 1x1 head."""
    x0, w, b, alpha, beta = _operands(rng, shape, 32 + 16, 32)
    x0, x1 = x0[..., :32], x0[..., 32:]
    n, ny, nx = shape
    bounds = np.array([[1, ny - 2, 3, nx - 1], [0, ny, 0, nx]][:n] if ny > 10 else [[2, ny, 0, 13], [0, 0, 0, 0]],
                      np.int32)[:n]
    valid = np.zeros(shape + (1,), np.float32)
    for k, (r0, r1, c0, c1) in enumerate(bounds):
        valid[k, r0:r1, c0:c1] = 1.0
    full = np.concatenate([x0, x1], axis=-1) * valid
    want = np.asarray(_xla(full, w, b, alpha, beta)) * valid
    got = native.conv3x3_affine_relu(x0, w, b, alpha, beta, x1=x1, bounds=bounds)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    hw, hb = rng.standard_normal(32).astype(np.float32), rng.standard_normal(1).astype(np.float32)
    z = want @ hw + hb
    for sigmoid, ref in ((False, z), (True, 1 / (1 + np.exp(-z)))):
        got = native.conv3x3_affine_relu(x0, w, b, alpha, beta, x1=x1, bounds=bounds, epilogue=(hw, hb, sigmoid))
        assert got.shape == shape + (1,)
        inside = valid[..., 0] > 0
        np.testing.assert_allclose(np.asarray(got)[..., 0][inside], ref[inside], rtol=1e-5, atol=1e-5)
        assert not np.asarray(got)[..., 0][~inside].any()


@requires_native
@pytest.mark.parametrize("shape, ci, co", [((2, 3, 5), 64, 32), ((1, 7, 26), 128, 64), ((1, 1, 1), 32, 32)])
def test_upconv_matches_transposed_conv(rng, shape, ci, co):
    x = rng.standard_normal(shape + (ci,)).astype(np.float32)
    params = {"kernel": rng.standard_normal((2, 2, ci, co)).astype(np.float32),
              "bias": rng.standard_normal(co).astype(np.float32)}
    with jax.default_matmul_precision("highest"):
        want = ConvTranspose2x2(co).apply({"params": params}, x)
    got = jax.jit(native.upconv2x2)(x, params["kernel"], params["bias"])
    assert got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-4)


def test_unsupported_width_is_refused():
    assert native.supports(32, 64) and native.supports(1, 4) and native.supports(8, 16)
    assert not native.supports(32, 12) and not native.supports(4, 2) and not native.supports(0, 4)
    assert native_unet.supported("affine", 4, 1) and native_unet.supported("affine", 16, 2)
    assert not native_unet.supported("affine", 12, 1) and not native_unet.supported("affine", 2, 1)


# -- the narrow kernels: 4, 8 or 16 output channels, planar rows ------------------------------------


def _bounds_and_valid(shape, bounds):
    valid = np.zeros(shape + (1,), np.float32)
    for k, (r0, r1, c0, c1) in enumerate(np.reshape(bounds, (-1, 4))):
        valid.reshape((-1,) + shape[-2:] + (1,))[k, r0:r1, c0:c1] = 1.0
    return valid


@requires_native
@pytest.mark.parametrize(
    "shape, ci, co",
    [
        ((1, 1, 1), 1, 4),  # a 1x1 image
        ((2, 5, 3), 1, 4),  # rows shorter than one vector
        ((1, 3, 32), 4, 4),  # exactly one column block
        ((1, 4, 70), 4, 8),  # two blocks and a tail
        ((1, 13, 29), 8, 16),  # 16 channels: two output blocks
        ((3, 16, 16), 3, 8),  # odd input channels
        ((2, 2, 7, 9), 5, 4),  # two leading batch dimensions
        ((1, 9, 47), 16, 16),
    ],
)
def test_narrow_kernel_matches_xla(rng, shape, ci, co):
    """The NHWC entry (through planar rows) and the planar one against XLA's conv."""
    (x, w, b, alpha, beta), got = _nhwc_matches_xla(rng, shape, ci, co)
    planar = jax.jit(ops.conv3x3_affine_relu_planar)(ops.to_planar(x), w, b, alpha, beta)
    assert planar.shape == shape[:-1] + (co, shape[-1])
    np.testing.assert_array_equal(np.asarray(ops.from_planar(planar)), got)


@requires_native
def test_narrow_kernel_under_vmap(rng):
    (x, w, b, alpha, beta), want = _vmapped_matches_xla(rng, (3, 1, 10, 37), 4, 8)
    xp = ops.to_planar(x)
    got = jax.vmap(ops.conv3x3_affine_relu_planar, in_axes=(0, None, None, None, None))(xp, w, b, alpha, beta)
    np.testing.assert_allclose(np.asarray(ops.from_planar(got)), np.asarray(want), rtol=1e-5, atol=1e-5)


@requires_native
@pytest.mark.parametrize("shape, co", [((2, 6, 17), 4), ((2, 20, 45), 8), ((2, 11, 70), 16)])
def test_narrow_two_inputs_bounds_and_head(rng, shape, co):
    """[x0, x1] without concatenation, zero outside each image's bounds, fused 1x1 head (any width)."""
    c0 = co
    x0, w, b, alpha, beta = _operands(rng, shape, c0 + co, co)
    x0, x1 = x0[..., :c0], x0[..., c0:]
    n, ny, nx = shape
    bounds = np.array([[1, ny - 2, 3, nx - 1], [0, ny, 0, nx]] if ny > 10 else [[2, ny, 0, 13], [0, 0, 0, 0]],
                      np.int32)[:n]
    valid = _bounds_and_valid(shape, bounds)
    full = np.concatenate([x0, x1], axis=-1) * valid
    want = np.asarray(_xla(full, w, b, alpha, beta)) * valid
    got = native.conv3x3_affine_relu(x0, w, b, alpha, beta, x1=x1, bounds=bounds)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    hw, hb = rng.standard_normal(co).astype(np.float32), rng.standard_normal(1).astype(np.float32)
    z = want @ hw + hb
    inside = valid[..., 0] > 0
    for sigmoid, ref in ((False, z), (True, 1 / (1 + np.exp(-z)))):
        got = native.conv3x3_affine_relu(x0, w, b, alpha, beta, x1=x1, bounds=bounds, epilogue=(hw, hb, sigmoid))
        assert got.shape == shape + (1,)
        np.testing.assert_allclose(np.asarray(got)[..., 0][inside], ref[inside], rtol=1e-5, atol=1e-5)
        assert not np.asarray(got)[..., 0][~inside].any()


@requires_native
def test_narrow_head_sigmoid_saturates(rng):
    """The kernel's exp: large pre-activations of either sign give 0 and 1, never inf/NaN."""
    x = np.zeros((1, 3, 40, 1), np.float32)
    x[0, :, :20] = 1.0
    w = np.zeros((3, 3, 1, 4), np.float32)
    w[1, 1, 0] = 1.0
    one, zero = np.ones(4, np.float32), np.zeros(4, np.float32)
    for scale in (1e-3, 1.0, 30.0, 87.0, 89.0, 200.0, 1e30):
        for sign in (1.0, -1.0):
            hw = np.array([sign * scale, 0, 0, 0], np.float32)
            head = (hw, np.zeros(1, np.float32), True)
            got = np.asarray(native.conv3x3_affine_relu(x, w, zero, one, zero, epilogue=head))
            want = 1 / (1 + np.exp(-np.clip(np.float64(hw[0]) * x[..., 0], -700, 700)))
            assert np.isfinite(got).all()
            np.testing.assert_allclose(got[..., 0], want, rtol=2e-6, atol=1e-30)


@requires_native
@pytest.mark.parametrize("shape, ci, co", [((1, 8, 8), 4, 8), ((2, 13, 71), 4, 8), ((1, 65, 34), 8, 16), ((1, 3, 3), 1, 4)])
def test_narrow_pooled_conv(rng, shape, ci, co):
    """pool=True: the conv of the 2x2 max pool (odd sizes floored), within bounds on the pooled grid."""
    x, w, b, alpha, beta = _operands(rng, shape, ci, co)
    n, ny, nx = shape
    pooled = np.asarray(max_pool2(jnp.asarray(x)))
    py, px = ny // 2, nx // 2
    assert pooled.shape == (n, py, px, ci)
    bounds = np.array([[0, py, 0, px], [1, py, 0, max(px - 3, 0)]], np.int32)[:n]
    valid = _bounds_and_valid((n, py, px), bounds)
    want = np.asarray(_xla(pooled * valid, w, b, alpha, beta)) * valid
    got = ops.conv3x3_affine_relu_planar(ops.to_planar(x), w, b, alpha, beta, bounds=bounds, pool=True)
    assert got.shape == (n, py, co, px)
    np.testing.assert_allclose(np.asarray(ops.from_planar(got)), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="x1"):
        ops.conv3x3_affine_relu_planar(ops.to_planar(x), w, b, alpha, beta, x1=ops.to_planar(x), pool=True)


@requires_native
@pytest.mark.parametrize(
    "shape, ci, co", [((2, 3, 5), 8, 4), ((1, 7, 33), 8, 4), ((1, 4, 64), 16, 8), ((1, 1, 1), 3, 16), ((2, 2, 3, 40), 4, 8)]
)
def test_narrow_upconv_matches_transposed_conv(rng, shape, ci, co):
    x = rng.standard_normal(shape + (ci,)).astype(np.float32)
    params = {"kernel": rng.standard_normal((2, 2, ci, co)).astype(np.float32),
              "bias": rng.standard_normal(co).astype(np.float32)}
    flat = x.reshape((-1,) + x.shape[-3:])
    with jax.default_matmul_precision("highest"):
        want = np.asarray(ConvTranspose2x2(co).apply({"params": params}, flat))
    got = jax.jit(native.upconv2x2)(x, params["kernel"], params["bias"])
    assert got.shape == shape[:-2] + (2 * shape[-2], 2 * shape[-1], co)
    np.testing.assert_allclose(np.asarray(got).reshape(want.shape), want, rtol=1e-5, atol=1e-4)
    batched = jax.vmap(native.upconv2x2, in_axes=(0, None, None))(x, params["kernel"], params["bias"])
    np.testing.assert_array_equal(np.asarray(batched), np.asarray(got))


@requires_native
def test_planar_kernels_refuse_wide_widths(rng):
    x, w, b, alpha, beta = _operands(rng, (1, 4, 4), 4, 32)
    with pytest.raises(ValueError, match="narrow"):
        ops.conv3x3_affine_relu_planar(ops.to_planar(x), w, b, alpha, beta)
    with pytest.raises(ValueError, match="narrow"):
        ops.upconv2x2_planar(ops.to_planar(x), w[:2, :2], b)


@requires_native
@pytest.mark.parametrize("co", [4, 32])
def test_kernels_refuse_bounds_outside_the_image(rng, co):
    """The validator shared by the kernels: bounds past the image are an error, not a read past it."""
    x, w, b, alpha, beta = _operands(rng, (1, 6, 8), 4, co)
    with pytest.raises(Exception, match="bounds must lie inside the image"):
        jax.block_until_ready(native.conv3x3_affine_relu(x, w, b, alpha, beta, bounds=np.array([[0, 7, 0, 8]], np.int32)))


@requires_native
@pytest.mark.parametrize("depth, hidden", [(3, 4), (2, 16), (3, 8), (2, 8)])
def test_fused_network_narrow_and_mixed_widths(rng, depth, hidden):
    """Networks of narrow levels only, and narrow and wide levels together (layout changes between them)."""
    module = UNet(depth=depth, hidden=hidden, norm="affine")
    assert native_unet.supported("affine", hidden, 1)
    x = rng.normal(size=(2, 40, 56, 1)).astype(np.float32)
    valid = np.zeros((2, 40, 56, 1), np.float32)
    valid[0, :32, :48] = 1.0
    valid[1, 8:, 8:] = 1.0
    variables = init_variables(module, jax.random.PRNGKey(1), x)
    with jax.default_matmul_precision("highest"):
        plain = np.asarray(module.apply(variables, x, valid=valid))
    fused = np.asarray(jax.jit(
        lambda v, x, m: native_unet.forward(v, x, m, depth=depth, norm="affine", head="sigmoid"))(variables, x, valid))
    inside = valid[..., 0] > 0
    np.testing.assert_allclose(fused[inside], plain[inside], rtol=0, atol=1e-5)
    assert not fused[~inside].any()


@requires_native
def test_narrow_network_ignores_bf16_request(rng):
    """deepCR-2-4 has no wide inner level: a bf16 request runs the float32 narrow kernels."""
    params = load_params("ACS-WFC-F606W-2-4")
    assert native_unet.bf16_path(params.hidden, params.depth) is None
    if native.bf16_path() is not None:
        assert native_unet.bf16_path(32, 2) == native.bf16_path()
        assert native_unet.bf16_path(16, 2) == native.bf16_path()  # down1 has 32 channels
    x = rng.normal(50.0, 20.0, size=(1, 32, 40, 1)).astype(np.float32) / params.scale

    def fwd(path):
        return np.asarray(native_unet.forward(params.variables, x, None, depth=params.depth, norm=params.norm,
                                              head=params.head, bf16=path))

    np.testing.assert_array_equal(fwd("amx"), fwd(None))


def _fused(params, variables, x, valid=None):
    """The native forward where it supports the network, else the flax module (the engine's choice)."""
    if not native_unet.supported(params.norm, params.hidden, params.in_channels):
        return params.module.apply(variables, x, valid=valid)
    return native_unet.forward(variables, x, valid, depth=params.depth, norm=params.norm, head=params.head)


@requires_native
@pytest.mark.parametrize("model", ["ACS-WFC", "ACS-WFC-F606W-3-32", "WFC3-UVIS", "ACS-WFC-F606W-2-4"])
def test_fused_network_equals_xla_network(rng, model):
    """Every conv block through the kernel (or its XLA fallback) == the plain flax network."""
    params = load_params(model)
    module = params.module
    assert isinstance(module, UNet)
    x = rng.normal(50.0, 20.0, size=(2, 40, 48, params.in_channels)).astype(np.float32) / params.scale
    valid = np.zeros((2, 40, 48, 1), np.float32)
    valid[0, :32, :40] = 1.0  # image edges inside the tile, on the pooling grid
    valid[1, 8:, 4:] = 1.0
    with jax.default_matmul_precision("highest"):
        plain = np.asarray(module.apply(params.variables, x, valid=valid))
    fused = jax.jit(lambda v, x, m: _fused(params, v, x, m))(params.variables, x, valid)
    inside = valid[..., 0] > 0  # outside the image the outputs are undefined
    scale = max(float(np.abs(plain).max()), 1.0)
    np.testing.assert_allclose(np.asarray(fused)[inside], plain[inside], rtol=0, atol=1e-5 * scale)
    # the whole tile inside the image (no valid mask) and a batch-padding slot (nothing valid)
    np.testing.assert_allclose(
        _fused(params, params.variables, x), module.apply(params.variables, x), rtol=0, atol=1e-5 * scale
    )
    empty = _fused(params, params.variables, x, np.zeros_like(valid))
    assert np.isfinite(np.asarray(empty)).all()


@requires_native
def test_fused_network_wider_than_one_register_block(rng):
    """hidden 64: the 1x1 head cannot ride in the kernel's epilogue and runs after it."""
    module = UNet(depth=2, hidden=64, norm="affine")
    x = rng.normal(size=(1, 24, 32, 1)).astype(np.float32)
    variables = init_variables(module, jax.random.PRNGKey(0), x)
    with jax.default_matmul_precision("highest"):
        plain = np.asarray(module.apply(variables, x))
    fused = np.asarray(jax.jit(
        lambda v, x: native_unet.forward(v, x, None, depth=2, norm="affine", head="sigmoid"))(variables, x))
    np.testing.assert_allclose(fused, plain, rtol=0, atol=1e-5)


def test_valid_bounds():
    valid = np.zeros((3, 12, 10, 1), np.float32)
    valid[0] = 1
    valid[1, 4:, :6] = 1
    np.testing.assert_array_equal(valid_bounds(valid), [[0, 12, 0, 10], [4, 12, 0, 6], [0, 0, 0, 0]])


@requires_native
def test_engine_uses_kernel_on_cpu():
    params = load_params("ACS-WFC")
    assert Engine(params, tile=64, batch=1, devices=jax.devices("cpu")[:1]).native
    # bfloat16 runs the native kernels too (the bf16 ones where the CPU has them: test_native_bf16.py)
    assert Engine(params, tile=64, batch=1, dtype="bfloat16", devices=jax.devices("cpu")[:1]).native
    narrow = load_params("ACS-WFC-F606W-2-4")  # widths 4 and 8: the narrow kernels
    engine = Engine(narrow, tile=64, batch=1, devices=jax.devices("cpu")[:1])
    assert engine.native and engine.isa == "fp32"


def test_disabled_by_environment(real_frames, tmp_path):
    """DEEPCR_JAX_NATIVE=0: XLA's convolution, same probabilities."""
    img = next(iter(real_frames.values()))[:96, :80].astype(np.float32)
    code = (
        "import sys, numpy as np, deepcr_jax; from deepcr_jax import native; "
        "ok, why = native.status(); assert not ok and 'DEEPCR_JAX_NATIVE' in why, why; "
        "img = np.load(sys.argv[1]); np.save(sys.argv[2], deepcr_jax.clean(img, binary=False))"
    )
    src, out = tmp_path / "in.npy", tmp_path / "out.npy"
    np.save(src, img)
    env = {**os.environ, "DEEPCR_JAX_NATIVE": "0"}
    subprocess.run([sys.executable, "-c", code, str(src), str(out)], env=env, check=True)
    np.testing.assert_allclose(deepcr_jax.clean(img, binary=False), np.load(out), rtol=0, atol=1e-5)


# -- the functional core (model.network_forward) on the native kernels --------------------------


def _xla_only(monkeypatch):
    """Make network_forward trace XLA's convolution only (the reference for these tests)."""
    monkeypatch.setattr(native, "available", lambda: False)


@requires_native
@pytest.mark.parametrize("model, kernels", [("ACS-WFC", ("deepcr_conv3x3_affine_relu", "deepcr_upconv2x2")),
                                            ("ACS-WFC-F606W-2-4", ("deepcr_conv3x3_narrow", "deepcr_upconv2x2_narrow"))])
def test_jit_predict_runs_native_kernels(rng, model, kernels):
    params = load_params(model)
    x = rng.normal(60.0, 6.0, (2, 37, 45)).astype(np.float32)
    hlo = jax.jit(deepcr_jax.predict).lower(params, x).as_text()
    assert all(k in hlo for k in kernels)


@requires_native
@pytest.mark.parametrize("model", ["ACS-WFC", "ACS-WFC-F606W-3-32", "ACS-WFC-F606W-2-4"])
def test_predict_native_jit_vmap_match_xla(rng, monkeypatch, model):
    params = load_params(model)
    x = rng.normal(60.0, 6.0, (3, 37, 45)).astype(np.float32)
    m = rng.random(x.shape) < 0.05 if params.kind == "inpaint" else None
    inside_user_jit = jax.jit(lambda p, x, m: deepcr_jax.predict(p, x, m) * 1.0)(params, x, m)
    if m is None:
        batched = jax.jit(jax.vmap(lambda im: deepcr_jax.predict(params, im[None])[0]))(x)
    else:
        batched = jax.jit(jax.vmap(lambda im, mk: deepcr_jax.predict(params, im[None], mk[None])[0]))(x, m)
    _xla_only(monkeypatch)
    want = np.asarray(deepcr_jax.predict(params, x, m))
    scale = max(float(np.abs(want).max()), 1.0)
    np.testing.assert_allclose(np.asarray(inside_user_jit), want, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(np.asarray(batched), want, rtol=0, atol=1e-5 * scale)


@requires_native
def test_grad_through_native_predict_equals_xla_grad(rng, monkeypatch):
    """custom_vjp: native forward, XLA's VJP backward; grads w.r.t. images and weights."""
    params = load_params("ACS-WFC")
    x = rng.normal(60.0, 6.0, (2, 24, 28)).astype(np.float32)

    def loss(variables, x):
        p = params.replace(variables=variables)
        return jnp.sum(deepcr_jax.predict(p, x) ** 2)

    got = jax.jit(jax.grad(loss, argnums=(0, 1)))(params.variables, x)
    _xla_only(monkeypatch)
    want = jax.grad(loss, argnums=(0, 1))(params.variables, x)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-4 * float(np.abs(w).max()))
