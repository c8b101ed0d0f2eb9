"""Strict conversion of deepCR PyTorch state dicts to deepcr-jax parameters.

The mapping is an explicit table built from the architecture (depth and
normalisation): every torch key the architecture implies must be present with
the expected shape, and every key in the file must be expected. Anything else
is an error that names the key. One layout function per layer type moves the
tensors from torch's layouts (OIHW; transposed conv ``(in, out, kh, kw)``) to
flax's NHWC-friendly ones (HWIO; ``(kh, kw, in, out)``).

torch is needed only by :func:`load_torch_state_dict` (the ``convert`` extra);
everything else works on plain numpy arrays.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from deepcr_jax.nets import BN_EPS

__all__ = [
    "Architecture",
    "ConversionError",
    "convert_state_dict",
    "flatten",
    "fold",
    "infer_architecture",
    "inference_variables",
    "load_npz",
    "load_torch_state_dict",
    "save_npz",
    "sha256_file",
    "torch_key_table",
    "unflatten",
]

NUM_BATCHES_TRACKED = "num_batches_tracked"


class ConversionError(ValueError):
    """A state dict does not match the architecture it is converted to."""


@dataclasses.dataclass(frozen=True)
class Architecture:
    """What a deepCR network file holds, as far as tensors can tell.

    Attributes
    ----------
    depth : int
        2 or 3 resolution levels.
    hidden : int
        Channels of the first level.
    in_channels : int
        1 for mask networks (image), 2 for inpainting networks (masked image, mask).
    norm : {"batch", "weight", "none"}
        Normalisation in the conv blocks.
    head : {"sigmoid", "identity"}
        ``sigmoid`` for mask networks, ``identity`` for inpainting networks.
    out_channels : int
        Always 1 for deepCR.
    """

    depth: int
    hidden: int
    in_channels: int
    norm: str
    head: str
    out_channels: int = 1

    def __post_init__(self) -> None:
        if self.depth not in (2, 3):
            raise ValueError(f"depth must be 2 or 3; got {self.depth}")
        if self.norm not in ("batch", "weight", "none"):
            raise ValueError(f"norm must be 'batch', 'weight' or 'none'; got {self.norm!r}")
        if self.head not in ("sigmoid", "identity"):
            raise ValueError(f"head must be 'sigmoid' or 'identity'; got {self.head!r}")

    def module(self, *, folded: bool = False):
        """The flax :class:`~deepcr_jax.nets.UNet` for this architecture."""
        from deepcr_jax.nets import UNet

        return UNet(
            depth=self.depth,
            hidden=self.hidden,
            out_channels=self.out_channels,
            norm="none" if folded else self.norm,
            head=self.head,
        )


# --------------------------------------------------------------------------
# reading torch files


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a deepCR ``.pth`` (legacy pickle or zip format) into numpy arrays.

    Loads with ``weights_only=True`` (no arbitrary code runs) and strips the
    ``module.`` prefix that deepCR's ``WrappedModel``/``DataParallel`` adds.
    Needs torch (``pip install deepcr-jax[convert]``).
    """
    try:
        import torch
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading .pth files needs torch: pip install 'deepcr-jax[convert]' "
            "(torch is not needed to run the shipped models)"
        ) from err
    raw = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    if isinstance(raw, Mapping) and "state_dict" in raw and isinstance(raw["state_dict"], Mapping):
        raw = raw["state_dict"]
    if not isinstance(raw, Mapping):
        raise ConversionError(f"{path}: expected a state dict, got {type(raw).__name__}")
    out: dict[str, np.ndarray] = {}
    for key, tensor in raw.items():
        name = key.removeprefix("module.")
        if name in out:
            raise ConversionError(f"{path}: key {name!r} appears twice (with and without 'module.')")
        out[name] = tensor.detach().cpu().numpy()
    return out


def infer_architecture(state_dict: Mapping[str, Any]) -> Architecture:
    """Work out depth, hidden width, input channels and normalisation from tensors.

    ``head`` follows from the input channels: one (image) → mask network with a
    sigmoid; two (masked image + mask) → inpainting network, identity head.
    """
    keys = set(state_dict)
    depth = 3 if any(k.startswith("down2.") for k in keys) else 2
    if "inc.conv.conv.0.weight_v" in keys:
        norm, first = "weight", state_dict["inc.conv.conv.0.weight_v"]
    elif "inc.conv.conv.0.weight" in keys:
        first = state_dict["inc.conv.conv.0.weight"]
        norm = "batch" if "inc.conv.conv.1.running_mean" in keys else "none"
    else:
        raise ConversionError(
            "not a deepCR UNet state dict: no 'inc.conv.conv.0.weight' or "
            "'inc.conv.conv.0.weight_v' key"
        )
    if np.ndim(first) != 4:
        raise ConversionError(f"'inc.conv.conv.0' weight must be 4-D; got shape {np.shape(first)}")
    hidden, in_channels = int(first.shape[0]), int(first.shape[1])
    out = state_dict.get("outc.conv.weight")
    out_channels = int(out.shape[0]) if out is not None else 1
    head = "identity" if in_channels == 2 else "sigmoid"
    return Architecture(depth, hidden, in_channels, norm, head, out_channels)


