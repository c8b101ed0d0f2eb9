"""The PyTorch reference (deepCR 0.3.1), loaded for every zoo model: for parity tests and benchmarks.

Needs the `reference` extra (torch 2.13.0 and the packages deepCR imports) and
`pip install --no-deps deepCR==0.3.1`; nothing else in the package imports it.

deepCR's own registry knows only some of the shipped files; for the others
the reference class is built for a registered model and its network replaced
by the right reference architecture loaded with the file's state dict, so the
reference's own ``clean`` code (padding, thresholding, inpainting) runs.
"""

from __future__ import annotations

import functools
import importlib.util
import os


def learned_models_root() -> str:
    spec = importlib.util.find_spec("learned_models")
    return os.path.dirname(next(iter(spec.submodule_search_locations)))


@functools.cache
def reference(mask: str, inpaint: str | None = None, device: str = "CPU"):
    """A ``deepCR.deepCR`` instance for zoo mask model ``mask`` (and inpainter).

    ``device`` is deepCR's own argument: "CPU" or "GPU" (CUDA).
    """
    import deepCR  # noqa: F401  (must precede learned_models: circular import)
    import torch
    from deepCR import deepCR as RefDeepCR
    from deepCR.unet import WrappedModel
    from deepCR.unet_batchnorm import UNet2BatchNorm, UNet2SigmoidBatchNorm, UNet3BatchNorm
    from learned_models import inpaint_dict, mask_dict

    from deepcr_jax.zoo import MODELS

    if device == "CPU":
        torch.set_num_threads(2)
    root = learned_models_root()
    registered_inpaint = inpaint if inpaint in inpaint_dict else None
    ref = RefDeepCR(mask=mask if mask in mask_dict else "ACS-WFC", inpaint=registered_inpaint, device=device)
    place = (lambda net: net.cuda()) if device == "GPU" else (lambda net: net)
    if mask not in mask_dict:
        spec = MODELS[mask]
        net = WrappedModel(UNet2SigmoidBatchNorm(1, 1, spec.arch.hidden))
        net.load_state_dict(torch.load(os.path.join(root, spec.source), map_location="cpu"))
        ref.maskNet = place(net).eval()
        ref.scale = spec.scale
    if inpaint is not None and inpaint not in inpaint_dict:
        spec = MODELS[inpaint]
        cls = UNet3BatchNorm if spec.arch.depth == 3 else UNet2BatchNorm
        net = WrappedModel(cls(2, 1, spec.arch.hidden))
        net.load_state_dict(torch.load(os.path.join(root, spec.source), map_location="cpu"))
        ref.inpaintNet = place(net).eval()
    return ref


def float64_probability(ref, img):
    """The reference's ``clean(segment=False, binary=False)`` run in float64.

    Tells how far the float32 reference itself is from exact arithmetic on
    this image: the scale against which a float32 reimplementation's
    difference from it is judged.
    """
    import torch

    ref.maskNet.double()
    ref.dtype = torch.DoubleTensor
    try:
        return ref.clean(img, segment=False, binary=False)
    finally:
        ref.maskNet.float()
        ref.dtype = torch.FloatTensor
