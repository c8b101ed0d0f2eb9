"""FITS input/output: clean HST ``_flc`` files (and other CCD frames) in place of arrays.

Reading
-------
:func:`read_fits` picks the science arrays of a file: every ``EXTNAME='SCI'``
image extension (ACS/WFC ``_flc`` files have two chips, ``SCI,1`` and
``SCI,2``), else the primary HDU if it holds a 2-D image, else the first 2-D
image extension. For each it returns a float32 copy of the data, a copy of its
header and an ``ignore`` mask (True = do not use this pixel) built from

* the matching ``DQ`` extension (same ``EXTVER``), following the deepCR paper
  (Zhang & Bloom 2020, sec. 2.3): every DQ flag is a bad pixel **except** the
  saturation flags (256 full-well, 2048 A/D) and the cosmic-ray flags (4096,
  8192 and the flag this module writes). See :data:`DEFAULT_DQ_IGNORE_BITS`.
* a saturation mask, again as in the paper: pixels at or above
  ``saturation`` (70000 e-) *or* flagged saturated in DQ, grown by a 7x7 box
  so the wings and bleed trails of saturated stars are not taken for CRs;
* non-finite pixels (NaN, inf).

Cosmic-ray flags already in the DQ array (from calacs' CR-SPLIT rejection or
AstroDrizzle) are *not* ignored: the network should see those pixels and
re-detect them.

Units
-----
The zoo's HST models expect electrons (the unit of ACS and WFC3/UVIS ``_flc``
SCI arrays, ``BUNIT='ELECTRONS'``). With ``units="auto"`` (default) a count
*rate* (``BUNIT`` ending in ``/S``, e.g. ``ELECTRONS/S`` of drizzled or IR
products) is multiplied by the exposure time (``EXPTIME``, from the SCI or
the primary header) before detection, and the cleaned image is divided by it
again, so outputs stay in the file's units; a rate without a usable
``EXPTIME`` is an error. Any other or missing ``BUNIT`` is used as is. The
unit seen and the factor applied are recorded per chip (:class:`ChipSummary`
and the ``DCRUNITS``/``DCRUSCAL`` keywords). ``units="as-is"`` switches the
conversion off.

Writing
-------
The output is a copy of the input (every HDU and header preserved) with, per
chip,

* a ``CRMASK`` image extension (uint8, 1 = cosmic ray, ``EXTVER`` = the
  chip's ``EXTVER``, WCS keywords copied from SCI), replacing a ``CRMASK``
  of the same ``EXTVER`` already in the file;
* the CR mask OR'ed into the chip's ``DQ`` array with bit ``dq_flag``
  (default 8192; ACS itself uses 4096 for AstroDrizzle's CRs and 8192 for
  CR-SPLIT rejection), if the chip has a DQ extension;
* with inpainting, the SCI data replaced by the cleaned image -- only at
  CR-mask pixels; ignored pixels (bad, saturated, non-finite) keep their input
  values, since DQ already flags them;
* ``HISTORY`` cards and ``DCR*`` keywords (model, threshold, inpainting,
  DQ bit, deepcr-jax version) in the primary header and the CRMASK headers.

The input is never modified. An existing output, or an output that is the
input itself, is refused unless ``overwrite=True``. Outputs are written to a
temporary file in the destination directory and renamed into place
(``os.replace``), so a failure leaves no partial file behind.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

__all__ = [
    "DEFAULT_DQ_FLAG",
    "DEFAULT_DQ_IGNORE_BITS",
    "DQ_CR_BITS",
    "DQ_SATURATION_BITS",
    "SATURATION_GROW",
    "SATURATION_LEVEL",
    "Chip",
    "ChipSummary",
    "FitsSummary",
    "clean_fits",
    "default_output_path",
    "read_fits",
    "write_fits",
]

#: ACS/WFC3 DQ bits for saturation: 256 (full well) and 2048 (A/D converter).
DQ_SATURATION_BITS = 256 | 2048
#: ACS/WFC3 DQ bits for cosmic rays: 4096 (AstroDrizzle) and 8192 (CR-SPLIT rejection).
DQ_CR_BITS = 4096 | 8192
#: DQ bits that make a pixel ignored: all 16 bits except saturation and cosmic rays.
DEFAULT_DQ_IGNORE_BITS = 0xFFFF & ~DQ_SATURATION_BITS & ~DQ_CR_BITS
#: DQ bit this module sets at CR-mask pixels.
DEFAULT_DQ_FLAG = 8192
#: Saturation level in electrons (deepCR paper: 70000 e-).
SATURATION_LEVEL = 70000.0
#: Side of the box the saturation mask is grown by (deepCR paper: 7x7).
SATURATION_GROW = 7

_FITS_SUFFIXES = (".fits", ".fit", ".fts")
_WCS_KEY = re.compile(
    r"^(WCSAXES|WCSNAME|RADESYS|EQUINOX|LONPOLE|LATPOLE|MJDREF|"
    r"CRPIX\d|CRVAL\d|CTYPE\d|CUNIT\d|CDELT\d|CROTA\d|CD\d_\d|PC\d_\d|"
    r"A_ORDER|B_ORDER|AP_ORDER|BP_ORDER|A_\d_\d|B_\d_\d|AP_\d_\d|BP_\d_\d)$"
)
_UNITS = ("auto", "as-is")


# --------------------------------------------------------------------------
# results


@dataclasses.dataclass
class Chip:
    """One science array read from a FITS file.

    Attributes
    ----------
    index : int
        Position of the science HDU in the file.
    extname : str
        Its ``EXTNAME`` (``"PRIMARY"`` for the primary HDU).
    extver : int
        Its ``EXTVER`` (1 when absent); the CRMASK written for it gets the same.
    image : ndarray, (ny, nx), float32
        The science data in the units the model sees (electrons for HST
        ``_flc``; rates converted, see ``unit_scale``). A copy.
    ignore : ndarray, (ny, nx), bool
        True = do not use this pixel (DQ bad pixel, saturated, or non-finite).
    header : astropy.io.fits.Header
        A copy of the science HDU's header.
    dq_index : int or None
        Position of the matching ``DQ`` extension, None if there is none.
    bunit : str
        ``BUNIT`` of the science HDU ('' when absent).
    unit_scale : float
        Factor the file's data were multiplied by to give ``image`` (the
        exposure time for count rates, else 1).
    n_dq : int
        Pixels ignored because of their DQ bad-pixel flags.
    n_saturated : int
        Pixels ignored as saturated (grown saturation mask).
    n_nonfinite : int
        NaN or infinite pixels.
    """

    index: int
    extname: str
    extver: int
    image: np.ndarray
    ignore: np.ndarray
    header: fits.Header
    dq_index: int | None
    bunit: str
    unit_scale: float
    n_dq: int
    n_saturated: int
    n_nonfinite: int

    @property
    def label(self) -> str:
        """``EXTNAME,EXTVER`` as astropy and IRAF write it (``SCI,1``)."""
        return f"{self.extname},{self.extver}"


@dataclasses.dataclass(frozen=True)
class ChipSummary:
    """What :func:`clean_fits` did to one chip (counts are pixels)."""

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

    @property
    def cr_fraction(self) -> float:
        """CR pixels over the pixels that were not ignored."""
        usable = self.shape[0] * self.shape[1] - self.n_ignored
        return self.n_cr / usable if usable else 0.0


@dataclasses.dataclass(frozen=True)
class FitsSummary:
    """Result of :func:`clean_fits`: where the output went and per-chip counts."""

    path_in: str
    path_out: str
    model: str
    threshold: float
    inpaint: str | None
    dq_flag: int
    chips: tuple[ChipSummary, ...]

    @property
    def n_cr(self) -> int:
        """CR pixels over all chips."""
        return sum(c.n_cr for c in self.chips)

    def format(self) -> str:
        """Human-readable multi-line report (what ``deepcr-jax clean`` prints)."""
        how = f"inpaint {self.inpaint}" if self.inpaint else "mask only"
        lines = [
            f"{self.path_in} -> {self.path_out}  (model {self.model}, threshold {self.threshold:g}, {how})"
        ]
        for c in self.chips:
            unit = c.bunit or "no BUNIT"
            if c.unit_scale != 1.0:
                unit += f" x {c.unit_scale:g}"
            extra = f"DQ |= {self.dq_flag}" if c.dq_flagged else "no DQ"
            lines.append(
                f"  {c.label:<9} {c.shape[0]}x{c.shape[1]}  CR pixels {c.n_cr:>7,d} "
                f"({100 * c.cr_fraction:.3f}%)  ignored {c.n_ignored:>7,d} "
                f"(DQ {c.n_dq:,d}, saturated {c.n_saturated:,d}, non-finite {c.n_nonfinite:,d})  "
                f"[{unit}; {extra}]"
            )
        return "\n".join(lines)


# --------------------------------------------------------------------------
# reading


def _dilate_box(mask: np.ndarray, size: int) -> np.ndarray:
    """Binary dilation by a ``size`` x ``size`` box (separable, edges clipped)."""
    out = mask.copy()
    r = size // 2
    if r == 0 or not mask.any():
        return out
    for axis in (0, 1):
        src = out.copy()
        n = src.shape[axis]
        for s in range(1, min(r, n - 1) + 1):
            lo = [slice(None)] * 2
            hi = [slice(None)] * 2
            lo[axis], hi[axis] = slice(s, None), slice(None, -s)
            out[tuple(lo)] |= src[tuple(hi)]
            out[tuple(hi)] |= src[tuple(lo)]
    return out


def _is_2d_image(hdu: Any) -> bool:
    return (
        isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)) and hdu.header.get("NAXIS") == 2
    )


def _science_indices(hdul: fits.HDUList) -> list[int]:
    sci = [i for i, h in enumerate(hdul) if h.name.upper() == "SCI" and _is_2d_image(h)]
    if sci:
        return sci
    return [i for i, h in enumerate(hdul) if _is_2d_image(h)][:1]


def _dq_array(hdu: Any, shape: tuple[int, int]) -> np.ndarray:
    """DQ data, expanding HST's header-only constant arrays (``PIXVALUE``)."""
    if hdu.header.get("NAXIS", 0) == 0 and "PIXVALUE" in hdu.header:
        return np.full(shape, int(hdu.header["PIXVALUE"]), np.int64)
    data = hdu.data
    if data is None or data.shape != shape:
        got = None if data is None else data.shape
        raise ValueError(f"DQ extension {hdu.name},{hdu.ver} must have the SCI shape {shape}; got {got}")
    if not np.issubdtype(data.dtype, np.integer):
        raise ValueError(f"DQ extension {hdu.name},{hdu.ver} must hold integers; got dtype {data.dtype}")
    return np.asarray(data, np.int64)


