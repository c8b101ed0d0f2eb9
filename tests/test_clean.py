"""Contract 4: bad input, ignored/non-finite pixels, dtypes, the caller's array."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import synthetic_field

import deepcr_jax


@pytest.fixture(scope="module")
def field():
    img, cr = synthetic_field(np.random.default_rng(3), (96, 112), n_crs=20)
    return img, cr


@pytest.mark.parametrize(
    "bad, err, match",
    [
        (np.zeros(10), ValueError, r"2-D \(ny, nx\) or 3-D \(n, ny, nx\); got shape \(10,\)"),
        (np.zeros((2, 3, 4, 5)), ValueError, r"got shape \(2, 3, 4, 5\)"),
        (np.zeros((0, 5)), ValueError, "empty"),
        (np.zeros((4, 4), complex), TypeError, "complex"),
        (np.array([[1, "a"], [2, 3]], dtype=object), TypeError, "object"),
        (np.array([["a", "b"], ["c", "d"]]), TypeError, "numeric"),
        (np.ones((4, 4), bool), TypeError, "numeric"),
        (np.float32(3.0), ValueError, r"got shape \(\)"),
    ],
    ids=["1d", "4d", "empty", "complex", "object", "strings", "bool", "scalar"],
)
def test_bad_images_raise_naming_the_problem(bad, err, match):
    with pytest.raises(err, match=match):
        deepcr_jax.clean(bad)


def test_bad_arguments_raise_naming_the_problem(field):
    img, _ = field
    with pytest.raises(ValueError, match=r"ignore must have the image's shape \(96, 112\); got \(96, 111\)"):
        deepcr_jax.clean(img, ignore=np.zeros((96, 111), bool))
    for t in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\]"):
            deepcr_jax.clean(img, threshold=t)
    with pytest.raises(TypeError, match="threshold must be a number"):
        deepcr_jax.clean(img, threshold="0.5")
    with pytest.raises(ValueError, match=r"unknown mask model 'ACS-WFC-F999W'; valid names: ACS-WFC, "):
        deepcr_jax.clean(img, model="ACS-WFC-F999W")
    with pytest.raises(ValueError, match="inpaint must be None, 'medmask' or one of ACS-WFC-F606W-2-32"):
        deepcr_jax.clean(img, inpaint="median")
    with pytest.raises(ValueError, match="unknown mask model 'ACS-WFC-F606W-2-32'"):
        deepcr_jax.clean(img, model="ACS-WFC-F606W-2-32")  # an inpainter is not a mask model
    with pytest.raises(ValueError, match="tile must be a multiple of 8"):
        deepcr_jax.clean(img, tile=100)
    with pytest.raises(ValueError, match="dtype must be 'float32' or 'bfloat16'"):
        deepcr_jax.clean(img, dtype="float16")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        deepcr_jax.clean(img, model="/nonexistent/model.npz")


def test_caller_array_is_never_modified(field):
    img, _ = field
    img = img.copy()
    img[5, 5] = np.nan
    before = img.copy()
    ignore = np.zeros(img.shape, bool)
    ignore[10:20, 10:20] = True
    ignore_before = ignore.copy()
    deepcr_jax.clean(img, ignore=ignore, inpaint="medmask")
    deepcr_jax.clean(img, ignore=ignore, inpaint="ACS-WFC-F606W-2-32")
    np.testing.assert_array_equal(img, before)
    np.testing.assert_array_equal(ignore, ignore_before)


def test_integer_float64_float16_and_jax_inputs(field):
    img, _ = field
    ref = deepcr_jax.clean(img.astype(np.float32), binary=False)
    as_int = np.round(img).astype(np.int32)
    p_int = deepcr_jax.clean(as_int, binary=False)
    np.testing.assert_allclose(p_int, deepcr_jax.clean(as_int.astype(np.float32), binary=False))
    np.testing.assert_allclose(deepcr_jax.clean(img.astype(np.float64), binary=False), ref, atol=1e-6)
    p16 = deepcr_jax.clean(img.astype(np.float16), binary=False)
    assert p16.dtype == np.float32 and p16.shape == img.shape
    np.testing.assert_allclose(deepcr_jax.clean(jnp.asarray(img), binary=False), ref, atol=0)
    m = deepcr_jax.clean(np.clip(as_int, 0, None).astype(np.uint16))
    assert m.dtype == bool


def test_binary_mask_is_probability_above_threshold(field):
    img, cr = field
    p = deepcr_jax.clean(img, binary=False)
    for t in (0.1, 0.5, 0.9):
        np.testing.assert_array_equal(deepcr_jax.clean(img, threshold=t), p > t)
    assert deepcr_jax.clean(img).sum() > 0.5 * cr.sum()  # it finds the injected CRs


def test_nonfinite_pixels_are_ignored_filled_and_reported(field):
    img, _ = field
    img = img.copy()
    img[30, 40] = np.nan
    img[31, 41] = np.inf
    img[60:66, 70:76] = -np.inf
    ignore = np.zeros(img.shape, bool)
    ignore[0:3, 0:3] = True
    cleaner = deepcr_jax.load("ACS-WFC", inpaint="medmask")
    prob, cleaned = cleaner.clean(img, binary=False, ignore=ignore)
    bad = ~np.isfinite(img) | ignore
    assert np.all(prob[bad] == 0), "ignored pixels are never CRs"
    assert np.all(np.isfinite(prob)) and np.all(np.isfinite(cleaned))
    rep = cleaner.last_report
    assert rep.n_nonfinite == 2 + 36 and rep.n_ignored == 2 + 36 + 9
    # the fill uses the surroundings: inside the -inf block, values near the local sky
    sky = np.median(img[np.isfinite(img)])
    assert np.all(np.abs(cleaned[60:66, 70:76] - sky) < 10 * np.sqrt(sky) + 50)
    # the neighbours of a NaN are not flagged because of it
    clean_img = img.copy()
    clean_img[bad] = cleaned[bad]
    p_ref = deepcr_jax.clean(clean_img, binary=False)
    assert np.abs(prob - p_ref)[~bad].max() < 1e-5


def test_cleaned_image_replaces_only_the_grown_mask(field):
    """The mask grown by ``grow`` px (default 1) is replaced; every other pixel is the input's."""
    from scipy import ndimage

    img, _cr = field
    mask, cleaned = deepcr_jax.clean(img, inpaint="medmask")
    grown = ndimage.binary_dilation(mask, np.ones((3, 3), bool))
    np.testing.assert_array_equal(cleaned[~grown], img[~grown])
    assert np.all(cleaned[mask] < img[mask]), "CR pixels are replaced by lower, sky-like values"
    mask2, cleaned2 = deepcr_jax.clean(img, inpaint="ACS-WFC-F606W-2-32")
    np.testing.assert_array_equal(mask, mask2)
    np.testing.assert_array_equal(cleaned2[~grown], img[~grown])
    exact_mask, exact = deepcr_jax.load(inpaint="medmask", grow=0).clean(img)
    np.testing.assert_array_equal(exact_mask, mask)
    np.testing.assert_array_equal(exact[~mask], img[~mask])  # grow=0: the predicted mask only
    with pytest.raises(ValueError, match="grow must be a non-negative int"):
        deepcr_jax.load(inpaint="medmask", grow=-1)


