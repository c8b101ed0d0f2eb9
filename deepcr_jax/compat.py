"""Drop-in replacement for deepCR 0.3.1's ``deepCR`` class.

Change one import and keep the rest of a script::

    # from deepCR import deepCR
    from deepcr_jax.compat import deepCR

    mdl = deepCR(mask="ACS-WFC", inpaint="ACS-WFC-F606W-2-32", device="CPU")
    mask = mdl.clean(image, threshold=0.5)
    mask, cleaned = mdl.clean(image, threshold=0.5, inpaint=True)
    cleaned = mdl.inpaint(image, mask)

Return conventions are deepCR 0.3.1's, which depend on the code path the
reference takes:

============================  ======================  ==================  ===========
call                          binary mask             probability mask    cleaned
============================  ======================  ==================  ===========
``segment=False, n_jobs=1``   float32 0/1             float32             float32
``segment=True, n_jobs=1``    float64 0/1             float64             float64
``n_jobs != 1``               int8 0/1                float32             float32
``inpaint(img0, mask)``                                                   float32
============================  ======================  ==================  ===========

(``segment=True`` is deepCR's default, hence float64 by default.) Masks have
the image's shape; with ``inpaint=True`` the result is ``(mask, cleaned)``.

Differences from the reference
------------------------------
* ``segment``, ``patch`` and ``n_jobs`` are accepted but do not change the
  numbers: deepcr-jax always runs overlapping tiles whose halo covers the
  network's receptive field, so its output equals the whole-image forward
  (the reference's ``segment=False``). The reference's ``segment=True``
  runs independent ``patch`` x ``patch`` pieces, each zero-padded, so the two
  differ only within a few pixels of the reference's patch seams.
* NaN/inf pixels are treated as ignored (never CRs, filled in the cleaned
  image) instead of propagating through the network.
* ``mask`` may be any zoo mask model (also those deepCR ships but does not
  register), a ``.npz`` from ``deepcr-jax convert``, or a ``.pth`` state
  dict, converted on the fly (needs torch) with the reference's assumptions
  for user files: input scale 1, no standardisation; the architecture
  (depth, width, weight-norm or BatchNorm) is read from the tensors, so
  ``hidden`` is not needed and is ignored.
* ``device="GPU"`` runs on JAX's default accelerator (all local devices);
  like the reference it is an error (``AssertionError``) when there is none.
  ``device="CPU"`` runs on the CPU even where an accelerator exists.
* As in the reference, an inpainting network sees the image divided by the
  *mask* model's scale (electrons with ``ACS-WFC``, e-/100 with
  ``example_model``). :func:`deepcr_jax.clean` instead always feeds the
  inpainting networks the e-/100 their weights were trained on (see
  :mod:`deepcr_jax.zoo`), which inpaints better whatever the mask model.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np

from deepcr_jax.cleaner import Cleaner
from deepcr_jax.model import load_params
from deepcr_jax.zoo import MODELS, list_models

__all__ = ["deepCR"]


def _devices_for(device: Any) -> tuple[list | None, Any]:
    """(devices for the engines, a device for ``jax.default_device``) of ``"CPU"``/``"GPU"``."""
    import jax

    if not isinstance(device, str) or device.upper() not in ("CPU", "GPU"):
        raise ValueError(f"device must be 'CPU' or 'GPU'; got {device!r}")
    if device.upper() == "CPU":
        cpu = jax.devices("cpu")
        return cpu[:1], cpu[0]
    try:
        gpus = jax.devices("gpu")
    except RuntimeError:
        gpus = []
    if not gpus:
        raise AssertionError(
            f"No CUDA device detected! device='GPU' needs a JAX GPU backend; JAX sees {jax.devices()}"
        )
    return gpus, gpus[0]


def _convert_pth(path: str, directory: str) -> str:
    """Convert a user's deepCR mask ``.pth`` to a ``.npz`` in ``directory``; returns its path."""
    from deepcr_jax.convert import convert_state_dict, load_torch_state_dict
    from deepcr_jax.weights import model_meta, save_npz

    variables, arch = convert_state_dict(load_torch_state_dict(path))
    if arch.kind != "mask":
        raise ValueError(
            f"mask {path!r} is an inpainting network ({arch.in_channels} input channels); "
            "a mask network (1 input channel) is needed"
        )
    out = os.path.join(directory, "mask.npz")
    save_npz(out, variables, model_meta(arch, name=os.path.basename(path)))
    return out


