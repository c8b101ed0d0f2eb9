"""The converter: one layout function per layer type, strict key checks, round trip."""

from __future__ import annotations

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import requires_reference

from deepcr_jax import convert as cv
from deepcr_jax import weights as W
from deepcr_jax.arch import Architecture
from deepcr_jax.nets import Affine, BatchNorm, Conv, ConvTranspose2x2, UNet, WeightNormConv
from deepcr_jax.zoo import MODELS, list_models, weights_path

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def _full_float32_precision():
    """Layer-level comparisons at float32 (no TF32 when run on a GPU)."""
    with jax.default_matmul_precision("highest"):
        yield


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)


def test_conv_layout_matches_torch(rng):
    tconv = torch.nn.Conv2d(5, 7, 3, padding=1)
    x = rng.normal(size=(2, 9, 11, 5)).astype(np.float32)
    params = {
        "kernel": cv.conv_layout(tconv.weight.detach().numpy()),
        "bias": tconv.bias.detach().numpy(),
    }
    ours = Conv(7).apply({"params": params}, x)
    np.testing.assert_allclose(ours, _nhwc(tconv(_nchw(x))), rtol=1e-5, atol=1e-5)


def test_1x1_conv_layout_matches_torch(rng):
    tconv = torch.nn.Conv2d(6, 1, 1)
    x = rng.normal(size=(1, 5, 4, 6)).astype(np.float32)
    params = {"kernel": cv.conv_layout(tconv.weight.detach().numpy()), "bias": tconv.bias.detach().numpy()}
    ours = Conv(1, size=1).apply({"params": params}, x)
    np.testing.assert_allclose(ours, _nhwc(tconv(_nchw(x))), rtol=1e-5, atol=1e-6)


def test_conv_transpose_layout_matches_torch(rng):
    tup = torch.nn.ConvTranspose2d(8, 3, 2, stride=2)
    x = rng.normal(size=(2, 5, 6, 8)).astype(np.float32)
    params = {"kernel": cv.conv_transpose_layout(tup.weight.detach().numpy()), "bias": tup.bias.detach().numpy()}
    ours = ConvTranspose2x2(3).apply({"params": params}, x)
    assert ours.shape == (2, 10, 12, 3)
    np.testing.assert_allclose(ours, _nhwc(tup(_nchw(x))), rtol=1e-5, atol=1e-6)


def test_weight_norm_layout_matches_torch(rng):
    tconv = torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv2d(4, 6, 3, padding=1))
    with torch.no_grad():
        tconv.parametrizations.weight.original0.mul_(torch.from_numpy(rng.uniform(0.5, 2, (6, 1, 1, 1)).astype(np.float32)))
    g = tconv.parametrizations.weight.original0.detach().numpy()
    v = tconv.parametrizations.weight.original1.detach().numpy()
    x = rng.normal(size=(1, 7, 8, 4)).astype(np.float32)
    params = {"g": cv.weight_norm_g_layout(g), "v": cv.conv_layout(v), "bias": tconv.bias.detach().numpy()}
    ours = WeightNormConv(6).apply({"params": params}, x)
    np.testing.assert_allclose(ours, _nhwc(tconv(_nchw(x))), rtol=1e-5, atol=1e-5)
    # the float32 fold gives the same plain conv
    folded = W._weight_norm_float32(params)
    np.testing.assert_allclose(folded["kernel"], cv.conv_layout(tconv.weight.detach().numpy()), rtol=1e-6)


def test_batchnorm_inference_and_affine_match_torch(rng):
    tbn = torch.nn.BatchNorm2d(5, momentum=0.005)
    with torch.no_grad():
        tbn.weight.copy_(torch.from_numpy(rng.uniform(0.5, 2, 5).astype(np.float32)))
        tbn.bias.copy_(torch.from_numpy(rng.normal(size=5).astype(np.float32)))
        tbn.running_mean.copy_(torch.from_numpy(rng.normal(100, 30, 5).astype(np.float32)))
        tbn.running_var.copy_(torch.from_numpy(rng.uniform(10, 1000, 5).astype(np.float32)))
    tbn.eval()
    x = rng.normal(100, 30, size=(2, 6, 7, 5)).astype(np.float32)
    expected = _nhwc(tbn(_nchw(x)))
    variables = {
        "params": {"scale": tbn.weight.detach().numpy(), "bias": tbn.bias.detach().numpy()},
        "batch_stats": {"mean": tbn.running_mean.numpy(), "var": tbn.running_var.numpy()},
    }
    np.testing.assert_allclose(BatchNorm().apply(variables, x), expected, rtol=1e-5, atol=1e-5)
    affine = W._batchnorm_affine(variables["params"], variables["batch_stats"])
    np.testing.assert_allclose(Affine(affine["alpha"].shape[0]).apply({"params": affine}, x), expected, rtol=1e-5, atol=1e-5)


