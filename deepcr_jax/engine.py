"""The jitted, batched, sharded network forward over fixed-shape tiles.

One :class:`Engine` holds one network's parameters on the local devices and
one compiled function per (tile size, batch, dtype): every image of every size
goes through the same ``(batch, S, S, channels)`` call; the last batch is
padded, never recompiled. The batch axis is sharded over all local devices
(data parallel) with :mod:`jax.sharding`; with one device this is a plain jit.

Host work (cutting tiles, stitching results) overlaps device compute: batch
``i + 1`` is cut and dispatched before the result of batch ``i`` is fetched.

On CPU devices the conv blocks run through the native kernels of
:mod:`deepcr_jax.native` when they are available (``Engine.native``; in
bfloat16 on the bf16 kernels where the CPU has them, ``Engine.isa``); the batch
is then split over the devices with ``shard_map`` so that every device runs
the kernel on its own tiles.
"""

from __future__ import annotations

import ctypes
import functools
import platform
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from deepcr_jax import native
from deepcr_jax.model import ModelParams
from deepcr_jax.native import unet as native_unet
from deepcr_jax.tiling import TilePlan, copy_window, plan_tiles

__all__ = ["DEFAULT_BATCH", "Engine", "default_batch", "resolve_dtype", "tune_host_allocator"]

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_allocator_tuned = False


