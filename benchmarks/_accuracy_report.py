"""Figures and the markdown report of benchmarks/accuracy.py (from its JSON-able results)."""

from __future__ import annotations

import numpy as np

from deepcr_jax.evaluate import FIELDS, N_BOOT, PAPER_FPRS, PAPER_MSE_UNIT_E2

__all__ = ["FIELD_TITLES", "MSE_UNIT_NOTE", "cell", "plot_all_models", "plot_field_roc", "render_markdown"]

FIELD_TITLES = {
    "extragalactic": "extragalactic field",
    "globular": "globular cluster",
    "resolved": "resolved galaxy",
}

#: How the MSEs are compared with the paper (the script records it in accuracy.json).
MSE_UNIT_NOTE = (
    "Our images are in electrons, so our MSE is in e-^2. The paper quotes MSEs without units. Read in e-^2 "
    "they would be far below the noise: an inpainted pixel cannot beat the Poisson + read-noise variance "
    "of the (noisy) observed value it is compared with, about 50-160 e-^2 on the sky of these exposures "
    "(sky 30-140 e- plus 4.5 e- read noise). Read as data in units of 100 e- (MSE in (100 e-)^2 = "
    "1e4 e-^2), the paper's 0.012 for deepCR in extragalactic fields is 120 e-^2, just above that noise "
    "floor (the floor column below: ~100 e-^2 in our extragalactic stamps). The paper's own "
    "deepCR-mask-2-4 network also expects e-/100 (see deepcr_jax/zoo.py). So the tables compare our MSE "
    "divided by 1e4 (i.e. in (100 e-)^2) with the paper's numbers. This is a change of units only: no "
    "fitted factor is applied, and the e-^2 values are listed as well."
)


def plot_field_roc(field: str, detection: dict, path: str) -> None:
    """Paper Fig. 4 style ROC of one field: black = non-dilated, red = 3x3-dilated TPR.

    Shows ``ACS-WFC`` (deepCR-2-32), ``ACS-WFC-F606W-2-4`` (deepCR-2-4) and
    LACosmic on a logarithmic FPR axis, with the paper's FPRs marked.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = [
        ("ACS-WFC", "deepCR-2-32 (ACS-WFC)", "-", None),
        ("ACS-WFC-F606W-2-4", "deepCR-2-4 (ACS-WFC-F606W-2-4)", "--", None),
        ("LACosmic", "LACosmic", ":", "o"),
    ]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for key, label, ls, marker in styles:
        if key not in detection:
            continue
        r = detection[key]["roc"]
        fpr = np.asarray(r["fpr"])
        pos = fpr > 0
        kw = {"ls": ls, "marker": marker, "ms": 3, "lw": 1.4}
        ax.plot(fpr[pos], np.asarray(r["tpr"])[pos], color="k", label=label, **kw)
        ax.plot(fpr[pos], np.asarray(r["tpr_dilated"])[pos], color="r", label=label + " +", **kw)
    for t in PAPER_FPRS:
        ax.axvline(t, color="0.6", lw=0.8, zorder=0)
    ax.set_xscale("log")
    ax.set_xlim(1e-5, 1e-1)
    ax.set_ylim(0, 1.0)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"{FIELD_TITLES[field]} (simulated)")
    ax.legend(loc="lower right", fontsize=7)
    ax.grid(alpha=0.3, which="both", lw=0.4)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_all_models(detection: dict, path: str) -> None:
    """Non-dilated ROC of every zoo ACS/WFC mask model and LACosmic, one panel per field."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(FIELDS), figsize=(13, 4.2), sharey=True)
    for ax, field in zip(axes, FIELDS):
        det = detection[field]
        for k, (name, res) in enumerate(det.items()):
            r = res["roc"]
            fpr = np.asarray(r["fpr"])
            pos = fpr > 0
            style = (
                {"color": "k", "ls": ":", "marker": "o", "ms": 3}
                if name == "LACosmic"
                else {"color": f"C{k}"}
            )
            ax.plot(fpr[pos], np.asarray(r["tpr"])[pos], lw=1.3, label=name, **style)
        for t in PAPER_FPRS:
            ax.axvline(t, color="0.6", lw=0.8, zorder=0)
        ax.set_xscale("log")
        ax.set_xlim(1e-5, 1e-1)
        ax.set_ylim(0, 1.0)
        ax.set_title(FIELD_TITLES[field])
        ax.set_xlabel("false positive rate")
        ax.grid(alpha=0.3, which="both", lw=0.4)
    axes[0].set_ylabel("true positive rate (non-dilated)")
    axes[-1].legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def cell(res: dict, t: float, se: bool = False) -> str:
    key = str(t)
    flag = "†" if res["extrapolated"][key] else ""
    err = f" ±{100 * res['tpr_se'][key]:.1f}" if se and np.isfinite(res["tpr_se"][key]) else ""
    return f"{_pct(res['tpr'][key])}{err} ({_pct(res['tpr_dilated'][key])}){flag}"


