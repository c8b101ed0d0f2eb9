"""Training pieces on hand-built cases: config, losses, schedule, augmentation, data, BN phases."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from deepcr_jax.training import augment, data, losses
from deepcr_jax.training.config import CONFIG_NAMES, get_config, parse_overrides
from deepcr_jax.training.schedule import Plateau, bn_phase, get_learning_rate, set_learning_rate
from deepcr_jax.training.state import create_state, make_optimizer
from deepcr_jax.training.step import make_eval_step, make_train_step, network_input

# ---------------------------------------------------------------- config


def test_config_names_smoke_and_overrides():
    for name in CONFIG_NAMES:
        assert get_config(name).name == name
        smoke = get_config(name + ".smoke")
        assert smoke == get_config(name, smoke=True)
        assert smoke.crop == 32
    assert get_config("inpaint_2_32").lr == 0.01 and get_config("inpaint_2_32").bn_epochs == 40
    assert get_config("finetune").lr == get_config("mask_2_32").lr / 10
    cfg = get_config("mask_2_32", **parse_overrides(["lr=1e-3", "epochs_max=7", "flips=false"]))
    assert (cfg.lr, cfg.epochs_max, cfg.flips) == (1e-3, 7, False)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"bogus": 1}, "unknown config field.*bogus"), ({"epochs_max": "many"}, "epochs_max must be int"),
     ({"lr": "fast"}, "lr must be float"), ({"norm": "layer"}, "norm must be one of"),
     ({"crop": 30}, "crop must be a multiple of 4"), ({"flips": "maybe"}, "flips must be bool"),
     ({"bright_crops": 2.0}, r"bright_crops must be in \[0, 1\]"),
     ({"core_masks": 0.5}, "core_masks > 0 needs kind='inpaint' and bright_crops > 0"),
     ({"core_reach": 0}, "core_reach must be >= 1"), ({"core_reach": 200}, r"core_reach \(200\) must be <= crop // 2"),
     ({"core_weight": 0.0}, r"core_weight must be in \(0, 1\]"), ({"core_weight": 1.5}, "core_weight must be in")],
)
def test_config_bad_overrides(kwargs, match):
    with pytest.raises(ValueError, match=match):
        get_config("mask_2_32", **kwargs)


def test_config_bad_names():
    with pytest.raises(ValueError, match="unknown config 'mask_9'"):
        get_config("mask_9")
    with pytest.raises(ValueError, match="unknown config field 'nope'"):
        parse_overrides(["nope=1"])
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["lr"])


# ---------------------------------------------------------------- losses


def test_bce_with_ignore_hand_computed():
    # 2x2: probabilities 0.9 (CR), 0.2 (no CR), 0.6 (no CR), 0.5 (ignored)
    p = np.array([[[0.9, 0.2], [0.6, 0.5]]])
    logits = jnp.asarray(np.log(p / (1 - p)), jnp.float32)
    cr = jnp.array([[[1.0, 0.0], [0.0, 1.0]]])
    ign = jnp.array([[[0.0, 0.0], [0.0, 1.0]]])
    expected = -(math.log(0.9) + math.log(0.8) + math.log(0.4)) / 3  # denominator 3, not 4
    np.testing.assert_allclose(float(losses.bce_with_ignore(logits, cr, ign)), expected, rtol=1e-6)
    _total, count = losses.bce_terms(logits, cr, ign)
    assert float(count) == 3.0
    # stable for huge logits
    big = jnp.array([[[80.0, -80.0]]])
    assert float(losses.bce_with_ignore(big, jnp.array([[[1.0, 0.0]]]), jnp.zeros((1, 1, 2)))) < 1e-30
    np.testing.assert_allclose(float(losses.bce_with_ignore(big, jnp.array([[[0.0, 0.0]]]), jnp.zeros((1, 1, 2)))),
                               40.0, rtol=1e-6)
    assert float(losses.bce_with_ignore(logits, cr, jnp.ones_like(cr))) == 0.0


def test_inpaint_mse_hand_computed():
    pred = jnp.array([[[1.0, 2.0], [3.0, 4.0]]])
    target = jnp.array([[[0.0, 0.0], [0.0, 0.0]]])
    m_i = jnp.array([[[1.0, 1.0], [1.0, 0.0]]])  # pixel (1,1) not to be inpainted
    cr = jnp.array([[[0.0, 1.0], [0.0, 0.0]]])  # pixel (0,1) is a CR: its value is not truth
    ign = jnp.array([[[0.0, 0.0], [1.0, 0.0]]])  # pixel (1,0) ignored
    assert float(losses.inpaint_mse(pred, target, m_i, cr, ign)) == 1.0  # only (0,0): 1**2 / 1
    assert float(losses.inpaint_mse(pred, target, m_i, jnp.zeros_like(cr), jnp.zeros_like(ign))) == pytest.approx((1 + 4 + 9) / 3, rel=1e-6)
    # a weight scales each pixel's error and its share of the count: a weighted mean
    w = jnp.array([[[0.5, 1.0], [0.25, 1.0]]])
    total, count = losses.inpaint_terms(pred, target, m_i, jnp.zeros_like(cr), jnp.zeros_like(ign), w)
    assert (float(total), float(count)) == (0.5 * 1 + 4 + 0.25 * 9, 0.5 + 1 + 0.25)
    total, count = losses.inpaint_terms(pred, target, m_i, cr, ign, w)  # CR and ignored pixels still excluded
    assert (float(total), float(count)) == (0.5, 0.5)


# ---------------------------------------------------------------- schedule

#: validation losses, and the lr expected after each epoch with patience 4, rtol 1e-3, 2 decays
LOSSES = [1.0, 0.9, 0.8995, 0.8993, 0.9, 0.95, 0.8992,  # bad x5 (none beats 0.9 * 0.999) → decay after #6
          0.85, 0.86, 0.86, 0.86, 0.86, 0.86,  # bad x5 → second decay after #12
          0.84, 0.84, 0.84, 0.84, 0.84, 0.84]  # 0.84 improves; then bad x5 → stop after #18
EXPECTED_LR = [1.0] * 6 + [0.1] * 6 + [0.01] * 7
EXPECTED_STOP = 18


def _run_plateau(losses_):
    pl, lrs = Plateau(lr=1.0), []
    for e, v in enumerate(losses_):
        pl = pl.update(v, e, patience=4, rtol=1e-3, factor=0.1, max_decays=2)
        lrs.append(pl.lr)
        if pl.stop:
            return lrs, e, pl
    return lrs, None, pl


def test_plateau_hand_derived():
    lrs, stop, pl = _run_plateau(LOSSES)
    np.testing.assert_allclose(lrs, EXPECTED_LR, rtol=1e-12)
    assert stop == EXPECTED_STOP
    assert pl.best == 0.84 and pl.best_epoch == 13 and pl.decays == 2
    assert Plateau.from_dict(pl.to_dict()) == pl
    assert Plateau.from_dict(Plateau(lr=1.0).to_dict()).best == math.inf


def test_plateau_matches_torch_and_optax():
    torch = pytest.importorskip("torch")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.1, patience=4, threshold=1e-3,
                                                       threshold_mode="rel", cooldown=0)
    torch_lrs = []
    for v in LOSSES[:EXPECTED_STOP]:  # torch has no stop: compare the lr up to our stop epoch
        sched.step(v)
        torch_lrs.append(opt.param_groups[0]["lr"])
    ours, _, _ = _run_plateau(LOSSES)
    np.testing.assert_allclose(ours[:EXPECTED_STOP], torch_lrs, rtol=1e-12)
    # optax's contrib equivalent decays at plateau_count == patience: patience + 1
    tx = optax.contrib.reduce_on_plateau(factor=0.1, patience=5, rtol=1e-3, cooldown=0)
    st = tx.init(jnp.zeros(1))
    optax_lrs = []
    for v in LOSSES[:EXPECTED_STOP]:
        _, st = tx.update(jnp.zeros(1), st, value=jnp.float32(v))
        optax_lrs.append(float(st.scale))
    np.testing.assert_allclose(optax_lrs, torch_lrs, rtol=1e-6)


def test_bn_phase_and_lr_injection():
    assert [bn_phase(e, 2, "batch") for e in range(4)] == [1, 1, 2, 2]
    assert bn_phase(0, 2, "weight") == 2
    st = create_state(get_config("mask_2_4.smoke"), jax.random.key(0))
    assert get_learning_rate(st["opt"]) == pytest.approx(0.005)
    assert get_learning_rate(set_learning_rate(st["opt"], 5e-4)) == pytest.approx(5e-4)


def test_gradient_clipping_scales_only_large_gradients():
    cfg = get_config("mask_2_4.smoke", clip_norm=2.0)
    tx, adam = make_optimizer(cfg), optax.adam(cfg.lr)
    params = {"w": jnp.zeros(3)}
    st, st_adam = tx.init(params), adam.init(params)
    assert get_learning_rate(set_learning_rate(st, 1e-4)) == pytest.approx(1e-4)
    big, small = {"w": jnp.array([3.0, 4.0, 0.0])}, {"w": jnp.array([0.3, -0.4, 1.0])}  # norms 5 and ~1.1
    for g, want in ((big, {"w": big["w"] * (2.0 / 5.0)}), (small, small)):
        upd, st = tx.update(g, st, params)
        ref, st_adam = adam.update(want, st_adam, params)
        np.testing.assert_allclose(upd["w"], ref["w"], rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="clip_norm must be >= 0"):
        get_config("mask_2_4", clip_norm=-1.0)


# ---------------------------------------------------------------- augmentation


def test_donor_masks_from_other_stamps(key):
    b, n = 6, 16
    cr = np.zeros((b, n, n), np.float32)
    for i in range(b):
        cr[i, i, :] = 1.0  # stamp i's CR is row i
    m = np.asarray(augment.donor_masks(key, jnp.asarray(cr), 9))
    for i in range(b):
        rows = set(np.flatnonzero(m[i].any(axis=1)))
        assert rows and i not in rows and rows <= set(range(b))
        assert np.all(m[i][sorted(rows)] == 1)
    with pytest.raises(ValueError, match=">= 2 stamps"):
        augment.donor_masks(key, jnp.asarray(cr[:1]), 9)


def test_sky_and_dihedral(key):
    img = jnp.zeros((64, 4, 4)) + 10.0
    out = np.asarray(augment.sky_augment(key, img, jnp.full((64,), 100.0), -0.9, 3.0))
    alpha = (out[:, 0, 0] - 10.0) / 100.0
    assert alpha.min() >= -0.9 - 1e-6 and alpha.max() <= 3.0 + 1e-6 and np.ptp(alpha) > 1
    assert np.all(out == out[:, :1, :1])  # one alpha per stamp
    x = jnp.tile(jnp.arange(16.0).reshape(1, 4, 4), (32, 1, 1))
    a, b_ = augment.dihedral(key, x, x * 2)
    np.testing.assert_array_equal(np.asarray(b_), 2 * np.asarray(a))  # same transform on all arrays
    assert len({np.asarray(a[i]).tobytes() for i in range(32)}) > 4


def test_gain_augment(key):
    b, n = 256, 9
    img = jnp.full((b, n, n), 100.0).at[:, 4, 4].set(10000.0)  # one star core per stamp
    ign = jnp.zeros((b, n, n)).at[:, 0, 0].set(1.0)
    sky = jnp.full((b,), 100.0)
    out, sky_g, ign_g = (np.asarray(a) for a in augment.gain_augment(key, img, sky, ign, 8.0, 40000.0, 3))
    g = out[:, 0, 1] / 100.0
    assert g.min() >= 1 - 1e-6 and g.max() <= 8 + 1e-5 and np.median(g) < 4  # log-uniform: median sqrt(8)
    np.testing.assert_allclose(out, np.asarray(img) * g[:, None, None], rtol=1e-6)
    np.testing.assert_allclose(sky_g, 100.0 * g, rtol=1e-6)
    sat = g * 10000.0 >= 40000.0
    assert 0 < sat.mean() < 1
    box = np.zeros((n, n), bool)
    box[3:6, 3:6] = True  # the core grown by the 3x3 box
    want = np.asarray(ign).astype(bool) | (sat[:, None, None] & box)
    np.testing.assert_array_equal(ign_g.astype(bool), want)
    assert ign_g[0, 0, 0] == 1  # the caller's ignore is kept
    same = augment.gain_augment(key, img, sky, ign, 1.0, 40000.0, 3)
    assert all(a is b_ for a, b_ in zip(same, (img, sky, ign)))  # off: the inputs themselves


def test_gain_off_keeps_the_other_draws(key):
    """A gain run draws sky, flips and donors exactly as a run without it (its key is folded in)."""
    cfg = get_config("inpaint_2_32.smoke")
    batch = _batch(cfg)
    x0, l0 = network_input(cfg, batch, key, train=True)
    x1, l1 = network_input(cfg.replace(gain_aug_max=4.0), batch, key, train=True)
    np.testing.assert_array_equal(np.asarray(l0["inpaint_mask"]), np.asarray(l1["inpaint_mask"]))
    a0, a1 = np.asarray(x0[..., 0]), np.asarray(x1[..., 0])
    seen = a0 != 0
    g = [np.median(a1[i][seen[i]] / a0[i][seen[i]]) for i in range(len(a0))]
    for i, gi in enumerate(g):  # one gain per stamp, on image and sky alike (same sky alpha drawn)
        np.testing.assert_allclose(a1[i][seen[i]], gi * a0[i][seen[i]], rtol=1e-5)
    assert min(g) >= 1 - 1e-6 and max(g) <= 4 + 1e-5 and np.ptp(g) > 0.1
    with pytest.raises(ValueError, match="gain_aug_max"):
        cfg.replace(gain_aug_max=0.5)
    with pytest.raises(ValueError, match="saturation"):
        cfg.replace(saturation=0.0)


# ---------------------------------------------------------------- data


def _arrays(n=6, shape=(16, 16), seed=0):
    rng = np.random.default_rng(seed)
    img = rng.normal(100, 5, (n, *shape)).astype(np.float32)
    cr = rng.random((n, *shape)) < 0.05
    return img, cr


def test_data_validation_errors():
    img, cr = _arrays()
    with pytest.raises(ValueError, match=r"cr must have the image's shape \(6, 16, 16\); got \(6, 16, 15\)"):
        data.from_arrays(img, cr[..., :15])
    with pytest.raises(ValueError, match="cr must contain only 0 and 1.*2"):
        data.from_arrays(img, cr * 2)
    with pytest.raises(ValueError, match="empty"):
        data.from_arrays(img[:0], cr[:0])
    with pytest.raises(ValueError, match=r"image must be \(n, ny, nx\)"):
        data.from_arrays(img[None], cr[None])
    ds = data.from_arrays(img, cr)
    with pytest.raises(ValueError, match=r"batch_size \(8\) is larger than the training set \(6 stamps\)"):
        data.EpochIterator(ds, 8, 16, seed=0)
    with pytest.raises(ValueError, match="smaller than crop"):
        data.EpochIterator(ds, 2, 32, seed=0)
    with pytest.raises(ValueError, match="1 group"):
        data.split_by_group(data.from_arrays(img, cr, group=np.zeros(6)), 0.2, seed=0)


def test_nan_pixels_ignored_and_filled():
    img, cr = _arrays()
    img[1, 3, 4] = np.nan
    img[2, 0, 0] = np.inf
    before = img.copy()
    ds = data.from_arrays(img, cr)
    np.testing.assert_array_equal(img, before)  # caller's array untouched
    assert ds.n_bad_pixels == 2 and ds.ignore[1, 3, 4] and ds.ignore[2, 0, 0]
    assert np.isfinite(ds.image).all()
    assert ds.image[1, 3, 4] == np.median(before[1][np.isfinite(before[1])])


def test_split_by_group_and_iterator(tmp_path):
    img, cr = _arrays(12)
    group = np.repeat(np.arange(4), 3)  # 4 exposures of 3 stamps
    ds = data.from_arrays(img, cr, group=group)
    tr, va = data.split_by_group(ds, 0.25, seed=3)
    assert len(va) == 3 and not set(tr.group) & set(va.group)
    _tr2, va2 = data.split_by_group(ds, 0.25, seed=3)
    np.testing.assert_array_equal(va.image, va2.image)
    it = data.EpochIterator(tr, 4, 8, seed=1)
    a, b_ = it.batch(0, 1), it.batch(0, 1)
    np.testing.assert_array_equal(a["image"], b_["image"])
    assert not np.array_equal(it.batch(1, 1)["image"], a["image"])
    # process shards: the two halves of the global batch
    halves = [data.EpochIterator(tr, 4, 8, seed=1, process_index=p, process_count=2).batch(0, 1) for p in (0, 1)]
    np.testing.assert_array_equal(np.concatenate([h["image"] for h in halves]), a["image"])
    assert list(data.Prefetcher(it.iterate(0)))[1][1]["image"].tobytes() == a["image"].tobytes()
    # pair .npy files, grouped by directory
    for d in range(2):
        (tmp_path / f"exp{d}").mkdir()
        for i in range(2):
            np.save(tmp_path / f"exp{d}" / f"s{i}.npy", np.stack([img[i], cr[i], np.zeros_like(img[i])]))
    pairs = data.from_pair_files(sorted(str(p) for p in tmp_path.glob("*/*.npy")))
    assert len(pairs) == 4 and list(pairs.group) == [0, 0, 1, 1]
    np.save(tmp_path / "bad.npy", img[:4])
    with pytest.raises(ValueError, match=r"pair file must be \(2 or 3, ny, nx\)"):
        data.from_pair_files([str(tmp_path / "bad.npy")])


def test_core_masks_cover_the_bright_pixel(key):
    img, cr = _arrays(8, (32, 32))
    ign = np.zeros_like(cr)
    for i in range(8):
        img[i, 3 + 3 * i, 28 - 3 * i] = 5000 + i
    ds = data.from_arrays(img, cr, ign)
    assert "core" not in data.EpochIterator(ds, 4, 16, seed=2, bright_fraction=1.0).batch(0, 0)
    for reach in (2, 5):
        it = data.EpochIterator(ds, 4, 16, seed=2, bright_fraction=1.0, core_fraction=1.0, core_reach=reach)
        seen, deep = set(), 0
        for e, b in [(e, b) for e in range(8) for b in (0, 1)]:
            batch = it.batch(e, b)
            idx, y0, x0 = it.global_indices(e, b)
            for i, y, x, core in zip(idx, y0, x0, batch["core"]):
                py, px = 3 + 3 * i - y, 28 - 3 * i - x
                assert core[py, px] == 1  # the star's peak is hidden
                ys, xs = np.nonzero(core)
                assert core.sum() == (np.ptp(ys) + 1) * (np.ptp(xs) + 1)  # one block
                d = np.array([py - ys.min(), ys.max() - py, px - xs.min(), xs.max() - px])
                assert d.max() <= reach
                cut = np.array([ys.min() == 0, ys.max() == 15, xs.min() == 0, xs.max() == 15])
                seen.update(int(v) for v in d[~cut])
                deep += bool(np.all(d >= 2))  # hidden >= 2 px deep on every side
            assert batch["core"].tobytes() == it.batch(e, b)["core"].tobytes()  # deterministic
        assert seen == set(range(reach + 1)) and (reach < 5 or deep > 0)  # every reach, each side on its own
    it = data.EpochIterator(ds, 4, 16, seed=2, bright_fraction=1.0, core_fraction=1.0)
    with pytest.raises(ValueError, match="core_reach must be in"):
        data.EpochIterator(ds, 4, 16, seed=2, bright_fraction=1.0, core_fraction=1.0, core_reach=9)
    halves = [data.EpochIterator(ds, 4, 16, seed=2, process_index=p, process_count=2, bright_fraction=1.0,
                                 core_fraction=1.0).batch(3, 0)["core"] for p in (0, 1)]
    np.testing.assert_array_equal(np.concatenate(halves), it.batch(3, 0)["core"])
    with pytest.raises(ValueError, match="core_fraction > 0 needs bright_fraction > 0"):
        data.EpochIterator(ds, 4, 16, seed=2, core_fraction=0.5)
    # the training step adds the block to the inpainting mask, through the same flips as the image
    cfg = get_config("inpaint_2_32.smoke", batch_size=4, crop=16, bright_crops=1.0, core_masks=1.0)
    batch = {k: jnp.asarray(v) for k, v in it.batch(0, 0).items()}
    x, labels = network_input(cfg, batch, key, train=True)
    plain, _ = network_input(cfg, {k: v for k, v in batch.items() if k != "core"}, key, train=True)
    m = np.asarray(labels["inpaint_mask"])
    assert np.all(m >= np.asarray(plain[..., 1])) and m.sum() > np.asarray(plain[..., 1]).sum()
    target = np.asarray(labels["target"])
    for j in range(4):  # the hidden block sits on the stamp's (flipped) star
        assert target[j][m[j] > 0].max() * cfg.scale > 4000  # 5000 e- less at most 0.9 sky
        assert np.all(np.asarray(x[j, ..., 0])[m[j] > 0] == 0)
    assert "weight" not in labels  # core_weight 1 (default): every hidden pixel counts fully
    # core_weight: the pixels only the block hides are weighted down, nothing else moves
    _, lw = network_input(cfg.replace(core_weight=0.25), batch, key, train=True)
    np.testing.assert_array_equal(np.asarray(lw["inpaint_mask"]), m)
    donor = np.asarray(plain[..., 1]) > 0
    w = np.asarray(lw["weight"])
    only_core = (m > 0) & ~donor
    assert only_core.any() and np.all(w[only_core] == 0.25) and np.all(w[~only_core] == 1)


def test_validation_core_blocks_and_their_mse():
    """``val_core_mse``: each validation crop's brightest valid pixel hidden alone, scored as the loss is."""
    from deepcr_jax.training.loop import make_mesh, validate, validation_key

    img, cr = _arrays(6, (24, 24))
    ign = np.zeros_like(cr)
    for i in range(6):
        img[i, 6 + 2 * i, 17 - 2 * i] = 8000 + i
        cr[i, 6 + 2 * i, 17 - 2 * i] = i == 0  # stamp 0: the brightest pixel is a CR: the next one is used
    ds = data.from_arrays(img, cr, ign)
    plain = data.eval_batches(ds, 4, 16)
    assert "core" not in plain[0]
    batches = data.eval_batches(ds, 4, 16, core_reach=3)
    core = np.concatenate([b["core"] for b in batches])
    crops = np.concatenate([b["image"] for b in batches])
    valid = np.concatenate([(b["cr"] == 0) & (b["ignore"] == 0) for b in batches])
    for i in range(8):
        if i >= 6:  # padding: nothing hidden
            assert core[i].sum() == 0
            continue
        peak = np.unravel_index(np.argmax(np.where(valid[i], crops[i], -np.inf)), (16, 16))
        assert core[i][peak] == 1 and (i > 0 or crops[i][peak] < 8000)
        ys, xs = np.nonzero(core[i])
        assert core[i].sum() == (np.ptp(ys) + 1) * (np.ptp(xs) + 1)
        assert max(peak[0] - ys.min(), ys.max() - peak[0], peak[1] - xs.min(), xs.max() - peak[1]) <= 3
    # fixed per stamp, whatever the process split
    halves = [data.eval_batches(ds, 4, 16, p, 2, core_reach=3)[1]["core"] for p in (0, 1)]
    np.testing.assert_array_equal(np.concatenate(halves), batches[1]["core"])
    # the score: the eval-mode network with the block alone hidden, MSE over the block's valid pixels
    cfg = get_config("inpaint_2_32.smoke", batch_size=4, crop=16)
    state, mesh = create_state(cfg, jax.random.key(0)), make_mesh(jax.devices()[:1])
    key = validation_key(jax.random.key(0))
    loss, scores, _ = validate(cfg, state, make_eval_step(cfg, mesh), batches, batches, mesh, key)
    loss0, scores0, _ = validate(cfg, state, make_eval_step(cfg, mesh), plain, plain, mesh, key)
    assert loss == loss0 and "val_core_mse" not in scores0 and scores["val_mse"] == scores0["val_mse"]
    from deepcr_jax.training.state import make_module

    x = crops / cfg.scale
    net = make_module(cfg).apply({"params": state["params"], "batch_stats": state["batch_stats"]},
                                 np.stack([x * (1 - core), core], -1), train=False)[..., 0]
    hidden = (core > 0) & valid
    expected = np.sum((np.asarray(net, np.float64) - x)[hidden] ** 2) / hidden.sum()
    np.testing.assert_allclose(scores["val_core_mse"], expected, rtol=1e-5)


