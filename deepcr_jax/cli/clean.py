"""``deepcr-jax clean IN.fits ...``: CR masks (and inpainting) for FITS files, one flagged copy each."""

from __future__ import annotations

import argparse
import math
import os
import time

from deepcr_jax.cli import demo
from deepcr_jax.cli._common import (
    EXIT_OK,
    EXIT_USAGE,
    USER_ERRORS,
    UserError,
    add_model_args,
    arg_type,
    bits,
    load_cleaner,
    one_line,
    positive_int,
)
from deepcr_jax.cli._inputs import Input, expand_inputs, output_paths
from deepcr_jax.cli._progress import Progress

__all__ = ["MANIFEST_NAME", "add_parser", "run"]

#: The manifest's file name under ``--outdir`` (or the working directory) with ``--workers``/``--scheduler``.
MANIFEST_NAME = "deepcr-jax-manifest.jsonl"

#: ``--saturation``: a positive level; ``inf`` means no level (DQ saturation flags still count).
saturation_level = arg_type(
    float, lambda v: v > 0 and not math.isnan(v), "a positive saturation level (e.g. 70000) or inf"
)

non_negative_int = arg_type(int, lambda v: v >= 0, "a non-negative integer")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``clean`` with the ``deepcr-jax`` subparsers."""
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
    p.add_argument(
        "inputs",
        nargs="*",
        metavar="IN",
        help="input FITS files, directories (searched recursively for *.fits, *.fits.fz, *.fits.gz) "
        "or quoted glob patterns",
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument("-o", "--output", metavar="OUT", help="output file (one input only)")
    out.add_argument(
        "--outdir",
        metavar="DIR",
        help="write <stem>_crmask.fits into DIR (created if missing; a directory input's sub-folders "
        "are mirrored there)",
    )
    out.add_argument(
        "--suffix",
        default=None,
        metavar="SUFFIX",
        help="output name <stem>SUFFIX.fits beside the input (default _crmask)",
    )
    add_model_args(p)
    p.add_argument(
        "--dq-flag", type=bits, default=None, metavar="BIT", help="DQ bit set at CR pixels (default 8192)"
    )
    p.add_argument(
        "--dq-ignore-bits",
        type=bits,
        default=None,
        metavar="BITS",
        help="DQ bits that make a pixel ignored (default: all but 256, 2048, 4096, 8192); 0: none",
    )
    p.add_argument(
        "--saturation",
        type=saturation_level,
        default=None,
        metavar="LEVEL",
        help="saturation level in the model's units, > 0 (default 70000 e-; inf: no level, DQ "
        "saturation flags still count)",
    )
    p.add_argument("--no-saturation", action="store_true", help="do not ignore saturated pixels")
    p.add_argument(
        "--units",
        choices=("auto", "as-is"),
        default="auto",
        help="auto (default): convert count rates (BUNIT .../S) to counts with EXPTIME; as-is: don't",
    )
    existing = p.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    existing.add_argument(
        "--skip-existing",
        action="store_true",
        help="keep an existing output made by this version with the same model, threshold and "
        "inpainter (report it as skipped): an interrupted run resumes",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="also clean inputs that are deepcr-jax outputs themselves (skipped with a warning otherwise)",
    )
    dist = p.add_argument_group(
        "many files",
        "one task per file on a Dask cluster (pip install 'deepcr-jax[dask]'), one compiled model per "
        "worker; a JSONL manifest makes the run resumable (rerun the same command after a kill). "
        "On GPUs run one worker per device (dask_cuda.LocalCUDACluster, or `dask worker ADDRESS "
        "--nthreads 1` per GPU with CUDA_VISIBLE_DEVICES) and pass --scheduler.",
    )
    where = dist.add_mutually_exclusive_group()
    where.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        metavar="N",
        help="start a local Dask cluster of N worker processes (CPU: cores // N threads each, one file "
        "in memory per worker)",
    )
    where.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="use the Dask cluster at ADDRESS (tcp://host:8786)",
    )
    dist.add_argument(
        "--manifest",
        default=None,
        metavar="PATH",
        help=f"append one JSON line per file as it finishes; files it records as done are skipped (default "
        f"with --workers/--scheduler: <outdir or cwd>/{MANIFEST_NAME}); implies --skip-existing unless "
        "--overwrite",
    )
    dist.add_argument(
        "--retries",
        type=non_negative_int,
        default=2,
        metavar="K",
        help="re-run a task that raised an unexpected error up to K times (default 2)",
    )
    p.add_argument("--example", action="store_true", help="ignore inputs; run the built-in demo instead")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    return p


def _check(args: argparse.Namespace) -> tuple[list[Input], list[str], list[str]]:
    """Refuse what cannot work before loading a model; returns (inputs, outputs, notes)."""
    if not args.inputs:
        raise UserError(
            "no input FITS files given (try `deepcr-jax demo` to see it work on a built-in example)"
        )
    if args.outdir is not None and os.path.exists(args.outdir) and not os.path.isdir(args.outdir):
        raise UserError(f"--outdir {args.outdir!r} exists and is not a directory")
    if args.suffix is not None and (os.sep in args.suffix or (os.altsep and os.altsep in args.suffix)):
        raise UserError(f"--suffix must not contain a path separator; got {args.suffix!r}")
    inputs, notes = expand_inputs(args.inputs)
    if args.output is not None and len(inputs) > 1:
        raise UserError(f"-o/--output takes one input; got {len(inputs)} inputs (use --outdir or --suffix)")
    suffix = "_crmask" if args.suffix is None else args.suffix
    outputs = output_paths(inputs, output=args.output, outdir=args.outdir, suffix=suffix)
    return inputs, outputs, notes


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


class _Cleaners(dict):
    """One loaded Cleaner per mask model name (``--model auto`` may need several)."""

    def __init__(self, args: argparse.Namespace):
        super().__init__()
        self.args = args

    def __missing__(self, model: str):
        self[model] = cleaner = load_cleaner(self.args, model)
        return cleaner


def _model_for(path: str, args: argparse.Namespace, progress: Progress) -> str:
    """``--model``, or with ``auto`` the zoo model for the file's INSTRUME/DETECTOR (warning on a fallback)."""
    if args.model != "auto":
        return args.model
    from astropy.io import fits

    from deepcr_jax.hst import model_for_instrument

    try:
        header = fits.getheader(path, 0)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read the primary header for --model auto: {err}") from None
    name, warning = model_for_instrument(header)
    if warning:
        progress.warn(f"{path}: {warning}")
    return name