def _find(hdul: fits.HDUList, name: str, ver: int) -> int | None:
    for i, h in enumerate(hdul):
        if h.name.upper() == name and h.ver == ver:
            return i
    return None


def _exptime(header: fits.Header, primary: fits.Header) -> float | None:
    for h in (header, primary):
        value = h.get("EXPTIME")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return float(value)
    return None


def _unit_scale(bunit: str, header: fits.Header, primary: fits.Header, units: str, where: str) -> float:
    if units == "as-is":
        return 1.0
    u = bunit.strip().upper().replace(" ", "")
    if u.endswith(("/S", "/SEC", "S-1", "/SECOND")):
        exptime = _exptime(header, primary)
        if exptime is None:
            raise ValueError(
                f"{where}: BUNIT {bunit!r} is a count rate and the models expect electrons, "
                "but there is no positive EXPTIME to convert with; pass units='as-is' "
                "(CLI: --units as-is) to use the data unconverted"
            )
        return exptime
    return 1.0


def _check_bits(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer bit mask; got {value!r}")
    return int(value)


def read_fits(
    path: str | os.PathLike,
    *,
    dq_ignore_bits: int = DEFAULT_DQ_IGNORE_BITS,
    saturation: float | None = SATURATION_LEVEL,
    saturation_grow: int = SATURATION_GROW,
    units: str = "auto",
) -> list[Chip]:
    """Read the science arrays of a FITS file with their ignore masks.

    Parameters
    ----------
    path : str or path-like
        A FITS file, e.g. an HST ACS/WFC ``_flc.fits`` (two chips).
    dq_ignore_bits : int, optional
        DQ bits that make a pixel ignored. Default
        :data:`DEFAULT_DQ_IGNORE_BITS`: all but saturation (256, 2048) and
        cosmic rays (4096, 8192). 0 ignores nothing from DQ.
    saturation : float or None, optional
        Pixels at or above this level (in the model's units, electrons for
        HST) are saturated; so are pixels with DQ bits 256 or 2048. The
        saturated pixels, grown by a ``saturation_grow`` box, are ignored.
        None switches saturation masking off (DQ saturation flags included).
    saturation_grow : int, optional
        Odd side of the growing box (default 7, as the deepCR paper).
    units : {"auto", "as-is"}, optional
        ``"auto"`` converts count rates (``BUNIT`` ending in ``/S``) to counts
        with ``EXPTIME``; ``"as-is"`` uses the data unconverted.

    Returns
    -------
    list of Chip
        One per science array, in file order; ``image`` is ``(ny, nx)``
        float32, ``ignore`` ``(ny, nx)`` bool (True = do not use).

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        No 2-D image in the file, a DQ array of the wrong shape, or a count
        rate without ``EXPTIME``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"input FITS file {path!r} does not exist")
    dq_ignore_bits = _check_bits("dq_ignore_bits", dq_ignore_bits)
    if units not in _UNITS:
        raise ValueError(f"units must be 'auto' or 'as-is'; got {units!r}")
    if (
        isinstance(saturation_grow, bool)
        or not isinstance(saturation_grow, (int, np.integer))
        or (saturation_grow < 1 or saturation_grow % 2 == 0)
    ):
        raise ValueError(f"saturation_grow must be a positive odd integer; got {saturation_grow!r}")
    try:
        hdul = fits.open(path, memmap=False)
    except OSError as err:
        raise ValueError(f"{path!r} is not a readable FITS file: {err}") from err
    with hdul:
        indices = _science_indices(hdul)
        if not indices:
            raise ValueError(
                f"{path!r} holds no 2-D image (looked for SCI extensions, then any 2-D image HDU)"
            )
        primary = hdul[0].header
        chips = []
        for i in indices:
            hdu = hdul[i]
            extname = hdu.name.upper() or ("PRIMARY" if i == 0 else f"HDU{i}")
            where = f"{path}[{extname},{hdu.ver}]"
            bunit = str(hdu.header.get("BUNIT", "") or "")
            scale = _unit_scale(bunit, hdu.header, primary, units, where)
            image = np.array(hdu.data, dtype=np.float32)
            if scale != 1.0:
                image *= np.float32(scale)
            nonfinite = ~np.isfinite(image)
            ignore = nonfinite.copy()
            dq_index = _find(hdul, "DQ", hdu.ver) if extname == "SCI" else None
            saturated = np.zeros(image.shape, bool)
            n_dq = 0
            if dq_index is not None:
                dq = _dq_array(hdul[dq_index], image.shape)
                bad = (dq & dq_ignore_bits) != 0
                n_dq = int(bad.sum())
                ignore |= bad
                if saturation is not None:
                    saturated |= (dq & DQ_SATURATION_BITS) != 0
            if saturation is not None:
                with np.errstate(invalid="ignore"):
                    saturated |= image >= np.float32(saturation)
                saturated = _dilate_box(saturated, int(saturation_grow))
                ignore |= saturated
            chips.append(
                Chip(
                    index=i,
                    extname=extname,
                    extver=int(hdu.ver),
                    image=image,
                    ignore=ignore,
                    header=hdu.header.copy(),
                    dq_index=dq_index,
                    bunit=bunit,
                    unit_scale=scale,
                    n_dq=n_dq,
                    n_saturated=int(saturated.sum()),
                    n_nonfinite=int(nonfinite.sum()),
                )
            )
    return chips


# --------------------------------------------------------------------------
# writing


def default_output_path(
    path_in: str | os.PathLike, *, suffix: str = "_crmask", outdir: str | os.PathLike | None = None
) -> Path:
    """Where ``deepcr-jax clean`` writes by default: ``<stem><suffix>.fits``.

    ``stem`` is the input name without ``.fits``/``.fit``/``.fts`` (and a
    trailing ``.gz``); the file goes beside the input, or into ``outdir``.
    ``j8xi01abq_flc.fits`` → ``j8xi01abq_flc_crmask.fits``.
    """
    p = Path(path_in)
    name = p.name
    if name.lower().endswith(".gz"):
        name = name[:-3]
    for ext in _FITS_SUFFIXES:
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    directory = Path(outdir) if outdir is not None else p.parent
    return directory / f"{name}{suffix}.fits"


def _same_file(a: str, b: str) -> bool:
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def _check_output(path_in: str, path_out: str, overwrite: bool) -> None:
    if overwrite:
        return
    if _same_file(path_in, path_out):
        raise FileExistsError(
            f"output {path_out!r} is the input file; refusing to overwrite the input "
            "(choose another output, or pass overwrite=True / --overwrite)"
        )
    if os.path.lexists(path_out):
        raise FileExistsError(
            f"output {path_out!r} already exists; pass overwrite=True (CLI: --overwrite) to replace it"
        )
    parent = os.path.dirname(os.path.abspath(path_out))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"output directory {parent!r} does not exist")


def _check_flag(dq_flag: Any) -> int:
    if (
        isinstance(dq_flag, bool)
        or not isinstance(dq_flag, (int, np.integer))
        or dq_flag <= 0
        or dq_flag > 32768
        or dq_flag & (dq_flag - 1)
    ):
        raise ValueError(f"dq_flag must be a single bit, a power of two from 1 to 32768; got {dq_flag!r}")
    return int(dq_flag)


def _with_flag(dq: np.ndarray, mask: np.ndarray, flag: int) -> np.ndarray:
    """``dq | flag`` at mask pixels, kept in DQ's dtype when it fits."""
    new = np.asarray(dq, np.int64) | np.where(mask, flag, 0)
    for dtype in (dq.dtype, np.uint16, np.int32):
        info = np.iinfo(dtype)
        if new.min(initial=0) >= info.min and new.max(initial=0) <= info.max:
            return new.astype(dtype)
    return new.astype(np.int64)  # pragma: no cover - flags are at most 16 bits


def _atomic_writeto(hdul: fits.HDUList, path_out: str) -> None:
    directory = os.path.dirname(os.path.abspath(path_out))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path_out)}.", suffix=".tmp")
    os.close(fd)
    try:
        hdul.writeto(tmp, overwrite=True, output_verify="silentfix+ignore", checksum=False)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path_out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _provenance(meta: dict[str, Any]) -> list[tuple[str, Any, str]]:
    from deepcr_jax import __version__

    inpaint = meta.get("inpaint") or "NONE"
    return [
        ("DCRVERS", __version__, "deepcr-jax version"),
        ("DCRMODEL", str(meta.get("model", ""))[-68:], "deepcr-jax CR mask model"),
        ("DCRTHRSH", float(meta.get("threshold", 0.5)), "CR probability threshold"),
        ("DCRINPNT", str(inpaint)[-68:], "inpainting of CR pixels in SCI"),
        ("DCRFLAG", int(meta.get("dq_flag", DEFAULT_DQ_FLAG)), "DQ bit set at CR pixels"),
    ]


