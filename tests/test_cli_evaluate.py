"""``deepcr-jax evaluate`` and :mod:`deepcr_jax.evaluate.compare`: models side by side on labelled stamps."""

from __future__ import annotations

import json

import numpy as np
import pytest

import deepcr_jax
from deepcr_jax.cli import main
from deepcr_jax.evaluate import donor_masks, make_test_set
from deepcr_jax.evaluate.compare import compare_detection, compare_inpainting
from deepcr_jax.training.data import to_fits


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """Six simulated 64² globular stamps written as ``deepcr-jax stamps`` writes a field."""
    t = make_test_set(6, 5, shape=(64, 64), fields=("globular",))["globular"]
    path = tmp_path_factory.mktemp("evaluate") / "field.fits"
    to_fits(path, t.image, t.cr_mask, t.ignore, t.sky)
    return path, t


def _run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


def test_evaluate_command_scores_models_on_stamps(held_out, tmp_path, capsys):
    path, t = held_out
    out_json = tmp_path / "scores.json"
    rc, out, err = _run(capsys, "evaluate", str(path), "--model", "ACS-WFC", "--inpaint", "ACS-WFC-F606W-2-32",
                        "--inpaint", "medmask", "--json", str(out_json))
    assert rc == 0, err
    assert "stamps: 6 of 64x64 from 1 FITS stamp files" in out and "FPR 0.05 %" in out
    assert "ratio to ACS-WFC-F606W-2-32" in out and f"wrote {out_json}" in out
    res = json.loads(out_json.read_text())
    # the same numbers as the library on the same stamps
    det = compare_detection(t.image, t.cr_mask, t.ignore, {"ACS-WFC": deepcr_jax.load("ACS-WFC")})
    assert res["detection"]["ACS-WFC"]["tpr"] == det["ACS-WFC"]["tpr"]
    inp = res["inpainting"]["models"]
    assert set(inp) == {"ACS-WFC-F606W-2-32", "medmask"} and "vs_first" in inp["medmask"]
    # the JSON is a new file: never replaced
    rc, _, err = _run(capsys, "evaluate", str(path), "--model", "ACS-WFC", "--json", str(out_json))
    assert rc == 2 and "already exists" in err


def test_detection_at_the_models_threshold_counts_the_pixels(held_out):
    _, t = held_out
    cleaner = deepcr_jax.load("ACS-WFC")
    r = compare_detection(t.image, t.cr_mask, t.ignore, {"m": cleaner}, n_boot=0)["m"]
    pred = cleaner.clean(t.image, ignore=t.ignore)
    valid = ~t.ignore
    tp, fp = np.sum(pred & t.cr_mask & valid), np.sum(pred & ~t.cr_mask & valid)
    assert r["tpr_at_threshold"] == pytest.approx(tp / np.sum(t.cr_mask & valid))
    assert r["fpr_at_threshold"] == pytest.approx(fp / np.sum(~t.cr_mask & valid))
    assert 0 < r["tpr"]["0.005"] <= 1


def test_inpainting_scores_only_hidden_valid_pixels(held_out):
    _, t = held_out
    cleaner = deepcr_jax.load("ACS-WFC", inpaint="medmask")
    hidden = donor_masks({"stamps": t.cr_mask}, 3)["stamps"][0]
    scored = hidden & ~t.cr_mask & ~t.ignore
    res = compare_inpainting(t.image, t.cr_mask, t.ignore, {"a": cleaner, "b": cleaner}, seed=3, n_boot=50)
    pred = cleaner.inpaint(t.image, hidden).astype(np.float64)
    expected = np.mean((pred - t.image)[scored] ** 2)
    assert res["n_pixels"] == scored.sum()
    assert res["models"]["a"]["mse_e2"] == pytest.approx(expected, rel=1e-9)
    assert res["models"]["b"]["vs_first"]["ratio"] == 1.0
    # an ignored pixel under a borrowed mask is not scored, whatever it holds
    img, ign = t.image.copy(), t.ignore.copy()
    i, y, x = np.argwhere(scored)[0]
    img[i, y, x], ign[i, y, x] = np.nan, True
    again = compare_inpainting(img, t.cr_mask, ign, {"a": cleaner}, seed=3)
    assert again["n_pixels"] == scored.sum() - 1 and np.isfinite(again["models"]["a"]["mse_e2"])
    assert not np.isnan(t.image).any()  # the caller's arrays are untouched


def test_evaluate_bad_input(held_out, tmp_path, capsys):
    path, t = held_out
    cases = [
        ((str(path),), "nothing to evaluate"),
        ((str(path), "--model", "nope"), "unknown mask model 'nope'"),
        ((str(tmp_path / "none*.fits"), "--model", "ACS-WFC"), "matches no files"),
        ((str(path), "--model", "ACS-WFC", "--model", "ACS-WFC"), "given twice"),
        ((str(path), "--lacosmic", "0"), "OBJLIM must be > 0"),
    ]
    for argv, msg in cases:
        rc, _, err = _run(capsys, "evaluate", *argv)
        assert rc == 2 and msg in err, (argv, err)
    no_cr = tmp_path / "clean.fits"
    to_fits(no_cr, t.clean, np.zeros_like(t.cr_mask), t.ignore, t.sky)
    rc, _, err = _run(capsys, "evaluate", str(no_cr), "--model", "ACS-WFC")
    assert rc == 2 and "no CR pixel" in err
    one = tmp_path / "one.fits"
    to_fits(one, t.image[:1], t.cr_mask[:1], t.ignore[:1], t.sky[:1])
    rc, _, err = _run(capsys, "evaluate", str(one), "--inpaint", "medmask")
    assert rc == 2 and "at least 2 stamps" in err
