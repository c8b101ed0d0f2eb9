"""Compiling and registering the native kernels (once per machine, cached).

See :mod:`deepcr_jax.native` for what is built, where it is cached and how
to switch it off.
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
import time
from importlib import resources

import jax

from deepcr_jax._atomic import atomic_path

__all__ = ["available", "cpu_bf16_paths", "disabled_by_env", "require", "status"]

log = logging.getLogger(__name__)

#: FFI target name -> symbol in the compiled library
TARGETS = {
    "deepcr_conv3x3_affine_relu": "DeepcrConv3x3AffineRelu",
    "deepcr_upconv2x2": "DeepcrUpConv2x2",
    "deepcr_conv3x3_narrow": "DeepcrConv3x3Narrow",
    "deepcr_upconv2x2_narrow": "DeepcrUpConv2x2Narrow",
    "deepcr_conv3x3_bf16": "DeepcrConv3x3Bf16",
    "deepcr_upconv2x2_bf16": "DeepcrUpConv2x2Bf16",
    "deepcr_conv3x3_plain": "DeepcrConv3x3Plain",
    "deepcr_conv3x3_weight_grad": "DeepcrConv3x3WeightGrad",
    "deepcr_channel_stats": "DeepcrChannelStats",
    "deepcr_bn_relu_grad_sums": "DeepcrBnReluGradSums",
}
#: the translation units compiled into the one library; _shared.cc is included by both
SOURCES = ("conv3x3.cc", "bf16.cc", "conv3x3_grad.cc")
_HEADERS = ("_shared.cc",)
#: bits of DeepcrCpuPaths() -> bf16 path names (see bf16.cc)
BF16_PATHS = {"avx512bf16": 1, "amx": 2}
#: what the first-use message quotes: GCC 12 spends ~10 s of CPU on the two files (measured on a
#: Sapphire Rapids: 4.8 s + 5.5 s), compiled in parallel: ~6 s on 2 idle cores, 17-22 s at load 8
_TYPICAL_BUILD_S = 10
#: builds of other keys (older sources, compilers, jaxlibs) unused for this long are deleted after a build
STALE_BUILD_S = 30 * 86400
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


def _compile(sources: list[str], cxx: str, out: str) -> None:
    """Compile ``sources`` (in parallel, one compiler per file) and link them into ``out``."""
    include = jax.ffi.include_dir()
    flags = [f for f in _FLAGS if f not in ("-shared",)]
    with tempfile.TemporaryDirectory() as tmpdir, atomic_path(out) as tmp:  # concurrent builders write the same bytes
        objects = [os.path.join(tmpdir, f"{k}.o") for k in range(len(sources))]
        jobs = [
            ([cxx, *flags, f"-I{include}", "-c", src, "-o", obj], subprocess.Popen(
                [cxx, *flags, f"-I{include}", "-c", src, "-o", obj],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
            for src, obj in zip(sources, objects)
        ]
        for cmd, proc in jobs:
            _, err = proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-2000:]}")
        cmd = [cxx, "-shared", "-fPIC", *objects, "-o", tmp]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-2000:]}")


def prune_stale_builds(directory: str, keep: str, max_age_s: float = STALE_BUILD_S) -> list[str]:
    """Delete the ``deepcr_native-*.so`` files of ``directory`` other than ``keep`` unused for ``max_age_s``.

    "Unused" is by modification time: every load touches its library, so a
    build that another installation still loads stays. Errors (a file gone
    meanwhile, no permission) are ignored. Returns the deleted paths.
    """
    removed, now = [], time.time()
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        path = os.path.join(directory, name)
        if not (name.startswith("deepcr_native-") and name.endswith(".so")) or path == keep:
            continue
        try:
            if now - os.stat(path).st_mtime > max_age_s:
                os.remove(path)
                removed.append(path)
        except OSError:
            pass
    return removed


def _load() -> None:
    """Compile (once per cache key) and register the FFI target; sets ``_state``."""
    if disabled_by_env("DEEPCR_JAX_NATIVE"):
        raise RuntimeError("disabled by DEEPCR_JAX_NATIVE=0")
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        raise RuntimeError(f"no C++ compiler ({cxx!r} not found; set $CXX)")
    folder = resources.files("deepcr_jax.native")
    sources = [str(folder.joinpath(name)) for name in SOURCES]
    text = b""
    for name in (*SOURCES, *_HEADERS):
        text += folder.joinpath(name).read_bytes() + b"\0"
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
        msg = f"compiling the native CPU kernels (first use, ~{_TYPICAL_BUILD_S} s) into {lib_path}"
        log.warning(msg)
        t0 = time.perf_counter()
        _compile(sources, cxx, lib_path)
        _state["build_s"] = time.perf_counter() - t0
        log.info("native CPU kernels compiled in %.1f s", _state["build_s"])
        for path in prune_stale_builds(directory, lib_path):
            log.info("deleted the stale native build %s", path)
    else:
        try:
            os.utime(lib_path)  # marks it in use (prune_stale_builds)
        except OSError:
            pass
    lib = ctypes.CDLL(lib_path)
    for target, symbol in TARGETS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    lib.DeepcrCpuPaths.restype = ctypes.c_int
    mask = int(lib.DeepcrCpuPaths())
    _state["cpu_paths"] = tuple(name for name, bit in BF16_PATHS.items() if mask & bit)
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


def cpu_bf16_paths() -> tuple[str, ...]:
    """The bf16 kernel paths this CPU runs, from CPUID at run time: ``"avx512bf16"``, ``"amx"``.

    ``"amx"`` also needs Linux's permission for the AMX tile state
    (``arch_prctl(ARCH_REQ_XCOMP_PERM)``), requested once when the library
    loads. Empty where the kernels are unavailable.
    """
    if not available():
        return ()
    return tuple(_state["cpu_paths"])  # type: ignore[arg-type]


def require() -> None:
    """Raise :class:`RuntimeError` saying why, if the kernel is not usable."""
    if not available():
        raise RuntimeError(f"native kernel unavailable: {status()[1]}")
