"""Error of the opt-in bfloat16 compute path against float32, on the synthetic set.

On CPU the bf16 path runs the native bf16 kernels (AMX or AVX-512-BF16,
whichever this CPU has; ``--isa`` picks one or ``all``); each ISA path gets
its own results file, ``bf16_cpu_<isa>``. Elsewhere (GPU/TPU) ``--stem``
names the file. The bar: binary masks identical to the float32 path on
>= 99.99 % of pixels at each model's threshold, for every ACS/WFC mask
model and simulator field. Results: benchmarks/results/<stem>.{md,json}.

    python benchmarks/bench_bf16.py [--n 30] [--isa best|all|amx|avx512bf16] [--stem STEM]
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
    ap.add_argument("--stem", default=None, help="results file name (default bf16_cpu_<isa> on CPU, else bf16)")
    ap.add_argument("--isa", default="best", help="CPU bf16 path: best (what the engine picks), all, amx, avx512bf16")
    args = ap.parse_args(argv)
    import jax

    from deepcr_jax import native

    if jax.default_backend() != "cpu":
        run_one(args, None, args.stem or "bf16")
        return 0
    paths = native.cpu_bf16_paths()
    isas = {"best": [native.bf16_path() or "fp32"], "all": list(paths)}.get(args.isa, [args.isa])
    for isa in isas:
        os.environ["DEEPCR_JAX_NATIVE_ISA"] = isa
        run_one(args, isa, args.stem if args.stem and len(isas) == 1 else f"bf16_cpu_{isa}")
    return 0


def run_one(args, isa: str | None, stem: str) -> None:
    """All fields x models for one ISA path (None: not on CPU); writes results/<stem>."""
    info = machine()
    info["bf16_isa_requested"] = isa
    rows, data = [], {"machine": info, "n": args.n, "seed": args.seed, "results": []}
    for field in ("extragalactic", "globular", "resolved"):
        st = make_stamps(args.n, field, seed=args.seed)
        for model in deepcr_jax.list_models("mask"):
            if not model.startswith("ACS-WFC"):
                continue
            t = deepcr_jax.MODELS[model].threshold
            p32 = deepcr_jax.load(model, tile=256).clean(st.image, binary=False, ignore=st.ignore)
            c16 = deepcr_jax.load(model, tile=256, dtype="bfloat16")
            p16 = c16.clean(st.image, binary=False, ignore=st.ignore)
            path = c16.engine("mask", 256).isa or "XLA"
            agree = float(np.mean((p32 > t) == (p16 > t)))
            r = {"field": field, "model": model, "isa": path, "mask_agreement": agree,
                 "max_abs_prob_diff": float(np.abs(p32 - p16).max()),
                 "cr_pixels_f32": int((p32 > t).sum()), "cr_pixels_bf16": int((p16 > t).sum())}
            data["results"].append(r)
            rows.append([field, model, path, f"{100 * agree:.4f} %", "yes" if agree >= BAR else "NO",
                         f"{r['max_abs_prob_diff']:.3f}", f"{r['cr_pixels_f32']} / {r['cr_pixels_bf16']}"])
            print(rows[-1], flush=True)
    where = f", CPU bf16 path {isa}" if isa else ""
    write_results(stem, f"bfloat16 vs float32 binary masks ({args.n} stamps 256x256 per field, seed {args.seed}{where})",
                  ["field", "model", "bf16 path run", "identical mask pixels", f">= {100 * BAR:g} %", "max |dp|",
                   "CR pixels f32 / bf16"], rows, data)


if __name__ == "__main__":
    raise SystemExit(main())
