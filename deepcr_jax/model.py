"""Functional core: loaded parameters as a pytree and a pure ``predict``.

``params = load_params("ACS-WFC")`` returns a :class:`ModelParams` pytree
(arrays are leaves; architecture and preprocessing are static metadata), and
``predict(params, images)`` is a pure function a JAX user can put inside their
own ``jit``/``vmap``/``grad``::

    params = deepcr_jax.load_params("ACS-WFC")
    prob = jax.jit(deepcr_jax.predict)(params, stamps)   # (n, ny, nx) in e-

Preprocessing follows deepCR 0.3.1's ``clean``: divide by the model's scale,
optionally standardise (WFC3-UVIS), zero-pad the top/left to a multiple of 4,
run the network, crop.
"""

from __future__ import annotations

import os
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from deepcr_jax.convert import Architecture, inference_variables, load_npz
from deepcr_jax.nets import UNet
from deepcr_jax.zoo import get_spec, weights_path

__all__ = ["PAD_MULTIPLE", "ModelParams", "load_params", "load_variables", "network_forward", "predict"]

#: deepCR pads images at the top/left with zeros to a multiple of 4.
PAD_MULTIPLE = 4


@flax.struct.dataclass
class ModelParams:
    """A loaded network: inference variables plus static metadata.

    A pytree: ``variables`` holds the arrays (``{"params": ...}``);
    everything else is static
    (part of the tree structure, hence of any jit cache key).
    """

    variables: Any
    name: str = flax.struct.field(pytree_node=False)
    kind: str = flax.struct.field(pytree_node=False)
    depth: int = flax.struct.field(pytree_node=False)
    hidden: int = flax.struct.field(pytree_node=False)
    in_channels: int = flax.struct.field(pytree_node=False)
    head: str = flax.struct.field(pytree_node=False)
    norm: str = flax.struct.field(pytree_node=False)
    scale: float = flax.struct.field(pytree_node=False)
    standardize: bool = flax.struct.field(pytree_node=False)
    threshold: float = flax.struct.field(pytree_node=False)

    @property
    def module(self) -> UNet:
        """The flax module these variables belong to (apply with ``train=False``)."""
        return UNet(depth=self.depth, hidden=self.hidden, norm=self.norm, head=self.head)


def _spec_from_meta(meta: dict, path: str) -> dict:
    try:
        arch = Architecture(**meta["arch"])
        return dict(
            name=meta.get("name", os.path.basename(path)),
            kind=meta.get("kind", "inpaint" if arch.in_channels == 2 else "mask"),
            arch=arch,
            scale=float(meta.get("scale", 1.0)),
            standardize=bool(meta.get("standardize", False)),
            threshold=float(meta.get("threshold", 0.5)),
        )
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a deepcr-jax weights file (bad __meta__: {err})") from err


def load_variables(model: str | os.PathLike) -> tuple[dict, dict]:
    """Unfolded flax variables and metadata of a zoo name or ``.npz`` path.

    The unfolded variables (``params`` and, for BatchNorm networks,
    ``batch_stats``) are what fine-tuning starts from.
    """
    path = _resolve_path(model)
    variables, meta = load_npz(path)
    return variables, meta


def _resolve_path(model: str | os.PathLike) -> str:
    if isinstance(model, os.PathLike) or (isinstance(model, str) and model.endswith(".npz")):
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"model weights file {path!r} does not exist")
        return path
    get_spec(model)  # raises listing valid names
    return weights_path(model)


