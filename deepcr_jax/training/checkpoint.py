"""Checkpoints through one small Orbax ``CheckpointManager`` wrapper.

A checkpoint holds two items: ``state`` (the train-state pytree: params,
batch_stats, optimizer state, step, PRNG key data) and ``host`` (JSON: the
plateau schedule, the data position ``(epoch, batch)``, the running epoch
sums, the config), so that a resumed run continues exactly. Orbax step =
global training step. Epoch-end checkpoints carry the validation loss as
their metric; mid-epoch ones (every ``K`` steps) carry none.

Kept: the latest two checkpoints and the best epoch-end one by validation
loss, and, with ``keep_every_steps``, every checkpoint whose step is a
multiple of it (``preservation_policy``: ``LatestN`` ∪ ``BestN`` ∪
``EveryNSteps``, not the deprecated ``max_to_keep``). Saving is synchronous: a checkpoint directory exists only
once complete (Orbax writes to a temporary directory and renames it), so a
kill at any moment leaves the previous checkpoints intact.
"""

from __future__ import annotations

import math
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

__all__ = ["Checkpoints"]


def _val_loss(metrics: Any) -> float:
    return float(metrics["val_loss"])


class Checkpoints:
    """Save / restore train states in ``directory`` (created if missing).

    Parameters
    ----------
    directory : str or path-like
    keep_latest : int
        Most recent checkpoints kept besides the best one.
    keep_every_steps : int
        Also keep every checkpoint whose step is a multiple of this (0: none;
        the training loop passes a multiple of its steps per epoch, so these
        are epoch ends).
    """

    def __init__(self, directory: str | os.PathLike, *, keep_latest: int = 2, keep_every_steps: int = 0):
        self.directory = os.path.abspath(os.fspath(directory))
        policies = [
            cm.LatestN(n=keep_latest),
            cm.BestN(get_metric_fn=_val_loss, reverse=True, n=1, keep_checkpoints_without_metrics=False),
        ]
        if keep_every_steps:
            policies.append(cm.EveryNSteps(interval_steps=keep_every_steps))
        policy = cm.AnyPreservationPolicy(policies)
        options = ocp.CheckpointManagerOptions(
            best_fn=_val_loss, best_mode="min", preservation_policy=policy,
            enable_async_checkpointing=False, create=True,
        )
        self._mngr = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "host"))

    def save(self, step: int, state: dict[str, Any], host: dict[str, Any], val_loss: float | None = None) -> None:
        """Write checkpoint ``step`` (blocking); ``val_loss`` only for epoch-end checkpoints."""
        metrics = None
        if val_loss is not None:
            metrics = {"val_loss": float(val_loss) if math.isfinite(val_loss) else 1e30}
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), host=ocp.args.JsonSave(host))
        self._mngr.save(step, args=args, metrics=metrics, force=True)
        self._mngr.wait_until_finished()

    def all_steps(self) -> list[int]:
        """Steps of the checkpoints on disk, ascending."""
        return sorted(self._mngr.all_steps())

    def latest_step(self) -> int | None:
        """Newest checkpoint's step, or None."""
        return self._mngr.latest_step()

    def best_step(self) -> int | None:
        """Step of the epoch-end checkpoint with the lowest validation loss, or None."""
        steps = [s for s in self._mngr.all_steps() if self._mngr.metrics(s) is not None]
        return self._mngr.best_step() if steps else None

    def restore(self, step: int, target: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(state, host)`` of checkpoint ``step``; ``target`` gives the state's structure and shardings."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract), host=ocp.args.JsonRestore())
        out = self._mngr.restore(step, args=args)
        return out["state"], out["host"]

    def close(self) -> None:
        """Finish pending work and release the manager."""
        self._mngr.close()
