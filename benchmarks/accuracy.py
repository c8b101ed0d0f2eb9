"""Accuracy: the deepCR paper's Table 2 (CR detection) and Table 3 (inpainting) on simulated stamps.

A fixed-seed synthetic test set of 256x256 HST ACS/WFC F606W stamps in
electrons (:func:`deepcr_jax.evaluate.make_test_set`: one set per field type,
extragalactic, globular cluster, resolved galaxy) is evaluated as in Zhang &
Bloom (2020), Sec. 4.1-4.2, with :mod:`deepcr_jax.evaluate`:

Detection (Table 2, Fig. 4)
    ROC curves of every ACS/WFC mask network of the zoo and of LACosmic
    (astroscrappy, one ROC point per ``sigclip``, ``objlim`` 2 / 3.5 / 5 per
    field), TPR at FPR 0.05 % and 0.5 %, also 3x3-dilated. Ignored
    (saturated) pixels are excluded from every count.

Inpainting (Table 3)
    Each stamp is inpainted at the CR mask of one *other* stamp (all fields
    pooled, fixed seed); MSE over those pixels minus the stamp's own CRs and
    ignored pixels, against the observed image (paper eq. 2), for
    deepCR-inpaint 2-32 and 3-32, deepcr-jax's trained 2-32 (a results
    artifact in ``results/trained/``), medmask (5x5 masked median) and
    biharmonic, on 100 stamps per field by default. The squared errors are
    heavy-tailed (bright star cores): at 100 stamps one stamp can hold 90 %
    of a field's error, so compare models with ``--n-inpaint 1000`` (the
    paper used 9600 stamps in all) and ``--biharmonic-max 100``.

End to end (not in the paper)
    ``clean(image_with_CRs, inpaint=...)``: ACS-WFC's predicted mask, cleaned
    image vs the simulator's CR-free image, MSE at the replaced pixels and at
    the true CR pixels; also with the predicted mask dilated by 1 px before
    inpainting (a diagnostic: the library does not dilate).

Outputs in ``--outdir`` (default ``benchmarks/results``; with ``--quick`` a
fresh temporary folder unless given, so smoke runs never touch the
results): ``accuracy.md``, ``accuracy.json`` and ROC figures. Usage::

    python benchmarks/accuracy.py [--quick] [--n N] [--seed S] [--outdir DIR] [--jobs J]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _accuracy_report import MSE_UNIT_NOTE, cell, plot_all_models, plot_field_roc, render_markdown
from _common import RESULTS, machine

import deepcr_jax.evaluate as ev
from deepcr_jax.cleaner import INPAINT_GROW

FIELDS = ev.FIELDS
#: Coarse ``sigclip`` sweep for ``--quick`` (the full run uses :data:`deepcr_jax.evaluate.SIGCLIPS`).
SIGCLIP_QUICK = (3.0, 6.0)
#: Inpainters of Table 3: label -> ``deepcr_jax.load(..., inpaint=...)`` name (None = biharmonic).
INPAINTERS = {
    "deepCR-2-32": "ACS-WFC-F606W-2-32",
    "deepCR-3-32": "ACS-WFC-F606W-3-32",
    # trained by deepcr-jax on simulated data (README, Training); a results artifact, not a zoo model
    "deepcr-jax-2-32": os.path.join(RESULTS, "trained", "inpaint-jax-2-32-ft2.npz"),
    "medmask": "medmask",
    "biharmonic": None,
}
#: Dilations (px) of the predicted mask before inpainting in the end-to-end runs (0 = the pipeline).
E2E_DILATIONS = (0, 1)

#: Paper Table 2: row -> field -> ((TPR, dilated TPR) at 0.05 % FPR, (same) at 0.5 % FPR).
PAPER_TABLE2 = {
    "deepCR-2-4": {
        "extragalactic": ((0.820, 0.945), (0.940, 0.969)),
        "globular": ((0.839, 0.973), (0.962, 0.987)),
        "resolved": ((0.562, 0.804), (0.806, 0.897)),
    },
    "deepCR-2-32": {
        "extragalactic": ((0.885, 0.958), (0.987, 0.992)),
        "globular": ((0.933, 0.981), (0.995, 0.997)),
        "resolved": ((0.752, 0.888), (0.912, 0.937)),
    },
    "LACosmic": {
        "extragalactic": ((0.573, 0.926), (0.695, 0.954)),
        "globular": ((0.583, 0.937), (0.739, 0.952)),
        "resolved": ((0.338, 0.679), (0.534, 0.774)),
    },
}
#: Paper Table 3: row -> field -> MSE (paper units, see :data:`MSE_UNIT_NOTE`).
PAPER_TABLE3 = {
    "deepCR-2-32": {"extragalactic": 0.012, "globular": 0.034, "resolved": 0.503},
    "deepCR-3-32": {"extragalactic": 0.012, "globular": 0.033, "resolved": 0.479},
    "medmask": {"extragalactic": 0.105, "globular": 1.511, "resolved": 5.946},
    "biharmonic": {"extragalactic": 0.041, "globular": 0.669, "resolved": 2.578},
}


def detect_deepcr(cleaners: dict, batch) -> tuple[dict, dict]:
    """ROC summary of every mask network on one field's stamps (and its rates at its own threshold).

    Returns ``(results, seconds)``: model name -> :func:`~deepcr_jax.evaluate.summarize_counts`
    output plus ``threshold``, ``fpr_at_threshold``, ``tpr_at_threshold``; model name -> wall
    time of the forward passes.
    """
    results, seconds = {}, {}
    for name, cleaner in cleaners.items():
        t0 = time.perf_counter()
        prob = cleaner.clean(batch.image, binary=False, ignore=batch.ignore)
        seconds[name] = time.perf_counter() - t0
        res = ev.summarize_counts(ev.roc_counts(prob, batch.cr_mask, batch.ignore), "threshold")
        thr = cleaner.params.threshold
        f, t, _ = ev.roc(prob, batch.cr_mask, batch.ignore, [thr])
        res.update(threshold=float(thr), fpr_at_threshold=float(f[0]), tpr_at_threshold=float(t[0]))
        results[name] = res
    return results, seconds


def detect_lacosmic(batch, field: str, sigclips, pool=None) -> tuple[dict, float]:
    """LACosmic ROC summary on one field (one point per ``sigclip``) and the astroscrappy wall time."""
    t0 = time.perf_counter()
    counts = ev.lacosmic_counts(batch.image, batch.cr_mask, batch.ignore, ev.OBJLIM[field], sigclips, pool)
    seconds = time.perf_counter() - t0
    res = ev.summarize_counts(counts, "sigclip")
    res["objlim"] = ev.OBJLIM[field]
    return res, seconds


def run_inpainting(inpainters: dict, batch, mi: np.ndarray, biharmonic_max: int | None) -> tuple[dict, dict]:
    """Table 3 metrics of every inpainter on one field, borrowed masks ``mi`` (n, ny, nx).

    Variants, scored on the same pixels ``mi & ~cr_mask & ~ignore``: ``"paper"`` replaces
    ``mi`` only (eq. 2: the stamp's own CRs stay in the input); ``"own_crs_masked"`` replaces
    ``mi | cr_mask``; for the networks, ``"input_e"`` feeds them electrons instead of the
    zoo's e-/100 (what deepCR 0.3.1's ``clean`` does with ACS-WFC; a diagnostic).
    Returns ``(label -> variant -> mse_summary (+ n_stamps), label -> seconds of "paper")``.
    """
    eval_mask = mi & ~batch.cr_mask & ~batch.ignore
    results, seconds = {}, {}
    for label, cleaner in inpainters.items():
        n = len(batch) if (cleaner is not None or biharmonic_max is None) else min(biharmonic_max, len(batch))
        sub = ev.head(batch, n)
        results[label] = {}
        variants = [("paper", mi[:n], 1.0), ("own_crs_masked", mi[:n] | batch.cr_mask[:n], 1.0)]
        if cleaner is not None and cleaner.inpaint_method == "network":
            variants.append(("input_e", mi[:n], 0.01))  # image / 0.01 at scale 100: electrons
        for variant, region, unit in variants:
            t0 = time.perf_counter()
            if cleaner is None:
                pred = ev.biharmonic(sub.image, region)
            else:
                pred = cleaner.inpaint(sub.image / np.float32(unit), region) * np.float32(unit)
            if variant == "paper":
                seconds[label] = time.perf_counter() - t0
            results[label][variant] = {**ev.mse_summary(pred, sub, eval_mask[:n]), "n_stamps": n}
    return results, seconds


def run_end_to_end(inpainters: dict, batch, dilations=E2E_DILATIONS) -> dict:
    """End-to-end cleaning errors: label -> ``"dilate<p>"`` -> :func:`~deepcr_jax.evaluate.end_to_end_mse`.

    ``dilate<p>`` is ``Cleaner.clean(image, ignore=...)`` as users run it with ``grow=p``: the CR
    mask predicted on the images with their CRs, grown by p px, then inpainted (``dilate0``:
    deepCR's pipeline, the mask as predicted; ``dilate1``: deepcr-jax's default). Scored
    against ``batch.clean`` on the replaced (grown) pixels and on the true CR pixels; ignored
    pixels are left out.
    """
    out = {}
    for label, cleaner in inpainters.items():
        if cleaner is None:
            continue
        out[label] = {}
        for p in dilations:
            cleaner.grow = p  # the same loaded networks, each grow in turn
            mask, cleaned = cleaner.clean(batch.image, ignore=batch.ignore, cleaned=True)
            region = ev.dilate(mask, p) & ~batch.ignore if p else mask
            out[label][f"dilate{p}"] = ev.end_to_end_mse(
                cleaned, batch.clean, region, batch.cr_mask, batch.ignore
            )
        cleaner.grow = INPAINT_GROW
    return out


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return v


def _labelled(value: str, option: str) -> tuple[str, str]:
    """``LABEL=PATH`` → (label, path); the path must exist."""
    label, sep, path = value.partition("=")
    if not sep or not label or not os.path.isfile(path):
        raise SystemExit(f"{option} takes LABEL=PATH of an existing .npz; got {value!r}")
    return label, path


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 stamps per field, two sigclip values (~1 min on 2 cores)")
    ap.add_argument(
        "--n", type=_positive_int, default=None, help="stamps per field (default 40; 3 with --quick)"
    )
    ap.add_argument(
        "--n-inpaint",
        type=_positive_int,
        default=None,
        help="stamps per field for inpainting (default max(n, 100); n with --quick); the first n are "
        "the detection stamps",
    )
    ap.add_argument(
        "--n-end-to-end",
        type=_positive_int,
        default=None,
        help="stamps per field for the end-to-end measurement (default min(n_inpaint, 20))",
    )
    ap.add_argument("--seed", type=int, default=2020, help="master seed (default 2020)")
    ap.add_argument(
        "--outdir",
        default=None,
        help="output folder (default benchmarks/results; with --quick a new temporary folder)",
    )
    ap.add_argument("--jobs", type=_positive_int, default=1, help="processes for astroscrappy (default 1)")
    ap.add_argument(
        "--mask-model", action="append", default=[], metavar="LABEL=PATH",
        help="also score this mask network (a .npz, e.g. a trained best.npz) under LABEL; repeatable",
    )
    ap.add_argument(
        "--inpaint-model", action="append", default=[], metavar="LABEL=PATH",
        help="also score this inpainting network (a .npz) under LABEL; repeatable",
    )
    ap.add_argument("--zoo-mask", default=None, metavar="NAME[,NAME]",
                    help="score only these zoo mask models (default: every ACS-WFC model)")
    ap.add_argument(
        "--lacosmic-from", default=None, metavar="JSON",
        help="reuse LACosmic's detection results of an earlier run's accuracy.json (same test set, sweep, "
        "settings and astroscrappy version, checked) instead of rerunning astroscrappy (~27 min on 2 cores)",
    )
    ap.add_argument(
        "--biharmonic-max",
        type=_positive_int,
        default=None,
        help="evaluate biharmonic inpainting on at most this many stamps per field (default all)",
    )
    args = ap.parse_args(argv)
    if args.seed < 0:
        ap.error(f"--seed must be a non-negative integer, got {args.seed}")
    return args


def output_dir(args: argparse.Namespace) -> str:
    """``--outdir`` (created); default ``benchmarks/results``, but a fresh temporary folder with ``--quick``."""
    if args.outdir is not None:
        os.makedirs(args.outdir, exist_ok=True)
        return args.outdir
    if args.quick:
        return tempfile.mkdtemp(prefix="deepcr_accuracy_quick_")
    os.makedirs(RESULTS, exist_ok=True)
    return RESULTS


def reused_lacosmic(path: str, expect: dict, test_set: dict) -> tuple[dict, float]:
    """LACosmic's per-field detection results and seconds from an earlier ``accuracy.json``.

    ``expect`` holds this run's config values that determine LACosmic's
    result (stamps per field, seeds, stamp shape, sigclip sweep, astroscrappy
    settings and version); ``test_set`` this run's per-field descriptions.
    Any difference is a ``SystemExit`` naming the fields.
    """
    try:
        with open(path) as fh:
            old = json.load(fh)
        cfg = {**old["config"], "astroscrappy": old["machine"].get("astroscrappy")}
        found = {k: cfg.get(k) for k in expect}
    except (OSError, ValueError, KeyError) as err:
        raise SystemExit(f"--lacosmic-from {path!r}: not a readable accuracy.json ({err})") from None
    differ = [k for k in expect if json.dumps(found[k], sort_keys=True) != json.dumps(expect[k], sort_keys=True)]
    if json.dumps(old.get("test_set"), sort_keys=True) != json.dumps(test_set, sort_keys=True):
        differ.append("test_set")
    if differ:
        raise SystemExit(f"--lacosmic-from {path!r} was run with other settings; they differ in: {', '.join(differ)}")
    key = next((k for k in old["seconds"] if k.startswith("LACosmic")), None)
    return {f: old["detection"][f]["LACosmic"] for f in FIELDS}, (old["seconds"][key] if key else float("nan"))


def _add(seconds: dict, key: str, value: float) -> None:
    seconds[key] = seconds.get(key, 0.0) + value


def main(argv=None) -> int:
    """Run the benchmark and write ``accuracy.md``, ``accuracy.json`` and the ROC figures."""
    args = parse_args(argv)
    n = args.n if args.n is not None else (3 if args.quick else 40)
    n_inpaint = args.n_inpaint if args.n_inpaint is not None else (n if args.quick else max(n, 100))
    n_e2e = args.n_end_to_end if args.n_end_to_end is not None else min(n_inpaint, 20)
    sigclips = SIGCLIP_QUICK if args.quick else ev.SIGCLIPS
    outdir = output_dir(args)
    print(f"writing to {outdir}", flush=True)
    t_start = time.perf_counter()
    import deepcr_jax

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    sets = ev.make_test_set(max(n, n_inpaint, n_e2e), args.seed)
    batches = {f: ev.head(b, n) for f, b in sets.items()}  # the first n: the detection set
    inpaint_sets = {f: ev.head(b, n_inpaint) for f, b in sets.items()}
    seconds["simulation"] = time.perf_counter() - t0
    print(
        f"simulated {max(n, n_inpaint, n_e2e)} stamps x {len(FIELDS)} fields in {seconds['simulation']:.1f} s"
    )

    # ---- detection
    cleaners = {}
    b0 = batches[FIELDS[0]]
    zoo = [m for m in deepcr_jax.list_models("mask") if m.startswith("ACS-WFC")]
    if args.zoo_mask:
        zoo = args.zoo_mask.split(",")
    extra_masks = dict(_labelled(v, "--mask-model") for v in args.mask_model)
    for m, model in [(m, m) for m in zoo] + list(extra_masks.items()):
        cleaners[m] = deepcr_jax.load(model, tile=256)
        cleaners[m].clean(b0.image[:1], binary=False, ignore=b0.ignore[:1])  # compile
    lacosmic = {k: (str(v) if v == np.inf else v) for k, v in ev.LACOSMIC_KWARGS.items()}
    lacosmic_config = {
        "n_per_field": n, "seed": args.seed,
        "field_seeds": {f: ev.field_seed(args.seed, k) for k, f in enumerate(FIELDS)},
        "stamp_shape": list(ev.STAMP_SHAPE), "sigclips": list(sigclips),
        "lacosmic": {**lacosmic, "objlim": ev.OBJLIM},
    }
    info = machine("astroscrappy", "skimage")
    reused = None
    if args.lacosmic_from:
        reused = reused_lacosmic(args.lacosmic_from, {**lacosmic_config, "astroscrappy": info["astroscrappy"]},
                                 {f: ev.describe_batch(batches[f]) for f in FIELDS})
        print(f"LACosmic: reusing the results of {args.lacosmic_from}", flush=True)
    pool = ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) if args.jobs > 1 and not reused else None
    detection = {}
    try:
        for f in FIELDS:
            det, secs = detect_deepcr(cleaners, batches[f])
            for m, s in secs.items():
                _add(seconds, f"mask {m}", s)
            if reused:
                det["LACosmic"] = reused[0][f]
            else:
                det["LACosmic"], s = detect_lacosmic(batches[f], f, sigclips, pool)
                _add(seconds, f"LACosmic ({len(sigclips)} sigclips)", s)
            for m in det:
                det[m]["paper_row"] = (
                    "LACosmic" if m == "LACosmic"
                    else f"deepCR-{deepcr_jax.MODELS[m].label}" if m in deepcr_jax.MODELS else "-"
                )
            detection[f] = det
            t1, t2 = ev.PAPER_FPRS
            print(
                f"{f}: " + ", ".join(f"{m} {cell(r, t1)} / {cell(r, t2)}" for m, r in det.items()), flush=True
            )
    finally:
        if pool is not None:
            pool.shutdown()

    # ---- inpainting: borrowed masks (Table 3), then end to end
    inpainters = {}
    for lab, name in {**INPAINTERS, **dict(_labelled(v, "--inpaint-model") for v in args.inpaint_model)}.items():
        inpainters[lab] = None if name is None else deepcr_jax.load("ACS-WFC", inpaint=name, tile=256)
        if name is not None:
            inpainters[lab].inpaint(b0.image[:1], b0.cr_mask[:1])  # compile
    masks = ev.donor_masks({f: inpaint_sets[f].cr_mask for f in FIELDS}, args.seed)
    inpainting, donors, end_to_end = {}, {}, {}
    for f in FIELDS:
        mi, donors[f] = masks[f]
        inpainting[f], secs = run_inpainting(inpainters, inpaint_sets[f], mi, args.biharmonic_max)
        for lab, s in secs.items():
            _add(seconds, f"inpaint {lab}", s)
        t0 = time.perf_counter()
        end_to_end[f] = run_end_to_end(inpainters, ev.head(sets[f], n_e2e))
        _add(seconds, "end to end (all inpainters and dilations)", time.perf_counter() - t0)
        print(
            f"{f}: "
            + ", ".join(f"{lab} {r['paper']['mse_paper_units']:.4f}" for lab, r in inpainting[f].items())
            + "; end to end, MSE at true CRs [e-^2]: "
            + ", ".join(f"{lab} {r['dilate0']['mse_cr_e2']:.0f}" for lab, r in end_to_end[f].items()),
            flush=True,
        )

    # ---- outputs
    for f in FIELDS:
        plot_field_roc(f, detection[f], os.path.join(outdir, f"accuracy_roc_{f}.png"))
    plot_all_models(detection, os.path.join(outdir, "accuracy_roc_models.png"))
    if reused:
        seconds[f"LACosmic ({len(sigclips)} sigclips), reused from {args.lacosmic_from}"] = reused[1]
    argv_used = sys.argv[1:] if argv is None else list(argv)
    data = {
        "config": {
            "command": " ".join(["python", "benchmarks/accuracy.py", *argv_used]),
            "quick": bool(args.quick),
            **lacosmic_config,
            "n_inpaint_per_field": n_inpaint,
            "n_end_to_end_per_field": n_e2e,
            "end_to_end_dilations": list(E2E_DILATIONS),
            "jobs": args.jobs,
            "lacosmic_from": args.lacosmic_from,
            "target_fprs": list(ev.PAPER_FPRS),
            "biharmonic_max": args.biharmonic_max,
            "mse_unit_note": MSE_UNIT_NOTE,
        },
        "machine": info,
        "runtime_s": time.perf_counter() - t_start,
        "seconds": seconds,
        "test_set": {f: ev.describe_batch(batches[f]) for f in FIELDS},
        "inpainting_set": {f: ev.describe_batch(inpaint_sets[f]) for f in FIELDS},
        "detection": detection,
        "inpainting": inpainting,
        "inpainting_donors": donors,
        "end_to_end": end_to_end,
        "paper": {
            "table2": {
                r: {f: {str(t): list(v[j]) for j, t in enumerate(ev.PAPER_FPRS)} for f, v in d.items()}
                for r, d in PAPER_TABLE2.items()
            },
            "table3": PAPER_TABLE3,
        },
    }
    with open(os.path.join(outdir, "accuracy.json"), "w") as fh:
        json.dump(data, fh, indent=1)
    with open(os.path.join(outdir, "accuracy.md"), "w") as fh:
        fh.write(render_markdown(data))
    print(f"wrote {outdir}/accuracy.md, accuracy.json and ROC figures in {data['runtime_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
