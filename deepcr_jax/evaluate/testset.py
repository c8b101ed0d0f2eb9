"""The fixed-seed simulated test set: one stack of stamps per field type.

Stamps come from :func:`deepcr_jax.simulate.make_stamps` (HST ACS/WFC F606W
single exposures in electrons, exact CR truth, saturation ``ignore`` mask).
Field ``k`` of :data:`FIELDS` uses the seed ``SeedSequence([seed, k])``, so
fields are independent and the first ``m`` stamps of a field do not depend
on how many are drawn: a larger set extends a smaller one.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from deepcr_jax.simulate import FIELDS, StampBatch, make_stamps

__all__ = ["FIELDS", "STAMP_SHAPE", "describe_batch", "field_seed", "head", "make_test_set"]

#: Stamp shape (ny, nx) of the test set.
STAMP_SHAPE: tuple[int, int] = (256, 256)


def field_seed(seed: int, field_index: int) -> int:
    """Seed of one field's stamps: a 32-bit int from ``SeedSequence([seed, field_index])``.

    Parameters
    ----------
    seed : int
        Master seed (>= 0).
    field_index : int
        Position of the field in :data:`FIELDS`.
    """
    return int(np.random.SeedSequence([seed, field_index]).generate_state(1)[0])


def make_test_set(n: int, seed: int, *, shape: tuple[int, int] = STAMP_SHAPE, fields=FIELDS) -> dict:
    """Simulate ``n`` stamps per field type.

    Parameters
    ----------
    n : int
        Stamps per field (>= 1).
    seed : int
        Master seed, see :func:`field_seed` (the seed of a field depends on
        its position in :data:`FIELDS`, not in ``fields``).
    shape : (int, int)
        Stamp shape (ny, nx).
    fields : sequence of str
        Field types to simulate, a subset of :data:`FIELDS`.

    Returns
    -------
    dict
        Field name -> :class:`~deepcr_jax.simulate.StampBatch` with arrays
        (n, ny, nx): ``image``/``clean`` in e-, ``cr_mask``/``ignore`` bool
        (True = CR / excluded).
    """
    unknown = [f for f in fields if f not in FIELDS]
    if unknown:
        raise ValueError(f"fields must be among {FIELDS}; got {unknown}")
    return {f: make_stamps(n, f, seed=field_seed(seed, FIELDS.index(f)), shape=shape) for f in fields}


def head(batch: StampBatch, n: int) -> StampBatch:
    """The first ``n`` stamps of a batch (the batch itself if it has at most ``n``)."""
    if n >= len(batch):
        return batch
    return dataclasses.replace(
        batch, **{f.name: getattr(batch, f.name)[:n] for f in dataclasses.fields(batch)}
    )


def describe_batch(batch: StampBatch) -> dict:
    """Summary of a batch: stamps, exposure-time and sky ranges, CR and ignored fractions (JSON-able)."""
    valid = ~batch.ignore
    return {
        "n_stamps": len(batch),
        "exptime_s": [float(batch.exptime.min()), float(batch.exptime.max())],
        "sky_e": [float(batch.sky.min()), float(batch.sky.max())],
        "cr_pixel_fraction": float(batch.cr_mask[valid].mean()),
        "ignored_fraction": float(batch.ignore.mean()),
        "n_cr_pixels": int(np.count_nonzero(batch.cr_mask & valid)),
        "n_clean_pixels": int(np.count_nonzero(~batch.cr_mask & valid)),
    }
