"""Issue 14: many files on Dask (``deepcr_jax.batch.clean_files``, ``deepcr-jax clean --workers``).

One real ``LocalCluster`` (2 worker processes, 1 thread each) serves the
module. Small simulated 2-chip files (SCI/DQ, 128x128). The distributed
outputs are byte-identical to the serial ones; a worker killed mid-run, a
client killed mid-run and rerun, and a bad file among good ones each end
with every good file done exactly once; the model is built and compiled
once per worker. Tasks are slowed on the workers (``client.run`` patches
``_clean_one`` there) where a kill must land mid-run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("distributed")

from deepcr_jax import batch
from deepcr_jax._manifest import Manifest
from deepcr_jax.cli import main

N_FILES = 6
SHAPE = (128, 128)
SETTINGS = {"inpaint": "medmask"}
TIMEOUT = 120  # s, any one distributed run


def make_file(path, seed: int) -> str:
    from deepcr_jax.simulate import write_flc

    return str(write_flc(path, [100 * seed + 1, 100 * seed + 2], SHAPE))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    return [make_file(root / f"f{i}.fits", i) for i in range(N_FILES)]


@pytest.fixture(scope="module")
def serial(inputs, tmp_path_factory):
    """The serial run's outputs: file name -> bytes."""
    out = tmp_path_factory.mktemp("serial")
    results = batch.clean_files(inputs, outdir=out, **SETTINGS)
    assert [r.status for r in results] == ["cleaned"] * N_FILES
    assert all(r.worker == "local" and r.cr_fraction > 0 for r in results)
    return {os.path.basename(r.output): Path(r.output).read_bytes() for r in results}


