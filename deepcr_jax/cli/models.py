"""``deepcr-jax models``: the model zoo as a table."""

from __future__ import annotations

import argparse

from deepcr_jax.cli._common import EXIT_OK

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``models`` with the ``deepcr-jax`` subparsers."""
    p = sub.add_parser("models", help="list the model zoo", description="List the models deepcr-jax ships.")
    p.add_argument("--kind", choices=("mask", "inpaint"), default=None, help="only this kind")
    return p


def run(args: argparse.Namespace) -> int:
    """Print one row per zoo model (name, kind, depth-hidden, norm, scale, threshold, origin)."""
    from deepcr_jax.zoo import MODELS

    rows = [("name", "kind", "d-h", "norm", "scale", "thresh", "in deepCR", "trained on")]
    for spec in MODELS.values():
        if args.kind is not None and spec.kind != args.kind:
            continue
        rows.append(
            (
                spec.name,
                spec.kind,
                spec.label,
                spec.arch.norm,
                f"{spec.scale:g}",
                f"{spec.threshold:g}",
                "yes" if spec.registered else "no",
                spec.instrument,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for k, row in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
        if k == 0:
            print("  ".join("-" * w for w in widths) + "  " + "-" * len(row[-1]))
    print(
        "\nd-h: depth-hidden channels (the paper's 2-32). 'in deepCR' = registered in deepCR 0.3.1's "
        "mask_dict/inpaint_dict;\nthe others ship there as files only (their scale is documented in "
        "deepcr_jax.zoo), except the *-jax-* models,\ntrained by deepcr-jax on simulated data. "
        "Models see image / scale."
    )
    return EXIT_OK