# --------------------------------------------------------------------------
# the key table and layout functions


def conv_layout(w: np.ndarray) -> np.ndarray:
    """torch conv weight OIHW → flax HWIO."""
    return np.transpose(w, (2, 3, 1, 0))


def conv_transpose_layout(w: np.ndarray) -> np.ndarray:
    """torch ConvTranspose2d weight (in, out, kh, kw) → (kh, kw, in, out)."""
    return np.transpose(w, (2, 3, 0, 1))


def weight_norm_g_layout(g: np.ndarray) -> np.ndarray:
    """torch weight-norm magnitude (out, 1, 1, 1) → (out,)."""
    return np.reshape(g, (g.shape[0],))


def identity_layout(x: np.ndarray) -> np.ndarray:
    return np.asarray(x)


@dataclasses.dataclass(frozen=True)
class _Entry:
    torch_key: str
    flax_path: tuple[str, ...]  # ("params" | "batch_stats", module..., leaf)
    torch_shape: tuple[int, ...]
    layout: Callable[[np.ndarray], np.ndarray]


def _block_entries(tprefix: str, fpath: tuple[str, ...], cin: int, cout: int, norm: str) -> Iterator[_Entry]:
    """Entries of one double_conv (torch Sequential indices differ per norm)."""
    conv_idx = (0, 3) if norm == "batch" else (0, 2)
    for i, idx in enumerate(conv_idx):
        cin_i = cin if i == 0 else cout
        t = f"{tprefix}.{idx}"
        conv = ("params", *fpath, f"conv{i}")
        if norm == "weight":
            yield _Entry(f"{t}.weight_g", (*conv, "g"), (cout, 1, 1, 1), weight_norm_g_layout)
            yield _Entry(f"{t}.weight_v", (*conv, "v"), (cout, cin_i, 3, 3), conv_layout)
        else:
            yield _Entry(f"{t}.weight", (*conv, "kernel"), (cout, cin_i, 3, 3), conv_layout)
        yield _Entry(f"{t}.bias", (*conv, "bias"), (cout,), identity_layout)
        if norm == "batch":
            b = f"{tprefix}.{idx + 1}"
            bn = (*fpath, f"bn{i}")
            yield _Entry(f"{b}.weight", ("params", *bn, "scale"), (cout,), identity_layout)
            yield _Entry(f"{b}.bias", ("params", *bn, "bias"), (cout,), identity_layout)
            yield _Entry(f"{b}.running_mean", ("batch_stats", *bn, "mean"), (cout,), identity_layout)
            yield _Entry(f"{b}.running_var", ("batch_stats", *bn, "var"), (cout,), identity_layout)


def torch_key_table(arch: Architecture) -> list[_Entry]:
    """Every torch key (without ``module.``) the architecture has, in file order.

    BatchNorm's ``num_batches_tracked`` counters are not in the table: they
    are accepted where a BatchNorm layer is, and dropped.
    """
    h, n = arch.hidden, arch.norm
    entries = list(_block_entries("inc.conv.conv", ("inc",), arch.in_channels, h, n))
    entries += _block_entries("down1.mpconv.1.conv", ("down1",), h, 2 * h, n)
    ups = [("up8", 2 * h, h)]
    if arch.depth == 3:
        entries += _block_entries("down2.mpconv.1.conv", ("down2",), 2 * h, 4 * h, n)
        ups.insert(0, ("up7", 4 * h, 2 * h))
    for name, cin, cout in ups:
        entries.append(_Entry(f"{name}.up.weight", ("params", name, "up", "kernel"), (cin, cout, 2, 2), conv_transpose_layout))
        entries.append(_Entry(f"{name}.up.bias", ("params", name, "up", "bias"), (cout,), identity_layout))
        entries += _block_entries(f"{name}.conv.conv", (name, "conv"), cin, cout, n)
    oc = arch.out_channels
    entries.append(_Entry("outc.conv.weight", ("params", "outc", "kernel"), (oc, h, 1, 1), conv_layout))
    entries.append(_Entry("outc.conv.bias", ("params", "outc", "bias"), (oc,), identity_layout))
    return entries


