"""The paper's schedule: plateau learning-rate decay, early stop, BatchNorm phases.

Learning rate (Zhang & Bloom 2020, Appendix A): Adam; the learning rate is
multiplied by ``factor`` (0.1) whenever the validation loss has not improved
by ``rtol`` (0.1 %, relative) for ``patience`` (4) epochs; training stops once
the loss plateaus again after ``max_decays`` (2) decays. :class:`Plateau` is
that state machine, on the host, stepped once per epoch with the validation
loss; the loop writes its ``lr`` into the optimizer state
(``optax.inject_hyperparams(optax.adam)``, see :func:`set_learning_rate`).

Exact mapping to torch and optax
--------------------------------
An epoch *improves* when ``loss < best * (1 - rtol)`` (``best`` starts at +inf,
so the first epoch always improves). Otherwise ``num_bad += 1``; when
``num_bad > patience`` the rate decays and ``num_bad`` restarts at 0. This is
``torch.optim.lr_scheduler.ReduceLROnPlateau(mode="min", factor=0.1,
patience=4, threshold=1e-3, threshold_mode="rel", cooldown=0)``: a decay on
the 5th consecutive epoch without improvement. ``optax.contrib.reduce_on_plateau``
counts the same way (improvement iff ``value < (1 - rtol) * best``) but decays
when ``plateau_count == patience``, so the equivalent there is
``reduce_on_plateau(factor=0.1, patience=5, rtol=1e-3, cooldown=0)``.
Stopping: when a decay would be the ``max_decays + 1``-th, training stops
instead (the tests check all three against a scripted loss sequence).

BatchNorm phases
----------------
Phase 1 (epochs ``0 .. bn_epochs - 1``): BN in train mode, normalising with
batch statistics and updating the running statistics with torch momentum
0.005 (flax momentum 0.995). Phase 2: BN frozen, the running statistics used
in the forward *and* backward pass, never updated (:func:`bn_phase`). Weight-
norm networks have one phase.

The plateau machine runs in phase 2 only; phase 1 keeps the initial learning
rate. The paper does not say how the two rules interact; with validation in
eval mode the phase-1 loss follows running statistics that are still
converging (momentum 0.005 needs ~1000 steps), and in a first trial (mask
2-32, 43 steps per epoch) it "plateaued" twice inside the 20 phase-1 epochs,
which would have decayed the rate and stopped training before the
BatchNorm freeze that the recipe is built around.

Differences from deepCR 0.3.1's own trainer (``deepCR.training.train``)
-----------------------------------------------------------------------
* its ``ReduceLROnPlateau`` uses ``threshold=0.005`` (0.5 %) and
  ``cooldown=2``, not the paper's 0.1 % and no cooldown;
* phase 2 restarts Adam (fresh moments) at ``lr / 2.5``; here the optimizer
  state and the plateau machine simply continue;
* it runs a fixed number of epochs (``epoch`` for phase 1 + ``epoch_phase2``)
  rather than stopping after the second decay;
* its phase-1 validation runs in train mode (batch statistics); here
  validation always runs in eval mode (running statistics), i.e. as the
  exported model will run.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["Plateau", "bn_phase", "get_learning_rate", "set_learning_rate"]


@dataclasses.dataclass(frozen=True)
class Plateau:
    """Host-side plateau schedule state (JSON-able, stored in checkpoints).

    Attributes
    ----------
    lr : float
        Current learning rate.
    best : float
        Best validation loss so far (+inf before the first epoch).
    best_epoch : int
        Epoch of ``best`` (-1 before the first epoch).
    num_bad : int
        Consecutive epochs without improvement since the last improvement or decay.
    decays : int
        Decays so far.
    stop : bool
        True once training should end.
    """

    lr: float
    best: float = math.inf
    best_epoch: int = -1
    num_bad: int = 0
    decays: int = 0
    stop: bool = False

    def update(self, loss: float, epoch: int, *, patience: int, rtol: float, factor: float,
               max_decays: int) -> Plateau:
        """The state after an epoch with validation loss ``loss`` (see the module docstring)."""
        loss = float(loss)
        best, best_epoch, num_bad = self.best, self.best_epoch, self.num_bad
        if loss < best * (1.0 - rtol):
            best, best_epoch, num_bad = loss, epoch, 0
        else:
            num_bad += 1
        lr, decays, stop = self.lr, self.decays, self.stop
        if num_bad > patience:
            if decays >= max_decays:
                stop = True
            else:
                lr, decays = lr * factor, decays + 1
            num_bad = 0
        return Plateau(lr=lr, best=best, best_epoch=best_epoch, num_bad=num_bad, decays=decays, stop=stop)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (``best`` = +inf is stored as None)."""
        d = dataclasses.asdict(self)
        d["best"] = None if math.isinf(self.best) else self.best
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plateau:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        d["best"] = math.inf if d["best"] is None else float(d["best"])
        return cls(**d)


def bn_phase(epoch: int, bn_epochs: int, norm: str) -> int:
    """1 (BN trains: batch statistics, running stats updated) or 2 (BN frozen).

    Epochs count from 0; networks without BatchNorm are always in phase 2
    (nothing to freeze, one compiled step).
    """
    if norm != "batch":
        return 2
    return 1 if epoch < bn_epochs else 2


def _hyperparams(opt_state):
    hp = getattr(opt_state, "hyperparams", None)
    if hp is None or "learning_rate" not in hp:
        raise ValueError("optimizer state has no injected learning_rate (expected optax.inject_hyperparams)")
    return hp


def get_learning_rate(opt_state) -> float:
    """The learning rate stored in an ``inject_hyperparams`` optimizer state."""
    return float(_hyperparams(opt_state)["learning_rate"])


def set_learning_rate(opt_state, lr: float):
    """A copy of ``opt_state`` whose injected learning rate is ``lr`` (same sharding, dtype)."""
    hp = dict(_hyperparams(opt_state))
    old = hp["learning_rate"]
    new = jnp.asarray(lr, dtype=old.dtype)
    if isinstance(old, jax.Array):
        new = jax.device_put(new, old.sharding)
    hp["learning_rate"] = new
    return opt_state._replace(hyperparams=hp)
