"""Input expansion for ``deepcr-jax clean``: files, directories (recursive) and quoted globs."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence

from deepcr_jax.cli._common import UserError

__all__ = ["FITS_NAMES", "Input", "expand_inputs", "output_paths"]

#: File names a directory input is searched for (case-insensitive).
FITS_NAMES = (".fits", ".fits.fz", ".fits.gz")


class Input(tuple):
    """``(path, subdir)``: a file to clean and its folder relative to the directory it was found in.

    ``subdir`` is None for a file named on the command line or by a glob;
    for a file found under a directory input it is the sub-folder path
    (``""`` at the top), mirrored under ``--outdir``.
    """

    __slots__ = ()

    def __new__(cls, path: str, subdir: str | None = None):
        return super().__new__(cls, (path, subdir))

    @property
    def path(self) -> str:
        """The input file."""
        return self[0]

    @property
    def subdir(self) -> str | None:
        """Its folder relative to a directory input (None: named directly)."""
        return self[1]


def _walk(directory: str) -> list[Input]:
    """FITS files under ``directory`` (recursive, sorted; hidden files and folders skipped)."""
    found = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = os.path.relpath(root, directory)
        for name in sorted(files):
            if not name.startswith(".") and name.lower().endswith(FITS_NAMES):
                found.append(Input(os.path.join(root, name), "" if rel == "." else rel))
    return found


def expand_inputs(items: Sequence[str]) -> tuple[list[Input], list[str]]:
    """The files ``items`` name, in order, each once; and notes on the duplicates dropped.

    An item is a file, a directory (searched recursively for ``*.fits``,
    ``*.fits.fz`` and ``*.fits.gz``) or a glob pattern the shell did not
    expand (``'data/*.fits'``, ``'**'`` recursive). Raises :class:`UserError`
    naming every item that is missing or matches nothing.
    """
    inputs: list[Input] = []
    problems: list[str] = []
    for item in items:
        if os.path.isdir(item):
            found = _walk(item)
            if not found:
                problems.append(
                    f"no FITS files ({', '.join('*' + s for s in FITS_NAMES)}) in directory {item}"
                )
            inputs += found
        elif os.path.isfile(item):
            inputs.append(Input(item))
        elif glob.has_magic(item):
            matches = sorted(glob.glob(item, recursive=True))
            files = [Input(m) for m in matches if os.path.isfile(m)]
            for m in matches:
                if os.path.isdir(m):
                    files += _walk(m)
            if not files:
                problems.append(f"no file matches {item}")
            inputs += files
        elif os.path.lexists(item):
            problems.append(f"not a regular file: {item}")
        else:
            problems.append(f"input file not found: {item}")
    if problems:
        raise UserError("; ".join(problems))
    unique: list[Input] = []
    seen: dict[str, str] = {}
    notes = []
    for inp in inputs:
        key = os.path.realpath(inp.path)
        if key in seen:
            notes.append(f"{inp.path} is the same file as {seen[key]}; cleaned once")
            continue
        seen[key] = inp.path
        unique.append(inp)
    return unique, notes


def output_paths(inputs: Sequence[Input], *, output, outdir, suffix: str) -> list[str]:
    """One output path per input (``-o``, else the default name beside it or under ``outdir``).

    A file found under a directory input keeps its sub-folder under
    ``outdir``. Two inputs that would be written to one output raise
    :class:`UserError`.
    """
    from deepcr_jax.files import default_output_path

    outputs = []
    for inp in inputs:
        if output is not None:
            outputs.append(os.fspath(output))
            continue
        where = outdir if outdir is None or not inp.subdir else os.path.join(outdir, inp.subdir)
        outputs.append(os.fspath(default_output_path(inp.path, suffix=suffix, outdir=where)))
    seen: dict[str, str] = {}
    for inp, out in zip(inputs, outputs):
        key = os.path.realpath(out)
        if key in seen:
            raise UserError(f"inputs {seen[key]!r} and {inp.path!r} would both be written to {out!r}")
        seen[key] = inp.path
    return outputs
