"""The ``deepcr-jax`` command line, run in-process through ``main(argv)``."""

from __future__ import annotations

import importlib.util
import os
import re
import warnings

import numpy as np
import pytest
from astropy.io import fits
from test_fits import make_flc, sha256

import deepcr_jax
from deepcr_jax.cli import main
from deepcr_jax.zoo import MODELS


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


@pytest.fixture(scope="module")
def flc_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    make_flc(d / "a_flc.fits")
    make_flc(d / "b_flc.fits")
    return d


def learned_models_dir():
    pytest.importorskip("torch")
    pytest.importorskip("deepCR")  # imports learned_models' dependencies first (circular import)
    spec = importlib.util.find_spec("learned_models")
    if spec is None:
        pytest.skip("deepCR's learned_models package not installed")
    return os.path.dirname(spec.origin)


def test_help_version_and_no_command(capsys):
    rc, out, _ = run(capsys, "--version")
    assert rc == 0 and deepcr_jax.__version__ in out
    rc, out, _ = run(capsys, "--help")
    assert rc == 0 and "clean" in out and "convert" in out
    rc, out, _ = run(capsys)
    assert rc == 2 and "usage" in out
    rc, _, err = run(capsys, "clean", "--threshold", "7")
    assert rc == 2 and "threshold" in err


def test_models_table(capsys):
    rc, out, _ = run(capsys, "models")
    assert rc == 0
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.split()}
    for name, spec in MODELS.items():
        row = lines[name]
        assert row[1:4] == [spec.kind, spec.label, spec.arch.norm]
        assert row[6] == ("yes" if spec.registered else "no")
    assert sum(s.converted for s in MODELS.values()) == 10 and lines["ACS-WFC-F606W-2-4"][2] == "2-4" and lines["example_model"][4] == "100"
    rc, out, _ = run(capsys, "models", "--kind", "inpaint")
    assert rc == 0 and "ACS-WFC-F606W-3-32" in out and "decam" not in out


def test_clean_files(capsys, flc_dir, tmp_path):
    a, b = flc_dir / "a_flc.fits", flc_dir / "b_flc.fits"
    hashes = sha256(a), sha256(b)
    rc, out, _ = run(capsys, "clean", str(a), str(b), "--outdir", str(tmp_path))
    assert rc == 0
    assert sorted(os.listdir(tmp_path)) == ["a_flc_crmask.fits", "b_flc_crmask.fits"]
    assert out.count("SCI,1") == 2 and out.count("SCI,2") == 2 and "2 of 2 files cleaned" in out
    n = [int(x.replace(",", "")) for x in re.findall(r"CR pixels +([\d,]+)", out)]
    with fits.open(tmp_path / "a_flc_crmask.fits") as h:
        assert n[:2] == [int(h["CRMASK", 1].data.sum()), int(h["CRMASK", 2].data.sum())]
    assert (sha256(a), sha256(b)) == hashes
    # existing outputs are refused (exit 2, one line per file), replaced with --overwrite
    rc, _, err = run(capsys, "clean", str(a), str(b), "--outdir", str(tmp_path))
    assert rc == 2 and err.count("already exists") == 2 and err.count("--overwrite") == 2
    assert "overwrite=True" not in err
    rc, out, _ = run(
        capsys, "clean", str(a), "--outdir", str(tmp_path), "--overwrite", "--inpaint", "medmask", "-q"
    )
    assert rc == 0 and out == ""
    with fits.open(tmp_path / "a_flc_crmask.fits") as h:
        assert h[0].header["DCRINPNT"] == "medmask"


def test_clean_default_output_suffix_and_dq_flag(capsys, tmp_path):
    src = tmp_path / "c_flc.fits"
    make_flc(src)
    rc, out, _ = run(capsys, "clean", str(src), "--threshold", "0.8", "--dq-flag", "0x1000")
    assert rc == 0 and "threshold 0.8" in out
    with fits.open(tmp_path / "c_flc_crmask.fits") as h:
        assert h[0].header["DCRFLAG"] == 4096 and h["CRMASK", 1].header["DCRTHRSH"] == 0.8
    rc, _, _ = run(capsys, "clean", str(src), "--suffix", "_crclean")
    assert rc == 0 and (tmp_path / "c_flc_crclean.fits").is_file()


