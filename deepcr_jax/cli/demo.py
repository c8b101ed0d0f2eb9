"""``deepcr-jax demo``: clean a built-in simulated exposure and score it against the known truth."""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from deepcr_jax.cli._common import EXIT_OK, UserError, add_model_args, load_cleaner

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``demo`` with the ``deepcr-jax`` subparsers."""
    p = sub.add_parser(
        "demo",
        help="clean a built-in simulated HST ACS/WFC exposure and score the result against the truth",
        description=(
            "Simulate a 512x512 HST ACS/WFC F606W exposure (electrons) with known cosmic rays, clean it, "
            "and report how many CR pixels were found (true- and false-positive rates)."
        ),
    )
    add_model_args(p)
    p.add_argument(
        "-o",
        "--output",
        metavar="OUT.fits",
        help="also write the image, CR mask and true CR mask to a FITS file",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT.fits")
    return p


def _rate(hits: int, total: int) -> float:
    return hits / total if total else float("nan")


def run(args: argparse.Namespace) -> int:
    """Simulate, clean (timing the first and a second call), print TPR/FPR and inpainting error."""
    from deepcr_jax.evaluate import confusion, inpaint_mse
    from deepcr_jax.simulate import example_image
    from deepcr_jax.zoo import MODELS

    output = getattr(args, "output", None)
    if output is not None and os.path.lexists(output) and not args.overwrite:
        raise UserError(f"output {output!r} already exists; pass --overwrite to replace it")
    cleaner = load_cleaner(args)
    spec = MODELS.get(args.model)
    about = f" (deepCR-{spec.kind} {spec.label}, {spec.arch.norm} norm)" if spec else ""
    threshold = cleaner.params.threshold if args.threshold is None else args.threshold

    t0 = time.perf_counter()
    ex = example_image()
    t_sim = time.perf_counter() - t0
    ny, nx = ex.image.shape
    print(
        f"Simulated HST ACS/WFC F606W exposure: {ny} x {nx} px, {ex.field} field, {ex.exptime:g} s, "
        f"sky {ex.sky:.0f} e-, read noise {ex.readnoise:g} e- ({t_sim:.1f} s)"
    )
    print(
        f"  {ex.n_cosmic_rays} cosmic-ray hits injected; {int((ex.cr_mask & ~ex.ignore).sum()):,d} true CR "
        f"pixels outside the {int(ex.ignore.sum()):,d} ignored (saturated) pixels"
    )
    print(f"Model {args.model}{about}, threshold {threshold:g}")

    inpaint = args.inpaint is not None
    t0 = time.perf_counter()
    result = cleaner.clean(ex.image, threshold=threshold, ignore=ex.ignore, cleaned=inpaint)
    mask, cleaned = result if inpaint else (result, None)
    t_clean = time.perf_counter() - t0
    t0 = time.perf_counter()
    cleaner.clean(ex.image, threshold=threshold, ignore=ex.ignore, cleaned=False)
    t_again = time.perf_counter() - t0

    tp, tn, fp, fn = confusion(mask, ex.cr_mask, ex.ignore)
    print(
        f"  cleaned in {t_clean:.2f} s (includes compiling the network; a second call took {t_again:.2f} s)"
    )
    print(f"  CR pixels flagged     {int(mask.sum()):>7,d}   (truth {tp + fn:,d})")
    print(
        f"  true-positive rate    {100 * _rate(tp, tp + fn):6.2f} %  ({tp:,d} of {tp + fn:,d} true CR pixels found)"
    )
    print(
        f"  false-positive rate   {100 * _rate(fp, fp + tn):6.3f} %  ({fp:,d} of {fp + tn:,d} CR-free pixels flagged)"
    )
    if cleaned is not None:
        before = np.sqrt(inpaint_mse(ex.image, ex.clean, ex.cr_mask, ex.ignore))
        after = np.sqrt(inpaint_mse(cleaned, ex.clean, ex.cr_mask, ex.ignore))
        print(
            f"  inpainting ({args.inpaint}): true CR pixels are off the CR-free image by {after:,.1f} e- rms "
            f"(were {before:,.1f} e- rms)"
        )
    if output is not None:
        _write(output, ex, mask, cleaned, args, threshold)
        print(f"  wrote {output} (SCI, CRMASK, TRUTH{', CLEAN' if cleaned is not None else ''})")
    print("Next: deepcr-jax clean your_flc.fits   (writes your_flc_crmask.fits; the input is left untouched)")
    return EXIT_OK


def _write(path, ex, mask, cleaned, args: argparse.Namespace, threshold: float) -> None:
    """The demo's FITS file: SCI (e-), CRMASK, TRUTH and, with inpainting, CLEAN."""
    from astropy.io import fits

    from deepcr_jax.fits import provenance_cards, write_hdulist

    primary = fits.PrimaryHDU()
    primary.header["ORIGIN"] = ("deepcr-jax demo", "simulated HST ACS/WFC F606W exposure")
    primary.header["EXPTIME"] = (float(ex.exptime), "seconds")
    for key, value, comment in provenance_cards(model=args.model, threshold=threshold, inpaint=args.inpaint):
        primary.header[key] = (value, comment)
    sci = fits.ImageHDU(ex.image, name="SCI", ver=1)
    sci.header["BUNIT"] = "ELECTRONS"
    hdus = [
        primary,
        sci,
        fits.ImageHDU(np.asarray(mask, np.uint8), name="CRMASK", ver=1),
        fits.ImageHDU(ex.cr_mask.astype(np.uint8), name="TRUTH", ver=1),
    ]
    if cleaned is not None:
        hdus.append(fits.ImageHDU(np.asarray(cleaned, np.float32), name="CLEAN", ver=1))
    write_hdulist(fits.HDUList(hdus), os.fspath(path), overwrite=args.overwrite)