def load_params(model: str | os.PathLike = "ACS-WFC", *, kind: str | None = None) -> ModelParams:
    """Load a zoo model (or a converted ``.npz``) ready for :func:`predict`.

    Parameters
    ----------
    model : str or path-like
        A zoo name (see :func:`deepcr_jax.list_models`) or the path of a
        ``.npz`` written by ``deepcr-jax convert``.
    kind : {"mask", "inpaint"}, optional
        Require this kind of network; a clear error otherwise.

    Returns
    -------
    ModelParams
        Inference variables (weight-norm folded into the kernels, BatchNorm
        as a per-channel affine; see :func:`deepcr_jax.convert.inference_variables`),
        float32, on the default device.
    """
    if isinstance(model, str) and not model.endswith(".npz"):
        get_spec(model, kind)
    path = _resolve_path(model)
    variables, meta = load_npz(path)
    info = _spec_from_meta(meta, path)
    if kind is not None and info["kind"] != kind:
        raise ValueError(f"model {model!r} is a {info['kind']} network; a {kind} network is needed here")
    arch: Architecture = info.pop("arch")
    inference, norm = inference_variables(variables, arch)
    return ModelParams(
        variables=jax.tree.map(jnp.asarray, inference),
        norm=norm,
        depth=arch.depth,
        hidden=arch.hidden,
        in_channels=arch.in_channels,
        head=arch.head,
        **info,
    )


def network_forward(params: ModelParams, x: jax.Array) -> jax.Array:
    """Raw network on preprocessed NHWC input; ``ny``, ``nx`` multiples of 4.

    ``x`` is ``(n, ny, nx, in_channels)``; returns ``(n, ny, nx)`` (sigmoid
    probabilities for mask networks, raw predictions for inpainting ones).
    Convolutions run at full float32 precision on every backend (no TF32 on
    GPUs, no bf16 passes on TPUs).
    """
    with jax.default_matmul_precision("highest"):
        return params.module.apply(params.variables, x)[..., 0]


def _standardize_stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    mean = jnp.mean(x, axis=(-2, -1), keepdims=True)
    std = jnp.std(x, axis=(-2, -1), keepdims=True)
    return mean, std


def _pad_top_left(x: jax.Array, multiple: int) -> tuple[jax.Array, int, int]:
    py, px = -x.shape[-2] % multiple, -x.shape[-1] % multiple
    pads = [(0, 0)] * (x.ndim - 2) + [(py, 0), (px, 0)]
    return jnp.pad(x, pads), py, px


def predict(params: ModelParams, images: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Pure forward pass with the model's preprocessing, deepCR's conventions.

    Parameters
    ----------
    params : ModelParams
        From :func:`load_params`.
    images : array, shape (n, ny, nx) or (n, ny, nx, 1)
        Images in the model's units (electrons for HST ``_flc``), any size.
    mask : array, shape like ``images``, optional
        Inpainting networks only: 1 (True) where pixels are to be replaced.

    Returns
    -------
    jax.Array, float32, shape (n, ny, nx)
        Mask networks: CR probability in [0, 1]. Inpainting networks: the
        image with masked pixels replaced by the network's prediction
        (unmasked pixels unchanged), in the input units.

    Notes
    -----
    Like deepCR, images are zero-padded at the top/left to a multiple of 4
    before the network and cropped after; the standardisation statistics
    (WFC3-UVIS) are per image, over the unpadded pixels.
    """
    x = jnp.asarray(images, jnp.float32)
    if x.ndim == 4:
        if x.shape[-1] != 1:
            raise ValueError(f"images must be (n, ny, nx) or (n, ny, nx, 1); got shape {x.shape}")
        x = x[..., 0]
    if x.ndim != 3:
        raise ValueError(f"images must be (n, ny, nx) or (n, ny, nx, 1); got shape {x.shape}")
    x = x / jnp.float32(params.scale)
    if params.standardize:
        mean, std = _standardize_stats(x)
        x = (x - mean) / std
    if params.in_channels == 1:
        if mask is not None:
            raise ValueError("mask is only for inpainting networks; this is a mask network")
        xp, py, px = _pad_top_left(x, PAD_MULTIPLE)
        return network_forward(params, xp[..., None])[:, py:, px:]
    if mask is None:
        raise ValueError("inpainting networks need mask (n, ny, nx)")
    m = jnp.asarray(mask, jnp.float32).reshape(x.shape)
    xp, py, px = _pad_top_left(x, PAD_MULTIPLE)
    mp, _, _ = _pad_top_left(m, PAD_MULTIPLE)
    net_in = jnp.stack([xp * (1 - mp), mp], axis=-1)
    out = network_forward(params, net_in)
    out = (out * mp + xp * (1 - mp))[:, py:, px:]
    if params.standardize:
        out = out * std + mean
    return out * jnp.float32(params.scale)

