"""FITS data: DQ/saturation/units rules (hst), chips and CRMASK + DQ writes (fits), clean_fits (files)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from conftest import shared_dir
from scipy.ndimage import binary_dilation

from deepcr_jax import hst
from deepcr_jax.files import clean_fits, default_output_path
from deepcr_jax.fits import read_fits, write_fits, write_hdulist
from deepcr_jax.hst import DEFAULT_DQ_FLAG, DEFAULT_DQ_IGNORE_BITS
from deepcr_jax.simulate import saturation_ignore, simulate_exposure

SHAPE = (64, 96)


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def make_flc(path, *, bunit="ELECTRONS", exptime=400.0, nan_block=False, dq_header_only=False):
    """A small ACS/WFC-like ``_flc``: PRIMARY + (SCI, ERR, DQ) x 2 chips, in electrons.

    DQ marks a hot pixel (16) at (5, 5), full-well saturation (256) at
    (40, 40) and an old AstroDrizzle CR (4096) at (10, 70). Returns the
    simulator's truth CR masks per chip.
    """
    primary = fits.PrimaryHDU()
    primary.header["TELESCOP"] = "HST"
    primary.header["INSTRUME"] = "ACS"
    if exptime is not None:
        primary.header["EXPTIME"] = exptime
    hdus, truths = [primary], []
    for ver in (1, 2):
        ex = simulate_exposure("extragalactic", SHAPE, seed=100 + ver, exptime=400.0)
        image = ex.image.copy()
        if bunit.upper().endswith("/S"):
            image = image / np.float32(exptime or 400.0)
        if nan_block and ver == 1:
            image[20:24, 30:34] = np.nan
            image[0, 0] = np.inf
        sci = fits.ImageHDU(image, name="SCI", ver=ver)
        sci.header["BUNIT"] = bunit
        sci.header["CRPIX1"] = (48.0, "reference pixel")
        sci.header["CTYPE1"] = "RA---TAN"
        sci.header["CCDCHIP"] = 3 - ver
        err = fits.ImageHDU(np.full(SHAPE, 5.0, np.float32), name="ERR", ver=ver)
        if dq_header_only:
            dq = fits.ImageHDU(name="DQ", ver=ver)
            dq.header["NPIX1"], dq.header["NPIX2"], dq.header["PIXVALUE"] = SHAPE[1], SHAPE[0], 0
        else:
            data = np.zeros(SHAPE, np.int16)
            data[5, 5], data[40, 40], data[10, 70] = 16, 256, 4096
            dq = fits.ImageHDU(data, name="DQ", ver=ver)
        hdus += [sci, err, dq]
        truths.append(ex.cr_mask)
    fits.HDUList(hdus).writeto(path)
    return truths


@pytest.fixture(scope="module")
def flc(tmp_path_factory):
    d = tmp_path_factory.mktemp("flc")
    path = d / "j8xi01abq_flc.fits"
    truths = make_flc(path)
    return path, truths


@pytest.fixture(scope="module")
def cleaned(flc):
    """``clean_fits`` run once (mask only) on the module's file."""
    path, truths = flc
    before = sha256(path)
    summary = clean_fits(path)
    return path, truths, before, summary


def test_default_output_name():
    assert str(default_output_path("/d/j8xi01abq_flc.fits.gz")) == "/d/j8xi01abq_flc_crmask.fits.gz"
    assert str(default_output_path("/d/j8xi01abq_flc.fits.fz")) == "/d/j8xi01abq_flc_crmask.fits.fz"
    assert str(default_output_path("/d/j8xi01abq_flc.fits")) == "/d/j8xi01abq_flc_crmask.fits"
    assert str(default_output_path("x.FITS", suffix="_c", outdir="/o")) == "/o/x_c.fits"
    assert str(default_output_path("frame.fit")) == "frame_crmask.fits"


def test_read_picks_both_chips_and_builds_ignore(tmp_path):
    path = tmp_path / "in_flc.fits"
    make_flc(path, nan_block=True)
    chips = read_fits(path)
    assert [c.label for c in chips] == ["SCI,1", "SCI,2"]
    assert [c.index for c in chips] == [1, 4] and [c.dq_index for c in chips] == [3, 6]
    c = chips[0]
    assert c.image.dtype == np.float32 and c.image.shape == SHAPE and c.header["CCDCHIP"] == 2
    assert c.ignore[5, 5], "hot pixel (DQ 16) must be ignored"
    assert not c.ignore[10, 70], "an old CR flag (DQ 4096) must not be ignored: the network re-detects it"
    assert c.ignore[37:44, 37:44].all(), "DQ saturation (256) is grown by a 7x7 box"
    assert c.ignore[20:24, 30:34].all() and c.ignore[0, 0]
    assert c.n_nonfinite == 17 and c.n_dq == 1 and c.n_saturated >= 49
    assert c.bunit == "ELECTRONS" and c.unit_scale == 1.0
    assert DEFAULT_DQ_IGNORE_BITS & 16 and not DEFAULT_DQ_IGNORE_BITS & (256 | 2048 | 4096 | 8192)
    # switching the rules off
    c0 = read_fits(path, dq_ignore_bits=0, saturation=None)[1]
    assert not c0.ignore.any() and c0.n_dq == 0 and c0.n_saturated == 0


