"""Non-learned baselines of the deepCR paper: LACosmic detection and biharmonic inpainting.

LACosmic runs through astroscrappy with the paper's settings (Zhang & Bloom
2020, Sec. 4.1: ``objlim`` 2 / 3.5 / 5 for extragalactic / globular cluster /
resolved galaxy fields, ``sigclip`` swept to trace a ROC curve); biharmonic
inpainting is scikit-image's ``inpaint_biharmonic``. Both packages are
optional: install them with the ``bench`` extra (``pip install
'deepcr-jax[bench]'``). Images are in electrons (gain 1); masks are True = CR
(or replaced / ignored).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._arrays import as_bool, check_same
from .detection import roc_counts

__all__ = ["LACOSMIC_KWARGS", "OBJLIM", "SIGCLIPS", "biharmonic", "lacosmic_counts", "lacosmic_masks"]

#: LACosmic ``objlim`` per field type (paper Sec. 4.1).
OBJLIM: dict[str, float] = {"extragalactic": 2.0, "globular": 3.5, "resolved": 5.0}
#: Fixed astroscrappy settings; ``sigclip`` is swept and ``objlim`` is per field.
LACOSMIC_KWARGS: dict[str, float | int | bool] = {
    "sigfrac": 0.3,
    "niter": 4,
    "sepmed": False,
    "readnoise": 5.0,
    "satlevel": np.inf,
    "gain": 1.0,
}
#: ``sigclip`` sweep: dense where the FPR crosses 0.5 % and 0.05 % (about
#: 2.5-4 in extragalactic/globular fields, 3-9 in resolved galaxies), wide
#: enough to span FPR ~5 % to ~1e-5 on ACS/WFC-like stamps.
SIGCLIPS: tuple[float, ...] = (1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.5, 9.0, 14.0, 25.0)


def _require(module: str, package: str, what: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"{what} needs {package}, which is not installed: pip install 'deepcr-jax[bench]' "
            f"(or pip install {package}); {err}"
        ) from None


def lacosmic_masks(image, ignore, sigclips: Sequence[float], objlim: float) -> np.ndarray:
    """astroscrappy (LACosmic) CR masks of one image for a sweep of ``sigclip``.

    Parameters
    ----------
    image : array_like of float, shape (ny, nx)
        Image in electrons (gain 1, sky not subtracted).
    ignore : array_like of bool, shape (ny, nx)
        True = pixel not used (astroscrappy's ``inmask``).
    sigclips : sequence of float
        Detection thresholds to run.
    objlim : float
        Fine-structure contrast limit (:data:`OBJLIM` per field).

    Returns
    -------
    ndarray of bool, shape (len(sigclips), ny, nx)
        One CR mask (True = CR) per ``sigclip``; the other settings are
        :data:`LACOSMIC_KWARGS`.
    """
    astroscrappy = _require("astroscrappy", "astroscrappy", "LACosmic")
    img = np.ascontiguousarray(image, dtype=np.float32)
    inmask = np.ascontiguousarray(as_bool("ignore", ignore))
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D (ny, nx); got shape {img.shape}")
    check_same("ignore", inmask, img, "image")
    out = np.empty((len(sigclips), *img.shape), dtype=bool)
    for j, sc in enumerate(sigclips):
        out[j] = astroscrappy.detect_cosmics(
            img, inmask=inmask, sigclip=float(sc), objlim=float(objlim), **LACOSMIC_KWARGS
        )[0]
    return out


def _lacosmic_task(args):
    return lacosmic_masks(*args)


def lacosmic_counts(
    images, cr_mask, ignore, objlim: float, sigclips: Sequence[float] = SIGCLIPS, pool=None
) -> dict:
    """Per-image ROC counts of LACosmic, one ROC point per ``sigclip``.

    Parameters
    ----------
    images : array_like of float, shape (n, ny, nx)
        Images in electrons.
    cr_mask, ignore : array_like of bool, shape (n, ny, nx)
        True CRs; True = pixel excluded from astroscrappy and every count.
    objlim : float
        Fine-structure contrast limit.
    sigclips : sequence of float
        The sweep.
    pool : concurrent.futures.Executor, optional
        Runs the images in parallel when given.

    Returns
    -------
    dict
        As :func:`~deepcr_jax.evaluate.roc_counts`, with one column per
        ``sigclip`` (``thresholds`` holds the sigclips, in the given order):
        feed it to :func:`~deepcr_jax.evaluate.summarize_counts` with
        ``param_name="sigclip"``.
    """
    cr_mask = as_bool("cr_mask", cr_mask)
    ignore = as_bool("ignore", ignore)
    tasks = [(images[i], ignore[i], tuple(sigclips), objlim) for i in range(len(cr_mask))]
    masks = list(pool.map(_lacosmic_task, tasks)) if pool is not None else [_lacosmic_task(t) for t in tasks]
    # the K sweep masks of one image are scored as K images sharing its truth, at t = 0.5
    per = [
        roc_counts(
            m.astype(np.float32),
            np.broadcast_to(cr_mask[i], m.shape),
            np.broadcast_to(ignore[i], m.shape),
            [0.5],
        )
        for i, m in enumerate(masks)
    ]
    counts = {key: np.array([c[key][0] for c in per]) for key in ("n_neg", "n_pos")}
    for key in ("fp", "tp", "tp_dilated"):
        counts[key] = np.stack([c[key][:, 0] for c in per])  # (n, k)
    counts["thresholds"] = np.asarray(sigclips, dtype=np.float64)
    return counts


def biharmonic(images, masks) -> np.ndarray:
    """Biharmonic inpainting (``skimage.restoration.inpaint_biharmonic``), image by image.

    Parameters
    ----------
    images : array_like of float, shape (n, ny, nx)
        Images (e-).
    masks : array_like of bool, shape (n, ny, nx)
        True = pixel replaced.

    Returns
    -------
    ndarray float32, shape (n, ny, nx)
        ``images`` with the masked pixels replaced.
    """
    restoration = _require("skimage.restoration", "scikit-image", "biharmonic inpainting")
    images = np.asarray(images)
    masks = as_bool("masks", masks)
    check_same("masks", masks, images, "images")
    out = np.array(images, dtype=np.float32, copy=True)
    for i, (img, m) in enumerate(zip(images, masks)):
        if m.any():
            out[i] = restoration.inpaint_biharmonic(img.astype(np.float64), m)
    return out