def write_fits(
    path_in: str | os.PathLike,
    path_out: str | os.PathLike,
    chips: Sequence[Chip],
    masks: Sequence[np.ndarray],
    cleaned: Sequence[np.ndarray] | None = None,
    *,
    dq_flag: int = DEFAULT_DQ_FLAG,
    meta: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a copy of ``path_in`` with CR masks (and cleaned SCI) added, atomically.

    Parameters
    ----------
    path_in : str or path-like
        The file ``chips`` were read from (with :func:`read_fits`); not modified.
    path_out : str or path-like
        Output file. Refused if it exists or is the input, unless ``overwrite``.
    chips : sequence of Chip
        From :func:`read_fits` on ``path_in``.
    masks : sequence of ndarray, (ny, nx), bool
        CR mask per chip (True = cosmic ray).
    cleaned : sequence of ndarray, (ny, nx), optional
        Cleaned image per chip in the model's units (as ``chip.image``); its
        CR-mask pixels replace the SCI data (converted back to the file's
        units). None leaves SCI untouched.
    dq_flag : int, optional
        DQ bit set at CR pixels (default 8192).
    meta : dict, optional
        Provenance for the headers: ``model``, ``threshold``, ``inpaint``.
    overwrite : bool, optional
        Allow replacing an existing output, including the input itself.

    Returns
    -------
    pathlib.Path
        ``path_out``.
    """
    path_in, path_out = os.fspath(path_in), os.fspath(path_out)
    flag = _check_flag(dq_flag)
    _check_output(path_in, path_out, overwrite)
    if len(masks) != len(chips) or (cleaned is not None and len(cleaned) != len(chips)):
        raise ValueError(
            f"need one mask (and cleaned image) per chip: {len(chips)} chips, {len(masks)} masks, "
            f"{'no' if cleaned is None else len(cleaned)} cleaned images"
        )
    cards = _provenance({**(meta or {}), "dq_flag": flag})
    with fits.open(path_in, memmap=False) as hdul:
        replace: dict[int, fits.ImageHDU] = {}
        append: list[fits.ImageHDU] = []
        for k, (chip, mask) in enumerate(zip(chips, masks)):
            mask = np.asarray(mask, bool)
            if mask.shape != chip.image.shape:
                raise ValueError(
                    f"masks[{k}] must have shape {chip.image.shape} ({chip.label}); got {mask.shape}"
                )
            hdu = hdul[chip.index]
            if hdu.name.upper() != chip.extname.upper() and chip.extname != "PRIMARY":
                raise ValueError(
                    f"{path_in!r} changed since it was read: HDU {chip.index} is not {chip.label}"
                )
            if cleaned is not None:
                clean = np.asarray(cleaned[k], np.float32)
                if clean.shape != mask.shape:
                    raise ValueError(f"cleaned[{k}] must have shape {mask.shape}; got {clean.shape}")
                sci = np.array(hdu.data, dtype=np.float32)
                sci[mask] = clean[mask] / np.float32(chip.unit_scale)
                for key in ("BSCALE", "BZERO", "BLANK"):
                    hdu.header.remove(key, ignore_missing=True)
                hdu.data = sci
                hdu.header["DCRCLEAN"] = (True, "CR pixels inpainted by deepcr-jax")
            if chip.dq_index is not None:
                dqh = hdul[chip.dq_index]
                dq = _dq_array(dqh, mask.shape)
                for key in ("PIXVALUE", "NPIX1", "NPIX2"):
                    dqh.header.remove(key, ignore_missing=True)
                src = (
                    dqh.data
                    if dqh.data is not None
                    else dq.astype(np.int16 if dq.max() < 32768 else np.uint16)
                )
                dqh.data = _with_flag(src, mask, flag)
            crh = fits.ImageHDU(mask.astype(np.uint8), name="CRMASK", ver=chip.extver)
            for key, value in chip.header.items():
                if _WCS_KEY.match(key):
                    crh.header[key] = value
            crh.header["DCRNPIX"] = (int(mask.sum()), "CR pixels in this chip")
            crh.header["DCRSCI"] = (chip.label, "science array this mask belongs to")
            crh.header["DCRUNITS"] = (chip.bunit or "NONE", "BUNIT of the science array")
            crh.header["DCRUSCAL"] = (chip.unit_scale, "factor to the model's units (EXPTIME for rates)")
            for key, value, comment in cards:
                crh.header[key] = (value, comment)
            crh.header["COMMENT"] = "Cosmic-ray mask from deepcr-jax: 1 = cosmic ray, 0 = not."
            existing = _find(hdul, "CRMASK", chip.extver)
            if existing is not None:
                replace[existing] = crh
            else:
                append.append(crh)
        for i, crh in replace.items():
            hdul[i] = crh
        for crh in append:
            hdul.append(crh)
        primary = hdul[0].header
        for key, value, comment in cards:
            primary[key] = (value, comment)
        what = f"inpainted ({cards[3][1]})" if cleaned is not None else "mask only"
        primary.add_history(
            f"deepcr-jax {cards[0][1]}: CR mask by model {cards[1][1]} at threshold {cards[2][1]:g}; "
            f"CRMASK extensions added, DQ bit {flag} set; SCI {what}."
        )
        _atomic_writeto(hdul, path_out)
    return Path(path_out)


# --------------------------------------------------------------------------
# the whole thing


def _is_cleaner(model: Any) -> bool:
    return hasattr(model, "clean") and hasattr(model, "inpaint") and not isinstance(model, (str, os.PathLike))


def clean_fits(
    path_in: str | os.PathLike,
    path_out: str | os.PathLike | None = None,
    *,
    model: Any = "ACS-WFC",
    threshold: float | None = None,
    inpaint: str | None = None,
    dq_flag: int = DEFAULT_DQ_FLAG,
    dq_ignore_bits: int = DEFAULT_DQ_IGNORE_BITS,
    saturation: float | None = SATURATION_LEVEL,
    units: str = "auto",
    tile: int | None = None,
    batch: int | None = None,
    overwrite: bool = False,
) -> FitsSummary:
    """Detect (and optionally inpaint) cosmic rays in a FITS file; write a copy.

    Reads every science chip (:func:`read_fits`), runs
    :func:`deepcr_jax.clean` on each with the chip's ignore mask, and writes
    the CR masks as ``CRMASK`` extensions and DQ flags (:func:`write_fits`).

    Parameters
    ----------
    path_in : str or path-like
        Input FITS file, e.g. an HST ACS/WFC ``_flc.fits`` (SCI in electrons).
        Never modified (unless it is also ``path_out`` and ``overwrite``).
    path_out : str or path-like, optional
        Output file; default :func:`default_output_path` (``<stem>_crmask.fits``
        beside the input).
    model : str, path-like or Cleaner, optional
        Zoo mask model name, a converted ``.npz``, or a loaded
        :class:`deepcr_jax.Cleaner` (reused across files; then the
        inpainter, ``tile`` and ``batch`` are the cleaner's, and ``inpaint``
        must be None or name the same inpainter). Default ``"ACS-WFC"``.
    threshold : float, optional
        CR probability threshold in [0, 1]; default the model's recommended.
    inpaint : str, optional
        ``"medmask"`` or an inpainting zoo model: CR pixels of SCI are
        replaced in the output. None (default): mask only.
    dq_flag : int, optional
        DQ bit set at CR pixels (default 8192).
    dq_ignore_bits, saturation, units
        See :func:`read_fits`.
    tile, batch : int, optional
        Passed to :func:`deepcr_jax.load` (tile size and tiles per batch).
    overwrite : bool, optional
        Allow replacing an existing output (or the input itself).

    Returns
    -------
    FitsSummary
        Output path, model, threshold and per-chip counts (CR pixels, ignored
        pixels).

    Raises
    ------
    FileNotFoundError, FileExistsError, ValueError
        Missing input, existing output, unknown model, bad arguments. Nothing
        is written when any step fails.
    """
    path_in = os.fspath(path_in)
    if not os.path.isfile(path_in):
        raise FileNotFoundError(f"input FITS file {path_in!r} does not exist")
    path_out = os.fspath(path_out) if path_out is not None else os.fspath(default_output_path(path_in))
    _check_flag(dq_flag)
    _check_output(path_in, path_out, overwrite)
    if _is_cleaner(model):
        cleaner = model
        model_name, inpainter = _cleaner_names(cleaner)
        if inpaint is not None and inpaint != inpainter:
            raise ValueError(
                f"inpaint={inpaint!r} cannot change a loaded Cleaner (it inpaints with {inpainter!r}); "
                "pass inpaint to deepcr_jax.load() instead"
            )
    else:
        from deepcr_jax import load

        cleaner = load(model, inpaint=inpaint, tile=tile, batch=batch)
        model_name = os.fspath(model)
        inpainter = None if inpaint is None else os.fspath(inpaint)
    thr = _resolve_threshold(cleaner, model, threshold)
    chips = read_fits(path_in, dq_ignore_bits=dq_ignore_bits, saturation=saturation, units=units)
    masks, cleaned = [], []
    for chip in chips:
        if inpainter:
            mask, clean = cleaner.clean(
                chip.image, threshold=thr, binary=True, ignore=chip.ignore, cleaned=True
            )
            cleaned.append(np.asarray(clean))
        else:
            mask = cleaner.clean(chip.image, threshold=thr, binary=True, ignore=chip.ignore, cleaned=False)
        masks.append(np.asarray(mask, bool))
    meta = {"model": model_name, "threshold": thr, "inpaint": inpainter}
    out = write_fits(
        path_in,
        path_out,
        chips,
        masks,
        cleaned if inpainter else None,
        dq_flag=dq_flag,
        meta=meta,
        overwrite=overwrite,
    )
    return FitsSummary(
        path_in=path_in,
        path_out=os.fspath(out),
        model=model_name,
        threshold=thr,
        inpaint=inpainter,
        dq_flag=int(dq_flag),
        chips=tuple(
            ChipSummary(
                label=c.label,
                shape=(int(c.image.shape[0]), int(c.image.shape[1])),
                n_cr=int(m.sum()),
                n_ignored=int(c.ignore.sum()),
                n_dq=c.n_dq,
                n_saturated=c.n_saturated,
                n_nonfinite=c.n_nonfinite,
                bunit=c.bunit,
                unit_scale=c.unit_scale,
                dq_flagged=c.dq_index is not None,
            )
            for c, m in zip(chips, masks)
        ),
    )


def _cleaner_names(cleaner: Any) -> tuple[str, str | None]:
    """(mask model name, inpainter name or None) of a loaded Cleaner."""
    params = getattr(cleaner, "params", None)
    name = str(getattr(params, "name", None) or "custom")
    method = getattr(cleaner, "inpaint_method", None)
    if method == "network":
        return name, str(getattr(getattr(cleaner, "inpaint_params", None), "name", None) or "network")
    return name, method


def _resolve_threshold(cleaner: Any, model: Any, threshold: float | None) -> float:
    if threshold is not None:
        t = float(threshold)
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"threshold must be in [0, 1]; got {threshold!r}")
        return t
    params = getattr(cleaner, "params", None)
    if params is not None and isinstance(getattr(params, "threshold", None), (int, float)):
        return float(params.threshold)
    from deepcr_jax.zoo import MODELS

    spec = MODELS.get(model) if isinstance(model, str) else None
    return float(spec.threshold) if spec is not None else 0.5
