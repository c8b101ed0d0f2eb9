"""Several detectors and inpainters scored side by side on one set of labelled stamps.

What ``deepcr-jax evaluate`` runs: the paper's protocol (Sec. 4) on stamps
with known CR masks, e.g. a held-out field of the user's own data written by
``deepcr-jax stamps``, so that a fine-tuned model can be compared with the
zoo model it started from (and with LACosmic) where it will be used.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from deepcr_jax.evaluate._arrays import as_bool
from deepcr_jax.evaluate.baselines import SIGCLIPS, lacosmic_counts
from deepcr_jax.evaluate.detection import PAPER_FPRS, roc, roc_counts, summarize_counts
from deepcr_jax.evaluate.inpainting import PAPER_MSE_UNIT_E2, donor_masks, paired_mse_ratio, stamp_sse

__all__ = ["compare_detection", "compare_inpainting"]


def _stack(image, cr, ignore) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or image.shape[0] < 1:
        raise ValueError(f"image must be a stack (n, ny, nx); got shape {image.shape}")
    cr = as_bool("cr", cr)
    ignore = np.zeros(image.shape, bool) if ignore is None else as_bool("ignore", ignore)
    for name, m in (("cr", cr), ("ignore", ignore)):
        if m.shape != image.shape:
            raise ValueError(f"{name} shape {m.shape} does not match image {image.shape}")
    if not np.isfinite(image[~ignore]).all():
        raise ValueError("image has non-finite pixels outside ignore")
    return image, cr, ignore


def compare_detection(image, cr, ignore, detectors: Mapping[str, object], *, lacosmic_objlim: float | None = None,
                      n_boot: int = 200, fprs=PAPER_FPRS) -> dict[str, dict]:
    """TPR at fixed FPR of each detector on the same stamps, as in the paper's Table 2.

    Parameters
    ----------
    image : array_like, shape (n, ny, nx)
        Stamps in electrons.
    cr : array_like of bool, shape (n, ny, nx)
        True CR mask (True = cosmic ray).
    ignore : array_like of bool, shape (n, ny, nx), optional
        Pixels left out of every count (saturated, flagged).
    detectors : mapping of str to Cleaner
        Label → a :class:`deepcr_jax.Cleaner` (its mask model is scored).
    lacosmic_objlim : float, optional
        Also score LACosmic (astroscrappy, the ``bench`` extra) with this
        ``objlim``, one ROC point per ``sigclip`` of
        :data:`~deepcr_jax.evaluate.SIGCLIPS`.
    n_boot : int
        Bootstrap resamples of the stamps for the standard errors.
    fprs : sequence of float
        Target FPRs (default the paper's 0.05 % and 0.5 %).

    Returns
    -------
    dict
        Label → :func:`~deepcr_jax.evaluate.summarize_counts` output; for the
        networks also ``threshold`` (the model's own) with ``fpr_at_threshold``
        and ``tpr_at_threshold``. LACosmic's label is ``"LACosmic"``.
    """
    image, cr, ignore = _stack(image, cr, ignore)
    if not (cr & ~ignore).any():
        raise ValueError("the stamps hold no CR pixel outside ignore: detection cannot be scored")
    out: dict[str, dict] = {}
    for label, cleaner in detectors.items():
        prob = cleaner.clean(image, binary=False, ignore=ignore)
        res = summarize_counts(roc_counts(prob, cr, ignore), "threshold", n_boot=n_boot, fprs=fprs)
        thr = float(cleaner.params.threshold)
        f, t, _ = roc(prob, cr, ignore, [thr])
        res.update(threshold=thr, fpr_at_threshold=float(f[0]), tpr_at_threshold=float(t[0]))
        out[label] = res
    if lacosmic_objlim is not None:
        counts = lacosmic_counts(image, cr, ignore, lacosmic_objlim, SIGCLIPS)
        out["LACosmic"] = {**summarize_counts(counts, "sigclip", n_boot=n_boot, fprs=fprs),
                           "objlim": float(lacosmic_objlim)}
    return out


def compare_inpainting(image, cr, ignore, inpainters: Mapping[str, object], *, seed: int = 0,
                       n_boot: int = 1000) -> dict:
    """Borrowed-mask inpainting MSE of each inpainter on the same pixels, as in the paper's Table 3.

    Each stamp is inpainted under the CR mask of another stamp (drawn with
    :func:`~deepcr_jax.evaluate.donor_masks` from ``seed``) and scored at
    the hidden pixels that are neither its own CRs nor ignored, against the
    observed image (paper eq. 2). The stamps' own CRs stay in the input, as
    in the paper; non-finite (ignored) pixels are hidden too.

    Parameters
    ----------
    image, cr, ignore : array_like, shape (n, ny, nx)
        As for :func:`compare_detection`; ``n`` >= 2.
    inpainters : mapping of str to Cleaner
        Label → a :class:`deepcr_jax.Cleaner` loaded with an inpainter
        (``inpaint=`` a model or ``"medmask"``).
    seed : int
        Seed of the borrowed masks (and of the bootstrap).
    n_boot : int
        Paired bootstrap resamples of the ratio to the first inpainter.

    Returns
    -------
    dict
        ``n_pixels`` (scored), ``seed``, and ``models``: label → ``mse_e2``,
        ``mse_paper_units`` ((100 e-)^2), ``top_stamp`` and ``top_share``
        (the stamp holding most of the error, and its share: errors are
        heavy-tailed where a mask hides a bright core), and for every
        inpainter after the first ``vs_first``:
        :func:`~deepcr_jax.evaluate.paired_mse_ratio` against the first.
    """
    image, cr, ignore = _stack(image, cr, ignore)
    if len(image) < 2:
        raise ValueError("inpainting needs at least 2 stamps (each borrows another's CR mask)")
    hidden = donor_masks({"stamps": cr}, seed)["stamps"][0]
    scored = hidden & ~cr & ~ignore
    if not scored.any():
        raise ValueError("the borrowed CR masks hide no pixel that is neither a CR nor ignored")
    bad = ~np.isfinite(image)  # only where ignored (checked): hidden too, so the input is finite
    finite, region = np.where(bad, 0.0, image).astype(np.float32), hidden | bad
    models: dict[str, dict] = {}
    first = None
    for label, cleaner in inpainters.items():
        pred = np.asarray(cleaner.inpaint(finite, region), np.float64)
        sse, npx = stamp_sse(pred, image, scored)
        mse = float(sse.sum() / npx.sum())
        rec = {"mse_e2": mse, "mse_paper_units": mse / PAPER_MSE_UNIT_E2, "top_stamp": int(np.argmax(sse)),
               "top_share": float(sse.max() / sse.sum()) if sse.sum() else 0.0}
        if first is None:
            first = sse
        else:
            rec["vs_first"] = paired_mse_ratio(sse, first, npx, n_boot=n_boot, seed=seed)
        models[label] = rec
    return {"n_pixels": int(scored.sum()), "seed": int(seed), "models": models}
