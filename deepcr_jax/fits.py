"""FITS input/output: the science chips of a file in, a flagged copy out.

:func:`read_fits` returns each science array (every ``EXTNAME='SCI'`` image,
else the first 2-D image) as float32 in the models' units with an ``ignore``
mask (True = do not use), by the rules of :mod:`deepcr_jax.hst`.
:func:`write_fits` writes a copy of the input with a ``CRMASK`` extension per
chip (uint8, 1 = cosmic ray), the mask OR'ed into ``DQ``, optionally SCI's CR
pixels (only those) inpainted, and ``DCR*`` provenance cards
(:func:`provenance_cards`). The input is never modified; an existing output,
or the input itself, is refused unless ``overwrite=True``; outputs appear
complete or not at all (:func:`write_hdulist`; ``.gz`` names are gzipped).

A file that does not read completely (cut at an HDU boundary, in a header or
in the data) is refused with a ValueError saying where. SCI and DQ pair by
``EXTVER``, or by position when none has one. Inpainting changes only the CR
pixels' stored values: integer SCI (with its BZERO/BSCALE) stays integer
(values rounded), floats keep their dtype, and a tile-compressed SCI is
written back compressed *losslessly* (GZIP_2 without quantisation, so the
file may grow); HISTORY says which, and ``DCRFLAG`` / "DQ bit set" are
recorded only where a DQ array was flagged.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from deepcr_jax import hst
from deepcr_jax._atomic import atomic_path
from deepcr_jax._fitsio import (
    check_output,
    dq_array,
    find_hdu,
    history_cards,
    open_complete,
    science_hdu,
    science_pairs,
)

__all__ = [
    "Chip",
    "check_output",
    "history_cards",
    "provenance_cards",
    "read_fits",
    "write_fits",
    "write_hdulist",
]

_WCS_KEY = re.compile(
    r"^(WCSAXES|WCSNAME|RADESYS|EQUINOX|LONPOLE|LATPOLE|MJDREF|"
    r"CRPIX\d|CRVAL\d|CTYPE\d|CUNIT\d|CDELT\d|CROTA\d|CD\d_\d|PC\d_\d|"
    r"A_ORDER|B_ORDER|AP_ORDER|BP_ORDER|A_\d_\d|B_\d_\d|AP_\d_\d|BP_\d_\d)$"
)


@dataclasses.dataclass
class Chip:
    """One science array read from a FITS file (:func:`read_fits`).

    Attributes
    ----------
    index : int
        Position of the science HDU in the file.
    extname, extver : str, int
        Its ``EXTNAME`` (``"PRIMARY"`` for the primary HDU) and ``EXTVER``
        (1 when absent; k for the k-th of several SCI extensions none of
        which has one). The chip's CRMASK gets the same.
    image : ndarray, (ny, nx), float32
        A copy of the data in the models' units (electrons for HST ``_flc``;
        count rates times ``unit_scale``).
    ignore : ndarray, (ny, nx), bool
        True = do not use this pixel (DQ bad pixel, saturated, or non-finite).
    header : astropy.io.fits.Header
        A copy of the science HDU's header.
    dq_index : int or None
        Position of the matching ``DQ`` extension (None: there is none).
    bunit, unit_scale : str, float
        ``BUNIT`` ('' when absent) and the factor the file's data were
        multiplied by to give ``image`` (``EXPTIME`` for count rates, else 1).
    n_dq, n_saturated, n_nonfinite : int
        Pixels ignored for DQ bad-pixel flags, as saturated (grown mask), and
        NaN/inf pixels.
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


# --------------------------------------------------------------------------
# reading