# ---------------------------------------------------------------- BatchNorm phases


def _batch(cfg, seed=0):
    rng = np.random.default_rng(seed)
    b, n = cfg.batch_size, cfg.crop
    return {"image": rng.normal(100, 10, (b, n, n)).astype(np.float32),
            "cr": (rng.random((b, n, n)) < 0.05).astype(np.float32),
            "ignore": np.zeros((b, n, n), np.float32), "sky": np.full((b,), 100.0, np.float32)}


def test_bright_crops_hold_the_brightest_unmasked_pixel():
    img, cr = _arrays(8, (32, 32))
    ign = np.zeros_like(cr)
    for i in range(8):  # a star per stamp, a brighter CR and a brighter ignored pixel elsewhere
        img[i, 3 + 3 * i, 28 - 3 * i] = 5000 + i
        img[i, 1, 1], cr[i, 1, 1] = 9000, True
        img[i, 30, 30], ign[i, 30, 30] = 9000, True
    ds = data.from_arrays(img, cr, ign)
    plain = data.EpochIterator(ds, 4, 16, seed=2)
    off = data.EpochIterator(ds, 4, 16, seed=2, bright_fraction=0.0)
    on = data.EpochIterator(ds, 4, 16, seed=2, bright_fraction=1.0)
    for e, b in [(0, 0), (0, 1), (3, 1)]:
        assert off.batch(e, b)["image"].tobytes() == plain.batch(e, b)["image"].tobytes()  # 0 = the paper's crops
        idx, y0, x0 = on.global_indices(e, b)
        for i, y, x in zip(idx, y0, x0):
            py, px = 3 + 3 * i, 28 - 3 * i
            # the star lies in the crop's central half where the stamp's edges allow it
            (ylo, yhi), (xlo, xhi) = np.clip([py - 12, py - 4], 0, 16), np.clip([px - 12, px - 4], 0, 16)
            assert ylo <= y <= yhi and xlo <= x <= xhi
        assert on.batch(e, b)["image"].max(axis=(1, 2)).min() >= 5000
    half = data.EpochIterator(ds, 4, 16, seed=2, bright_fraction=0.5)
    moved = np.mean([np.any(np.stack(half.global_indices(e, 0)[1:]) != np.stack(plain.global_indices(e, 0)[1:]), axis=0)
                     for e in range(50)])
    assert 0.3 < moved < 0.6  # about half the crops are placed (a placed crop may land where the uniform one did)
    with pytest.raises(ValueError, match=r"bright_fraction must be in \[0, 1\]; got 1.5"):
        data.EpochIterator(ds, 4, 16, seed=2, bright_fraction=1.5)



