"""Every code snippet of the README runs as written (so that the README cannot drift)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import requires_reference, synthetic_field

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_python_snippets_run(tmp_path, monkeypatch):
    """The Python blocks, with the names they assume (an image, a stack, a frame and its DQ, FITS paths)."""
    from astropy.io import fits

    rng = np.random.default_rng(0)
    image, _ = synthetic_field(rng, (96, 80))
    frame, _ = synthetic_field(rng, (300, 260))
    stamps = np.stack([synthetic_field(rng, (64, 64))[0] for _ in range(2)])
    paths = []
    for k in range(3):
        paths.append(str(tmp_path / f"f{k}_flc.fits"))
        sci = fits.ImageHDU(synthetic_field(rng, (64, 64))[0], name="SCI", ver=1)
        fits.HDUList([fits.PrimaryHDU(), sci]).writeto(paths[-1])
    monkeypatch.chdir(tmp_path)
    names = {"image": image, "frame": frame, "stamps": stamps, "dq": np.zeros(frame.shape, np.int16),
             "paths": paths}
    blocks = _blocks("python")
    assert len(blocks) >= 2
    for code in blocks:
        exec(compile(code, str(README), "exec"), dict(names))  # noqa: S102 - the README's own snippets


def _commands() -> list[str]:
    lines = []
    for block in _blocks("bash"):
        for line in block.splitlines():
            cmd = line.split("  #")[0].strip()
            if cmd.startswith(("deepcr-jax ", "python -m train")):
                lines.append(cmd)
    return lines


@requires_reference
def test_command_lines_run(tmp_path):
    """The README's ``deepcr-jax`` / ``python -m train`` commands, on small real files, in a fresh folder."""

    from deepcr_jax.reference import learned_models_root
    from deepcr_jax.simulate import write_flc

    def flc(path, seed):
        write_flc(path, [seed], (128, 128))

    flc(tmp_path / "j8xi01abq_flc.fits", 1)
    from astropy.io import fits

    from deepcr_jax.simulate import simulate_exposure

    for k in (1, 2, 3):  # three aligned exposures of one field (same scene, own noise and CRs), for `stamps`
        exp = simulate_exposure("extragalactic", (512, 512), seed=10 + k, scene_seed=5, sky_rate=0.15)
        primary = fits.PrimaryHDU()
        for amp in "ABCD":
            primary.header[f"READNSE{amp}"] = 4.5
        sci = fits.ImageHDU(exp.image, name="SCI", ver=1)
        sci.header["BUNIT"] = "ELECTRONS"
        fits.HDUList([primary, sci, fits.ImageHDU(np.zeros((512, 512), np.int16), name="DQ", ver=1)]).writeto(
            tmp_path / f"j8xi01a{k}q_flc.fits")
    (tmp_path / "night" / "a").mkdir(parents=True)
    flc(tmp_path / "night" / "a" / "x_flc.fits", 2)
    (tmp_path / "data").mkdir()
    flc(tmp_path / "data" / "y_flc.fits", 3)
    pth = Path(learned_models_root()) / "learned_models" / "mask" / "ACS-WFC.pth"
    (tmp_path / "my_deepcr_model.pth").write_bytes(pth.read_bytes())
    commands = _commands()
    assert any(c.startswith("deepcr-jax clean") for c in commands)
    bin_dir = Path(sys.executable).parent
    for cmd in commands:
        if "demo" in cmd.split()[:2] or ("--config" in cmd and ".smoke" not in cmd):
            continue  # the demo has its own test; full training runs are not for the test suite
        argv = shlex.split(cmd)
        argv[0] = str(bin_dir / "deepcr-jax") if argv[0] == "deepcr-jax" else sys.executable
        if "*" in cmd and '"' not in cmd:  # an unquoted glob: the shell expands it
            argv = ["bash", "-c", " ".join([shlex.quote(argv[0])] + shlex.split(cmd)[1:])]
        # `python -m train` runs from a checkout (train/ is not installed): the repo root on the path
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(README.parent), os.environ.get("PYTHONPATH", "")])}
        res = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
        assert res.returncode == 0, f"{cmd}\n{res.stdout}\n{res.stderr}"