def _read_chip(hdul, pair, path: str, dq_ignore_bits: int, saturation, grow, units) -> Chip:
    i, dq_index, extver = pair
    hdu = hdul[i]
    extname = hdu.name.upper() or ("PRIMARY" if i == 0 else f"HDU{i}")
    bunit = str(hdu.header.get("BUNIT", "") or "")
    scale = hst.unit_scale(bunit, hdu.header, hdul[0].header, units, f"{path}[{extname},{extver}]")
    try:
        image = np.array(hdu.data, dtype=np.float32)
    except (ValueError, OSError, EOFError) as err:  # a cut the size checks missed
        raise ValueError(f"{path}: truncated or corrupt data in HDU {i + 1} ({extname}): {err}") from err
    if scale != 1.0:
        image *= np.float32(scale)
    nonfinite = ~np.isfinite(image)
    dq = None if dq_index is None else dq_array(hdul[dq_index], image.shape)
    none = np.zeros(image.shape, bool)
    bad = none if dq is None else hst.dq_ignore(dq, dq_ignore_bits)
    saturated = none if saturation is None else hst.saturation_mask(image, saturation, grow, dq=dq)
    return Chip(
        index=i,
        extname=extname,
        extver=int(extver),
        image=image,
        ignore=nonfinite | bad | saturated,
        header=hdu.header.copy(),
        dq_index=dq_index,
        bunit=bunit,
        unit_scale=scale,
        n_dq=int(bad.sum()),
        n_saturated=int(saturated.sum()),
        n_nonfinite=int(nonfinite.sum()),
    )


