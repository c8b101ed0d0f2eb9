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

``bf16.cc`` holds their bfloat16 twins (bf16 inputs, weights and stored
activations, float32 sums and epilogue) on two instruction paths, chosen
at run time from CPUID (never from the compile flags): AMX-BF16 tiles
(Sapphire Rapids and later; Linux's ``arch_prctl`` permission for the tile
state is requested once) and AVX-512-BF16 ``vdpbf16ps`` (e.g. AMD Zen 4).
:func:`cpu_bf16_paths` lists what this CPU runs and :func:`bf16_path` what
``dtype="bfloat16"`` uses (``DEEPCR_JAX_NATIVE_ISA=amx|avx512bf16|fp32``
forces one; ``fp32``, or a CPU with neither, runs the float32 kernels).

The kernels ship as source. The first call compiles them (logging one
line, "compiling the native CPU kernels (first use, ~10 s)"; each file in
its own compiler process) with the system C++ compiler (``$CXX`` or
``c++``, ``-O3 -march=native``) against the FFI headers that come with
jaxlib, into a cache folder (``$DEEPCR_JAX_CACHE``, else
``$XDG_CACHE_HOME/deepcr-jax`` or ``~/.cache/deepcr-jax``), keyed by the
source, compiler, jaxlib version and CPU; later processes reuse it. A new
build deletes the folder's other builds unused for 30 days. Where
there is no compiler, or ``DEEPCR_JAX_NATIVE=0`` is set, :func:`available`
is False and the networks use XLA's convolution: same results within float32
rounding, slower. Only the CPU backend uses the kernel; GPU and TPU always
run XLA's.
"""

from deepcr_jax.native._build import available, cpu_bf16_paths, disabled_by_env, status
from deepcr_jax.native.ops import (
    conv3x3_affine_relu,
    conv3x3_affine_relu_bf16,
    full_bounds,
    supports,
    upconv2x2,
    upconv2x2_bf16,
)

__all__ = [
    "available",
    "bf16_path",
    "conv3x3_affine_relu",
    "conv3x3_affine_relu_bf16",
    "cpu_bf16_paths",
    "disabled_by_env",
    "full_bounds",
    "status",
    "supports",
    "upconv2x2",
    "upconv2x2_bf16",
]

#: ``DEEPCR_JAX_NATIVE_ISA`` values: a bf16 path, or ``fp32`` (bf16 requests run the float32 kernels)
ISA_CHOICES = ("amx", "avx512bf16", "fp32")


def bf16_path() -> str | None:
    """The instruction path ``dtype="bfloat16"`` runs on this CPU: ``"amx"``, ``"avx512bf16"`` or None.

    The fastest of :func:`cpu_bf16_paths` (AMX, else AVX-512-BF16); None
    where there is none or the native kernels are unavailable (then the
    float32 kernels serve bf16 requests). ``DEEPCR_JAX_NATIVE_ISA`` forces
    a path: ``amx``, ``avx512bf16``, or ``fp32`` for none; forcing a path
    this CPU lacks raises :class:`RuntimeError`.
    """
    import os

    paths = cpu_bf16_paths()
    forced = os.environ.get("DEEPCR_JAX_NATIVE_ISA", "").strip().lower()
    if forced:
        if forced not in ISA_CHOICES:
            raise ValueError(f"DEEPCR_JAX_NATIVE_ISA must be one of {ISA_CHOICES}; got {forced!r}")
        if forced == "fp32":
            return None
        if forced not in paths:
            raise RuntimeError(f"DEEPCR_JAX_NATIVE_ISA={forced}: this CPU runs only {paths or 'no bf16 path'}")
        return forced
    return next((p for p in ("amx", "avx512bf16") if p in paths), None)
