"""Two inpainting models on the same borrowed masks: their MSE ratio per field, with a paired bootstrap.

A field's pooled MSE can hang on one stamp (at seed 7 one globular star under
a borrowed CR mask holds 60-91 % of the error), so a bare "A < B" says
little. This script inpaints ``accuracy.py``'s test set (same simulator, seed
and donor masks) with models A and B and prints, per field and seed (and pooled over the seeds' stamps): both pooled MSEs
((100 e-)^2, the paper's Table 3 protocol), the ratio A / B (< 1: A better)
and its paired-bootstrap interval, the share of resamples in which A is worse,
the share of stamps A inpaints better, and the stamp with the largest
difference, its share of all differences and the ratio without it. Nothing
is written. Usage::

    python benchmarks/compare_inpaint.py benchmarks/results/trained/inpaint-jax-2-32-ft2.npz \\
        ACS-WFC-F606W-2-32 --seed 7 2020 --n 1000
"""

from __future__ import annotations

import argparse

import numpy as np

import deepcr_jax
from deepcr_jax import evaluate as ev
from deepcr_jax.simulate import FIELDS

#: Stamps inpainted per call (bounds the memory of a 1000-stamp field).
CHUNK = 100


def field_sse(cleaner, batch, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-stamp squared error of ``cleaner`` inpainting ``mask`` (n, ny, nx), scored as in the paper."""
    image = batch.image.astype(np.float32)
    scored = mask & ~batch.cr_mask & ~batch.ignore
    parts = [ev.stamp_sse(cleaner.inpaint(image[i:i + CHUNK], mask[i:i + CHUNK]), image[i:i + CHUNK],
                          scored[i:i + CHUNK]) for i in range(0, len(image), CHUNK)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_a", help="inpainting model A: zoo name or .npz path")
    p.add_argument("model_b", help="inpainting model B (the reference)")
    p.add_argument("--seed", type=int, nargs="+", default=[2020],
                   help="test-set seed(s) (accuracy.py's default: 2020); with several, also their stamps pooled")
    p.add_argument("--n", type=int, default=1000, help="stamps per field and seed")
    p.add_argument("--fields", nargs="+", default=list(FIELDS), choices=FIELDS)
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples")
    a = p.parse_args(argv)

    cleaners = [deepcr_jax.load("ACS-WFC", inpaint=m, tile=256) for m in (a.model_a, a.model_b)]
    print(f"A = {a.model_a}\nB = {a.model_b}\nborrowed masks, {a.n} stamps per field and seed, "
          f"MSE in (100 e-)^2, {a.n_boot} paired bootstrap resamples")
    print("seed | field | MSE A | MSE B | A/B [95 %] | P(A worse) | stamps A better | top stamp (share) "
          "| A/B without it")
    print("---|---|---|---|---|---|---|---|---")
    pooled: dict[str, list] = {f: [] for f in a.fields}
    for seed in a.seed:
        test = ev.make_test_set(a.n, seed, fields=tuple(a.fields))
        borrowed = ev.donor_masks({f: test[f].cr_mask for f in a.fields}, seed)
        for f in a.fields:
            (sse_a, npx), (sse_b, _) = (field_sse(c, test[f], borrowed[f][0]) for c in cleaners)
            pooled[f].append((sse_a, sse_b, npx))
            _row(str(seed), f, sse_a, sse_b, npx, a.n_boot, seed)
    if len(a.seed) > 1:
        for f in a.fields:
            sse_a, sse_b, npx = (np.concatenate(parts) for parts in zip(*pooled[f]))
            _row("pooled", f, sse_a, sse_b, npx, a.n_boot, 0)


def _row(label: str, field: str, sse_a, sse_b, npx, n_boot: int, seed: int) -> None:
    r = ev.paired_mse_ratio(sse_a, sse_b, npx, n_boot=n_boot, seed=seed)
    u = ev.PAPER_MSE_UNIT_E2
    print(f"{label} | {field} | {r['mse_a_e2'] / u:.3f} | {r['mse_b_e2'] / u:.3f} | {r['ratio']:.2f} "
          f"[{r['ratio_lo']:.2f}, {r['ratio_hi']:.2f}] | {r['p_a_worse']:.2f} | {r['a_better_images']:.0%} | "
          f"#{r['top_image']} ({r['top_share']:.0%}) | {r['ratio_without_top']:.2f}", flush=True)


if __name__ == "__main__":
    main()
