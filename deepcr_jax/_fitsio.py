"""FITS plumbing for :mod:`deepcr_jax.fits`: complete reads, chip pairing, type-keeping writes.

* :func:`open_complete` opens a file and refuses one that does not read
  completely (cut at an HDU boundary, in a header or in the data; a cut
  gzip stream).
* :func:`science_pairs` finds the science arrays and pairs each with its DQ
  array: by ``EXTVER``, or by position when no SCI/DQ extension has one.
* :func:`science_hdu` builds the SCI HDU with the CR pixels replaced: the
  other pixels keep their stored bytes (the input's dtype and BZERO/BSCALE;
  tile-compressed floats are written losslessly).
"""

from __future__ import annotations

import gzip
import os
import textwrap
import warnings
from typing import Any

import numpy as np
from astropy.io import fits

__all__ = [
    "check_output",
    "dq_array",
    "find_hdu",
    "history_cards",
    "is_2d_image",
    "open_complete",
    "science_hdu",
    "science_pairs",
]

_TRUNCATION_HINTS = ("truncated", "Header size is not multiple of 2880")


def is_2d_image(hdu: Any) -> bool:
    """Whether ``hdu`` is a 2-D image (primary, image or tile-compressed image HDU)."""
    image_hdu = isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU))
    return image_hdu and hdu.header.get("NAXIS") == 2


def find_hdu(hdul: fits.HDUList, name: str, ver: int) -> int | None:
    """Index of the HDU ``name,ver``, None if there is none."""
    return next((i for i, h in enumerate(hdul) if h.name.upper() == name and h.ver == ver), None)


def dq_array(hdu: Any, shape: tuple[int, int]) -> np.ndarray:
    """DQ data as int64, expanding HST's header-only constant arrays (``PIXVALUE``)."""
    if hdu.header.get("NAXIS", 0) == 0 and "PIXVALUE" in hdu.header:
        return np.full(shape, int(hdu.header["PIXVALUE"]), np.int64)
    data = hdu.data
    if data is None or data.shape != shape:
        got = None if data is None else data.shape
        raise ValueError(f"DQ extension {hdu.name},{hdu.ver} must have the SCI shape {shape}; got {got}")
    if not np.issubdtype(data.dtype, np.integer):
        raise ValueError(f"DQ extension {hdu.name},{hdu.ver} must hold integers; got dtype {data.dtype}")
    return np.asarray(data, np.int64)


# --------------------------------------------------------------------------
# complete reads


def _stream_size(path: str, hdul: fits.HDUList) -> int:
    """Bytes of FITS data in ``path`` (decompressed for gzip); ValueError for a cut gzip stream."""
    size = int(getattr(hdul._file, "size", 0) or 0)  # astropy's _File; 0 for gzip
    if size:
        return size
    try:
        with gzip.open(path, "rb") as fh:
            return int(fh.seek(0, os.SEEK_END))
    except gzip.BadGzipFile:
        return os.path.getsize(path)
    except EOFError as err:
        raise ValueError(f"{path}: truncated: the gzip stream is cut ({err})") from None


def _check_complete(path: str, hdul: fits.HDUList, caught: list) -> None:
    n = len(hdul)
    for w in caught:
        text = str(w.message)
        if any(hint in text for hint in _TRUNCATION_HINTS):
            raise ValueError(f"{path}: truncated: {text.splitlines()[0]} (astropy, {n} HDUs read)")
    size = _stream_size(path, hdul)
    for i, hdu in enumerate(hdul):
        info = hdul.fileinfo(i)
        span = info["datSpan"] if isinstance(hdu, fits.CompImageHDU) else hdu.size
        if info["datLoc"] + span > size:
            raise ValueError(
                f"{path}: truncated: HDU {i + 1} of {n} ({hdu.name}) ends at byte "
                f"{info['datLoc'] + span}, file has {size}"
            )
    nextend = hdul[0].header.get("NEXTEND")
    if isinstance(nextend, int) and not isinstance(nextend, bool) and nextend > n - 1:
        end = hdul.fileinfo(n - 1)["datLoc"] + hdul.fileinfo(n - 1)["datSpan"]
        raise ValueError(
            f"{path}: truncated: NEXTEND={nextend} but the file holds {n - 1} extensions (ends at byte {end})"
        )