def test_clean_user_errors(capsys, flc_dir, tmp_path):
    a, b = flc_dir / "a_flc.fits", flc_dir / "b_flc.fits"
    before = sha256(a)
    rc, _, err = run(capsys, "clean")
    assert rc == 2 and "deepcr-jax demo" in err
    rc, _, err = run(capsys, "clean", str(tmp_path / "nope.fits"))
    assert rc == 2 and "not found" in err and "nope.fits" in err
    rc, _, err = run(capsys, "clean", str(a), "--model", "ACS-WFX", "-o", str(tmp_path / "x.fits"))
    assert rc == 2 and "unknown mask model 'ACS-WFX'" in err and "WFC3-UVIS" in err
    rc, _, err = run(capsys, "clean", str(a), "--inpaint", "bogus", "-o", str(tmp_path / "x.fits"))
    assert rc == 2 and "medmask" in err
    rc, _, err = run(capsys, "clean", str(a), str(b), "-o", str(tmp_path / "x.fits"))
    assert rc == 2 and "one input" in err
    rc, _, err = run(capsys, "clean", str(a), "-o", str(a))
    assert rc == 2 and "input file" in err
    rc, _, err = run(capsys, "clean", str(a), "--suffix", "")
    assert rc == 2 and "input file" in err
    rc, _, err = run(capsys, "clean", str(a), "-o", str(tmp_path / "y.fits"), "--suffix", "_z")
    assert rc == 2 and "not allowed with" in err
    assert sha256(a) == before and os.listdir(tmp_path) == []
    # --outdir is created when missing (the README's example), refused when it is a file
    rc, _, _ = run(capsys, "clean", str(a), "--outdir", str(tmp_path / "new" / "cleaned"), "-q")
    assert rc == 0 and os.listdir(tmp_path / "new" / "cleaned") == ["a_flc_crmask.fits"]
    (tmp_path / "file").write_text("x")
    rc, _, err = run(capsys, "clean", str(a), "--outdir", str(tmp_path / "file"))
    assert rc == 2 and "not a directory" in err


def test_demo(capsys, tmp_path):
    out_fits = tmp_path / "demo.fits"
    rc, out, _ = run(capsys, "demo", "-o", str(out_fits))
    assert rc == 0
    tpr = float(re.search(r"true-positive rate +([\d.]+) %", out).group(1))
    fpr = float(re.search(r"false-positive rate +([\d.]+) %", out).group(1))
    assert tpr > 80 and fpr < 1
    with fits.open(out_fits) as h:
        assert [x.name for x in h] == ["PRIMARY", "SCI", "CRMASK", "TRUTH"]
        found = int(re.search(r"CR pixels flagged +([\d,]+)", out).group(1).replace(",", ""))
        assert h["CRMASK"].data.sum() == found
    rc, _, err = run(capsys, "demo", "-o", str(out_fits))
    assert rc == 2 and "already exists" in err
    rc, out, _ = run(capsys, "clean", "--example", "--inpaint", "medmask")
    assert rc == 0 and "true-positive rate" in out and "inpainting (medmask)" in out


# --------------------------------------------------------------------------
# convert (needs torch and the deepCR package's .pth files)


@pytest.mark.parametrize(
    "name, sub", [("ACS-WFC", "mask"), ("WFC3-UVIS", "mask"), ("ACS-WFC-F606W-3-32", "inpaint")]
)
def test_convert_real_pth(capsys, tmp_path, name, sub):
    src = os.path.join(learned_models_dir(), sub, f"{name}.pth")
    out = tmp_path / "mine.npz"
    rc, text, _ = run(capsys, "convert", src, "-o", str(out), "--name", "mine")
    assert rc == 0 and out.is_file()
    spec = MODELS[name]
    params = deepcr_jax.load_params(out)
    assert (params.name, params.kind, params.depth, params.hidden) == ("mine", spec.kind, spec.arch.depth, 32)
    assert f"{spec.arch.norm} norm" in text
    if name == "ACS-WFC":
        # the converted file gives the zoo model's probabilities
        rng = np.random.default_rng(3)
        img = rng.normal(100, 10, (40, 52)).astype(np.float32)
        img[20, 10:14] += 3000
        ours = deepcr_jax.clean(img, model=str(out), binary=False)
        zoo = deepcr_jax.clean(img, model="ACS-WFC", binary=False)
        np.testing.assert_allclose(ours, zoo, atol=1e-6)
        # ... and works from the command line
        fits_in = tmp_path / "d_flc.fits"
        make_flc(fits_in)
        rc, text, _ = run(capsys, "clean", str(fits_in), "--model", str(out))
        assert rc == 0 and "SCI,2" in text
    rc, _, err = run(capsys, "convert", src, "-o", str(out))
    assert rc == 2 and "already exists" in err
    assert run(capsys, "convert", src, "-o", str(out), "--overwrite")[0] == 0


def test_convert_errors(capsys, tmp_path):
    torch = pytest.importorskip("torch")
    src = os.path.join(learned_models_dir(), "mask", "ACS-WFC-F606W-2-4.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        sd = torch.load(src, map_location="cpu", weights_only=True)
    broken = dict(sd)
    del broken["module.outc.conv.bias"]
    broken["module.extra.weight"] = torch.zeros(3)
    bad = tmp_path / "broken.pth"
    torch.save(broken, bad)
    rc, _, err = run(capsys, "convert", str(bad))
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "'outc.conv.bias'" in err and "'extra.weight'" in err
    assert not (tmp_path / "broken.npz").exists()
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00 not a torch file" * 10)
    rc, _, err = run(capsys, "convert", str(junk))
    assert rc == 2 and "cannot read" in err and len(err.strip().splitlines()) == 1
    rc, _, err = run(capsys, "convert", str(tmp_path / "missing.pth"))
    assert rc == 2 and "not found" in err
    rc, _, err = run(capsys, "convert", src, "-o", str(tmp_path / "x.bin"))
    assert rc == 2 and ".npz" in err
    assert sorted(os.listdir(tmp_path)) == ["broken.pth", "junk.pth"]
