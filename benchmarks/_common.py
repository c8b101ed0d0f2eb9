"""Shared helpers for the benchmark scripts: timing, machine description, output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def timeit(fn: Callable[[], Any], *, repeats: int = 3, warmup: int = 1) -> dict[str, float]:
    """Best and median wall time (s) of ``fn()`` after ``warmup`` untimed calls.

    ``fn`` must block until its work is done (``block_until_ready`` / numpy
    results / torch on CPU).
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"best": min(times), "median": statistics.median(times), "repeats": repeats}


def machine(*packages: str) -> dict[str, Any]:
    """Description of this machine and the software versions, for the results files.

    Always: platform, Python, CPU count and model, JAX and its devices,
    deepcr-jax, torch (when installed). ``packages`` names further modules
    whose ``__version__`` to record under their own name (None when missing),
    e.g. ``machine("astroscrappy", "skimage")``.
    """
    import importlib

    import jax

    import deepcr_jax

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "jax": jax.__version__,
        "jax_devices": [str(d) for d in jax.devices()],
        "deepcr_jax": deepcr_jax.__version__,
    }
    try:
        with open("/proc/cpuinfo") as fh:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    for name in packages:
        try:
            info[name] = importlib.import_module(name).__version__
        except ImportError:
            info[name] = None
    return info


def choose_results_dir(ap, quick: bool, out: str | None, prefix: str) -> str:
    """Set and return where results go: ``out``, else ``RESULTS``; a fresh temp dir for ``quick`` runs.

    A ``quick`` (smoke) run never writes to ``benchmarks/results/``: asking for
    it is an ``ap.error``. Every later :func:`write_results` writes there.
    """
    global RESULTS
    import tempfile

    target = tempfile.mkdtemp(prefix=prefix) if quick and out is None else (out or RESULTS)
    if quick and os.path.realpath(target) == os.path.realpath(RESULTS):
        ap.error("--quick never writes to benchmarks/results/; pass another --out")
    RESULTS = target
    return target


def write_results(stem: str, title: str, header: list[str], rows: list[list[str]], data: dict) -> str:
    """Write ``results/<stem>.md`` (a table) and ``results/<stem>.json``; return the markdown."""
    os.makedirs(RESULTS, exist_ok=True)
    md = [f"# {title}", "", (f"Machine: {data['machine'].get('cpu', '?')}, {data['machine']['cpus']} cores, "
          f"JAX {data['machine']['jax']} on {', '.join(data['machine']['jax_devices'])}")]
    for key, label in (("native_kernel", "native CPU conv kernel"), ("malloc_tuned", "glibc malloc thresholds raised")):
        if key in data["machine"]:
            md[-1] += f"; {label}: {'yes' if data['machine'][key] else 'no'}"
    md.append("")
    md.append("| " + " | ".join(header) + " |")
    md.append("|" + "---|" * len(header))
    md += ["| " + " | ".join(r) + " |" for r in rows]
    text = "\n".join(md) + "\n"
    with open(os.path.join(RESULTS, stem + ".md"), "w") as fh:
        fh.write(text)
    with open(os.path.join(RESULTS, stem + ".json"), "w") as fh:
        json.dump(data, fh, indent=2, default=str)
    return text
