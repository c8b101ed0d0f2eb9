"""The convenience API: ``load``, ``clean`` and ``inpaint`` (one cached :class:`Cleaner` per settings).

``clean(image)`` in a loop compiles once: the Cleaner (and its compiled
engines) for a (model, inpainter, tile, batch, precision) is built on first use
and kept (:func:`cached_cleaner`); :func:`load` returns a fresh one to hold
on to.
"""

from __future__ import annotations

import functools
import os

from deepcr_jax.cleaner import INPAINT_GROW, Cleaner
from deepcr_jax.engine import resolve_precision

__all__ = ["cached_cleaner", "clean", "inpaint", "load"]


def load(
    model: str | os.PathLike = "ACS-WFC",
    *,
    inpaint: str | os.PathLike | None = None,
    tile: int | None = None,
    batch: int | None = None,
    dtype: str | None = None,
    grow: int = INPAINT_GROW,
    precision: str | None = None,
) -> Cleaner:
    """Load a model once for many calls: returns a :class:`Cleaner`.

    Parameters
    ----------
    model : str or path-like
        Mask network: a zoo name (:func:`deepcr_jax.list_models`) or a
        converted ``.npz``.
    inpaint : str, optional
        ``"medmask"`` or an inpainting zoo name (``"ACS-WFC-F606W-2-32"``,
        ``"ACS-WFC-F606W-3-32"``); None: masks only.
    tile : int, optional
        Tile side S (multiple of 8). Default: per image, the size of
        :data:`TILE_SIZES` that computes the fewest pixels (one tile for
        images up to 1024², seam-free overlapping 256 tiles for HST chips).
        A fixed ``tile`` compiles once for every image size.
    batch : int, optional
        Tiles per network call (rounded up to a multiple of the device
        count). Default 1 on CPU (fastest there), 8 on GPU/TPU.
    dtype : {"float32", "bfloat16"}, optional
        Alias of ``precision``: ``"float32"`` is ``"exact"``, ``"bfloat16"`` is ``"bf16"``.
    grow : int
        With an inpainter: pixels by which the CR mask is grown before its
        pixels are replaced (default 1, :data:`INPAINT_GROW`; 0 replaces the
        mask as predicted, as deepCR does). The returned mask is not grown.
    precision : {"exact", "bf16", "tf32"}, optional
        ``"exact"`` (default): float32 throughout, "highest" matmul precision
        on GPU/TPU (no TF32, no bf16 passes). ``"bf16"``: bfloat16 inner
        layers (the first block and the head stay float32); on CPUs with
        AVX-512-BF16 or AMX the native bf16 kernels. ``"tf32"``:
        TensorFloat-32 convolutions on NVIDIA GPUs (Ampere and later; 3-pass
        bfloat16 on TPUs); a CPU has no TF32 and runs ``"exact"``.
    """
    return Cleaner(model, inpaint=inpaint, tile=tile, batch=batch, dtype=dtype, grow=grow, precision=precision)


@functools.lru_cache(maxsize=8)
def _cached_cleaner(model, inpaint, tile, batch, precision) -> Cleaner:
    return Cleaner(model, inpaint=inpaint, tile=tile, batch=batch, precision=precision)


def cached_cleaner(model, inpaint, tile, batch, precision="exact") -> Cleaner:
    """The :class:`Cleaner` for these settings, built once per process (``clean()``, ``clean_fits``).

    ``precision`` is a preset name or its ``dtype`` alias (``"float32"``, ``"bfloat16"``).
    """
    if precision in ("float32", "bfloat16"):
        precision = resolve_precision(dtype=precision)
    else:
        precision = resolve_precision(precision)
    key = (model, inpaint, tile, batch, precision)  # a Path stays a path (never read as a zoo name)
    try:
        hash(key)
    except TypeError:
        raise TypeError(f"model must be a zoo name or a path; got {type(model).__name__}") from None
    return _cached_cleaner(*key)


def clean(
    image,
    model: str | os.PathLike = "ACS-WFC",
    *,
    threshold: float | None = None,
    binary: bool = True,
    inpaint: str | None = None,
    ignore=None,
    tile: int | None = None,
    batch: int | None = None,
    dtype: str | None = None,
    precision: str | None = None,
):
    """Cosmic-ray mask (and cleaned image) of one image or a stack.

    Parameters
    ----------
    image : array_like, shape (ny, nx) or (n, ny, nx)
        Image(s) in the model's units (electrons for HST ACS/WFC ``_flc``),
        any real dtype; numpy or JAX. NaN/±inf pixels are ignored pixels.
    model : str or path-like
        Mask network (zoo name or converted ``.npz``). Default ``"ACS-WFC"``.
    threshold : float in [0, 1], optional
        Default: the model's recommended threshold.
    binary : bool
        True: boolean mask (True = cosmic ray). False: float32 probability.
    inpaint : str, optional
        None: return only the mask. ``"medmask"`` (5×5 masked median) or an
        inpainting zoo name: also return the cleaned image.
    ignore : array_like of bool, optional
        Same shape as ``image``; True = bad pixel: never flagged as CR,
        filled before detection and in the cleaned image.
    tile, batch, dtype, precision
        Engine settings, see :func:`load`.

    Returns
    -------
    mask : ndarray (shape of ``image``), bool or float32
    cleaned : ndarray float32, only when ``inpaint`` is given

    Notes
    -----
    Loaded models and compiled functions are cached between calls, so a loop
    over images compiles once. For the ignored-pixel count use
    :func:`load` and :attr:`Cleaner.last_report`.
    """
    cleaner = cached_cleaner(model, inpaint, tile, batch, resolve_precision(precision, dtype))
    return cleaner.clean(image, threshold=threshold, binary=binary, ignore=ignore)


def inpaint(image, mask, method: str = "medmask", *, tile: int | None = None, batch: int | None = None):
    """Replace the ``mask`` pixels of ``image``.

    Parameters
    ----------
    image : array_like (ny, nx) or (n, ny, nx), finite, in the model's units
    mask : array_like of bool, same shape; True where pixels are replaced
    method : str
        ``"medmask"`` (deepCR's 5×5 masked median) or an inpainting zoo name.

    Returns
    -------
    ndarray float32, same shape; unmasked pixels unchanged.
    """
    return cached_cleaner("ACS-WFC", method, tile, batch, "exact").inpaint(image, mask)
