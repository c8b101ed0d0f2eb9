"""Command line: ``python -m train --config NAME [--workdir DIR] [--overwrite] [key=value ...]``.

:func:`cli_main` is what ``python -m train`` (and later ``deepcr-jax train``) runs.
"""

from __future__ import annotations

import argparse
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
    p.add_argument("--config", required=True,
                   help=f"preset: {', '.join(CONFIG_NAMES)} (each also as NAME.smoke)")
    p.add_argument("--workdir", default=None, help="output directory (default: runs/<config>)")
    p.add_argument("--overwrite", action="store_true", help="discard an earlier run in the workdir")
    p.add_argument("--no-resume", action="store_true", help="refuse to continue an earlier run")
    p.add_argument("--coordinator", default=None,
                   help="multi-process: coordinator address host:port (with --num-processes, --process-id)")
    p.add_argument("--num-processes", type=int, default=None)
    p.add_argument("--process-id", type=int, default=None)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config field overrides")


def cli_main(argv: Sequence[str] | None = None) -> int:
    """Run the training command line; returns the exit status (errors → message and 2)."""
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Train as ``args`` (from :func:`add_arguments`) say; returns the exit status."""
    try:
        config = get_config(args.config, **parse_overrides(args.overrides))
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

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
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