def test_saturation_mask_is_one_rule_for_files_and_simulator():
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 80000, (40, 50)).astype(np.float32)
    image[image > 69000] = 100.0
    image[3, 4], image[39, 49], image[20, 0] = 70000.0, 75000.0, np.nan
    want = binary_dilation(image >= 70000.0, structure=np.ones((7, 7), bool))
    np.testing.assert_array_equal(hst.saturation_mask(image), want)
    np.testing.assert_array_equal(saturation_ignore(image), want)
    dq = np.zeros(image.shape, np.int16)
    dq[30, 30] = 2048
    dq[10, 40] = 16  # not a saturation bit
    with_dq = hst.saturation_mask(image, dq=dq)
    box = np.ones((7, 7), bool)
    np.testing.assert_array_equal(with_dq, want | binary_dilation(dq == 2048, structure=box))
    np.testing.assert_array_equal(hst.saturation_mask(image, grow=1), image >= 70000.0)
    with pytest.raises(ValueError, match="grow"):
        hst.saturation_mask(image, grow=4)


def test_write_hdulist_never_replaces_without_overwrite(tmp_path):
    out = tmp_path / "x.fits"
    out.write_bytes(b"previous")
    hdul = fits.HDUList([fits.PrimaryHDU(np.zeros((2, 2), np.float32))])
    with pytest.raises(FileExistsError):
        write_hdulist(hdul, out)
    assert out.read_bytes() == b"previous" and os.listdir(tmp_path) == ["x.fits"]
    write_hdulist(hdul, out, overwrite=True)
    with fits.open(out) as h:
        assert h[0].data.shape == (2, 2)


def test_model_names_reuse_one_cached_cleaner(cleaned, tmp_path):
    from deepcr_jax.api import cached_cleaner as _cleaner

    path, _, _, first = cleaned
    cached = _cleaner("ACS-WFC", None, None, None, "float32")
    before = cached.compilations
    again = clean_fits(path, tmp_path / "again.fits")
    assert cached.compilations == before, "a second file with the same model must not recompile"
    assert [c.n_cr for c in again.chips] == [c.n_cr for c in first.chips]


def test_clean_fits_writes_crmask_and_dq(cleaned):
    path, truths, _, summary = cleaned
    out = path.parent / "j8xi01abq_flc_crmask.fits"
    assert summary.path_out == str(out) and out.is_file()
    assert summary.model == "ACS-WFC" and summary.threshold == 0.5 and summary.inpaint is None
    with fits.open(path) as src, fits.open(out) as dst:
        names = [(h.name, h.ver) for h in dst]
        assert names == [(h.name, h.ver) for h in src] + [("CRMASK", 1), ("CRMASK", 2)]
        for k, chip in enumerate(summary.chips):
            ver = k + 1
            crm = dst["CRMASK", ver]
            assert crm.data.dtype == np.uint8 and set(np.unique(crm.data)) <= {0, 1}
            mask = crm.data.astype(bool)
            assert chip.n_cr == mask.sum() == crm.header["DCRNPIX"] > 10
            assert crm.header["CRPIX1"] == 48.0 and crm.header["DCRSCI"] == f"SCI,{ver}"
            dq_in, dq_out = src["DQ", ver].data, dst["DQ", ver].data
            assert dq_out.dtype == dq_in.dtype
            np.testing.assert_array_equal((dq_out & DEFAULT_DQ_FLAG) != 0, mask)
            np.testing.assert_array_equal(dq_out & ~DEFAULT_DQ_FLAG, dq_in)
            assert not mask[5, 5] and not mask[37:44, 37:44].any(), "ignored pixels are never CRs"
            np.testing.assert_array_equal(dst["SCI", ver].data, src["SCI", ver].data)
            for key in src["SCI", ver].header:
                assert dst["SCI", ver].header[key] == src["SCI", ver].header[key]
            # a sanity check of detection on the simulator's truth
            truth = truths[k]
            assert (mask & truth).sum() >= 0.6 * truth.sum()
            assert (mask & ~truth).sum() <= 0.01 * mask.size
        hdr = dst[0].header
        assert hdr["DCRMODEL"] == "ACS-WFC" and hdr["DCRTHRSH"] == 0.5 and hdr["DCRFLAG"] == 8192
        assert hdr["DCRINPNT"] == "NONE" and hdr["INSTRUME"] == "ACS"
        assert "deepcr-jax" in str(hdr["HISTORY"])


