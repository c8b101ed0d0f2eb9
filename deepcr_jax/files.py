"""Clean FITS files: the per-file driver :func:`clean_fits` and its summaries.

One call reads every science chip of a file (:func:`deepcr_jax.fits.read_fits`:
electrons, DQ/saturation ignore masks), runs a :class:`deepcr_jax.Cleaner` on
each chip, and writes a flagged copy (:func:`deepcr_jax.fits.write_fits`).
The result, a :class:`FitsSummary`, formats as the report ``deepcr-jax
clean`` prints. Cleaners are reused: a loaded one is passed in, and a model
name gets the same cached Cleaner :func:`deepcr_jax.clean` uses, so a loop
over files compiles the network once.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from deepcr_jax import hst
from deepcr_jax._validate import check_threshold
from deepcr_jax.api import cached_cleaner
from deepcr_jax.fits import Chip, check_output, read_fits, write_fits

__all__ = [
    "ChipSummary",
    "FitsSummary",
    "clean_fits",
    "default_output_path",
    "made_by_deepcr_jax",
    "output_is_current",
]

_FITS_SUFFIXES = (".fits", ".fit", ".fts")
_COMPRESSED_SUFFIXES = (".fz", ".gz")


@dataclasses.dataclass(frozen=True)
class ChipSummary:
    """What :func:`clean_fits` did to one chip (counts are pixels).

    ``n_ignored`` counts all ignored pixels; ``n_dq``, ``n_saturated`` and
    ``n_nonfinite`` the reasons (a pixel may have several). ``bunit`` and
    ``unit_scale`` are the unit seen and the factor to electrons applied;
    ``dq_flagged`` tells whether the chip had a DQ array to flag.
    """

    label: str
    shape: tuple[int, int]
    n_cr: int
    n_ignored: int
    n_dq: int
    n_saturated: int
    n_nonfinite: int
    bunit: str
    unit_scale: float
    dq_flagged: bool

    @classmethod
    def of(cls, chip: Chip, mask: np.ndarray) -> ChipSummary:
        """The summary of ``chip`` (from :func:`~deepcr_jax.fits.read_fits`) with CR ``mask`` (ny, nx) bool."""
        return cls(
            label=chip.label,
            shape=(int(chip.image.shape[0]), int(chip.image.shape[1])),
            n_cr=int(np.count_nonzero(mask)),
            n_ignored=int(chip.ignore.sum()),
            n_dq=chip.n_dq,
            n_saturated=chip.n_saturated,
            n_nonfinite=chip.n_nonfinite,
            bunit=chip.bunit,
            unit_scale=chip.unit_scale,
            dq_flagged=chip.dq_index is not None,
        )

    @property
    def cr_fraction(self) -> float:
        """CR pixels over the pixels that were not ignored."""
        usable = self.shape[0] * self.shape[1] - self.n_ignored
        return self.n_cr / usable if usable else 0.0

    def format(self, dq_flag: int) -> str:
        """One report line: CR pixels, ignored pixels and their reasons, unit, DQ flag."""
        unit = self.bunit or "no BUNIT"
        if self.unit_scale != 1.0:
            unit += f" x {self.unit_scale:g}"
        extra = f"DQ |= {dq_flag}" if self.dq_flagged else "no DQ"
        return (
            f"  {self.label:<9} {self.shape[0]}x{self.shape[1]}  CR pixels {self.n_cr:>7,d} "
            f"({100 * self.cr_fraction:.3f}%)  ignored {self.n_ignored:>7,d} "
            f"(DQ {self.n_dq:,d}, saturated {self.n_saturated:,d}, non-finite {self.n_nonfinite:,d})  "
            f"[{unit}; {extra}]"
        )


@dataclasses.dataclass(frozen=True)
class FitsSummary:
    """Result of :func:`clean_fits`: where the output went and per-chip counts.

    ``skipped`` is True when ``skip_existing`` found an output made with the
    same settings (then ``chips`` is empty and nothing was written).
    """

    path_in: str
    path_out: str
    model: str
    threshold: float
    inpaint: str | None
    dq_flag: int
    chips: tuple[ChipSummary, ...]
    skipped: bool = False

    @property
    def n_cr(self) -> int:
        """CR pixels over all chips."""
        return sum(c.n_cr for c in self.chips)

    def format(self) -> str:
        """Human-readable multi-line report (what ``deepcr-jax clean`` prints)."""
        how = f"inpaint {self.inpaint}" if self.inpaint else "mask only"
        head = f"{self.path_in} -> {self.path_out}  (model {self.model}, threshold {self.threshold:g}, {how})"
        if self.skipped:
            return f"{head}  skipped: the output exists with these settings"
        return "\n".join([head] + [c.format(self.dq_flag) for c in self.chips])


def default_output_path(
    path_in: str | os.PathLike, *, suffix: str = "_crmask", outdir: str | os.PathLike | None = None
) -> Path:
    """Where :func:`clean_fits` and ``deepcr-jax clean`` write by default: ``<stem><suffix>.fits[.fz|.gz]``.

    ``stem`` is the input name without ``.fits``/``.fit``/``.fts`` and a
    trailing ``.fz`` or ``.gz``, which the output keeps (a gzip input gives
    a gzip output, a tile-compressed ``.fz`` a ``.fz``); the file goes
    beside the input, or into ``outdir``. ``j8xi01abq_flc.fits`` →
    ``j8xi01abq_flc_crmask.fits``; ``x.fits.fz`` → ``x_crmask.fits.fz``.
    """
    p = Path(path_in)
    name = p.name
    compressed = ""
    for ext in _COMPRESSED_SUFFIXES:
        if name.lower().endswith(ext):
            name, compressed = name[: -len(ext)], ext
            break
    for ext in _FITS_SUFFIXES:
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    directory = Path(outdir) if outdir is not None else p.parent
    return directory / f"{name}{suffix}.fits{compressed}"


def made_by_deepcr_jax(path: str | os.PathLike) -> bool:
    """Whether the primary header of FITS file ``path`` has deepcr-jax's ``DCRVERS`` card (one of its outputs)."""
    from astropy.io import fits

    try:
        return "DCRVERS" in fits.getheader(os.fspath(path), 0)
    except (OSError, ValueError, IndexError):
        return False


