"""Peak memory (RSS) of cleaning one large frame, each run in a fresh process.

deepcr-jax's memory is bounded by the tile batch, not the image: a 4096x4096
frame must clean with peak RSS < 1.5 GB on CPU. The reference's whole-image
forward (segment=False) and its default segmented clean() are measured the
same way for comparison. Results: benchmarks/results/memory.{md,json}.

    python benchmarks/bench_memory.py [--size 4096]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine, write_results

#: what each child process runs; it prints one JSON line
CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    import numpy as np
    size, peer, tile, batch = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    rng = np.random.default_rng(0)
    img = rng.normal(100.0, 10.0, (size, size)).astype(np.float32)
    img[rng.integers(0, size, 2000), rng.integers(0, size, 2000)] += 3000.0
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if peer == "deepcr-jax":
        import deepcr_jax
        mask = deepcr_jax.clean(img, tile=tile, batch=batch)
    else:
        import torch
        torch.set_num_threads(2)
        from deepcr_jax.reference import reference
        ref = reference("ACS-WFC")
        mask = ref.clean(img, segment=(peer == "deepCR segment=True"), patch=1024)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_rss_mb": peak / 1024, "before_mb": base / 1024, "seconds": dt,
                      "cr_pixels": int(np.sum(mask > 0.5))}))
    """
)


def run_child(size: int, peer: str, tile: int = 512, batch: int = 1) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(size), peer, str(tile), str(batch)],
        check=False, capture_output=True, text=True, timeout=1800,
    )
    if out.returncode != 0:
        why = "killed (SIGKILL: out of memory)" if out.returncode == -9 else f"failed (exit {out.returncode})"
        return {"error": why, "stderr_tail": out.stderr[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--stem", default="memory", help="results file name (results/<stem>.md/.json)")
    args = ap.parse_args(argv)
    runs = [("deepcr-jax", 256, 1), ("deepcr-jax", 512, 1), ("deepcr-jax", 512, 4)]
    if not args.skip_reference:
        runs += [("deepCR segment=True", 0, 0), ("deepCR segment=False", 0, 0)]
    rows, data = [], {"machine": machine(), "size": args.size, "results": []}
    for peer, tile, batch in runs:
        r = run_child(args.size, peer, tile, batch)
        r.update(peer=peer, tile=tile, batch=batch)
        data["results"].append(r)
        cfg = f"tile {tile}, batch {batch}" if peer == "deepcr-jax" else ("patch 1024" if "True" in peer else "whole image")
        if "error" in r:
            rows.append([f"{args.size}x{args.size}", peer, cfg, r["error"], "-"])
        else:
            rows.append([f"{args.size}x{args.size}", peer, cfg, f"{r['peak_rss_mb']:.0f}", f"{r['seconds']:.1f}"])
        print(rows[-1], flush=True)
    text = write_results(args.stem, f"Peak memory, one {args.size}x{args.size} float32 frame (fresh process each)",
                         ["frame", "implementation", "config", "peak RSS [MB]", "wall [s] (incl. compile/load)"],
                         rows, data)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
