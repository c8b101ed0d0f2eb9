"""Data parallelism: one step on 8 devices == on 1; two processes (jax.distributed, gloo) == one.

Each case runs in fresh subprocesses (the device count and the distributed
runtime are fixed at start-up); this file is also their worker script.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env.update(extra)
    return env


def _dataset():
    from deepcr_jax.training import data

    rng = np.random.default_rng(7)
    img = rng.normal(100, 10, (8, 32, 32)).astype(np.float32)
    cr = rng.random((8, 32, 32)) < 0.03
    img[cr] += 2000
    return data.from_arrays(img, cr)


def _flat_params(state) -> dict[str, np.ndarray]:
    import jax

    def host(x):
        return np.asarray(x.addressable_data(0) if not x.is_fully_addressable else x)

    return {jax.tree_util.keystr(p): host(v) for p, v in jax.tree_util.tree_leaves_with_path(
        {"params": state["params"], "batch_stats": state["batch_stats"]})}


def _worker_devices(out: str) -> None:
    import jax

    from deepcr_jax.training import data
    from deepcr_jax.training.config import get_config
    from deepcr_jax.training.loop import global_batch, make_mesh
    from deepcr_jax.training.state import create_state, replicate
    from deepcr_jax.training.step import make_train_step

    assert jax.device_count() == 8, jax.devices()
    # kernels="xla" on both sides: the CPU training kernels run only on one device ("auto"), and their
    # float rounding differs from XLA's (Adam turns the noise of the zero conv-bias gradients into +-lr)
    cfg = get_config("mask_2_4.smoke", batch_size=8, kernels="xla")
    batch = data.EpochIterator(_dataset(), 8, 32, seed=0).batch(0, 0)
    key = jax.random.key(0)
    results = {}
    for n in (8, 1):
        mesh = make_mesh(jax.devices()[:n])
        state = replicate(create_state(cfg, key), mesh)
        state, _ = make_train_step(cfg, mesh)(state, global_batch(batch, mesh, 8), jax.random.key(1))
        results[n] = _flat_params(state)
    np.savez(out, **{f"{n}|{k}": v for n, r in results.items() for k, v in r.items()})


def _worker_processes(out: str, port: str, pid: str, nproc: str) -> None:
    import jax

    n = int(nproc)
    if n > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=n, process_id=int(pid))
    from deepcr_jax.training import data
    from deepcr_jax.training.config import get_config
    from deepcr_jax.training.loop import global_batch, make_mesh
    from deepcr_jax.training.state import create_state, replicate
    from deepcr_jax.training.step import make_train_step

    cfg = get_config("mask_2_4.smoke", batch_size=4, kernels="xla")  # as in _worker_devices
    it = data.EpochIterator(_dataset(), 4, 32, seed=0, process_index=jax.process_index(),
                            process_count=jax.process_count())
    mesh = make_mesh()
    assert mesh.size == n
    key = jax.random.key(0)
    state = replicate(create_state(cfg, key), mesh)
    step = make_train_step(cfg, mesh)
    for b in range(2):
        state, _ = step(state, global_batch(it.batch(0, b), mesh, 4), jax.random.fold_in(key, b))
    if jax.process_index() == 0:
        np.savez(out, **_flat_params(state))


def _compare(a: dict, b: dict) -> None:
    """All params and BN statistics within TOL, except where a conv bias feeding a BatchNorm acts.

    Those biases have an exact gradient of 0 (BN subtracts the batch mean);
    their computed gradient is float rounding noise (~1e-9), which Adam's
    first step, lr * g / (|g| + eps), turns into updates of up to ±lr that
    differ between reduction orders. They are checked to have moved by at
    most the learning rate; the next step's BN running means, which take
    in a batch mean that includes that bias at the running-statistics
    momentum (torch 0.005), may differ by that fraction of the biases'
    largest difference.
    """
    assert a.keys() == b.keys() and a
    bias = [k for k in a if "['params']" in k and "['conv" in k and k.endswith("['bias']")]
    for k in bias:
        assert np.max(np.abs(a[k] - b[k])) <= 2 * 0.005 + TOL, k
    bias_diff = max(float(np.max(np.abs(a[k] - b[k]))) for k in bias)
    for k, va in a.items():
        if k in bias:
            continue
        atol = TOL + (0.005 * bias_diff if "['batch_stats']" in k and k.endswith("['mean']") else 0.0)
        np.testing.assert_allclose(va, b[k], atol=atol, rtol=TOL, err_msg=k)


def test_eight_devices_equal_one(tmp_path):
    out = tmp_path / "dev.npz"
    env = _env(tmp_path, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    subprocess.run([sys.executable, __file__, "devices", str(out)], env=env, check=True, timeout=600)
    res = np.load(out)
    eight = {k.split("|", 1)[1]: res[k] for k in res.files if k.startswith("8|")}
    one = {k.split("|", 1)[1]: res[k] for k in res.files if k.startswith("1|")}
    _compare(eight, one)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(tmp_path):
    env = _env(tmp_path)
    port = str(_free_port())
    two, one = tmp_path / "two.npz", tmp_path / "one.npz"
    procs = [subprocess.Popen([sys.executable, __file__, "processes", str(two), port, str(i), "2"], env=env)
             for i in range(2)]
    subprocess.run([sys.executable, __file__, "processes", str(one), port, "0", "1"], env=env, check=True,
                   timeout=600)
    for p in procs:
        assert p.wait(timeout=600) == 0
    a, b = np.load(two), np.load(one)
    _compare({k: a[k] for k in a.files}, {k: b[k] for k in b.files})


if __name__ == "__main__":
    {"devices": _worker_devices, "processes": _worker_processes}[sys.argv[1]](*sys.argv[2:])
