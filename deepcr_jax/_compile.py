"""Run a function once through XLA without backend optimisation.

For one-off computations such as drawing a network's initial weights: XLA's
CPU backend spends most of their compile time optimising the unrolled
threefry rounds of every random draw (about 35 s for a depth-3 UNet on one
core; about 5 s unoptimised), and the result runs a single time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

__all__ = ["run_once"]


def run_once(fn: Callable[..., Any], *args: Any) -> Any:
    """``jax.jit(fn)(*args)``, compiled without backend optimisation on CPU.

    The random bits are the same as an optimised build's; floating-point
    results made from them (e.g. normal deviates) may differ by 1 ulp.
    Other backends compile as usual.
    """
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    return jax.jit(fn).lower(*args).compile(compiler_options=options)(*args)
