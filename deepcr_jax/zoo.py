"""The model zoo: every network deepCR 0.3.1 ships, converted to ``.npz``, and ours.

Two kinds of entry. *Converted* models are deepCR 0.3.1's ``.pth`` files
(``ModelSpec.converted``; parity with the PyTorch reference is tested for each
of them). *Trained* models were trained by deepcr-jax itself
(:mod:`deepcr_jax.training`); they have no PyTorch reference: their
``source`` is the training command, ``source_sha256`` the digest of their
arrays (:func:`deepcr_jax.weights.sha256_arrays`), and their weights file
carries the training config, data provenance and validation scores.

Each entry records the architecture (read off the tensors by
:func:`deepcr_jax.convert.infer_architecture`), the preprocessing the network
expects, the recommended threshold and where the weights came from. The
weights themselves live in ``deepcr_jax/weights/<name>.npz`` (unfolded
variables plus a JSON ``__meta__``), rebuilt by ``python -m convert``.

Input units
-----------
Every network sees ``image / scale``. deepCR's own registry gives the scale for
``ACS-WFC``, ``decam``, ``WFC3-UVIS`` (1) and ``example_model`` (100). The
other four files are not registered there; their scale was established from
their detection rate on realistic simulated ACS/WFC data (``python
benchmarks/scales.py``, table in ``benchmarks/results/scales.md``): a wrong
scale does not fail, it silently drops the true-positive rate. The three per-filter 2-32
models work in electrons (scale 1); the paper's 2-4 model expects e-/100,
like ``example_model``: at scale 1 it flags 31 % of CR-free pixels.

deepCR's registry gives the inpainting networks no scale: its ``clean``
feeds them the image divided by the *mask* model's scale (electrons with
``ACS-WFC``, e-/100 with its tutorial's ``example_model``). Their inpainting
error on simulated data (``benchmarks/results/scales.md``) is lowest at e-/100, in mean
and median alike, so the zoo gives both scale 100.
:mod:`deepcr_jax.compat` keeps the reference's behaviour.
"""

from __future__ import annotations

import dataclasses
import os
from importlib import resources

from deepcr_jax.arch import Architecture

__all__ = ["MODELS", "ModelSpec", "get_spec", "list_models", "weights_path"]

