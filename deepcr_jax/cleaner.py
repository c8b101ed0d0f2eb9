"""``clean``: cosmic-ray masks and cleaned images for arrays, stacks and frames.

Data flow for one image or a stack (host | device)::

    host:   validate → ignore = user ignore | non-finite → fill ignored pixels (if any)
            → to the device once (a batch of stamps, or one frame in a bucketed buffer)
    device: /scale (→ standardise) → zero-pad top/left to ×4 (as deepCR)
            → tiles (fixed S × S, halo ≥ receptive field) → jitted UNet, sharded
            → stitch cores → probability → threshold
    host:   the mask (or probability) comes back, cropped → 0 at ignored pixels
            → inpaint (medmask on the host | network on the device) → cleaned image

The probability map equals deepCR's ``clean(img, segment=False,
binary=False)`` (within float32 rounding) for every tile size.
"""

from __future__ import annotations

import dataclasses
import os
import threading

import numpy as np
from scipy import ndimage

from deepcr_jax._validate import as_images, as_mask, check_threshold
from deepcr_jax.engine import Engine, default_batch, resolve_precision
from deepcr_jax.medmask import fill_ignored, medmask
from deepcr_jax.model import PAD_MULTIPLE, ModelParams, load_params
from deepcr_jax.tiling import TILE_SIZES, choose_tile
from deepcr_jax.zoo import list_models

__all__ = ["INPAINT_GROW", "TILE_SIZES", "CleanReport", "Cleaner"]

#: Pixels by which the CR mask is grown before inpainting (:class:`Cleaner` ``grow``).
#: Measured end to end (``benchmarks/accuracy.py``, cleaned image vs the CR-free
#: simulated image at the true CR pixels): the predicted mask misses the faint
#: wings of CRs, and those bright pixels, left in the inpainter's context, pull
#: its prediction up; growing the mask by 1 px lowers the error of every
#: inpainter in extragalactic and resolved fields, the networks' most.
INPAINT_GROW = 1
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
    compiled once per tile size for the images that fit in one tile, and
    once per (tile size, frame bucket) for larger ones
    (:func:`deepcr_jax.tiling.frame_bucket`); every image size reuses them.
    ``precision`` (or its alias ``dtype``) is a preset of
    :data:`deepcr_jax.engine.PRECISIONS`; :attr:`precision` is the one asked
    for (the engines' ``precision`` tells what runs on their devices).
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
        dtype: str | None = None,
        devices=None,
        inpaint_scale: float | None = None,
        grow: int = INPAINT_GROW,
        precision: str | None = None,
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
        self.precision = resolve_precision(precision, dtype)
        self._engines: dict[tuple[str, int], Engine] = {}
        self._engines_lock = threading.Lock()
        self._local = threading.local()

    @property
    def dtype(self) -> str:
        """The compute dtype of the inner layers asked for: ``"bfloat16"`` for ``"bf16"``, else ``"float32"``."""
        return "bfloat16" if self.precision == "bf16" else "float32"

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
                    params, tile=tile, batch=self.batch, devices=self.devices, precision=self.precision
                )
            return self._engines[key]

    @property
    def compilations(self) -> int:
        """Total number of compilations of all engines so far."""
        return sum(e.compilations for e in self._engines.values())

    # -- steps -----------------------------------------------------------

    def _run(
        self, params: ModelParams, images: np.ndarray, mask: np.ndarray | None = None, threshold: float | None = None
    ) -> np.ndarray:
        """Network ∘ :func:`~deepcr_jax.model.preprocess`, with :func:`~deepcr_jax.model.postprocess`, on the device.

        ``images`` (n, ny, nx) float32, finite; ``mask`` (n, ny, nx) bool
        for inpainting networks (then the images come back with the mask's
        pixels predicted). Returns (n, ny, nx) float32, or with
        ``threshold`` the bool mask ``probability > threshold``.
        """
        mean = std = None
        if params.standardize:  # the statistics on the host, as preprocess computes them (same bits)
            x = images / np.float32(params.scale)
            mean = np.mean(x, axis=(-2, -1))
            std = np.std(x, axis=(-2, -1))
            std = np.where(std > np.float32(1e-5) * np.abs(mean), std, np.float32(1))
        padded = tuple(-(-s // PAD_MULTIPLE) * PAD_MULTIPLE for s in images.shape[1:])
        engine = self.engine(params.kind, choose_tile(padded, params.depth, self.tile))
        return engine.process(
            images, mask, scale=params.scale, mean=mean, std=std, merge=mask is not None, threshold=threshold
        )

    def probability(self, images: np.ndarray, ignore: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """CR probability (n, ny, nx) float32 for validated images; 0 at ignored pixels.

        Also returns the images with their ignored pixels filled (the
        network's input, in the input units).
        """
        filled = self._filled(images, ignore)
        prob = self._run(self.params, filled)
        prob[ignore] = 0.0
        return prob, filled

    @staticmethod
    def _filled(images: np.ndarray, ignore: np.ndarray) -> np.ndarray:
        """``images`` with the ``ignore`` pixels filled from their surroundings (the rare path: on the host)."""
        if not ignore.any():
            return images
        return np.stack([fill_ignored(img, ign) if ign.any() else img for img, ign in zip(images, ignore)])

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
        n_ignored = int(np.count_nonzero(ign))
        filled = self._filled(images, ign) if n_ignored else images
        # binary: the device thresholds and only the mask comes back; else the probability
        result = self._run(self.params, filled, threshold=t if binary else None)
        if n_ignored:
            result[ign] = 0
        mask = result if binary else result > t
        self._local.report = CleanReport(
            n_images=len(images),
            n_ignored=n_ignored,
            n_nonfinite=int(np.count_nonzero(nonfinite)) if n_ignored else 0,
            n_cr=int(np.count_nonzero(mask)),
            threshold=t,
        )
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
            return self._run(self.inpaint_params, filled, mask | ign)  # the mask's dilation stays on the host
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
