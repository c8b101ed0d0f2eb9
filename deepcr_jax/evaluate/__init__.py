"""Evaluation of CR detection and inpainting, as in the deepCR paper (Zhang & Bloom 2020, Sec. 4).

Modules
-------
``detection``
    Confusion counts, ROC curves (plain and 3x3-dilated TPR), TPR at fixed
    FPR (the paper's 0.05 % and 0.5 %), per-image counts that add up over
    batches, bootstrap standard errors.
``inpainting``
    Donor inpainting masks (another image's CR mask), masked MSE and its
    summaries, a paired bootstrap of two inpainters' MSE ratio, end-to-end
    error of a cleaned image against the CR-free one.
``baselines``
    LACosmic (astroscrappy) with the paper's settings and biharmonic
    inpainting (scikit-image); both optional (the ``bench`` extra).
``testset``
    The fixed-seed simulated test set, one stack per field type.

Conventions: images in electrons (e-), errors in e-^2; stacks ``(n, ny, nx)``;
masks are boolean, True = CR (or replaced / ignored); ``ignore`` pixels are
excluded from every score.
"""

from deepcr_jax.evaluate.baselines import (
    LACOSMIC_KWARGS,
    OBJLIM,
    SIGCLIPS,
    biharmonic,
    lacosmic_counts,
    lacosmic_masks,
)
from deepcr_jax.evaluate.detection import (
    N_BOOT,
    PAPER_FPRS,
    confusion,
    default_thresholds,
    dilate,
    pooled_rates,
    roc,
    roc_counts,
    summarize_counts,
    summarize_roc,
    tpr_at_fpr,
)
from deepcr_jax.evaluate.inpainting import (
    PAPER_MSE_UNIT_E2,
    donor_masks,
    end_to_end_mse,
    inpaint_mse,
    mse_summary,
    paired_mse_ratio,
    stamp_sse,
)
from deepcr_jax.evaluate.testset import FIELDS, STAMP_SHAPE, describe_batch, field_seed, head, make_test_set

__all__ = [
    "FIELDS",
    "LACOSMIC_KWARGS",
    "N_BOOT",
    "OBJLIM",
    "PAPER_FPRS",
    "PAPER_MSE_UNIT_E2",
    "SIGCLIPS",
    "STAMP_SHAPE",
    "biharmonic",
    "confusion",
    "default_thresholds",
    "describe_batch",
    "dilate",
    "donor_masks",
    "end_to_end_mse",
    "field_seed",
    "head",
    "inpaint_mse",
    "lacosmic_counts",
    "lacosmic_masks",
    "make_test_set",
    "mse_summary",
    "paired_mse_ratio",
    "pooled_rates",
    "roc",
    "roc_counts",
    "stamp_sse",
    "summarize_counts",
    "summarize_roc",
    "tpr_at_fpr",
]
