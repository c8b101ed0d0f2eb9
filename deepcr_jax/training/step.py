"""The pure, jitted training and evaluation steps.

``make_train_step(config, mesh)`` returns ``jax.jit(step, donate_argnums=0)``
with ``step(state, batch, key) -> (state, metrics)``; the BatchNorm phase is
fixed per compiled function (``bn_frozen``). ``batch`` is a dict of global
arrays: ``image`` (B, ny, nx) float32 in the data's units (e-), ``cr`` and
``ignore`` (B, ny, nx) float32 0/1 (1 = cosmic ray / ignored), ``sky`` (B,)
float32, and optionally ``core`` (B, ny, nx) float32 0/1: pixels added to
the inpainting mask (``TrainConfig.core_masks``). With a mesh, the batch is sharded over its ``"data"`` axis and the
state replicated; BatchNorm statistics and the loss are over the global batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from deepcr_jax.hst import SATURATION_GROW
from deepcr_jax.model import normalize
from deepcr_jax.training import augment, losses
from deepcr_jax.training.config import TrainConfig
from deepcr_jax.training.state import make_module, make_optimizer

__all__ = ["make_eval_step", "make_train_step", "network_input", "preprocess"]


def preprocess(image: jax.Array, scale: float, standardize: bool) -> jax.Array:
    """The model's preprocessing (:func:`deepcr_jax.model.normalize`, as in ``predict``).

    ``image`` (B, ny, nx) in the data's units → ``image / scale``, then per
    image ``(x - mean) / std`` if ``standardize``. Returns (B, ny, nx).
    """
    return normalize(image, scale, standardize)[0]


def network_input(config: TrainConfig, batch: dict[str, jax.Array], key: jax.Array | None,
                  train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Augment (``train``), preprocess, and build the NHWC network input.

    Returns ``(x, labels)``: ``x`` (B, ny, nx, C); ``labels`` holds ``cr``,
    ``ignore`` and, for inpainting, ``target`` (preprocessed image),
    ``inpaint_mask`` and, with core masks and ``core_weight < 1``, ``weight``
    (the loss weight: ``core_weight`` where only the core mask hides a
    pixel, else 1). ``key`` may be None only for mask networks with
    ``train=False`` (inpainting masks always need one).
    """
    image, cr, ignore = batch["image"], batch["cr"], batch["ignore"]
    extra = (batch["core"],) if train and "core" in batch else ()
    if key is not None:
        k_sky, k_flip, k_donor = jax.random.split(key, 3)
    if train:
        # the gain's own key (fold_in) leaves the other draws as in runs without it; gain 1 is a no-op
        image, sky, ignore = augment.gain_augment(jax.random.fold_in(key, 3), image, batch["sky"], ignore,
                                                  config.gain_aug_max, config.saturation, SATURATION_GROW)
        image = augment.sky_augment(k_sky, image, sky, config.sky_aug_min, config.sky_aug_max)
        if config.flips:
            image, cr, ignore, *extra = augment.dihedral(k_flip, image, cr, ignore, *extra)
    x = preprocess(image, config.scale, config.standardize)
    labels = {"cr": cr, "ignore": ignore}
    if config.kind == "mask":
        return x[..., None], labels
    m = augment.donor_masks(k_donor, cr, config.donors_max)
    if extra:
        if config.core_weight < 1:  # pixels only the core mask hides are oversampled against CR masks
            labels["weight"] = 1 - (1 - config.core_weight) * extra[0] * (1 - m)
        m = jnp.maximum(m, extra[0])
    labels.update(target=x, inpaint_mask=m)
    return jnp.stack([x * (1 - m), m], axis=-1), labels


def _loss_terms(config: TrainConfig, out: jax.Array, labels: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    if config.kind == "mask":
        return losses.bce_terms(out, labels["cr"], labels["ignore"])
    return losses.inpaint_terms(out, labels["target"], labels["inpaint_mask"], labels["cr"], labels["ignore"],
                                labels.get("weight"))


def _shardings(mesh: Mesh | None):
    if mesh is None:
        return None, None
    return NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))