def test_bright_peaks_spread_crops_over_the_brightest_maxima():
    img, cr = _arrays(8, (32, 32))
    ign = np.zeros_like(cr)
    stars = [(6, 6, 9000), (24, 22, 7000), (8, 25, 5000)]  # the third is the third-brightest maximum
    for y, x, v in stars:
        img[:, y, x] = v
        cr[:, y, x] = False
    img[:, 6, 7] = 8500  # beside the first: brighter than the others, but no local maximum
    img[:, 1, 1], cr[:, 1, 1] = 9900, True  # a CR: never a peak
    ds = data.from_arrays(img, cr, ign)
    one = data.EpochIterator(ds, 4, 16, seed=2, bright_fraction=1.0, core_fraction=1.0)
    same = data.EpochIterator(ds, 4, 16, seed=2, bright_fraction=1.0, core_fraction=1.0, bright_peaks=1)
    three = data.EpochIterator(ds, 4, 16, seed=2, bright_fraction=1.0, core_fraction=1.0, bright_peaks=3)
    hits = {v: 0 for *_, v in stars}
    for e, b in [(e, b) for e in range(10) for b in (0, 1)]:
        assert same.batch(e, b)["core"].tobytes() == one.batch(e, b)["core"].tobytes()  # 1 = the default
        batch = three.batch(e, b)
        _, y0, x0 = three.global_indices(e, b)
        for core, y, x in zip(batch["core"], y0, x0):
            on = [v for sy, sx, v in stars if 0 <= sy - y < 16 and 0 <= sx - x < 16 and core[sy - y, sx - x]]
            assert len(on) >= 1  # the block hides one of the three stars
            hits[on[0]] += 1
        assert batch["core"].tobytes() == three.batch(e, b)["core"].tobytes()  # deterministic
    assert min(hits.values()) > 10, hits  # all three, about a third each of 80 crops
    with pytest.raises(ValueError, match="bright_peaks must be >= 1"):
        data.EpochIterator(ds, 4, 16, seed=2, bright_fraction=1.0, bright_peaks=0)
    with pytest.raises(ValueError, match="bright_peaks must be >= 1"):
        get_config("inpaint_2_32.smoke", bright_peaks=0)


