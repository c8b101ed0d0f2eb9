"""The CPU training kernels (deepcr_jax.training.fast_ops, native_conv) against XLA's gradients.

Small shapes that exercise the kernels' blocking (1-pixel images, rows
shorter and longer than a register block, one input channel, 16/32/64-wide
outputs), both BatchNorm phases and weight-norm networks; every gradient is
held to XLA's autodiff of the plain flax network within float32 rounding,
and a train step to be bit-identical from run to run.
"""

from __future__ import annotations

import os
import shutil
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepcr_jax.nets import BatchNorm, UNet, init_variables, max_pool2
from deepcr_jax.training import fast_ops, native_conv
from deepcr_jax.training.config import get_config
from deepcr_jax.training.state import create_state, make_module
from deepcr_jax.training.step import make_train_step

requires_native = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "c++")) is None or os.environ.get("DEEPCR_JAX_NATIVE") == "0",
    reason="no C++ compiler: the native kernels cannot be built here",
)

RTOL = 1e-4  # of the largest magnitude of each compared array


@pytest.fixture(autouse=True)
def _on_cpu():
    with jax.default_device(jax.devices("cpu")[0]):
        yield


def _close(got, want, rtol=RTOL, floor=0.0):
    """max |got - want| <= rtol * max(max |want|, floor)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    scale = max(np.max(np.abs(want)), floor, 1e-30)
    err = np.max(np.abs(got - want)) / scale
    assert err <= rtol, f"relative error {err:.2e} > {rtol:.0e}"


def _trees_close(got, want, rtol=RTOL):
    """Leaf by leaf as :func:`_close`. A leaf whose values are all tiny next to the tree's largest
    (the bias gradient of a conv followed by batch-statistics BatchNorm, zero but for rounding) is
    held to 1e-3 of that largest magnitude instead of its own."""
    flat_got = jax.tree_util.tree_leaves_with_path(got)
    flat_want = jax.tree_util.tree_leaves_with_path(want)
    assert [p for p, _ in flat_got] == [p for p, _ in flat_want]
    top = max((float(np.max(np.abs(np.asarray(w)))) for _, w in flat_want), default=0.0)
    for (path, g), (_, w) in zip(flat_got, flat_want):
        try:
            _close(g, w, rtol, floor=1e-3 * top)
        except AssertionError as err:
            raise AssertionError(f"{jax.tree_util.keystr(path)}: {err}") from None


@requires_native
@pytest.mark.parametrize(
    ("shape", "co"),
    [((2, 5, 30, 32), 32), ((1, 9, 17, 64), 64), ((2, 6, 7, 1), 32), ((1, 1, 1, 16), 16),
     ((1, 4, 3, 48), 48), ((2, 3, 40, 32), 64), ((1, 7, 26, 64), 32)],
)
def test_native_conv_matches_xla(shape, co):
    kx, kw, kb, kd = jax.random.split(jax.random.key(sum(shape) + co), 4)
    x = jax.random.normal(kx, shape)
    w = jax.random.normal(kw, (3, 3, shape[-1], co)) * 0.2
    b = jax.random.normal(kb, (co,))
    dy = jax.random.normal(kd, shape[:-1] + (co,))
    assert native_conv.supports(x, w)
    y, vjp = jax.vjp(jax.jit(native_conv.conv3x3), x, w, b)
    ref, ref_vjp = jax.vjp(native_conv.xla_conv3x3, x, w, b)
    _close(y, ref)
    for got, want in zip(jax.jit(vjp)(dy), ref_vjp(dy)):
        _close(got, want)


def test_native_conv_falls_back_to_xla():
    x = jnp.ones((1, 4, 4, 3))
    w = jnp.ones((3, 3, 3, 8))  # 8 output channels: not a multiple of 16
    assert not native_conv.supports(x, w)
    assert not native_conv.supports(x.astype(jnp.bfloat16), jnp.ones((3, 3, 3, 16), jnp.bfloat16))
    np.testing.assert_array_equal(native_conv.conv3x3(x, w, jnp.zeros(8)), native_conv.xla_conv3x3(x, w, jnp.zeros(8)))


@pytest.mark.parametrize("channels", [16, 32, 6])  # 6: the pure-JAX reductions
def test_batch_norm_relu_matches_flax(channels):
    c = channels
    x = jax.random.normal(jax.random.key(0), (3, 5, 37, c)) * 2 + 0.5  # 555 pixels: 3 units, the last partial
    scale = jax.random.uniform(jax.random.key(1), (c,), minval=0.5, maxval=1.5)
    bias = jax.random.normal(jax.random.key(2), (c,))
    module = BatchNorm(relu=True)
    stats = module.init(jax.random.key(3), x)["batch_stats"]

    def ref(x, scale, bias):
        y = module.apply({"params": {"scale": scale, "bias": bias}, "batch_stats": stats}, x, train=True,
                         mutable=["batch_stats"])[0]
        axes = (0, 1, 2)
        mean = jnp.mean(x, axis=axes)
        return y, mean, jnp.mean(jnp.square(x - mean.reshape(1, 1, 1, -1)), axis=axes)

    def new(x, scale, bias):
        return fast_ops.batch_norm_relu(x, scale, bias, 1e-5)

    out, vjp = jax.jit(lambda *a: jax.vjp(new, *a))(x, scale, bias)
    ref_out, ref_vjp = jax.vjp(ref, x, scale, bias)
    _trees_close(out, ref_out)
    keys = jax.random.split(jax.random.key(4), 3)
    cts = (jax.random.normal(keys[0], x.shape), jax.random.normal(keys[1], (c,)), jax.random.normal(keys[2], (c,)))
    for with_stats in (False, True):  # the statistics' cotangents: zero in training, but handled
        ct = cts if with_stats else (cts[0], jnp.zeros(c), jnp.zeros(c))
        _trees_close(vjp(ct), ref_vjp(ct))


@pytest.mark.parametrize("channels", [32, 6])
def test_frozen_batch_norm_relu_matches_flax(channels):
    """Phase 2 (running statistics): output and gradients, those of the statistics included."""
    c = channels
    x = jax.random.normal(jax.random.key(0), (2, 6, 30, c)) * 2 + 0.5
    scale = jax.random.uniform(jax.random.key(1), (c,), minval=0.5, maxval=1.5)
    bias = jax.random.normal(jax.random.key(2), (c,))
    mean = jax.random.normal(jax.random.key(3), (c,)) * 0.3
    var = jax.random.uniform(jax.random.key(4), (c,), minval=0.5, maxval=4.0)
    module = BatchNorm(relu=True)

    def ref(x, scale, bias, mean, var):
        return module.apply({"params": {"scale": scale, "bias": bias},
                             "batch_stats": {"mean": mean, "var": var}}, x, train=False)

    def new(x, scale, bias, mean, var):
        return fast_ops.batch_norm_relu(x, scale, bias, 1e-5, (mean, var))[0]

    args = (x, scale, bias, mean, var)
    out, vjp = jax.jit(lambda *a: jax.vjp(new, *a))(*args)
    ref_out, ref_vjp = jax.vjp(ref, *args)
    _close(out, ref_out)
    ct = jax.random.normal(jax.random.key(5), x.shape)
    _trees_close(vjp(ct), ref_vjp(ct))


@pytest.mark.parametrize("shape", [(2, 8, 6, 3), (1, 5, 7, 2)])
def test_max_pool_matches_xla_with_ties(shape):
    # values on a coarse grid, so that windows hold ties (the gradient goes to the first maximum)
    x = jnp.round(jax.random.normal(jax.random.key(0), shape) * 1.5)
    y, vjp = jax.vjp(fast_ops.max_pool2, x)
    ref, ref_vjp = jax.vjp(max_pool2, x)
    np.testing.assert_array_equal(y, ref)
    dy = jax.random.normal(jax.random.key(1), y.shape)
    np.testing.assert_array_equal(vjp(dy)[0], ref_vjp(dy)[0])


def _loss_and_grads(module, variables, x, target, train):
    def loss(params):
        vs = dict(variables, params=params)
        if train:
            out, upd = module.apply(vs, x, train=True, mutable=["batch_stats"])
        else:
            out, upd = module.apply(vs, x, train=False), {}
        z = out[..., 0]
        return jnp.mean(optax_bce(z, target)), upd

    return jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])


def optax_bce(z, t):
    return jnp.maximum(z, 0) - z * t + jnp.log1p(jnp.exp(-jnp.abs(z)))


@requires_native
@pytest.mark.parametrize(("norm", "train"), [("batch", True), ("batch", False), ("weight", False)])
def test_unet_gradients_match_xla(norm, train):
    """The whole 2-32 UNet (tiny images): loss, gradients and BN statistics agree with the flax graph's."""
    x = jax.random.normal(jax.random.key(0), (2, 16, 24, 1)) * 3
    target = (jax.random.uniform(jax.random.key(1), (2, 16, 24)) < 0.1).astype(jnp.float32)
    ref_module = UNet(2, 32, norm=norm, head="identity")
    variables = init_variables(ref_module, jax.random.key(2), x)
    if norm == "batch":  # running statistics away from their init, so that phase 2 uses nontrivial ones
        variables["batch_stats"] = jax.tree.map(lambda v: v + 0.3 * jnp.abs(jnp.sin(jnp.arange(v.size))),
                                                variables["batch_stats"])
    fast = UNet(2, 32, norm=norm, head="identity", ops=fast_ops.make_ops("native"))
    (loss, upd), grads = _loss_and_grads(fast, variables, x, target, train)
    (ref_loss, ref_upd), ref_grads = _loss_and_grads(ref_module, variables, x, target, train)
    _close(loss, ref_loss)
    _trees_close(grads, ref_grads)
    _trees_close(upd, ref_upd)