@pytest.fixture(scope="module")
def client():
    from distributed import Client

    with (
        batch.local_cluster(2, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as c,
    ):
        c.wait_for_workers(2, timeout=60)
        yield c


def slow_tasks(seconds: float):
    """A function for ``client.run``: every task on the worker sleeps ``seconds`` first (0 undoes it).

    Nested, so that cloudpickle sends it by value (workers cannot import this test module).
    """

    def install() -> None:
        import time

        from deepcr_jax import batch as b

        real = getattr(b, "_real_clean_one", b._clean_one)
        b._real_clean_one = real

        def slow(*args, **kwargs):
            time.sleep(seconds)
            return real(*args, **kwargs)

        b._clean_one = slow if seconds else real

    return install


def manifest_lines(path) -> list[dict]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def assert_done_once(outdir, serial, manifest):
    """Every input has one manifest line (cleaned or skipped) and a byte-identical output."""
    lines = manifest_lines(manifest)
    names = sorted(os.path.basename(rec["input"]) for rec in lines)
    assert names == sorted(f"f{i}.fits" for i in range(N_FILES)), names
    assert {rec["status"] for rec in lines} <= {"cleaned", "skipped"}
    for name, data in serial.items():
        with open(os.path.join(outdir, name), "rb") as fh:
            assert fh.read() == data, name
    assert not [n for n in os.listdir(outdir) if n.endswith(".tmp")]


def test_distributed_outputs_equal_serial(inputs, serial, client, tmp_path):
    manifest = tmp_path / "m.jsonl"
    seen = []
    results = batch.clean_files(
        inputs, outdir=tmp_path, client=client, manifest=manifest, progress=seen.append, **SETTINGS
    )
    assert [r.status for r in results] == ["cleaned"] * N_FILES
    assert [r.path for r in results] == inputs and len(seen) == N_FILES
    assert {r.worker for r in results} <= set(client.scheduler_info()["workers"])
    assert_done_once(tmp_path, serial, manifest)
    assert "all" in batch.format_table(results, 1.0)


def test_model_compiled_once_per_worker(inputs, client, tmp_path):
    results = batch.clean_files(inputs, outdir=tmp_path, client=client, **SETTINGS)
    assert [r.status for r in results] == ["cleaned"] * N_FILES
    stats = client.run(batch.worker_stats)
    assert len(stats) == 2
    for address, s in stats.items():
        assert s["cleaners"] == 1, (address, s)  # built by the plugin, reused by every task
        assert s["compilations"] == (1 if s["files"] else 0), (address, s)
    assert sum(s["files"] for s in stats.values()) >= N_FILES


def test_worker_killed_mid_run(inputs, serial, client, tmp_path):
    client.run(slow_tasks(0.5))
    pids = client.run(os.getpid)
    killed = []

    def kill_other(result):
        if not killed:  # the other worker is busy with its file: kill it now
            victim = next(a for a in pids if a != result.worker)
            os.kill(pids[victim], signal.SIGKILL)
            killed.append(victim)

    manifest = tmp_path / "m.jsonl"
    try:
        results = batch.clean_files(
            inputs, outdir=tmp_path, client=client, manifest=manifest, progress=kill_other, **SETTINGS
        )
        assert killed and all(r.status in ("cleaned", "skipped") for r in results), results
        assert_done_once(tmp_path, serial, manifest)
        client.wait_for_workers(2, timeout=60)  # the nanny restarted it
        assert pids[killed[0]] not in client.run(os.getpid).values()
    finally:
        client.wait_for_workers(2, timeout=60)
        client.run(slow_tasks(0))


def _cli(*args, **kw):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(sys.path))
    cmd = [sys.executable, "-m", "deepcr_jax.cli", "clean", *map(str, args)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_client_killed_then_rerun_resumes(inputs, serial, client, tmp_path):
    outdir, manifest = tmp_path / "out", tmp_path / "out" / "deepcr-jax-manifest.jsonl"
    args = [*inputs, "--outdir", outdir, "--inpaint", "medmask", "--scheduler", client.scheduler.address]
    client.run(slow_tasks(0.6))
    try:
        proc = _cli(*args)
        deadline = time.monotonic() + TIMEOUT
        while not (manifest.exists() and manifest_lines(manifest)):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        proc.kill()
        proc.communicate(timeout=30)
        first = len(manifest_lines(manifest))
        assert 1 <= first < N_FILES
    finally:
        client.run(slow_tasks(0))
    time.sleep(1.5)  # tasks the dead client left running finish (their outputs are kept, not redone)
    rerun = _cli(*args)
    out, err = rerun.communicate(timeout=TIMEOUT)
    assert rerun.returncode == 0, err
    assert out.count("done in manifest") == first
    assert_done_once(outdir, serial, manifest)


def test_bad_file_reported_rest_done(inputs, client, tmp_path, capsys):
    bad = tmp_path / "in" / "bad.fits"
    bad.parent.mkdir()
    with open(inputs[0], "rb") as fh:
        bad.write_bytes(fh.read()[:7000])  # truncated in the first SCI extension
    args = [bad, *inputs[:3], "--outdir", tmp_path / "out", "--inpaint", "medmask"]
    rc = main(["clean", *map(str, args), "--scheduler", client.scheduler.address])
    out, err = capsys.readouterr()
    assert rc == 2 and "Traceback" not in err
    assert f"error: {bad}: " in err and f"failed: {bad}: " in out
    assert "3 of 4 files cleaned (0 skipped, 1 failed)" in out
    assert sorted(os.listdir(tmp_path / "out")) == [
        "deepcr-jax-manifest.jsonl",
        *sorted(f"f{i}_crmask.fits" for i in range(3)),
    ]
    statuses = {
        os.path.basename(r["input"]): r["status"]
        for r in manifest_lines(tmp_path / "out" / "deepcr-jax-manifest.jsonl")
    }
    assert statuses == {
        "bad.fits": "failed",
        "f0.fits": "cleaned",
        "f1.fits": "cleaned",
        "f2.fits": "cleaned",
    }


def test_plain_cli_does_not_import_dask(inputs, tmp_path):
    code = (
        "import sys\n"
        "from deepcr_jax.cli import main\n"
        "from deepcr_jax import batch\n"
        f"rc = main(['clean', {inputs[0]!r}, '--outdir', {str(tmp_path)!r}, '-q'])\n"
        f"r = batch.clean_files([{inputs[1]!r}], outdir={str(tmp_path)!r}, manifest={str(tmp_path / 'm')!r})\n"
        "assert rc == 0 and r[0].status == 'cleaned', (rc, r)\n"
        "assert not {'dask', 'distributed'} & set(sys.modules), 'dask imported'\n"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run(
        [sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


def test_manifest_torn_line_and_lock(tmp_path):
    path = tmp_path / "m.jsonl"
    out = tmp_path / "a_crmask.fits"
    out.write_bytes(b"x")
    settings = {"model": "ACS-WFC", "threshold": None, "inpaint": None}
    rec = {"input": str(tmp_path / "a.fits"), "output": str(out), "status": "cleaned", "settings": settings}
    path.write_text(json.dumps(rec) + "\n" + '{"input": "b.fits", "stat')  # killed mid-line
    with Manifest(path) as m:
        assert m.done(rec["input"], str(out), settings) is not None
        assert m.done(rec["input"], str(out), {**settings, "threshold": 0.3}) is None
        assert m.done(str(tmp_path / "b.fits"), "b_crmask.fits", settings) is None
        with pytest.raises(FileExistsError, match="in use by another run"):
            Manifest(path)
        m.append({**rec, "input": str(tmp_path / "c.fits")})
    lines = path.read_text().splitlines()
    assert json.loads(lines[-1])["input"].endswith("c.fits") and len(lines) == 3


def test_precision_reaches_the_workers_and_the_manifest(inputs, tmp_path):
    from deepcr_jax.cleaner import Cleaner
    from deepcr_jax.files import clean_fits

    manifest = tmp_path / "m.jsonl"
    results = batch.clean_files(inputs[:2], outdir=tmp_path / "bf16", manifest=manifest, precision="bf16", **SETTINGS)
    assert [r.status for r in results] == ["cleaned"] * 2
    assert {rec["settings"]["precision"] for rec in manifest_lines(manifest)} == {"bf16"}
    ref = tmp_path / "ref.fits"
    clean_fits(inputs[0], ref, model=Cleaner("ACS-WFC", inpaint="medmask", precision="bf16"))
    assert Path(results[0].output).read_bytes() == ref.read_bytes()
    with pytest.raises(ValueError, match="precision must be"):
        batch.clean_files(inputs[:1], outdir=tmp_path / "x", precision="fp16")