def test_batchnorm_training_mode_matches_torch(rng):
    """Batch statistics and the running-stat update (momentum 0.005, unbiased var)."""
    tbn = torch.nn.BatchNorm2d(3, momentum=0.005).train()
    x = rng.normal(5, 2, size=(4, 6, 6, 3)).astype(np.float32)
    expected = _nhwc(tbn(_nchw(x)))
    module = BatchNorm()
    variables = module.init(jax.random.key(0), x)
    y, updated = module.apply(variables, x, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(updated["batch_stats"]["mean"], tbn.running_mean.numpy(), rtol=1e-6)
    np.testing.assert_allclose(updated["batch_stats"]["var"], tbn.running_var.numpy(), rtol=1e-6)


def _random_state_dict(arch: Architecture, rng) -> dict[str, np.ndarray]:
    sd = {}
    for e in cv.torch_key_table(arch):
        sd["module." + e.torch_key] = rng.normal(size=e.torch_shape).astype(np.float32)
        if e.torch_key.endswith("running_var") or e.torch_key.endswith("weight_g"):
            sd["module." + e.torch_key] = np.abs(sd["module." + e.torch_key]) + 0.5
        if e.torch_key.endswith("running_var"):
            sd["module." + e.torch_key.replace("running_var", "num_batches_tracked")] = np.array(3.0, np.float32)
    return sd


@pytest.mark.parametrize(
    "arch",
    [
        Architecture(2, 4, 1, "batch", "sigmoid"),
        Architecture(3, 8, 2, "batch", "identity"),
        Architecture(2, 8, 1, "weight", "sigmoid"),
        Architecture(2, 4, 1, "none", "sigmoid"),
    ],
    ids=lambda a: f"{a.depth}-{a.hidden}-{a.norm}-{a.in_channels}ch",
)
def test_infer_architecture_and_inference_form(arch, rng):
    sd = _random_state_dict(arch, rng)
    assert cv.infer_architecture({k[7:]: v for k, v in sd.items()}) == arch
    variables, got = cv.convert_state_dict(sd)
    assert got == arch
    x = rng.normal(size=(1, 16, 12, arch.in_channels)).astype(np.float32)
    full = arch.module().apply(variables, x)
    inference, norm = W.inference_variables(variables, arch)
    infer = UNet(arch.depth, arch.hidden, norm=norm, head=arch.head).apply(inference, x)
    scale = float(jnp.max(jnp.abs(full))) + 1
    assert float(jnp.max(jnp.abs(infer - full))) <= 1e-4 * scale


def test_missing_unexpected_and_misshaped_keys_are_named(rng):
    arch = Architecture(2, 4, 1, "batch", "sigmoid")
    sd = _random_state_dict(arch, rng)
    missing = dict(sd)
    del missing["module.down1.mpconv.1.conv.3.weight"]
    with pytest.raises(cv.ConversionError, match=r"missing key 'down1\.mpconv\.1\.conv\.3\.weight'"):
        cv.convert_state_dict(missing, arch)
    extra = dict(sd, **{"module.up8.extra.weight": np.zeros(3, np.float32)})
    with pytest.raises(cv.ConversionError, match=r"unexpected key 'up8\.extra\.weight'"):
        cv.convert_state_dict(extra, arch)
    bad = dict(sd)
    bad["module.outc.conv.weight"] = np.zeros((1, 5, 1, 1), np.float32)
    with pytest.raises(cv.ConversionError, match=r"'outc\.conv\.weight' has shape \(1, 5, 1, 1\); expected \(1, 4, 1, 1\)"):
        cv.convert_state_dict(bad, arch)
    # a stray num_batches_tracked where there is no BatchNorm is unexpected too
    stray = dict(sd, **{"module.outc.conv.num_batches_tracked": np.array(1.0)})
    with pytest.raises(cv.ConversionError, match="unexpected key 'outc.conv.num_batches_tracked'"):
        cv.convert_state_dict(stray, arch)
    with pytest.raises(cv.ConversionError, match="not a deepCR UNet"):
        cv.infer_architecture({"foo.weight": np.zeros(3)})


def test_npz_round_trip_is_exact_and_pickle_free(tmp_path, rng):
    arch = Architecture(2, 4, 1, "batch", "sigmoid")
    variables, _ = cv.convert_state_dict(_random_state_dict(arch, rng))
    path = tmp_path / "m.npz"
    W.save_npz(path, variables, {"name": "m", "scale": 1.0})
    with np.load(path, allow_pickle=False) as data:
        assert all(k.count("/") >= 2 or k == "__meta__" for k in data.files)
    back, meta = W.load_npz(path)
    assert meta == {"name": "m", "scale": 1.0}
    a, b = W.flatten(variables), W.flatten(back)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert os.listdir(tmp_path) == ["m.npz"]  # no temporary left behind


def test_legacy_and_zip_formats_both_read(tmp_path, rng):
    arch = Architecture(2, 4, 1, "batch", "sigmoid")
    sd = {k: torch.from_numpy(v) for k, v in _random_state_dict(arch, rng).items()}
    legacy, zipped = tmp_path / "legacy.pth", tmp_path / "zip.pth"
    torch.save(sd, legacy, _use_new_zipfile_serialization=False)
    torch.save(sd, zipped)
    a = cv.load_torch_state_dict(legacy)
    b = cv.load_torch_state_dict(zipped)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert not any(k.startswith("module.") for k in a)


@requires_reference
@pytest.mark.parametrize("name", list_models(converted=True))
def test_shipped_npz_equals_fresh_conversion_of_pypi_pth(name):
    spec = MODELS[name]
    root = os.path.dirname(next(iter(importlib.util.find_spec("learned_models").submodule_search_locations)))
    src = os.path.join(root, spec.source)
    assert W.sha256_file(src) == spec.source_sha256
    fresh, arch = cv.convert_state_dict(cv.load_torch_state_dict(src))
    assert arch == spec.arch, "the zoo's architecture must be what the tensors say"
    shipped, meta = W.load_npz(weights_path(name))
    assert meta == spec.meta()
    a, b = W.flatten(fresh), W.flatten(shipped)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("name", list_models(converted=False))
def test_trained_zoo_model_is_what_its_entry_records(name):
    """A trained zoo model: the arrays the entry's digest names, the entry's metadata, and its training record."""
    spec = MODELS[name]
    assert not spec.converted and spec.source.startswith("python -m train --config ")
    variables, meta = W.load_npz(weights_path(name))
    assert W.sha256_arrays(variables) == spec.source_sha256
    assert {k: meta[k] for k in spec.meta()} == spec.meta()
    training = meta["training"]
    assert training["kind"] == spec.kind and (training["depth"], training["hidden"]) == (spec.arch.depth, spec.arch.hidden)
    assert training["scale"] == spec.scale and training["standardize"] == spec.standardize
    # the command in ``source`` names the preset and every override the run used
    preset, *overrides = spec.source.split("--config ")[1].split()
    assert preset == training["name"]
    for item in overrides:
        key, value = item.split("=")
        assert str(training[key]) == value, key
    assert meta["data"].startswith("deepcr_jax.simulate") and meta["validation"]["epoch"] >= 0


def test_sha256_arrays_sees_every_change():
    a = {"params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}}
    base = W.sha256_arrays(a)
    assert W.sha256_arrays({"params": {"w": a["params"]["w"].copy()}}) == base
    assert W.sha256_arrays({"params": {"w": a["params"]["w"].reshape(3, 2)}}) != base
    assert W.sha256_arrays({"params": {"v": a["params"]["w"]}}) != base
    b = a["params"]["w"].copy()
    b[1, 2] += 1
    assert W.sha256_arrays({"params": {"w": b}}) != base