#: deepCR's own default for ``clean(threshold=...)``.
REFERENCE_THRESHOLD = 0.5


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One zoo entry.

    Attributes
    ----------
    name : str
        Zoo name, as in deepCR (``ACS-WFC``, ``ACS-WFC-F606W-2-32``, ...).
    kind : {"mask", "inpaint"}
        CR-probability network or inpainting network.
    arch : Architecture
        Depth, width, input channels, normalisation, output head.
    scale : float
        The network sees ``image / scale`` (image in the instrument's units,
        electrons for HST ``_flc`` data).
    standardize : bool
        Subtract the image mean and divide by its standard deviation after
        scaling (deepCR does this for WFC3-UVIS only), then undo it on output.
    threshold : float
        Recommended probability threshold for the binary mask.
    instrument : str
        What data the network was trained on.
    source : str
        Converted models: path of the ``.pth`` inside the deepCR 0.3.1 wheel.
        Trained models: the training command.
    source_sha256 : str
        sha256 of that ``.pth``; for trained models, of the weight arrays
        (:func:`deepcr_jax.weights.sha256_arrays`).
    registered : bool
        Whether deepCR 0.3.1's own registry (``learned_models.mask_dict`` /
        ``inpaint_dict``) lists the model.
    notes : str
        Provenance of the scale and threshold.
    """

    name: str
    kind: str
    arch: Architecture
    scale: float
    standardize: bool
    threshold: float
    instrument: str
    source: str
    source_sha256: str
    registered: bool
    notes: str = ""

    @property
    def converted(self) -> bool:
        """Converted from a deepCR 0.3.1 ``.pth`` (else trained by deepcr-jax)."""
        return self.source.endswith(".pth")

    @property
    def label(self) -> str:
        """``depth-hidden`` as the paper writes it (``2-32``)."""
        return f"{self.arch.depth}-{self.arch.hidden}"

    def meta(self) -> dict:
        """JSON-able metadata stored beside the weights."""
        d = dataclasses.asdict(self)
        d["arch"] = self.arch.to_dict()
        return d


def _bn(depth: int, hidden: int, kind: str = "mask") -> Architecture:
    return Architecture.for_kind(kind, depth, hidden, norm="batch")


_SCALE_FROM_REGISTRY = "scale from deepCR 0.3.1's registry"
_SCALE_FROM_SIMULATION = (
    "not in deepCR 0.3.1's registry; scale 1 (electrons) established from its detection "
    "rate on simulated ACS/WFC data: best TPR at 0.05 % FPR of the scales 1, 10, 100, 1000 "
    "(benchmarks/results/scales.md)"
)

_INPAINT_SCALE = (
    "deepCR 0.3.1 registers no scale for inpainting networks (they get the mask model's: 1 with "
    "ACS-WFC, 100 with example_model); scale 100 (e-/100) established from the inpainting MSE "
    "on simulated ACS/WFC data: lowest of the scales 1, 10, 100, 1000 (benchmarks/results/scales.md)"
)

_TRAINED_MASK_COMMAND = (
    "python -m train --config mask_2_32 crop=64 sim_shape=128 sim_n=768 epochs_max=38"
)

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec(
            "ACS-WFC", "mask", _bn(2, 32), 1.0, False, REFERENCE_THRESHOLD,
            "HST ACS/WFC _flc (e-), F435W/F606W/F814W", "learned_models/mask/ACS-WFC.pth",
            "0075cef7a8b72f3ecf449cac3793d3446720a97fc0ba812fb29863a9be1e7ace", True, _SCALE_FROM_REGISTRY,
        ),
        ModelSpec(
            "ACS-WFC-F435W", "mask", _bn(2, 32), 1.0, False, REFERENCE_THRESHOLD,
            "HST ACS/WFC F435W _flc (e-)", "learned_models/mask/ACS-WFC-F435W.pth",
            "27d351ce310491f70964bd8a30a5579322e064edd63f5726a68d7f4129551d85", False, _SCALE_FROM_SIMULATION,
        ),
        ModelSpec(
            "ACS-WFC-F606W", "mask", _bn(2, 32), 1.0, False, REFERENCE_THRESHOLD,
            "HST ACS/WFC F606W _flc (e-)", "learned_models/mask/ACS-WFC-F606W.pth",
            "704dfcf91c3b4d7984b113236017c8b1ef6edbeca2fc54a7739a082c2f1e19f3", False, _SCALE_FROM_SIMULATION,
        ),
        ModelSpec(
            "ACS-WFC-F814W", "mask", _bn(2, 32), 1.0, False, REFERENCE_THRESHOLD,
            "HST ACS/WFC F814W _flc (e-)", "learned_models/mask/ACS-WFC-F814W.pth",
            "fc6bf85042dd9d54cf7f81636ff6921a1ae3d118fb5f4fd7c7ca1b164499d14b", False, _SCALE_FROM_SIMULATION,
        ),
        ModelSpec(
            "ACS-WFC-F606W-2-4", "mask", _bn(2, 4), 100.0, False, REFERENCE_THRESHOLD,
            "HST ACS/WFC F606W _flc (e-); the paper's deepCR-mask-2-4",
            "learned_models/mask/ACS-WFC-F606W-2-4.pth", "91fd387be08dfb2692fc3433566455812c42fae53fa6ec4ad19c384b68bce775", False,
            "not in deepCR 0.3.1's registry; scale 100 (e-/100, deepCR's early convention, as "
            "example_model) established from its detection rate on simulated ACS/WFC data: at scale 1 "
            "it flags 31 % of CR-free pixels, at 100 it finds 76 % of CR pixels at 0.05 % FPR "
            "(benchmarks/results/scales.md)",
        ),
        ModelSpec(
            "WFC3-UVIS", "mask",
            Architecture(depth=2, hidden=32, in_channels=1, norm="weight", head="sigmoid"),
            1.0, True, REFERENCE_THRESHOLD,
            "HST WFC3/UVIS _flc (e-), standardised per image", "learned_models/mask/WFC3-UVIS.pth",
            "92ad8d3231a0427c6fa6d9b39501549edc15fd1eb1162e028e2cf1711b2f59cd", True, _SCALE_FROM_REGISTRY + "; mean/std standardisation as deepCR.clean does for WFC3-UVIS",
        ),
        ModelSpec(
            "decam", "mask", _bn(2, 32), 1.0, False, REFERENCE_THRESHOLD,
            "DECam (DECam units as in deepCR's training set)", "learned_models/mask/decam.pth",
            "686de2afab28d13b2bff3c418ecf017d0b290ca5e8c811ef71f673ce12230815", True, _SCALE_FROM_REGISTRY,
        ),
        ModelSpec(
            "example_model", "mask", _bn(2, 32), 100.0, False, REFERENCE_THRESHOLD,
            "deepCR's example/tutorial model (ACS/WFC-like, e-/100)",
            "learned_models/mask/example_model.pth", "ef11b157aeefa09090d7b829be22eaf974650f70810c487473fafa5a9fddf851", True, _SCALE_FROM_REGISTRY,
        ),
        ModelSpec(
            "ACS-WFC-jax-2-32", "mask", _bn(2, 32), 1.0, False, 0.579,
            "simulated HST ACS/WFC F606W _flc (e-): deepcr_jax.simulate, 768 stamps 128x128, mixed fields",
            _TRAINED_MASK_COMMAND, "727127605ee5aa367954ec8b9db1a1ab185b8c3c978c53bca856e5788bd15486", False,
            "trained by deepcr-jax on simulated data only (38 epochs, 64x64 crops, 54 min on a 2-core CPU); "
            "threshold: validation FPR 0.05 %; TPR at 0.05 % FPR on the simulator's test fields "
            "93.2/95.8/82.5 % (extragalactic/globular/resolved) vs ACS-WFC's 92.7/94.1/80.1 % "
            "(benchmarks/results/accuracy.md). Not validated on real HST data.",
        ),
        ModelSpec(
            "ACS-WFC-F606W-2-32", "inpaint", _bn(2, 32, "inpaint"), 100.0, False, REFERENCE_THRESHOLD,
            "HST ACS/WFC F606W _flc (e-, network sees e-/100); the paper's deepCR-inpaint-2-32",
            "learned_models/inpaint/ACS-WFC-F606W-2-32.pth", "2a754380bfe158a1cfeee12f908f96a2bd5b59cbb7b830a4d06dad930d906111", True,
            _INPAINT_SCALE,
        ),
        ModelSpec(
            "ACS-WFC-F606W-3-32", "inpaint", _bn(3, 32, "inpaint"), 100.0, False, REFERENCE_THRESHOLD,
            "HST ACS/WFC F606W _flc (e-, network sees e-/100); the paper's deepCR-inpaint-3-32",
            "learned_models/inpaint/ACS-WFC-F606W-3-32.pth", "5b4faf2e239185c2d5d4235688ce61a2b9e4e5f47bbcf96c8a687b5a0c1e6c42", False,
            "not in deepCR 0.3.1's registry; " + _INPAINT_SCALE,
        ),
    ]
}


def list_models(kind: str | None = None, *, converted: bool | None = None) -> list[str]:
    """Names of the zoo's models.

    ``kind`` ("mask" or "inpaint") keeps only that kind; ``converted`` True
    keeps deepCR 0.3.1's converted models, False the ones trained by
    deepcr-jax (see the module docstring); None both.
    """
    if kind not in (None, "mask", "inpaint"):
        raise ValueError(f"kind must be None, 'mask' or 'inpaint'; got {kind!r}")
    return [
        n for n, s in MODELS.items()
        if (kind is None or s.kind == kind) and (converted is None or s.converted == converted)
    ]


def get_spec(name: str, kind: str | None = None) -> ModelSpec:
    """The zoo entry ``name``; a clear error listing valid names otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"model must be a zoo name (str) or a path; got {type(name).__name__}")
    spec = MODELS.get(name)
    if spec is None or (kind is not None and spec.kind != kind):
        valid = ", ".join(list_models(kind))
        what = f"{kind} model" if kind else "model"
        raise ValueError(f"unknown {what} {name!r}; valid names: {valid}")
    return spec


def weights_path(name: str) -> str:
    """Filesystem path of the shipped ``.npz`` for zoo model ``name``."""
    get_spec(name)
    return os.fspath(resources.files("deepcr_jax") / "weights" / f"{name}.npz")
