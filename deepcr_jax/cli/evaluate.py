"""``deepcr-jax evaluate STAMPS... --model A --model B --inpaint C``: models compared on labelled stamps.

The stamps carry their true CR masks: FITS stamps as ``deepcr-jax stamps``
writes them (keep a field out of training for this), deepCR's ``.npy``
pairs, or simulated ``.npz`` datasets. Mask models are scored by TPR at
0.05 % and 0.5 % FPR (and at their own threshold), inpainters by the MSE
under another stamp's CR mask (the paper's Tables 2 and 3, on your data).
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from deepcr_jax.cli._common import EXIT_OK, UserError, positive_int

__all__ = ["add_parser", "format_report", "run"]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``evaluate`` with the ``deepcr-jax`` subparsers."""
    p = sub.add_parser(
        "evaluate",
        help="compare mask and inpainting models on stamps with known CR masks (e.g. a held-out field)",
        description=(
            "Score models side by side on labelled stamps: FITS stamps from `deepcr-jax stamps` (keep a field "
            "out of training), deepCR .npy pairs or simulated .npz datasets. Mask models: TPR at 0.05 %% and "
            "0.5 %% FPR (+- bootstrap standard error) and at the model's own threshold. Inpainters: MSE under "
            "another stamp's CR mask at the hidden pixels that are neither CRs nor ignored, with the ratio "
            "to the first inpainter and its 95 %% paired-bootstrap interval."
        ),
    )
    p.add_argument("stamps", nargs="+", metavar="STAMPS", help="stamp files, folders or globs (one kind of file)")
    p.add_argument("--model", action="append", default=[], metavar="NAME|NPZ",
                   help="a mask model to score (zoo name or .npz; repeat to compare)")
    p.add_argument("--inpaint", action="append", default=[], metavar="NAME|NPZ|medmask",
                   help="an inpainter to score (repeat to compare; the first is the reference of the ratios)")
    p.add_argument("--lacosmic", type=float, default=None, metavar="OBJLIM",
                   help="also score LACosmic (astroscrappy) with this objlim (the paper: 2 extragalactic, "
                        "3.5 globular, 5 resolved), one ROC point per sigclip")
    p.add_argument("--seed", type=int, default=0, help="seed of the borrowed masks and the bootstraps (default 0)")
    p.add_argument("--max-stamps", type=positive_int, default=None, metavar="N", help="score the first N stamps")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the full results as JSON (new file)")
    return p


def _pct(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{100 * x:.2f}"


def format_report(info: dict, detection: dict | None, inpainting: dict | None) -> str:
    """The results as the text table the command prints."""
    lines = [(f"stamps: {info['n_stamps']} of {info['shape'][0]}x{info['shape'][1]} from {info['source']}; "
             f"CR pixels {100 * info['cr_fraction']:.3f} %, ignored {100 * info['ignore_fraction']:.2f} %")]
    if detection:
        width = max(len(k) for k in detection) + 2
        lines += ["", "detection: TPR % at FPR (+- bootstrap SE); at the model's threshold: TPR % / FPR %",
                  f"{'':{width}}{'FPR 0.05 %':>16}{'FPR 0.5 %':>16}   own threshold"]
        for label, r in detection.items():
            cells = [f"{_pct(r['tpr'][k])} +- {_pct(r['tpr_se'][k])}" + ("*" if r["extrapolated"][k] else " ")
                     for k in ("0.0005", "0.005")]
            own = (f"{r['threshold']:.3g}: {_pct(r['tpr_at_threshold'])} / {_pct(r['fpr_at_threshold'])}"
                   if "threshold" in r else f"(objlim {r['objlim']:g}, sigclip sweep)")
            lines.append(f"{label:{width}}{cells[0]:>16}{cells[1]:>16}   {own}")
        if any(any(r["extrapolated"].values()) for r in detection.values()):
            lines.append("* outside the FPR range the ROC points span (extrapolated)")
    if inpainting:
        models = inpainting["models"]
        width = max(len(k) for k in models) + 2
        ref = next(iter(models))
        lines += ["", (f"inpainting under borrowed CR masks (seed {inpainting['seed']}, "
                      f"{inpainting['n_pixels']} scored pixels): MSE"),
                  f"{'':{width}}{'(100 e-)^2':>12}{'e-^2':>14}   ratio to {ref} [95 % interval]   top stamp"]
        for label, r in models.items():
            v = r.get("vs_first")
            ratio = f"{v['ratio']:.3f} [{v['ratio_lo']:.3f}, {v['ratio_hi']:.3f}]" if v else "1"
            lines.append(f"{label:{width}}{r['mse_paper_units']:>12.4g}{r['mse_e2']:>14.5g}   {ratio:<30}"
                         f"   #{r['top_stamp']} ({100 * r['top_share']:.0f} % of the error)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Load the stamps and the models, score them, print the tables (and write ``--json``)."""
    if not args.model and not args.inpaint and args.lacosmic is None:
        raise UserError("nothing to evaluate: give --model, --inpaint or --lacosmic")
    for option, given in (("--model", args.model), ("--inpaint", args.inpaint)):
        twice = sorted({m for m in given if given.count(m) > 1})
        if twice:
            raise UserError(f"{option} {twice[0]!r} given twice")
    if args.json is not None and os.path.lexists(args.json):
        raise UserError(f"--json {args.json!r} already exists")
    if args.lacosmic is not None and not (np.isfinite(args.lacosmic) and args.lacosmic > 0):
        raise UserError(f"--lacosmic OBJLIM must be > 0; got {args.lacosmic}")
    import deepcr_jax
    from deepcr_jax._atomic import atomic_path
    from deepcr_jax.evaluate.compare import compare_detection, compare_inpainting
    from deepcr_jax.training.data import load_files

    detectors = {m: deepcr_jax.load(m) for m in args.model}  # a bad name fails before the stamps are read
    inpainters = {m: deepcr_jax.load("ACS-WFC", inpaint=m) for m in args.inpaint}
    ds = load_files(args.stamps)
    n = len(ds) if args.max_stamps is None else min(args.max_stamps, len(ds))
    image, cr, ignore = ds.image[:n], ds.cr[:n], ds.ignore[:n]
    info = {"source": ds.provenance, "n_stamps": n, "shape": list(image.shape[1:]),
            "cr_fraction": float(cr[~ignore].mean()) if (~ignore).any() else 0.0,
            "ignore_fraction": float(ignore.mean())}
    detection = inpainting = None
    if args.model or args.lacosmic is not None:
        detection = compare_detection(image, cr, ignore, detectors, lacosmic_objlim=args.lacosmic)
    if args.inpaint:
        inpainting = compare_inpainting(image, cr, ignore, inpainters, seed=args.seed)
    print(format_report(info, detection, inpainting))
    if args.json is not None:
        with atomic_path(args.json, exclusive=True) as tmp, open(tmp, "w") as fh:
            json.dump({"stamps": info, "detection": detection, "inpainting": inpainting}, fh, indent=1)
        print(f"wrote {args.json}")
    return EXIT_OK
