"""``train_and_evaluate(config, workdir)``: the training loop.

Builds the device mesh once, loads and splits the data, creates (or restores)
the state, runs epochs of jitted steps with host-side prefetch, validates
after each epoch (eval-mode network), steps the plateau schedule and the
BatchNorm phase, checkpoints with Orbax, writes ``metrics.jsonl`` (one JSON
line per epoch), PNGs, and finally exports ``best.npz`` from the best
validation checkpoint. :func:`export_epoch` exports another kept epoch (or
the best) of a run, finished or not, without training.

The workdir (its layout, lock, checks against the config and
``metrics.jsonl``) is :mod:`deepcr_jax.training.workdir`'s.

Multi-host: call ``jax.distributed.initialize`` first (see
:func:`deepcr_jax.training.cli_main`); every process runs this function, reads
its own slice of each global batch and builds the global array with
``jax.make_array_from_process_local_data``; only process 0 writes files other
than checkpoints.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from deepcr_jax.training import data as data_lib
from deepcr_jax.training import export as export_lib
from deepcr_jax.training import workdir as workdir_lib
from deepcr_jax.training.checkpoint import Checkpoints
from deepcr_jax.training.config import TrainConfig
from deepcr_jax.training.schedule import Plateau, bn_phase, set_learning_rate
from deepcr_jax.training.state import create_state, replicate
from deepcr_jax.training.step import make_eval_step, make_train_step

__all__ = ["export_epoch", "global_batch", "make_mesh", "train_and_evaluate", "validate", "validation_key"]

log = logging.getLogger(__name__)

#: Largest distance (px) from the peak to each side of the validation's core blocks (``val_core_mse``).
VAL_CORE_REACH = 5


def make_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh, axis ``"data"``, over ``devices`` (default: all devices of all processes)."""
    devs = jax.devices() if devices is None else list(devices)
    return Mesh(np.array(devs), ("data",))


def global_batch(local: dict[str, np.ndarray], mesh: Mesh, batch_size: int) -> dict[str, jax.Array]:
    """This process's slice of a batch → global arrays sharded over the mesh's ``"data"`` axis."""
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    return {k: jax.make_array_from_process_local_data(sharding, v, (batch_size,) + v.shape[1:])
            for k, v in local.items()}


def _to_host(x: jax.Array) -> np.ndarray:
    if x.is_fully_addressable:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _flush(host: dict[str, Any], pending: list[dict]) -> None:
    """Add the pending step metrics to the epoch's running sums (float64, in step order)."""
    for m in pending:
        c = float(m["count"])
        host["loss_sum"] += float(m["loss"]) * c
        host["loss_count"] += c
        g = float(m["grad_norm"])
        host["grad_norm_sum"] += g
        host["grad_norm_max"] = max(host["grad_norm_max"], g)
        host["grad_steps"] += 1
    pending.clear()


def validation_key(key: jax.Array) -> jax.Array:
    """The key of a run's validation draws, from its ``jax.random.key(config.seed)``."""
    return jax.random.fold_in(key, 2**31 - 1)


