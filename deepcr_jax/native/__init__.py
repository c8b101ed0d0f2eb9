"""Native CPU convolution kernel, compiled on first use, called through XLA's FFI.

XLA:CPU's 3x3 convolution reaches roughly half the float32 peak of a modern
x86 core on deepCR's 32- and 64-channel layers, and every BatchNorm/ReLU
after it is a separate pass over memory. ``conv3x3.cc`` (next to this file)
fuses conv + bias + inference BatchNorm (``alpha``, ``beta``) + ReLU into one
register-blocked kernel that runs on XLA's intra-op thread pool; the same
kernel reads a UNet's [skip, upsampled] pair without concatenating it, treats
pixels outside each tile's image bounds as zero padding, and can apply the
1x1 output conv (+ sigmoid) in its epilogue. A second kernel does the 2x2
stride-2 transposed convolution straight into NHWC.

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
import numpy as np

__all__ = ["available", "conv3x3_affine_relu", "full_bounds", "status", "supports", "upconv2x2"]

log = logging.getLogger(__name__)

#: FFI target name -> symbol in the compiled library
TARGETS = {"deepcr_conv3x3_affine_relu": "DeepcrConv3x3AffineRelu", "deepcr_upconv2x2": "DeepcrUpConv2x2"}
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
    for target, symbol in TARGETS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
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


def full_bounds(x: jax.Array) -> jax.Array:
    """Bounds ``(..., 4)`` int32 = (0, ny, 0, nx) for every image of ``x`` (..., ny, nx, c)."""
    ny, nx = x.shape[-3], x.shape[-2]
    # computed from x so that under vmap it is batched like x
    zero = x[..., 0, 0, :1].astype(jnp.int32) * 0
    return zero + jnp.array([0, ny, 0, nx], jnp.int32).reshape((1,) * (zero.ndim - 1) + (4,))


def _require() -> None:
    if not available():
        raise RuntimeError(f"native kernel unavailable: {status()[1]}")


def conv3x3_affine_relu(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array,
    alpha: jax.Array,
    beta: jax.Array,
    *,
    x1: jax.Array | None = None,
    bounds: jax.Array | None = None,
    head: tuple[jax.Array, jax.Array, bool] | None = None,
):
    """``relu((conv3x3_same(x, kernel) + bias) * alpha + beta)`` by the native kernel.

    Parameters
    ----------
    x : (..., ny, nx, c0) float32
        NHWC activations; leading dimensions are batch.
    kernel : (3, 3, c0 + c1, co) float32, HWIO; ``co`` a multiple of 32.
    bias, alpha, beta : (co,) float32
    x1 : (..., ny, nx, c1) float32, optional
        Second input: the conv reads the channel concatenation [x, x1]
        without it being built.
    bounds : (..., 4) int32, optional
        Per image: rows [r0, r1) and columns [c0, c1) inside the image;
        input pixels outside count as zero and outputs there are zero.
        Default the whole tile.
    head : (w (co,), b (1,), sigmoid), optional
        Apply the 1x1 output conv ``a @ w + b`` (then the sigmoid if
        ``sigmoid``) in the epilogue; needs ``co == 32``.

    Returns
    -------
    (..., ny, nx, co) float32, or (..., ny, nx, 1) with ``head``.

    Under ``jax.vmap`` only ``x``, ``x1`` and ``bounds`` may be batched.
    """
    _require()
    f32 = jnp.float32
    x = x.astype(f32)
    x1 = x[..., :0] if x1 is None else x1.astype(f32)
    bounds = full_bounds(x) if bounds is None else bounds.astype(jnp.int32)
    co = kernel.shape[-1]
    if head is None:
        head_w, head_b, mode = jnp.zeros((co,), f32), jnp.zeros((1,), f32), 0
    else:
        head_w, head_b, sigmoid = head
        mode = 2 if sigmoid else 1
    out = jax.ShapeDtypeStruct(x.shape[:-1] + ((co,) if head is None else (1,)), f32)
    call = jax.ffi.ffi_call("deepcr_conv3x3_affine_relu", out, vmap_method="expand_dims")
    args = (kernel, bias, alpha, beta, jnp.reshape(head_w, (-1,)), jnp.reshape(head_b, (-1,)))
    return call(x, x1, bounds, *(a.astype(f32) for a in args), head=np.int32(mode))


def upconv2x2(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """2x2 stride-2 transposed convolution (torch ``ConvTranspose2d(k=2, s=2)``).

    ``x`` (..., h, w, ci), ``kernel`` (2, 2, ci, co) with ``co`` a multiple
    of 32, ``bias`` (co,); returns (..., 2h, 2w, co) float32 with
    ``y[2i+a, 2j+b] = x[i, j] @ kernel[a, b] + bias``.
    """
    _require()
    f32 = jnp.float32
    out = jax.ShapeDtypeStruct(x.shape[:-3] + (2 * x.shape[-3], 2 * x.shape[-2], kernel.shape[-1]), f32)
    call = jax.ffi.ffi_call("deepcr_upconv2x2", out, vmap_method="expand_dims")
    return call(x.astype(f32), kernel.astype(f32), bias.astype(f32))
