"""Tests for deepcr_jax.simulate (numpy/scipy only, fast)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from deepcr_jax import simulate as S

SMALL = (96, 96)


# --------------------------------------------------------------------------
# determinism, shapes, dtypes
# --------------------------------------------------------------------------


@pytest.mark.parametrize("field", S.FIELDS)
def test_shapes_dtypes_every_field(field):
    e = S.simulate_exposure(field, SMALL, seed=3)
    assert e.field == field
    for name in ("image", "clean", "cr_charge", "expected"):
        arr = getattr(e, name)
        assert arr.shape == SMALL and arr.dtype == np.float32, name
    for name in ("cr_mask", "ignore"):
        arr = getattr(e, name)
        assert arr.shape == SMALL and arr.dtype == np.bool_, name
    assert e.exptime == S.DEFAULT_EXPTIME[field]
    assert 0.10 * e.exptime <= e.sky <= 0.20 * e.exptime
    assert np.all(np.isfinite(e.image))
    # expected counts are at least the sky everywhere
    assert e.expected.min() >= np.float32(e.sky) * (1 - 1e-6)


@pytest.mark.parametrize("field", S.FIELDS)
def test_same_seed_identical_different_seed_differs(field):
    a = S.simulate_exposure(field, SMALL, seed=11, exptime=500.0)
    b = S.simulate_exposure(field, SMALL, seed=11, exptime=500.0)
    c = S.simulate_exposure(field, SMALL, seed=12, exptime=500.0)
    for name in ("image", "clean", "cr_mask", "ignore", "cr_charge", "expected"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.sky == b.sky
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.cr_mask, c.cr_mask)


def test_generator_seed_equivalent_to_int():
    a = S.simulate_exposure("extragalactic", SMALL, seed=5)
    b = S.simulate_exposure("extragalactic", SMALL, seed=np.random.default_rng(5))
    assert np.array_equal(a.image, b.image)


def test_field_types_differ_in_crowding():
    # resolved fields are much brighter than sparse extragalactic ones
    eg = [
        np.median(S.simulate_exposure("extragalactic", SMALL, seed=s, exptime=500.0, sky_rate=0.15).expected)
        for s in range(4)
    ]
    rg = [
        np.median(S.simulate_exposure("resolved", SMALL, seed=s, exptime=500.0, sky_rate=0.15).expected)
        for s in range(4)
    ]
    assert np.median(eg) < 1.2 * 75.0
    assert np.median(rg) > np.median(eg) + 20.0


# --------------------------------------------------------------------------
# noise, CR bookkeeping
# --------------------------------------------------------------------------


def test_noise_level_matches_poisson_plus_readnoise():
    e = S.simulate_exposure(
        "extragalactic", (256, 256), seed=2, exptime=600.0, sky_rate=0.15, readnoise=4.5, cr_rate=0.0
    )
    resid = (e.image - e.expected).astype(np.float64)
    sel = (e.expected < e.sky + 1.0) & ~e.ignore  # sky-dominated pixels
    mad_sigma = 1.4826 * np.median(np.abs(resid[sel] - np.median(resid[sel])))
    assert mad_sigma == pytest.approx(np.sqrt(90.0 + 4.5**2), rel=0.05)
    assert np.median(e.image[sel]) == pytest.approx(90.0, abs=1.0)
    # read noise makes some sky pixels of a low-sky frame negative
    low = S.simulate_exposure("extragalactic", (128, 128), seed=2, exptime=10.0, sky_rate=0.1, cr_rate=0.0)
    assert (low.image < 0).any()


def test_no_cosmics_gives_clean_image():
    e = S.simulate_exposure("globular", SMALL, seed=4, cr_rate=0.0)
    assert not e.cr_mask.any()
    assert not e.cr_charge.any()
    assert np.array_equal(e.image, e.clean)


def test_image_is_clean_plus_cr_charge_without_saturation():
    e = S.simulate_exposure("extragalactic", (128, 128), seed=8, exptime=1000.0)
    assert e.cr_mask.any() and not e.ignore.any()
    np.testing.assert_allclose(e.image, e.clean + e.cr_charge, atol=0.02)
    # truth mask is reproducible from the returned arrays
    m = S.cr_truth_mask(e.cr_charge, e.expected, e.readnoise)
    assert np.mean(m == e.cr_mask) > 0.999


def test_cr_rate_scales_with_exptime():
    shape = (256, 256)
    n100 = [
        S.simulate_exposure("extragalactic", shape, seed=s, exptime=100.0).n_cosmic_rays for s in range(8)
    ]
    n1000 = [
        S.simulate_exposure("extragalactic", shape, seed=s, exptime=1000.0).n_cosmic_rays for s in range(8)
    ]
    # events/cm^2/s * area (image + 16 px margin, 15 micron pixels) * t
    mean_1000 = S.CR_RATE * (256 + 32) ** 2 * (15e-4) ** 2 * 1000.0
    assert np.mean(n1000) == pytest.approx(mean_1000, rel=4 / np.sqrt(8 * mean_1000))
    assert np.mean(n1000) / np.mean(n100) == pytest.approx(10.0, rel=0.35)
    q100 = S.cosmic_ray_charge(shape, 100.0, seed=1).sum()
    q1000 = S.cosmic_ray_charge(shape, 1000.0, seed=1).sum()
    assert 3.0 < q1000 / q100 < 30.0


def test_cr_pixel_fraction_hst_like():
    fr = [
        S.simulate_exposure("extragalactic", (256, 256), seed=s, exptime=1000.0, sky_rate=0.15).cr_mask.mean()
        for s in range(6)
    ]
    assert 0.012 < np.mean(fr) < 0.025


def test_cosmic_ray_charge_deterministic_and_positive():
    a = S.cosmic_ray_charge((64, 64), 500.0, seed=9)
    b = S.cosmic_ray_charge((64, 64), 500.0, seed=9)
    assert np.array_equal(a, b)
    assert a.min() >= 0 and a.max() > 100.0


# --------------------------------------------------------------------------
# truth-mask rule on hand-built cases
# --------------------------------------------------------------------------


def test_truth_mask_seed_and_single_grow_pass():
    expected = np.full((12, 12), 100.0)  # sigma = 10 with zero read noise
    cr = np.zeros((12, 12))
    cr[5, 5] = 60.0  # > 5 sigma: seed
    cr[5, 6] = 20.0  # neighbour > 1.5 sigma: grown
    cr[6, 6] = 16.0  # diagonal neighbour > 1.5 sigma: grown
    cr[4, 4] = 14.0  # neighbour < 1.5 sigma: not grown
    cr[5, 7] = 40.0  # > 1.5 sigma but two px from the seed: grow is not iterated
    cr[9, 9] = 49.0  # isolated, just below 5 sigma
    m = S.cr_truth_mask(cr, expected, readnoise=0.0)
    want = np.zeros((12, 12), bool)
    want[5, 5] = want[5, 6] = want[6, 6] = True
    assert np.array_equal(m, want)
    assert np.array_equal(S.cr_truth_mask(cr, expected, 0.0, grow_radius=0), cr > 50.0)


def test_truth_mask_sigma_includes_readnoise():
    expected = np.full((5, 5), 64.0)
    cr = np.zeros((5, 5))
    cr[2, 2] = 45.0  # sigma = 8 -> seed (> 40); with rn=6 sigma = 10 -> not (< 50)
    assert S.cr_truth_mask(cr, expected, 0.0)[2, 2]
    assert not S.cr_truth_mask(cr, expected, 6.0)[2, 2]


def test_single_injected_cr_in_simulation_matches_rule():
    e = S.simulate_exposure("extragalactic", (64, 64), seed=1, exptime=400.0, cr_rate=0.0)
    cr = np.zeros((64, 64))
    cr[30, 30], cr[30, 31], cr[31, 30] = 2000.0, 25.0, 5.0
    sigma = np.sqrt(e.expected.astype(np.float64) + e.readnoise**2)
    m = S.cr_truth_mask(cr, e.expected, e.readnoise)
    assert m[30, 30]
    assert m[30, 31] == (25.0 > 1.5 * sigma[30, 31])
    assert m[31, 30] == (5.0 > 1.5 * sigma[31, 30])
    assert m.sum() == 1 + int(m[30, 31]) + int(m[31, 30])


# --------------------------------------------------------------------------
# saturation, bleeding, ignore mask
# --------------------------------------------------------------------------


def test_bleed_columns_hand_case_conserves_charge():
    img = np.zeros((9, 3))
    img[2, 1] = 350.0
    img[:, 0] = 10.0
    out = S.bleed_columns(img, full_well=100.0)
    assert np.array_equal(out[:, 1], [0, 100, 100, 100, 50, 0, 0, 0, 0])
    assert np.array_equal(out[:, 0], img[:, 0])  # untouched column
    assert out.sum() == pytest.approx(img.sum())
    # at the chip edge the charge flows the other way only
    edge = np.zeros((6, 1))
    edge[0, 0] = 250.0
    assert np.array_equal(S.bleed_columns(edge, 100.0)[:, 0], [100, 100, 50, 0, 0, 0])


def test_saturation_ignore_is_7x7_dilation():
    img = np.zeros((20, 20))
    img[10, 10] = 70000.0
    img[0, 0] = 69999.0
    ign = S.saturation_ignore(img)
    want = np.zeros((20, 20), bool)
    want[7:14, 7:14] = True
    assert np.array_equal(ign, want)


def test_simulated_saturation_bleeds_and_is_ignored():
    e = S.simulate_exposure(
        "resolved", (128, 128), seed=0, exptime=500.0, full_well=3000.0, saturation_level=2500.0, cr_rate=0.0
    )
    sat = e.image >= 2500.0
    assert sat.sum() > 20
    assert np.array_equal(e.ignore, binary_dilation(sat, np.ones((7, 7), bool)))
    assert e.image.max() <= 3000.0 + 6 * e.readnoise
    # bleeding: saturated pixels form vertical runs longer than they are wide
    cols = np.flatnonzero(sat.any(axis=0))
    run = max(sat[:, c].sum() for c in cols)
    assert run > 3


# --------------------------------------------------------------------------
# stamps, dataset I/O, example
# --------------------------------------------------------------------------


def test_make_stamps_mixed_and_save_load(tmp_path):
    b = S.make_stamps(3, "mixed", seed=1, shape=(48, 40))
    assert b.image.shape == (3, 48, 40) and b.image.dtype == np.float32
    assert b.cr_mask.dtype == np.bool_ and b.ignore.shape == (3, 48, 40)
    assert list(b.field) == list(S.FIELDS)
    for f, t in zip(b.field, b.exptime):
        lo, hi = S.EXPTIME_RANGE[str(f)]
        assert lo <= t <= hi
    path = tmp_path / "stamps.npz"
    S.save_dataset(path, b)
    with np.load(path, allow_pickle=False) as raw:
        assert raw["field"].dtype.kind == "U"
    c = S.load_dataset(path)
    for name in ("image", "clean", "cr_mask", "ignore", "cr_charge", "field", "exptime", "sky", "readnoise"):
        x, y = getattr(b, name), getattr(c, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name
    assert len(c) == 3


def test_make_stamps_prefix_independent_of_n():
    a = S.make_stamps(2, "resolved", seed=4, shape=(32, 32))
    b = S.make_stamps(3, "resolved", seed=4, shape=(32, 32))
    assert np.array_equal(a.image, b.image[:2])
    assert not np.array_equal(b.image[0], b.image[1])


def test_load_dataset_rejects_foreign_file(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, a=np.zeros(3))
    with pytest.raises(ValueError, match="path"):
        S.load_dataset(path)


def test_example_image_deterministic():
    a = S.example_image()
    b = S.example_image()
    assert a.image.shape == (512, 512) and a.exptime == 540.0 and a.field == "extragalactic"
    assert np.array_equal(a.image, b.image) and np.array_equal(a.cr_mask, b.cr_mask)
    assert 500 < a.cr_mask.sum() < 20000


def test_psf_fwhm_about_two_pixels():
    assert 1.7 < S.psf_fwhm() < 2.2


# --------------------------------------------------------------------------
# argument validation
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"field": "cluster"}, "field"),
        ({"shape": (0, 10)}, "shape"),
        ({"shape": (10,)}, "shape"),
        ({"exptime": -1.0}, "exptime"),
        ({"seed": -3}, "seed"),
        ({"seed": "abc"}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"readnoise": -1.0}, "readnoise"),
        ({"sky_rate": -0.1}, "sky_rate"),
        ({"cr_rate": float("nan")}, "cr_rate"),
        ({"full_well": 0.0}, "full_well"),
    ],
)
def test_simulate_exposure_bad_arguments(kwargs, name):
    args = {"field": "extragalactic", "shape": (16, 16), "seed": 0} | kwargs
    with pytest.raises(ValueError, match=name):
        S.simulate_exposure(**args)


def test_other_bad_arguments():
    with pytest.raises(ValueError, match="n must"):
        S.make_stamps(0, seed=0)
    with pytest.raises(ValueError, match="field"):
        S.make_stamps(2, ["globular"], seed=0)
    with pytest.raises(TypeError, match="batch"):
        S.save_dataset("/tmp/never_written.npz", {"image": 1})
    with pytest.raises(ValueError, match="expected"):
        S.cr_truth_mask(np.zeros((4, 4)), np.zeros((4, 5)), 1.0)
    with pytest.raises(ValueError, match="full_well"):
        S.bleed_columns(np.zeros((4, 4)), 0.0)
    with pytest.raises(ValueError, match="size"):
        S.saturation_ignore(np.zeros((4, 4)), size=4)
    with pytest.raises(ValueError, match="exptime"):
        S.cosmic_ray_charge((8, 8), 0.0, seed=0)