def convert_state_dict(
    state_dict: Mapping[str, Any], arch: Architecture | None = None
) -> tuple[dict[str, Any], Architecture]:
    """Map a deepCR state dict onto flax variables, strictly.

    Parameters
    ----------
    state_dict : mapping of str to array
        torch keys (``module.`` prefix allowed) to arrays (numpy or torch).
    arch : Architecture, optional
        Expected architecture; inferred from the tensors when omitted.

    Returns
    -------
    variables : dict
        ``{"params": ..., "batch_stats": ...}`` (``batch_stats`` only for
        BatchNorm networks) for ``arch.module()``, float32 numpy leaves.
    arch : Architecture

    Raises
    ------
    ConversionError
        Naming every missing, unexpected or mis-shaped key.
    """
    sd = {}
    for key, value in state_dict.items():
        name = key.removeprefix("module.")
        sd[name] = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
    arch = arch or infer_architecture(sd)
    table = torch_key_table(arch)
    expected = {e.torch_key for e in table}
    bn_prefixes = {e.torch_key.rsplit(".", 1)[0] for e in table if e.torch_key.endswith(".running_mean")}
    problems = []
    for e in table:
        if e.torch_key not in sd:
            problems.append(f"missing key {e.torch_key!r} (expected shape {e.torch_shape})")
        elif tuple(sd[e.torch_key].shape) != e.torch_shape:
            problems.append(
                f"key {e.torch_key!r} has shape {tuple(sd[e.torch_key].shape)}; expected {e.torch_shape}"
            )
    for key in sd:
        if key in expected:
            continue
        prefix, leaf = key.rsplit(".", 1) if "." in key else ("", key)
        if leaf == NUM_BATCHES_TRACKED and prefix in bn_prefixes:
            continue
        problems.append(f"unexpected key {key!r}")
    if problems:
        raise ConversionError(
            f"state dict does not match {arch}:\n  " + "\n  ".join(problems)
        )
    variables: dict[str, Any] = {}
    for e in table:
        node = variables
        for part in e.flax_path[:-1]:
            node = node.setdefault(part, {})
        node[e.flax_path[-1]] = e.layout(sd[e.torch_key]).astype(np.float32)
    return variables, arch


# --------------------------------------------------------------------------
# folding for inference


def _fold_block(params: dict, stats: dict | None, norm: str) -> dict:
    out = {}
    for i in range(2):
        conv = params[f"conv{i}"]
        if norm == "weight":
            v = np.asarray(conv["v"], np.float64)
            norm_v = np.sqrt(np.sum(v**2, axis=(0, 1, 2)))
            kernel = v * (np.asarray(conv["g"], np.float64) / norm_v)
            bias = np.asarray(conv["bias"], np.float64)
        else:
            kernel = np.asarray(conv["kernel"], np.float64)
            bias = np.asarray(conv["bias"], np.float64)
        if norm == "batch":
            bn, st = params[f"bn{i}"], stats[f"bn{i}"]
            s = np.asarray(bn["scale"], np.float64) / np.sqrt(np.asarray(st["var"], np.float64) + BN_EPS)
            kernel = kernel * s
            bias = (bias - np.asarray(st["mean"], np.float64)) * s + np.asarray(bn["bias"], np.float64)
        out[f"conv{i}"] = {"kernel": kernel.astype(np.float32), "bias": bias.astype(np.float32)}
    return out


def fold(variables: Mapping[str, Any], arch: Architecture) -> dict[str, Any]:
    """Fold BatchNorm (running statistics) and weight-norm into plain convs.

    Returns ``{"params": ...}`` for ``arch.module(folded=True)``
    (``norm="none"``), numerically the inference-mode network (computed in
    float64, stored as float32).
    """
    params = variables["params"]
    stats = variables.get("batch_stats", {})
    out: dict[str, Any] = {}
    blocks = ["inc", "down1"] + (["down2", "up7"] if arch.depth == 3 else []) + ["up8"]
    for name in blocks:
        if name.startswith("up"):
            out[name] = {
                "up": {k: np.asarray(v, np.float32) for k, v in params[name]["up"].items()},
                "conv": _fold_block(params[name]["conv"], stats.get(name, {}).get("conv"), arch.norm),
            }
        else:
            out[name] = _fold_block(params[name], stats.get(name), arch.norm)
    out["outc"] = {k: np.asarray(v, np.float32) for k, v in params["outc"].items()}
    return {"params": out}


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
    :func:`fold` remains available for fully folded weights.

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


# --------------------------------------------------------------------------
# flat npz files


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


META_KEY = "__meta__"


def save_npz(path: str | os.PathLike, variables: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
    """Write variables as flat ``a/b/c`` arrays plus a JSON ``__meta__`` string, atomically.

    The file appears complete or not at all (written to a temporary file in
    the same directory, then renamed over ``path``).
    """
    path = os.fspath(path)
    arrays = flatten(variables)
    arrays[META_KEY] = np.array(json.dumps(dict(meta), sort_keys=True))
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        _chmod_default(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _chmod_default(path: str) -> None:
    """Give a mkstemp file the permissions a plain ``open(path, "w")`` would."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def load_npz(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a file written by :func:`save_npz` (``allow_pickle=False``) → (variables, meta)."""
    with np.load(os.fspath(path), allow_pickle=False) as data:
        flat = {k: data[k] for k in data.files}
    meta_raw = flat.pop(META_KEY, None)
    meta = json.loads(str(meta_raw)) if meta_raw is not None else {}
    return unflatten(flat), meta


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
