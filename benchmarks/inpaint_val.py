"""Validation MSE of inpainting models on a training config's own validation set.

Runs the training loop's evaluation (same data, split, crops and donor masks)
with each model as the network, e.g. the converted zoo model next to a
trained export:

    python benchmarks/inpaint_val.py ACS-WFC-F606W-2-32 benchmarks/results/trained/inpaint-jax-2-32.npz

The config is ``inpaint_2_32`` with the overrides of the committed run
(``--set key=value`` adds more); only the data and split matter here.
"""

from __future__ import annotations

import argparse

import jax

from deepcr_jax.training import config as config_lib
from deepcr_jax.training import data as data_lib
from deepcr_jax.training.loop import make_mesh, validate, validation_key
from deepcr_jax.training.state import create_state, replicate
from deepcr_jax.training.step import make_eval_step

RUN = {"crop": 64, "sim_shape": 128, "sim_n": 4096}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="zoo names, .npz exports or deepCR .pth files")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="further config overrides")
    args = ap.parse_args(argv)
    overrides = {**RUN, **config_lib.parse_overrides(args.set)}
    mesh = make_mesh()
    for model in args.models:
        cfg = config_lib.get_config("inpaint_2_32", **overrides, init=model)
        ds = data_lib.load_source(cfg)
        _, val_ds = data_lib.split_by_group(ds, cfg.val_fraction, cfg.seed)
        val = data_lib.eval_batches(val_ds, cfg.batch_size, cfg.crop, 0, 1)
        key = jax.random.key(cfg.seed)
        state = replicate(create_state(cfg, key), mesh)
        loss, _, _ = validate(cfg, state, make_eval_step(cfg, mesh), val, val, mesh,
                              validation_key(key))
        print(f"{model}: validation MSE {loss:.4f} (network units, (100 e-)^2 at scale 100)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
