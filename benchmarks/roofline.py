"""On-paper throughput of the deepCR networks on accelerators this project cannot reach.

For each network and workload (100 stamps of 256x256; one 4096x2048 chip),
XLA's cost analysis of the compiled forward (``jax.jit(...).lower().compile()
.cost_analysis()``, the XLA convolution path, compiled here for the CPU) gives
the FLOPs and the bytes moved layer by layer; the architecture gives each
conv's FLOPs and output width. The time bound on a device is then

    max(sum over layers of FLOPs / (peak * utilisation), bytes / HBM bandwidth)

where ``utilisation`` is the fraction of the matrix unit a layer of ``Co``
output channels fills: a 128-wide TPU MXU sees the conv as a matmul with
``N = Co`` (32 or 64 here), so it runs at ``min(Co, 128) / 128`` of peak,
and the first conv (``K = 9 * Ci = 9`` or 18) at ``K / 128`` of that. NVIDIA
tensor cores tile by 8-16 and are taken as fully used. These are bounds, not
predictions: no launch overhead, no fusion beyond what XLA:CPU did.

    python benchmarks/roofline.py            # writes results/roofline.{md,json}
    python benchmarks/roofline.py --out /tmp  # anywhere else

Device figures are the vendors' dense peaks (no sparsity).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp
from _common import RESULTS, machine

import deepcr_jax
from deepcr_jax.arch import blocks

#: (name, {precision: peak FLOP/s}, HBM bytes/s, matrix-unit width or None).
#: "exact" on a TPU is float32 at "highest" precision: six bf16 MXU passes.
DEVICES = [
    ("NVIDIA H100 SXM", {"exact": 67e12, "tf32": 495e12, "bf16": 989e12}, 3.35e12, None),
    ("NVIDIA H200", {"exact": 67e12, "tf32": 495e12, "bf16": 989e12}, 4.8e12, None),
    ("TPU v5e", {"exact": 197e12 / 6, "bf16": 197e12}, 0.819e12, 128),
    ("TPU v5p", {"exact": 459e12 / 6, "bf16": 459e12}, 2.765e12, 128),
]

WORKLOADS = [("100 stamps 256x256", (100, 256, 256)), ("chip 4096x2048 (as 256 tiles)", (0, 4096, 2048))]


def conv_layers(depth: int, hidden: int, in_channels: int, ny: int, nx: int) -> list[tuple[float, int, int]]:
    """(FLOPs, K, Co) of every conv of the network on one (ny, nx) image, as a matmul ``K -> Co``.

    3x3 convs: ``K = 9 * Ci``; the 2x2 stride-2 up-convs: ``K`` = the lower
    level's channels. The 1x1 head and the pooling are left out (< 1 %).
    """
    out = []
    levels = []
    for b in blocks(depth, hidden, in_channels):
        if b.role == "encoder":
            if b.pool:
                ny, nx = ny // 2, nx // 2
            out.append((2 * 9 * b.in_channels * b.out_channels * ny * nx, 9 * b.in_channels, b.out_channels))
            out.append((2 * 9 * b.out_channels**2 * ny * nx, 9 * b.out_channels, b.out_channels))
            levels.append((ny, nx))
        else:
            levels.pop()
            ny, nx = levels[-1]
            co = b.out_channels
            low = 2 * co  # the up-conv: (ny/2, nx/2, 2co) -> (ny, nx, co), 4 taps per input pixel
            out.append((2 * low * co * ny * nx, low, co))
            out.append((2 * 9 * b.in_channels * co * ny * nx, 9 * b.in_channels, co))
            out.append((2 * 9 * co * co * ny * nx, 9 * co, co))
    return out


def xla_cost(model: str, n: int, ny: int, nx: int) -> dict[str, float]:
    """XLA's cost analysis (flops, bytes accessed) of the float32 forward of ``n`` images (ny, nx)."""
    params = deepcr_jax.load_params(model)
    module = params.module
    x = jax.ShapeDtypeStruct((n, ny, nx, params.in_channels), jnp.float32)
    compiled = jax.jit(lambda v, x: module.apply(v, x)).lower(params.variables, x).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return {"flops": float(cost.get("flops", 0.0)), "bytes": float(cost.get("bytes accessed", 0.0))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=RESULTS, help="folder for roofline.{md,json} (default benchmarks/results)")
    ap.add_argument("--model", default="ACS-WFC", help="zoo mask model (default ACS-WFC, 2-32)")
    args = ap.parse_args(argv)
    params = deepcr_jax.load_params(args.model)
    rows, data = [], {"machine": machine(), "model": args.model, "workloads": {}}
    for label, (n, ny, nx) in WORKLOADS:
        if n == 0:  # a chip as 256 tiles with the 16 px halo: the tiles the pipeline computes
            core = 256 - 2 * 16
            n, ny, nx = -(-ny // core) * -(-nx // core), 256, 256
        layers = conv_layers(params.depth, params.hidden, params.in_channels, ny, nx)
        flops_arch = n * sum(f for f, _, _ in layers)
        costs = {"exact": xla_cost(args.model, n, ny, nx)}
        data["workloads"][label] = {"images": n, "shape": [ny, nx], "arch_flops": flops_arch, "xla": costs}
        for dev, peaks, bw, mxu in DEVICES:
            for prec, peak in peaks.items():
                # XLA:CPU upcasts bf16 convolutions, so its bf16 byte count is of float32
                # activations; on an accelerator they are stored as bf16: half the bytes
                moved = costs["exact"]["bytes"] * (0.5 if prec == "bf16" else 1.0)
                if mxu:
                    t_compute = n * sum(f / (peak * min(co, mxu) / mxu * min(1.0, k / mxu))
                                        for f, k, co in layers)
                else:
                    t_compute = flops_arch / peak
                t_memory = moved / bw
                bound = max(t_compute, t_memory)
                rows.append([label, dev, prec, f"{flops_arch / 1e12:.3f}", f"{moved / 1e9:.2f}",
                             f"{1e3 * t_compute:.2f}", f"{1e3 * t_memory:.2f}", f"{1e3 * bound:.2f}",
                             "memory" if t_memory > t_compute else "compute"])
                data["workloads"][label].setdefault("devices", []).append(
                    {"device": dev, "precision": prec, "t_compute_s": t_compute, "t_memory_s": t_memory})
    header = ["workload", "device", "precision", "TFLOP", "GB moved (XLA)", "compute [ms]", "memory [ms]",
              "bound [ms]", "limited by"]
    md = [f"# On-paper bounds: {args.model} forward on accelerators", "",
          (f"Command: `python benchmarks/roofline.py`. FLOPs from the architecture (XLA's cost analysis: "
          f"{data['workloads'][WORKLOADS[0][0]]['xla']['exact']['flops'] / 1e12:.3f} TFLOP for the stamps); "
          "bytes from XLA's cost analysis of the float32 forward compiled for the CPU (layer by layer), "
          "halved for bf16 (activations stored as bf16). See the module docstring for the utilisation model."), "",
          "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "roofline.md"), "w") as fh:
        fh.write("\n".join(md) + "\n")
    with open(os.path.join(args.out, "roofline.json"), "w") as fh:
        json.dump(data, fh, indent=2, default=str)
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
