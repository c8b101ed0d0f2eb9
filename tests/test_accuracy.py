"""Smoke test of the accuracy benchmark (benchmarks/accuracy.py --quick).

Runs the script in a subprocess (3 stamps per field, coarse LACosmic sweep)
into a temporary folder and checks the files it writes, the structure of
``accuracy.json`` and basic sanity of the numbers; checks that ``--quick``
never writes into ``benchmarks/results``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("astroscrappy")
pytest.importorskip("skimage")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "accuracy.py"
RESULTS = ROOT / "benchmarks" / "results"
FIELDS = ("extragalactic", "globular", "resolved")
FPRS = ("0.0005", "0.005")
INPAINTERS = ("deepCR-2-32", "deepCR-3-32", "deepcr-jax-2-32", "medmask", "biharmonic")


def _results_state() -> dict:
    """Names and modification times of the accuracy files in benchmarks/results."""
    return {p.name: p.stat().st_mtime_ns for p in RESULTS.glob("accuracy*")}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """Run ``accuracy.py --quick`` once; return (output dir, parsed JSON, markdown text)."""
    out = tmp_path_factory.mktemp("accuracy")
    before = _results_state()
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"), MPLBACKEND="Agg")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--seed", "7", "--outdir", str(out)],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,  # ~100 s on 2 shared cores, most of it LACosmic
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert _results_state() == before, "--quick wrote into benchmarks/results"
    data = json.loads((out / "accuracy.json").read_text())
    return out, data, (out / "accuracy.md").read_text()


def test_files_written(quick_run):
    out, _, md = quick_run
    names = ["accuracy.md", "accuracy.json", "accuracy_roc_models.png"]
    names += [f"accuracy_roc_{f}.png" for f in FIELDS]
    for name in names:
        path = out / name
        assert path.is_file() and path.stat().st_size > 0, name
    for name in names:
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Table 2" in md and "Table 3" in md
    assert "--quick" in md  # the command is recorded


def test_json_structure(quick_run):
    _, data, _ = quick_run
    keys = ("config", "machine", "runtime_s", "seconds", "test_set", "detection", "inpainting", "end_to_end")
    for key in (*keys, "paper"):
        assert key in data
    cfg = data["config"]
    assert cfg["quick"] is True and cfg["seed"] == 7 and cfg["n_per_field"] == 3
    assert data["runtime_s"] > 0
    for f in FIELDS:
        assert data["test_set"][f]["n_stamps"] == 3
        det = data["detection"][f]
        assert "LACosmic" in det and "ACS-WFC" in det and "ACS-WFC-F606W-2-4" in det
        assert len(det) == 7  # the five converted ACS/WFC zoo mask models, the trained one, LACosmic
        assert len(det["LACosmic"]["roc"]["sigclip"]) == len(cfg["sigclips"])
        for res in det.values():
            assert set(res["tpr"]) == set(FPRS) == set(res["tpr_dilated"])
            n = len(res["roc"]["fpr"])
            assert n > 0 and len(res["roc"]["tpr"]) == n == len(res["roc"]["tpr_dilated"])
        assert set(data["inpainting"][f]) == set(INPAINTERS)


def test_rates_are_sane(quick_run):
    _, data, _ = quick_run
    for f in FIELDS:
        for name, res in data["detection"][f].items():
            roc = res["roc"]
            for key in ("fpr", "tpr", "tpr_dilated"):
                assert all(0.0 <= v <= 1.0 for v in roc[key]), (f, name, key)
            assert all(a <= b for a, b in zip(roc["fpr"], roc["fpr"][1:])), "ROC points sorted by FPR"
            # dilation can only add detections at the same setting
            assert all(d >= t - 1e-12 for t, d in zip(roc["tpr"], roc["tpr_dilated"]))
            for t in FPRS:
                assert 0.0 <= res["tpr"][t] <= res["tpr_dilated"][t] <= 1.0
            assert res["tpr"]["0.0005"] <= res["tpr"]["0.005"]


def test_deepcr_beats_lacosmic(quick_run):
    _, data, _ = quick_run
    for f in FIELDS:
        det = data["detection"][f]
        assert det["ACS-WFC"]["tpr"]["0.005"] > det["LACosmic"]["tpr"]["0.005"], f


def test_inpainting_mse_sane(quick_run):
    _, data, _ = quick_run
    for f in FIELDS:
        for lab, variants in data["inpainting"][f].items():
            for variant in ("paper", "own_crs_masked"):
                r = variants[variant]
                assert r["n_pixels"] > 0
                assert math.isfinite(r["mse_e2"]) and r["mse_e2"] > 0, (f, lab)
                assert r["mse_paper_units"] == pytest.approx(r["mse_e2"] / 1e4)
                # no inpainter can beat the noise of the observed pixels by much
                assert r["mse_e2"] > 0.5 * r["noise_floor_e2"] > 0, (f, lab)


def test_end_to_end_sane(quick_run):
    _, data, md = quick_run
    assert "End to end" in md
    for f in FIELDS:
        e2e = data["end_to_end"][f]
        assert set(e2e) == {"deepCR-2-32", "deepCR-3-32", "deepcr-jax-2-32", "medmask"}
        for lab, variants in e2e.items():
            r0, r1 = variants["dilate0"], variants["dilate1"]
            assert r0["n_cr"] > 0 and r0["n_cr_replaced"] > 0, (f, lab)
            assert r0["n_cr"] == r0["n_cr_replaced"] + r0["n_cr_missed"] == r1["n_cr"]
            assert math.isfinite(r0["mse_cr_e2"]) and r0["mse_cr_e2"] > 0
            assert r1["n_replaced"] > r0["n_replaced"] and r1["n_cr_missed"] <= r0["n_cr_missed"]
        # the mask is the same for every inpainter: the missed CRs' error too
        assert len({v["dilate0"]["mse_cr_missed_e2"] for v in e2e.values()}) == 1


def _load_script():
    spec = importlib.util.spec_from_file_location("accuracy_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quick_defaults_to_a_temporary_folder():
    acc = _load_script()
    out = acc.output_dir(acc.parse_args(["--quick"]))
    try:
        assert os.path.isdir(out) and not os.listdir(out)
        assert Path(out).resolve() != RESULTS.resolve()
        assert Path(out).resolve().is_relative_to(Path(tempfile.gettempdir()).resolve())
    finally:
        shutil.rmtree(out)
    given = acc.parse_args(["--quick", "--outdir", "somewhere"])
    assert given.outdir == "somewhere"
    assert acc.parse_args([]).outdir is None and not acc.parse_args([]).quick  # full run: results/


def test_lacosmic_reused_only_from_a_matching_run(quick_run):
    import astroscrappy

    out, data, _ = quick_run
    acc = _load_script()
    cfg = data["config"]
    keys = ("n_per_field", "seed", "field_seeds", "stamp_shape", "sigclips", "lacosmic")
    expect = {**{k: cfg[k] for k in keys}, "astroscrappy": astroscrappy.__version__}
    det, seconds = acc.reused_lacosmic(str(out / "accuracy.json"), expect, data["test_set"])
    assert det == {f: data["detection"][f]["LACosmic"] for f in FIELDS} and seconds > 0
    with pytest.raises(SystemExit, match="differ in: seed, sigclips"):
        acc.reused_lacosmic(str(out / "accuracy.json"), {**expect, "seed": 8, "sigclips": [3.0]}, data["test_set"])
    with pytest.raises(SystemExit, match="differ in: test_set"):
        acc.reused_lacosmic(str(out / "accuracy.json"), expect, {})
    with pytest.raises(SystemExit, match="not a readable accuracy.json"):
        acc.reused_lacosmic(str(out / "accuracy.md"), expect, data["test_set"])


def _core_peak_module():
    spec = importlib.util.spec_from_file_location("core_peak", ROOT / "benchmarks" / "core_peak.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_core_peak_finds_the_brightest_hidden_pixel(capsys):
    mod = _core_peak_module()
    image = np.zeros((3, 8, 8), np.float32)
    image[1, 2, 5], image[2, 6, 1], image[0, 0, 0] = 500.0, 900.0, 5000.0
    hidden = np.zeros(image.shape, bool)
    hidden[1, 2, 5] = hidden[2, 6, 1] = True  # stamp 0's bright pixel is not hidden
    assert mod.brightest_masked_core(image, hidden) == (2, 6, 1)
    mod.main(["ACS-WFC-F606W-2-32", "--n", "2", "--seed", "3", "--peaks", "20000", "40000"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("globular stamp #") and len(lines) == 3
    ratios = [float(v) for v in lines[2].split("|")[2].split(",")]
    assert len(ratios) == 2 and all(0 < r < 2 for r in ratios)  # a sane fraction of the hidden peak


def test_forced_cores_move_the_largest_cr_onto_the_peak(capsys):
    spec = importlib.util.spec_from_file_location("forced_cores", ROOT / "benchmarks" / "forced_cores.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    image = np.zeros((2, 12, 12), np.float32)
    image[0, 6, 6], image[0, 1, 1], image[1, 0, 11] = 800.0, 900.0, 700.0
    valid = np.ones(image.shape, bool)
    valid[0, 1, 1] = False  # a CR: not the peak
    donor = np.zeros(image.shape, bool)
    donor[0, 9:11, 2:5] = True  # the largest CR (6 px) ...
    donor[0, 2, 9] = True  # ... and a smaller one
    masks, peaks = mod.forced_core_masks(image, valid, donor, seed=0)
    assert peaks.tolist() == [[6, 6], [0, 11]]
    assert masks[0, 6, 6] and masks[0].sum() == 6  # the 2x3 blob, moved whole onto the peak
    ys, xs = np.nonzero(masks[0])
    assert np.ptp(ys) == 1 and np.ptp(xs) == 2
    assert masks[1].sum() == 1 and masks[1, 0, 11]  # no CR in the donor: the peak alone
    mod.main(["ACS-WFC-F606W-2-32", "--n", "2", "--seed", "3", "--fields", "globular", "resolved"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[1] == "model | globular | resolved" and lines[2].startswith("ACS-WFC-F606W-2-32 | ")
    mse = float(lines[2].split("|")[1].split()[0])
    assert 0 < mse < 1e4


def test_compare_inpaint_a_model_against_itself_and_another(capsys):
    spec = importlib.util.spec_from_file_location("compare_inpaint", ROOT / "benchmarks" / "compare_inpaint.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(["ACS-WFC-F606W-2-32", "ACS-WFC-F606W-2-32", "--n", "3", "--seed", "3", "--fields", "globular",
              "--n-boot", "50"])
    row = capsys.readouterr().out.strip().splitlines()[-1].split(" | ")
    assert row[:2] == ["3", "globular"] and row[2] == row[3] and row[4].startswith("1.00 [1.00, 1.00]")
    assert row[5] == "0.00" and row[6] == "0%"  # identical errors: never worse, never better
    mod.main(["ACS-WFC-F606W-2-32", "ACS-WFC-F606W-3-32", "--n", "2", "--seed", "3", "4", "--fields",
              "extragalactic", "--n-boot", "50"])
    rows = [r.split(" | ") for r in capsys.readouterr().out.strip().splitlines()[-3:]]
    assert [r[0] for r in rows] == ["3", "4", "pooled"] and all(r[1] == "extragalactic" for r in rows)
    for r in rows:
        ratio, lo, hi = (float(v) for v in r[4].replace("[", "").replace("]", "").replace(",", "").split())
        assert lo <= ratio <= hi and ratio > 0 and r[2] != r[3]
    # the pooled MSE weighs each seed's stamps by their scored pixels: it lies between the two seeds'
    mse = [float(r[2]) for r in rows]
    assert min(mse[:2]) <= mse[2] <= max(mse[:2])
