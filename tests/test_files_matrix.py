"""Issue 11: files and command line under hostile use, one case per defect (fast: a fake cleaner).

Every case builds its own small files, runs the library or ``deepcr-jax
clean`` (in-process, or in a subprocess where a kill or a concurrent run is
the point), and checks that inputs are untouched (hash before/after), that
outputs are complete or absent, and that errors are one line naming the file.
"""

from __future__ import annotations

import gzip
import hashlib
import inspect
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from deepcr_jax.cli import main
from deepcr_jax.files import clean_fits
from deepcr_jax.fits import read_fits, write_hdulist

SHAPE = (32, 40)


class FakeCleaner:
    """A stand-in for deepcr_jax.Cleaner: flags pixels 200 above the median, inpaints median + 0.37."""

    inpaint_method = "medmask"

    def __init__(self, name="fake"):
        import types

        self.params = types.SimpleNamespace(name=name, threshold=0.5)

    def inpaint(self, image, mask):
        raise NotImplementedError

    def clean(self, image, threshold=None, binary=True, ignore=None, cleaned=None):
        med = np.nanmedian(image) if np.isfinite(image).any() else 0.0
        with np.errstate(invalid="ignore"):
            mask = (image > med + 200) & ~ignore
        out = np.where(mask, np.float32(med + 0.37), image).astype(np.float32)
        return (mask, out) if cleaned else mask