def tune_host_allocator() -> bool:
    """Keep freed memory in glibc's heap instead of giving it back to the OS.

    XLA:CPU allocates the temporaries of every call afresh, as one block of
    tens of MB per 256x256 tile. glibc maps blocks above its mmap threshold
    (at most 32 MiB by default) and unmaps them on free, so each call pays
    for faulting in and zeroing fresh pages: measured 20-25 % of a stamp's
    forward on CPU. This raises the mmap threshold to 512 MiB and the trim
    threshold to 1 GiB, process-wide (PyTorch in the same process gets the
    same benefit). Peak memory is unchanged; memory freed after a run stays
    with the process for reuse. Linux/glibc only; nothing in the library
    calls it on its own: call it once at the start of a program that cleans
    on CPU (the ``deepcr-jax`` command does); ``DEEPCR_JAX_TUNE_MALLOC=0``
    makes it a no-op.

    Returns whether the thresholds are (now) set.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    if native.disabled_by_env("DEEPCR_JAX_TUNE_MALLOC"):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, 512 << 20) == 1 and mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1
    _allocator_tuned = ok
    return ok


#: Default tiles per network call: 1 on CPUs (larger batches are slower
#: there, cache), 8 on GPUs/TPUs (measured on an H100: batch 10 cleans 100
#: stamps 2.2x faster than batch 1, batch 100 is no faster than 10; see
#: benchmarks/results/speed_gpu.md).
DEFAULT_BATCH = {"cpu": 1, "accelerator": 8}


def default_batch(devices=None) -> int:
    """:data:`DEFAULT_BATCH` for ``devices`` (default: the local devices)."""
    devices = jax.local_devices() if devices is None else devices
    return DEFAULT_BATCH["cpu" if all(d.platform == "cpu" for d in devices) else "accelerator"]


@functools.cache
def mesh_of(devices: tuple[jax.Device, ...]) -> Mesh:
    """The 1-D ``("batch",)`` mesh over ``devices``, built once per device set."""
    return Mesh(np.asarray(devices), ("batch",))


def resolve_dtype(dtype) -> jnp.dtype:
    """``"float32"`` (default, exact) or ``"bfloat16"`` (opt-in compute dtype)."""
    key = jnp.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if key not in _DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'bfloat16'; got {dtype!r}")
    return _DTYPES[key]


class Engine:
    """Run one network over tiles of many images with a single compilation.

    Parameters
    ----------
    params : ModelParams
        Folded network from :func:`deepcr_jax.load_params`.
    tile : int
        Tile side ``S`` (network input ``S × S``), a multiple of ``2**depth``.
    batch : int
        Tiles per call; rounded up to a multiple of the local device count.
    dtype : {"float32", "bfloat16"}
        Compute dtype of the inner layers (the first conv block, which sees
        the raw image, and the output head stay float32). Outputs are float32.
    devices : sequence of jax.Device, optional
        Devices to shard the batch over; default all local devices.

    Attributes
    ----------
    compilations : int
        How many times the forward was traced (one per distinct input shape).
    native : bool
        Whether the conv blocks run through the native CPU kernels.
    isa : {"amx", "avx512bf16", "fp32"} or None
        The native kernels' instruction path: ``"amx"`` / ``"avx512bf16"``
        for the bf16 kernels (``dtype="bfloat16"`` on a CPU that has them,
        detected at run time; ``DEEPCR_JAX_NATIVE_ISA`` forces one),
        ``"fp32"`` for the float32 kernels (also what ``dtype="bfloat16"``
        runs on a CPU without bf16 instructions); None where XLA's
        convolution runs.
    """

    def __init__(
        self,
        params: ModelParams,
        tile: int,
        batch: int,
        dtype="float32",
        devices: Sequence[jax.Device] | None = None,
    ) -> None:
        if not isinstance(tile, (int, np.integer)) or tile <= 0:
            raise ValueError(f"tile must be a positive int; got {tile!r}")
        if not isinstance(batch, (int, np.integer)) or batch <= 0:
            raise ValueError(f"batch must be a positive int; got {batch!r}")
        self.dtype = resolve_dtype(dtype)
        devices = list(devices) if devices is not None else jax.local_devices()
        self.n_devices = len(devices)
        self.batch = -(-int(batch) // self.n_devices) * self.n_devices
        self.tile = int(tile)
        self.depth = params.depth
        self.in_channels = params.in_channels
        self.mesh = mesh_of(tuple(devices))
        self._data = NamedSharding(self.mesh, PartitionSpec("batch"))
        replicated = NamedSharding(self.mesh, PartitionSpec())
        self.params = jax.device_put(params, replicated)
        self.compilations = 0
        on_cpu = all(d.platform == "cpu" for d in devices)
        self.native = (
            on_cpu
            and native_unet.supported(params.norm, params.hidden, params.in_channels)
            and native.available()
        )
        # bfloat16 on CPU: the bf16 kernels where the CPU has them (AMX, else
        # AVX-512-BF16), else the float32 kernels (XLA's bf16 conv upcasts and
        # is slower than float32)
        self._bf16_path = native.bf16_path() if self.native and self.dtype != jnp.float32 else None
        if not self.native:
            self.isa = None
        else:
            self.isa = self._bf16_path or "fp32"
        forward = self._forward
        if self.native and self.n_devices > 1:
            spec = PartitionSpec("batch")
            forward = jax.shard_map(
                forward,
                mesh=self.mesh,
                in_specs=(PartitionSpec(), spec, spec),
                out_specs=spec,
                check_vma=False,
            )
        self._fn = jax.jit(
            forward, in_shardings=(replicated, self._data, self._data), out_shardings=self._data
        )

    def _forward(self, params: ModelParams, x: jax.Array, valid: jax.Array) -> jax.Array:
        self.compilations += 1  # Python side effect: runs at trace time only
        if self.native:
            y = native_unet.forward(params.variables, x, valid, depth=params.depth, norm=params.norm,
                                    head=params.head, bf16=self._bf16_path)
        elif self.dtype != jnp.float32:
            # inner layers only: the first block and the head stay float32
            y = params.module.clone(compute_dtype=self.dtype).apply(params.variables, x, valid=valid)
        else:
            # exact float32: no TF32 / bf16-pass convolutions on GPU or TPU
            with jax.default_matmul_precision("highest"):
                y = params.module.apply(params.variables, x, valid=valid)
        return y[..., 0].astype(jnp.float32)

    def run(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Network output for each padded, preprocessed image.

        Parameters
        ----------
        images : sequence of ndarray, each (ny, nx) or (ny, nx, in_channels)
            float32, ``ny`` and ``nx`` multiples of 4 (deepCR's padding done).

        Returns
        -------
        list of ndarray (ny, nx) float32
            What the whole-image forward gives, stitched from tile cores.
        """
        images = [img if img.ndim == 3 else img[..., None] for img in images]
        plans: list[TilePlan] = []
        outs: list[np.ndarray] = []
        for img in images:
            if img.shape[-1] != self.in_channels:
                raise ValueError(f"network takes {self.in_channels} channel(s); got image shape {img.shape}")
            plans.append(plan_tiles(img.shape[:2], self.tile, self.depth))
            outs.append(np.empty(img.shape[:2], np.float32))
        jobs = [(i, k) for i, plan in enumerate(plans) for k in range(len(plan))]
        b, s, c = self.batch, self.tile, self.in_channels
        pending = None
        for start in range(0, len(jobs), b):
            chunk = jobs[start : start + b]
            x = np.zeros((b, s, s, c), np.float32)
            v = np.zeros((b, s, s, 1), np.float32)
            for slot, (i, k) in enumerate(chunk):
                ty, tx, *_ = plans[i].window(k)
                copy_window(images[i], ty, tx, x[slot], v[slot, ..., 0])
            y = self._fn(self.params, jax.device_put(x, self._data), jax.device_put(v, self._data))
            if pending is not None:
                self._stitch(*pending, plans, outs)
            pending = (y, chunk)
        if pending is not None:
            self._stitch(*pending, plans, outs)
        return outs

    @staticmethod
    def _stitch(y: jax.Array, chunk, plans: list[TilePlan], outs: list[np.ndarray]) -> None:
        y = np.asarray(y)
        for slot, (i, k) in enumerate(chunk):
            _, _, oy, ox, ny, nx = plans[i].window(k)
            h = plans[i].halo
            outs[i][oy : oy + ny, ox : ox + nx] = y[slot, h : h + ny, h : h + nx]
