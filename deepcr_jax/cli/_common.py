"""What the commands share: the error type and exit codes, argument types, model options."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

__all__ = [
    "EXIT_OK",
    "EXIT_USAGE",
    "PROG",
    "USER_ERRORS",
    "UserError",
    "add_model_args",
    "arg_type",
    "bits",
    "error",
    "load_cleaner",
    "one_line",
    "positive_int",
    "probability",
]

PROG = "deepcr-jax"
EXIT_OK = 0
EXIT_USAGE = 2


class UserError(Exception):
    """A mistake in the command line or its inputs: one line on stderr, exit 2."""


#: User mistakes: reported as one line without a traceback, exit 2.
USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    ValueError,
)


def error(msg: str) -> None:
    """Print ``deepcr-jax: error: MSG`` on stderr."""
    print(f"{PROG}: error: {msg}", file=sys.stderr)


def one_line(err: BaseException, limit: int = 6) -> str:
    """An exception as one line; long lists of problems are cut to ``limit`` items."""
    parts = [p.strip() for p in str(err).splitlines() if p.strip()]
    if not parts:
        return type(err).__name__
    head, rest = parts[0], parts[1:]
    if len(rest) > limit:
        rest = rest[:limit] + [f"... and {len(rest) - limit} more"]
    return "; ".join([head.rstrip(":")] + rest) if rest else head


def arg_type(convert: Callable[[str], Any], ok: Callable[[Any], bool], expected: str) -> Callable[[str], Any]:
    """argparse ``type=``: ``convert(text)``, accepted when ``ok(value)``."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}; got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}; got {text!r}")
        return value

    return parse


bits = arg_type(lambda t: int(t, 0), lambda v: v >= 0, "a non-negative integer (e.g. 8192 or 0x2000)")
positive_int = arg_type(int, lambda v: v > 0, "a positive integer")
probability = arg_type(float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")


def add_model_args(p: argparse.ArgumentParser) -> None:
    """``--model --threshold --inpaint --tile --batch --precision``: the options of a command that cleans."""
    p.add_argument(
        "--model",
        default="ACS-WFC",
        help="mask model: a zoo name (see `deepcr-jax models`), a converted .npz, or (clean only) 'auto': "
        "per file from INSTRUME/DETECTOR (ACS/WFC, WFC3/UVIS, DECam; else ACS-WFC with a warning); "
        "default ACS-WFC",
    )
    p.add_argument(
        "--threshold",
        type=probability,
        default=None,
        help="CR probability threshold in [0, 1] (default: the model's recommended, 0.5)",
    )
    p.add_argument(
        "--inpaint",
        default=None,
        metavar="medmask|NAME",
        help="also replace CR pixels: 'medmask' (5x5 masked median) or an inpainting zoo model "
        "(ACS-WFC-F606W-2-32, ACS-WFC-F606W-3-32)",
    )
    p.add_argument("--tile", type=positive_int, default=None, help="tile side in pixels (multiple of 8)")
    p.add_argument("--batch", type=positive_int, default=None, help="tiles per network call")
    p.add_argument(
        "--precision",
        choices=("exact", "bf16", "tf32"),
        default="exact",
        help="exact (default): float32 throughout (no TF32 or bf16 passes on GPU/TPU); bf16: bfloat16 inner "
        "layers (first block and head float32); tf32: TensorFloat-32 convolutions on NVIDIA GPUs (a CPU runs "
        "exact float32)",
    )


def load_cleaner(args: argparse.Namespace, model: str | None = None):
    """The :class:`deepcr_jax.Cleaner` that :func:`add_model_args`'s options ask for (``model``: instead of ``--model``)."""
    from deepcr_jax import load

    return load(
        args.model if model is None else model,
        inpaint=args.inpaint,
        tile=args.tile,
        batch=args.batch,
        precision=getattr(args, "precision", "exact"),
    )
