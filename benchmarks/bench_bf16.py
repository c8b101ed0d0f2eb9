"""Error of the opt-in bfloat16 compute path against float32, on the synthetic set.

bfloat16 is for GPU/TPU, where it is native (on this CPU it is not faster).
The bar: binary masks identical to the float32 path on >= 99.99 % of pixels
at each model's threshold. Results: benchmarks/results/bf16.{md,json}.

    python benchmarks/bench_bf16.py [--n 30] [--stem bf16]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine, write_results

import deepcr_jax
from deepcr_jax.simulate import make_stamps

BAR = 0.9999


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=30, help="stamps per field type")
    ap.add_argument("--seed", type=int, default=31)
    ap.add_argument("--stem", default="bf16", help="results file name (results/<stem>.md/.json)")
    args = ap.parse_args(argv)
    rows, data = [], {"machine": machine(), "n": args.n, "seed": args.seed, "results": []}
    for field in ("extragalactic", "globular", "resolved"):
        st = make_stamps(args.n, field, seed=args.seed)
        for model in deepcr_jax.list_models("mask"):
            if not model.startswith("ACS-WFC"):
                continue
            t = deepcr_jax.MODELS[model].threshold
            p32 = deepcr_jax.load(model, tile=256).clean(st.image, binary=False, ignore=st.ignore)
            p16 = deepcr_jax.load(model, tile=256, dtype="bfloat16").clean(st.image, binary=False, ignore=st.ignore)
            agree = float(np.mean((p32 > t) == (p16 > t)))
            r = {"field": field, "model": model, "mask_agreement": agree,
                 "max_abs_prob_diff": float(np.abs(p32 - p16).max()),
                 "cr_pixels_f32": int((p32 > t).sum()), "cr_pixels_bf16": int((p16 > t).sum())}
            data["results"].append(r)
            rows.append([field, model, f"{100 * agree:.4f} %", "yes" if agree >= BAR else "NO",
                         f"{r['max_abs_prob_diff']:.3f}", f"{r['cr_pixels_f32']} / {r['cr_pixels_bf16']}"])
            print(rows[-1], flush=True)
    write_results(args.stem, f"bfloat16 vs float32 binary masks ({args.n} stamps 256x256 per field, seed {args.seed})",
                  ["field", "model", "identical mask pixels", f">= {100 * BAR:g} %", "max |dp|",
                   "CR pixels f32 / bf16"], rows, data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
