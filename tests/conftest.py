"""Shared fixtures: numeric settings, the real frames, the PyTorch reference."""

from __future__ import annotations

import glob
import importlib.util
import os
import tempfile
from pathlib import Path

# On NVIDIA GPUs: deterministic XLA ops (cuDNN's algorithm choice otherwise
# changes the summation order from run to run; test_parity's error rule).
if importlib.util.find_spec("jax_cuda12_plugin") or importlib.util.find_spec("jax_cuda13_plugin"):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_gpu_deterministic_ops=true").strip()

import jax
import numpy as np
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")

# One persistent XLA compilation cache for the whole run, subprocesses included
# (they inherit the variable): the suite compiles the same networks in many
# tests and child processes, and compiling dominates its time on 2 cores.
_XLA_CACHE = os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"deepcr-jax-tests-xla-{os.getuid()}")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")
jax.config.update("jax_compilation_cache_dir", _XLA_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.3)

#: float32 parity bar against the PyTorch reference (DESIGN.md contract 1).
PARITY_ATOL = 1e-5


def shared_dir() -> Path | None:
    """The project's ``shared/`` folder (beside the checkout), if present."""
    env = os.environ.get("DEEPCR_JAX_SHARED")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve()
    candidates += [p / "shared" for p in here.parents[:4]]
    return next((c for c in candidates if (c / "data" / "real").is_dir()), None)


def read_real_frames() -> dict[str, np.ndarray]:
    """The real CCD frames in shared/data/real as float32 (first 2-D image HDU)."""
    from astropy.io import fits

    root = shared_dir()
    if root is None:
        return {}
    frames = {}
    for path in sorted(glob.glob(str(root / "data" / "real" / "*.fits"))):
        with fits.open(path) as hdul:
            hdu = next(h for h in hdul if h.data is not None and h.data.ndim == 2)
            frames[os.path.basename(path)] = np.asarray(hdu.data)
    return frames


@pytest.fixture(scope="session")
def real_frames() -> dict[str, np.ndarray]:
    frames = read_real_frames()
    if not frames:
        pytest.skip("shared/data/real not found (set DEEPCR_JAX_SHARED)")
    return frames


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20200101)


@pytest.fixture
def key() -> jax.Array:
    return jax.random.key(0)


def reference_available() -> bool:
    return importlib.util.find_spec("torch") is not None and importlib.util.find_spec("deepCR") is not None


requires_reference = pytest.mark.skipif(
    not reference_available(), reason="needs torch==2.13.0 and deepCR==0.3.1 (test extras)"
)


def synthetic_field(rng: np.random.Generator, shape=(128, 128), sky=80.0, n_stars=15, n_crs=12):
    """A simple HST-like test image in e-: sky, PSF-sized stars, CR hits and tracks.

    Returns (image float32, cr_mask bool). Small, fast, and independent of
    the simulator module so that parity tests exercise arbitrary content.
    """
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    img = np.full(shape, sky, np.float64)
    for _ in range(n_stars):
        y0, x0 = rng.uniform(0, ny), rng.uniform(0, nx)
        flux, sigma = rng.lognormal(7.5, 1.2), rng.uniform(0.8, 1.4)
        img += flux / (2 * np.pi * sigma**2) * np.exp(-((yy - y0) ** 2 + (xx - x0) ** 2) / (2 * sigma**2))
    img = rng.poisson(np.clip(img, 0, None)).astype(np.float64) + rng.normal(0, 5, shape)
    cr = np.zeros(shape, bool)
    for _ in range(n_crs):
        y, x = rng.integers(0, ny), rng.integers(0, nx)
        length = rng.integers(1, 12)
        angle = rng.uniform(0, np.pi)
        for t in range(length):
            yi = round(y + t * np.sin(angle))
            xi = round(x + t * np.cos(angle))
            if 0 <= yi < ny and 0 <= xi < nx:
                img[yi, xi] += rng.lognormal(6.5, 0.7)
                cr[yi, xi] = True
    return img.astype(np.float32), cr


# ---------------------------------------------------------------- scheduling over pytest-xdist workers
# `pytest -n 2 --dist loadgroup` (the README's command, via addopts) hands out
# one test at a time, or one group: the tests of a file whose module-scoped
# fixture is expensive run in one worker, so it is built once. The long tests
# come first, so that they do not end up last on one worker while the other
# idles.
_GROUPED = ("test_accuracy.py", "test_batch.py", "test_cli.py", "test_fits.py", "test_pipeline.py",
            "test_training_builder.py")
_LONG_FIRST = ("test_accuracy.py", "test_readme.py", "test_training_loop.py", "test_training_parallel.py",
               "test_parity.py")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = item.path.name
        return _LONG_FIRST.index(name) if name in _LONG_FIRST else len(_LONG_FIRST)

    items.sort(key=rank)  # stable: file order and test order otherwise kept
    for item in items:
        if item.path.name in _GROUPED:
            item.add_marker(pytest.mark.xdist_group(item.path.stem))
