"""Functional core: loaded parameters as a pytree, the one preprocessing, a pure ``predict``.

``params = load_params("ACS-WFC")`` returns a :class:`ModelParams` pytree
(arrays are leaves; architecture and preprocessing are static metadata), and
``predict(params, images)`` is a pure function a JAX user can put inside their
own ``jit``/``vmap``/``grad``::

    params = deepcr_jax.load_params("ACS-WFC")
    prob = jax.jit(deepcr_jax.predict)(params, stamps)   # (n, ny, nx) in e-

Preprocessing follows deepCR 0.3.1's ``clean``: divide by the model's scale,
optionally standardise (WFC3-UVIS), zero-pad the top/left to a multiple of 4,
run the network, crop. :func:`preprocess` and :func:`postprocess` are that
pipeline, written once for numpy and JAX arrays alike (``xp``): ``predict``
runs them in JAX; :func:`deepcr_jax.clean` runs the same arithmetic on the
device inside its tiled program (:mod:`deepcr_jax.pipeline`, checked against
these functions by the tests); training feeds the network through the same
:func:`preprocess`.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from deepcr_jax.arch import Architecture
from deepcr_jax.nets import UNet
from deepcr_jax.weights import inference_variables, load_npz
from deepcr_jax.zoo import MODELS, get_spec, weights_path

__all__ = [
    "PAD_MULTIPLE",
    "ModelParams",
    "Undo",
    "load_params",
    "network_forward",
    "normalize",
    "postprocess",
    "predict",
    "preprocess",
]

#: deepCR pads images at the top/left with zeros to a multiple of 4.
PAD_MULTIPLE = 4


@flax.struct.dataclass
class ModelParams:
    """A loaded network: inference variables plus static metadata.

    A pytree: ``variables`` holds the arrays (``{"params": ...}``);
    everything else is static (part of the tree structure, hence of any jit
    cache key).

    Attributes
    ----------
    variables : dict
        Inference variables for ``arch.module(norm=norm)``.
    name : str
    arch : Architecture
        Depth, width, input channels, stored normalisation, head.
    norm : {"affine", "none"}
        The inference network's normalisation (BatchNorm as a per-channel
        affine; weight-norm folded into plain kernels).
    scale : float
        The network sees ``image / scale``.
    standardize : bool
        Per-image mean/std standardisation after scaling (WFC3-UVIS).
    threshold : float
        Recommended probability threshold.
    """

    variables: Any
    name: str = flax.struct.field(pytree_node=False)
    arch: Architecture = flax.struct.field(pytree_node=False)
    norm: str = flax.struct.field(pytree_node=False)
    scale: float = flax.struct.field(pytree_node=False)
    standardize: bool = flax.struct.field(pytree_node=False)
    threshold: float = flax.struct.field(pytree_node=False)

    @property
    def kind(self) -> str:
        """``"mask"`` or ``"inpaint"``."""
        return self.arch.kind

    @property
    def depth(self) -> int:
        return self.arch.depth

    @property
    def hidden(self) -> int:
        return self.arch.hidden

    @property
    def in_channels(self) -> int:
        return self.arch.in_channels

    @property
    def head(self) -> str:
        return self.arch.head

    @property
    def module(self) -> UNet:
        """The flax module these variables belong to (apply with ``train=False``)."""
        return self.arch.module(norm=self.norm)


def _is_path(model: str | os.PathLike) -> bool:
    """A path-like, or a string that is no zoo name and names a file: ends in ``.npz``, has a folder part, or exists.

    Zoo names win: a file called ``ACS-WFC`` in the working directory does not shadow the zoo model.
    """
    if isinstance(model, os.PathLike):
        return True
    if model in MODELS:
        return False
    return model.endswith(".npz") or os.sep in model or "/" in model or os.path.exists(model)


def _resolve_path(model: str | os.PathLike, kind: str | None) -> str:
    if _is_path(model):
        return os.fspath(model)
    get_spec(model, kind)  # raises listing valid names
    return weights_path(model)


def load_params(model: str | os.PathLike = "ACS-WFC", *, kind: str | None = None) -> ModelParams:
    """Load a zoo model (or a weights ``.npz``) ready for :func:`predict`.

    Parameters
    ----------
    model : str or path-like
        A zoo name (see :func:`deepcr_jax.list_models`) or the path of a
        ``.npz`` written by ``deepcr-jax convert`` or by training's export.
    kind : {"mask", "inpaint"}, optional
        Require this kind of network; a clear error otherwise.

    Returns
    -------
    ModelParams
        Inference variables (weight-norm folded into the kernels, BatchNorm
        as a per-channel affine; see :func:`deepcr_jax.weights.inference_variables`),
        float32, on the default device.
    """
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a zoo name (str) or a path; got {type(model).__name__}")
    path = _resolve_path(model, kind)
    variables, meta = load_npz(path)
    try:
        arch = Architecture(**meta["arch"])
        name = str(meta.get("name", os.path.basename(path)))
        scale = float(meta.get("scale", 1.0))
        standardize = bool(meta.get("standardize", False))
        threshold = float(meta.get("threshold", 0.5))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: not a deepcr-jax weights file (bad __meta__: {err})") from None
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"{path}: scale must be a positive number; got {scale}")
    if kind is not None and arch.kind != kind:
        raise ValueError(f"model {os.fspath(model)!r} is a {arch.kind} network; a {kind} network is needed here")
    try:
        inference, norm = inference_variables(variables, arch)
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path}: weights do not match their architecture {arch} ({err!r})") from None
    return ModelParams(
        variables=jax.tree.map(jnp.asarray, inference),
        name=name,
        arch=arch,
        norm=norm,
        scale=scale,
        standardize=standardize,
        threshold=threshold,
    )


def network_forward(params: ModelParams, x: jax.Array) -> jax.Array:
    """Raw network on preprocessed NHWC input; ``ny``, ``nx`` multiples of 4.

    ``x`` is ``(n, ny, nx, in_channels)``; returns ``(n, ny, nx)`` (sigmoid
    probabilities for mask networks, raw predictions for inpainting ones).
    Convolutions run at full float32 precision on every backend (no TF32 on
    GPUs, no bf16 passes on TPUs).

    Where the default backend is the CPU and the native kernels
    (:mod:`deepcr_jax.native`) run this network, the traced function holds
    both forwards behind ``jax.lax.platform_dependent``: the native one when
    it is compiled for the CPU, XLA's convolution for any other platform.
    Gradients (``jax.grad``, ``jax.vjp``) go through a ``jax.custom_vjp``
    whose backward is the VJP of the XLA forward, so training and other
    differentiation see XLA's gradients exactly; ``jax.vmap`` batches
    either forward.
    """

    def xla(variables, x):
        with jax.default_matmul_precision("highest"):
            return params.module.apply(variables, x)[..., 0]

    from deepcr_jax import native
    from deepcr_jax.native import unet as native_unet

    usable = (
        jax.default_backend() == "cpu"
        and native_unet.supported(params.norm, params.hidden, params.in_channels)
        and native.available()
    )
    if not usable:
        return xla(params.variables, x)

    def fused(variables, x):
        y = native_unet.forward(variables, x, None, depth=params.depth, norm=params.norm, head=params.head)
        return y[..., 0]

    @jax.custom_vjp
    def forward(variables, x):
        return jax.lax.platform_dependent(variables, x, cpu=fused, default=xla)

    def forward_fwd(variables, x):
        return forward(variables, x), (variables, x)

    def forward_bwd(residuals, g):
        _, vjp = jax.vjp(xla, *residuals)
        return vjp(g)

    forward.defvjp(forward_fwd, forward_bwd)
    return forward(params.variables, x.astype(jnp.float32))


class Undo(NamedTuple):
    """What :func:`postprocess` needs to map network output back: padding and statistics."""

    py: int
    px: int
    mean: Any  # (n, 1, 1) or 0.0
    std: Any  # (n, 1, 1) or 1.0


def _pad_top_left(x, multiple: int, xp):
    py, px = -x.shape[-2] % multiple, -x.shape[-1] % multiple
    pads = [(0, 0)] * (x.ndim - 2) + [(py, 0), (px, 0)]
    return xp.pad(x, pads), py, px


def normalize(images, scale: float, standardize: bool, *, xp=jnp):
    """``images / scale``, then per image ``(x - mean) / std`` if ``standardize``.

    ``images`` (..., ny, nx); returns ``(x, mean, std)`` with ``mean`` and
    ``std`` of shape (..., 1, 1) (0.0 and 1.0 without standardisation). A
    standard deviation below 1e-5 of the mean's magnitude (a constant image,
    up to float32 rounding) is taken as 1, so the network sees zeros instead
    of NaN or amplified rounding noise. Training normalises its batches with
    this same function.
    """
    x = images / xp.float32(scale)
    if not standardize:
        return x, 0.0, 1.0
    mean = xp.mean(x, axis=(-2, -1), keepdims=True)
    std = xp.std(x, axis=(-2, -1), keepdims=True)
    std = xp.where(std > xp.float32(1e-5) * xp.abs(mean), std, xp.float32(1))
    return (x - mean) / std, mean, std


def preprocess(params: ModelParams, images, mask=None, *, xp=jnp):
    """The network input for images in the model's units: deepCR's preprocessing.

    Parameters
    ----------
    params : ModelParams
    images : array, float32, shape (n, ny, nx)
        Finite pixel values in the model's units (electrons for HST ``_flc``).
    mask : array, shape (n, ny, nx), optional
        Inpainting networks only: 1 (True) where pixels are to be replaced.
    xp : module
        ``numpy`` or ``jax.numpy``: the same arithmetic on either.

    Returns
    -------
    x : array, float32, shape (n, ny + py, nx + px, in_channels)
        :func:`normalize` (``images / scale``, standardised per image over
        the unpadded pixels if the model says so), zero-padded at the top/left to a multiple of 4; inpainting
        networks get ``[x * (1 - mask), mask]``.
    undo : Undo
    """
    x, mean, std = normalize(images, params.scale, params.standardize, xp=xp)
    x, py, px = _pad_top_left(x, PAD_MULTIPLE, xp)
    if params.in_channels == 1:
        if mask is not None:
            raise ValueError("mask is only for inpainting networks; this is a mask network")
        return x[..., None], Undo(py, px, mean, std)
    if mask is None:
        raise ValueError("inpainting networks need mask (n, ny, nx)")
    m, _, _ = _pad_top_left(mask.astype(xp.float32), PAD_MULTIPLE, xp)
    return xp.stack([x * (1 - m), m], axis=-1), Undo(py, px, mean, std)


def postprocess(params: ModelParams, out, undo: Undo, images=None, mask=None, *, xp=jnp):
    """Network output (n, ny + py, nx + px) back to the images' frame and units.

    Mask networks: the probability, cropped. Inpainting networks (``images``
    and ``mask`` as given to :func:`preprocess`): ``images`` with the
    ``mask`` pixels replaced by the prediction, un-standardised and times
    ``scale``; every other pixel is ``images``' own value, bit for bit.
    """
    out = out[..., undo.py :, undo.px :]
    if params.in_channels == 1:
        return out
    pred = (out * undo.std + undo.mean) * xp.float32(params.scale)
    return xp.where(mask.astype(bool), pred.astype(xp.float32), images)


def _check_images(images, name: str = "images", *, allow_bool: bool = False):
    dtype = np.dtype(images.dtype if hasattr(images, "dtype") else np.asarray(images).dtype)
    if dtype == bool and allow_bool:
        return
    if dtype == object or np.issubdtype(dtype, np.complexfloating) or dtype == bool:
        raise TypeError(f"{name} must be a real numeric array; got dtype {dtype}")
    if not (np.issubdtype(dtype, np.number) or dtype == jnp.bfloat16):
        raise TypeError(f"{name} must be a real numeric array; got dtype {dtype}")


def predict(params: ModelParams, images: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Pure forward pass with the model's preprocessing, deepCR's conventions.

    Parameters
    ----------
    params : ModelParams
        From :func:`load_params`.
    images : array, shape (n, ny, nx) or (n, ny, nx, 1)
        Images in the model's units (electrons for HST ``_flc``), any size,
        any real dtype; finite values (NaN propagates).
    mask : array, shape of ``images``, optional
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
    _check_images(images)
    x = jnp.asarray(images).astype(jnp.float32)
    shape = x.shape
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 3:
        raise ValueError(f"images must be (n, ny, nx) or (n, ny, nx, 1); got shape {shape}")
    m = None
    if mask is not None:
        _check_images(mask, "mask", allow_bool=True)
        m = jnp.asarray(mask)
        if m.shape != shape:
            raise ValueError(f"mask must have the images' shape {shape}; got {m.shape}")
        m = (m.reshape(x.shape) if m.ndim == 4 else m) != 0
    net_in, undo = preprocess(params, x, m)
    out = network_forward(params, net_in)
    return postprocess(params, out, undo, x, m)
