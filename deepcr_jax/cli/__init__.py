"""The ``deepcr-jax`` command line.

::

    deepcr-jax demo                         # try it: clean a built-in simulated exposure
    deepcr-jax clean j8xi01abq_flc.fits     # writes j8xi01abq_flc_crmask.fits beside it
    deepcr-jax clean *_flc.fits --outdir cleaned/ --inpaint medmask
    deepcr-jax models                       # the model zoo
    deepcr-jax convert my_model.pth -o my_model.npz
    deepcr-jax stamps e1_flc.fits e2_flc.fits e3_flc.fits -o stamps/field1.fits   # your own training set
    deepcr-jax train --config mask_2_32.smoke --workdir runs/smoke
    deepcr-jax evaluate stamps/field9.fits --model ACS-WFC --model runs/ft/best.npz   # on a held-out field

Exit status: 0 on success, 2 on a usage error or bad input (missing file,
existing output, unknown model, a ``.pth`` that is not a deepCR network),
reported as one line on stderr without a traceback; 130 on Ctrl-C (SIGINT)
and 143 on SIGTERM, leaving no partial output (temporaries are removed).
Anything else is a bug and shows its traceback.

Each command is a module of this package with ``add_parser(subparsers)``
(registers its subcommand and options, returns the parser) and
``run(args) -> int`` (the exit status), listed in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Sequence

from deepcr_jax.cli import clean, convert, demo, evaluate, models, stamps, train
from deepcr_jax.cli._common import EXIT_USAGE, PROG, USER_ERRORS, error, one_line

__all__ = ["COMMANDS", "build_parser", "main"]

#: The subcommands, in the order ``--help`` lists them.
COMMANDS = (clean, demo, models, convert, stamps, train, evaluate)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``deepcr-jax``: one subcommand per module in :data:`COMMANDS`."""
    from deepcr_jax import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Cosmic-ray detection and inpainting for CCD images (deepCR in JAX).",
        epilog="Start with `deepcr-jax demo`; then `deepcr-jax clean your_flc.fits`.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub).set_defaults(func=command.run)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` (temporaries) runs; exit 143."""


def _terminate(signum, frame):
    raise Terminated(f"signal {signum}")


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
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        return int(args.func(args))
    except USER_ERRORS as err:
        error(one_line(err))
        return EXIT_USAGE
    except Terminated:
        error("terminated (SIGTERM); no partial output left")
        return 143
    except KeyboardInterrupt:
        error("interrupted; no partial output left")
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
