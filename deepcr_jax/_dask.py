"""The Dask side of :mod:`deepcr_jax.batch` (imported only with a client): the worker plugin.

:class:`CleanerPlugin` runs once in every worker process (and again in a
worker that replaces a dead one): it pins the process to its share of the
cores when :func:`deepcr_jax.batch.local_cluster` asked for it, before JAX
starts its thread pool, and builds the run's Cleaner into the worker-local
cache that every task of the run then uses.
"""

from __future__ import annotations

import os

from distributed.diagnostics.plugin import WorkerPlugin

__all__ = ["CleanerPlugin"]


def _pin(worker_name) -> None:
    """Pin this process to worker ``worker_name``'s share of the cores (``DEEPCR_JAX_CORES_PER_WORKER``)."""
    per = os.environ.get("DEEPCR_JAX_CORES_PER_WORKER")
    if not per or not hasattr(os, "sched_setaffinity"):
        return
    try:
        k, index = int(per), int(worker_name)
    except (TypeError, ValueError):
        return  # a worker not named 0..n-1 by LocalCluster: leave it to the OS
    cores = sorted(os.sched_getaffinity(0))
    slots = len(cores) // k if k > 0 else 0
    if slots >= 1:
        slot = index % slots
        os.sched_setaffinity(0, cores[slot * k : (slot + 1) * k])


class CleanerPlugin(WorkerPlugin):
    """Build the Cleaner for ``key`` = (model, inpaint, tile, batch) once per worker process."""

    idempotent = True

    def __init__(self, key: tuple) -> None:
        self.key = tuple(key)

    def setup(self, worker) -> None:
        from deepcr_jax import batch

        _pin(worker.name)
        batch._worker_cleaner(*self.key)
