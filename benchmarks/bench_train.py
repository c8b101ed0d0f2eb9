"""Training throughput: deepcr-jax's train step beside deepCR's trainer and a torch loop, in one run.

Workload: deepCR-mask 2-32 (depth 2, hidden 32), 256x256 stamps, batch 16,
BatchNorm phase 1 (batch statistics, running statistics updated), Adam, BCE
with the ignore mask; stamps from the simulator
(:func:`deepcr_jax.simulate.make_stamps`, mixed fields, in electrons). One
"epoch" is ``--stamps`` training stamps (default 48 = 3 batches; with
``--device-epoch`` the paper's 8,190). Peers:

(a) deepCR 0.3.1's own trainer (``deepCR.training.train``, mode "pair", its
    DataLoader with 8 workers, sky augmentation [-0.9, 3] like ours): the
    body of its ``train_phase0`` epoch loop (``for dat in TrainLoader:
    optimize_network(dat)``), without its validation pass. Its network is the
    weight-norm UNet2Sigmoid (deepCR trains no BatchNorm model itself).
    ``ReduceLROnPlateau(verbose=...)``, which torch 2.13 rejects, is shimmed.
(b) a plain torch loop of deepCR's BatchNorm 2-32 net
    (``deepCR.unet_batchnorm.UNet2SigmoidBatchNorm``), Adam, BCE, batches
    already as tensors (NCHW, and channels_last).
(c) deepcr-jax: ``make_train_step(get_config("mask_2_32"))`` (jit, state
    donated; sky augmentation and flips inside the step) on batches already on
    the device, with ``kernels="xla"`` (the plain flax graph) and the default
    ``kernels="auto"`` (on one CPU device: the native training kernels of
    ``deepcr_jax.training.fast_ops``, else the same as ``"xla"``), and the
    whole host pipeline with the default kernels (``EpochIterator`` +
    ``Prefetcher`` + ``device_put`` + step).

Best and median of ``--repeats`` epochs after a warm-up of 2 batches
(compilation, allocator, cuDNN autotuning), the peers' epochs interleaved
(round robin, so a shared machine's load drifts into every peer alike),
synchronised (``block_until_ready``,
``torch.cuda.synchronize``); torch uses ``os.cpu_count()`` threads, as XLA does.
Where torch has CUDA, its peers run there (deepCR's trainer picks CUDA itself). For the
``--device-epoch`` run the stamps are a simulated pool (``--pool``) repeated
to 8,190 (speed does not depend on content).

    python benchmarks/bench_train.py                 # full CPU run -> results/train.{md,json}
    python benchmarks/bench_train.py --quick         # smoke: tiny sizes, writes to a temp dir
    python benchmarks/bench_train.py --device-epoch  # GPU: 8,190 stamps -> results/train_epoch_gpu.*
                                                     # (also with compute_dtype=bfloat16 there)
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common
from _common import machine, write_results
from bench_speed import flops_per_pixel

from deepcr_jax.simulate import make_stamps

#: Untimed batches per peer before timing (compilation, allocator, cuDNN autotuning).
WARM_BATCHES = 2


def cpu_flags() -> dict[str, bool]:
    """The ISA flags that matter here, from /proc/cpuinfo."""
    want = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next(line.split(":", 1)[1].split() for line in fh if line.startswith("flags"))
    except (OSError, StopIteration):
        return {}
    return {f: f in flags for f in want}


class Tiled:
    """``pool`` repeated to ``n`` stamps without copying: ``self[k] = pool[k % len(pool)]``.

    Enough of the ndarray interface for deepCR's ``dataset`` (``shape``,
    integer and slice indexing).
    """

    def __init__(self, pool: np.ndarray, n: int, start: int = 0):
        self.pool, self.n, self.start = pool, n, start
        self.shape = (n, *pool.shape[1:])
        self.dtype = pool.dtype

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key):
        if isinstance(key, slice):
            lo, hi, step = key.indices(self.n)
            if step != 1:
                raise IndexError("Tiled supports unit-step slices only")
            return Tiled(self.pool, max(hi - lo, 0), self.start + lo)
        k = int(key)
        if not -self.n <= k < self.n:
            raise IndexError(k)
        return self.pool[(self.start + k % self.n) % len(self.pool)]


def batch_indices(n_stamps: int, batch: int, pool: int) -> list[np.ndarray]:
    """Pool indices of the distinct batches of an in-order epoch (the pattern repeats after these)."""
    n_batches = n_stamps // batch
    distinct = min(n_batches, pool // math.gcd(pool, batch))
    return [(b * batch + np.arange(batch)) % pool for b in range(distinct)]


# --------------------------------------------------------------------------
# peers: each returns (warm, epoch, stamps_per_epoch)


def deepcr_trainer(pool, n_train: int, batch: int, gpu: bool, workdir: str):
    """(a) deepCR 0.3.1's trainer: its DataLoader and optimize_network over one epoch."""
    import deepCR.training as dtr
    import torch

    class Plateau(torch.optim.lr_scheduler.ReduceLROnPlateau):
        """torch >= 2.7 dropped ``verbose``; deepCR 0.3.1 still passes it."""

        def __init__(self, *args, verbose=None, **kwargs):
            super().__init__(*args, **kwargs)

    dtr.ReduceLROnPlateau = Plateau
    n_all = n_train
    while int(n_all * 0.9) < n_train:  # deepCR keeps 90 % for training
        n_all += 1
    image, cr, ignore, sky = (Tiled(a, n_all) for a in pool)
    sky = np.resize(pool[3], n_all)  # deepCR indexes sky with a slice of a real array
    trainer = dtr.train(image, cr, ignore, sky, mode="pair", aug_sky=(-0.9, 3.0), hidden=32, epoch=1,
                        batch_size=batch, lr=0.005, verbose=False, directory=workdir + os.sep)
    trainer.network.train()
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    n = len(trainer.TrainLoader.dataset)

    def warm():
        for b, dat in enumerate(trainer.TrainLoader):
            trainer.optimize_network(dat)
            if b == WARM_BATCHES - 1:
                break
        sync()

    def epoch():
        for dat in trainer.TrainLoader:
            trainer.optimize_network(dat)
        sync()

    return warm, epoch, n


