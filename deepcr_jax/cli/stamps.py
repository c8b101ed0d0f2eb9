"""``deepcr-jax stamps EXP1.fits EXP2.fits EXP3.fits -o FIELD.fits``: a training set from your own exposures.

Aligned exposures of one field (HST CR-SPLITs, repeat exposures on one
pixel grid) become training stamps with CR masks from each exposure against
the median of the others (:func:`deepcr_jax.training.builder.build_stamps_from_fits`,
the paper's two-threshold rule), written as one FITS file of stamps
(:func:`deepcr_jax.training.data.to_fits`) that ``deepcr-jax train
data="stamps/*.fits"`` reads: one file per field, so the train/validation
split keeps fields apart.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from deepcr_jax.cli._common import EXIT_OK, UserError, positive_int

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``stamps`` with the ``deepcr-jax`` subparsers."""
    p = sub.add_parser(
        "stamps",
        help="build training stamps (CR masks from the median of the other exposures) from aligned exposures",
        description=(
            "Cut aligned exposures of one field (same pixel grid: CR-SPLITs or repeat exposures) into "
            "training stamps. Each exposure's CR mask comes from its difference to the median of the "
            "others (5 sigma seeds, grown 1 px at 1.5 sigma); DQ flags, saturation (grown 7x7) and "
            "non-finite pixels are ignored. The stamps go to one FITS file (primary: images in electrons; "
            "CRMASK, IGNORE, SKY) for `deepcr-jax train data=\"DIR/*.fits\"`; write one file per field."
        ),
    )
    p.add_argument("exposures", nargs="+", metavar="EXPOSURE.fits",
                   help="at least 3 aligned exposures of one field (each SCI extension with its DQ)")
    p.add_argument("-o", "--output", required=True, metavar="FIELD.fits", help="the stamps file to write")
    p.add_argument("--stamp-size", type=positive_int, default=256, help="stamp side in pixels (default 256)")
    p.add_argument("--border", type=int, default=128,
                   help="pixels discarded on each side of a frame (default 128, the paper's: dithered "
                        "frames overlap fully inside it)")
    p.add_argument("--readnoise", type=float, default=None,
                   help="read noise in electrons (default: the mean of READNSEA..READNSED in each header)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    return p


def run(args: argparse.Namespace) -> int:
    """Build the stamps, write them atomically, print what was written."""
    out = args.output
    if not out.lower().endswith((".fits", ".fit")):  # what train's data= glob reads as FITS stamps
        raise UserError(f"output must end in .fits (train reads stamps by suffix); got {out!r}")
    missing = [p for p in args.exposures if not os.path.isfile(p)]
    if missing:
        raise UserError(f"input file not found: {missing[0]}")
    if any(os.path.realpath(p) == os.path.realpath(out) for p in args.exposures):
        raise UserError(f"output {out!r} is one of the inputs")
    if os.path.lexists(out) and not args.overwrite:
        raise UserError(f"output {out!r} already exists; pass --overwrite to replace it")
    if args.border < 0:
        raise UserError(f"--border must be >= 0; got {args.border}")
    if args.readnoise is not None and not (np.isfinite(args.readnoise) and args.readnoise >= 0):
        raise UserError(f"--readnoise must be a number >= 0 (electrons); got {args.readnoise}")
    from deepcr_jax.training.builder import build_stamps_from_fits
    from deepcr_jax.training.crdetect import GROW_SNR, SEED_SNR
    from deepcr_jax.training.data import to_fits

    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    st = build_stamps_from_fits(args.exposures, readnoise=args.readnoise, stamp_size=args.stamp_size,
                                border=args.border)
    n_chips = int(st.chip.max()) + 1 if len(st) else 0
    cards = [("NEXP", len(args.exposures), "aligned exposures of the field"),
             ("NCHIPS", n_chips, "science arrays per exposure"),
             ("STAMPSZ", args.stamp_size, "stamp side (px)"), ("BORDER", args.border, "frame border dropped (px)"),
             ("CRSEED", SEED_SNR, "CR seed: sigma over others' median"),
             ("CRGROW", GROW_SNR, "CR growth: sigma, 1 px around seeds")]
    history = ["deepcr-jax stamps: CR masks from each exposure against the median of the others"]
    history += [f"exposure {i}: {os.path.basename(p)}" for i, p in enumerate(args.exposures)]
    to_fits(out, st.image, st.cr, st.ignore, st.sky, cards=cards, history=history, overwrite=args.overwrite)
    valid = ~st.ignore
    cr_pct = 100.0 * np.count_nonzero(st.cr & valid) / max(np.count_nonzero(valid), 1)
    print(f"wrote {out}: {len(st)} stamps of {args.stamp_size}x{args.stamp_size} from {len(args.exposures)} "
          f"exposures x {n_chips} chip(s); CR pixels {cr_pct:.3f} % of the used ones, ignored "
          f"{100.0 * st.ignore.mean():.2f} %")
    return EXIT_OK