def test_cr_shaped_cores_are_other_stamps_crs_on_the_peak():
    img, cr = _arrays(8, (32, 32))
    cr &= np.random.default_rng(1).random(cr.shape) < 0.3  # sparser CRs
    for i in range(8):
        img[i, 3 + 3 * i, 28 - 3 * i] = 5000 + i
        cr[i, 3 + 3 * i, 28 - 3 * i] = False
    ds = data.from_arrays(img, cr, np.zeros_like(cr))
    it = data.EpochIterator(ds, 4, 16, seed=2, bright_fraction=1.0, core_fraction=1.0, core_shape="cr")
    pad = np.pad(cr, ((0, 0), (16, 16), (16, 16)))
    for e, b in [(0, 0), (1, 1), (4, 0)]:
        batch = it.batch(e, b)
        idx, y0, x0 = it.global_indices(e, b)
        for i, y, x, core in zip(idx, y0, x0, batch["core"]):
            py, px = 3 + 3 * i - y, 28 - 3 * i - x
            assert core[py, px] == 1  # the peak is hidden
            # the mask is another stamp's whole CR mask, shifted so one of its CR pixels is the peak
            found = any(np.array_equal(core > 0, pad[j, 16 + sy - py:32 + sy - py, 16 + sx - px:32 + sx - px])
                        for j in range(8) if j != i for sy, sx in zip(*np.nonzero(cr[j])))
            assert found
        assert batch["core"].tobytes() == it.batch(e, b)["core"].tobytes()
    block = data.EpochIterator(ds, 4, 16, seed=2, bright_fraction=1.0, core_fraction=1.0).batch(0, 0)["core"]
    assert not np.array_equal(block, it.batch(0, 0)["core"])
    with pytest.raises(ValueError, match="core_shape must be 'block' or 'cr'"):
        data.EpochIterator(ds, 4, 16, seed=2, bright_fraction=1.0, core_fraction=1.0, core_shape="disc")
    with pytest.raises(ValueError, match="core_shape must be one of"):
        get_config("inpaint_2_32.smoke", core_shape="disc")

