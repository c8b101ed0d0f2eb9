"""``deepcr-jax train``: train or fine-tune a network (the same command as ``python -m train``)."""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``train`` with the ``deepcr-jax`` subparsers (options: :mod:`deepcr_jax.training.cli`)."""
    from deepcr_jax.training import cli as training_cli

    p = sub.add_parser("train", help="train or fine-tune a mask or inpainting network",
                       description=training_cli.DESCRIPTION, epilog=training_cli.epilog())
    training_cli.add_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Run the training (needs the ``train`` extra: optax, orbax-checkpoint)."""
    import importlib.util

    from deepcr_jax.cli._common import UserError
    from deepcr_jax.training import cli as training_cli

    missing = [m for m in ("optax", "orbax.checkpoint") if importlib.util.find_spec(m.split(".")[0]) is None]
    if missing:
        raise UserError(f"training needs {', '.join(missing)}: pip install 'deepcr-jax[train]'")
    return training_cli.run(args)
