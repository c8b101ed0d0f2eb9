"""The ``deepcr-jax`` command line.

::

    deepcr-jax demo                         # try it: clean a built-in simulated exposure
    deepcr-jax clean j8xi01abq_flc.fits     # writes j8xi01abq_flc_crmask.fits beside it
    deepcr-jax clean *_flc.fits --outdir cleaned/ --inpaint medmask
    deepcr-jax models                       # the model zoo
    deepcr-jax convert my_model.pth -o my_model.npz

Exit status: 0 on success, 2 on a usage error or bad input (missing file,
existing output, unknown model, a ``.pth`` that is not a deepCR network),
reported as one line on stderr without a traceback. Anything else is a bug
and shows its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["build_parser", "main"]

PROG = "deepcr-jax"
EXIT_OK = 0
EXIT_USAGE = 2


class UserError(Exception):
    """A mistake in the command line or its inputs: one line on stderr, exit 2."""


def _err(msg: str) -> None:
    print(f"{PROG}: error: {msg}", file=sys.stderr)


def _one_line(err: BaseException, limit: int = 6) -> str:
    """An exception as one line; long lists of problems are cut to ``limit`` items."""
    parts = [p.strip() for p in str(err).splitlines() if p.strip()]
    if not parts:
        return type(err).__name__
    head, rest = parts[0], parts[1:]
    if len(rest) > limit:
        rest = rest[:limit] + [f"... and {len(rest) - limit} more"]
    return "; ".join([head.rstrip(":")] + rest) if rest else head


# user mistakes: reported without traceback
_USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    ValueError,
)


# --------------------------------------------------------------------------
# argument parsing


def _arg_type(convert, ok, expected: str):
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


_bits = _arg_type(lambda t: int(t, 0), lambda v: v >= 0, "a non-negative integer (e.g. 8192 or 0x2000)")
_positive_int = _arg_type(int, lambda v: v > 0, "a positive integer")
_probability = _arg_type(float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="ACS-WFC",
        help="mask model: a zoo name (see `deepcr-jax models`) or a converted .npz (default ACS-WFC)",
    )
    p.add_argument(
        "--threshold",
        type=_probability,
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
    p.add_argument("--tile", type=_positive_int, default=None, help="tile side in pixels (multiple of 8)")
    p.add_argument("--batch", type=_positive_int, default=None, help="tiles per network call")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``deepcr-jax`` (subcommands clean, demo, models, convert)."""
    from deepcr_jax import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Cosmic-ray detection and inpainting for CCD images (deepCR in JAX).",
        epilog="Start with `deepcr-jax demo`; then `deepcr-jax clean your_flc.fits`.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "clean",
        help="find cosmic rays in FITS files; write a copy with CRMASK extensions and DQ flags",
        description=(
            "Find cosmic rays in each science chip (EXTNAME=SCI; else the first 2-D image) of each file "
            "and write a copy with a CRMASK extension per chip (uint8, 1 = CR), the CRs OR'ed into DQ with "
            "--dq-flag, and with --inpaint the CR pixels of SCI replaced. Inputs are never modified. "
            "HST ACS/WFC _flc files (electrons) suit the default model. DQ-flagged bad pixels (all bits "
            "but saturation and CR), saturated stars (>= 70000 e-, grown 7x7) and NaN/inf are ignored."
        ),
    )
    p.add_argument("inputs", nargs="*", metavar="IN.fits", help="input FITS files")
    out = p.add_mutually_exclusive_group()
    out.add_argument("-o", "--output", metavar="OUT", help="output file (one input only)")
    out.add_argument("--outdir", metavar="DIR", help="write <stem>_crmask.fits into DIR (must exist)")
    out.add_argument(
        "--suffix",
        default=None,
        metavar="SUFFIX",
        help="output name <stem>SUFFIX.fits beside the input (default _crmask)",
    )
    _add_model_args(p)
    p.add_argument(
        "--dq-flag", type=_bits, default=None, metavar="BIT", help="DQ bit set at CR pixels (default 8192)"
    )
    p.add_argument(
        "--dq-ignore-bits",
        type=_bits,
        default=None,
        metavar="BITS",
        help="DQ bits that make a pixel ignored (default: all but 256, 2048, 4096, 8192); 0: none",
    )
    p.add_argument(
        "--saturation",
        type=float,
        default=None,
        metavar="LEVEL",
        help="saturation level in the model's units (default 70000 e-)",
    )
    p.add_argument("--no-saturation", action="store_true", help="do not ignore saturated pixels")
    p.add_argument(
        "--units",
        choices=("auto", "as-is"),
        default="auto",
        help="auto (default): convert count rates (BUNIT .../S) to counts with EXPTIME; as-is: don't",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--example", action="store_true", help="ignore inputs; run the built-in demo instead")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=_cmd_clean)

    p = sub.add_parser(
        "demo",
        help="clean a built-in simulated HST ACS/WFC exposure and score the result against the truth",
        description=(
            "Simulate a 512x512 HST ACS/WFC F606W exposure (electrons) with known cosmic rays, clean it, "
            "and report how many CR pixels were found (true- and false-positive rates)."
        ),
    )
    _add_model_args(p)
    p.add_argument(
        "-o",
        "--output",
        metavar="OUT.fits",
        help="also write the image, CR mask and true CR mask to a FITS file",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT.fits")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("models", help="list the model zoo", description="List the models deepcr-jax ships.")
    p.add_argument("--kind", choices=("mask", "inpaint"), default=None, help="only this kind")
    p.set_defaults(func=_cmd_models)

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
    p.add_argument("--threshold", type=_probability, default=0.5, help="recommended threshold (default 0.5)")
    p.add_argument(
        "--standardize",
        action="store_true",
        help="the network was trained on mean/std-standardised images (as deepCR's WFC3-UVIS)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=_cmd_convert)
    return parser


# --------------------------------------------------------------------------
# commands


def _load_cleaner(args: argparse.Namespace):
    from deepcr_jax import load

    return load(args.model, inpaint=args.inpaint, tile=args.tile, batch=args.batch)


def _output_for(args: argparse.Namespace, path_in: str) -> str:
    from deepcr_jax.fits import default_output_path

    if args.output is not None:
        return args.output
    suffix = "_crmask" if args.suffix is None else args.suffix
    return os.fspath(default_output_path(path_in, suffix=suffix, outdir=args.outdir))


def _cmd_clean(args: argparse.Namespace) -> int:
    if args.example:
        return _cmd_demo(args)
    if not args.inputs:
        raise UserError(
            "no input FITS files given (try `deepcr-jax demo` to see it work on a built-in example)"
        )
    if args.output is not None and len(args.inputs) > 1:
        raise UserError(
            f"-o/--output takes one input; got {len(args.inputs)} inputs (use --outdir or --suffix)"
        )
    if args.outdir is not None and not os.path.isdir(args.outdir):
        raise UserError(f"--outdir {args.outdir!r} is not an existing directory")
    if args.suffix is not None and (os.sep in args.suffix or (os.altsep and os.altsep in args.suffix)):
        raise UserError(f"--suffix must not contain a path separator; got {args.suffix!r}")
    missing = [p for p in args.inputs if not os.path.isfile(p)]
    if missing:
        raise UserError(f"input file not found: {', '.join(missing)}")
    from deepcr_jax.fits import DEFAULT_DQ_FLAG, DEFAULT_DQ_IGNORE_BITS, SATURATION_LEVEL, clean_fits

    outputs = [_output_for(args, p) for p in args.inputs]
    seen: dict[str, str] = {}
    for p, o in zip(args.inputs, outputs):
        key = os.path.realpath(o)
        if key in seen:
            raise UserError(f"inputs {seen[key]!r} and {p!r} would both be written to {o!r}")
        seen[key] = p
    cleaner = _load_cleaner(args)
    saturation = (
        None if args.no_saturation else (SATURATION_LEVEL if args.saturation is None else args.saturation)
    )
    failed = 0
    t_all = time.perf_counter()
    for path_in, path_out in zip(args.inputs, outputs):
        t0 = time.perf_counter()
        try:
            summary = clean_fits(
                path_in,
                path_out,
                model=cleaner,
                threshold=args.threshold,
                dq_flag=DEFAULT_DQ_FLAG if args.dq_flag is None else args.dq_flag,
                dq_ignore_bits=DEFAULT_DQ_IGNORE_BITS if args.dq_ignore_bits is None else args.dq_ignore_bits,
                saturation=saturation,
                units=args.units,
                overwrite=args.overwrite,
            )
        except _USER_ERRORS as err:
            _err(f"{path_in}: {_one_line(err)}")
            failed += 1
            continue
        if not args.quiet:
            print(f"{summary.format()}\n  done in {time.perf_counter() - t0:.1f} s")
    if not args.quiet and len(args.inputs) > 1:
        print(
            f"{len(args.inputs) - failed} of {len(args.inputs)} files cleaned in {time.perf_counter() - t_all:.1f} s"
        )
    return EXIT_USAGE if failed else EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    import numpy as np

    try:
        from deepcr_jax.simulate import example_image
    except ImportError as err:  # pragma: no cover - the simulator ships with the package
        raise UserError(f"the built-in example needs deepcr_jax.simulate: {err}") from None
    from deepcr_jax.metrics import confusion
    from deepcr_jax.zoo import MODELS

    output = getattr(args, "output", None)
    if output is not None and os.path.lexists(output) and not args.overwrite:
        raise UserError(f"output {output!r} already exists; pass --overwrite to replace it")
    cleaner = _load_cleaner(args)
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
        f"  {ex.n_cosmic_rays} cosmic-ray hits injected; {int((ex.cr_mask & ~ex.ignore).sum()):,d} true CR pixels "
        f"outside the {int(ex.ignore.sum()):,d} ignored (saturated) pixels"
    )
    print(f"Model {args.model}{about}, threshold {threshold:g}")

    t0 = time.perf_counter()
    result = cleaner.clean(
        ex.image, threshold=args.threshold, ignore=ex.ignore, inpaint=args.inpaint is not None
    )
    mask, cleaned = result if args.inpaint is not None else (result, None)
    t_clean = time.perf_counter() - t0
    t0 = time.perf_counter()
    cleaner.clean(ex.image, threshold=args.threshold, ignore=ex.ignore, cleaned=False)
    t_again = time.perf_counter() - t0

    tp, tn, fp, fn = confusion(mask, ex.cr_mask, ex.ignore)
    tpr = tp / (tp + fn) if tp + fn else float("nan")
    fpr = fp / (fp + tn) if fp + tn else float("nan")
    print(
        f"  cleaned in {t_clean:.2f} s (includes compiling the network; a second call took {t_again:.2f} s)"
    )
    print(f"  CR pixels flagged     {int(mask.sum()):>7,d}   (truth {tp + fn:,d})")
    print(f"  true-positive rate    {100 * tpr:6.2f} %  ({tp:,d} of {tp + fn:,d} true CR pixels found)")
    print(f"  false-positive rate   {100 * fpr:6.3f} %  ({fp:,d} of {fp + tn:,d} CR-free pixels flagged)")
    if cleaned is not None:
        sel = ex.cr_mask & ~ex.ignore
        before = float(np.sqrt(np.mean((ex.image[sel] - ex.clean[sel]) ** 2))) if sel.any() else 0.0
        after = float(np.sqrt(np.mean((cleaned[sel] - ex.clean[sel]) ** 2))) if sel.any() else 0.0
        print(
            f"  inpainting ({args.inpaint}): true CR pixels are off the CR-free image by {after:,.1f} e- rms "
            f"(were {before:,.1f} e- rms)"
        )
    if output is not None:
        _write_demo(output, ex, mask, cleaned, args, threshold)
        print(f"  wrote {output} (SCI, CRMASK, TRUTH{', CLEAN' if cleaned is not None else ''})")
    print("Next: deepcr-jax clean your_flc.fits   (writes your_flc_crmask.fits; the input is left untouched)")
    return EXIT_OK


def _write_demo(path, ex, mask, cleaned, args, threshold) -> None:
    import numpy as np
    from astropy.io import fits

    from deepcr_jax import __version__
    from deepcr_jax.fits import _atomic_writeto

    primary = fits.PrimaryHDU()
    primary.header["ORIGIN"] = ("deepcr-jax demo", "simulated HST ACS/WFC F606W exposure")
    primary.header["EXPTIME"] = (float(ex.exptime), "seconds")
    primary.header["DCRVERS"] = (__version__, "deepcr-jax version")
    primary.header["DCRMODEL"] = (str(args.model)[-68:], "deepcr-jax CR mask model")
    primary.header["DCRTHRSH"] = (float(threshold), "CR probability threshold")
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
    _atomic_writeto(fits.HDUList(hdus), os.fspath(path))


def _cmd_models(args: argparse.Namespace) -> int:
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
        "deepcr_jax.zoo). Models see image / scale."
    )
    return EXIT_OK


def _cmd_convert(args: argparse.Namespace) -> int:
    import numpy as np

    src = args.pth
    if not os.path.isfile(src):
        raise UserError(f"input file not found: {src}")
    out = args.output if args.output is not None else os.fspath(Path(src).with_suffix(".npz"))
    if not out.endswith(".npz"):
        raise UserError(f"output must end in .npz (it is read as a deepcr-jax model by suffix); got {out!r}")
    if os.path.realpath(out) == os.path.realpath(src):
        raise UserError(f"output {out!r} is the input file")
    if os.path.lexists(out) and not args.overwrite:
        raise UserError(f"output {out!r} already exists; pass --overwrite to replace it")
    if not (np.isfinite(args.scale) and args.scale > 0):
        raise UserError(f"--scale must be a positive number; got {args.scale}")
    from deepcr_jax.convert import convert_state_dict, load_torch_state_dict
    from deepcr_jax.weights import model_meta, save_npz, sha256_file

    try:
        sd = load_torch_state_dict(src)
    except ImportError as err:
        raise UserError(_one_line(err)) from None
    except Exception as err:  # noqa: BLE001 - torch's unpickler raises many kinds on a file that is not a state dict
        raise UserError(
            f"{src}: cannot read as a PyTorch state dict ({type(err).__name__}: {_one_line(err)})"
        ) from None
    try:
        variables, arch = convert_state_dict(sd)
    except ValueError as err:
        raise UserError(f"{src}: {_one_line(err)}") from None
    kind = arch.kind
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
        f"  {kind} network, depth {arch.depth}, hidden {arch.hidden} ({arch.depth}-{arch.hidden}), "
        f"inputs {arch.in_channels}, {arch.norm} norm, {arch.head} head"
    )
    print(
        f"  scale {args.scale:g}, threshold {args.threshold:g}, standardize {'yes' if args.standardize else 'no'}"
    )
    if kind == "mask":
        print(f"Use it: deepcr-jax clean IN.fits --model {out}   or   deepcr_jax.clean(image, model={out!r})")
    else:
        print(f"Use it: deepcr-jax clean IN.fits --inpaint {out}")
    return EXIT_OK


# --------------------------------------------------------------------------
# entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``deepcr-jax`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse: --help/--version (0) or a usage error (2)
        return int(exit_.code or 0)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    from deepcr_jax.engine import tune_host_allocator

    tune_host_allocator()  # this process only cleans: keep XLA's freed buffers (see its doc)
    try:
        return int(args.func(args))
    except _USER_ERRORS as err:
        _err(_one_line(err))
        return EXIT_USAGE
    except KeyboardInterrupt:
        _err("interrupted")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
