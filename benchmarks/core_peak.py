"""How well inpainting models predict a star core hidden under a mask.

The pooled borrowed-mask MSE of ``accuracy.py`` is decided by a few bright
star cores under large masks. This script takes, in one field of the
simulated test set, the stamp whose brightest pixel under its borrowed mask
(neither CR nor ignored) is brightest, and prints for each model:

* the predicted and true value there under the borrowed mask;
* with a block over the core instead (``--block``: rows and columns relative
  to the peak), the predicted fraction of the peak above sky when the stamp
  is scaled about its sky level so that peak is ``--peaks`` e-.

Nothing is written. Usage::

    python benchmarks/core_peak.py ACS-WFC-F606W-2-32 path/to/model.npz --seed 7
"""

from __future__ import annotations

import argparse

import numpy as np

import deepcr_jax
from deepcr_jax import evaluate as ev
from deepcr_jax.simulate import FIELDS


def brightest_masked_core(image: np.ndarray, hidden: np.ndarray) -> tuple[int, int, int]:
    """(stamp, y, x) of the brightest hidden pixel of a (n, ny, nx) stack; ``hidden`` bool (n, ny, nx)."""
    flat = np.where(hidden, image, -np.inf).reshape(len(image), -1)
    best = int(np.argmax(flat.max(axis=1)))
    y, x = np.unravel_index(int(np.argmax(flat[best])), image.shape[1:])
    return best, int(y), int(x)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="inpainting models: zoo names or .npz paths")
    p.add_argument("--seed", type=int, default=7, help="test-set seed (accuracy.py: 2020)")
    p.add_argument("--n", type=int, default=1000, help="stamps per field")
    p.add_argument("--field", default="globular", choices=FIELDS)
    p.add_argument("--block", type=int, nargs=4, default=(-3, 1, -2, 5), metavar=("Y0", "Y1", "X0", "X1"),
                   help="block rows Y0..Y1 and columns X0..X1 (inclusive) relative to the peak")
    p.add_argument("--peaks", type=float, nargs="+", default=(10000, 25000, 50000, 65000),
                   help="peaks above sky (e-) to scale the stamp to")
    a = p.parse_args(argv)

    test = ev.make_test_set(a.n, a.seed)
    mi = ev.donor_masks({f: test[f].cr_mask for f in FIELDS}, a.seed)[a.field][0]
    b = test[a.field]
    i, y, x = brightest_masked_core(b.image, mi & ~b.cr_mask & ~b.ignore)
    image, mask = b.image[i].astype(np.float32), mi[i]
    sky = float(np.median(image))
    block = np.zeros_like(mask)
    y0, y1, x0, x1 = a.block
    block[max(y + y0, 0):y + y1 + 1, max(x + x0, 0):x + x1 + 1] = True
    print(f"{a.field} stamp #{i} (seed {a.seed}): peak {image[y, x]:.0f} e- at ({y}, {x}) under a "
          f"{int(mask.sum())}-px borrowed mask; sky {sky:.0f} e-")
    print("model | predicted at the peak (borrowed mask) | block: predicted / true peak above sky at "
          + ", ".join(f"{v:.0f}" for v in a.peaks) + " e-")
    for m in a.models:
        cleaner = deepcr_jax.load("ACS-WFC", inpaint=m)
        pred = np.asarray(cleaner.inpaint(image[None], mask[None]))[0]
        ratios = []
        for peak in a.peaks:
            scaled = (sky + (image - sky) * (peak / (image[y, x] - sky))).astype(np.float32)
            out = np.asarray(cleaner.inpaint(scaled[None], block[None]))[0]
            ratios.append((out[y, x] - sky) / (scaled[y, x] - sky))
        print(f"{m} | {pred[y, x]:.0f} | " + ", ".join(f"{r:.2f}" for r in ratios))


if __name__ == "__main__":
    main()