class deepCR:
    """deepCR 0.3.1's model class, running on deepcr-jax.

    Parameters
    ----------
    mask : str
        Mask model: a zoo name (``"ACS-WFC"``, ``"WFC3-UVIS"``, ``"decam"``,
        ``"example_model"``, ...; see :func:`deepcr_jax.list_models`), or the
        path of a deepCR-trained ``.pth`` (converted on the fly; needs torch)
        or of a ``.npz`` from ``deepcr-jax convert``.
    inpaint : str, optional
        Inpainting zoo model (``"ACS-WFC-F606W-2-32"``, ``"ACS-WFC-F606W-3-32"``).
        None (default): deepCR's 5x5 masked median (``medmask``).
    device : {"CPU", "GPU"}
        ``"GPU"`` uses JAX's GPU devices; an ``AssertionError`` if there are none.
    hidden : int
        Accepted for compatibility; the width of a ``.pth`` is read from its tensors.

    Attributes
    ----------
    scale : float
        The mask network sees ``image / scale``.
    norm : bool
        Whether images are standardised (mean/std) first (WFC3-UVIS).
    cleaner : deepcr_jax.Cleaner
        The underlying loaded model, for use with the native API.
    """

    def __init__(
        self, mask: str = "ACS-WFC", inpaint: str | None = None, device: str = "CPU", hidden: int = 32
    ):
        self._devices, self._default = _devices_for(device)
        self.device = device.upper()
        self.hidden = hidden
        inpainter = "medmask" if inpaint is None else inpaint
        if isinstance(mask, os.PathLike):
            mask = os.fspath(mask)
        if not isinstance(mask, str):
            raise TypeError(f"mask must be a model name or a file path (str); got {type(mask).__name__}")
        with self._on_device():
            spec = MODELS.get(mask)
            if spec is not None and spec.kind == "mask":
                self.cleaner = self._load(mask, inpainter)
            elif spec is not None:
                raise ValueError(
                    f"mask {mask!r} is an inpainting model; pass it as inpaint=, and a mask model as mask= "
                    f"({', '.join(list_models('mask'))})"
                )
            elif os.path.isfile(mask):
                if mask.endswith(".npz"):
                    self.cleaner = self._load(mask, inpainter)
                else:
                    with tempfile.TemporaryDirectory(prefix="deepcr-jax-") as tmp:
                        self.cleaner = self._load(_convert_pth(mask, tmp), inpainter)
            elif mask.endswith((".pth", ".pt", ".npz")) or os.sep in mask:
                raise FileNotFoundError(f"mask model file {mask!r} does not exist")
            else:
                raise ValueError(
                    f"unknown mask model {mask!r}; valid names: {', '.join(list_models('mask'))} "
                    "(or the path of a .pth or .npz file)"
                )
        self.scale = float(self.cleaner.params.scale)
        self.norm = bool(self.cleaner.params.standardize)

    def _load(self, model: str, inpaint: str) -> Cleaner:
        # deepCR 0.3.1 feeds its inpainting network the image divided by the
        # *mask* model's scale (its registry gives inpainters none)
        scale = load_params(model, kind="mask").scale if inpaint not in (None, "medmask") else None
        return Cleaner(model, inpaint=inpaint, devices=self._devices, inpaint_scale=scale, grow=0)

    @contextlib.contextmanager
    def _on_device(self) -> Iterator[None]:
        import jax

        with jax.default_device(self._default):
            yield

    def clean(
        self,
        img0: np.ndarray,
        threshold: float = 0.5,
        inpaint: bool = False,
        binary: bool = True,
        segment: bool = True,
        patch: int = 1024,
        n_jobs: int = 1,
    ):
        """Identify cosmic rays in an image and optionally inpaint them.

        Parameters
        ----------
        img0 : ndarray, (ny, nx)
            Image in the model's units (electrons for HST ACS/WFC ``_flc``,
            native resolution). NaN/inf pixels are ignored.
        threshold : float in [0, 1]
            A pixel is a CR where its probability is above ``threshold``.
        inpaint : bool
            Also return the image with CR pixels replaced (by the inpainting
            network given to the constructor, else by ``medmask``).
        binary : bool
            Return the 0/1 mask (1 = cosmic ray) or the probability map.
        segment, patch, n_jobs
            Accepted as deepCR does; they select the output dtype deepCR
            returns (see the module docs) but not the numbers, which are
            always the seam-free whole-image result.

        Returns
        -------
        mask : ndarray, (ny, nx)
            float32 (``segment=False``), float64 (``segment=True``) or, with
            ``n_jobs != 1``, int8 (binary) / float32 (probability).
        cleaned : ndarray, (ny, nx)
            Only with ``inpaint=True``: float32, or float64 for
            ``segment=True, n_jobs=1``; in the input units.
        """
        if isinstance(patch, bool) or not isinstance(patch, (int, np.integer)) or patch <= 0:
            raise ValueError(f"patch must be a positive int; got {patch!r}")
        if isinstance(n_jobs, bool) or not isinstance(n_jobs, (int, np.integer)) or n_jobs == 0:
            raise ValueError(f"n_jobs must be a non-zero int (joblib convention); got {n_jobs!r}")
        with self._on_device():
            out = self.cleaner.clean(img0, threshold=threshold, binary=bool(binary), cleaned=bool(inpaint))
        mask, cleaned = out if inpaint else (out, None)
        if n_jobs != 1:
            mask_dtype, clean_dtype = (np.int8 if binary else np.float32), np.float32
        elif segment:
            mask_dtype, clean_dtype = np.float64, np.float64
        else:
            mask_dtype, clean_dtype = np.float32, np.float32
        mask = np.asarray(mask).astype(mask_dtype)
        if cleaned is None:
            return mask
        return mask, np.asarray(cleaned).astype(clean_dtype)

    def inpaint(self, img0: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Replace the masked pixels of ``img0``.

        Parameters
        ----------
        img0 : ndarray, (ny, nx)
            Image in the model's units, finite values.
        mask : ndarray, (ny, nx)
            Nonzero (True) where pixels are replaced.

        Returns
        -------
        ndarray, (ny, nx), float32
            ``img0`` with masked pixels inpainted (network or ``medmask``).
        """
        with self._on_device():
            out = self.cleaner.inpaint(img0, mask)
        return np.asarray(out, np.float32)