def read_fits(
    path: str | os.PathLike,
    *,
    dq_ignore_bits: int = hst.DEFAULT_DQ_IGNORE_BITS,
    saturation: float | None = hst.SATURATION_LEVEL,
    saturation_grow: int = hst.SATURATION_GROW,
    units: str = "auto",
) -> list[Chip]:
    """Read the science arrays of a FITS file with their ignore masks.

    Parameters
    ----------
    path : str or path-like
        A FITS file, e.g. an HST ACS/WFC ``_flc.fits`` (two chips).
    dq_ignore_bits : int, optional
        DQ bits that make a pixel ignored (:func:`deepcr_jax.hst.dq_ignore`);
        default all but saturation and cosmic rays. 0 ignores nothing from DQ.
    saturation : float or None, optional
        Saturation level in the models' units (default 70000 e-); pixels at
        or above it, or DQ-saturated, grown by a ``saturation_grow`` box, are
        ignored (:func:`deepcr_jax.hst.saturation_mask`). Must be positive;
        ``inf``: no level (DQ saturation flags still count). None: no
        saturation masking (DQ saturation flags included).
    saturation_grow : int, optional
        Odd side of the growing box (default 7, as the deepCR paper).
    units : {"auto", "as-is"}, optional
        ``"auto"`` converts count rates (``BUNIT`` ending in ``/S``) to counts
        with ``EXPTIME`` (:func:`deepcr_jax.hst.unit_scale`); ``"as-is"`` doesn't.

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
        No 2-D image, a DQ array of the wrong shape, a rate without ``EXPTIME``,
        SCI and DQ that cannot be paired, a bad ``saturation``, or a file that
        does not read completely (truncated: the message says where).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"input FITS file {path!r} does not exist")
    dq_ignore_bits = hst.check_bit_mask("dq_ignore_bits", dq_ignore_bits)
    if units not in hst.UNITS:
        raise ValueError(f"units must be 'auto' or 'as-is'; got {units!r}")
    grow = hst.check_box("saturation_grow", saturation_grow)
    saturation = hst.check_saturation(saturation)
    with open_complete(path) as hdul:
        pairs = science_pairs(hdul, path)
        if not pairs:
            raise ValueError(
                f"{path!r} holds no 2-D image (looked for SCI extensions, then any 2-D image HDU)"
            )
        return [_read_chip(hdul, p, path, dq_ignore_bits, saturation, grow, units) for p in pairs]


# --------------------------------------------------------------------------
# output rules


def provenance_cards(
    *, model: Any, threshold: float, inpaint: Any = None, dq_flag: int | None = None
) -> list[tuple[str, Any, str]]:
    """The ``DCR*`` header cards ``(key, value, comment)`` that record how a mask was made.

    ``DCRVERS`` (deepcr-jax version), ``DCRMODEL`` (mask model), ``DCRTHRSH``
    (threshold), ``DCRINPNT`` (inpainter, ``NONE`` for mask only) and, when
    ``dq_flag`` is given, ``DCRFLAG`` (the DQ bit set at CR pixels). Long
    names keep their last 68 characters (a FITS card's room).
    """
    from deepcr_jax import __version__

    cards = [
        ("DCRVERS", __version__, "deepcr-jax version"),
        ("DCRMODEL", str(model)[-68:], "deepcr-jax CR mask model"),
        ("DCRTHRSH", float(threshold), "CR probability threshold"),
        ("DCRINPNT", str(inpaint or "NONE")[-68:], "inpainting of CR pixels in SCI"),
    ]
    # a comment that does not fit beside a long value is dropped (astropy would warn and cut it)
    cards = [(k, v, c if len(str(v)) + len(c) <= 62 else "") for k, v, c in cards]
    if dq_flag is not None:
        cards.append(("DCRFLAG", int(dq_flag), "DQ bit set at CR pixels"))
    return cards


def write_hdulist(hdul: fits.HDUList, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``hdul`` to ``path`` atomically: complete or not at all.

    Without ``overwrite`` an existing ``path`` (even one that appears while
    writing) raises :class:`FileExistsError` and is left untouched. A name
    ending in ``.gz`` is written gzip-compressed.
    """
    with atomic_path(path, exclusive=not overwrite) as tmp:
        if os.fspath(path).lower().endswith(".gz"):
            with gzip.open(tmp, "wb") as fh:
                hdul.writeto(fh, output_verify="silentfix+ignore", checksum=False)
        else:
            hdul.writeto(tmp, overwrite=True, output_verify="silentfix+ignore", checksum=False)
    return Path(path)


# --------------------------------------------------------------------------
# writing


def _update_chip(hdul: fits.HDUList, chip: Chip, mask: np.ndarray, clean: np.ndarray | None, flag: int):
    """Replace SCI's CR pixels by ``clean`` and flag DQ, in ``hdul``; returns (CRMASK HDU, SCI note)."""
    hdu = hdul[chip.index]
    note = None
    if clean is not None:
        values = clean.astype(np.float64) / chip.unit_scale
        new, note = science_hdu(hdu, mask, values)
        new.header["DCRCLEAN"] = (True, "CR pixels inpainted by deepcr-jax")
        if new is not hdu:
            hdul[chip.index] = new
    if chip.dq_index is not None:
        dqh = hdul[chip.dq_index]
        dq = dq_array(dqh, mask.shape)
        for key in ("PIXVALUE", "NPIX1", "NPIX2"):
            dqh.header.remove(key, ignore_missing=True)
        src = dqh.data if dqh.data is not None else dq.astype(np.int16 if dq.max() < 32768 else np.uint16)
        dqh.data = hst.set_dq_flag(src, mask, flag)
    crh = fits.ImageHDU(mask.astype(np.uint8), name="CRMASK", ver=chip.extver)
    for key, value in chip.header.items():
        if _WCS_KEY.match(key):
            crh.header[key] = value
    crh.header["DCRNPIX"] = (int(mask.sum()), "CR pixels in this chip")
    crh.header["DCRSCI"] = (chip.label, "science array this mask belongs to")
    crh.header["DCRUNITS"] = (chip.bunit or "NONE", "BUNIT of the science array")
    crh.header["DCRUSCAL"] = (chip.unit_scale, "factor to the model's units (EXPTIME for rates)")
    return crh, note


def write_fits(
    path_in: str | os.PathLike,
    path_out: str | os.PathLike,
    chips: Sequence[Chip],
    masks: Sequence[np.ndarray],
    cleaned: Sequence[np.ndarray] | None = None,
    *,
    dq_flag: int = hst.DEFAULT_DQ_FLAG,
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
        Cleaned image per chip in the model's units (as ``chip.image``,
        electrons for HST); its CR-mask pixels replace the SCI data
        (converted back to the file's units). None leaves SCI untouched.
    dq_flag : int, optional
        DQ bit set at CR pixels (default 8192).
    meta : dict, optional
        Provenance for the headers: ``model``, ``threshold``, ``inpaint``
        (see :func:`provenance_cards`).
    overwrite : bool, optional
        Allow replacing an existing output, including the input itself.

    Returns
    -------
    pathlib.Path
        ``path_out``.

    Raises
    ------
    FileExistsError, FileNotFoundError, ValueError
        A refused output (:func:`check_output`), a bad ``dq_flag``, arrays not matching the chips.
    """
    path_in, path_out = os.fspath(path_in), os.fspath(path_out)
    flag = hst.check_dq_flag(dq_flag)
    check_output(path_in, path_out, overwrite)
    if len(masks) != len(chips) or (cleaned is not None and len(cleaned) != len(chips)):
        raise ValueError(
            f"need one mask (and cleaned image) per chip: {len(chips)} chips, {len(masks)} masks, "
            f"{'no' if cleaned is None else len(cleaned)} cleaned images"
        )
    m = meta or {}
    any_dq = any(chip.dq_index is not None for chip in chips)
    cards = provenance_cards(
        model=m.get("model", ""), threshold=m.get("threshold", 0.5), inpaint=m.get("inpaint")
    )
    flag_card = ("DCRFLAG", flag, "DQ bit set at CR pixels")
    card = {key: v for key, v, _ in cards}
    with open_complete(path_in) as hdul:
        crmasks, notes = [], []
        for k, (chip, mask) in enumerate(zip(chips, masks)):
            mask = np.asarray(mask, bool)
            if mask.shape != chip.image.shape:
                raise ValueError(
                    f"masks[{k}] must have shape {chip.image.shape} ({chip.label}); got {mask.shape}"
                )
            if hdul[chip.index].name.upper() != chip.extname.upper() and chip.extname != "PRIMARY":
                raise ValueError(
                    f"{path_in!r} changed since it was read: HDU {chip.index} is not {chip.label}"
                )
            clean = None if cleaned is None else np.asarray(cleaned[k], np.float32)
            if clean is not None and clean.shape != mask.shape:
                raise ValueError(f"cleaned[{k}] must have shape {mask.shape}; got {clean.shape}")
            crh, note = _update_chip(hdul, chip, mask, clean, flag)
            for key, value, comment in cards + ([flag_card] if chip.dq_index is not None else []):
                crh.header[key] = (value, comment)
            crh.header["COMMENT"] = "Cosmic-ray mask from deepcr-jax: 1 = cosmic ray, 0 = not."
            crmasks.append((find_hdu(hdul, "CRMASK", chip.extver), crh))
            if note is not None:
                notes.append(f"{chip.label}: {note}")
        for existing, crh in crmasks:  # replace older CRMASKs first, so indices stay valid
            if existing is not None:
                hdul[existing] = crh
        for crh in [crh for existing, crh in crmasks if existing is None]:
            hdul.append(crh)
        primary = hdul[0].header
        for key, value, comment in cards + ([flag_card] if any_dq else []):
            primary[key] = (value, comment)
        if not any_dq:
            primary.remove("DCRFLAG", ignore_missing=True)
        flagged = [c.label for c in chips if c.dq_index is not None]
        dq_text = (
            f"DQ bit {flag} set for {', '.join(flagged)}" if flagged else "no DQ extension, none flagged"
        )
        what = (
            f"CR pixels inpainted ({card['DCRINPNT']}; {'; '.join(notes)})"
            if cleaned is not None
            else ("SCI unchanged (mask only)")
        )
        text = (
            f"deepcr-jax {card['DCRVERS']}: CR mask by model {card['DCRMODEL']} at threshold "
            f"{card['DCRTHRSH']:g}; CRMASK extension per chip added; {dq_text}; {what}."
        )
        for line in history_cards(text):
            primary.add_history(line)
        write_hdulist(hdul, path_out, overwrite=overwrite)
    return Path(path_out)