def torch_bn_loop(pool, n_train: int, batch: int, gpu: bool, channels_last: bool):
    """(b) deepCR's BatchNorm 2-32 net in a plain torch loop on in-memory tensors."""
    import torch
    from deepCR.unet_batchnorm import UNet2SigmoidBatchNorm

    dev = "cuda" if gpu else "cpu"
    torch.backends.cudnn.benchmark = True
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = UNet2SigmoidBatchNorm(1, 1, 32).to(dev).to(memory_format=fmt)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=0.005)
    bce = torch.nn.BCELoss()
    image, cr, ignore, _ = pool

    def tensor(a, idx):
        return torch.from_numpy(np.ascontiguousarray(a[idx][:, None], np.float32)).to(dev).contiguous(
            memory_format=fmt)

    batches = []
    for idx in batch_indices(n_train, batch, len(image)):
        x = tensor(image, idx)
        batches.append(((x - x.mean()) / x.std(), tensor(cr, idx), tensor(ignore, idx)))
    n_batches = n_train // batch
    sync = torch.cuda.synchronize if gpu else (lambda: None)

    def one(x, m, ig):
        opt.zero_grad(set_to_none=True)
        loss = bce(net(x) * (1 - ig), m * (1 - ig))
        loss.backward()
        opt.step()

    def warm():
        for b in range(WARM_BATCHES):
            one(*batches[b % len(batches)])
        sync()

    def epoch():
        for b in range(n_batches):
            one(*batches[b % len(batches)])
        sync()

    return warm, epoch, n_batches * batch


def jax_step(pool, n_train: int, batch: int, pipeline: bool, kernels: str = "auto", compute_dtype: str = "float32"):
    """(c) deepcr-jax's jitted train step; on device-resident batches, or fed by the host pipeline."""
    from deepcr_jax.training.config import get_config
    from deepcr_jax.training.state import create_state
    from deepcr_jax.training.step import make_train_step

    image, cr, ignore, sky = pool
    size = image.shape[-1]
    config = get_config("mask_2_32", batch_size=batch, crop=size, progress=False, plot_every=0, kernels=kernels,
                        compute_dtype=compute_dtype)
    step = make_train_step(config)
    key = jax.random.key(0)
    box = {"state": create_state(config, key)}
    n_batches = n_train // batch
    keys = [jax.random.fold_in(key, b) for b in range(max(n_batches, WARM_BATCHES))]

    def run(batches):
        state = box["state"]
        for b, bt in enumerate(batches):
            state, metrics = step(state, bt, keys[b % len(keys)])
        jax.block_until_ready((state, metrics))
        box["state"] = state

    if not pipeline:
        on_device = [jax.device_put({"image": image[idx], "cr": cr[idx].astype(np.float32),
                                     "ignore": ignore[idx].astype(np.float32), "sky": sky[idx]})
                     for idx in batch_indices(n_train, batch, len(image))]

        def warm():
            run(on_device[b % len(on_device)] for b in range(WARM_BATCHES))

        def epoch():
            run(on_device[b % len(on_device)] for b in range(n_batches))

        return warm, epoch, n_batches * batch

    from deepcr_jax.training.data import EpochIterator, Prefetcher, from_arrays

    ds = from_arrays(image, cr, ignore, sky, group=np.arange(len(image)))
    it = EpochIterator(ds, batch, size, seed=0)
    counter = {"epoch": 0}

    def feed(limit):
        """``limit`` batches: as many passes over the pool as that takes, through the prefetch thread."""
        def gen():
            done = 0
            while done < limit:
                for _, bt in it.iterate(counter["epoch"]):
                    if done == limit:
                        return
                    yield jax.device_put(bt)
                    done += 1
                counter["epoch"] += 1
        return Prefetcher(gen(), size=2)

    def warm():
        run(feed(WARM_BATCHES))

    def epoch():
        run(feed(n_batches))

    return warm, epoch, n_batches * batch


