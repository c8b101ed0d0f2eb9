"""Speed: deepcr-jax side by side with deepCR (PyTorch) and astroscrappy, in one run.

Workloads (the paper's plus full frames):
  * 100 stamps of 256x256 (mask 2-32 and 2-4; inpaint 2-32 and 3-32),
  * one ACS/WFC chip, 4096x2048 (mask 2-32).
Every peer runs on the same simulated electrons, with the same threads (all
cores), after a warm-up; best and median of repeats are reported, with
``block_until_ready`` / numpy results. Where JAX's default backend is a GPU,
deepCR runs on the GPU too (``device="GPU"``) and a batched, on-device torch
forward is added. Results: benchmarks/results/<stem>.{md,json}.

Each row names the instruction path it ran (deepcr-jax: ``Engine.isa``, the
native kernels' ``fp32`` / ``avx512bf16`` / ``amx`` path, or XLA; torch:
oneDNN fp32 or bf16 autocast) and its fraction of this machine's measured
peak: a large float32 matmul (numpy) for float32 rows, a large bfloat16
matmul (torch, oneDNN: AMX where the CPU has it) for bf16 rows. On CPU the
bfloat16 rows (deepcr-jax ``dtype="bfloat16"``, deepCR under
``torch.autocast("cpu", dtype=torch.bfloat16)``) run unless ``--no-bf16``.

Host overhead (issue 13): a second table times ``clean()`` against the
network alone on the same tiles already on the device (``Engine.forward``,
one call per batch): for 100 stamps of 256x256 and a 4096x2048 chip, mask
2-32, alternating the two ``--repeats`` times; the ratio is of the best
times (and the median of the paired ratios, steadier on a loaded machine),
with the calling thread's CPU time in ``clean()`` (the host's share of the
work: the device computes on XLA's threads). ``--overhead`` runs only that
table.

Results go to benchmarks/results/<stem>.{md,json}; ``--out DIR`` writes them
to DIR instead, and ``--quick`` (10 stamps, a 1024x1024 frame, 1 repeat)
never writes to benchmarks/results: without ``--out`` it writes to a new
temporary folder (printed at the end).

    python benchmarks/bench_speed.py [--quick] [--overhead] [--out DIR] [--repeats 3] [--batches 1,10]
                                     [--no-bf16] [--stem speed]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common
from _common import machine, timeit, write_results

import deepcr_jax
from deepcr_jax import native
from deepcr_jax.native import unet as native_unet
from deepcr_jax.simulate import make_stamps, simulate_chip, simulate_exposure

#: peer name -> (instruction path, "fp32" | "bf16"), filled as the peers are built
PATHS: dict[str, tuple[str, str]] = {}


def peak_gflops(kind: str, n: int = 4096, repeats: int = 5) -> float:
    """This machine's achievable peak, GFLOP/s: best of ``repeats`` n x n matmuls, all cores.

    ``"fp32"``: numpy float32 matmul (its BLAS); ``"bf16"``: torch bfloat16
    matmul (oneDNN; AMX tiles where the CPU has them).
    """
    import time

    if kind == "fp32":
        a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
        fn = lambda: a @ a
    else:
        import torch

        torch.set_num_threads(os.cpu_count())
        a = torch.randn(n, n).to(torch.bfloat16)
        fn = lambda: torch.mm(a, a)
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def _jax_path(cleaner, which: str = "mask", tile: int = 256) -> tuple[str, str]:
    e = cleaner.engine(which, tile)
    kind = "fp32" if np.dtype(e.dtype) == np.float32 else "bf16"
    path = f"native {e.isa}" if e.isa else "XLA"
    return (path if e.precision == "exact" else f"{path}, {e.precision}"), kind


#: multiply-adds x 2 per pixel of the 2-32 mask network (3x3 convs dominate)
def flops_per_pixel(depth: int, hidden: int, cin: int = 1) -> float:
    h = hidden
    f = 9 * (cin * h + h * h)  # inc at full resolution
    f += 9 * (h * 2 * h + 4 * h * h) / 4  # down1 at 1/4 of the pixels
    if depth == 3:
        f += 9 * (2 * h * 4 * h + 16 * h * h) / 16 + (4 * h * 2 * h) / 4 + 9 * (4 * h * 2 * h + 4 * h * h) / 4
    f += (2 * h * h)  # transposed conv (per output pixel)
    f += 9 * (2 * h * h + h * h) + h  # up8 + outc
    return 2 * f


def torch_peers(model: str, stamps: np.ndarray, inpaint: str | None, masks: np.ndarray | None,
                device: str = "CPU", bf16: bool = False):
    """The reference: its documented clean() loop and its best tuned forward.

    On "GPU" the tuned forward's inputs are already on the device (its best
    case) and a batched forward with ``cudnn.benchmark`` is added.
    """
    import deepCR  # noqa: F401
    import torch

    from deepcr_jax.reference import reference

    gpu = device == "GPU"
    torch.set_num_threads(os.cpu_count())
    ref = reference(model, inpaint, device)
    out = {}
    onednn = "cuDNN" if gpu else "oneDNN"
    if inpaint is None:
        out["deepCR clean() loop"] = lambda: [ref.clean(s) for s in stamps]
        net = ref.maskNet.module
        xs = [s[None, None] / np.float32(ref.scale) for s in stamps]
    else:
        out["deepCR inpaint() loop"] = lambda: [ref.inpaint(s, m) for s, m in zip(stamps, masks)]
        net = ref.inpaintNet.module
        xs = [np.stack([s * (1 - m), m])[None] for s, m in zip(stamps, masks.astype(np.float32))]
    net = net.to(memory_format=torch.channels_last)
    xs = [torch.from_numpy(x.astype(np.float32)).to("cuda" if gpu else "cpu").contiguous(
        memory_format=torch.channels_last) for x in xs]
    sync = torch.cuda.synchronize if gpu else (lambda: None)

    def tuned():
        with torch.no_grad():
            for x in xs:
                net(x)
        sync()

    out["deepCR tuned forward (no_grad, channels_last, batch 1)"] = tuned
    for name in out:
        PATHS[name] = (f"torch {onednn} fp32", "fp32")
    if bf16 and not gpu:

        def autocast():
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                for x in xs:
                    net(x)

        name = "deepCR tuned forward, bf16 autocast (no_grad, channels_last, batch 1)"
        out[name] = autocast
        PATHS[name] = ("torch oneDNN bf16 autocast", "bf16")
    if gpu:
        torch.backends.cudnn.benchmark = True
        xb = torch.cat(xs).contiguous(memory_format=torch.channels_last)

        def batched():
            with torch.no_grad():
                for k in range(0, len(xb), 25):
                    net(xb[k : k + 25])
            sync()

        tf32 = "TF32" if torch.backends.cudnn.allow_tf32 else "float32"
        out[f"deepCR tuned forward (no_grad, channels_last, batch 25, cudnn.benchmark, {tf32}, on device)"] = batched
    return out


def astroscrappy_peer(stamps: np.ndarray, ignore: np.ndarray):
    import astroscrappy

    PATHS["astroscrappy (LACosmic, all cores)"] = ("astroscrappy C", "-")

    def run():
        for s, ign in zip(stamps, ignore):
            astroscrappy.detect_cosmics(s, inmask=ign, sigclip=4.5, sigfrac=0.3, objlim=2, niter=4,
                                        sepmed=False, readnoise=5.0, satlevel=np.inf, gain=1.0)
    return run


def jax_peers(model: str, stamps: np.ndarray, inpaint: str | None, masks, tile: int, batches=(1,),
              dtypes=("float32",)):
    """deepcr-jax rows; ``dtypes``: "float32", "bfloat16" (the dtype aliases) or "tf32" (the precision preset)."""
    out = {}
    for dtype in dtypes:
        tag = "" if dtype == "float32" else f", {dtype}"
        setting = {"precision": "tf32"} if dtype == "tf32" else {"dtype": dtype}
        for b in batches:
            if inpaint is None:
                cleaner = deepcr_jax.load(model, tile=tile, batch=b, **setting)
                name = f"deepcr-jax clean(stack){tag}, tile {tile}, batch {b}"
                out[name] = lambda c=cleaner: c.clean(stamps)
                PATHS[name] = _jax_path(cleaner, "mask", tile)
            else:
                cleaner = deepcr_jax.load(model, inpaint=inpaint, tile=tile, batch=b, **setting)
                name = f"deepcr-jax inpaint(stack){tag}, tile {tile}, batch {b}"
                out[name] = lambda c=cleaner: c.inpaint(stamps, masks)
                PATHS[name] = _jax_path(cleaner, "inpaint", tile)
    if inpaint is None:
        params = deepcr_jax.load_params(model)
        fwd = jax.jit(deepcr_jax.predict)
        for b in sorted({1, *batches}):
            xs = [jax.device_put(stamps[k : k + b]) for k in range(0, len(stamps), b)]

            def pure(xs=xs):
                jax.block_until_ready([fwd(params, x) for x in xs])

            # on CPU, predict runs the native float32 kernels where they cover the network
            # (model.network_forward: lax.platform_dependent), else XLA's convolution
            on_native = jax.default_backend() == "cpu" and native.available() and native_unet.supported(
                params.norm, params.hidden, params.in_channels)
            name = f"deepcr-jax jit(predict), batch {b} (arrays on device)"
            out[name] = pure
            PATHS[name] = ("native fp32", "fp32") if on_native else ("XLA", "fp32")
    return out


def device_tiles(engine, params, images: np.ndarray) -> list[tuple[jax.Array, jax.Array]]:
    """The tiles ``clean(images)`` runs, cut once on the host and put on the devices: (x, valid) per batch.

    ``images`` (n, ny, nx) in the model's units; the tiles of
    :func:`deepcr_jax.tiling.plan_tiles` on deepCR's preprocessing, batched
    as the engine batches them (stamps ``batch`` at a time; a frame's tiles
    ``batch`` at a time).
    """
    from deepcr_jax.model import preprocess
    from deepcr_jax.tiling import copy_window, plan_tiles

    x, _ = preprocess(params, images, xp=np)
    b, s, c = engine.batch, engine.tile, params.in_channels
    jobs = []
    for img in x:
        plan = plan_tiles(img.shape[:2], s, params.depth)
        jobs += [(img, plan.window(k)[:2]) for k in range(len(plan))]
    batches = []
    for start in range(0, len(jobs), b):
        xb, vb = np.zeros((b, s, s, c), np.float32), np.zeros((b, s, s, 1), np.float32)
        for slot, (img, (ty, tx)) in enumerate(jobs[start : start + b]):
            copy_window(img, ty, tx, xb[slot], vb[slot, ..., 0])
        batches.append((jax.device_put(xb, engine._data), jax.device_put(vb, engine._data)))
    return batches


def host_overhead(workload: str, model: str, images: np.ndarray, repeats: int) -> dict:
    """``clean(images)`` against the network alone on its tiles, on the device; alternated ``repeats`` times."""
    from deepcr_jax.model import PAD_MULTIPLE
    from deepcr_jax.tiling import choose_tile

    cleaner = deepcr_jax.load(model)
    stack = images if images.ndim == 3 else images[None]
    padded = tuple(-(-n // PAD_MULTIPLE) * PAD_MULTIPLE for n in stack.shape[1:])
    engine = cleaner.engine("mask", choose_tile(padded, cleaner.params.depth, cleaner.tile))
    batches = device_tiles(engine, cleaner.params, stack)

    def network():
        jax.block_until_ready([engine.forward(x, v) for x, v in batches])

    def clean():
        cleaner.clean(images)

    times: dict[str, list[float]] = {"clean": [], "network": [], "clean_host_cpu": []}
    clean(), network()  # warm-up: compile both
    for r in range(repeats):
        order = [("clean", clean), ("network", network)]
        for name, fn in order[:: 1 if r % 2 == 0 else -1]:
            t0, c0 = time.perf_counter(), time.thread_time()
            fn()
            times[name].append(time.perf_counter() - t0)
            if name == "clean":
                times["clean_host_cpu"].append(time.thread_time() - c0)
    ratios = [a / b for a, b in zip(times["clean"], times["network"])]
    return {
        "workload": workload,
        "tile": engine.tile,
        "batch": engine.batch,
        "tiles": len(batches) * engine.batch,
        "isa": f"native {engine.isa}" if engine.isa else "XLA",
        "clean_best": min(times["clean"]),
        "network_best": min(times["network"]),
        "ratio_best": min(times["clean"]) / min(times["network"]),
        "ratio_median": statistics.median(ratios),
        # this thread's CPU time in clean(): the host's work (the device computes on XLA's threads)
        "clean_host_cpu_best": min(times["clean_host_cpu"]),
        "repeats": repeats,
        "times": times,
    }


def overhead_table(results: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["workload", "tiles (S, batch)", "ISA path", "clean() best [s]", "network alone best [s]",
              "clean / network (best)", "clean / network (median of pairs)", "host CPU in clean() [s]"]
    rows = [[r["workload"], f"{r['tiles']} ({r['tile']}, {r['batch']})", r["isa"], f"{r['clean_best']:.3f}",
             f"{r['network_best']:.3f}", f"{r['ratio_best']:.3f}", f"{r['ratio_median']:.3f}",
             f"{r['clean_host_cpu_best']:.3f}"] for r in results]
    return header, rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10 stamps, a 1024x1024 frame, 1 repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", default="1", help="comma-separated tile batch sizes for deepcr-jax")
    ap.add_argument("--skip-chip", action="store_true")
    ap.add_argument("--no-bf16", dest="bf16", action="store_false",
                    help="skip the bfloat16 rows (deepcr-jax dtype='bfloat16', torch bf16 autocast)")
    ap.add_argument("--stem", default="speed", help="results file name (<out>/<stem>.md/.json)")
    ap.add_argument("--out", default=None, metavar="DIR",
                    help="write the results here instead of benchmarks/results/ (--quick: a temporary folder)")
    ap.add_argument("--overhead", action="store_true",
                    help="only the host-overhead table: clean() vs the network alone on device-resident tiles")
    ap.add_argument(
        "--default-malloc",
        action="store_true",
        help="leave glibc's malloc thresholds alone (default: raise them for every peer, see "
        "deepcr_jax.engine.tune_host_allocator)",
    )
    args = ap.parse_args(argv)
    _common.choose_results_dir(ap, args.quick, args.out, "bench_speed_quick_")
    from deepcr_jax.engine import tune_host_allocator
    from deepcr_jax.native import status as native_status

    if args.default_malloc:
        os.environ["DEEPCR_JAX_TUNE_MALLOC"] = "0"
    malloc_tuned = False if args.default_malloc else tune_host_allocator()
    n = 10 if args.quick else 100
    repeats = 1 if args.quick else args.repeats
    batches = tuple(int(b) for b in args.batches.split(","))
    device = "GPU" if jax.default_backend() == "gpu" else "CPU"
    st = make_stamps(n, "mixed", seed=11)
    stamps, masks = st.image, st.cr_mask
    rows, data = [], {"machine": machine(), "results": []}
    data["machine"]["malloc_tuned"] = malloc_tuned
    data["machine"]["native_kernel"] = native_status()[0]
    from deepcr_jax import native

    data["machine"]["cpu_bf16_paths"] = list(native.cpu_bf16_paths())
    chip = None
    if not args.skip_chip:
        if args.quick:
            chip = simulate_exposure("extragalactic", (1024, 1024), seed=5).image
        else:
            chip = simulate_chip("extragalactic", seed=5).image

    def overhead() -> tuple[list[str], list[list[str]]]:
        results = [host_overhead(f"{n} stamps 256x256, mask 2-32", "ACS-WFC", stamps, max(repeats, 2))]
        if chip is not None:
            results.append(host_overhead(f"chip {chip.shape[0]}x{chip.shape[1]}, mask 2-32", "ACS-WFC", chip,
                                         max(repeats, 2)))
        data["overhead"] = results
        for r in results:
            print(r["workload"], f"clean/network {r['ratio_best']:.3f} (median {r['ratio_median']:.3f})", flush=True)
        return overhead_table(results)

    if args.overhead:
        header, rows = overhead()
        text = write_results(args.stem, "Host overhead: clean() vs the network alone on device-resident tiles",
                             header, rows, data)
        print(text)
        print(f"written to {_common.RESULTS}")
        return 0
    peaks = {}
    if device == "CPU":
        peaks["fp32"] = peak_gflops("fp32")
        if args.bf16:
            peaks["bf16"] = peak_gflops("bf16")
    data["machine"]["peak_gflops"] = peaks
    print("peak GFLOP/s:", peaks, flush=True)

    def record(workload, pixels, fl, peers):
        base = bf16_ref = None
        for name, fn in peers.items():
            t = timeit(fn, repeats=repeats)
            if base is None and name.startswith("deepCR"):
                base = t["best"]
            if "autocast" in name:
                bf16_ref = t["best"]
            isa, kind = PATHS.get(name, ("?", "fp32"))
            gf = fl / t["best"] / 1e9
            frac = gf / peaks[kind] if kind in peaks else None
            data["results"].append({"workload": workload, "peer": name, **t, "gflops": gf, "isa": isa,
                                    "precision": kind, "fraction_of_peak": frac})
            speed = f"{base / t['best']:.2f}x" if base else "-"
            vs16 = f"{bf16_ref / t['best']:.2f}x" if bf16_ref and "autocast" not in name else "-"
            rows.append([workload, name, isa, f"{t['best']:.2f}", f"{t['median']:.2f}", f"{gf:.0f}",
                         f"{100 * frac:.0f} %" if frac is not None else "-", speed, vs16])
            print(rows[-1], flush=True)

    dtypes = ("float32", "bfloat16") if args.bf16 else ("float32",)
    if device == "GPU":
        dtypes += ("tf32",)  # TensorFloat-32 convolutions (precision="tf32"); a CPU would run exact float32
    for model, label in (("ACS-WFC", "mask 2-32"), ("ACS-WFC-F606W-2-4", "mask 2-4")):
        spec = deepcr_jax.MODELS[model]
        fl = flops_per_pixel(spec.arch.depth, spec.arch.hidden) * stamps.size
        peers = torch_peers(model, stamps, None, None, device, bf16=args.bf16)
        peers.update(jax_peers(model, stamps, None, None, 256, batches, dtypes))
        if label == "mask 2-32":
            peers["astroscrappy (LACosmic, all cores)"] = astroscrappy_peer(stamps, st.ignore)
        record(f"{n} stamps 256x256, {label}", stamps.size, fl, peers)
    for model, label in (("ACS-WFC-F606W-2-32", "inpaint 2-32"), ("ACS-WFC-F606W-3-32", "inpaint 3-32")):
        spec = deepcr_jax.MODELS[model]
        fl = flops_per_pixel(spec.arch.depth, spec.arch.hidden, 2) * stamps.size
        peers = torch_peers("ACS-WFC", stamps, model, masks, device, bf16=args.bf16)
        peers.update(jax_peers("ACS-WFC", stamps, model, masks, 256, batches, dtypes))
        record(f"{n} stamps 256x256, {label}", stamps.size, fl, peers)
    if chip is not None:
        fl = flops_per_pixel(2, 32) * chip.size
        from deepcr_jax.reference import reference

        ref = reference("ACS-WFC", device=device)
        peers = {
            "deepCR clean() (segment=True, patch 1024)": lambda: ref.clean(chip),
            "deepCR clean(segment=False)": lambda: ref.clean(chip, segment=False),
        }
        for name in peers:
            PATHS[name] = ("torch oneDNN fp32" if device == "CPU" else "torch cuDNN fp32", "fp32")
        for tile in (256, 512, 1024):
            for b in batches:
                if b > 1 and (chip.size // (tile * tile)) < b:
                    continue  # fewer tiles than the batch: the batch would be padding
                c = deepcr_jax.load("ACS-WFC", tile=tile, batch=b)
                peers[f"deepcr-jax clean, tile {tile}, batch {b}"] = lambda c=c: c.clean(chip)
                PATHS[f"deepcr-jax clean, tile {tile}, batch {b}"] = _jax_path(c, "mask", tile)
        if args.bf16:
            c = deepcr_jax.load("ACS-WFC", tile=256, batch=1, dtype="bfloat16")
            peers["deepcr-jax clean, bfloat16, tile 256, batch 1"] = lambda c=c: c.clean(chip)
            PATHS["deepcr-jax clean, bfloat16, tile 256, batch 1"] = _jax_path(c, "mask", 256)
        peers["astroscrappy (LACosmic, all cores)"] = astroscrappy_peer(chip[None], np.zeros((1, *chip.shape), bool))
        record(f"chip {chip.shape[0]}x{chip.shape[1]}, mask 2-32", chip.size, fl, peers)

    header = ["workload", "implementation", "ISA path", "best [s]", "median [s]", "GFLOP/s", "fraction of peak",
              "speed-up vs first deepCR row", "vs deepCR bf16 autocast"]
    o_header, o_rows = overhead()
    text = write_results(args.stem, "Speed: deepcr-jax vs deepCR (PyTorch) vs astroscrappy", header, rows, data)
    extra = ["", "## Host overhead: clean() vs the network alone on device-resident tiles", "",
             "| " + " | ".join(o_header) + " |", "|" + "---|" * len(o_header)]
    extra += ["| " + " | ".join(r) + " |" for r in o_rows]
    with open(os.path.join(_common.RESULTS, args.stem + ".md"), "a") as fh:
        fh.write("\n".join(extra) + "\n")
    print(text + "\n".join(extra))
    print(f"written to {_common.RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
