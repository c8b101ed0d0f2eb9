"""Command line: ``python -m train --config NAME [--workdir DIR] [--overwrite] [key=value ...]``.

``python -m train --workdir DIR --export EPOCH|best [--output PATH]`` exports
one kept epoch of the run in DIR (finished, stopped or still training) as a
zoo ``.npz`` instead of training. ``python -m train --workdir DIR [key=value ...]``
(no ``--config``) continues the run in DIR with its own config: after a kill,
or a finished one with a higher ``epochs_max``.

:func:`cli_main` is what ``python -m train`` (and later ``deepcr-jax train``) runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from deepcr_jax.training.config import CONFIG_NAMES, TrainConfig, get_config, parse_overrides

__all__ = ["DESCRIPTION", "add_arguments", "build_parser", "cli_main", "run"]

DESCRIPTION = "Train a deepCR network (mask or inpainting) with deepcr-jax."


def epilog() -> str:
    """The help text's list of overridable config fields."""
    return f"Overridable fields: {', '.join(TrainConfig.__dataclass_fields__)}."


def build_parser(prog: str = "python -m train") -> argparse.ArgumentParser:
    """The argument parser of ``python -m train``."""
    p = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, epilog=epilog())
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the training options to ``p`` (``python -m train`` and ``deepcr-jax train`` share them)."""
    p.add_argument("--config", default=None,
                   help=f"preset: {', '.join(CONFIG_NAMES)} (each also as NAME.smoke); without it, continue the "
                        "run in --workdir with its own config (e.g. epochs_max=N to train a finished run on)")
    p.add_argument("--workdir", default=None, help="output directory (default: runs/<config>)")
    p.add_argument("--overwrite", action="store_true", help="discard an earlier run in the workdir")
    p.add_argument("--no-resume", action="store_true", help="refuse to continue an earlier run")
    p.add_argument("--coordinator", default=None,
                   help="multi-process: coordinator address host:port (with --num-processes, --process-id)")
    p.add_argument("--num-processes", type=int, default=None)
    p.add_argument("--process-id", type=int, default=None)
    p.add_argument("--export", default=None, metavar="EPOCH|best",
                   help="do not train: export epoch EPOCH (as numbered in metrics.jsonl; kept checkpoints: the "
                        "latest two, the best, every keep_every-th) or the best of the run in --workdir")
    p.add_argument("--output", "-o", default=None,
                   help="with --export: the .npz to write (default WORKDIR/epochNNN.npz; never overwritten)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config field overrides")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (a later call in one process may have replaced it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _log_to_stderr() -> None:
    """Show deepcr_jax's INFO records (an epoch's losses, a resume, the kernels' build) on stderr.

    ``logging.basicConfig`` cannot: orbax attaches a handler to the root
    logger when imported, which makes it a no-op and leaves the root at
    WARNING. So the package's logger gets its own handler, once, and stops
    propagating (no duplicates through that root handler).
    """
    logger = logging.getLogger("deepcr_jax")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def cli_main(argv: Sequence[str] | None = None) -> int:
    """Run the training command line; returns the exit status (errors → message and 2)."""
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Train (or ``--export``) as ``args`` (from :func:`add_arguments`) say; returns the exit status."""
    if args.export is not None:
        return _export(args)
    if args.output is not None:
        print("error: --output goes with --export", file=sys.stderr)
        return 2
    try:
        config = _config(args)
    except (ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    import jax

    if args.coordinator:
        if args.num_processes is None or args.process_id is None:
            print("error: --coordinator needs --num-processes and --process-id", file=sys.stderr)
            return 2
        if jax.default_backend() == "cpu" or os.environ.get("JAX_PLATFORMS", "") == "cpu":
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=args.coordinator, num_processes=args.num_processes,
                                   process_id=args.process_id)
    from deepcr_jax.training.loop import train_and_evaluate

    _log_to_stderr()
    workdir = args.workdir or os.path.join("runs", config.name)
    try:
        result = train_and_evaluate(config, workdir, overwrite=args.overwrite, resume=not args.no_resume)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if jax.process_index() == 0:
        print(f"exported {result['export']} (best validation loss {result['best_val_loss']:.5g}, "
              f"{result['epochs']} epochs)")
    return 0


def _config(args: argparse.Namespace) -> TrainConfig:
    """``--config NAME`` with the overrides, or without it the run in ``--workdir``'s own config (to resume it)."""
    overrides = parse_overrides(args.overrides)
    if args.config is not None:
        return get_config(args.config, **overrides)
    saved = os.path.join(args.workdir, "config.json") if args.workdir else None
    if saved is None or not os.path.exists(saved) or args.overwrite:
        raise ValueError(f"--config is required to train (one of {', '.join(CONFIG_NAMES)}); without it, "
                         "--workdir must hold a run to continue (its config.json)")
    with open(saved) as fh:
        return TrainConfig.from_dict(json.load(fh)).replace(**overrides)


def _export(args: argparse.Namespace) -> int:
    """``--export EPOCH|best``: :func:`deepcr_jax.training.loop.export_epoch` on ``--workdir``."""
    if args.workdir is None or args.config is not None or args.overrides or args.overwrite:
        print("error: --export takes the run's own config: give --workdir (and optionally --output), "
              "not --config, --overwrite or key=value", file=sys.stderr)
        return 2
    epoch: int | None = None
    if args.export != "best":
        try:
            epoch = int(args.export)
        except ValueError:
            epoch = -1
        if epoch < 0:
            print(f"error: --export takes an epoch number (>= 0) or 'best'; got {args.export!r}", file=sys.stderr)
            return 2
    from deepcr_jax.training.loop import export_epoch

    _log_to_stderr()
    try:
        res = export_epoch(args.workdir, epoch, args.output)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"exported {res['export']} (epoch {res['epoch']}, validation loss {res['val_loss']:.5g})")
    return 0
