"""Inpainting of hidden source cores: every stamp's brightest pixel under a real CR shape.

The borrowed-mask MSE of ``accuracy.py`` is decided by the few stamps where a
CR mask happens to cover a bright star core (at seed 7, one globular star
holds 60-91 % of the error). This score asks the same question of every
stamp: the largest CR of its borrowed mask (8-connected) is moved so that one
of its pixels, drawn at random, covers the stamp's brightest pixel that is
neither a CR nor ignored, and the pooled MSE over that blob (less own CRs and
ignored pixels, against the observed image) is printed per field with the
share of the worst stamp, next to the median predicted fraction of the peak
above sky for peaks above 10,000 e-. The stamp's other pixels are left as
observed. Nothing is written. Usage::

    python benchmarks/forced_cores.py ACS-WFC-F606W-2-32 path/to/model.npz [--seed 7] [--n 1000]
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import ndimage

import deepcr_jax
from deepcr_jax import evaluate as ev
from deepcr_jax.simulate import FIELDS

#: Peaks above sky (e-) counted in the median-fraction column.
BRIGHT_E = 10000.0


def forced_core_masks(image: np.ndarray, valid: np.ndarray, donor: np.ndarray,
                      seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Each stamp's largest donor CR, moved onto its brightest valid pixel.

    Parameters
    ----------
    image : ndarray, shape (n, ny, nx)
        Stamps (e-).
    valid : ndarray of bool, shape (n, ny, nx)
        True = neither CR nor ignored (where the peak may lie).
    donor : ndarray of bool, shape (n, ny, nx)
        Borrowed CR masks (True = CR); a stamp whose donor has none gets its
        peak pixel alone.
    seed : int
        Seeds the blob pixel placed on each peak.

    Returns
    -------
    masks : ndarray of bool, shape (n, ny, nx)
        True = pixel to inpaint (the moved blob, clipped at the edges).
    peaks : ndarray of int, shape (n, 2)
        (y, x) of each stamp's peak.
    """
    n, ny, nx = image.shape
    rng = np.random.default_rng([seed, 9])
    flat = np.where(valid, image, -np.inf).reshape(n, -1)
    peaks = np.stack(np.unravel_index(np.argmax(flat, axis=1), (ny, nx)), axis=1)
    masks = np.zeros((n, ny, nx), bool)
    for i, (py, px) in enumerate(peaks):
        labels, count = ndimage.label(donor[i], structure=np.ones((3, 3)))
        if not count:
            masks[i, py, px] = True
            continue
        sizes = np.bincount(labels.ravel())[1:]
        ys, xs = np.nonzero(labels == 1 + int(np.argmax(sizes)))
        j = int(rng.integers(len(ys)))
        ys, xs = ys - ys[j] + py, xs - xs[j] + px
        keep = (ys >= 0) & (ys < ny) & (xs >= 0) & (xs < nx)
        masks[i, ys[keep], xs[keep]] = True
    return masks, peaks


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="inpainting models: zoo names or .npz paths")
    p.add_argument("--seed", type=int, default=7, help="test-set seed (accuracy.py: 2020)")
    p.add_argument("--n", type=int, default=1000, help="stamps per field")
    p.add_argument("--fields", nargs="+", default=list(FIELDS), choices=FIELDS)
    a = p.parse_args(argv)

    test = ev.make_test_set(a.n, a.seed, fields=tuple(a.fields))
    borrowed = ev.donor_masks({f: test[f].cr_mask for f in a.fields}, a.seed)
    print(f"forced cores, seed {a.seed}, {a.n} stamps per field: MSE (100 e-)^2 over the moved CR "
          f"(worst stamp's share); median predicted fraction of peaks > {BRIGHT_E:.0f} e- above sky")
    print("model | " + " | ".join(a.fields))
    cleaners = {m: deepcr_jax.load("ACS-WFC", inpaint=m, tile=256) for m in a.models}
    for m, cleaner in cleaners.items():
        cells = []
        for f in a.fields:
            b = test[f]
            image = b.image.astype(np.float32)
            valid = ~b.cr_mask & ~b.ignore
            masks, peaks = forced_core_masks(image, valid, borrowed[f][0], a.seed)
            pred = np.asarray(cleaner.inpaint(image, masks), np.float64)
            scored = masks & valid
            sq, npx = ev.stamp_sse(pred, image, scored)
            rows = np.arange(len(image))
            sky = np.median(image.reshape(len(image), -1), axis=1)
            above = image[rows, peaks[:, 0], peaks[:, 1]] - sky
            frac = (pred[rows, peaks[:, 0], peaks[:, 1]] - sky) / np.maximum(above, 1.0)
            bright = above > BRIGHT_E
            med = f"{np.median(frac[bright]):.2f} (n={int(bright.sum())})" if bright.any() else "-"
            cells.append(f"{sq.sum() / npx.sum() / ev.PAPER_MSE_UNIT_E2:.1f} "
                         f"({sq.max() / sq.sum():.0%}); {med}")
        print(f"{m} | " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