def test_bn_phase_switch(key):
    cfg = get_config("mask_2_4.smoke")
    state = create_state(cfg, key)
    batch = _batch(cfg)
    st1, _m1 = make_train_step(cfg)(jax.tree.map(jnp.copy, state), batch, key)
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), st1["batch_stats"], state["batch_stats"])
    assert max(jax.tree.leaves(moved)) > 0  # phase 1 updates the running statistics
    stats = jax.tree.map(np.asarray, st1["batch_stats"])
    st2, _m2 = make_train_step(cfg, bn_frozen=True)(st1, batch, key)
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, st2["batch_stats"]), stats)
    assert int(st2["step"]) == 2
    # phase 2's loss is the eval-mode (running statistics) loss of the same augmented batch
    cfg_plain = cfg.replace(sky_aug_min=0.0, sky_aug_max=0.0, flips=False)
    st3 = jax.tree.map(jnp.copy, st2)
    ev = make_eval_step(cfg_plain)(st3, batch, key)
    _, m3 = make_train_step(cfg_plain, bn_frozen=True)(st3, batch, key)
    np.testing.assert_allclose(float(m3["loss"]), float(ev["loss_sum"] / ev["count"]), rtol=1e-6)


def test_bfloat16_compute(key):
    """compute_dtype="bfloat16": inner convolutions in bf16, weights/statistics/loss f32, close to float32."""
    cfg = get_config("inpaint_2_32.smoke", batch_size=4, crop=32, hidden=16, kernels="xla")
    bf = cfg.replace(compute_dtype="bfloat16")
    state = create_state(cfg, key)
    batch = {k: jnp.asarray(v) for k, v in _batch(cfg).items()}
    f32_state, m32 = make_train_step(cfg)(jax.tree.map(jnp.copy, state), batch, key)
    bf_state, mbf = make_train_step(bf)(jax.tree.map(jnp.copy, state), batch, key)
    np.testing.assert_allclose(float(mbf["loss"]), float(m32["loss"]), rtol=0.05)
    assert abs(float(mbf["grad_norm"]) / float(m32["grad_norm"]) - 1) < 0.1
    for tree in (bf_state["params"], bf_state["batch_stats"]):
        assert {a.dtype for a in jax.tree.leaves(tree)} == {jnp.dtype(jnp.float32)}
    moved32 = jax.tree.map(lambda a, b: np.asarray(a - b).ravel(), f32_state["params"], state["params"])
    movedbf = jax.tree.map(lambda a, b: np.asarray(a - b).ravel(), bf_state["params"], state["params"])
    u, v = np.concatenate(jax.tree.leaves(moved32)), np.concatenate(jax.tree.leaves(movedbf))
    assert u @ v / np.linalg.norm(u) / np.linalg.norm(v) > 0.9  # the same update, up to bf16 rounding
    # the convolutions after the first block really run in bf16; in float32 none does
    from deepcr_jax.training.state import make_module

    x = jnp.zeros((2, 32, 32, 2))
    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    for c, n_bf16 in ((cfg, 0), (bf, 1)):
        jaxpr = str(jax.make_jaxpr(lambda v, c=c: make_module(c).apply(v, x, train=True, mutable=["batch_stats"]))(
            variables))
        assert (jaxpr.count("conv_general_dilated") and "bf16[2,16,16,32]" in jaxpr) == bool(n_bf16)
    with pytest.raises(ValueError, match="kernels='native' computes in float32"):
        get_config("mask_2_4.smoke", compute_dtype="bfloat16", kernels="native")
    with pytest.raises(ValueError, match="compute_dtype"):
        get_config("mask_2_4.smoke", compute_dtype="float16")


def test_weight_norm_trains(key):
    cfg = get_config("mask_2_4.smoke", norm="weight")
    state = create_state(cfg, key)
    assert state["batch_stats"] == {}
    step = make_train_step(cfg)
    batch = _batch(cfg)
    p0 = jax.tree.map(np.asarray, state["params"])
    state, m = step(state, batch, key)
    assert np.isfinite(float(m["loss"]))
    assert any(not np.array_equal(a, np.asarray(b)) for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves(state["params"])))
