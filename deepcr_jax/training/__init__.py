"""Training deepCR networks with Optax and Orbax (``pip install deepcr-jax[train]``).

Modules, one job each: :mod:`.config` (frozen configs, the paper's presets),
:mod:`.data` (sources, split by group, epoch iterator, prefetch),
:mod:`.augment` (sky level, donor inpainting masks, symmetries: in jit),
:mod:`.losses` (BCE with ignore, masked MSE), :mod:`.schedule` (plateau,
BatchNorm phases), :mod:`.state` (plain-pytree train state), :mod:`.step`
(jitted train/eval steps), :mod:`.checkpoint` (Orbax), :mod:`.export` (to the
zoo's ``.npz``), :mod:`.loop` (:func:`train_and_evaluate`), :mod:`.cli`
(``python -m train``).

Submodules are imported lazily, so ``import deepcr_jax.training.config``
does not pull in Orbax.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["cli_main", "get_config", "train_and_evaluate"]

_LAZY = {"cli_main": "cli", "get_config": "config", "train_and_evaluate": "loop"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"deepcr_jax.training.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'deepcr_jax.training' has no attribute {name!r}")