def output_is_current(
    path_out: str | os.PathLike, *, model: str, threshold: float, inpaint: str | None
) -> bool:
    """Whether ``path_out`` records this deepcr-jax version, mask model, threshold and inpainter.

    Reads the ``DCR*`` cards of its primary header (:func:`deepcr_jax.fits.provenance_cards`);
    False for a missing or unreadable file.
    """
    from astropy.io import fits

    from deepcr_jax.fits import provenance_cards

    try:
        header = fits.getheader(os.fspath(path_out), 0)
    except (OSError, ValueError, IndexError):
        return False
    want = provenance_cards(model=model, threshold=threshold, inpaint=inpaint)
    return all(header.get(key) == value for key, value, _ in want)


def _is_cleaner(model: Any) -> bool:
    return hasattr(model, "clean") and hasattr(model, "inpaint") and not isinstance(model, (str, os.PathLike))


def _cleaner_names(cleaner: Any) -> tuple[str, str | None]:
    """(mask model name, inpainter name or None) of a loaded Cleaner."""
    params = getattr(cleaner, "params", None)
    name = str(getattr(params, "name", None) or "custom")
    method = getattr(cleaner, "inpaint_method", None)
    if method == "network":
        return name, str(getattr(getattr(cleaner, "inpaint_params", None), "name", None) or "network")
    return name, method