# --------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 64x64, batch 4, 8 stamps, 1 repeat; writes to a temp dir")
    ap.add_argument("--device-epoch", action="store_true",
                    help="time one full epoch of 8,190 stamps at 256x256 (meant for a GPU)")
    ap.add_argument("--stamps", type=int, default=None, help="training stamps per timed epoch (default 48)")
    ap.add_argument("--pool", type=int, default=None, help="distinct simulated stamps (default: --stamps, "
                    "256 with --device-epoch)")
    ap.add_argument("--size", type=int, default=256, help="stamp side (px)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=None, help="timed epochs per peer (default 3; 1 for "
                    "--device-epoch)")
    ap.add_argument("--peers", default="a,b,c",
                    help="subset of a (deepCR trainer), b (torch BN loop), c (ours)")
    ap.add_argument("--out", default=None, help="write the results here instead of benchmarks/results/")
    ap.add_argument("--bf16", action="store_true",
                    help="also time compute_dtype=bfloat16 on the CPU (always on an accelerator)")
    ap.add_argument("--stem", default=None, help="results file name (default train, or train_epoch_gpu)")
    args = ap.parse_args(argv)

    if args.quick:
        size, batch, n_train, pool_n, repeats = 64, 4, 8, 10, 1
    else:
        size, batch = args.size, args.batch
        n_train = args.stamps or (8190 if args.device_epoch else 48)
        pool_n = args.pool or (256 if args.device_epoch else n_train + n_train // 9 + 1)
        repeats = args.repeats or (1 if args.device_epoch else 3)
    out = _common.choose_results_dir(ap, args.quick, args.out, "bench_train_quick_")
    peers = set(args.peers.split(","))

    import torch

    torch.set_num_threads(os.cpu_count())
    t0 = time.perf_counter()
    st = make_stamps(pool_n, "mixed", seed=20200530, shape=(size, size))
    pool = (st.image, st.cr_mask, st.ignore, st.sky.astype(np.float32))
    print(f"simulated {pool_n} stamps {size}x{size} in {time.perf_counter() - t0:.1f} s", flush=True)

    # Peer (a) is built before JAX starts; its DataLoader forks 8 workers every epoch, later also after
    # JAX has started (torch warns; the workers run only deepCR's numpy dataset code)
    workdir = tempfile.mkdtemp(prefix="bench_train_deepcr_")
    tgpu = torch.cuda.is_available()  # torch peers on CUDA when this torch build has it
    where = "CUDA" if tgpu else "CPU"
    candidates = []
    if "a" in peers:
        candidates.append((f"(a) deepCR 0.3.1 trainer (weight-norm 2-32, DataLoader 8 workers) on {where}",
                           lambda: deepcr_trainer(pool, n_train, batch, tgpu, workdir)))
    if "b" in peers:
        for cl in (False, True):
            label = f"(b) torch loop, deepCR BatchNorm 2-32, {'channels_last' if cl else 'NCHW'} on {where}"
            candidates.append((label, lambda cl=cl: torch_bn_loop(pool, n_train, batch, tgpu, cl)))
    if "c" in peers:
        dev = "JAX default device"
        candidates.append((f"(c) deepcr-jax make_train_step (jit, donated; kernels=xla), batches on {dev}",
                           lambda: jax_step(pool, n_train, batch, pipeline=False, kernels="xla")))
        candidates.append((f"(c) deepcr-jax make_train_step (jit, donated; kernels=auto), batches on {dev}",
                           lambda: jax_step(pool, n_train, batch, pipeline=False)))
        candidates.append((f"(c) deepcr-jax EpochIterator + Prefetcher + device_put + step on {dev}",
                           lambda: jax_step(pool, n_train, batch, pipeline=True)))
        if jax.default_backend() != "cpu" or args.bf16:  # XLA:CPU has no fast bf16 convolutions
            candidates.append((f"(c) deepcr-jax make_train_step, compute_dtype=bfloat16, batches on {dev}",
                               lambda: jax_step(pool, n_train, batch, pipeline=False, kernels="xla",
                                                compute_dtype="bfloat16")))

    fl = 3 * flops_per_pixel(2, 32) * size * size  # training ~ 3x the forward's FLOPs
    workload = f"mask 2-32, {size}x{size}, batch {batch}, BN phase 1"
    load_start = os.getloadavg()
    built = []
    for name, build in candidates:  # (a) first: its DataLoader is created before JAX starts
        if name.startswith("(c)"):
            name = name.replace("JAX default device", jax.devices()[0].platform.upper())
        warm, epoch, n = build()
        warm()
        built.append((name, epoch, n))
        print(f"built and warmed {name}", flush=True)
    times = {name: [] for name, _, _ in built}
    for r in range(repeats):  # peers interleaved, so that a shared machine's load drifts into all alike
        for name, epoch, n in built:
            t1 = time.perf_counter()
            epoch()
            times[name].append(time.perf_counter() - t1)
            print(f"repeat {r}: {name}: {n} stamps in {times[name][-1]:.2f} s", flush=True)
    results, rows, base = [], [], {}
    for name, _, n in built:
        t = {"best": min(times[name]), "median": statistics.median(times[name]), "repeats": repeats,
             "times": times[name]}
        rate = {"best": n / t["best"], "median": n / t["median"]}
        base.setdefault(name[:3], rate["best"])
        results.append({"peer": name, "stamps_per_epoch": n, **t, "stamps_per_s_best": rate["best"],
                        "stamps_per_s_median": rate["median"], "gflops_est": fl * rate["best"] / 1e9})
    gpu = jax.default_backend() == "gpu"
    stem = args.stem or ("train_epoch_gpu" if args.device_epoch else ("train_gpu" if gpu else "train"))
    info = machine()
    info["cpu_flags"] = cpu_flags()
    info["torch_threads"] = torch.get_num_threads()
    info["loadavg_1min_start_end"] = [load_start[0], os.getloadavg()[0]]
    if torch.cuda.is_available():
        info["torch_cuda_device"] = torch.cuda.get_device_name(0)
    ref_a = base.get("(a)")
    ref_b = base.get("(b)")
    for r in results:
        rows.append([r["peer"], str(r["stamps_per_epoch"]), f"{r['best']:.2f}", f"{r['median']:.2f}",
                     f"{r['stamps_per_s_best']:.2f}", f"{r['stamps_per_s_median']:.2f}",
                     f"{r['gflops_est']:.0f}",
                     f"{r['stamps_per_s_best'] / ref_a:.2f}x" if ref_a else "-",
                     f"{r['stamps_per_s_best'] / ref_b:.2f}x" if ref_b else "-"])
    header = ["peer", "stamps/epoch", "best [s]", "median [s]", "stamps/s (best)", "stamps/s (median)",
              "~GFLOP/s (3x fwd)", "vs (a)", "vs (b) NCHW"]
    command = " ".join(["python benchmarks/bench_train.py", *(argv if argv is not None else sys.argv[1:])])
    data = {"machine": info, "workload": workload, "quick": args.quick, "device_epoch": args.device_epoch,
            "repeats": repeats, "pool": pool_n, "results": results, "command": command}
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in info["cpu_flags"].items())
    title = f"Training throughput: {workload}"
    text = write_results(stem, title, header, rows, data)
    with open(os.path.join(out, stem + ".md"), "a") as fh:
        load = info["loadavg_1min_start_end"]
        fh.write(f"\nCPU flags: {flags}; torch threads {info['torch_threads']}; 1-min load average "
                 f"{load[0]:.1f} at the start, {load[1]:.1f} at the end.\n"
                 f"{repeats} timed epochs per peer (interleaved) after {WARM_BATCHES} warm-up batches; "
                 "ratios are of best stamps/s.\n"
                 f"Command: `{data['command']}`\n")
    print(text)
    print(f"wrote {os.path.join(out, stem)}.md/.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
