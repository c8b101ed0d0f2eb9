"""``clean``: cosmic-ray masks and cleaned images for arrays, stacks and frames.

Data flow for one image (a stack repeats the per-image steps and shares the
tile batches)::

    validate → ignore = user ignore | non-finite → fill ignored pixels
    → /scale (→ standardise) → zero-pad top/left to ×4 (as deepCR)
    → tiles (fixed S × S, halo ≥ receptive field) → jitted UNet, sharded
    → stitch cores → crop → probability (0 at ignored pixels)
    → threshold → mask → inpaint (medmask | network) → undo preprocessing

The probability map equals deepCR's ``clean(img, segment=False,
binary=False)`` (within float32 rounding) for every tile size.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading

import jax
import numpy as np
from scipy import ndimage

from deepcr_jax._validate import as_images, as_mask, check_threshold
from deepcr_jax.engine import Engine, resolve_dtype
from deepcr_jax.medmask import fill_ignored, medmask
from deepcr_jax.model import ModelParams, load_params, postprocess, preprocess
from deepcr_jax.tiling import TILE_SIZES, choose_tile
from deepcr_jax.zoo import list_models

__all__ = ["INPAINT_GROW", "TILE_SIZES", "CleanReport", "Cleaner", "clean", "inpaint", "load"]

#: Pixels by which the CR mask is grown before inpainting (:class:`Cleaner` ``grow``).
#: Measured end to end (``benchmarks/accuracy.py``, cleaned image vs the CR-free
#: simulated image at the true CR pixels): the predicted mask misses the faint
#: wings of CRs, and those bright pixels, left in the inpainter's context, pull
#: its prediction up; growing the mask by 1 px lowers the error of every
#: inpainter in extragalactic and resolved fields, the networks' most.
INPAINT_GROW = 1
#: Default tiles per network call: 1 on CPUs (larger batches are slower
#: there, cache), 8 on GPUs/TPUs (measured on an H100: batch 10 cleans 100
#: stamps 2.2x faster than batch 1, batch 100 is no faster than 10; see
#: benchmarks/results/speed_gpu.md).
DEFAULT_BATCH = {"cpu": 1, "accelerator": 8}


def default_batch(devices=None) -> int:
    """:data:`DEFAULT_BATCH` for ``devices`` (default: the local devices)."""
    devices = jax.local_devices() if devices is None else devices
    return DEFAULT_BATCH["cpu" if all(d.platform == "cpu" for d in devices) else "accelerator"]


@dataclasses.dataclass(frozen=True)
class CleanReport:
    """What :meth:`Cleaner.clean` did to the last input.

    Attributes
    ----------
    n_images : int
        Images processed (1 for a 2-D input).
    n_ignored : int
        Pixels excluded from detection and filled: the caller's ``ignore``
        plus non-finite pixels.
    n_nonfinite : int
        NaN or ±inf pixels among them.
    n_cr : int
        Pixels in the binary CR mask (at the threshold used).
    threshold : float
    """

    n_images: int
    n_ignored: int
    n_nonfinite: int
    n_cr: int
    threshold: float


# --------------------------------------------------------------------------
# the reusable object


class Cleaner:
    """A loaded mask network (and optionally an inpainter) with compiled engines.

    Create with :func:`load`. Reuse it for many images: the network is
    compiled once per tile size and every image size reuses it.
    ``devices`` (sequence of ``jax.Device``) pins the engines to those
    devices; default all local devices. ``inpaint_scale`` overrides the
    inpainting network's input scale (the zoo's value by default; the
    :mod:`deepcr_jax.compat` layer passes the mask model's scale, as deepCR
    0.3.1 does).
    """

    def __init__(
        self,
        model: str | os.PathLike = "ACS-WFC",
        *,
        inpaint: str | os.PathLike | None = None,
        tile: int | None = None,
        batch: int | None = None,
        dtype: str = "float32",
        devices=None,
        inpaint_scale: float | None = None,
        grow: int = INPAINT_GROW,
    ) -> None:
        self.params: ModelParams = load_params(model, kind="mask")
        if isinstance(grow, bool) or not isinstance(grow, (int, np.integer)) or grow < 0:
            raise ValueError(f"grow must be a non-negative int (pixels); got {grow!r}")
        self.grow = int(grow)
        self.devices = None if devices is None else list(devices)
        self.inpaint_method: str | None = None
        self.inpaint_params: ModelParams | None = None
        if inpaint is not None and not isinstance(inpaint, (str, os.PathLike)):
            raise TypeError(
                "inpaint must be None, 'medmask', an inpainting zoo name or a .npz path; "
                f"got {inpaint!r}"
            )
        if inpaint is not None:
            if inpaint == "medmask":
                self.inpaint_method = "medmask"
            else:
                try:
                    self.inpaint_params = load_params(inpaint, kind="inpaint")
                except ValueError as err:
                    raise ValueError(
                        f"inpaint must be None, 'medmask' or one of {', '.join(list_models('inpaint'))}"
                        f" (or a converted .npz); {err}"
                    ) from None
                self.inpaint_method = "network"
                if inpaint_scale is not None:
                    if not np.isfinite(inpaint_scale) or inpaint_scale <= 0:
                        raise ValueError(f"inpaint_scale must be a positive number; got {inpaint_scale!r}")
                    self.inpaint_params = self.inpaint_params.replace(scale=float(inpaint_scale))
        if tile is not None and (
            isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile <= 0
        ):
            raise ValueError(f"tile must be a positive int; got {tile!r}")
        if tile is not None and tile % 8:
            raise ValueError(f"tile must be a multiple of 8; got {tile}")
        self.tile = tile
        if batch is not None and (isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch <= 0):
            raise ValueError(f"batch must be a positive int; got {batch!r}")
        self.batch = default_batch(self.devices) if batch is None else int(batch)
        resolve_dtype(dtype)
        self.dtype = dtype
        self._engines: dict[tuple[str, int], Engine] = {}
        self._engines_lock = threading.Lock()
        self._local = threading.local()

    @property
    def last_report(self) -> CleanReport | None:
        """What this thread's last :meth:`clean` call did (None before the first)."""
        return getattr(self._local, "report", None)

    # -- engines ---------------------------------------------------------

    def engine(self, which: str, tile: int) -> Engine:
        """The compiled engine for ``which`` ("mask" or "inpaint") at tile size ``tile``."""
        key = (which, tile)
        with self._engines_lock:
            if key not in self._engines:
                params = self.params if which == "mask" else self.inpaint_params
                self._engines[key] = Engine(
                    params, tile=tile, batch=self.batch, dtype=self.dtype, devices=self.devices
                )
            return self._engines[key]

    @property
    def compilations(self) -> int:
        """Total number of compilations of all engines so far."""
        return sum(e.compilations for e in self._engines.values())

    # -- steps -----------------------------------------------------------

    def _run(self, params: ModelParams, images: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """:func:`~deepcr_jax.model.postprocess` ∘ network ∘ :func:`~deepcr_jax.model.preprocess`, tiled.

        ``images`` (n, ny, nx) float32, finite; ``mask`` (n, ny, nx) bool
        for inpainting networks. Returns (n, ny, nx) float32.
        """
        which = params.kind
        x, undo = preprocess(params, images, mask, xp=np)
        tile = choose_tile(x.shape[1:3], params.depth, self.tile)
        out = np.stack(self.engine(which, tile).run(list(x)))
        return postprocess(params, out, undo, images, mask, xp=np)

    def probability(self, images: np.ndarray, ignore: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """CR probability (n, ny, nx) float32 for validated images; 0 at ignored pixels.

        Also returns the images with their ignored pixels filled (the
        network's input, in the input units).
        """
        filled = np.stack([fill_ignored(img, ign) if ign.any() else img for img, ign in zip(images, ignore)])
        prob = self._run(self.params, filled)
        prob[ignore] = 0.0
        return prob, filled

    # -- public ----------------------------------------------------------

    def clean(
        self,
        image,
        *,
        threshold: float | None = None,
        binary: bool = True,
        ignore=None,
        cleaned: bool | None = None,
    ):
        """Detect cosmic rays (and optionally replace them).

        Parameters
        ----------
        image : array_like, shape (ny, nx) or (n, ny, nx)
            Image(s) in the model's units (electrons for HST ``_flc``), any
            real dtype (numpy or JAX). NaN/±inf pixels, and the masked
            pixels of a ``numpy.ma.MaskedArray``, are treated as ignored.
        threshold : float in [0, 1], optional
            Probability above which a pixel is a CR; default the model's
            recommended value.
        binary : bool
            Return the boolean mask (True = cosmic ray) or the float32
            probability map.
        ignore : array_like of bool, same shape as ``image``, optional
            True for pixels to exclude (bad/saturated). They are never
            reported as CRs, are filled from their surroundings (median of
            the usable pixels of their 5×5 window, growing inwards) before
            the network sees them, and are filled in the cleaned image.
        cleaned : bool, optional
            Whether to return the cleaned image too; default: when the
            Cleaner was loaded with an inpainter.

        Returns
        -------
        mask : ndarray, shape like ``image``
            bool (binary) or float32 probability.
        cleaned : ndarray float32, shape like ``image``
            Only when inpainting: CR pixels (the mask grown by ``grow``
            pixels, default 1: the faint CR wings below the threshold) and
            ignored pixels replaced, in the input units; every other pixel
            is the input's value.

        The caller's array is never modified. :attr:`last_report` tells how
        many pixels were ignored and flagged (per thread: the report of this
        thread's last call).
        """
        t = self.params.threshold if threshold is None else check_threshold(threshold)
        do_inpaint = self.inpaint_method is not None if cleaned is None else bool(cleaned)
        if do_inpaint and self.inpaint_method is None:
            raise ValueError("cleaned=True needs an inpainter: load(..., inpaint='medmask' or a model name)")
        images, single, masked = as_images(image)
        user_ignore = as_mask(ignore, images.shape[1:] if single else images.shape, "ignore")
        user_ignore = (user_ignore[None] if single else user_ignore) | masked
        nonfinite = ~np.isfinite(images)
        ign = user_ignore | nonfinite
        prob, filled = self.probability(images, ign)
        mask = prob > t
        self._local.report = CleanReport(
            n_images=len(images),
            n_ignored=int(ign.sum()),
            n_nonfinite=int(nonfinite.sum()),
            n_cr=int(mask.sum()),
            threshold=t,
        )
        result = mask if binary else prob
        if not do_inpaint:
            return result[0] if single else result
        out = self._replace(filled, mask, ign, self.grow)
        if single:
            return result[0], out[0]
        return result, out

    def _replace(self, filled: np.ndarray, mask: np.ndarray, ign: np.ndarray, grow: int = 0) -> np.ndarray:
        if grow:  # CR wings below the threshold: replace them too, keep them out of the inpainter's context
            size = 2 * grow + 1
            mask = ndimage.maximum_filter(mask, size=(1, size, size), mode="constant") & ~ign
        if self.inpaint_method == "network":
            return self._run(self.inpaint_params, filled, mask | ign)
        return np.stack([medmask(f, m, exclude=i) for f, m, i in zip(filled, mask, ign)])

    def inpaint(self, image, mask):
        """Replace ``mask`` pixels of ``image`` with the loaded inpainter.

        Parameters
        ----------
        image : array_like (ny, nx) or (n, ny, nx), finite values
        mask : array_like, same shape; True where pixels are replaced

        Returns
        -------
        ndarray float32, same shape.
        """
        images, single, masked = as_images(image)
        m = as_mask(mask, images.shape[1:] if single else images.shape, "mask")
        m = (m[None] if single else m) | masked
        if self.inpaint_method is None:
            raise ValueError("no inpainter loaded: load(..., inpaint='medmask' or a model name)")
        if not np.isfinite(images).all():
            raise ValueError("image has non-finite pixels; include them in mask or use clean(..., ignore=...)")
        none = np.zeros_like(m)
        out = self._replace(images, m, none)
        return out[0] if single else out


def load(
    model: str | os.PathLike = "ACS-WFC",
    *,
    inpaint: str | os.PathLike | None = None,
    tile: int | None = None,
    batch: int | None = None,
    dtype: str = "float32",
    grow: int = INPAINT_GROW,
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
    dtype : {"float32", "bfloat16"}
        Compute dtype; bfloat16 (inner layers only, the first block and head
        stay float32) is for GPU/TPU.
    grow : int
        With an inpainter: pixels by which the CR mask is grown before its
        pixels are replaced (default 1, :data:`INPAINT_GROW`; 0 replaces the
        mask as predicted, as deepCR does). The returned mask is not grown.
    """
    return Cleaner(model, inpaint=inpaint, tile=tile, batch=batch, dtype=dtype, grow=grow)


@functools.lru_cache(maxsize=8)
def _cached_cleaner(model, inpaint, tile, batch, dtype) -> Cleaner:
    return Cleaner(model, inpaint=inpaint, tile=tile, batch=batch, dtype=dtype)


def _cleaner(model, inpaint, tile, batch, dtype) -> Cleaner:
    key = (model, inpaint, tile, batch, dtype)  # a Path stays a path (never read as a zoo name)
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
    dtype: str = "float32",
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
    tile, batch, dtype
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
    cleaner = _cleaner(model, inpaint, tile, batch, dtype)
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
    return _cleaner("ACS-WFC", method, tile, batch, "float32").inpaint(image, mask)