def test_input_is_never_modified_and_output_never_replaced(cleaned):
    path, _, before, summary = cleaned
    assert sha256(path) == before
    out_hash = sha256(summary.path_out)
    with pytest.raises(FileExistsError, match="already exists"):
        clean_fits(path, summary.path_out)
    with pytest.raises(FileExistsError, match="is the input"):
        clean_fits(path, path)
    assert sha256(path) == before and sha256(summary.path_out) == out_hash


def test_no_partial_output_on_failure(flc, tmp_path):
    path, _ = flc
    out = tmp_path / "out.fits"
    with pytest.raises(ValueError, match="unknown mask model 'no-such-model'.*ACS-WFC"):
        clean_fits(path, out, model="no-such-model")
    with pytest.raises(ValueError, match="threshold"):
        clean_fits(path, out, threshold=1.5)
    assert os.listdir(tmp_path) == []
    # an existing output survives a failed overwrite intact
    out.write_bytes(b"previous result")
    with pytest.raises(ValueError):
        clean_fits(path, out, model="no-such-model", overwrite=True)
    with pytest.raises(ValueError, match="masks\\[0\\] must have shape"):
        write_fits(path, out, read_fits(path), [np.zeros((3, 3), bool)] * 2, overwrite=True)
    assert out.read_bytes() == b"previous result" and os.listdir(tmp_path) == ["out.fits"]


def test_nan_pixels_and_inpainting(tmp_path):
    path = tmp_path / "nan_flc.fits"
    make_flc(path, nan_block=True)
    before = sha256(path)
    summary = clean_fits(path, tmp_path / "out.fits", inpaint="medmask")
    assert sha256(path) == before
    assert summary.chips[0].n_nonfinite == 17 and summary.inpaint == "medmask"
    assert summary.chips[0].n_ignored >= 17 + 1 + 49
    with fits.open(path) as src, fits.open(summary.path_out) as dst:
        for ver in (1, 2):
            mask = dst["CRMASK", ver].data.astype(bool)
            sci_in, sci_out = src["SCI", ver].data, dst["SCI", ver].data
            assert mask.any() and dst["SCI", ver].header["DCRCLEAN"]
            # only CR pixels change; NaN/inf and other ignored pixels keep their values
            np.testing.assert_array_equal(sci_out[~mask], sci_in[~mask])
            assert np.isfinite(sci_out[mask]).all() and (sci_out[mask] < sci_in[mask]).mean() > 0.9
        assert not dst["CRMASK", 1].data[20:24, 30:34].any()
        assert np.isnan(dst["SCI", 1].data[20:24, 30:34]).all()
        assert dst[0].header["DCRINPNT"] == "medmask"


def test_count_rates_are_converted_with_exptime(tmp_path, cleaned):
    _, _, _, ref = cleaned
    path = tmp_path / "rate_flc.fits"
    make_flc(path, bunit="ELECTRONS/S", exptime=400.0)
    chips = read_fits(path)
    assert chips[0].unit_scale == 400.0 and chips[0].bunit == "ELECTRONS/S"
    summary = clean_fits(path, tmp_path / "out.fits")
    # the same electrons as the ELECTRONS file, up to float32 rounding of /400 then *400
    for a, b in zip(summary.chips, ref.chips):
        assert abs(a.n_cr - b.n_cr) <= 2
    with fits.open(summary.path_out) as dst:
        assert dst["CRMASK", 1].header["DCRUSCAL"] == 400.0
    assert read_fits(path, units="as-is")[0].unit_scale == 1.0
    path2 = tmp_path / "rate_noexp_flc.fits"
    make_flc(path2, bunit="ELECTRONS/S", exptime=None)
    with pytest.raises(ValueError, match="EXPTIME"):
        read_fits(path2)


