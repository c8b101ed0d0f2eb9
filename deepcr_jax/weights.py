"""The weights format of the model zoo, and the inference form of its variables.

A weights file is an ``.npz`` of flat ``"a/b/c"`` arrays (the flax variables
``params/...`` and ``batch_stats/...``, unfolded: BatchNorm scale, bias and
running statistics, weight-norm ``g`` and ``v``) plus a JSON string
``__meta__`` (architecture, kind, input scale, standardisation, threshold,
provenance). It is read with ``allow_pickle=False``: no code runs on load.
The zoo's files are written by ``python -m convert``, users' by
``deepcr-jax convert`` and by training's export.

:func:`inference_variables` turns the stored variables into the inference
network's (BatchNorm as torch's per-channel affine, weight-norm as a plain
kernel), computed as deepCR's float32 arithmetic does.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from deepcr_jax._atomic import atomic_path
from deepcr_jax.arch import Architecture
from deepcr_jax.nets import BN_EPS

__all__ = [
    "META_KEY",
    "flatten",
    "inference_variables",
    "load_npz",
    "model_meta",
    "save_npz",
    "sha256_arrays",
    "sha256_file",
    "unflatten",
]

META_KEY = "__meta__"


def model_meta(
    arch: Architecture,
    *,
    name: str,
    scale: float = 1.0,
    standardize: bool = False,
    threshold: float = 0.5,
    **extra: Any,
) -> dict[str, Any]:
    """Metadata of a weights file: what :func:`deepcr_jax.load_params` needs, plus provenance.

    ``extra`` (e.g. ``source``, ``source_sha256``, ``notes``, ``training``)
    must be JSON-able; it is stored as given.
    """
    return {
        "name": name,
        "kind": arch.kind,
        "arch": arch.to_dict(),
        "scale": float(scale),
        "standardize": bool(standardize),
        "threshold": float(threshold),
        **extra,
    }


def _weight_norm_float32(conv: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Plain conv from weight-norm params, computed as torch does: float32 v · (g / ‖v‖)."""
    v = np.asarray(conv["v"], np.float32)
    g = np.asarray(conv["g"], np.float32)
    norm = np.sqrt(np.sum(v * v, axis=(0, 1, 2), dtype=np.float32))
    return {"kernel": (v * (g / norm)).astype(np.float32), "bias": np.asarray(conv["bias"], np.float32)}


def _batchnorm_affine(bn: Mapping[str, Any], stats: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """torch's inference BatchNorm as (alpha, beta), computed as its CPU kernel does.

    float32 throughout: invstd = 1 / sqrt(var + eps), alpha = invstd * weight,
    beta = fma(-mean, alpha, bias) (torch's kernel is compiled with FMA
    contraction; a float32 × float32 product is exact in float64, so the
    float64 expression below rounds like the fused operation).
    """
    var = np.asarray(stats["var"], np.float32)
    invstd = np.float32(1) / np.sqrt(var + np.float32(BN_EPS))
    alpha = (invstd * np.asarray(bn["scale"], np.float32)).astype(np.float32)
    mean = np.asarray(stats["mean"], np.float64)
    beta = (np.asarray(bn["bias"], np.float64) - mean * alpha.astype(np.float64)).astype(np.float32)
    return {"alpha": alpha, "beta": beta}


def inference_variables(variables: Mapping[str, Any], arch: Architecture) -> tuple[dict[str, Any], str]:
    """Variables for the inference network, with deepCR's float32 arithmetic.

    Weight-norm convs become plain convs (kernel = v · (g / ‖v‖) computed
    once in float32, as torch computes it on every forward). BatchNorm
    becomes a per-channel affine ``x * alpha + beta`` after the conv (norm
    ``"affine"``), with alpha and beta computed as torch's CPU kernel does.

    BatchNorm is deliberately not folded into the conv weights: that is
    mathematically equal, but on inputs with a large pedestal (raw frames
    with hundreds of e- of bias) the first BatchNorm cancels large numbers,
    and the folded network's float32 rounding no longer follows the
    reference's; the difference then reaches 1.4e-4 in probability
    (ACS-WFC-F606W-2-4 on a raw frame) instead of a few 1e-6.

    Returns
    -------
    variables : dict
        ``{"params": ...}`` for ``UNet(norm=<returned norm>)``.
    norm : {"affine", "none"}
    """
    params = variables["params"]
    stats = variables.get("batch_stats", {})

    def walk(p: Mapping[str, Any], st: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in p.items():
            if isinstance(v, Mapping) and "v" in v and "g" in v:
                out[k] = _weight_norm_float32(v)
            elif isinstance(v, Mapping) and "scale" in v and k in st:
                out[k] = _batchnorm_affine(v, st[k])
            elif isinstance(v, Mapping):
                out[k] = walk(v, st.get(k, {}))
            else:
                out[k] = np.asarray(v, np.float32)
        return out

    norm = {"batch": "affine", "weight": "none", "none": "none"}[arch.norm]
    return {"params": walk(params, stats)}, norm


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dict → flat ``{"a/b/c": array}``."""
    flat: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        if "/" in key:
            raise ValueError(f"key {key!r} must not contain '/'")
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, path + "/"))
        else:
            flat[path] = np.asarray(value)
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Flat ``{"a/b/c": array}`` → nested dict."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def save_npz(path: str | os.PathLike, variables: Mapping[str, Any], meta: Mapping[str, Any], *,
             exclusive: bool = False) -> None:
    """Write variables as flat ``a/b/c`` arrays plus a JSON ``__meta__`` string, atomically.

    The file appears complete or not at all; an existing ``path`` is
    replaced, or with ``exclusive`` kept (:class:`FileExistsError`).
    """
    arrays = flatten(variables)
    arrays[META_KEY] = np.array(json.dumps(dict(meta), sort_keys=True))
    with atomic_path(path, exclusive=exclusive) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def load_npz(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a file written by :func:`save_npz` → (variables, meta).

    Raises
    ------
    FileNotFoundError
        ``path`` is not an existing file (a folder named ``x.npz`` included).
    ValueError
        The file is not a readable ``.npz`` of numeric arrays with a JSON
        ``__meta__`` (corrupt, truncated, another format, pickled objects).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model weights file {path!r} does not exist (or is not a file)")
    with open(path, "rb") as fh:  # our handle: closed however np.load fails
        if fh.read(4) != b"PK\x03\x04":
            raise ValueError(f"{path}: not a deepcr-jax weights file (an .npz is a zip archive; this file is not)")
        fh.seek(0)
        try:
            with np.load(fh, allow_pickle=False) as data:
                flat = {k: data[k] for k in data.files}
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
            raise ValueError(
                f"{path}: not a deepcr-jax weights file (.npz of arrays): {type(err).__name__}: {err}"
            ) from None
    meta_raw = flat.pop(META_KEY, None)
    try:
        meta = json.loads(str(meta_raw)) if meta_raw is not None else {}
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not a deepcr-jax weights file (bad {META_KEY}: {err})") from None
    return unflatten(flat), meta


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_arrays(variables: Mapping[str, Any]) -> str:
    """Hex sha256 of a variables tree's arrays: names, dtypes, shapes and bytes, in name order.

    Independent of the ``.npz`` container and of the metadata, so a trained
    zoo model's digest can be recorded in its own metadata.
    """
    h = hashlib.sha256()
    for name, arr in sorted(flatten(variables).items()):
        a = np.ascontiguousarray(arr)
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()
