"""``deepcr-jax convert MODEL.pth``: a deepCR-trained PyTorch state dict to a deepcr-jax ``.npz``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from deepcr_jax.cli._common import EXIT_OK, UserError, one_line, probability

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``convert`` with the ``deepcr-jax`` subparsers."""
    p = sub.add_parser(
        "convert",
        help="convert a deepCR-trained PyTorch .pth into a deepcr-jax .npz",
        description=(
            "Convert a state dict saved by deepCR's training (torch.save(net.state_dict())) into a .npz "
            "usable as --model. Depth, width, inputs and normalisation are read from the tensors; every "
            "key must match. Needs torch."
        ),
    )
    p.add_argument("pth", metavar="MODEL.pth", help="PyTorch state dict")
    p.add_argument("-o", "--output", metavar="OUT.npz", help="output (default: MODEL.npz beside the input)")
    p.add_argument("--name", default=None, help="model name recorded in the file (default: the file stem)")
    p.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="the network sees image / SCALE (default 1: electrons for HST)",
    )
    p.add_argument("--threshold", type=probability, default=0.5, help="recommended threshold (default 0.5)")
    p.add_argument(
        "--standardize",
        action="store_true",
        help="the network was trained on mean/std-standardised images (as deepCR's WFC3-UVIS)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    return p


def _output(args: argparse.Namespace) -> str:
    """The checked output path (``.npz``, not the input, not existing unless ``--overwrite``)."""
    src = args.pth
    out = args.output if args.output is not None else os.fspath(Path(src).with_suffix(".npz"))
    if not out.endswith(".npz"):
        raise UserError(f"output must end in .npz (it is read as a deepcr-jax model by suffix); got {out!r}")
    if os.path.realpath(out) == os.path.realpath(src):
        raise UserError(f"output {out!r} is the input file")
    if os.path.lexists(out) and not args.overwrite:
        raise UserError(f"output {out!r} already exists; pass --overwrite to replace it")
    return out


def run(args: argparse.Namespace) -> int:
    """Read the state dict, convert it (every key checked), save it with its metadata."""
    src = args.pth
    if not os.path.isfile(src):
        raise UserError(f"input file not found: {src}")
    out = _output(args)
    if not (np.isfinite(args.scale) and args.scale > 0):
        raise UserError(f"--scale must be a positive number; got {args.scale}")
    from deepcr_jax.convert import convert_state_dict, load_torch_state_dict
    from deepcr_jax.weights import model_meta, save_npz, sha256_file

    try:
        sd = load_torch_state_dict(src)
    except ImportError as err:
        raise UserError(one_line(err)) from None
    except Exception as err:  # noqa: BLE001 - torch's unpickler raises many kinds on a file that is not a state dict
        raise UserError(
            f"{src}: cannot read as a PyTorch state dict ({type(err).__name__}: {one_line(err)})"
        ) from None
    try:
        variables, arch = convert_state_dict(sd)
    except ValueError as err:
        raise UserError(f"{src}: {one_line(err)}") from None
    meta = model_meta(
        arch,
        name=args.name or Path(src).stem,
        scale=args.scale,
        standardize=args.standardize,
        threshold=args.threshold,
        source=os.path.basename(src),
        source_sha256=sha256_file(src),
        notes="converted by `deepcr-jax convert`",
    )
    save_npz(out, variables, meta)
    print(f"{src} -> {out}")
    print(
        f"  {arch.kind} network, depth {arch.depth}, hidden {arch.hidden} ({arch.depth}-{arch.hidden}), "
        f"inputs {arch.in_channels}, {arch.norm} norm, {arch.head} head"
    )
    print(
        f"  scale {args.scale:g}, threshold {args.threshold:g}, standardize {'yes' if args.standardize else 'no'}"
    )
    if arch.kind == "mask":
        print(f"Use it: deepcr-jax clean IN.fits --model {out}   or   deepcr_jax.clean(image, model={out!r})")
    else:
        print(f"Use it: deepcr-jax clean IN.fits --inpaint {out}")
    return EXIT_OK