def validate(config, state, eval_step, val_local, val_global, mesh, key) -> tuple[float, dict, np.ndarray]:
    """The validation loss and scores of ``state`` (eval-mode network) on fixed batches.

    Parameters
    ----------
    config : TrainConfig
        The run's config (``kind``, ``batch_size``).
    state : TrainState
        Replicated over ``mesh``.
    eval_step : callable
        ``make_eval_step(config, mesh)``.
    val_local, val_global : list of dict
        ``data.eval_batches`` of the validation set: this process's slices and the
        whole batches (the same list on one process); ``weight`` 0 marks padding.
    mesh : jax.sharding.Mesh
        The data-parallel mesh.
    key : jax.Array
        PRNG key of the inpainting masks drawn for validation (``fold_in(key, i)`` for
        batch ``i``; fixed per run, so every epoch scores the same pixels).

    Returns
    -------
    (float, dict, ndarray)
        Loss (summed over the scored pixels of all batches divided by their count; the
        paper's units: (100 e-)^2 at scale 100 for inpainting), scores (mask: TPR at
        0.05 % / 0.5 % FPR; inpaint: ``val_mse`` and ``val_core_mse``, the MSE when a
        block over each crop's brightest pixel is hidden alone: a check on hidden
        source cores, which the borrowed masks rarely cover) and the network outputs
        ``(n_val, crop, crop)`` without padding.
    """
    total, count, core_total, core_count, outs = 0.0, 0.0, 0.0, 0.0, []
    for i, vb in enumerate(val_local):
        res = eval_step(state, global_batch(vb, mesh, config.batch_size), jax.random.fold_in(key, i))
        total += float(_to_host(res["loss_sum"]))
        count += float(_to_host(res["count"]))
        if "core_sum" in res:
            core_total += float(_to_host(res["core_sum"]))
            core_count += float(_to_host(res["core_count"]))
        outs.append(_to_host(res["out"]))
    out = np.concatenate(outs)
    keep = np.concatenate([b["weight"] for b in val_global]) > 0
    out = out[keep]
    val_loss = total / count if count else float("nan")
    scores: dict[str, float] = {}
    if config.kind == "mask":
        cr = np.concatenate([b["cr"] for b in val_global])[keep] > 0
        ign = np.concatenate([b["ignore"] for b in val_global])[keep] > 0
        scores = export_lib.val_tpr(out, cr, ign)
    else:
        scores = {"val_mse": val_loss}
        if core_count:
            scores["val_core_mse"] = core_total / core_count
    return val_loss, scores, out


