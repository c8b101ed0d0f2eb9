"""Export a trained state to the zoo's ``.npz`` format; load a model to fine-tune from.

The file holds the *unfolded* variables, exactly as
:func:`deepcr_jax.convert.convert_state_dict` produces them: ``params``
(conv kernels/biases, BatchNorm ``scale``/``bias``, or weight-norm ``v``/``g``)
and, for BatchNorm networks, ``batch_stats`` (running ``mean``/``var``), plus
a JSON ``__meta__`` in the format of :meth:`deepcr_jax.zoo.ModelSpec.meta`
(``arch``, ``kind``, ``scale``, ``standardize``, ``threshold`` ...) with the
training config, the data provenance and the validation scores. So
``deepcr_jax.load_params(path)`` and ``deepcr_jax.clean(image, model=path)``
load it like a zoo model.

Threshold
---------
:func:`choose_threshold`: the smallest probability threshold whose false-positive
rate on the validation pixels is at most 0.05 % (the paper's operating point,
Table 2), so that ``clean`` flags about that FPR; it needs >= 20 000 CR-free and
>= 100 CR validation pixels (otherwise a single pixel moves the FPR by more
than the target itself), else deepCR's default 0.5. Clipped to [0.01, 0.99].
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from deepcr_jax.arch import Architecture
from deepcr_jax.convert import convert_state_dict, load_torch_state_dict
from deepcr_jax.evaluate import PAPER_FPRS, roc, tpr_at_fpr
from deepcr_jax.training.config import TrainConfig
from deepcr_jax.weights import load_npz, model_meta, save_npz
from deepcr_jax.zoo import MODELS, weights_path

__all__ = ["architecture", "choose_threshold", "export_npz", "load_init_variables", "val_tpr"]

FPRS = PAPER_FPRS
DEFAULT_THRESHOLD = 0.5
_MIN_NEG, _MIN_POS = 20_000, 100


def architecture(config: TrainConfig) -> Architecture:
    """The :class:`~deepcr_jax.arch.Architecture` the config trains."""
    return Architecture.for_kind(config.kind, config.depth, config.hidden, norm=config.norm)


def load_init_variables(config: TrainConfig) -> dict[str, Any]:
    """Unfolded variables of ``config.init`` (zoo name, ``.npz`` or deepCR ``.pth``), checked.

    The architecture (and, for zoo/``.npz`` models, ``scale`` and
    ``standardize``) must match the config; a ``ValueError`` names the
    fields that differ.
    """
    src = config.init
    meta: dict[str, Any] = {}
    if src.endswith(".pth"):
        if not os.path.isfile(src):
            raise FileNotFoundError(f"init model file {src!r} does not exist")
        variables, arch = convert_state_dict(load_torch_state_dict(src))
    else:
        if src.endswith(".npz"):
            if not os.path.isfile(src):
                raise FileNotFoundError(f"init model file {src!r} does not exist")
            path = src
        elif src in MODELS:
            path = weights_path(src)
        else:
            raise ValueError(f"init must be a zoo name ({', '.join(MODELS)}), a .npz or a .pth; got {src!r}")
        variables, meta = load_npz(path)
        arch = Architecture(**meta["arch"])
    want = architecture(config)
    diffs = [f"{k}: config {getattr(want, k)!r}, model {getattr(arch, k)!r}"
             for k in ("depth", "hidden", "in_channels", "norm") if getattr(want, k) != getattr(arch, k)]
    for k in ("scale", "standardize"):
        if k in meta and meta[k] != getattr(config, k):
            diffs.append(f"{k}: config {getattr(config, k)!r}, model {meta[k]!r}")
    if diffs:
        raise ValueError(f"init model {src!r} does not match the config: " + "; ".join(diffs))
    return variables


def val_tpr(prob: np.ndarray, truth: np.ndarray, ignore: np.ndarray) -> dict[str, float]:
    """Validation TPR at the paper's FPRs: ``{"val_tpr_0.05%": .., "val_tpr_0.5%": ..}``.

    ``prob`` (n, ny, nx) CR probabilities, ``truth`` / ``ignore`` (n, ny, nx)
    bool (True = CR / excluded). NaN where there are no CR pixels.
    """
    fpr, tpr, _ = roc(prob, truth, ignore)
    if not np.any(truth & ~ignore):
        return {f"val_tpr_{100 * f:g}%": float("nan") for f in FPRS}
    return {f"val_tpr_{100 * f:g}%": tpr_at_fpr(fpr, tpr, f) for f in FPRS}


def choose_threshold(prob: np.ndarray, truth: np.ndarray, ignore: np.ndarray,
                     target_fpr: float = FPRS[0]) -> tuple[float, str]:
    """Probability threshold at ``target_fpr`` on the validation pixels (module docstring).

    Returns ``(threshold, note)``; ``note`` says how it was chosen.
    """
    valid = ~ignore
    n_neg, n_pos = int(np.sum(~truth & valid)), int(np.sum(truth & valid))
    if n_neg < _MIN_NEG or n_pos < _MIN_POS:
        return DEFAULT_THRESHOLD, (f"default {DEFAULT_THRESHOLD}: validation set too small "
                                   f"({n_neg} CR-free, {n_pos} CR pixels; need {_MIN_NEG}, {_MIN_POS})")
    neg = np.sort(prob[~truth & valid].astype(np.float64))
    k = int(np.floor(target_fpr * n_neg))  # at most k negatives may lie above the threshold
    thr = float(neg[n_neg - k - 1]) if k < n_neg else 0.0
    thr = float(np.clip(thr, 0.01, 0.99))
    return thr, f"validation FPR <= {100 * target_fpr:g} % ({n_neg} CR-free, {n_pos} CR pixels)"


def export_npz(path: str | os.PathLike, config: TrainConfig, state: dict[str, Any], *, threshold: float,
               provenance: str, notes: str = "", validation: dict[str, Any] | None = None,
               exclusive: bool = False) -> dict[str, Any]:
    """Write ``state``'s network as a zoo-format ``.npz`` (atomically); returns the metadata.

    Parameters
    ----------
    path : path-like
        Output ``.npz`` (replaced atomically if present: the caller decides
        whether that is allowed).
    config : TrainConfig
        The run's config (architecture, preprocessing; stored whole).
    state : dict
        Train state (``params``, ``batch_stats``); host or device arrays.
    threshold : float
        Recommended probability threshold (see :func:`choose_threshold`).
    provenance : str
        Where the training data came from.
    notes, validation
        Free text; validation scores (JSON-able).
    exclusive : bool
        Never replace an existing ``path`` (:class:`FileExistsError`).
    """
    variables: dict[str, Any] = {"params": state["params"]}
    if config.norm == "batch":
        variables["batch_stats"] = state["batch_stats"]
    variables = _to_numpy(variables)
    meta = model_meta(
        architecture(config),
        name=os.path.splitext(os.path.basename(os.fspath(path)))[0],
        scale=config.scale,
        standardize=config.standardize,
        threshold=threshold,
        instrument=provenance,
        source="trained with deepcr-jax" + (f", fine-tuned from {config.init}" if config.init else ""),
        source_sha256="",
        registered=False,
        notes=("trained with deepcr-jax"
               + (", simulated data" if config.data == "simulate" else "") + (f"; {notes}" if notes else "")),
        training=config.to_dict(),
        data=provenance,
        validation=validation or {},
    )
    save_npz(path, variables, meta, exclusive=exclusive)
    return meta


def _to_numpy(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _to_numpy(v) for k, v in tree.items()}
    if isinstance(tree, jax.Array) and not tree.is_fully_addressable:  # replicated over processes
        tree = tree.addressable_data(0)
    return np.asarray(tree, np.float32)
