"""Training configurations: frozen, typed dataclasses and the paper's named presets.

``get_config("mask_2_32")`` returns the paper's deepCR-mask-2-32 recipe
(Zhang & Bloom 2020, Appendix A); ``get_config("mask_2_32", smoke=True)`` (or
the name ``"mask_2_32.smoke"``) a tiny variant that trains in seconds on a CPU.
Keyword overrides (``get_config("mask_2_32", lr=1e-3)``) and ``key=value``
strings (:func:`parse_overrides`, what ``python -m train`` passes) are checked
against the field types; an unknown field or a bad value is a ``ValueError``
naming it.

The preprocessing (``scale``, ``standardize``) is part of the model: the
network sees ``image / scale`` (then per-image standardised when
``standardize``) identically at training and inference, and both values travel
in the exported ``.npz``.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["CONFIG_NAMES", "TrainConfig", "config_diff", "get_config", "parse_overrides"]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (see the field comments).

    Two runs with equal configs (and equal data) produce bit-identical
    parameters on CPU; :func:`config_diff` names the fields that differ.
    """

    name: str = "mask_2_32"  # preset this config came from (provenance only)
    kind: str = "mask"  # "mask" (CR probability, BCE) or "inpaint" (masked MSE)
    depth: int = 2  # UNet resolution levels: 2 or 3
    hidden: int = 32  # channels of the first level (level k has hidden * 2**k)
    norm: str = "batch"  # "batch" (two BN phases) or "weight" (weight-normalised convs)
    scale: float = 1.0  # network input = image / scale (image in the data's units, e- for ACS _flc)
    standardize: bool = False  # per-image (x - mean) / std after scaling (deepCR's WFC3-UVIS)
    init: str = ""  # "" = random init; else a zoo name, a .npz or a deepCR .pth to start from
    lr: float = 0.005  # initial Adam learning rate (paper: 0.005 mask, 0.01 inpaint)
    clip_norm: float = 0.0  # clip each step's gradient to this global L2 norm before Adam (0: off; the paper does not clip)
    batch_size: int = 16  # global batch (all devices and processes together)
    crop: int = 256  # square training crop (px, multiple of 4), cut at random from each stamp
    epochs_max: int = 200  # hard cap on epochs
    bn_epochs: int = 20  # BN phase-1 epochs (batch statistics); then frozen (paper: 20 mask, 40 inpaint)
    patience: int = 4  # plateau: epochs without improvement tolerated before a decay
    rtol: float = 1e-3  # plateau: improvement must beat best * (1 - rtol) (0.1 %)
    max_decays: int = 2  # stop once the loss plateaus again after this many decays
    decay_factor: float = 0.1  # lr *= decay_factor at each plateau
    sky_aug_min: float = -0.9  # sky augmentation: alpha ~ U[sky_aug_min, sky_aug_max], image += alpha * sky
    sky_aug_max: float = 3.0  # upper end of the alpha range (0, 0 disables sky augmentation)
    gain_aug_max: float = 1.0  # exposure gain: stamp *= g ~ logU[1, gain_aug_max] before the sky term (1: off, the paper)
    saturation: float = 70000.0  # with the gain: pixels >= this (data units; ACS e-) after it are ignored, grown 7x7
    flips: bool = True  # random flips and transposes (the 8 square symmetries), per stamp
    bright_crops: float = 0.0  # fraction of training crops placed around the stamp's brightest non-CR pixel (0: all uniform, the paper)
    core_masks: float = 0.0  # inpaint: fraction of bright crops whose inpainting mask also hides the peak (a block; 0: off, the paper)
    core_reach: int = 4  # inpaint: that block reaches 0..core_reach px (uniform, each side alone) from the peak
    core_weight: float = 1.0  # inpaint: loss weight of the pixels only a core mask hides (1: full; < 1 undoes their oversampling)
    core_shape: str = "block"  # inpaint: core masks as "block" (core_reach rectangles) or "cr" (another stamp's CRs moved onto the peak)
    bright_peaks: int = 1  # a bright crop centres on one of the stamp's N brightest local maxima, drawn uniformly (1: its brightest pixel)
    donors_max: int = 9  # inpaint: the inpainting mask ORs 1..donors_max CR masks of other stamps
    seed: int = 0  # seeds init, split, epoch order, crops and augmentation (no global seeds)
    data: str = "simulate"  # "simulate", or a path / glob of .npy pairs, .npz datasets or .fits stamps
    sim_n: int = 256  # simulator: number of stamps (each its own exposure)
    sim_shape: int = 256  # simulator: stamp side (px)
    sim_field: str = "mixed"  # simulator: "extragalactic", "globular", "resolved" or "mixed"
    val_fraction: float = 0.1  # fraction of groups (fields/exposures) held out for validation
    checkpoint_every_steps: int = 0  # also checkpoint every K steps mid-epoch (0: only at epoch ends)
    keep_every: int = 0  # also keep every N-th epoch's checkpoint, for export_epoch / --export (0: latest two + best)
    plot_every: int = 5  # training-curve and example PNGs every N epochs (0: never)
    progress: bool = True  # tqdm progress bar
    kernels: str = "auto"  # "auto": CPU training kernels (training/fast_ops.py) on one CPU device; "native"; "xla"
    compute_dtype: str = "float32"  # "bfloat16": inner layers in bf16 (first block, head, BN statistics, loss, weights f32); for GPUs/TPUs

    def __post_init__(self) -> None:
        _check_choice("kind", self.kind, ("mask", "inpaint"))
        _check_choice("depth", self.depth, (2, 3))
        _check_choice("norm", self.norm, ("batch", "weight"))
        _check_choice("kernels", self.kernels, ("auto", "native", "xla"))
        _check_choice("core_shape", self.core_shape, ("block", "cr"))
        _check_choice("compute_dtype", self.compute_dtype, ("float32", "bfloat16"))
        if self.compute_dtype != "float32" and self.kernels == "native":
            raise ValueError("kernels='native' computes in float32; use kernels='auto' or 'xla' with compute_dtype "
                             f"{self.compute_dtype!r}")
        for f in ("hidden", "batch_size", "crop", "epochs_max", "patience", "sim_n", "sim_shape", "donors_max",
                  "core_reach", "bright_peaks"):
            if getattr(self, f) < 1:
                raise ValueError(f"{f} must be >= 1; got {getattr(self, f)}")
        for f in ("bn_epochs", "max_decays", "checkpoint_every_steps", "keep_every", "plot_every"):
            if getattr(self, f) < 0:
                raise ValueError(f"{f} must be >= 0; got {getattr(self, f)}")
        if self.crop % 4:
            raise ValueError(f"crop must be a multiple of 4 (deepCR's padding grid); got {self.crop}")
        if self.core_reach > self.crop // 2:
            raise ValueError(f"core_reach ({self.core_reach}) must be <= crop // 2 ({self.crop // 2})")
        if self.crop > self.sim_shape and self.data == "simulate":
            raise ValueError(f"crop ({self.crop}) must be <= sim_shape ({self.sim_shape})")
        for f in ("scale", "lr"):
            if not getattr(self, f) > 0:
                raise ValueError(f"{f} must be > 0; got {getattr(self, f)}")
        if not self.clip_norm >= 0:
            raise ValueError(f"clip_norm must be >= 0 (0: no clipping); got {self.clip_norm}")
        for f in ("bright_crops", "core_masks"):
            if not 0 <= getattr(self, f) <= 1:
                raise ValueError(f"{f} must be in [0, 1]; got {getattr(self, f)}")
        if not 0 < self.core_weight <= 1:
            raise ValueError(f"core_weight must be in (0, 1]; got {self.core_weight}")
        if self.core_masks and (self.kind != "inpaint" or not self.bright_crops):
            raise ValueError("core_masks > 0 needs kind='inpaint' and bright_crops > 0 (it hides the bright crops' peaks)")
        if not 0 < self.decay_factor < 1:
            raise ValueError(f"decay_factor must be in (0, 1); got {self.decay_factor}")
        if not 0 <= self.rtol < 1:
            raise ValueError(f"rtol must be in [0, 1); got {self.rtol}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1); got {self.val_fraction}")
        if not self.gain_aug_max >= 1:
            raise ValueError(f"gain_aug_max must be >= 1 (1: no gain augmentation); got {self.gain_aug_max}")
        if not self.saturation > 0:
            raise ValueError(f"saturation must be > 0 (data units); got {self.saturation}")
        if not -1 < self.sky_aug_min <= self.sky_aug_max:
            raise ValueError(
                f"sky_aug_min, sky_aug_max must satisfy -1 < min <= max; got {self.sky_aug_min}, {self.sky_aug_max}"
            )
        if self.kind == "inpaint" and self.batch_size < 2:
            raise ValueError("batch_size must be >= 2 for inpaint (donor masks come from other stamps)")

    @property
    def in_channels(self) -> int:
        """1 for mask networks (image), 2 for inpainting ones (masked image, mask)."""
        return 2 if self.kind == "inpaint" else 1

    @property
    def head(self) -> str:
        """Output head of the exported network."""
        return "identity" if self.kind == "inpaint" else "sigmoid"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of every field."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """Stable JSON (sorted keys)."""
        return json.dumps(self.to_dict(), sort_keys=True, indent=1)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        return _replace(cls(), dict(d))

    def replace(self, **overrides: Any) -> TrainConfig:
        """A copy with ``overrides`` applied (types checked)."""
        return _replace(self, overrides)


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_TYPES = typing.get_type_hints(TrainConfig)


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def _coerce(name: str, value: Any) -> Any:
    """``value`` as the type of field ``name``; strings are parsed (``key=value`` overrides)."""
    typ = _TYPES[name]
    if isinstance(value, str) and typ is not str:
        text = value.strip()
        try:
            if typ is bool:
                low = text.lower()
                if low not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(text)
                return low in ("true", "1", "yes")
            return typ(float(text)) if typ is int and float(text).is_integer() else typ(text)
        except ValueError:
            raise ValueError(f"config field {name} must be {typ.__name__}; got {value!r}") from None
    if typ is bool:
        if not isinstance(value, bool):
            raise ValueError(f"config field {name} must be bool; got {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ValueError(f"config field {name} must be int; got {value!r}")
        return int(value)
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"config field {name} must be float; got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"config field {name} must be str; got {value!r}")  # noqa: TRY004
    return value


def _replace(base: TrainConfig, overrides: Mapping[str, Any]) -> TrainConfig:
    unknown = sorted(set(overrides) - set(_FIELDS))
    if unknown:
        raise ValueError(
            f"unknown config field(s) {', '.join(unknown)}; valid fields: {', '.join(sorted(_FIELDS))}"
        )
    return dataclasses.replace(base, **{k: _coerce(k, v) for k, v in overrides.items()})


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["lr=0.001", "epochs_max=5"]`` → ``{"lr": 0.001, "epochs_max": 5}``, types checked."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"override must be key=value; got {item!r}")
        if key not in _FIELDS:
            raise ValueError(f"unknown config field {key!r} in {item!r}; valid fields: {', '.join(sorted(_FIELDS))}")
        out[key] = _coerce(key, value)
    return out


# --------------------------------------------------------------------------
# presets: the paper's recipes (Appendix A) and their smoke variants

_PRESETS: dict[str, dict[str, Any]] = {
    "mask_2_4": {"kind": "mask", "depth": 2, "hidden": 4, "lr": 0.005, "bn_epochs": 20},
    "mask_2_32": {"kind": "mask", "depth": 2, "hidden": 32, "lr": 0.005, "bn_epochs": 20},
    # inpainting networks see e-/100, as the zoo's inpainting models do
    "inpaint_2_32": {"kind": "inpaint", "depth": 2, "hidden": 32, "lr": 0.01, "bn_epochs": 40, "scale": 100.0},
    "inpaint_3_32": {"kind": "inpaint", "depth": 3, "hidden": 32, "lr": 0.01, "bn_epochs": 40, "scale": 100.0},
    # fine-tuning the zoo's ACS-WFC: lr / 10, BatchNorm frozen from the start (its running statistics kept)
    "finetune": {"kind": "mask", "depth": 2, "hidden": 32, "lr": 0.0005, "bn_epochs": 0, "init": "ACS-WFC", "epochs_max": 50},
}

#: What a smoke variant changes: tiny network, data and epochs (seconds on a CPU).
_SMOKE: dict[str, Any] = {
    "hidden": 4, "batch_size": 4, "crop": 32, "epochs_max": 3, "bn_epochs": 1, "sim_n": 24, "sim_shape": 32,
    "val_fraction": 0.25, "plot_every": 0, "progress": False, "patience": 1,
}
_SMOKE_PER_PRESET: dict[str, dict[str, Any]] = {
    "finetune": {"hidden": 4, "init": "ACS-WFC-F606W-2-4", "scale": 100.0, "bn_epochs": 0},
}

#: Names accepted by :func:`get_config` (each also as ``NAME.smoke``).
CONFIG_NAMES: tuple[str, ...] = tuple(_PRESETS)


def get_config(name: str, smoke: bool = False, **overrides: Any) -> TrainConfig:
    """A named configuration, optionally its smoke variant, with overrides.

    Parameters
    ----------
    name : str
        One of :data:`CONFIG_NAMES`, optionally suffixed ``.smoke``.
    smoke : bool
        Tiny variant (hidden 4, 32×32 crops, a few epochs) for tests.
    **overrides
        Field values (strings are parsed as by :func:`parse_overrides`).

    Returns
    -------
    TrainConfig
    """
    if not isinstance(name, str):
        raise TypeError(f"config name must be a str; got {type(name).__name__}")
    base_name = name
    if name.endswith(".smoke"):
        base_name, smoke = name[: -len(".smoke")], True
    if base_name not in _PRESETS:
        raise ValueError(
            f"unknown config {name!r}; valid names: {', '.join(CONFIG_NAMES)} (each also as NAME.smoke)"
        )
    values: dict[str, Any] = dict(_PRESETS[base_name])
    if smoke:
        values.update(_SMOKE)
        values.update(_SMOKE_PER_PRESET.get(base_name, {}))
    values["name"] = base_name + (".smoke" if smoke else "")
    values.update(overrides)
    return _replace(TrainConfig(), values)


def config_diff(a: TrainConfig, b: TrainConfig, ignore: Iterable[str] = ()) -> dict[str, tuple[Any, Any]]:
    """Fields whose values differ: ``{field: (a_value, b_value)}``, skipping ``ignore``."""
    skip = set(ignore)
    da, db = a.to_dict(), b.to_dict()
    return {k: (da[k], db[k]) for k in da if k not in skip and da[k] != db[k]}
