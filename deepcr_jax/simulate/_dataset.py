"""Stamp datasets: :func:`make_stamps`, :func:`save_dataset`/:func:`load_dataset`, :func:`example_image`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike

import numpy as np

from ._exposure import FIELDS, Exposure, _check_field, _check_positive, _rng, simulate_exposure

__all__ = ["EXPTIME_RANGE", "StampBatch", "example_image", "load_dataset", "make_stamps", "save_dataset"]

#: Exposure-time range (s) sampled log-uniformly by :func:`make_stamps`.
EXPTIME_RANGE: dict[str, tuple[float, float]] = {
    "extragalactic": (300.0, 700.0),
    "globular": (100.0, 400.0),
    "resolved": (500.0, 800.0),
}


@dataclass(frozen=True, eq=False)
class StampBatch:
    """A stack of simulated stamps.

    Attributes
    ----------
    image, clean : ndarray, (n, ny, nx), float32
        Observed and CR-free frames in electrons.
    cr_mask, ignore : ndarray, (n, ny, nx), bool
        CR truth (True = CR) and pixels to exclude.
    cr_charge : ndarray, (n, ny, nx), float32
        Deposited CR charge in electrons.
    field : ndarray, (n,), str
        Field label of every stamp.
    exptime, sky, readnoise : ndarray, (n,), float64
        Exposure time (s), sky level (e-) and read noise (e-) per stamp.
    """

    image: np.ndarray
    clean: np.ndarray
    cr_mask: np.ndarray
    ignore: np.ndarray
    cr_charge: np.ndarray
    field: np.ndarray
    exptime: np.ndarray
    sky: np.ndarray
    readnoise: np.ndarray

    def __len__(self) -> int:
        return int(self.image.shape[0])


def make_stamps(
    n: int,
    field: str | Sequence[str] = "mixed",
    *,
    seed: int | np.random.Generator,
    shape: tuple[int, int] = (256, 256),
    exptime: float | None = None,
    **kwargs,
) -> StampBatch:
    """Simulate ``n`` independent stamps and stack them.

    Parameters
    ----------
    n : int
        Number of stamps (>= 1).
    field : str or sequence of str
        A field type, ``"mixed"`` (cycle through :data:`FIELDS`), or one
        field name per stamp.
    seed : int or numpy.random.Generator
        Master seed; stamp ``i`` uses the ``i``-th spawned child, so the first
        ``k`` stamps do not depend on ``n``.
    shape : (int, int)
        Stamp shape ``(ny, nx)``.
    exptime : float, optional
        Fixed exposure time (s).  By default each stamp draws its exposure
        time log-uniformly from ``EXPTIME_RANGE[field]``.
    **kwargs
        Passed to :func:`simulate_exposure` (``sky_rate``, ``readnoise``...).

    Returns
    -------
    StampBatch
        Arrays of shape ``(n, ny, nx)`` plus per-stamp labels.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if isinstance(field, str):
        if field == "mixed":
            fields = [FIELDS[i % len(FIELDS)] for i in range(n)]
        else:
            fields = [_check_field(field)] * n
    else:
        fields = [_check_field(f) for f in field]
        if len(fields) != n:
            raise ValueError(f"field has {len(fields)} entries but n={n}")
    if exptime is not None:
        exptime = _check_positive("exptime", exptime)
    if isinstance(seed, np.random.Generator):
        children = seed.spawn(n)
    else:
        _rng(seed)  # validate
        children = [np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(n)]
    exps = []
    for f, rng in zip(fields, children):
        t = exptime
        if t is None:
            lo, hi = EXPTIME_RANGE[f]
            t = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        exps.append(simulate_exposure(f, shape, seed=rng, exptime=t, **kwargs))
    return StampBatch(
        image=np.stack([e.image for e in exps]),
        clean=np.stack([e.clean for e in exps]),
        cr_mask=np.stack([e.cr_mask for e in exps]),
        ignore=np.stack([e.ignore for e in exps]),
        cr_charge=np.stack([e.cr_charge for e in exps]),
        field=np.array(fields, dtype="U16"),
        exptime=np.array([e.exptime for e in exps]),
        sky=np.array([e.sky for e in exps]),
        readnoise=np.array([e.readnoise for e in exps]),
    )


_NPZ_KEYS = ("image", "clean", "cr_mask", "ignore", "cr_charge", "field", "exptime", "sky", "readnoise")


def save_dataset(path: str | PathLike, batch: StampBatch, *, compress: bool = True) -> None:
    """Write a :class:`StampBatch` to an ``.npz`` file (no pickled objects).

    Parameters
    ----------
    path : str or path-like
        Destination file (numpy appends ``.npz`` if missing).
    batch : StampBatch
        Stamps to save.
    compress : bool
        Use ``numpy.savez_compressed`` (default) or plain ``savez``.
    """
    if not isinstance(batch, StampBatch):
        raise TypeError(f"batch must be a StampBatch, got {type(batch).__name__}")
    arrays = {k: np.asarray(getattr(batch, k)) for k in _NPZ_KEYS}
    (np.savez_compressed if compress else np.savez)(path, **arrays)


def load_dataset(path: str | PathLike) -> StampBatch:
    """Read a dataset written by :func:`save_dataset` (``allow_pickle=False``)."""
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in _NPZ_KEYS if k not in data.files]
        if missing:
            raise ValueError(f"path {str(path)!r} is not a deepcr_jax dataset; missing {missing}")
        return StampBatch(**{k: data[k] for k in _NPZ_KEYS})


def example_image() -> Exposure:
    """A fixed 512 x 512 extragalactic exposure (540 s) for quick starts.

    Deterministic (fixed seed, sky 0.15 e-/s/px, read noise 4.5 e-); takes
    well under a second to generate.

    Returns
    -------
    Exposure
        ``image`` (512, 512) float32 in electrons with ``cr_mask`` truth.
    """
    return simulate_exposure("extragalactic", (512, 512), seed=20190530, exptime=540.0, sky_rate=0.15)