def test_end_to_end_grown_mask_helps_on_a_hand_built_cr():
    """A CR with faint wings the threshold misses: growing the replaced region lowers the error."""
    rng = np.random.default_rng(5)
    sky = rng.normal(100.0, 5.0, (64, 64)).astype(np.float32)
    img = sky.copy()
    img[29:34, 29:34] += 40.0  # faint wings (8 sigma): partly below the threshold, still CR charge
    img[30:33, 30:33] += 400.0
    img[31, 31] += 3000.0  # the core
    truth = np.zeros(img.shape, bool)
    truth[29:34, 29:34] = True
    err = {}
    for g in (0, 1):
        _, out = deepcr_jax.load(inpaint="medmask", grow=g).clean(img)
        err[g] = float(np.mean((out[truth] - sky[truth]) ** 2))
    assert err[1] < err[0] / 4, err


def test_inpaint_function_and_stack_shapes(field):
    img, cr = field
    out = deepcr_jax.inpaint(img, cr)
    np.testing.assert_array_equal(out[~cr], img[~cr])
    stack = np.stack([img, img[::-1].copy()])
    masks, cleaned = deepcr_jax.clean(stack, inpaint="medmask")
    assert masks.shape == cleaned.shape == stack.shape and masks.dtype == bool
    with pytest.raises(ValueError, match="non-finite"):
        deepcr_jax.inpaint(np.where(cr, np.nan, img), np.zeros_like(cr))


