"""Per-process state of :mod:`deepcr_jax.batch` (a Dask worker, or this process when serial), and its report.

One Cleaner per settings per process, built on first use and counted
(:func:`worker_stats`), so that a test (or a user) can check that every
worker compiled its model once; :func:`format_table` summarises a run.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

__all__ = ["count_file", "format_table", "worker_cleaner", "worker_stats"]


_lock = threading.Lock()
_cleaners: dict[tuple, Any] = {}
_stats = {"cleaners": 0, "files": 0}


def worker_cleaner(model: str, inpaint: str | None, tile: int | None, batch: int | None, precision: str = "exact"):
    """The Cleaner for these settings in this process, built on first use and counted."""
    from deepcr_jax.cleaner import Cleaner

    key = (model, inpaint, tile, batch, precision)
    with _lock:
        cleaner = _cleaners.get(key)
        if cleaner is None:
            cleaner = _cleaners[key] = Cleaner(model, inpaint=inpaint, tile=tile, batch=batch, precision=precision)
            _stats["cleaners"] += 1
        return cleaner


def count_file() -> None:
    """Count one file handled by this process."""
    with _lock:
        _stats["files"] += 1


def worker_stats() -> dict[str, int]:
    """This process's counts: Cleaners built, network compilations, files handled; and its pid.

    Run it on every worker with ``client.run(deepcr_jax.batch.worker_stats)``.
    """
    with _lock:
        compilations = sum(c.compilations for c in _cleaners.values())
        return {"pid": os.getpid(), "compilations": compilations, **_stats}


def format_table(results: Sequence[Any], seconds: float | None = None) -> str:
    """A summary table: per worker, files cleaned/skipped/failed, busy seconds, files/min; then failures.

    ``seconds`` is the run's wall time (for the total row's files/min).
    """
    rows: dict[str, list[float]] = {}
    for r in results:
        row = rows.setdefault(r.worker or "-", [0, 0, 0, 0.0, 0])
        row[("cleaned", "skipped", "failed").index(r.status)] += 1
        row[3] += r.seconds
        row[4] += r.n_pixels
    width = max([len("worker")] + [len(w) for w in rows])
    lines = [f"{'worker':<{width}}  cleaned  skipped  failed   busy s  files/min  Mpix/s"]

    def fmt(name: str, row, wall: float | None) -> str:
        t = row[3] if wall is None else wall
        rate = 60 * row[0] / t if t > 0 else 0.0
        mpix = row[4] / t / 1e6 if t > 0 else 0.0
        return (
            f"{name:<{width}}  {row[0]:>7d}  {row[1]:>7d}  {row[2]:>6d}  {row[3]:>7.1f}  "
            f"{rate:>9.1f}  {mpix:>6.2f}"
        )

    for name in sorted(rows):
        lines.append(fmt(name, rows[name], None))
    total = [sum(r[k] for r in rows.values()) for k in range(5)]
    lines.append(fmt("all", total, seconds))
    lines += [f"failed: {r.path}: {r.error}" for r in results if r.status == "failed"]
    return "\n".join(lines)