def test_header_only_dq_and_rerun_replaces_crmask(tmp_path):
    path = tmp_path / "hdr_flc.fits"
    make_flc(path, dq_header_only=True)
    first = clean_fits(path, tmp_path / "a.fits", dq_flag=4096)
    with fits.open(first.path_out) as h:
        dq = h["DQ", 1].data
        assert dq.shape == SHAPE and "PIXVALUE" not in h["DQ", 1].header
        np.testing.assert_array_equal(dq == 4096, h["CRMASK", 1].data == 1)
    second = clean_fits(first.path_out, tmp_path / "b.fits", threshold=0.9)
    with fits.open(second.path_out) as h:
        assert [x.name for x in h].count("CRMASK") == 2
        assert h["CRMASK", 1].header["DCRTHRSH"] == 0.9
        assert h["CRMASK", 1].data.sum() <= first.chips[0].n_cr
    with pytest.raises(ValueError, match="dq_flag"):
        clean_fits(path, tmp_path / "c.fits", dq_flag=3)


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        clean_fits(tmp_path / "missing.fits")
    table = tmp_path / "table.fits"
    fits.HDUList(
        [fits.PrimaryHDU(), fits.BinTableHDU.from_columns([fits.Column("a", "E", array=[1.0])])]
    ).writeto(table)
    with pytest.raises(ValueError, match="no 2-D image"):
        read_fits(table)
    junk = tmp_path / "junk.fits"
    junk.write_bytes(b"not a fits file at all" * 200)
    with pytest.raises(ValueError, match="not a readable FITS file"):
        read_fits(junk)


# --------------------------------------------------------------------------
# real frames


def _real(name):
    root = shared_dir()
    path = None if root is None else root / "data" / "real" / name
    if path is None or not path.is_file():
        pytest.skip(f"shared/data/real/{name} not found (set DEEPCR_JAX_SHARED)")
    return path


def test_gmos_known_tracks_via_cli(tmp_path, capsys):
    from deepcr_jax.cli import main

    src = _real("gmos.fits")
    before = sha256(src)
    out = tmp_path / "gmos_crmask.fits"
    assert main(["clean", str(src), "-o", str(out)]) == 0
    assert "SCI,1" in capsys.readouterr().out
    assert sha256(src) == before
    with fits.open(out) as h:
        mask = h["CRMASK", 1].data.astype(bool)
    tracks = np.zeros_like(mask)
    tracks[41:72, 142:161] = tracks[117:147, 35:43] = True
    assert mask[41:72, 142:161].sum() >= 40 and mask[117:147, 35:43].sum() >= 40
    assert (mask & tracks).sum() >= 0.9 * mask.sum()


def test_scaled_integer_primary_is_preserved(tmp_path):
    src = _real("a8280271.fits")
    summary = clean_fits(src, tmp_path / "mask_only.fits")
    assert [c.label for c in summary.chips] == ["PRIMARY,1"] and not summary.chips[0].dq_flagged
    with fits.open(src) as a, fits.open(summary.path_out) as b:
        assert b[0].header["BZERO"] == a[0].header["BZERO"] and b[0].header["BITPIX"] == 16
        np.testing.assert_array_equal(a[0].data, b[0].data)
        assert b["CRMASK", 1].data.shape == a[0].data.shape
    inpainted = clean_fits(src, tmp_path / "inpainted.fits", inpaint="medmask")
    with fits.open(src) as a, fits.open(inpainted.path_out) as b:
        mask = b["CRMASK", 1].data.astype(bool)
        # integer data stay integer with their BZERO; CR pixels get rounded inpainted values
        assert b[0].header["BITPIX"] == 16 and b[0].header["BZERO"] == a[0].header["BZERO"] and mask.any()
        np.testing.assert_array_equal(b[0].data[~mask], a[0].data[~mask])
        assert "integer BITPIX=16 kept" in " ".join(str(h) for h in b[0].header["HISTORY"])


def test_explicit_overwrite_of_the_input_and_cleaner_reuse(tmp_path):
    import deepcr_jax

    path = tmp_path / "inplace_flc.fits"
    make_flc(path)
    cleaner = deepcr_jax.load("ACS-WFC", inpaint="medmask")
    with pytest.raises(ValueError, match="cannot change a loaded Cleaner"):
        clean_fits(path, tmp_path / "x.fits", model=cleaner, inpaint="ACS-WFC-F606W-2-32")
    summary = clean_fits(path, path, model=cleaner, threshold=0.6, overwrite=True)
    assert summary.inpaint == "medmask" and summary.threshold == 0.6 and summary.path_out == str(path)
    with fits.open(path) as h:
        assert h["CRMASK", 2].header["DCRNPIX"] == summary.chips[1].n_cr and h[0].header["DCRTHRSH"] == 0.6
    assert sorted(os.listdir(tmp_path)) == ["inplace_flc.fits"]
