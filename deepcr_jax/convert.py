"""Strict conversion of deepCR PyTorch state dicts to deepcr-jax parameters.

The mapping is an explicit table built from the architecture (depth and
normalisation): every torch key the architecture implies must be present with
the expected shape, and every key in the file must be expected. Anything else
is an error that names the key. One layout function per layer type moves the
tensors from torch's layouts (OIHW; transposed conv ``(in, out, kh, kw)``) to
flax's NHWC-friendly ones (HWIO; ``(kh, kw, in, out)``).

Conversion only: nothing here runs when a model is loaded (the ``.npz``
format is :mod:`deepcr_jax.weights`). torch is needed only by
:func:`load_torch_state_dict` (the ``convert`` extra); everything else works
on plain numpy arrays.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from deepcr_jax.arch import Architecture, Block

__all__ = [
    "ConversionError",
    "convert_state_dict",
    "infer_architecture",
    "load_torch_state_dict",
    "torch_key_table",
]

NUM_BATCHES_TRACKED = "num_batches_tracked"


class ConversionError(ValueError):
    """A state dict does not match the architecture it is converted to."""


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


def _block_entries(block: Block, norm: str) -> Iterator[_Entry]:
    """Entries of one double_conv (torch Sequential indices differ per norm)."""
    conv_idx = (0, 3) if norm == "batch" else (0, 2)
    cin, cout = block.in_channels, block.out_channels
    for i, idx in enumerate(conv_idx):
        cin_i = cin if i == 0 else cout
        t = f"{block.torch_prefix}.{idx}"
        conv = ("params", *block.conv_path, f"conv{i}")
        if norm == "weight":
            yield _Entry(f"{t}.weight_g", (*conv, "g"), (cout, 1, 1, 1), weight_norm_g_layout)
            yield _Entry(f"{t}.weight_v", (*conv, "v"), (cout, cin_i, 3, 3), conv_layout)
        else:
            yield _Entry(f"{t}.weight", (*conv, "kernel"), (cout, cin_i, 3, 3), conv_layout)
        yield _Entry(f"{t}.bias", (*conv, "bias"), (cout,), identity_layout)
        if norm == "batch":
            b = f"{block.torch_prefix}.{idx + 1}"
            bn = (*block.conv_path, f"bn{i}")
            yield _Entry(f"{b}.weight", ("params", *bn, "scale"), (cout,), identity_layout)
            yield _Entry(f"{b}.bias", ("params", *bn, "bias"), (cout,), identity_layout)
            yield _Entry(f"{b}.running_mean", ("batch_stats", *bn, "mean"), (cout,), identity_layout)
            yield _Entry(f"{b}.running_var", ("batch_stats", *bn, "var"), (cout,), identity_layout)


def torch_key_table(arch: Architecture) -> list[_Entry]:
    """Every torch key (without ``module.``) the architecture has, in file order.

    Built from :attr:`Architecture.blocks`. BatchNorm's
    ``num_batches_tracked`` counters are not in the table: they are accepted
    where a BatchNorm layer is, and dropped.
    """
    entries: list[_Entry] = []
    for block in arch.blocks:
        if block.role == "decoder":
            cin, cout, up = 2 * block.out_channels, block.out_channels, block.name
            entries.append(_Entry(f"{up}.up.weight", ("params", up, "up", "kernel"), (cin, cout, 2, 2),
                                  conv_transpose_layout))
            entries.append(_Entry(f"{up}.up.bias", ("params", up, "up", "bias"), (cout,), identity_layout))
        entries += _block_entries(block, arch.norm)
    oc, h = arch.out_channels, arch.hidden
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
