"""The train state: a plain pytree, created from a config and a PRNG key.

``state = {"params", "batch_stats", "opt", "step", "rng"}``: flax parameters,
BatchNorm running statistics (``{}`` for weight-norm networks), the
``optax.inject_hyperparams(optax.adam)`` state (learning rate inside),
the global step (int32 scalar) and the raw data of the base PRNG key
(uint32), from which every step's key is derived (``fold_in(key, step)``).
Host-side state (schedule, data position) lives beside it in the checkpoint.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from deepcr_jax._compile import run_once
from deepcr_jax.nets import UNet
from deepcr_jax.training.config import TrainConfig
from deepcr_jax.training.fast_ops import make_ops

__all__ = ["create_state", "make_module", "make_optimizer", "replicate", "step_key"]


def make_module(config: TrainConfig, *, logits: bool = True, mesh: Mesh | None = None) -> UNet:
    """The UNet being trained.

    ``logits=True`` (training): mask networks end without the sigmoid, so
    the loss works on log-odds; the parameters are the same as the exported
    network's (the sigmoid head has none). ``config.kernels`` and ``mesh``
    choose the implementation of the heavy operations
    (:func:`deepcr_jax.training.fast_ops.make_ops`); the parameters are the
    same either way. ``config.compute_dtype`` "bfloat16" runs the inner
    layers in bfloat16 (:class:`deepcr_jax.nets.UNet`'s ``compute_dtype``;
    parameters, BatchNorm statistics, first block, head and loss stay
    float32), with the plain flax graph.
    """
    head = "identity" if (logits or config.kind == "inpaint") else "sigmoid"
    if config.compute_dtype == "float32":
        return UNet(depth=config.depth, hidden=config.hidden, norm=config.norm, head=head,
                    ops=make_ops(config.kernels, mesh))
    # the CPU training kernels are float32-only: the plain flax graph
    return UNet(depth=config.depth, hidden=config.hidden, norm=config.norm, head=head,
                compute_dtype=jnp.dtype(config.compute_dtype))


def _clipped_adam(learning_rate, clip_norm: float) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(clip_norm), optax.adam(learning_rate))


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Adam with the learning rate injected (set per epoch by the schedule).

    With ``config.clip_norm > 0`` each step's gradient is first scaled down
    to at most that global L2 norm (``optax.clip_by_global_norm``); the
    learning rate stays the one injected hyperparameter either way.
    """
    if config.clip_norm > 0:
        return optax.inject_hyperparams(_clipped_adam, static_args=("clip_norm",))(
            learning_rate=config.lr, clip_norm=config.clip_norm)
    return optax.inject_hyperparams(optax.adam)(learning_rate=config.lr)


def _check_same_tree(init: Any, loaded: Any, source: str) -> None:
    a = {jax.tree_util.keystr(p): tuple(getattr(v, "shape", np.shape(v))) for p, v in jax.tree_util.tree_leaves_with_path(init)}
    b = {jax.tree_util.keystr(p): tuple(getattr(v, "shape", np.shape(v))) for p, v in jax.tree_util.tree_leaves_with_path(loaded)}
    problems = [f"missing {k}" for k in sorted(set(a) - set(b))]
    problems += [f"unexpected {k}" for k in sorted(set(b) - set(a))]
    problems += [f"{k} has shape {b[k]}; expected {a[k]}" for k in sorted(set(a) & set(b)) if a[k] != b[k]]
    if problems:
        raise ValueError(f"init model {source!r} does not match the configured network:\n  " + "\n  ".join(problems))


def create_state(config: TrainConfig, key: jax.Array) -> dict[str, Any]:
    """A fresh train state for ``config``.

    Parameters
    ----------
    config : TrainConfig
    key : PRNG key
        Initialises the weights (unless ``config.init`` names a model to
        start from) and is the base of every step's augmentation key.

    Returns
    -------
    dict
        ``{"params", "batch_stats", "opt", "step", "rng"}`` on the default device.
    """
    module = make_module(config)
    tx = make_optimizer(config)
    side = 4 * 2 ** config.depth
    x = jnp.zeros((1, side, side, config.in_channels), jnp.float32)
    loaded = None
    if config.init:
        from deepcr_jax.training.export import load_init_variables

        loaded = load_init_variables(config)

    def build(key, loaded):
        # one compilation for everything; every leaf its own fresh buffer (the step donates the state)
        k_init, _ = jax.random.split(key)
        variables = module.init(k_init, x, train=False)
        params, stats = variables["params"], variables.get("batch_stats", {})
        if loaded is not None:
            params = jax.tree.map(jnp.asarray, loaded["params"])
            stats = jax.tree.map(jnp.asarray, loaded.get("batch_stats", {}))
        return {"params": params, "batch_stats": stats, "opt": tx.init(params),
                "step": jnp.zeros((), jnp.int32), "rng": jax.random.key_data(key)}

    if loaded is not None:
        shapes = jax.eval_shape(lambda k: module.init(k, x, train=False), key)
        _check_same_tree(shapes["params"], loaded["params"], config.init)
        _check_same_tree(shapes.get("batch_stats", {}), loaded.get("batch_stats", {}), config.init)
    return run_once(build, key, loaded)


def step_key(state: dict[str, Any], step: int) -> jax.Array:
    """The PRNG key of global step ``step``: ``fold_in(key, step)`` (host-side)."""
    return jax.random.fold_in(jax.random.wrap_key_data(np.asarray(state["rng"])), step)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every leaf as a global array fully replicated over ``mesh`` (works on many processes).

    Each process must hold the same values (true for a state built from the
    same config and seed, or restored from one checkpoint).
    """
    sharding = NamedSharding(mesh, PartitionSpec())

    def put(x):
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    return jax.tree.map(put, tree)