def open_complete(path: str) -> fits.HDUList:
    """Open ``path`` (all headers read); ValueError naming the file if it does not read completely.

    A file is incomplete when astropy warns of truncation or a partial
    header, when an HDU's data reach past the end of the file (or of the
    decompressed gzip stream), or when the primary header's ``NEXTEND``
    counts more extensions than there are (a cut at an HDU boundary).
    Other astropy warnings are passed on.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            hdul = fits.open(path, memmap=False, lazy_load_hdus=False)
        except (OSError, EOFError) as err:
            raise ValueError(f"{path}: not a readable FITS file: {err}") from err
    try:
        _check_complete(path, hdul, caught)
    except BaseException:
        hdul.close()
        raise
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return hdul


# --------------------------------------------------------------------------
# pairing


def science_pairs(hdul: fits.HDUList, path: str) -> list[tuple[int, int | None, int]]:
    """``(sci index, DQ index or None, extver)`` per science array, in file order.

    Science arrays are the 2-D ``EXTNAME='SCI'`` images, else the first 2-D
    image. DQ pairs with SCI by ``EXTVER``; when neither SCI nor DQ carries
    ``EXTVER`` (so astropy calls them all version 1) and there are several,
    the k-th SCI pairs with the k-th DQ and gets version k. Any other
    ambiguity raises ValueError naming ``path``: chips are never crossed.
    """
    sci = [i for i, h in enumerate(hdul) if h.name.upper() == "SCI" and is_2d_image(h)]
    if not sci:
        first = [i for i, h in enumerate(hdul) if is_2d_image(h)][:1]
        return [(i, None, int(hdul[i].ver)) for i in first]
    dq = [i for i, h in enumerate(hdul) if h.name.upper() == "DQ"]
    vers = [int(hdul[i].ver) for i in sci]
    if len(set(vers)) == len(vers):
        dq_vers = [int(hdul[i].ver) for i in dq]
        if len(set(dq_vers)) != len(dq_vers):
            raise ValueError(f"{path}: several DQ extensions share an EXTVER; cannot pair them with SCI")
        return [(i, next((j for j in dq if hdul[j].ver == v), None), v) for i, v in zip(sci, vers)]
    if any("EXTVER" in hdul[i].header for i in sci + dq):
        raise ValueError(
            f"{path}: SCI extensions share EXTVER {vers}; cannot tell which DQ belongs to which chip"
        )
    if dq and len(dq) != len(sci):
        raise ValueError(
            f"{path}: {len(sci)} SCI and {len(dq)} DQ extensions without EXTVER; cannot pair them by position"
        )
    return [(i, dq[k] if dq else None, k + 1) for k, i in enumerate(sci)]


# --------------------------------------------------------------------------
# writing


def _same_file(a: str, b: str) -> bool:
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def check_output(path_in: str | os.PathLike, path_out: str | os.PathLike, overwrite: bool) -> None:
    """Unless ``overwrite``: FileExistsError if ``path_out`` is ``path_in`` or exists, else
    FileNotFoundError if its directory does not exist."""
    path_in, path_out = os.fspath(path_in), os.fspath(path_out)
    if overwrite:
        return
    if _same_file(path_in, path_out):
        raise FileExistsError(
            f"output {path_out!r} is the input file; refusing to overwrite the input "
            "(choose another output, or pass overwrite=True)"
        )
    if os.path.lexists(path_out):
        raise FileExistsError(f"output {path_out!r} already exists; pass overwrite=True to replace it")
    parent = os.path.dirname(os.path.abspath(path_out))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"output directory {parent!r} does not exist")


def history_cards(text: str, width: int = 72) -> list[str]:
    """``text`` cut into HISTORY card values of at most ``width`` characters, at word boundaries."""
    return textwrap.wrap(text, width=width, break_on_hyphens=False) or [""]


def _stored_integer(hdu: Any) -> tuple[int, float, float] | None:
    """(BITPIX, BSCALE, BZERO) as stored on disk when the data are integers, else None."""
    bitpix = int(getattr(hdu, "_orig_bitpix", hdu.header.get("BITPIX", -32)))
    if bitpix <= 0:
        return None
    return bitpix, float(getattr(hdu, "_orig_bscale", 1.0)), float(getattr(hdu, "_orig_bzero", 0.0))


def science_hdu(hdu: Any, mask: np.ndarray, values: np.ndarray) -> tuple[Any, str]:
    """The SCI HDU with ``values`` (file units) at ``mask`` pixels; every other pixel keeps its bytes.

    Integer data (BITPIX > 0, with its BZERO/BSCALE) stay integers when all
    new values are finite: they are rounded to the nearest stored value and
    clipped to the type's range. Float data keep their dtype. A
    tile-compressed HDU comes back compressed losslessly: integers with the
    input's compression, floats GZIP_2 without quantisation (re-quantising
    would change every pixel).

    Returns
    -------
    (HDU, str)
        The HDU to put in place of ``hdu`` (``hdu`` itself when possible) and
        a note for HISTORY saying how the values were stored.
    """
    stored = _stored_integer(hdu)
    data = np.array(hdu.data)  # physical values: uint16 for BZERO=32768, float64 for other scaling
    new = values[mask]
    compressed = isinstance(hdu, fits.CompImageHDU)
    if stored is not None and np.isfinite(new).all():
        bitpix, bscale, bzero = stored
        info = np.iinfo(f"int{bitpix}")
        raw = np.clip(np.round((new.astype(np.float64) - bzero) / bscale), info.min, info.max)
        data[mask] = (raw * bscale + bzero).astype(data.dtype)
        hdu.data = data
        if bscale != 1.0 or bzero != 0.0:
            hdu.scale(f"int{bitpix}", bscale=bscale, bzero=bzero)
        return hdu, f"integer BITPIX={bitpix} kept: inpainted values rounded to the nearest stored value"
    if stored is not None:
        data = data.astype(np.float32)
    data[mask] = new.astype(data.dtype)
    note = "float data" if stored is None else "non-finite inpainted values: integer data stored as float32"
    if compressed:
        header = hdu.header.copy()
        for key in ("BSCALE", "BZERO", "BLANK"):
            header.remove(key, ignore_missing=True)
        if "EXTVER" not in header and hdu.ver != 1:
            header["EXTVER"] = hdu.ver
        out = fits.CompImageHDU(data, header=header, compression_type="GZIP_2", quantize_level=0.0)
        return out, note + ", tile-compressed losslessly (GZIP_2, no quantisation)"
    for key in ("BSCALE", "BZERO", "BLANK"):
        hdu.header.remove(key, ignore_missing=True)
    hdu.data = data
    return hdu, note