def _plots(workdir: str, history: list[dict], val_global: list[dict], out: np.ndarray, config, epoch: int) -> None:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:  # optional
        return
    os.makedirs(os.path.join(workdir, "plots"), exist_ok=True)
    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ep = [r["epoch"] for r in history]
    ax.plot(ep, [r["loss"] for r in history], label="train")
    ax.plot(ep, [r["val_loss"] for r in history], label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    fig.savefig(os.path.join(workdir, "plots", "curve.png"), dpi=80)
    fig = Figure(figsize=(9, 3))
    FigureCanvasAgg(fig)
    b0 = val_global[0]
    panels = [("image", b0["image"][0]), ("truth (CR)", b0["cr"][0]),
              ("prediction", out[0] if config.kind == "mask" else out[0] * config.scale)]
    for i, (title, img) in enumerate(panels):
        ax = fig.add_subplot(1, 3, i + 1)
        lo, hi = np.percentile(img, [1, 99.5])
        ax.imshow(img, origin="lower", cmap="gray", vmin=lo, vmax=max(hi, lo + 1e-6))
        ax.set_title(title)
        ax.set_axis_off()
    fig.savefig(os.path.join(workdir, "plots", f"example_e{epoch:03d}.png"), dpi=80)


class _NoBar:
    """Stands in for a tqdm bar where tqdm is not installed (it is in the ``train`` extra)."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar():
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar
    return tqdm


def train_and_evaluate(config: TrainConfig, workdir: str | os.PathLike, *, overwrite: bool = False,
                       resume: bool = True, data: data_lib.Dataset | None = None) -> dict[str, Any]:
    """Train ``config`` in ``workdir``; resume an interrupted run there exactly.

    Parameters
    ----------
    config : TrainConfig
    workdir : path-like
        Created if missing. Holding another run's different config, or a
        finished run (``best.npz``) without ``overwrite``, is a ``ValueError``.
    overwrite : bool
        Delete this loop's outputs in ``workdir`` (checkpoints, metrics,
        plots, ``best.npz``) and start over.
    resume : bool
        Continue from the latest checkpoint if there is one (else refuse a
        workdir that holds a run).
    data : Dataset, optional
        Stamps to train on (default: ``config.data``, e.g. the simulator).

    Returns
    -------
    dict
        ``export`` (path of ``best.npz``), ``best_step``, ``best_val_loss``,
        ``epochs`` (completed), ``history`` (the ``metrics.jsonl`` records).
    """
    workdir = os.path.abspath(os.fspath(workdir))
    with workdir_lib.locked(workdir, jax.process_index()):
        return _train(config, workdir, overwrite, resume, data)


def _train(config: TrainConfig, workdir: str, overwrite: bool, resume: bool,
           data: data_lib.Dataset | None) -> dict[str, Any]:
    """:func:`train_and_evaluate` in its locked ``workdir`` (absolute)."""
    primary = jax.process_index() == 0
    workdir_lib.prepare(config, workdir, overwrite, resume, primary)
    run = _Run(config, workdir, data)
    it, mesh, state, ckpts = run.iterator, run.mesh, run.state, run.ckpts
    val_local, val_global, val_key = run.val_local, run.val_global, run.val_key
    host: dict[str, Any] = {"epoch": 0, "batch": 0, "step": 0, "loss_sum": 0.0, "loss_count": 0.0,
                            "grad_norm_sum": 0.0, "grad_norm_max": 0.0, "grad_steps": 0,
                            "plateau": Plateau(lr=config.lr).to_dict(), "config": config.to_dict()}
    # simulated stamps are fixed by the config (checked above); other data must be what the run began on
    if data is not None or config.data != "simulate":
        host["data"] = {"sha256": run.ds.sha256(), "stamps": len(run.ds), "provenance": run.ds.provenance}
    latest = ckpts.latest_step() if resume else None
    if latest is not None:
        now = host.get("data")
        state, host = ckpts.restore(latest, state)
        workdir_lib.check_same_data(workdir, host.get("data"), now)
        if now is not None:  # a checkpoint from before the record: record from here on
            host["data"] = now
        log.info("resumed from step %d (epoch %d, batch %d)", latest, host["epoch"], host["batch"])
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    history = workdir_lib.read_history(metrics_path, host["epoch"], primary)
    steps: dict[int, Any] = {}
    eval_step = make_eval_step(config, mesh)
    plateau = Plateau.from_dict(host["plateau"])
    base_key = jax.random.wrap_key_data(np.asarray(_to_host(state["rng"])))
    tqdm = _progress_bar()

    while not plateau.stop and host["epoch"] < config.epochs_max:
        epoch, t0 = host["epoch"], time.perf_counter()
        phase = bn_phase(epoch, config.bn_epochs, config.norm)
        if phase not in steps:
            steps[phase] = make_train_step(config, mesh, bn_frozen=phase == 2)
        train_step = steps[phase]
        bar = tqdm(total=it.steps_per_epoch, initial=host["batch"], desc=f"epoch {epoch}", leave=False,
                   disable=not (config.progress and primary))
        pending: list[dict] = []

        prefetch = data_lib.Prefetcher(it.iterate(epoch, host["batch"]))
        try:
            for b, local in prefetch:
                state, m = train_step(state, global_batch(local, mesh, config.batch_size),
                                      jax.random.fold_in(base_key, host["step"]))
                pending.append(m)
                host["step"] += 1
                host["batch"] = b + 1
                bar.update(1)
                if len(pending) >= 10:
                    _flush(host, pending)
                    bar.set_postfix(loss=f"{host['loss_sum'] / max(host['loss_count'], 1):.4g}", lr=f"{plateau.lr:.2g}")
                k = config.checkpoint_every_steps
                if k and host["step"] % k == 0 and b + 1 < it.steps_per_epoch:
                    _flush(host, pending)
                    ckpts.save(host["step"], state, host)
        finally:
            prefetch.close()
        _flush(host, pending)
        train_loss = host["loss_sum"] / max(host["loss_count"], 1.0)
        val_loss, scores, out = validate(config, state, eval_step, val_local, val_global, mesh, val_key)
        lr_used = plateau.lr
        if phase == 2:  # phase 1 holds the initial rate (schedule module docstring)
            plateau = plateau.update(val_loss, epoch, patience=config.patience, rtol=config.rtol,
                                     factor=config.decay_factor, max_decays=config.max_decays)
        if plateau.lr != lr_used:
            state = dict(state, opt=set_learning_rate(state["opt"], plateau.lr))
        record = {"epoch": epoch, "step": host["step"], "loss": train_loss, "val_loss": val_loss, "lr": lr_used,
                  "phase": phase, **scores,
                  "grad_norm_mean": host["grad_norm_sum"] / max(host["grad_steps"], 1),
                  "grad_norm_max": host["grad_norm_max"], "seconds": time.perf_counter() - t0}
        history.append(record)
        bar.set_postfix(loss=f"{train_loss:.4g}", val=f"{val_loss:.4g}", lr=f"{lr_used:.2g}")
        bar.close()
        if primary:
            with open(metrics_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
            if config.plot_every and (epoch + 1) % config.plot_every == 0:
                _plots(workdir, history, val_global, out, config, epoch)
        host.update(epoch=epoch + 1, batch=0, loss_sum=0.0, loss_count=0.0, grad_norm_sum=0.0, grad_norm_max=0.0,
                    grad_steps=0, plateau=plateau.to_dict())
        ckpts.save(host["step"], state, host, val_loss=val_loss)
        core = f", val_core_mse {scores['val_core_mse']:.5g}" if "val_core_mse" in scores else ""
        log.info("epoch %d: loss %.5g, val_loss %.5g%s, lr %.3g, phase %d", epoch, train_loss, val_loss, core,
                 lr_used, phase)

    best = ckpts.best_step()
    if best is None:
        raise ValueError("no epoch completed (epochs_max reached before the first epoch?)")
    export_path = os.path.join(workdir, "best.npz")
    best_val = run.export(best, eval_step, export_path)["val_loss"]
    ckpts.close()
    return {"export": export_path, "best_step": best, "best_val_loss": best_val,
            "epochs": host["epoch"], "history": history,
            "stopped_early": plateau.stop and not math.isinf(plateau.best)}


class _Run:
    """What a run in ``workdir`` rebuilds from its config: mesh, data, iterator, state template, checkpoints."""

    def __init__(self, config: TrainConfig, workdir: str, data: data_lib.Dataset | None) -> None:
        pi, pc = jax.process_index(), jax.process_count()
        self.config = config
        self.mesh = make_mesh()
        if config.batch_size % self.mesh.size:
            raise ValueError(f"batch_size ({config.batch_size}) must be divisible by the device count "
                             f"({self.mesh.size})")
        self.ds = data if data is not None else data_lib.load_source(config)
        train_ds, val_ds = data_lib.split_by_group(self.ds, config.val_fraction, config.seed)
        self.iterator = data_lib.EpochIterator(
            train_ds, config.batch_size, config.crop, config.seed, pi, pc,
            bright_fraction=config.bright_crops, core_fraction=config.core_masks, core_reach=config.core_reach,
            bright_peaks=config.bright_peaks, core_shape=config.core_shape)
        reach = VAL_CORE_REACH if config.kind == "inpaint" else 0
        self.val_local = data_lib.eval_batches(val_ds, config.batch_size, config.crop, pi, pc, core_reach=reach)
        self.val_global = (self.val_local if pc == 1
                           else data_lib.eval_batches(val_ds, config.batch_size, config.crop, core_reach=reach))
        key = jax.random.key(config.seed)
        self.val_key = validation_key(key)
        self.state = replicate(create_state(config, key), self.mesh)
        self.ckpts = Checkpoints(os.path.join(workdir, "checkpoints"),
                                 keep_every_steps=config.keep_every * self.iterator.steps_per_epoch)

    def export(self, step: int, eval_step, path: str, exclusive: bool = False) -> dict[str, Any]:
        """Validate checkpoint ``step``, write it as a zoo ``.npz`` at ``path`` (process 0); its validation record."""
        config, mesh, val_global = self.config, self.mesh, self.val_global
        state, host = self.ckpts.restore(step, self.state)
        val_loss, scores, out = validate(config, state, eval_step, self.val_local, val_global, mesh, self.val_key)
        notes = ""
        threshold = export_lib.DEFAULT_THRESHOLD
        if config.kind == "mask":
            keep = np.concatenate([b["weight"] for b in val_global]) > 0
            cr = np.concatenate([b["cr"] for b in val_global])[keep] > 0
            ign = np.concatenate([b["ignore"] for b in val_global])[keep] > 0
            threshold, notes = export_lib.choose_threshold(out, cr, ign)
            notes = "threshold: " + notes
        validation = {"epoch": host["epoch"] - 1, "step": step, "val_loss": val_loss, **scores}
        if jax.process_index() == 0:
            export_lib.export_npz(path, config, state, threshold=threshold, provenance=self.ds.provenance,
                                  notes=notes, validation=validation, exclusive=exclusive)
        multihost_utils.sync_global_devices("deepcr_jax.training: exported")
        return validation


def export_epoch(workdir: str | os.PathLike, epoch: int | None = None, output: str | os.PathLike | None = None,
                 *, data: data_lib.Dataset | None = None) -> dict[str, Any]:
    """Export one kept epoch of a run (finished, stopped or still running) as a zoo ``.npz``, without training.

    Parameters
    ----------
    workdir : path-like
        The run's directory (its ``config.json``, ``checkpoints/`` and
        ``metrics.jsonl``).
    epoch : int, optional
        The epoch as numbered in ``metrics.jsonl`` (0 = the first): its
        end-of-epoch checkpoint must still be kept (the latest two, the best,
        and every ``keep_every``-th). None: the best by validation loss.
    output : path-like, optional
        The ``.npz`` to write (default ``workdir/epochNNN.npz``, or
        ``workdir/best-epochNNN.npz`` for the best). An existing file is an
        error: exports are never overwritten.
    data : Dataset, optional
        The run's stamps when it was given its data in memory (default: its
        config's ``data``, e.g. the simulator, rebuilt from the seed): the
        validation split scores the export and, for mask networks, picks
        its threshold.

    Returns
    -------
    dict
        ``export`` (the path), ``epoch``, ``step``, ``val_loss`` and the
        validation scores.
    """
    workdir = os.path.abspath(os.fspath(workdir))
    cfg_path = os.path.join(workdir, "config.json")
    if not os.path.exists(cfg_path) or not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise ValueError(f"workdir {workdir!r} holds no training run (config.json and checkpoints/)")
    with open(cfg_path) as fh:
        config = TrainConfig.from_dict(json.load(fh))
    steps = {r["epoch"]: r["step"] for r in workdir_lib.read_history(os.path.join(workdir, "metrics.jsonl"), 2**62, False)}
    if not steps:
        raise ValueError(f"workdir {workdir!r}: no epoch has completed yet")
    if epoch is not None and epoch not in steps:
        raise ValueError(f"workdir {workdir!r}: epoch {epoch} has not completed (epochs 0..{max(steps)} have)")
    run = _Run(config, workdir, data)
    kept = run.ckpts.all_steps()
    if epoch is None:
        step = run.ckpts.best_step()
        epoch = next(e for e, s in steps.items() if s == step)
        name = f"best-epoch{epoch:03d}.npz"
    else:
        step, name = steps[epoch], f"epoch{epoch:03d}.npz"
        if step not in kept:
            have = sorted(e for e, s in steps.items() if s in kept)
            raise ValueError(f"workdir {workdir!r}: the checkpoint of epoch {epoch} was not kept (kept epochs: "
                             f"{', '.join(map(str, have))}; keep_every=N keeps every N-th)")
    path = os.path.abspath(os.fspath(output)) if output is not None else os.path.join(workdir, name)
    taken = f"{path!r} exists; exports are never overwritten (remove it or name another --output)"
    if os.path.exists(path):  # before the validation pass, not after it
        raise ValueError(taken)
    try:
        record = run.export(step, make_eval_step(config, run.mesh), path, exclusive=True)
    except FileExistsError:  # appeared meanwhile
        raise ValueError(taken) from None
    finally:
        run.ckpts.close()
    return {"export": path, **record, "epoch": epoch}