def make_train_step(config: TrainConfig, mesh: Mesh | None = None, *, bn_frozen: bool = False) -> Callable:
    """The jitted training step for ``config`` (one BN phase).

    Parameters
    ----------
    config : TrainConfig
    mesh : jax.sharding.Mesh, optional
        Devices with a ``"data"`` axis: the batch is sharded over it, the
        state replicated (pass the state through :func:`~deepcr_jax.training.state.replicate`).
    bn_frozen : bool
        False: BatchNorm phase 1 (batch statistics; running statistics
        updated, torch momentum 0.005). True: phase 2 (running statistics in
        forward and backward, ``batch_stats`` unchanged). Ignored for
        weight-norm networks.

    Returns
    -------
    callable
        ``step(state, batch, key) -> (state, metrics)``, the state donated;
        ``metrics``: ``loss`` (mean over the global batch's counted pixels),
        ``count`` (those pixels), ``lr``, ``grad_norm`` (global L2 norm of
        the gradient, before any clipping).
    """
    module = make_module(config, mesh=mesh)
    tx = make_optimizer(config)
    bn_train = config.norm == "batch" and not bn_frozen

    def step(state: dict[str, Any], batch: dict[str, jax.Array], key: jax.Array):
        x, labels = network_input(config, batch, key, train=True)

        def loss_fn(params):
            variables = {"params": params}
            if config.norm == "batch":
                variables["batch_stats"] = state["batch_stats"]
            if bn_train:
                out, updated = module.apply(variables, x, train=True, mutable=["batch_stats"])
                stats = updated["batch_stats"]
            else:
                out, stats = module.apply(variables, x, train=False), state["batch_stats"]
            total, count = _loss_terms(config, out[..., 0], labels)
            return total / jnp.maximum(count, 1.0), (stats, count)

        (loss, (stats, count)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt = tx.update(grads, state["opt"], state["params"])
        new_state = dict(state, params=optax.apply_updates(state["params"], updates), batch_stats=stats,
                         opt=opt, step=state["step"] + 1)
        metrics = {"loss": loss, "count": count, "lr": state["opt"].hyperparams["learning_rate"],
                   "grad_norm": optax.global_norm(grads)}
        return new_state, metrics

    repl, data = _shardings(mesh)
    if mesh is None:
        return jax.jit(step, donate_argnums=0)
    return jax.jit(step, donate_argnums=0, in_shardings=(repl, data, repl), out_shardings=(repl, repl))


def make_eval_step(config: TrainConfig, mesh: Mesh | None = None) -> Callable:
    """The jitted validation step: eval-mode network (running BN statistics), no augmentation.

    Returns ``eval_step(state, batch, key) -> dict`` with ``loss_sum`` and
    ``count`` (the loss's numerator and denominator over the batch, so sums
    over batches give the exact validation mean) and ``out`` (B, ny, nx):
    CR probabilities for mask networks, the prediction under the
    inpainting mask (network units) for inpainting ones, plus ``inpaint_mask``
    (B, ny, nx). ``key`` draws the inpainting masks (fixed per validation
    batch by the loop); unused by mask networks. An inpainting batch with a
    ``core`` block (``data.eval_batches(core_reach=...)``) also gives
    ``core_sum`` and ``core_count``: the loss's terms with that block alone
    hidden.
    """
    module = make_module(config, mesh=mesh)

    def eval_step(state: dict[str, Any], batch: dict[str, jax.Array], key: jax.Array):
        x, labels = network_input(config, batch, key, train=False)
        variables = {"params": state["params"]}
        if config.norm == "batch":
            variables["batch_stats"] = state["batch_stats"]
        out = module.apply(variables, x, train=False)[..., 0]
        total, count = _loss_terms(config, out, labels)
        res = {"loss_sum": total, "count": count}
        if config.kind == "mask":
            res["out"] = jax.nn.sigmoid(out)
        else:
            res["out"] = out
            res["inpaint_mask"] = labels["inpaint_mask"]
        if config.kind == "inpaint" and "core" in batch:  # the core block hidden alone
            core, target = batch["core"], labels["target"]
            hidden = module.apply(variables, jnp.stack([target * (1 - core), core], axis=-1), train=False)
            res["core_sum"], res["core_count"] = losses.inpaint_terms(hidden[..., 0], target, core, batch["cr"],
                                                                      batch["ignore"])
        return res

    repl, data = _shardings(mesh)
    if mesh is None:
        return jax.jit(eval_step)
    return jax.jit(eval_step, in_shardings=(repl, data, repl))