def clean_fits(
    path_in: str | os.PathLike,
    path_out: str | os.PathLike | None = None,
    *,
    model: Any = "ACS-WFC",
    threshold: float | None = None,
    inpaint: str | None = None,
    dq_flag: int = hst.DEFAULT_DQ_FLAG,
    dq_ignore_bits: int = hst.DEFAULT_DQ_IGNORE_BITS,
    saturation: float | None = hst.SATURATION_LEVEL,
    units: str = "auto",
    tile: int | None = None,
    batch: int | None = None,
    overwrite: bool = False,
    skip_existing: bool = False,
) -> FitsSummary:
    """Detect (and optionally inpaint) cosmic rays in a FITS file; write a copy.

    Reads every science chip (:func:`~deepcr_jax.fits.read_fits`), cleans
    each with its ignore mask, and writes the CR masks as ``CRMASK``
    extensions and DQ flags (:func:`~deepcr_jax.fits.write_fits`).

    Parameters
    ----------
    path_in : str or path-like
        Input FITS file, e.g. an HST ACS/WFC ``_flc.fits`` (SCI in electrons).
        Never modified (unless it is also ``path_out`` and ``overwrite``).
    path_out : str or path-like, optional
        Output file; default :func:`default_output_path` (``<stem>_crmask.fits``
        beside the input).
    model : str, path-like or Cleaner, optional
        Zoo mask model name or a converted ``.npz`` (loaded once and cached
        across calls, as :func:`deepcr_jax.clean` does), or a loaded
        :class:`deepcr_jax.Cleaner` (then the inpainter, ``tile`` and
        ``batch`` are the cleaner's, and ``inpaint`` must be None or name the
        same inpainter). Default ``"ACS-WFC"``.
    threshold : float, optional
        CR probability threshold in [0, 1]; default the model's recommended.
    inpaint : str, optional
        ``"medmask"`` or an inpainting zoo model: CR pixels of SCI are
        replaced in the output. None (default): mask only.
    dq_flag : int, optional
        DQ bit set at CR pixels (default 8192).
    dq_ignore_bits, saturation, units
        See :func:`~deepcr_jax.fits.read_fits`.
    tile, batch : int, optional
        Engine settings (tile side, tiles per call), see :func:`deepcr_jax.load`.
    overwrite : bool, optional
        Allow replacing an existing output (or the input itself).
    skip_existing : bool, optional
        An existing output that records this version, model, threshold and
        inpainter (:func:`output_is_current`) is kept: nothing is cleaned
        and the summary has ``skipped=True``. One made otherwise is still
        refused (FileExistsError) unless ``overwrite``.

    Returns
    -------
    FitsSummary
        Output path, model, threshold and per-chip counts (CR pixels, ignored
        pixels).

    Raises
    ------
    FileNotFoundError, FileExistsError, ValueError
        Missing input, existing output, unknown model, bad arguments (e.g. a
        non-positive or NaN ``saturation``), an input that does not read
        completely. Nothing is written when any step fails.
    """
    path_in = os.fspath(path_in)
    if not os.path.isfile(path_in):
        raise FileNotFoundError(f"input FITS file {path_in!r} does not exist")
    path_out = os.fspath(path_out) if path_out is not None else os.fspath(default_output_path(path_in))
    hst.check_dq_flag(dq_flag)
    saturation = hst.check_saturation(saturation)
    if not (skip_existing and os.path.lexists(path_out)):
        check_output(path_in, path_out, overwrite)
    if _is_cleaner(model):
        cleaner = model
        model_name, inpainter = _cleaner_names(cleaner)
        if inpaint is not None and inpaint != inpainter:
            raise ValueError(
                f"inpaint={inpaint!r} cannot change a loaded Cleaner (it inpaints with {inpainter!r}); "
                "pass inpaint to deepcr_jax.load() instead"
            )
    else:
        cleaner = cached_cleaner(model, inpaint, tile, batch, "float32")
        model_name = os.fspath(model)
        inpainter = None if inpaint is None else os.fspath(inpaint)
    thr = float(cleaner.params.threshold) if threshold is None else check_threshold(threshold)
    if skip_existing and os.path.lexists(path_out) and not overwrite:
        if output_is_current(path_out, model=model_name, threshold=thr, inpaint=inpainter):
            return FitsSummary(path_in, path_out, model_name, thr, inpainter, int(dq_flag), (), skipped=True)
        raise FileExistsError(
            f"output {path_out!r} already exists and was made with other settings or another version "
            f"(want model {model_name}, threshold {thr:g}, inpaint {inpainter or 'none'}); "
            "pass overwrite=True to replace it"
        )
    chips = read_fits(path_in, dq_ignore_bits=dq_ignore_bits, saturation=saturation, units=units)
    masks, cleaned = [], []
    for chip in chips:
        result = cleaner.clean(
            chip.image, threshold=thr, binary=True, ignore=chip.ignore, cleaned=inpainter is not None
        )
        mask, clean = result if inpainter is not None else (result, None)
        masks.append(np.asarray(mask, bool))
        cleaned.append(None if clean is None else np.asarray(clean))
    out = write_fits(
        path_in,
        path_out,
        chips,
        masks,
        cleaned if inpainter is not None else None,
        dq_flag=dq_flag,
        meta={"model": model_name, "threshold": thr, "inpaint": inpainter},
        overwrite=overwrite,
    )
    return FitsSummary(
        path_in=path_in,
        path_out=os.fspath(out),
        model=model_name,
        threshold=thr,
        inpaint=inpainter,
        dq_flag=int(dq_flag),
        chips=tuple(ChipSummary.of(c, m) for c, m in zip(chips, masks)),
    )
