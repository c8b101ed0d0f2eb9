"""Inpainting scores: donor inpainting masks, masked MSE, end-to-end cleaning error.

Two protocols:

Borrowed masks (the deepCR paper, Zhang & Bloom 2020, Sec. 4.2, eq. 2)
    Each image is inpainted at the CR mask of one *other* image
    (:func:`donor_masks`); the error is scored at those pixels, leaving out
    the image's own CRs and ignored pixels, against the observed image
    (:func:`mse_summary`). It isolates the inpainter: the mask is perfect
    and there is no CR charge under or around it.

End to end (:func:`end_to_end_mse`)
    The whole pipeline, ``clean(image_with_crs, inpaint=...)``: the mask is
    predicted on images whose CRs are present and the cleaned image is
    compared with the CR-free image (the simulator's ``StampBatch.clean``),
    at the pixels the pipeline replaced and at the true CR pixels.

Images are in electrons (e-), errors in e-^2; masks are True = replaced /
CR / ignored; stacks are ``(n, ny, nx)``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ._arrays import as_bool, check_same, resample_weights
from .detection import N_BOOT

__all__ = [
    "PAPER_MSE_UNIT_E2",
    "donor_masks",
    "end_to_end_mse",
    "inpaint_mse",
    "mse_summary",
    "paired_mse_ratio",
    "stamp_sse",
]

#: The unit in which the paper's Table 3 MSEs read naturally, (100 e-)^2, in e-^2.
PAPER_MSE_UNIT_E2 = 1.0e4


def inpaint_mse(pred, truth, mask, ignore=None) -> float:
    """Mean squared error over the ``mask`` pixels that are not ignored.

    Parameters
    ----------
    pred, truth : array_like of float, shape (ny, nx) or (n, ny, nx)
        Inpainted image and reference image, same units (e-).
    mask : array_like of bool, same shape
        True = pixel scored (e.g. the inpainting mask).
    ignore : array_like of bool, same shape, optional
        True = pixel excluded even if in ``mask``.

    Returns
    -------
    float
        ``mean((pred - truth)**2)`` over ``mask & ~ignore`` (e-^2); ``nan``
        if that selection is empty.
    """
    pred = np.asarray(pred, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    mask = as_bool("mask", mask)
    check_same("pred", pred, truth, "truth")
    check_same("mask", mask, truth, "truth")
    sel = mask
    if ignore is not None:
        ign = as_bool("ignore", ignore)
        check_same("ignore", ign, truth, "truth")
        sel = mask & ~ign
    if not sel.any():
        return float("nan")
    d = pred[sel] - truth[sel]
    return float(np.mean(d * d))


def stamp_sse(pred, truth, eval_mask) -> tuple[np.ndarray, np.ndarray]:
    """Each image's squared error summed over its scored pixels, and their count.

    Parameters
    ----------
    pred, truth : array_like of float, shape (n, ny, nx)
        Inpainted and reference images, same units (e-).
    eval_mask : array_like of bool, shape (n, ny, nx)
        True = pixel scored.

    Returns
    -------
    sse : ndarray of float64, shape (n,)
        Sum of ``(pred - truth)**2`` over each image's scored pixels (e-^2).
    npx : ndarray of int, shape (n,)
        Scored pixels per image.
    """
    eval_mask = as_bool("eval_mask", eval_mask)
    pred, truth = np.asarray(pred), np.asarray(truth)
    check_same("pred", pred, eval_mask, "eval_mask")
    check_same("truth", truth, eval_mask, "eval_mask")
    if eval_mask.ndim != 3:
        raise ValueError(f"stamp_sse needs stacks of shape (n, ny, nx); got {eval_mask.shape}")
    # image by image, in float64 at the scored pixels only: no full-stack temporaries
    sse = np.array([np.sum((p[m].astype(np.float64) - t[m]) ** 2) for p, t, m in zip(pred, truth, eval_mask)],
                   dtype=np.float64)
    return sse, eval_mask.sum(axis=(1, 2))


def paired_mse_ratio(sse_a, sse_b, npx, *, n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95) -> dict:
    """Pooled MSE of inpainter A over inpainter B on the same images and pixels, with a paired bootstrap.

    The images are resampled with replacement, the same draw for both
    models, so the interval reflects how much the ratio depends on which
    images happen to be in the test set (one bright star under a mask can
    hold most of a field's error).

    Parameters
    ----------
    sse_a, sse_b : array_like of float, shape (n,)
        Per-image squared-error sums of models A and B over the same scored
        pixels (:func:`stamp_sse`; e-^2, >= 0).
    npx : array_like of int, shape (n,)
        Scored pixels per image (the same for both models).
    n_boot : int
        Bootstrap resamples (>= 1).
    seed : int
        Seed of the resampling (``default_rng([seed, 5])``).
    level : float
        Coverage of the percentile interval, in (0, 1).

    Returns
    -------
    dict
        ``mse_a_e2``, ``mse_b_e2`` (pooled over pixels); ``ratio``
        (``mse_a / mse_b``; < 1: A is better); ``ratio_lo``, ``ratio_hi``
        (the percentile interval); ``p_a_worse`` (share of resamples with
        ratio > 1); ``a_better_images`` (share of scored images where A's
        error is lower); ``top_image`` (index of the image with the largest
        ``|sse_a - sse_b|``), ``top_share`` (its share of the summed absolute
        differences) and ``ratio_without_top``; ``n_images`` (scored ones).
        Ratios are ``nan`` where B's error is zero.
    """
    sse_a = np.asarray(sse_a, dtype=np.float64)
    sse_b = np.asarray(sse_b, dtype=np.float64)
    npx = np.asarray(npx)
    if sse_a.ndim != 1 or sse_a.shape != sse_b.shape or npx.shape != sse_a.shape:
        raise ValueError(
            f"sse_a, sse_b and npx must be 1-d and of one length; got {sse_a.shape}, {sse_b.shape}, {npx.shape}"
        )
    if not (np.isfinite(sse_a).all() and np.isfinite(sse_b).all()) or (sse_a < 0).any() or (sse_b < 0).any():
        raise ValueError("sse_a and sse_b must be finite and >= 0")
    if npx.dtype.kind not in "iub" or (npx < 0).any():
        raise ValueError(f"npx must be non-negative integer pixel counts; got dtype {npx.dtype}")
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be >= 1; got {n_boot}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1); got {level}")
    used = npx > 0
    if not used.any():
        raise ValueError("no image has a scored pixel (npx is all zero)")
    a, b, n = sse_a[used], sse_b[used], npx[used]

    def ratio(x, y):
        return float(x / y) if y > 0 else float("nan")

    rng = np.random.default_rng([seed, 5])
    w = np.stack([resample_weights(rng, len(a)) for _ in range(int(n_boot))])
    wa, wb = w @ a, w @ b
    boot = np.where(wb > 0, wa / np.where(wb > 0, wb, 1.0), np.nan)
    lo, hi = np.nanquantile(boot, [(1 - level) / 2, (1 + level) / 2]) if np.isfinite(boot).any() else (np.nan,) * 2
    diff = np.abs(a - b)
    top = int(np.argmax(diff))
    return {
        "mse_a_e2": float(a.sum() / n.sum()),
        "mse_b_e2": float(b.sum() / n.sum()),
        "ratio": ratio(a.sum(), b.sum()),
        "ratio_lo": float(lo),
        "ratio_hi": float(hi),
        "p_a_worse": float(np.mean(boot > 1)),
        "a_better_images": float(np.mean(a < b)),
        "top_image": int(np.flatnonzero(used)[top]),
        "top_share": float(diff[top] / diff.sum()) if diff.sum() else 0.0,
        "ratio_without_top": ratio(a.sum() - a[top], b.sum() - b[top]),
        "n_images": int(used.sum()),
    }


def donor_masks(cr_masks: Mapping[str, np.ndarray], seed: int) -> dict:
    """One other image's CR mask per image, drawn from the pooled sets.

    Image ``g`` (global index over the sets in ``cr_masks``' order) gets the
    CR mask of image ``d(g) != g``, drawn uniformly from all other images of
    all sets with ``numpy.random.default_rng([seed, 2])``: the paper's
    evaluation setting of one added mask per image (native CR density),
    the same for every method.

    Parameters
    ----------
    cr_masks : mapping of str to array_like of bool, each (n_k, ny, nx)
        True CR masks per set (e.g. field type), all with the same (ny, nx);
        at least two images in all.
    seed : int
        Master seed.

    Returns
    -------
    dict
        Set name -> ``(masks, donors)``: bool ndarray (n_k, ny, nx) and the
        donor's ``[set name, index]`` per image.
    """
    sets = {k: as_bool(f"cr_masks[{k!r}]", v) for k, v in cr_masks.items()}
    shapes = {v.shape[1:] for v in sets.values()}
    if any(v.ndim != 3 for v in sets.values()) or len(shapes) != 1:
        raise ValueError(
            f"cr_masks must be (n, ny, nx) stacks of one (ny, nx); got {[v.shape for v in sets.values()]}"
        )
    pool = [(k, i) for k, v in sets.items() for i in range(len(v))]
    if len(pool) < 2:
        raise ValueError(f"cr_masks must hold at least 2 images; got {len(pool)}")
    rng = np.random.default_rng([seed, 2])
    out, g = {}, 0
    for k, v in sets.items():
        masks, donors = [], []
        for _ in range(len(v)):
            d = int(rng.integers(0, len(pool) - 1))
            d += d >= g  # skip the image itself
            dk, di = pool[d]
            masks.append(sets[dk][di])
            donors.append([dk, di])
            g += 1
        out[k] = (np.stack(masks) if masks else np.zeros((0, *v.shape[1:]), bool), donors)
    return out


def mse_summary(
    pred, batch, eval_mask, *, n_boot: int = N_BOOT, seed: int = 0, unit_e2: float = PAPER_MSE_UNIT_E2
) -> dict:
    """Borrowed-mask inpainting errors on the scored pixels, in several references.

    Parameters
    ----------
    pred : array_like of float, shape (n, ny, nx)
        Inpainted images (e-).
    batch : StampBatch
        ``image`` (observed, the paper's reference), ``clean`` (the
        simulator's CR-free frame: same noise realisation) and ``readnoise``
        (n,) in e-.
    eval_mask : array_like of bool, shape (n, ny, nx)
        True = pixel scored: inpainting mask & ~own CRs & ~ignored.
    n_boot : int
        Bootstrap resamples of the images for ``mse_se_e2``.
    seed : int
        Seed of the bootstrap (``default_rng([seed, 4])``).
    unit_e2 : float
        The paper's MSE unit in e-^2 for ``mse_paper_units`` ((100 e-)^2).

    Returns
    -------
    dict
        ``mse_e2`` (pooled over pixels, vs the observed image);
        ``mse_se_e2`` (its standard deviation over bootstrap resamples: the
        errors are heavy-tailed); ``mse_paper_units`` (``mse_e2 / unit_e2``);
        ``mse_vs_clean_e2``; ``mean_stamp_mse_e2`` (mean of per-image MSEs);
        ``noise_floor_e2`` (Poisson + read variance of the observed pixels,
        mean of ``clean + readnoise^2``); ``excess_e2`` = ``mse_e2 -
        noise_floor_e2`` (the error against the noise-free scene);
        ``median_sq_err_e2`` (about 0.45 x the local noise variance for an
        ideal predictor) and ``n_pixels``.
    """
    eval_mask = as_bool("eval_mask", eval_mask)
    pred = np.asarray(pred, dtype=np.float64)
    check_same("pred", pred, eval_mask, "eval_mask")
    sse, npx = stamp_sse(pred, batch.image, eval_mask)
    mse = inpaint_mse(pred, batch.image, eval_mask)
    used = npx > 0
    rng = np.random.default_rng([seed, 4])
    boot = []
    for _ in range(n_boot):
        w = resample_weights(rng, len(sse))
        if w @ npx:
            boot.append((w @ sse) / (w @ npx))
    rn2 = np.broadcast_to(
        (np.asarray(batch.readnoise, dtype=np.float64) ** 2)[:, None, None], eval_mask.shape
    )
    floor = (
        float(np.mean(batch.clean[eval_mask].astype(np.float64) + rn2[eval_mask])) if npx.sum() else np.nan
    )
    sel = (pred[eval_mask] - batch.image[eval_mask]) ** 2
    return {
        "mse_e2": mse,
        "mse_se_e2": float(np.std(boot)) if boot else float("nan"),
        "median_sq_err_e2": float(np.median(sel)) if sel.size else float("nan"),
        "mse_paper_units": mse / unit_e2,
        "mse_vs_clean_e2": inpaint_mse(pred, batch.clean, eval_mask),
        "mean_stamp_mse_e2": float(np.mean(sse[used] / npx[used])) if used.any() else float("nan"),
        "noise_floor_e2": floor,
        "excess_e2": mse - floor,
        "n_pixels": int(npx.sum()),
    }


def end_to_end_mse(cleaned, clean, replaced, cr_mask, ignore=None) -> dict:
    """Errors of a cleaned image against the CR-free image, end to end.

    Parameters
    ----------
    cleaned : array_like of float, shape (ny, nx) or (n, ny, nx)
        Output of the pipeline, e.g. ``clean(image, inpaint=...)[1]`` (e-).
    clean : array_like of float, same shape
        The CR-free image (``StampBatch.clean``; same noise realisation).
    replaced : array_like of bool, same shape
        True = pixel the pipeline replaced (its predicted CR mask, as
        given to the inpainter).
    cr_mask : array_like of bool, same shape
        True CR pixels.
    ignore : array_like of bool, same shape, optional
        True = pixel excluded from every score (saturated / bad).

    Returns
    -------
    dict
        MSEs in e-^2 (``nan`` over an empty selection): ``mse_replaced_e2``
        (replaced pixels), ``mse_cr_e2`` (true CR pixels, replaced or not),
        ``mse_cr_replaced_e2`` (true CRs the pipeline replaced: the
        inpainter's own error), ``mse_cr_missed_e2`` (true CRs left in: the
        detector's error, the same for every inpainter), ``mse_false_e2``
        (replaced pixels that are not CRs); the pixel counts ``n_replaced``,
        ``n_cr``, ``n_cr_replaced``, ``n_cr_missed``, ``n_false``; and
        ``sse_cr_missed_fraction``: the share of the squared error over the
        true CR pixels that comes from missed ones.
    """
    cleaned = np.asarray(cleaned, dtype=np.float64)
    clean = np.asarray(clean, dtype=np.float64)
    check_same("cleaned", cleaned, clean, "clean")
    rep = as_bool("replaced", replaced)
    cr = as_bool("cr_mask", cr_mask)
    check_same("replaced", rep, clean, "clean")
    check_same("cr_mask", cr, clean, "clean")
    valid = np.ones(clean.shape, bool) if ignore is None else ~as_bool("ignore", ignore)
    check_same("ignore", valid, clean, "clean")
    sq = (cleaned - clean) ** 2
    sel = {
        "replaced": rep & valid,
        "cr": cr & valid,
        "cr_replaced": cr & rep & valid,
        "cr_missed": cr & ~rep & valid,
        "false": rep & ~cr & valid,
    }
    out = {}
    for name, s in sel.items():
        n = int(np.count_nonzero(s))
        out[f"mse_{name}_e2"] = float(sq[s].mean()) if n else float("nan")
        out[f"n_{name}"] = n
    sse_cr = float(sq[sel["cr"]].sum())
    out["sse_cr_missed_fraction"] = float(sq[sel["cr_missed"]].sum()) / sse_cr if sse_cr > 0 else float("nan")
    return out