@requires_native
def test_train_step_uses_native_kernels_and_is_deterministic():
    config = get_config("mask_2_32", batch_size=2, crop=32, sim_shape=32, progress=False, plot_every=0)
    assert make_module(config).ops is not None  # "auto" on CPU
    assert make_module(config.replace(kernels="xla")).ops is None
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(100, 10, (2, 32, 32)).astype(np.float32),
             "cr": (rng.random((2, 32, 32)) < 0.05).astype(np.float32),
             "ignore": np.zeros((2, 32, 32), np.float32), "sky": np.full(2, 100, np.float32)}
    results = []
    for _ in range(2):
        step = make_train_step(config)
        state = create_state(config, jax.random.key(0))
        for k in range(2):
            state, _ = step(state, batch, jax.random.key(k))
        results.append(jax.tree.map(np.asarray, state))
    for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
        np.testing.assert_array_equal(a, b)
    # and the same numbers as the XLA graph's step, to float32 rounding (one step: Adam's first
    # update is lr * sign-like, so compare the gradients' effect after one step only loosely)
    ref_step = make_train_step(config.replace(kernels="xla"))
    ref_state = create_state(config, jax.random.key(0))
    fast_state = create_state(config, jax.random.key(0))
    ref_state, ref_m = ref_step(ref_state, batch, jax.random.key(0))
    fast_state, fast_m = make_train_step(config)(fast_state, batch, jax.random.key(0))
    _close(fast_m["loss"], ref_m["loss"])
    _trees_close(fast_state["batch_stats"], ref_state["batch_stats"])


def test_make_ops_choices():
    assert fast_ops.make_ops("xla") is None
    with pytest.raises(ValueError, match="kernels must be one of"):
        fast_ops.make_ops("fast")
    with pytest.raises(ValueError, match="kernels"):
        get_config("mask_2_32", kernels="cuda")
    two_devices = types.SimpleNamespace(devices=np.zeros(2))  # the kernels are not partitioned over a mesh
    assert fast_ops.make_ops("auto", two_devices) is None


@requires_native
def test_same_parameters_with_and_without_ops():
    """The ops change how the network computes, not its parameters (checkpoints, export, converter)."""
    x = jnp.ones((1, 8, 8, 1))
    for norm in ("batch", "weight"):
        a = init_variables(UNet(2, 32, norm=norm), jax.random.key(0), x)
        b = init_variables(UNet(2, 32, norm=norm, ops=fast_ops.make_ops("native")), jax.random.key(0), x)
        assert jax.tree.structure(a) == jax.tree.structure(b)
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_array_equal(u, v)
