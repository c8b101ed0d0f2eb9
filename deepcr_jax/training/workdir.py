"""A training run's directory: its lock, its checks against the config, its ``metrics.jsonl``.

Layout: ``config.json`` (the run's config), ``checkpoints/`` (Orbax),
``metrics.jsonl`` (one JSON line per completed epoch), ``plots/``,
``best.npz`` (written when the run ends: it marks a finished run) and
``.lock``. One process per ``jax.process_index()`` may train in a workdir
at a time: :func:`locked` holds an advisory ``flock`` on ``.lock`` (``.lock-pN``
for process N > 0), which the kernel drops when the process dies, so a
killed run leaves no stale lock and a second copy of a running command
gets an error instead of writing into the same checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np
from jax.experimental import multihost_utils

from deepcr_jax.training.config import TrainConfig, config_diff

try:
    import fcntl
except ImportError:  # not POSIX: no lock
    fcntl = None

__all__ = ["OUTPUTS", "RESUME_SAFE_FIELDS", "check_same_data", "locked", "prepare", "read_history"]

log = logging.getLogger(__name__)

#: Config fields that may change when a run is resumed (they do not change the numbers).
RESUME_SAFE_FIELDS = ("epochs_max", "plot_every", "progress", "checkpoint_every_steps", "keep_every", "kernels")
#: The loop's files that ``overwrite`` removes (with ``checkpoints/`` and ``plots/``).
OUTPUTS = ("metrics.jsonl", "best.npz", "config.json")


@contextlib.contextmanager
def locked(workdir: str, process_index: int = 0) -> Iterator[None]:
    """Create ``workdir`` if needed and hold its lock for this process while the block runs.

    Raises
    ------
    ValueError
        ``workdir`` is not a writable directory, or another process (a second
        copy of the command) is training there; the message names its pid.
    """
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workdir, prefix=".probe-"):
            pass
    except OSError as err:
        raise ValueError(f"workdir {workdir!r} is not a writable directory: {err}") from None
    if fcntl is None:
        yield
        return
    path = os.path.join(workdir, ".lock" if process_index == 0 else f".lock-p{process_index}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise ValueError(f"workdir {workdir!r} is in use: another training process (pid {holder}) "
                             "holds its lock; wait for it to end or use another workdir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def prepare(config: TrainConfig, workdir: str, overwrite: bool, resume: bool, primary: bool) -> None:
    """Check ``workdir`` (created and locked by :func:`locked`) against ``config`` and write its ``config.json``.

    ``overwrite`` clears an earlier run; otherwise an earlier run must have the same config up to
    :data:`RESUME_SAFE_FIELDS` (``resume``), and a finished one goes on only with a higher ``epochs_max``.
    """
    cfg_path = os.path.join(workdir, "config.json")
    has_run = os.path.exists(cfg_path) or os.path.isdir(os.path.join(workdir, "checkpoints"))
    if overwrite:
        if primary:
            for name in OUTPUTS:
                if os.path.exists(os.path.join(workdir, name)):
                    os.remove(os.path.join(workdir, name))
            for name in ("checkpoints", "plots"):
                shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)
        multihost_utils.sync_global_devices("deepcr_jax.training: workdir cleared")
    elif has_run:
        finished = os.path.exists(os.path.join(workdir, "best.npz"))
        if not resume and not finished:
            raise ValueError(f"workdir {workdir!r} holds an earlier run; pass resume=True to continue it or "
                             "overwrite=True (--overwrite) to start over")
        if os.path.exists(cfg_path) and resume:
            with open(cfg_path) as fh:
                old = TrainConfig.from_dict(json.load(fh))
            diff = config_diff(old, config, ignore=RESUME_SAFE_FIELDS)
            if diff:
                what = "; ".join(f"{k}: {a!r} in the workdir, {b!r} now" for k, (a, b) in diff.items())
                raise ValueError(f"workdir {workdir!r} holds a run with a different config ({what}); "
                                 "use another workdir or overwrite=True")
        if finished:
            kept = _extend_finished(config, workdir, resume)
            # every process has read best.npz (same decision everywhere) before process 0 moves it
            multihost_utils.sync_global_devices("deepcr_jax.training: finished run checked")
            if primary:
                os.rename(os.path.join(workdir, "best.npz"), kept)
                log.info("continuing a finished run to %d epochs; its best.npz is now %s", config.epochs_max, kept)
    if primary:
        tmp = cfg_path + ".tmp"
        with open(tmp, "w") as fh:
            fh.write(config.to_json())
        os.replace(tmp, cfg_path)


def _extend_finished(config: TrainConfig, workdir: str, resume: bool) -> str:
    """A finished run (``best.npz``) goes on only if it ended at ``epochs_max`` and ``config`` asks for more.

    Returns the name its ``best.npz`` is then kept under, ``best-epochNNN.npz`` (never overwritten); a
    run the plateau rule stopped, or a request for no more epochs than it has, is an error that says
    what to do instead.
    """
    history = read_history(os.path.join(workdir, "metrics.jsonl"), 2**62, False)
    with open(os.path.join(workdir, "config.json")) as fh:
        old = TrainConfig.from_dict(json.load(fh))
    done = len(history)
    finished = (f"workdir {workdir!r} holds a finished run (best.npz, {done} epochs); pass overwrite=True "
                "(--overwrite) to train again there")
    if not resume or done < old.epochs_max:
        reason = "" if not resume else (" (the plateau rule stopped it: it cannot train on; to go on from its best "
                                        f"model, start another workdir with init={os.path.join(workdir, 'best.npz')})")
        raise ValueError(finished + reason)
    if config.epochs_max <= done:
        raise ValueError(f"{finished}, or raise epochs_max above {done} to continue it")
    meta = json.loads(str(np.load(os.path.join(workdir, "best.npz"))["__meta__"]))
    best_epoch = meta.get("validation", {}).get("epoch", done - 1)
    kept = os.path.join(workdir, f"best-epoch{best_epoch:03d}.npz")
    if os.path.exists(kept):
        raise ValueError(f"workdir {workdir!r}: continuing would move best.npz to {kept!r}, which exists")
    return kept


def read_history(path: str, before_epoch: int, primary: bool) -> list[dict[str, Any]]:
    """Records of epochs < before_epoch; the file is rewritten without later (lost) ones."""
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        records = [json.loads(line) for line in fh if line.strip()]
    records = [r for r in records if r["epoch"] < before_epoch]
    if primary:  # atomically: a kill now must not lose the epochs that stay
        tmp = path + ".tmp"
        with open(tmp, "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in records)
        os.replace(tmp, path)
    return records


def check_same_data(workdir: str, then: dict[str, Any] | None, now: dict[str, Any] | None) -> None:
    """Refuse to resume on other stamps than the checkpoint's (None: not recorded, e.g. simulated data)."""
    if then is None or now is None or then["sha256"] == now["sha256"]:
        return
    raise ValueError(
        f"workdir {workdir!r} holds a run on other data: it began on {then['stamps']} stamps "
        f"({then['provenance']}; sha256 {then['sha256'][:12]}...), the data now give {now['stamps']} "
        f"({now['provenance']}; sha256 {now['sha256'][:12]}...); restore the data it began on, or use another "
        "workdir or overwrite=True (--overwrite)")