FAKE = "import numpy as np\n" + inspect.getsource(FakeCleaner)


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def image(seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    data = rng.normal(100, 5, SHAPE)
    data[3 + seed % 5, 4 : 6 + seed % 3] += 1000  # a cosmic ray, placed per chip
    return data.astype(dtype)


def make_file(path, *, chips=2, extver=True, dq=True, compressed=False, nextend=True, instrume="ACS", **kw):
    primary = fits.PrimaryHDU()
    primary.header["INSTRUME"] = instrume
    primary.header["DETECTOR"] = kw.get("detector", "WFC")
    hdus = [primary]
    for ver in range(1, chips + 1):
        data = kw.get("data", image)(ver)
        sci = fits.CompImageHDU(data, name="SCI") if compressed else fits.ImageHDU(data, name="SCI")
        if extver:
            sci.header["EXTVER"] = ver
        hdus.append(sci)
        if dq:
            q = np.zeros(SHAPE, np.int16)
            q[20, 10 * ver] = 16  # a hot pixel at a different place per chip
            dqh = fits.ImageHDU(q, name="DQ")
            if extver:
                dqh.header["EXTVER"] = ver
            hdus.append(dqh)
    if nextend:
        primary.header["NEXTEND"] = len(hdus) - 1
    fits.HDUList(hdus).writeto(path)
    return path


def cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


@pytest.fixture
def fake(monkeypatch):
    """``deepcr-jax clean`` with the fake cleaner; records the model names loaded."""
    loaded = []

    def load(args, model=None):
        loaded.append(model or args.model)
        return FakeCleaner(model or args.model)

    monkeypatch.setattr("deepcr_jax.cli.clean.load_cleaner", load)
    return loaded


def run_script(tmp_path, body, *args, timeout=120):
    script = tmp_path / "script.py"
    script.write_text(FAKE + CLI_PATCH + textwrap.dedent(body))
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run(
        [sys.executable, str(script), *map(str, args)],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


CLI_PATCH = """
import sys
import deepcr_jax.cli.clean as c
from deepcr_jax.cli import main
c.load_cleaner = lambda args, model=None: FakeCleaner()
"""


# --------------------------------------------------------------------------
# the cases


def case_compressed_inpaint_is_lossless(tmp_path, capsys, fake):  # item 2
    src = make_file(tmp_path / "x.fits.fz", compressed=True)
    before = sha(src)
    s = clean_fits(src, model=FakeCleaner())
    assert s.path_out == str(tmp_path / "x_crmask.fits.fz") and sha(src) == before
    with fits.open(src) as a, fits.open(s.path_out) as b:
        for ver in (1, 2):
            mask = b["CRMASK", ver].data.astype(bool)
            assert mask.any() and isinstance(b["SCI", ver], fits.CompImageHDU)
            np.testing.assert_array_equal(b["SCI", ver].data[~mask], a["SCI", ver].data[~mask])


def case_no_extver_pairs_by_position(tmp_path, capsys, fake):  # item 3
    src = make_file(tmp_path / "x.fits", extver=False)
    chips = read_fits(src)
    assert [c.extver for c in chips] == [1, 2] and [c.dq_index for c in chips] == [2, 4]
    assert chips[1].ignore[20, 20] and not chips[1].ignore[20, 10], "chip 2's ignore mask is from its own DQ"
    s = clean_fits(src, tmp_path / "o.fits", model=FakeCleaner())
    with fits.open(s.path_out) as h:
        assert [(x.name, x.ver) for x in h if x.name == "CRMASK"] == [("CRMASK", 1), ("CRMASK", 2)]
        for k, (sci, dq) in enumerate([(1, 2), (3, 4)]):
            mask = h["CRMASK", k + 1].data.astype(bool)
            np.testing.assert_array_equal((h[dq].data & 8192) != 0, mask)
            assert mask[3 + (k + 1) % 5].any()


def case_extver_ambiguous_is_refused(tmp_path, capsys, fake):  # item 3 (refuse, naming the file)
    src = make_file(tmp_path / "x.fits", extver=False)
    with fits.open(src) as h:
        h[1].header["EXTVER"] = 1
        h.writeto(tmp_path / "y.fits")
    with pytest.raises(ValueError, match="y.fits.*EXTVER"):
        read_fits(tmp_path / "y.fits")


@pytest.mark.parametrize("where", ["boundary", "header", "data"])
def case_truncated_file_fails(tmp_path, capsys, fake, where):  # items 4, 14
    src = make_file(tmp_path / "full.fits")
    with fits.open(src) as h:
        info = h.fileinfo(3)  # SCI,2
    cut = {"boundary": info["hdrLoc"], "header": info["hdrLoc"] + 1000, "data": info["datLoc"] + 1000}[where]
    bad = tmp_path / "x.fits"
    bad.write_bytes(src.read_bytes()[:cut])
    before = sha(bad)
    rc, _, err = cli(capsys, "clean", bad, "--outdir", tmp_path / "out")
    assert rc == 2 and "x.fits: truncated" in err and "reshape" not in err
    assert len(err.strip().splitlines()) <= 2 and sha(bad) == before
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []


def case_truncated_gzip_fails(tmp_path, capsys, fake):  # item 4, gzip stream
    src = make_file(tmp_path / "full.fits")
    bad = tmp_path / "x.fits.gz"
    bad.write_bytes(gzip.compress(src.read_bytes())[:-300])
    with pytest.raises(ValueError, match="truncated"):
        read_fits(bad)


def case_killed_writer_leaves_no_stale_temporaries(tmp_path, capsys, fake):  # item 7, SIGKILL
    out = tmp_path / "o.fits"
    body = """
    import os, signal, sys
    import numpy as np
    from astropy.io import fits
    from deepcr_jax.fits import write_hdulist
    def writeto(self, name, **kw):
        open(name, "wb").write(b"x" * 100000)
        os.kill(os.getpid(), signal.SIGKILL)
    fits.HDUList.writeto = writeto
    write_hdulist(fits.HDUList([fits.PrimaryHDU(np.zeros((4, 4)))]), sys.argv[1])
    """
    res = run_script(tmp_path, body, out)
    assert res.returncode == -signal.SIGKILL
    stale = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert len(stale) == 1 and not out.exists()
    write_hdulist(fits.HDUList([fits.PrimaryHDU(np.zeros((4, 4)))]), out)
    assert sorted(os.listdir(tmp_path)) == ["o.fits", "script.py"]


def case_sigterm_mid_write_exits_143_without_output(tmp_path, capsys, fake):  # item 7, SIGTERM
    src = make_file(tmp_path / "x.fits")
    body = """
    import os, signal
    from astropy.io import fits
    real = fits.HDUList.writeto
    def writeto(self, name, **kw):
        real(self, name, **kw)
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10 ** 6):  # the handler runs at the next bytecode
            pass
    fits.HDUList.writeto = writeto
    sys.exit(main(["clean", sys.argv[1], "-o", sys.argv[2]]))
    """
    res = run_script(tmp_path, body, src, tmp_path / "o.fits")
    assert res.returncode == 143 and "terminated" in res.stderr and "Traceback" not in res.stderr
    assert sorted(os.listdir(tmp_path)) == ["script.py", "x.fits"]


def case_output_appearing_while_writing_is_not_replaced(tmp_path, capsys, fake, monkeypatch):  # item 8
    src = make_file(tmp_path / "x.fits")
    out = tmp_path / "o.fits"
    real = fits.HDUList.writeto

    def writeto(self, name, **kw):
        real(self, name, **kw)
        out.write_bytes(b"someone else's")

    monkeypatch.setattr(fits.HDUList, "writeto", writeto)
    rc, _, err = cli(capsys, "clean", src, "-o", out)
    assert rc == 2 and "appeared while cleaning" in err and "--overwrite" in err
    assert out.read_bytes() == b"someone else's" and sorted(os.listdir(tmp_path)) == ["o.fits", "x.fits"]


def case_two_concurrent_runs_clean_each_file_once(tmp_path, capsys, fake):  # item 8
    files = [make_file(tmp_path / f"f{k}.fits") for k in range(6)]
    script = tmp_path / "script.py"
    script.write_text(FAKE + CLI_PATCH + 'sys.exit(main(["clean", *sys.argv[1:]]))\n')
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(sys.path))
    cmd = [sys.executable, str(script), *map(str, files), "--outdir", str(tmp_path / "out")]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in "ab"
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    cleaned = sum(int(o.split(" of 6 files cleaned")[0].split()[-1]) for o, _ in outs)
    assert cleaned == 6, outs
    assert sorted(os.listdir(tmp_path / "out")) == [f"f{k}_crmask.fits" for k in range(6)]


def case_gz_output_is_gzip(tmp_path, capsys, fake):  # item 9
    src = make_file(tmp_path / "x.fits")
    rc, _, _ = cli(capsys, "clean", src, "-o", tmp_path / "o.fits.gz", "-q")
    assert rc == 0 and (tmp_path / "o.fits.gz").read_bytes()[:2] == b"\x1f\x8b"
    with fits.open(tmp_path / "o.fits.gz") as h:
        assert h["CRMASK", 2].data.any()
    gz = tmp_path / "g.fits.gz"
    gz.write_bytes(gzip.compress(src.read_bytes()))
    assert clean_fits(gz, model=FakeCleaner()).path_out == str(tmp_path / "g_crmask.fits.gz")


@pytest.mark.parametrize("level", ["-1", "0", "nan"])
def case_bad_saturation_is_refused(tmp_path, capsys, fake, level):  # item 10
    src = make_file(tmp_path / "x.fits")
    rc, _, err = cli(capsys, "clean", src, "--saturation", level)
    assert rc == 2 and "--saturation" in err and os.listdir(tmp_path) == ["x.fits"]
    with pytest.raises(ValueError, match="saturation"):
        read_fits(src, saturation=float(level))
    with pytest.raises(ValueError, match="saturation"):
        clean_fits(src, model=FakeCleaner(), saturation=float(level))
    assert os.listdir(tmp_path) == ["x.fits"] and len(read_fits(src, saturation=float("inf"))) == 2


def case_directory_input_mirrors_subfolders(tmp_path, capsys, fake):  # items 14, 18
    d = tmp_path / "raw"
    (d / "night1").mkdir(parents=True)
    make_file(d / "a.fits")
    make_file(d / "night1" / "b.fits.fz", compressed=True)
    (d / "notes.txt").write_text("not fits")
    rc, out, _ = cli(capsys, "clean", d, "--outdir", tmp_path / "cleaned")
    assert rc == 0 and "2 of 2 files cleaned" in out
    assert (tmp_path / "cleaned" / "a_crmask.fits").is_file()
    assert (tmp_path / "cleaned" / "night1" / "b_crmask.fits.fz").is_file()
    rc, _, err = cli(capsys, "clean", tmp_path / "cleaned" / "night1" / "none")
    assert rc == 2 and "not found" in err


def case_quoted_glob_input(tmp_path, capsys, fake):  # item 18
    for k in range(3):
        make_file(tmp_path / f"g{k}_flc.fits")
    rc, out, _ = cli(capsys, "clean", str(tmp_path / "g*_flc.fits"), "--outdir", tmp_path / "o")
    assert rc == 0 and "3 of 3 files cleaned" in out and len(os.listdir(tmp_path / "o")) == 3
    rc, _, err = cli(capsys, "clean", str(tmp_path / "zz*.fits"))
    assert rc == 2 and "no file matches" in err


def case_skip_existing_resumes(tmp_path, capsys, fake):  # item 16
    a, b = make_file(tmp_path / "a.fits"), make_file(tmp_path / "b.fits")
    assert cli(capsys, "clean", a, "--outdir", tmp_path / "o", "-q")[0] == 0
    rc, out, _ = cli(capsys, "clean", a, b, "--outdir", tmp_path / "o", "--skip-existing")
    assert rc == 0 and "1 of 2 files cleaned (1 skipped, 0 failed)" in out
    rc, _, err = cli(capsys, "clean", a, "--outdir", tmp_path / "o", "--skip-existing", "--threshold", "0.7")
    assert rc == 2 and "other settings" in err and "--overwrite" in err and "overwrite=True" not in err
    rc, _, err = cli(capsys, "clean", a, "--outdir", tmp_path / "o")
    assert rc == 2 and "--skip-existing" in err and "overwrite=True" not in err


def case_own_outputs_are_skipped_unless_force(tmp_path, capsys, fake):  # item 17
    a = make_file(tmp_path / "a.fits")
    assert cli(capsys, "clean", a, "-q")[0] == 0
    rc, out, err = cli(capsys, "clean", str(tmp_path / "*.fits"), "--skip-existing")
    assert rc == 0 and "a_crmask.fits: skipped" in err and not (tmp_path / "a_crmask_crmask.fits").exists()
    assert "0 of 2 files cleaned (2 skipped" in out  # a_crmask.fits: an own output; a.fits: output current
    rc, _, _ = cli(capsys, "clean", tmp_path / "a_crmask.fits", "--force", "-q")
    assert rc == 0 and (tmp_path / "a_crmask_crmask.fits").is_file()


def case_summary_and_quiet(tmp_path, capsys, fake):  # item 19
    a = make_file(tmp_path / "a.fits")
    (tmp_path / "bad.fits").write_bytes(b"")
    rc, out, err = cli(capsys, "clean", a, tmp_path / "bad.fits")
    assert rc == 2 and "1 of 2 files cleaned (0 skipped, 1 failed)" in out and "CR pixels" in out
    assert "bad.fits: " in err and len(err.strip().splitlines()) == 1
    rc, out, err = cli(capsys, "clean", a, "-q", "--overwrite")
    assert rc == 0 and out == "" and err == ""


def case_no_dq_claims_no_flag_and_history_wraps_at_words(tmp_path, capsys, fake):  # item 20
    src = make_file(tmp_path / "x.fits", dq=False)
    s = clean_fits(src, tmp_path / "o.fits", model=FakeCleaner("a-model-name-" + "x" * 40))
    with fits.open(s.path_out) as h:
        assert "DCRFLAG" not in h[0].header and "DCRFLAG" not in h["CRMASK", 1].header
        lines = [str(v) for v in h[0].header["HISTORY"]]
        text = " ".join(lines)
        assert "8192" not in text and "no DQ extension" in text
        assert all(len(line) <= 72 for line in lines) and len(lines) > 1
        assert "threshold 0.5;" in text and "CRMASK extension per chip added" in text


def case_integer_science_keeps_its_type(tmp_path, capsys, fake):  # item 21
    src = make_file(tmp_path / "x.fits", data=lambda v: (image(v) * 100).astype(np.uint16))
    s = clean_fits(src, tmp_path / "o.fits", model=FakeCleaner())
    with (
        fits.open(src, do_not_scale_image_data=True) as a,
        fits.open(s.path_out, do_not_scale_image_data=True) as b,
    ):
        assert b[1].header["BITPIX"] == 16 and b[1].header["BZERO"] == 32768
        mask = b["CRMASK", 1].data.astype(bool)
        np.testing.assert_array_equal(b[1].data[~mask], a[1].data[~mask])
        assert "integer BITPIX=16 kept" in " ".join(str(v) for v in b[0].header["HISTORY"])


def case_float64_science_keeps_its_type(tmp_path, capsys, fake):  # found: float64 SCI became float32
    src = make_file(tmp_path / "x.fits", data=lambda v: image(v, np.float64) + 1e-9)
    s = clean_fits(src, tmp_path / "o.fits", model=FakeCleaner())
    with fits.open(src) as a, fits.open(s.path_out) as b:
        mask = b["CRMASK", 1].data.astype(bool)
        assert b[1].data.dtype.kind == "f" and b[1].data.dtype.itemsize == 8 and mask.any()
        np.testing.assert_array_equal(b[1].data[~mask], a[1].data[~mask])


@pytest.mark.parametrize(
    "instrume, detector, want, warned",
    [
        ("ACS", "WFC", "ACS-WFC", False),
        ("WFC3", "UVIS", "WFC3-UVIS", False),
        ("DECam", "", "decam", False),
        ("NIRCAM", "NRCA1", "ACS-WFC", True),
    ],
)
def case_model_auto(tmp_path, capsys, fake, instrume, detector, want, warned):  # item 22
    src = make_file(tmp_path / "x.fits", instrume=instrume, detector=detector)
    rc, out, err = cli(capsys, "clean", src, "--model", "auto")
    assert rc == 0 and fake == [want] and f"model {want}" in out
    assert ("NIRCAM" in err and "using ACS-WFC" in err) if warned else err == ""


def case_same_input_twice_and_symlink(tmp_path, capsys, fake):  # found: same file given twice -> error
    a = make_file(tmp_path / "a.fits")
    (tmp_path / "link.fits").symlink_to(a)
    rc, _, err = cli(capsys, "clean", a, a, "--outdir", tmp_path / "o")
    assert rc == 0 and "cleaned once" in err and os.listdir(tmp_path / "o") == ["a_crmask.fits"]
    before = sha(a)
    rc, _, _ = cli(capsys, "clean", tmp_path / "link.fits", "-q")
    assert rc == 0 and (tmp_path / "link_crmask.fits").is_file() and sha(a) == before


def case_input_is_never_the_output(
    tmp_path, capsys, fake
):  # found: --suffix '' --overwrite replaced the input
    a = make_file(tmp_path / "a.fits")
    before = sha(a)
    rc, _, err = cli(capsys, "clean", a, "--suffix", "", "--overwrite")
    assert rc == 2 and "is the input file" in err and sha(a) == before
    rc, _, err = cli(capsys, "clean", a, "-o", tmp_path / "." / "a.fits", "--overwrite")
    assert rc == 2 and "is the input file" in err and sha(a) == before


def case_zero_size_and_no_image(tmp_path, capsys, fake):  # found: clear one-line messages
    (tmp_path / "empty.fits").write_bytes(b"")
    fits.HDUList([fits.PrimaryHDU()]).writeto(tmp_path / "header.fits")
    rc, _, err = cli(capsys, "clean", tmp_path / "empty.fits", tmp_path / "header.fits")
    assert rc == 2 and "empty.fits: " in err and "no 2-D image" in err and len(err.strip().splitlines()) == 2


def case_unicode_and_spaces_and_all_nan(tmp_path, capsys, fake):  # found: names and NaN chips
    d = tmp_path / "répertoire avec espaces"
    d.mkdir()
    src = make_file(d / "é x.fits", data=lambda v: np.full(SHAPE, np.nan, np.float32) if v == 2 else image(v))
    rc, out, _ = cli(capsys, "clean", src, "--outdir", d)
    assert rc == 0 and "non-finite 1,280" in out
    with fits.open(d / "é x_crmask.fits") as h:
        assert not h["CRMASK", 2].data.any()


CASES = sorted(name for name in dir() if name.startswith("case_"))


def _params():
    for name in CASES:
        fn = globals()[name]
        marks = getattr(fn, "pytestmark", [])
        if marks:
            for mark in marks:
                for values in mark.args[1]:
                    vals = values if isinstance(values, tuple) else (values,)
                    yield pytest.param(
                        name,
                        dict(zip(mark.args[0].replace(" ", "").split(","), vals)),
                        id=f"{name[5:]}[{'-'.join(map(str, vals))}]",
                    )
        else:
            yield pytest.param(name, {}, id=name[5:])


@pytest.mark.parametrize("case, kwargs", list(_params()))
def test_files_matrix(case, kwargs, tmp_path, capsys, monkeypatch, fake):
    fn = globals()[case]
    extra = (
        {"monkeypatch": monkeypatch}
        if "monkeypatch" in fn.__code__.co_varnames[: fn.__code__.co_argcount]
        else {}
    )
    fn(tmp_path, capsys, fake, **extra, **kwargs)