def test_list_models_and_load_params_errors():
    names = deepcr_jax.list_models()
    converted, trained = deepcr_jax.list_models(converted=True), deepcr_jax.list_models(converted=False)
    assert len(converted) == 10 and sorted(converted + trained) == sorted(names)
    assert "ACS-WFC-jax-2-32" in trained
    assert set(deepcr_jax.list_models("inpaint", converted=True)) == {"ACS-WFC-F606W-2-32", "ACS-WFC-F606W-3-32"}
    with pytest.raises(ValueError, match="a mask network is needed"):
        deepcr_jax.load_params(deepcr_jax.zoo.weights_path("ACS-WFC-F606W-2-32"), kind="mask")
    with pytest.raises(ValueError, match="kind must be"):
        deepcr_jax.list_models("masks")


# --------------------------------------------------------------------------
# cases found by hand (issue 11): each failed before its fix


def _weights_like_files(tmp_path):
    """Files named .npz that are not weights: (path, expected error, message)."""
    from pathlib import Path

    from deepcr_jax.zoo import weights_path

    text = tmp_path / "text.npz"
    text.write_text("not weights")
    cut = tmp_path / "cut.npz"
    cut.write_bytes(Path(weights_path("ACS-WFC")).read_bytes()[:3000])
    folder = tmp_path / "folder.npz"
    folder.mkdir()
    return [
        (text, ValueError, "an .npz is a zip archive; this file is not"),
        (cut, ValueError, "not a deepcr-jax weights file"),
        (folder, FileNotFoundError, "does not exist \\(or is not a file\\)"),
        (tmp_path / "x.bin", FileNotFoundError, "does not exist"),
    ]


def test_bad_model_files_raise_one_clear_error(tmp_path, field):
    from pathlib import Path

    img, _ = field
    for path, err, match in _weights_like_files(tmp_path):
        for model in (str(path), Path(path)):
            with pytest.raises(err, match=match):
                deepcr_jax.clean(img[:16, :16], model=model)


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        ({"inpaint": True}, TypeError, "inpaint must be None, 'medmask', an inpainting zoo name or a .npz path; got True"),
        ({"image": np.zeros((8, 8), "m8[s]")}, TypeError, "real numeric array; got dtype timedelta64"),
        ({"image": np.full((8, 8), 1e300)}, ValueError, r"64 finite pixel\(s\) beyond float32's range"),
    ],
    ids=["inpaint-bool", "timedelta", "float64-overflow"],
)
def test_more_bad_arguments(kwargs, err, match):
    image = kwargs.pop("image", np.zeros((8, 8), np.float32))
    with pytest.raises(err, match=match):
        deepcr_jax.clean(image, **kwargs)


def test_inpaint_names_its_mask_argument(field):
    img, cr = field
    with pytest.raises(ValueError, match=r"mask must have the image's shape \(96, 112\); got \(112, 96\)"):
        deepcr_jax.inpaint(img, cr.T)


def test_masked_array_pixels_are_ignored(field):
    img, _ = field
    data = img.copy()
    data[40:46, 50:56] = 1e6  # a masked block of junk
    masked = np.ma.masked_array(data, mask=np.zeros(data.shape, bool))
    masked.mask[40:46, 50:56] = True
    before = masked.copy()
    cleaner = deepcr_jax.load(inpaint="medmask")
    mask, cleaned = cleaner.clean(masked)
    assert not mask[40:46, 50:56].any()
    assert cleaned[40:46, 50:56].max() < 1e4  # filled from the surroundings, not kept at 1e6
    assert cleaner.last_report.n_ignored == 36
    np.testing.assert_array_equal(masked.data, before.data)  # the caller's array is untouched
    np.testing.assert_array_equal(masked.mask, before.mask)


def test_jax_bfloat16_image_is_accepted(field):
    img, _ = field
    lo = jnp.asarray(img, jnp.bfloat16)
    np.testing.assert_array_equal(
        deepcr_jax.clean(lo, binary=False), deepcr_jax.clean(np.asarray(lo, np.float32), binary=False)
    )


def test_zoo_name_wins_over_a_file_of_that_name(tmp_path, monkeypatch):
    (tmp_path / "ACS-WFC").write_text("not weights")
    monkeypatch.chdir(tmp_path)
    assert deepcr_jax.load_params("ACS-WFC").name == "ACS-WFC"
