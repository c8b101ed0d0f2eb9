"""train_and_evaluate end to end: smoke configs, export round trip, workdir errors, resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import deepcr_jax
from deepcr_jax.training.config import CONFIG_NAMES, get_config
from deepcr_jax.training.loop import train_and_evaluate
from deepcr_jax.training.state import make_module
from deepcr_jax.training.step import preprocess

ROOT = Path(__file__).resolve().parents[1]


def _child_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    return env


@pytest.mark.parametrize("name", [n for n in CONFIG_NAMES if n != "mask_2_32"])
def test_smoke_every_config(name, tmp_path):
    cfg = get_config(name, smoke=True, epochs_max=1)
    out = train_and_evaluate(cfg, tmp_path / "run")
    assert out["epochs"] == 1 and os.path.exists(out["export"])
    rec = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert np.isfinite(rec["val_loss"]) and rec["phase"] in (1, 2)
    assert ("val_mse" in rec) == (cfg.kind == "inpaint")
    assert deepcr_jax.load_params(out["export"]).kind == cfg.kind


def test_train_export_clean_roundtrip(tmp_path):
    cfg = get_config("mask_2_32.smoke", plot_every=1)
    out = train_and_evaluate(cfg, tmp_path / "run")
    wd = tmp_path / "run"
    records = [json.loads(s) for s in (wd / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in records] == [1, 2, 2]
    assert {"loss", "val_loss", "lr", "val_tpr_0.05%", "val_tpr_0.5%"} <= set(records[0])
    assert (wd / "plots" / "curve.png").exists() and (wd / "plots" / "example_e000.png").exists()
    # export -> load_params -> predict == the training module in eval mode
    path = out["export"]
    params = deepcr_jax.load_params(path)
    meta = json.loads(str(np.load(path)["__meta__"]))
    assert meta["training"]["name"] == "mask_2_32.smoke" and "simulated" in meta["notes"]
    from deepcr_jax.weights import load_npz

    variables, _ = load_npz(path)
    assert set(variables) == {"params", "batch_stats"}
    img = np.random.default_rng(0).normal(100, 10, (2, 32, 32)).astype(np.float32)
    img[0, 5, 5] += 3000
    ref = make_module(cfg, logits=False).apply(variables, preprocess(img, cfg.scale, cfg.standardize)[..., None])
    np.testing.assert_allclose(np.asarray(deepcr_jax.predict(params, img)), np.asarray(ref)[..., 0], atol=1e-5)
    mask = deepcr_jax.clean(img[0], model=path)
    np.testing.assert_array_equal(mask, np.asarray(ref)[0, ..., 0] > meta["threshold"])
    # a finished run is never overwritten without overwrite=True
    with pytest.raises(ValueError, match="finished run"):
        train_and_evaluate(cfg, wd)


def test_workdir_errors(tmp_path):
    cfg = get_config("mask_2_4.smoke", epochs_max=1)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="not a writable directory"):
        train_and_evaluate(cfg, blocker / "sub")
    wd = tmp_path / "run"
    wd.mkdir()
    (wd / "config.json").write_text(get_config("mask_2_4.smoke", lr=0.1).to_json())
    with pytest.raises(ValueError, match=r"different config \(lr: 0.1 in the workdir, 0.005 now"):
        train_and_evaluate(cfg, wd)
    with pytest.raises(ValueError, match="resume=True"):
        train_and_evaluate(cfg, wd, resume=False)


def test_export_any_kept_epoch(tmp_path, capsys):
    from deepcr_jax.training.cli import cli_main

    wd = tmp_path / "run"
    cfg = get_config("mask_2_4.smoke", epochs_max=4, keep_every=3)
    out = train_and_evaluate(cfg, wd)
    records = [json.loads(s) for s in (wd / "metrics.jsonl").read_text().splitlines()]
    best = min(records, key=lambda r: r["val_loss"])["epoch"]
    # kept: every 3rd epoch (epoch 2), the latest two (2, 3) and the best
    assert cli_main(["--workdir", str(wd), "--export", "2"]) == 0
    assert "epoch002.npz (epoch 2," in capsys.readouterr().out
    meta = json.loads(str(np.load(wd / "epoch002.npz")["__meta__"]))
    assert meta["validation"]["epoch"] == 2 and meta["validation"]["step"] == records[2]["step"]
    np.testing.assert_allclose(meta["validation"]["val_loss"], records[2]["val_loss"], rtol=1e-6)
    assert deepcr_jax.load_params(wd / "epoch002.npz").kind == "mask"
    gone = next(e for e in (0, 1) if e != best)
    assert cli_main(["--workdir", str(wd), "--export", str(gone)]) == 2
    err = capsys.readouterr().err
    assert f"epoch {gone} was not kept" in err and "keep_every" in err
    # the best: the same arrays as best.npz, under its own name
    assert cli_main(["--workdir", str(wd), "--export", "best", "-o", str(tmp_path / "b.npz")]) == 0
    a, b = np.load(out["export"]), np.load(tmp_path / "b.npz")
    assert set(a.files) == set(b.files)
    for k in a.files:
        if k != "__meta__":
            np.testing.assert_array_equal(a[k], b[k])
    # never overwritten; bad requests name the problem
    assert cli_main(["--workdir", str(wd), "--export", "2"]) == 2
    assert "never overwritten" in capsys.readouterr().err
    assert cli_main(["--workdir", str(wd), "--export", "9"]) == 2
    assert "epoch 9 has not completed (epochs 0..3 have)" in capsys.readouterr().err
    for argv, msg in ((["--export", "two"], "epoch number"), (["--export", "-1"], "epoch number"),
                      (["--export", "1", "--config", "mask_2_4"], "own config"),
                      (["--output", "x.npz", "--config", "mask_2_4.smoke"], "--output goes with --export")):
        assert cli_main(["--workdir", str(wd), *argv]) == 2
        assert msg in capsys.readouterr().err
    assert cli_main(["--workdir", str(tmp_path / "empty"), "--export", "best"]) == 2
    assert "holds no training run" in capsys.readouterr().err
    assert cli_main(["--workdir", str(wd)]) == 2  # its own config: nothing more to train
    assert "raise epochs_max above 4 to continue it" in capsys.readouterr().err
    assert cli_main(["--workdir", str(tmp_path / "empty")]) == 2
    assert "--config is required" in capsys.readouterr().err


def test_finished_run_continues_with_more_epochs(tmp_path, capsys):
    """``--workdir W epochs_max=N`` (no --config) trains a finished run on, as if it had been asked for N at once."""
    from deepcr_jax.training.cli import cli_main

    cfg = get_config("mask_2_4.smoke", epochs_max=3, bn_epochs=1)
    whole = train_and_evaluate(cfg, tmp_path / "whole")
    wd = tmp_path / "run"
    first = train_and_evaluate(cfg.replace(epochs_max=2), wd)
    before = {k: v for k, v in np.load(first["export"]).items()}
    best_epoch = json.loads(str(before["__meta__"]))["validation"]["epoch"]
    assert cli_main(["--workdir", str(wd), "epochs_max=3"]) == 0
    assert "exported" in capsys.readouterr().out
    # the earlier best model is kept under its epoch's name, byte for byte
    kept = np.load(wd / f"best-epoch{best_epoch:03d}.npz")
    assert set(kept.files) == set(before)
    for k, v in before.items():
        np.testing.assert_array_equal(kept[k], v)
    # resuming is exact: the same records and best model as the run asked for 3 epochs at once
    records = [json.loads(s) for s in (wd / "metrics.jsonl").read_text().splitlines()]
    expected = [json.loads(s) for s in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2]
    for a, b in zip(records, expected):
        assert (a["loss"], a["val_loss"], a["lr"]) == (b["loss"], b["val_loss"], b["lr"])
    a, b = np.load(wd / "best.npz"), np.load(whole["export"])
    for k in a.files:
        if k != "__meta__":
            np.testing.assert_array_equal(a[k], b[k])
    assert json.loads((wd / "config.json").read_text())["epochs_max"] == 3
    # other changes than the resume-safe fields are refused, naming them
    assert cli_main(["--workdir", str(wd), "epochs_max=4", "lr=0.1"]) == 2
    assert "different config (lr: 0.005 in the workdir, 0.1 now" in capsys.readouterr().err
    assert cli_main(["--workdir", str(wd), "epochs_max=3"]) == 2
    assert "raise epochs_max above 3" in capsys.readouterr().err


def test_run_stopped_by_plateau_does_not_continue(tmp_path):
    # rtol 0.9: an epoch "improves" only below a tenth of the best, so the rule stops the run at once
    cfg = get_config("mask_2_4.smoke", epochs_max=8, bn_epochs=0, patience=1, max_decays=0, rtol=0.9)
    out = train_and_evaluate(cfg, tmp_path / "run")
    assert out["stopped_early"] and out["epochs"] < 8
    with pytest.raises(ValueError, match="the plateau rule stopped it"):
        train_and_evaluate(cfg.replace(epochs_max=20), tmp_path / "run")


def test_command_line_trains_logs_and_exports(tmp_path):
    """``python -m train`` as a user runs it: epoch lines on stderr (no progress bar), then --export."""
    env, wd = _child_env(tmp_path), tmp_path / "run"
    run = subprocess.run([sys.executable, "-m", "train", "--config", "mask_2_4.smoke", "--workdir", str(wd),
                          "epochs_max=2"], check=False, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "epoch 0: loss" in run.stderr and "epoch 1: loss" in run.stderr
    assert run.stdout.startswith(f"exported {wd / 'best.npz'}")
    again = subprocess.run([sys.executable, "-m", "train", "--workdir", str(wd), "--export", "1"], check=False, env=env,
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert (wd / "epoch001.npz").exists() and "(epoch 1, validation loss" in again.stdout


def test_resume_refuses_changed_data(tmp_path):
    """A run on files or arrays resumes only on the stamps it began on (a data folder may change between runs)."""
    from deepcr_jax.training.data import from_arrays

    rng = np.random.default_rng(3)
    img = rng.normal(100, 5, (8, 32, 32)).astype(np.float32)
    cr = rng.random(img.shape) < 0.03
    wd = tmp_path / "run"
    cfg = get_config("mask_2_4.smoke", epochs_max=1)
    train_and_evaluate(cfg, wd, data=from_arrays(img, cr, provenance="8 test stamps"))
    (wd / "best.npz").unlink()  # as after a kill: a run to resume
    changed = img.copy()
    changed[5, 7, 7] += 1.0  # one pixel of one file rewritten
    with pytest.raises(ValueError, match=r"other data: it began on 8 stamps \(8 test stamps; sha256 .*the data "
                                         r"now give 7 \(seven"):
        train_and_evaluate(cfg.replace(epochs_max=2), wd, data=from_arrays(changed[:7], cr[:7], provenance="seven"))
    with pytest.raises(ValueError, match="other data"):
        train_and_evaluate(cfg.replace(epochs_max=2), wd, data=from_arrays(changed, cr))
    out = train_and_evaluate(cfg.replace(epochs_max=2), wd, data=from_arrays(img.copy(), cr))  # the same stamps
    assert out["epochs"] == 2


_CHILD = """
import sys
from deepcr_jax.training.config import get_config
from deepcr_jax.training.loop import train_and_evaluate
cfg = get_config("mask_2_4.smoke", epochs_max=4, bn_epochs=2, checkpoint_every_steps=1, patience=4)
train_and_evaluate(cfg, sys.argv[1])
"""


def _final(wd: Path):
    data = np.load(wd / "best.npz")
    arrays = {k: data[k] for k in data.files if k != "__meta__"}
    lines = [json.loads(s) for s in (wd / "metrics.jsonl").read_text().splitlines()]
    for r in lines:
        r.pop("seconds")
    return arrays, lines


def test_resume_after_kill_is_bit_identical(tmp_path):
    env = _child_env(tmp_path)
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run([sys.executable, "-c", _CHILD, str(full)], env=env, check=True, timeout=600)
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(killed)], env=env)
    ckpt = killed / "checkpoints"
    deadline = time.monotonic() + 300
    # kill mid-epoch 1 (4 steps per epoch: step 6 is the 2nd batch of epoch 1), once a step checkpoint exists

    def newest():
        steps = [int(p.name) for p in ckpt.iterdir() if p.name.isdigit()] if ckpt.is_dir() else []
        return max(steps, default=-1)

    while newest() < 6:
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "best.npz").exists()
    subprocess.run([sys.executable, "-c", _CHILD, str(killed)], env=env, check=True, timeout=600)
    a, la = _final(full)
    b, lb = _final(killed)
    assert la == lb
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert jax.tree.leaves(a)  # something was compared


def test_phase_one_holds_the_learning_rate(tmp_path):
    """The plateau rule runs from the BatchNorm freeze on (rtol 0.99: every later epoch is 'bad')."""
    cfg = get_config("mask_2_32", smoke=True, bn_epochs=2, epochs_max=6, patience=1, rtol=0.99)
    train_and_evaluate(cfg, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in records]
    assert [r["phase"] for r in records] == [1, 1, 2, 2, 2, 2]
    # counted from epoch 0 the rate would drop after epoch 2; counted from the freeze, after epoch 4
    assert lrs[:5] == [cfg.lr] * 5 and lrs[5] == pytest.approx(cfg.lr * cfg.decay_factor)


def test_second_copy_of_a_running_command_is_refused(tmp_path):
    """Two trainings in one workdir would write the same checkpoints: the second gets an error naming the first."""
    env, wd = _child_env(tmp_path), tmp_path / "run"
    argv = [sys.executable, "-m", "train", "--config", "mask_2_4.smoke", "--workdir", str(wd), "epochs_max=500"]
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (wd / "config.json").exists():
            assert proc.poll() is None, "the first run ended early"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        cfg = get_config("mask_2_4.smoke", epochs_max=1)
        with pytest.raises(ValueError, match=rf"in use: another training process \(pid {proc.pid}\)"):
            train_and_evaluate(cfg, wd)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # the kernel dropped the killed run's lock: the workdir resumes
    out = train_and_evaluate(cfg, wd)
    assert os.path.exists(out["export"])
