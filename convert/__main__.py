"""Rebuild the model zoo's ``.npz`` files from the installed deepCR 0.3.1 package.

    pip install torch==2.13.0 && pip install --no-deps deepCR==0.3.1
    python -m convert                 # writes deepcr_jax/weights/*.npz + NOTICE
    python -m convert --check         # only verify the shipped files are current
    python -m convert --trained ACS-WFC-jax-2-32=runs/mask_2_32/best.npz

Each ``.pth`` is read with ``weights_only=True``, checked against the zoo's
recorded sha256, converted strictly (every key accounted for) against the
architecture the zoo records, and written with the zoo entry as metadata.

The zoo's trained models (``ModelSpec.converted`` False) come from a
training run's export instead: ``--trained NAME=PATH`` checks the export's
architecture and array digest against the zoo entry and writes it with the
entry's metadata plus the export's training config, data provenance and
validation scores; ``--check`` verifies the shipped file's digest.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

import numpy as np

from deepcr_jax.arch import Architecture
from deepcr_jax.convert import convert_state_dict, load_torch_state_dict
from deepcr_jax.weights import flatten, load_npz, save_npz, sha256_arrays, sha256_file
from deepcr_jax.zoo import MODELS, list_models, weights_path

#: metadata an export carries that the shipped trained model keeps
_TRAINING_KEYS = ("training", "data", "validation")

NOTICE = """\
The network weights in this directory were converted from the PyTorch model
files shipped in the deepCR 0.3.1 Python package (learned_models/mask/*.pth,
learned_models/inpaint/*.pth) by `python -m convert` in the deepcr-jax
repository. The conversion changes only the array layout (and adds metadata);
the numbers are deepCR's.

The files named *-jax-* are not deepCR's: they were trained by deepcr-jax
itself on simulated data (`python -m train`; the command, config and
validation scores are in each file's metadata and in deepcr_jax/zoo.py).

deepCR: Deep Learning Based Cosmic Ray Removal for Astronomical Images
Zhang, K. & Bloom, J. S. 2020, ApJ 889, 24 (arXiv:1907.09500)
https://github.com/profjsb/deepCR

BSD 3-Clause License

Copyright (c) 2019, Keming Zhang and Joshua S. Bloom
All rights reserved.

Redistribution and use in source and binary forms, with or without
modification, are permitted provided that the following conditions are met:

* Redistributions of source code must retain the above copyright notice, this
  list of conditions and the following disclaimer.

* Redistributions in binary form must reproduce the above copyright notice,
  this list of conditions and the following disclaimer in the documentation
  and/or other materials provided with the distribution.

* Neither the name of the copyright holder nor the names of its
  contributors may be used to endorse or promote products derived from
  this software without specific prior written permission.

THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS"
AND ANY EXPRESS OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE
IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE ARE
DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR CONTRIBUTORS BE LIABLE
FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR
SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER
CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN CONTRACT, STRICT LIABILITY,
OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF THE USE
OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.
"""


def reference_root() -> str:
    """Directory holding deepCR's ``learned_models`` (found without importing it)."""
    spec = importlib.util.find_spec("learned_models")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("deepCR 0.3.1 is not installed: pip install --no-deps deepCR==0.3.1")
    return os.path.dirname(next(iter(spec.submodule_search_locations)))


def convert_zoo_model(name: str, root: str | None = None):
    """(variables, meta) for zoo model ``name`` converted from the deepCR wheel."""
    spec = MODELS[name]
    src = os.path.join(root or reference_root(), spec.source)
    digest = sha256_file(src)
    if digest != spec.source_sha256:
        raise SystemExit(f"{src}: sha256 {digest} differs from the zoo's {spec.source_sha256}")
    variables, _ = convert_state_dict(load_torch_state_dict(src), spec.arch)
    return variables, spec.meta()


def trained_zoo_model(name: str, path: str):
    """(variables, meta) for trained zoo model ``name`` from the training export at ``path``."""
    spec = MODELS[name]
    if spec.converted:
        raise SystemExit(f"{name} is converted from deepCR's {spec.source}, not trained; run without --trained")
    variables, meta = load_npz(path)
    if Architecture(**meta["arch"]) != spec.arch:
        raise SystemExit(f"{path}: architecture {meta['arch']} differs from the zoo's {spec.arch.to_dict()}")
    digest = sha256_arrays(variables)
    if digest != spec.source_sha256:
        raise SystemExit(f"{path}: array digest {digest} differs from the zoo's {spec.source_sha256}")
    return variables, {**spec.meta(), **{k: meta[k] for k in _TRAINING_KEYS if k in meta}}


def trained_file_current(name: str) -> bool:
    """Whether the shipped file of trained model ``name`` has the zoo's digest and metadata."""
    path = weights_path(name)
    if not os.path.exists(path):
        return False
    variables, meta = load_npz(path)
    spec_meta = MODELS[name].meta()
    return sha256_arrays(variables) == MODELS[name].source_sha256 and all(meta.get(k) == v for k, v in spec_meta.items())


def same_file_content(path: str, variables, meta) -> bool:
    if not os.path.exists(path):
        return False
    old_vars, old_meta = load_npz(path)
    a, b = flatten(old_vars), flatten(variables)
    return old_meta == meta and a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m convert", description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="verify the shipped files; write nothing")
    ap.add_argument("--trained", action="append", default=[], metavar="NAME=PATH",
                    help="ship a training export as the zoo's trained model NAME (repeatable)")
    args = ap.parse_args(argv)
    stale = []
    for item in args.trained:
        name, sep, path = item.partition("=")
        if not sep or name not in list_models(converted=False):
            raise SystemExit(f"--trained wants NAME=PATH with NAME one of {', '.join(list_models(converted=False))}")
        variables, meta = trained_zoo_model(name, path)
        save_npz(weights_path(name), variables, meta)
        print(f"{name:22s} written  {weights_path(name)}")
    for name in list_models(converted=False):
        if not trained_file_current(name):
            stale.append(name)
            print(f"{name:22s} missing or stale: ship it with --trained {name}=PATH", file=sys.stderr)
    if args.trained:
        return 1 if stale else 0
    root = reference_root()
    for name in list_models(converted=True):
        variables, meta = convert_zoo_model(name, root)
        out = weights_path(name)
        if same_file_content(out, variables, meta):
            print(f"{name:22s} up to date")
            continue
        stale.append(name)
        if not args.check:
            save_npz(out, variables, meta)
            print(f"{name:22s} written  {out}")
    notice = os.path.join(os.path.dirname(weights_path("ACS-WFC")), "NOTICE")
    if not args.check:
        with open(notice, "w") as fh:
            fh.write(NOTICE)
    if args.check and stale:
        print("stale:", ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