def _clean_one(inp: Input, path_out: str, args, cleaners: _Cleaners, progress: Progress, settings) -> None:
    from deepcr_jax.files import clean_fits, made_by_deepcr_jax

    path_in = inp.path
    if _same_file(path_in, path_out):
        raise FileExistsError(
            f"output {path_out!r} is the input file; inputs are never overwritten (choose -o, --suffix or --outdir)"
        )
    if not args.force and made_by_deepcr_jax(path_in):
        progress.warn(
            f"{path_in}: skipped: it is a deepcr-jax output already (DCRVERS set); --force cleans it"
        )
        progress.done(None)
        return
    if os.path.lexists(path_out) and not (args.overwrite or args.skip_existing):
        raise FileExistsError(
            f"output {path_out!r} already exists; pass --overwrite to replace it or --skip-existing to keep it"
        )
    model = _model_for(path_in, args, progress)
    cleaner = cleaners[model]
    os.makedirs(os.path.dirname(os.path.abspath(path_out)), exist_ok=True)  # --outdir and its sub-folders
    t0 = time.perf_counter()
    try:
        summary = clean_fits(
            path_in,
            path_out,
            model=cleaner,
            threshold=args.threshold,
            overwrite=args.overwrite,
            skip_existing=args.skip_existing,
            **settings,
        )
    except FileExistsError:
        if args.skip_existing and os.path.lexists(path_out):
            raise FileExistsError(
                f"output {path_out!r} exists but was made with other settings or another deepcr-jax "
                "version; pass --overwrite to replace it"
            ) from None
        raise FileExistsError(
            f"output {path_out!r} already exists (it appeared while cleaning); pass --overwrite to replace it"
        ) from None
    if summary.skipped:
        progress.line(summary.format())
        progress.done(None)
        return
    progress.line(f"{summary.format()}\n  done in {time.perf_counter() - t0:.1f} s")
    progress.done(summary.n_cr)


def run(args: argparse.Namespace) -> int:
    """Clean every input with one loaded Cleaner per model; a failed file is reported and the rest go on."""
    if args.example:
        return demo.run(args)
    inputs, outputs, notes = _check(args)
    from deepcr_jax import hst

    level = hst.SATURATION_LEVEL if args.saturation is None else args.saturation
    settings = {
        "dq_flag": hst.DEFAULT_DQ_FLAG if args.dq_flag is None else args.dq_flag,
        "dq_ignore_bits": hst.DEFAULT_DQ_IGNORE_BITS if args.dq_ignore_bits is None else args.dq_ignore_bits,
        "saturation": None if args.no_saturation else level,
        "units": args.units,
    }
    if args.workers is not None or args.scheduler is not None or args.manifest is not None:
        return _run_batch(args, inputs, outputs, notes, settings)
    progress = Progress(len(inputs), quiet=args.quiet)
    try:
        for note in notes:
            progress.warn(note)
        cleaners = _Cleaners(args)
        if args.model != "auto":
            cleaners[args.model]
        for inp, path_out in zip(inputs, outputs):
            try:
                _clean_one(inp, path_out, args, cleaners, progress, settings)
            except USER_ERRORS as err:
                progress.fail(f"{inp.path}: {one_line(err)}")
        if len(inputs) > 1 or progress.skipped or progress.failed:
            progress.line(progress.summary())
    finally:
        progress.close()
    return EXIT_USAGE if progress.failed else EXIT_OK