def _paper_cell(paper: dict, row: str, field: str, t: float) -> str:
    if row not in paper["table2"]:
        return ""
    a, b = paper["table2"][row][field][str(t)]
    return f"{_pct(a)} ({_pct(b)})"


def _fmt_mse(x: float) -> str:
    return "n/a" if not np.isfinite(x) else (f"{x:.3f}" if x >= 0.001 else f"{x:.2e}")


def render_markdown(data: dict) -> str:
    """The ``accuracy.md`` report from the JSON-able results."""
    cfg = data["config"]
    lines = [
        "# Accuracy on simulated HST ACS/WFC stamps vs the deepCR paper (Tables 2 and 3)",
        "",
        f"Command: `{cfg['command']}`  ",
        (
            f"Seed {cfg['seed']}, {cfg['n_per_field']} stamps of 256x256 per field for detection "
            f"({cfg['n_per_field'] * len(FIELDS)} in all) and {cfg.get('n_inpaint_per_field', cfg['n_per_field'])} "
            f"per field for inpainting{', quick mode' if cfg['quick'] else ''}; "
            f"runtime {data['runtime_s']:.0f} s on {data['machine'].get('cpu', '?')}, "
            f"{data['machine']['cpus']} cores (shared), jobs={cfg['jobs']}; "
            f"deepcr-jax {data['machine'].get('deepcr_jax', '?')}, astroscrappy "
            f"{data['machine'].get('astroscrappy', '?')}, scikit-image {data['machine'].get('skimage', '?')}."
        ),
        "",
        (
            "Data: `deepcr_jax.simulate.make_stamps(n, field, seed=SeedSequence([seed, field_index]))` "
            "(electrons, exposure times log-uniform per field); ignored (saturated, 7x7-dilated) pixels are "
            "excluded from every count. The simulator's CR truth and noise model are not HST's, so the numbers "
            "test the reimplementation's behaviour and the relative ranking, not the paper's exact values."
        ),
        "",
        "| field | detection stamps | exptime [s] | CR pixels | ignored pixels | inpainting stamps |",
        "|---|---|---|---|---|---|",
    ]
    for f in FIELDS:
        d = data["test_set"][f]
        n_inp = data.get("inpainting_set", data["test_set"])[f]["n_stamps"]
        lines.append(
            f"| {FIELD_TITLES[f]} | {d['n_stamps']} | {d['exptime_s'][0]:.0f}-{d['exptime_s'][1]:.0f} | "
            f"{100 * d['cr_pixel_fraction']:.2f}% ({d['n_cr_pixels']}) | {100 * d['ignored_fraction']:.2f}% "
            f"| {n_inp} |"
        )

    # ---- Table 2
    lines += [
        "",
        "## Table 2: CR detection, TPR at fixed FPR (3x3-dilated TPR in parentheses)",
        "",
        (
            "Ours = this run; paper = Zhang & Bloom (2020) Table 2 row of the same architecture (the paper's "
            "deepCR-2-32 was trained on F606W; the zoo's ACS-WFC and per-filter 2-32 models are all compared "
            "with it). Dilated TPR: predictions dilated by a 3x3 box, FPR kept at the non-dilated value "
            "(paper Sec. 4.1). LACosmic: astroscrappy, `sigfrac=0.3, niter=4, sepmed=False, readnoise=5, "
            "gain=1, satlevel=inf`, objlim 2 / 3.5 / 5 per field, sigclip swept over "
            f"{list(cfg['sigclips'])}; its TPR at a target FPR is linearly interpolated between the two "
            "neighbouring sweep points (deepCR: between probability thresholds). ± = standard deviation of the "
            f"non-dilated TPR over {N_BOOT} bootstrap resamples of the stamps (sampling error of the test set)."
        ),
        "",
    ]
    det = data["detection"]
    methods = list(det[FIELDS[0]].keys())
    for t in PAPER_FPRS:
        lines.append(f"### TPR at {100 * t:g}% FPR")
        lines.append("")
        head = ["model", "paper row"]
        for f in FIELDS:
            head += [f"{FIELD_TITLES[f]}: ours", "paper"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for m in methods:
            row = det[FIELDS[0]][m]["paper_row"]
            cells = [m, row]
            for f in FIELDS:
                cells += [cell(det[f][m], t, se=True), _paper_cell(data["paper"], row, f, t)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if any(det[f][m]["extrapolated"][str(t)] for f in FIELDS for m in methods for t in PAPER_FPRS):
        lines += [
            (
                "† the target FPR lies outside the FPR range of the method's ROC points, so the value is "
                "interpolated towards the added end point (0, 0) or (1, 1) and is a lower bound."
            ),
            "",
        ]
    lines += [
        "At each model's own threshold (0.5), FPR / TPR:",
        "",
        "| model | " + " | ".join(FIELD_TITLES[f] for f in FIELDS) + " |",
        "|---|" + "---|" * len(FIELDS),
    ]
    for m in methods:
        if m == "LACosmic":
            continue
        cells = [m] + [
            f"{100 * det[f][m]['fpr_at_threshold']:.3f}% / {_pct(det[f][m]['tpr_at_threshold'])}"
            for f in FIELDS
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "ROC curves (black: non-dilated, red: 3x3-dilated TPR at the non-dilated FPR, as the paper's Fig. 4): "
        + ", ".join(f"[{f}](accuracy_roc_{f}.png)" for f in FIELDS)
        + "; all zoo models: [accuracy_roc_models.png](accuracy_roc_models.png).",
        "",
    ]

    # ---- Table 3
    inp = data["inpainting"]
    table3 = data["paper"]["table3"]
    labels = list(inp[FIELDS[0]].keys())
    n_inp = cfg.get("n_inpaint_per_field", cfg["n_per_field"])
    lines += [
        "## Table 3: inpainting MSE",
        "",
        (
            f"{n_inp} stamps per field"
            + (
                f" (the {cfg['n_per_field']} detection stamps and more from the same seeds: inpainting is "
                "cheap, and its errors are heavy-tailed)"
                if n_inp > cfg["n_per_field"]
                else " (the detection stamps)"
            )
            + ". Inpainting mask of each stamp = the "
            "CR mask of one other stamp of this set (all fields pooled, fixed seed; one mask per stamp = "
            "native density, paper Sec. 4.2). Scored pixels: inpainting mask and not the stamp's own CRs "
            "and not ignored (paper eq. 2); reference = the observed (noisy) image, as in the paper; MSE "
            "pooled over all scored pixels of the field. Only the inpainting-mask pixels are replaced "
            "(G(X, M_I)); the stamp's own CRs stay in the input. ± = standard deviation over "
            f"{N_BOOT} bootstrap resamples of the stamps. The pooled MSE is heavy-tailed: a handful of "
            "pixels where an inpainting mask falls on a bright star or galaxy core (or, for medmask, "
            "beside the stamp's own CRs) can carry most of it, so compare the ± and the median column "
            "below before reading much into differences."
        ),
        "",
        cfg["mse_unit_note"],
        "",
        "### MSE in (100 e-)^2 (= e-^2 / 1e4), ours vs paper",
        "",
    ]
    hdr = ["method"]
    for f in FIELDS:
        hdr += [f"{FIELD_TITLES[f]}: ours", "paper"]
    lines.append("| " + " | ".join(hdr) + " |")
    lines.append("|" + "---|" * len(hdr))
    for lab in labels:
        cells = [lab]
        for f in FIELDS:
            r = inp[f][lab]["paper"]
            se = r["mse_se_e2"] / PAPER_MSE_UNIT_E2
            cells += [f"{_fmt_mse(r['mse_paper_units'])} ±{_fmt_mse(se)}", f"{table3[lab][f]:.3f}" if lab in table3 else ""]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    bh = {f: inp[f]["biharmonic"]["paper"]["n_stamps"] for f in FIELDS if "biharmonic" in inp[f]}
    if bh and any(v != n_inp for v in bh.values()):
        lines += [
            "biharmonic was evaluated on "
            + ", ".join(f"{n} {f}" for f, n in bh.items())
            + " stamps (`--biharmonic-max`); all other methods on every stamp of the field.",
            "",
        ]
    lines += [
        "### The same in e-^2, with the noise floor and other references",
        "",
        (
            "floor = estimated Poisson + read-noise variance of the observed values at the scored pixels "
            "(mean of clean + readnoise^2); excess = MSE - floor, an estimate of the error against the "
            "noise-free scene; median = median squared error over the scored pixels (robust to the few "
            "catastrophic pixels that dominate the MSE; about 0.45 x the local noise variance for an ideal "
            "predictor); vs clean = MSE against the simulator's CR-free frame (same noise realisation; it "
            "differs from the observed image only by CR charge below the truth-mask threshold); own CRs "
            "masked = MSE when the stamp's own CR pixels are replaced as well (as when cleaning real data), "
            "scored on the same pixels."
        ),
        "",
        (
            "| field | method | MSE [e-^2] | ± | floor | excess | median | vs clean | mean of per-stamp MSE "
            "| own CRs masked | pixels |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in FIELDS:
        for lab in labels:
            r = inp[f][lab]["paper"]
            o = inp[f][lab]["own_crs_masked"]
            lines.append(
                f"| {FIELD_TITLES[f]} | {lab} | {r['mse_e2']:.1f} | {r['mse_se_e2']:.1f} | "
                f"{r['noise_floor_e2']:.1f} | {r['excess_e2']:.1f} | {r['median_sq_err_e2']:.1f} | "
                f"{r['mse_vs_clean_e2']:.1f} | {r['mean_stamp_mse_e2']:.1f} | {o['mse_e2']:.1f} | "
                f"{r['n_pixels']} |"
            )
    diag = [lab for lab in labels if "input_e" in inp[FIELDS[0]][lab]]
    if diag:
        lines += [
            "",
            "### Diagnostic (not Table 3): deepCR-inpaint fed electrons",
            "",
            (
                "The zoo runs both inpainting networks on e-/100 (input scale 100; see deepcr_jax/zoo.py and "
                "convert/scales.md). deepCR 0.3.1's clean() with its default ACS-WFC mask model feeds them "
                "electrons instead (its registry gives inpainters no scale of their own). The e- input column "
                "runs the same networks that way, same masks and pixels. MSE / median squared error in e-^2."
            ),
            "",
            "| method | " + " | ".join(f"{FIELD_TITLES[f]}: e- input | e-/100 input" for f in FIELDS) + " |",
            "|---|" + "---|---|" * len(FIELDS),
        ]
        for lab in diag:
            cells = [lab]
            for f in FIELDS:
                r, d = inp[f][lab]["paper"], inp[f][lab]["input_e"]
                cells += [
                    f"{d['mse_e2']:.0f} / {d['median_sq_err_e2']:.0f}",
                    f"{r['mse_e2']:.0f} / {r['median_sq_err_e2']:.0f}",
                ]
            lines.append("| " + " | ".join(cells) + " |")

    # ---- end to end
    e2e = data.get("end_to_end")
    if e2e:
        labs = list(e2e[FIELDS[0]].keys())
        dil = cfg.get("end_to_end_dilations", [0])
        lines += [
            "",
            "## End to end: clean(image with CRs, inpaint=...) vs the CR-free image",
            "",
            (
                f"{cfg.get('n_end_to_end_per_field', '?')} stamps per field (the first of the inpainting set). "
                "The ACS-WFC mask network predicts the CR mask on the images with their CRs (threshold 0.5, "
                "ignored pixels given); the inpainter replaces those pixels; the cleaned image is compared with "
                "the simulator's CR-free image (same noise realisation), ignored pixels left out. MSE in e-^2 at "
                "(a) the replaced pixels and (b) the true CR pixels, split into the CRs the mask caught "
                "(the inpainter's error) and those it missed (left as they are: the same for every inpainter). "
                "`+1 px`: the predicted mask grown by one pixel before inpainting (`clean`'s default, "
                "`grow=1`); `predicted`: the mask as predicted (`grow=0`, deepCR's pipeline)."
            ),
            "",
            (
                "| field | inpainter | mask | (a) replaced | (b) true CRs | CRs caught | CRs missed "
                "| missed share of (b) SSE | replaced / caught / missed pixels |"
            ),
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for f in FIELDS:
            for lab in labs:
                for p in dil:
                    r = e2e[f][lab][f"dilate{p}"]
                    lines.append(
                        f"| {FIELD_TITLES[f]} | {lab} | {'predicted' if p == 0 else f'+{p} px'} | "
                        f"{r['mse_replaced_e2']:.0f} | {r['mse_cr_e2']:.0f} | {r['mse_cr_replaced_e2']:.0f} | "
                        f"{r['mse_cr_missed_e2']:.0f} | {100 * r['sse_cr_missed_fraction']:.0f}% | "
                        f"{r['n_replaced']} / {r['n_cr_replaced']} / {r['n_cr_missed']} |"
                    )

    # ---- runtimes
    rt = data["seconds"]
    n_det = cfg["n_per_field"] * len(FIELDS)
    n_inp_tot = n_inp * len(FIELDS)
    lines += [
        "",
        "## Wall times of this run",
        "",
        (
            "Seconds for all stamps of the step and scaled to 100 stamps (shared 2-core CPU, indicative "
            "only; see benchmarks/results/speed.md for proper timings). deepCR: forward passes after a "
            "warm-up compile; LACosmic: all sigclip values of the sweep; inpainting: the Table 3 variant only."
        ),
        "",
        "| step | stamps | seconds | per 100 stamps |",
        "|---|---|---|---|",
    ]
    for k, v in rt.items():
        n_step = (
            max(n_det, n_inp_tot) if k == "simulation" else (n_inp_tot if k.startswith("inpaint") else n_det)
        )
        lines.append(f"| {k} | {n_step} | {v:.1f} | {100 * v / n_step:.1f} |")
    lines.append("")
    return "\n".join(lines)
