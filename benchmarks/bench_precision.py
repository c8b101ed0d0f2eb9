"""Matmul precision on an accelerator: why the float32 path asks for "highest".

On GPUs (Ampere and later) XLA's default precision runs float32 convolutions
as TF32 (10-bit mantissa); TPUs use bf16 passes. deepcr-jax's float32 path
asks for ``"highest"``. This script measures, on the default backend, the
probability error of each precision against the same network on the CPU
(float32, itself within ~1e-6 of the PyTorch reference) and its speed.
Results: benchmarks/results/<stem>.{md,json}.

    python benchmarks/bench_precision.py [--n 32] [--stem precision_gpu]
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine, timeit, write_results

import deepcr_jax
from deepcr_jax.model import network_forward
from deepcr_jax.simulate import make_stamps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32, help="stamps 256x256 (mixed fields)")
    ap.add_argument("--model", default="ACS-WFC")
    ap.add_argument("--stem", default="precision")
    args = ap.parse_args(argv)
    params = deepcr_jax.load_params(args.model)
    st = make_stamps(args.n, "mixed", seed=23)
    x = (st.image / np.float32(params.scale))[..., None].astype(np.float32)
    cpu = jax.devices("cpu")[0]
    p_cpu = np.asarray(jax.jit(network_forward)(jax.device_put(params, cpu), jax.device_put(x, cpu)))
    t = deepcr_jax.MODELS[args.model].threshold
    rows, data = [], {"machine": machine(), "n": args.n, "model": args.model, "results": []}
    xd = jax.device_put(x)
    for precision in ("default", "high", "highest"):

        def fwd(p, v, precision=precision):
            with jax.default_matmul_precision(precision):
                return p.module.apply(p.variables, v)[..., 0]

        f = jax.jit(fwd)
        p = np.asarray(f(params, xd))
        timing = timeit(lambda f=f: jax.block_until_ready(f(params, xd)), repeats=10)
        err = float(np.abs(p - p_cpu).max())
        agree = float(np.mean((p > t) == (p_cpu > t)))
        data["results"].append({"precision": precision, "max_abs_dp": err, "mask_agreement": agree, **timing})
        rows.append([precision, f"{err:.2e}", f"{100 * agree:.4f} %", f"{1e3 * timing['best']:.1f}",
                     f"{1e3 * timing['median']:.1f}"])
        print(rows[-1], flush=True)
    write_results(args.stem, f"float32 matmul precision on {jax.devices()[0].device_kind} ({args.model}, "
                  f"{args.n} stamps 256x256 in one batch)",
                  ["precision", "max |dp| vs CPU float32", "identical mask pixels", "best [ms]", "median [ms]"],
                  rows, data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