# --------------------------------------------------------------------------
# --workers / --scheduler / --manifest: deepcr_jax.batch.clean_files


def _check_models(args: argparse.Namespace) -> None:
    """Refuse an unknown mask or inpainting model before starting workers (without loading weights)."""
    from deepcr_jax.zoo import list_models

    if args.model != "auto" and args.model not in list_models("mask") and not os.path.isfile(args.model):
        raise UserError(
            f"--model {args.model!r} is neither a mask zoo model ({', '.join(list_models('mask'))}), "
            "'auto', nor an existing .npz file"
        )
    names = ["medmask", *list_models("inpaint")]
    if args.inpaint is not None and args.inpaint not in names and not os.path.isfile(args.inpaint):
        raise UserError(f"--inpaint {args.inpaint!r} is neither {', '.join(names)} nor an existing .npz file")


def _connect(args: argparse.Namespace, progress: Progress):
    """(client, cluster): a new LocalCluster for ``--workers``, or the cluster at ``--scheduler`` (cluster None)."""
    try:
        from distributed import Client
    except ImportError:
        raise UserError(
            "--workers/--scheduler need dask and distributed: pip install 'deepcr-jax[dask]'"
        ) from None
    from deepcr_jax.batch import local_cluster

    if args.scheduler is not None:
        try:
            client = Client(args.scheduler, timeout="20s")
        except OSError as err:
            raise UserError(f"cannot reach the Dask scheduler at {args.scheduler}: {one_line(err)}") from None
        cluster = None
    else:
        cluster = local_cluster(args.workers)
        client = Client(cluster)
    import importlib.util

    n = len(client.scheduler_info().get("workers", {}))
    if importlib.util.find_spec("bokeh") is None:
        board = "no dashboard (pip install 'bokeh>=3.1' for one)"
    else:
        board = f"dashboard {client.dashboard_link}"
    progress.note(f"Dask cluster {client.scheduler.address}: {n} workers, {board}")
    return client, cluster


def _run_batch(args: argparse.Namespace, inputs, outputs, notes, settings) -> int:
    """Clean with :func:`deepcr_jax.batch.clean_files` (serial with only ``--manifest``); table at the end."""
    from deepcr_jax.batch import clean_files, format_table

    _check_models(args)
    manifest = args.manifest
    if manifest is None:
        manifest = os.path.join(args.outdir if args.outdir is not None else os.getcwd(), MANIFEST_NAME)
    progress = Progress(len(inputs), quiet=args.quiet, show_rate=True)
    client = cluster = None

    def report(r) -> None:
        if r.status == "failed":
            progress.fail(f"{r.path}: {r.error}")
            return
        if r.note and r.status == "cleaned":
            progress.warn(f"{r.path}: {r.note}")
        progress.done(r.n_cr if r.status == "cleaned" else None, r.n_pixels)
        if r.status == "cleaned":
            what = f"cleaned  CR {100 * (r.cr_fraction or 0.0):.3f}%  {r.seconds:.1f} s on {r.worker}"
        else:
            what = f"skipped: {r.note}"
        progress.line(f"{progress.position} {r.path} -> {r.output}  {what}  | {progress.rate()}")

    try:
        for note in notes:
            progress.warn(note)
        if args.workers is not None or args.scheduler is not None:
            client, cluster = _connect(args, progress)
        progress.t0 = t0 = time.perf_counter()
        results = clean_files(
            [inp.path for inp in inputs],
            outputs=outputs,
            model=args.model,
            threshold=args.threshold,
            inpaint=args.inpaint,
            overwrite=args.overwrite,
            skip_existing=args.skip_existing,
            force=args.force,
            client=client,
            manifest=manifest,
            retries=args.retries,
            progress=report,
            tile=args.tile,
            batch=args.batch,
            precision=args.precision,
            **settings,
        )
        progress.line(format_table(results, time.perf_counter() - t0))
        progress.line(f"{progress.summary()}; manifest {manifest}")
    finally:
        progress.close()
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    return EXIT_USAGE if progress.failed else EXIT_OK
