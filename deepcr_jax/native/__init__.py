"""Native CPU convolution kernel, compiled on first use, called through XLA's FFI.

XLA:CPU's 3x3 convolution reaches roughly half the float32 peak of a modern
x86 core on deepCR's 32- and 64-channel layers, and every BatchNorm/ReLU
after it is a separate pass over memory. ``conv3x3.cc`` (next to this file)
fuses conv + bias + inference BatchNorm (``alpha``, ``beta``) + ReLU into one
register-blocked kernel that runs on XLA's intra-op thread pool.

The kernel ships as source. The first call compiles it with the system C++
compiler (``$CXX`` or ``c++``, ``-O3 -march=native``) against the FFI headers
that come with jaxlib, into a cache folder (``$DEEPCR_JAX_CACHE``, else
``$XDG_CACHE_HOME/deepcr-jax`` or ``~/.cache/deepcr-jax``), keyed by the
source, compiler, jaxlib version and CPU; later processes reuse it. Where
there is no compiler, or ``DEEPCR_JAX_NATIVE=0`` is set, :func:`available`
is False and the networks use XLA's convolution: same results within float32
rounding, slower. Only the CPU backend uses the kernel; GPU and TPU always
run XLA's.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from importlib import resources

import jax
import jax.numpy as jnp

__all__ = ["available", "conv3x3_affine_relu", "status", "supports"]

log = logging.getLogger(__name__)

TARGET = "deepcr_conv3x3_affine_relu"
_SYMBOL = "DeepcrConv3x3AffineRelu"
_FLAGS = ["-O3", "-march=native", "-ffp-contract=fast", "-std=c++17", "-shared", "-fPIC"]

_lock = threading.Lock()
_state: dict[str, object] = {}


def disabled_by_env(var: str) -> bool:
    """Whether environment variable ``var`` switches a feature off (0/false/no/off)."""
    return os.environ.get(var, "1").strip().lower() in ("0", "false", "no", "off")


def _cache_dir() -> str:
    root = os.environ.get("DEEPCR_JAX_CACHE")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(xdg, "deepcr-jax")
    return os.path.join(root, "native")


def _cpu_id() -> str:
    """What -march=native depends on: the CPU model and feature flags."""
    try:
        with open("/proc/cpuinfo") as fh:
            lines = [ln for ln in fh if ln.startswith(("model name", "flags", "Features"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() + platform.machine()


def _compile(source: str, cxx: str, out: str) -> None:
    include = jax.ffi.include_dir()
    tmp_dir = os.path.dirname(out)
    fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=tmp_dir)
    os.close(fd)
    try:
        cmd = [cxx, *_FLAGS, f"-I{include}", source, "-o", tmp]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
        os.replace(tmp, out)  # atomic: concurrent builders write the same bytes
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load() -> None:
    """Compile (once per cache key) and register the FFI target; sets ``_state``."""
    if disabled_by_env("DEEPCR_JAX_NATIVE"):
        raise RuntimeError("disabled by DEEPCR_JAX_NATIVE=0")
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        raise RuntimeError(f"no C++ compiler ({cxx!r} not found; set $CXX)")
    source = str(resources.files(__package__).joinpath("conv3x3.cc"))
    with open(source, "rb") as fh:
        text = fh.read()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False).stdout
    key = hashlib.sha256(
        b"\0".join(
            s if isinstance(s, bytes) else s.encode()
            for s in (text, version, " ".join(_FLAGS), jax.__version__, jax.lib.__version__, _cpu_id())
        )
    ).hexdigest()[:16]
    directory = _cache_dir()
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError:  # read-only home: a private folder under the temp dir
        directory = os.path.join(tempfile.gettempdir(), f"deepcr-jax-native-{os.getuid()}")
        os.makedirs(directory, mode=0o700, exist_ok=True)
    lib_path = os.path.join(directory, f"deepcr_native-{key}.so")
    if not os.path.exists(lib_path):
        log.info("compiling the native convolution kernel into %s", lib_path)
        _compile(source, cxx, lib_path)
    lib = ctypes.CDLL(lib_path)
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(getattr(lib, _SYMBOL)), platform="cpu")
    _state["lib"] = lib
    _state["path"] = lib_path


def status() -> tuple[bool, str]:
    """(whether the native kernel is usable, the library's path or why not)."""
    with _lock:
        if "ok" not in _state:
            try:
                _load()
                _state["ok"], _state["why"] = True, str(_state["path"])
            except Exception as err:  # noqa: BLE001 - any failure means: use XLA's conv
                _state["ok"], _state["why"] = False, str(err)
                log.info("native convolution kernel unavailable: %s", err)
        return bool(_state["ok"]), str(_state["why"])


def available() -> bool:
    """True when the native kernel is compiled and registered (CPU only)."""
    return status()[0]


def supports(in_channels: int, out_channels: int) -> bool:
    """Whether the kernel handles a 3x3 conv of this width (Co a multiple of 32)."""
    return out_channels % 32 == 0 and in_channels >= 1


def conv3x3_affine_relu(x: jax.Array, kernel: jax.Array, bias: jax.Array, alpha: jax.Array, beta: jax.Array):
    """``relu((conv3x3_same(x, kernel) + bias) * alpha + beta)`` by the native kernel.

    Parameters
    ----------
    x : (..., ny, nx, ci) float32
        NHWC activations; leading dimensions are batch.
    kernel : (3, 3, ci, co) float32, HWIO; ``co`` a multiple of 32.
    bias, alpha, beta : (co,) float32

    Returns
    -------
    (..., ny, nx, co) float32

    Under ``jax.vmap`` only ``x`` may be batched.
    """
    if not available():
        raise RuntimeError(f"native kernel unavailable: {status()[1]}")
    f32 = jnp.float32
    out = jax.ShapeDtypeStruct(x.shape[:-1] + (kernel.shape[-1],), f32)
    call = jax.ffi.ffi_call(TARGET, out, vmap_method="expand_dims")
    return call(x.astype(f32), kernel.astype(f32), bias.astype(f32), alpha.astype(f32), beta.astype(f32))
