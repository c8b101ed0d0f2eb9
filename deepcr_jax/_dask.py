"""The Dask side of :mod:`deepcr_jax.batch` (imported only with a client): plugin, runner, cluster.

:class:`CleanerPlugin` runs once in every worker process (and again in a
worker that replaces a dead one): it pins the process to its share of the
cores when :func:`deepcr_jax.batch.local_cluster` asked for it, before JAX
starts its thread pool, and builds the run's Cleaner into the worker-local
cache that every task of the run then uses.
"""

from __future__ import annotations

import os
import time

from distributed.diagnostics.plugin import WorkerPlugin

__all__ = ["CleanerPlugin", "local_cluster", "run_dask"]


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
        batch.worker_cleaner(*self.key)


def run_dask(client, todo, paths, path_outs, settings, retries, finish) -> None:
    """Submit one task per file index in ``todo``; ``finish(i, FileResult)`` as each completes."""
    from distributed import as_completed

    from deepcr_jax.batch import FILE_RESOURCE, FileResult, _task

    if settings.model != "auto":
        client.register_plugin(CleanerPlugin(settings.cleaner_key), name="deepcr-jax-cleaner")
    workers = client.scheduler_info().get("workers", {}).values()
    limit = (
        {FILE_RESOURCE: 1}
        if workers and all(FILE_RESOURCE in w.get("resources", {}) for w in workers)
        else None
    )
    futures = {}
    for i in todo:
        future = client.submit(
            _task,
            paths[i],
            path_outs[i],
            settings,
            pure=False,
            retries=retries,
            resources=limit,
            key=f"deepcr-jax-clean-{i}-{os.getpid()}-{time.monotonic_ns()}",
        )
        futures[future] = i
    try:
        for future in as_completed(futures):
            i = futures[future]
            try:
                result = FileResult(**future.result())
            except Exception as err:  # noqa: BLE001 - retries spent, or the worker died too often
                result = FileResult.failure(paths[i], path_outs[i], settings.model, err)
            future.release()
            finish(i, result)
    except BaseException:
        client.cancel(list(futures))
        raise


def local_cluster(
    n_workers: int, *, threads_per_worker: int | None = None, dashboard_address: str | None = ":8787"
):
    """A ``distributed.LocalCluster`` of ``n_workers`` processes for :func:`~deepcr_jax.batch.clean_files`.

    Each worker has ``threads_per_worker`` threads (default: its share of the
    cores, ``max(1, cores // n_workers)``) and one :data:`FILE_RESOURCE`
    (one file in memory at a time); :class:`CleanerPlugin` pins each
    worker's XLA threads to its share of the cores.
    """
    from distributed import LocalCluster

    from deepcr_jax.batch import FILE_RESOURCE

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // n_workers) if threads_per_worker is None else threads_per_worker
    return LocalCluster(
        n_workers=n_workers,
        threads_per_worker=threads,
        processes=True,
        resources={FILE_RESOURCE: 1},
        dashboard_address=dashboard_address,
        env={"DEEPCR_JAX_CORES_PER_WORKER": str(threads)},
    )
