"""The one preprocessing: ``clean()`` and ``jit(predict)`` agree for every zoo model; predict's checks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import synthetic_field

import deepcr_jax
from deepcr_jax.zoo import list_models

SHAPES = [(37, 53), (64, 65), (130, 97)]


@pytest.mark.parametrize("model", list_models("mask"))
def test_clean_probability_equals_jit_predict(model, rng):
    params = deepcr_jax.load_params(model)
    predict = jax.jit(deepcr_jax.predict)
    for shape in SHAPES:
        img, _ = synthetic_field(rng, shape, n_stars=6, n_crs=5)
        img = img + 200.0  # a pedestal: standardisation (WFC3-UVIS) must do real work
        got = deepcr_jax.clean(img, model=model, binary=False)
        want = np.asarray(predict(params, img[None]))[0]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5, err_msg=f"{model} {shape}")


@pytest.mark.parametrize("model", list_models("inpaint"))
def test_inpaint_equals_jit_predict(model, rng):
    params = deepcr_jax.load_params(model)
    predict = jax.jit(deepcr_jax.predict)
    for shape in SHAPES[:2]:
        img, cr = synthetic_field(rng, shape, n_stars=6, n_crs=8)
        got = deepcr_jax.inpaint(img, cr, method=model)
        want = np.asarray(predict(params, img[None], cr[None]))[0]
        scale = float(np.abs(img).max())
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * scale, err_msg=f"{model} {shape}")
        # pixels outside the mask come back bit for bit, on both paths
        np.testing.assert_array_equal(got[~cr], img[~cr])
        np.testing.assert_array_equal(want[~cr], img[~cr])


def test_constant_image_standardised_model_is_finite_and_paths_agree():
    """std 0 (a constant image): taken as 1, so the network sees zeros — not NaN — on every path."""
    img = np.full((48, 40), 123.0, np.float32)
    got = deepcr_jax.clean(img, model="WFC3-UVIS", binary=False)
    want = np.asarray(deepcr_jax.predict(deepcr_jax.load_params("WFC3-UVIS"), img[None]))[0]
    assert np.isfinite(got).all() and np.isfinite(want).all()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)  # the mean differs by float32 rounding


def test_predict_checks_mask_shape_and_dtype(rng):
    params = deepcr_jax.load_params("ACS-WFC-F606W-2-32")
    img = rng.normal(100, 5, (1, 20, 24)).astype(np.float32)
    for bad in (np.zeros((1, 24, 20), bool), np.zeros((1, 480), bool)):
        with pytest.raises(ValueError, match=r"mask must have the images' shape \(1, 20, 24\)"):
            deepcr_jax.predict(params, img, bad)
    with pytest.raises(TypeError, match="real numeric"):
        deepcr_jax.predict(params, img.astype(np.complex64), np.zeros(img.shape, bool))
    with pytest.raises(TypeError, match="real numeric"):
        deepcr_jax.predict(deepcr_jax.load_params(), img.astype(object))
    with pytest.raises(ValueError, match="only for inpainting"):
        deepcr_jax.predict(deepcr_jax.load_params(), img, np.zeros(img.shape, bool))
    with pytest.raises(ValueError, match="need mask"):
        deepcr_jax.predict(params, img)


def test_predict_takes_bfloat16_images(rng):
    params = deepcr_jax.load_params()
    img = rng.normal(100, 5, (1, 20, 24)).astype(np.float32)
    lo = jnp.asarray(img, jnp.bfloat16)
    got = deepcr_jax.predict(params, lo)
    want = deepcr_jax.predict(params, np.asarray(lo.astype(jnp.float32)))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
