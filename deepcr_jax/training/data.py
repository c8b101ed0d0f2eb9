"""Training data: sources, validation, the split by group, the epoch iterator, prefetch.

A :class:`Dataset` is a stack of stamps held in host memory: ``image`` (n, ny, nx)
float32 in the data's units (electrons for ACS ``_flc``), ``cr`` and
``ignore`` (n, ny, nx) bool (True = cosmic ray / pixel excluded from the loss),
``sky`` (n,) float32 (sky level in the image's units, for the sky
augmentation) and ``group`` (n,) int (the field or exposure each stamp comes
from: the train/validation split never separates one group).

Sources: arrays (:func:`from_arrays`), deepCR's "pair" ``.npy`` files
(:func:`from_pair_files`), FITS stamps (:func:`from_fits`), ``.npz`` datasets
written by :func:`deepcr_jax.simulate.save_dataset`, and the simulator
(:func:`from_simulator`). :func:`load_source` picks one from the config.

:class:`EpochIterator` yields batches in a deterministic order: epoch ``e``
permutes the training stamps with a generator seeded by ``(seed, e)``; the
random crop of batch ``b`` comes from ``(seed, e, b)`` (and, with
``bright_fraction > 0``, the choice of crops placed around each stamp's
brightest pixel from ``(seed, 5, e, b)``; with ``core_fraction > 0``, the
blocks that hide those pixels from ``(seed, 6, e, b)``; with ``bright_peaks > 1``,
which of the stamp's brightest peaks a placed crop centres on from
``(seed, 7, e, b)``). Its position
``(epoch, batch)`` is all a checkpoint needs to resume exactly. Each process
gets its own contiguous slice of every global batch.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from deepcr_jax.simulate import load_dataset, make_stamps
from deepcr_jax.training.config import TrainConfig
from deepcr_jax.training.prefetch import Prefetcher

__all__ = [
    "Dataset",
    "EpochIterator",
    "Prefetcher",
    "eval_batches",
    "from_arrays",
    "from_fits",
    "from_pair_files",
    "from_simulator",
    "load_files",
    "load_source",
    "split_by_group",
    "to_fits",
]


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Validated stamps in host memory (see the module docstring for the fields).

    ``provenance`` is a short text recorded in checkpoints and exports.
    ``n_bad_pixels`` counts NaN/inf pixels that were ignored and filled.
    """

    image: np.ndarray
    cr: np.ndarray
    ignore: np.ndarray
    sky: np.ndarray
    group: np.ndarray
    provenance: str = ""
    n_bad_pixels: int = 0

    def __len__(self) -> int:
        return int(self.image.shape[0])

    def sha256(self) -> str:
        """Digest of the stamps (every array's shape, type and bits, in order; not the provenance).

        A resumed run checks it against the one its checkpoint recorded, so
        a data folder that changed in between (files added, removed or
        rewritten) is refused instead of silently mixed into the run.
        """
        h = hashlib.sha256()
        for a in (self.image, self.cr, self.ignore, self.sky, self.group):
            a = np.ascontiguousarray(a)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(memoryview(a).cast("B"))
        return h.hexdigest()

    def subset(self, idx: np.ndarray) -> Dataset:
        """The stamps ``idx`` (same provenance)."""
        return Dataset(self.image[idx], self.cr[idx], self.ignore[idx], self.sky[idx], self.group[idx],
                       self.provenance, self.n_bad_pixels)


def _as_mask(name: str, m, shape: tuple[int, ...]) -> np.ndarray:
    m = np.asarray(m)
    if m.shape != shape:
        raise ValueError(f"{name} must have the image's shape {shape}; got {m.shape}")
    if m.dtype != bool:
        if not np.issubdtype(m.dtype, np.number):
            raise ValueError(f"{name} must be boolean or 0/1 numbers; got dtype {m.dtype}")
        bad = ~np.isin(m, (0, 1))
        if bad.any():
            vals = np.unique(m[bad])[:5]
            raise ValueError(f"{name} must contain only 0 and 1 (True = set); found values {vals.tolist()}")
        m = m.astype(bool)
    return m


def from_arrays(image, cr, ignore=None, sky=None, group=None, *, provenance: str = "arrays") -> Dataset:
    """Validate in-memory stamps into a :class:`Dataset`.

    Parameters
    ----------
    image : array_like, shape (n, ny, nx) or (ny, nx)
        Images in the data's units (electrons for ACS ``_flc``). NaN/inf
        pixels become ignored and are filled with the stamp's median of the
        finite pixels (the network never sees them).
    cr : array_like of bool or 0/1, same shape
        Cosmic-ray truth, True = cosmic ray.
    ignore : array_like of bool or 0/1, same shape, optional
        True = pixel excluded from the loss (e.g. saturated). Default none.
    sky : array_like, shape (n,), optional
        Sky level per stamp (image units); default the median of each stamp.
    group : array_like of int, shape (n,), optional
        Field/exposure id per stamp for the train/validation split; default
        every stamp its own group.

    Returns
    -------
    Dataset
        float32 images, bool masks (the caller's arrays are not modified).
    """
    img = np.array(image, dtype=np.float32, copy=True)
    if img.ndim == 2:
        img = img[None]
    if img.ndim != 3:
        raise ValueError(f"image must be (n, ny, nx) or (ny, nx); got shape {np.shape(image)}")
    n = img.shape[0]
    if n == 0:
        raise ValueError("image holds no stamps (n = 0): the dataset is empty")
    cr_m = _as_mask("cr", np.reshape(cr, img.shape) if np.ndim(cr) == 2 and n == 1 else cr, img.shape)
    ign = np.zeros(img.shape, bool) if ignore is None else _as_mask(
        "ignore", np.reshape(ignore, img.shape) if np.ndim(ignore) == 2 and n == 1 else ignore, img.shape
    )
    bad = ~np.isfinite(img)
    n_bad = int(bad.sum())
    if n_bad:
        ign = ign | bad
        for i in np.flatnonzero(bad.any(axis=(1, 2))):
            good = img[i][~bad[i]]
            img[i][bad[i]] = np.median(good) if good.size else 0.0
    if sky is None:
        sky_a = np.median(img, axis=(1, 2)).astype(np.float32)
    else:
        sky_a = np.asarray(sky, np.float32).reshape(-1)
        if sky_a.shape != (n,):
            raise ValueError(f"sky must have one value per stamp, shape ({n},); got {np.shape(sky)}")
        if not np.all(np.isfinite(sky_a)):
            raise ValueError("sky must be finite")
    grp = np.arange(n) if group is None else np.asarray(group).reshape(-1)
    if grp.shape != (n,):
        raise ValueError(f"group must have one id per stamp, shape ({n},); got {np.shape(group)}")
    _, grp = np.unique(grp, return_inverse=True)
    return Dataset(img, cr_m, ign, sky_a, grp.astype(np.int64), provenance, n_bad)


def from_pair_files(paths: Sequence[str], sky=None, *, group_by: str = "dir") -> Dataset:
    """deepCR's "pair" ``.npy`` stamps: arrays (2 or 3, ny, nx) = image, CR mask[, ignore].

    ``sky``: one value per file, or None (the median of each image).
    ``group_by``: ``"dir"`` (stamps in one directory come from one exposure,
    deepCR's layout) or ``"file"``.
    """
    paths = sorted(paths)
    if not paths:
        raise ValueError("no .npy pair files given: the dataset is empty")
    imgs, crs, igns, groups = [], [], [], []
    for p in paths:
        a = np.load(p, allow_pickle=False)
        if a.ndim != 3 or a.shape[0] not in (2, 3):
            raise ValueError(f"{p}: a pair file must be (2 or 3, ny, nx) = image, CR mask[, ignore]; got {a.shape}")
        imgs.append(a[0])
        crs.append(a[1])
        igns.append(a[2] if a.shape[0] == 3 else np.zeros_like(a[0]))
        groups.append(os.path.dirname(os.path.abspath(p)) if group_by == "dir" else p)
    shapes = {i.shape for i in imgs}
    if len(shapes) != 1:
        raise ValueError(f"pair files must all have one stamp shape; got {sorted(shapes)}")
    return from_arrays(np.stack(imgs), np.stack(crs), np.stack(igns), sky, groups,
                       provenance=f"{len(paths)} deepCR pair .npy files ({os.path.dirname(paths[0]) or '.'})")


def from_fits(paths: Sequence[str]) -> Dataset:
    """FITS stamps: the first image HDU holds the image(s), HDU ``CRMASK`` the CR mask,
    optional HDU ``IGNORE`` the ignore mask; each may be (ny, nx) or (n, ny, nx).
    The sky level: an HDU ``SKY`` of one value per stamp (as :func:`to_fits`
    writes), else a header keyword ``SKY`` (first HDU), else the median.
    One file = one group (one exposure, or one field's stamps as :func:`to_fits`
    writes them).
    """
    from astropy.io import fits

    paths = sorted(paths)
    if not paths:
        raise ValueError("no FITS files given: the dataset is empty")
    imgs, crs, igns, skies, groups = [], [], [], [], []
    for gi, p in enumerate(paths):
        with fits.open(p) as hdul:
            first = next((h for h in hdul if h.data is not None and h.data.ndim in (2, 3)), None)
            if first is None or "CRMASK" not in hdul:
                raise ValueError(f"{p}: a FITS stamp needs an image HDU and a CRMASK HDU")
            img = np.asarray(first.data, np.float32)
            img = img[None] if img.ndim == 2 else img
            cr = np.asarray(hdul["CRMASK"].data).reshape(img.shape) if hdul["CRMASK"].data.size == img.size else None
            if cr is None:
                raise ValueError(f"{p}: CRMASK shape {hdul['CRMASK'].data.shape} does not match image {img.shape}")
            ign = np.asarray(hdul["IGNORE"].data).reshape(img.shape) if "IGNORE" in hdul else np.zeros(img.shape)
            if "SKY" in hdul:
                sky = np.asarray(hdul["SKY"].data, np.float64).ravel()
                if sky.shape != (len(img),):
                    raise ValueError(f"{p}: SKY holds {sky.size} values for {len(img)} stamps")
            else:
                sky = first.header.get("SKY")
                sky = np.full(len(img), np.nan if sky is None else float(sky))
        imgs.append(img)
        crs.append(cr)
        igns.append(ign)
        skies += sky.tolist()
        groups += [gi] * len(img)
    image = np.concatenate(imgs)
    sky_a = np.asarray(skies, np.float32)
    ds = from_arrays(image, np.concatenate(crs), np.concatenate(igns), None, groups,
                     provenance=f"{len(paths)} FITS stamp files")
    sky_a = np.where(np.isnan(sky_a), ds.sky, sky_a).astype(np.float32)
    return dataclasses.replace(ds, sky=sky_a)


def to_fits(path: str | os.PathLike, image, cr, ignore, sky, *, cards: Sequence[tuple[str, Any, str]] = (),
            history: Sequence[str] = (), overwrite: bool = False) -> None:
    """Write stamps as one FITS file that :func:`from_fits` (and ``train data=...``) reads back.

    Parameters
    ----------
    path : path-like
        Output file, written atomically; an existing one is an error
        (:class:`FileExistsError`) unless ``overwrite``.
    image : array_like, (n, ny, nx)
        Stamps in the data's units (electrons): the primary HDU (float32).
    cr, ignore : array_like of bool, (n, ny, nx)
        HDUs ``CRMASK`` and ``IGNORE`` (uint8, 1 = cosmic ray / ignored).
    sky : array_like, (n,)
        HDU ``SKY``: each stamp's sky level in the image's units.
    cards : sequence of (keyword, value, comment)
        Extra primary-header keywords (e.g. how the stamps were made).
    history : sequence of str
        ``HISTORY`` lines (e.g. the source files).
    """
    from astropy.io import fits

    from deepcr_jax.fits import write_hdulist

    image = np.asarray(image, np.float32)
    if image.ndim != 3:
        raise ValueError(f"image must be (n, ny, nx); got shape {image.shape}")
    cr, ignore = (_as_mask(name, m, image.shape) for name, m in (("cr", cr), ("ignore", ignore)))
    sky = np.asarray(sky, np.float32)
    if sky.shape != image.shape[:1]:
        raise ValueError(f"sky must hold one value per stamp ({image.shape[0]}); got shape {sky.shape}")
    primary = fits.PrimaryHDU(image)
    primary.header["BUNIT"] = ("ELECTRONS", "stamp pixel units")
    for key, value, comment in cards:
        primary.header[key] = (value, comment)
    for line in history:
        primary.header.add_history(line)
    hdus = [primary, fits.ImageHDU(cr.astype(np.uint8), name="CRMASK"),
            fits.ImageHDU(ignore.astype(np.uint8), name="IGNORE"), fits.ImageHDU(sky, name="SKY")]
    write_hdulist(fits.HDUList(hdus), path, overwrite=overwrite)


def from_simulator(n: int, *, seed: int, shape: int = 256, field: str = "mixed") -> Dataset:
    """``n`` simulated ACS/WFC F606W stamps (e-), deterministic from ``seed``.

    Every stamp is an independent simulated exposure, so each is its own group.
    """
    b = make_stamps(n, field, seed=seed, shape=(shape, shape))
    return from_arrays(b.image, b.cr_mask, b.ignore, b.sky, np.arange(n),
                       provenance=f"deepcr_jax.simulate.make_stamps(n={n}, field={field!r}, seed={seed}, "
                                  f"shape=({shape}, {shape})): simulated HST ACS/WFC F606W")


def load_source(config: TrainConfig) -> Dataset:
    """The dataset named by ``config.data`` (``"simulate"`` or a path / glob)."""
    if config.data == "simulate":
        return from_simulator(config.sim_n, seed=config.seed, shape=config.sim_shape, field=config.sim_field)
    return load_files([config.data])  # anything but "simulate" names files


def load_files(specs: Sequence[str]) -> Dataset:
    """Stamps from files: each spec a file, a directory (its files) or a glob.

    The files must be of one kind: deepCR ``.npy`` pairs (:func:`from_pair_files`),
    FITS stamps (:func:`from_fits`) or simulated ``.npz`` datasets.
    """
    paths: list[str] = []
    for spec in specs:
        if os.path.isfile(spec):  # as named (a file name may hold glob characters)
            found = [spec]
        else:
            found = sorted(glob.glob(os.path.join(spec, "*"))) if os.path.isdir(spec) else sorted(glob.glob(spec))
        if not found:
            raise ValueError(f"data {spec!r} matches no files (expected a file, a directory or a glob)")
        paths += [p for p in found if p not in paths]
    exts = {os.path.splitext(p)[1].lower() for p in paths}
    what = specs[0] if len(specs) == 1 else list(specs)
    if exts == {".npy"}:
        return from_pair_files(paths)
    if exts <= {".fits", ".fit", ".fz"}:
        return from_fits(paths)
    if exts == {".npz"}:
        parts = [load_dataset(p) for p in paths]
        groups = np.concatenate([np.full(len(b), i) * 100000 + np.arange(len(b)) for i, b in enumerate(parts)])
        return from_arrays(np.concatenate([b.image for b in parts]), np.concatenate([b.cr_mask for b in parts]),
                           np.concatenate([b.ignore for b in parts]), np.concatenate([b.sky for b in parts]),
                           groups, provenance=f"{len(paths)} simulated .npz datasets")
    raise ValueError(f"data {what!r}: files must be all .npy pairs, all FITS or all .npz; got {sorted(exts)}")


def split_by_group(ds: Dataset, val_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Train/validation split by group (field/exposure), never by stamp.

    The groups are permuted with a generator seeded by ``(seed, 1)``; the
    first ``max(1, round(val_fraction * n_groups))`` form the validation set.
    """
    groups = np.unique(ds.group)
    if len(groups) < 2:
        raise ValueError(f"the dataset has {len(groups)} group(s); a train/validation split by group needs >= 2")
    perm = np.random.default_rng([seed, 1]).permutation(groups)
    n_val = min(max(1, round(val_fraction * len(groups))), len(groups) - 1)
    is_val = np.isin(ds.group, perm[:n_val])
    return ds.subset(np.flatnonzero(~is_val)), ds.subset(np.flatnonzero(is_val))


def _check_sizes(ds: Dataset, batch_size: int, crop: int, what: str) -> None:
    if len(ds) == 0:
        raise ValueError(f"the {what} set is empty")
    ny, nx = ds.image.shape[1:]
    if min(ny, nx) < crop:
        raise ValueError(f"stamps of the {what} set ({ny}x{nx}) are smaller than crop ({crop}): too small")
    if batch_size > len(ds):
        raise ValueError(f"batch_size ({batch_size}) is larger than the {what} set ({len(ds)} stamps)")


def _local_slice(batch_size: int, process_index: int, process_count: int) -> slice:
    if batch_size % process_count:
        raise ValueError(f"batch_size ({batch_size}) must be divisible by the process count ({process_count})")
    per = batch_size // process_count
    return slice(process_index * per, (process_index + 1) * per)


def _gather(ds: Dataset, idx: np.ndarray, y0: np.ndarray, x0: np.ndarray, crop: int) -> dict[str, np.ndarray]:
    def cut(a):
        return np.stack([a[i, y:y + crop, x:x + crop] for i, y, x in zip(idx, y0, x0)])

    return {"image": cut(ds.image), "cr": cut(ds.cr).astype(np.float32),
            "ignore": cut(ds.ignore).astype(np.float32), "sky": ds.sky[idx].astype(np.float32)}


class EpochIterator:
    """Deterministic batches of random crops; position ``(epoch, batch)``.

    Parameters
    ----------
    ds : Dataset
        Training stamps.
    batch_size : int
        Global batch size; the last incomplete batch of an epoch is dropped.
    crop : int
        Crop side (px).
    seed : int
        Seeds the order (``(seed, epoch)``) and crops (``(seed, epoch, batch)``).
    process_index, process_count : int
        This process's slice of every global batch (``jax.process_index()``, ``jax.process_count()``).
    bright_fraction : float
        Probability that a crop is placed around its stamp's brightest pixel
        that is neither a CR nor ignored (the pixel falls uniformly in the
        crop's central half) instead of uniformly: bright source cores are a
        few pixels per stamp, yet dominate the inpainting error when a CR
        covers one. 0 (default) draws every crop uniformly.
    core_fraction : float
        Probability that a bright-placed crop also carries a ``core`` mask
        (B, crop, crop) float32: a block over the bright pixel, for the
        training step to add to the inpainting mask (so the network learns
        to predict masked source cores, which random CR masks rarely hit).
        0 (default): no ``core`` key in the batches. Needs
        ``bright_fraction > 0``.
    core_reach : int
        Largest distance (px) from the peak to each edge of a core block:
        the four distances are independent and uniform in ``0..core_reach``,
        so blocks run from the peak alone to ``(2 core_reach + 1)`` px
        square, often with wings in view on one side only, as when a large
        CR covers a star (a block with sides uniform in ``1..N`` and the peak
        anywhere inside hides the core >= 2 px deep on every side in only 5 %
        of draws at N = 9; this way, ``((N - 1) / (N + 1))**4``: 13 % at N = 4).
    bright_peaks : int
        A bright-placed crop centres on one of its stamp's ``bright_peaks``
        brightest local maxima (pixels >= their 8 neighbours, neither CR
        nor ignored), chosen uniformly; its core block hides that peak.
        1 (default): the brightest pixel. More peaks show the network more
        distinct source cores from the same stamps (a stamp with fewer
        local maxima repeats its brightest).
    core_shape : {"block", "cr"}
        ``"block"`` (default): the rectangles of ``core_reach``. ``"cr"``:
        the whole CR mask of another stamp (drawn uniformly), shifted so
        that one of its CR pixels (drawn uniformly, so large CRs more often)
        lies on the peak: the shapes of the borrowed masks that hide cores
        at evaluation (drawn from ``(seed, 8, e, b)``; a donor without CRs
        hides the peak pixel alone).
    """

    def __init__(self, ds: Dataset, batch_size: int, crop: int, seed: int,
                 process_index: int = 0, process_count: int = 1, bright_fraction: float = 0.0,
                 core_fraction: float = 0.0, core_reach: int = 4, bright_peaks: int = 1,
                 core_shape: str = "block"):
        _check_sizes(ds, batch_size, crop, "training")
        if core_shape not in ("block", "cr"):
            raise ValueError(f"core_shape must be 'block' or 'cr'; got {core_shape!r}")
        if core_shape == "cr" and core_fraction > 0 and len(ds) < 2:
            raise ValueError("core_shape='cr' needs at least 2 training stamps (it borrows another stamp's CRs)")
        if bright_peaks < 1:
            raise ValueError(f"bright_peaks must be >= 1; got {bright_peaks}")
        if not 1 <= core_reach <= crop // 2:
            raise ValueError(f"core_reach must be in [1, crop // 2 = {crop // 2}]; got {core_reach}")
        for name, v in (("bright_fraction", bright_fraction), ("core_fraction", core_fraction)):
            if not 0 <= v <= 1:
                raise ValueError(f"{name} must be in [0, 1]; got {v}")
        if core_fraction > 0 and bright_fraction == 0:
            raise ValueError("core_fraction > 0 needs bright_fraction > 0 (core masks cover the bright crops' peaks)")
        self.ds, self.batch_size, self.crop, self.seed = ds, batch_size, crop, seed
        self.bright_fraction, self.core_fraction = float(bright_fraction), float(core_fraction)
        self.core_reach = int(core_reach)
        self.local = _local_slice(batch_size, process_index, process_count)
        self.steps_per_epoch = len(ds) // batch_size
        self.bright_peaks, self.core_shape = int(bright_peaks), core_shape
        self._peaks = _brightest_peaks(ds, self.bright_peaks) if bright_fraction > 0 else None

    def global_indices(self, epoch: int, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Stamp indices and crop origins (y0, x0) of global batch ``batch`` of ``epoch``."""
        return self._placement(epoch, batch)[:3]

    def _placement(self, epoch: int, batch: int) -> tuple[np.ndarray, ...]:
        """``global_indices``, the (B,) bool of crops placed around a peak of their stamp, its (B, 2) (y, x)."""
        perm = np.random.default_rng([self.seed, 2, epoch]).permutation(len(self.ds))
        idx = perm[batch * self.batch_size:(batch + 1) * self.batch_size]
        ny, nx = self.ds.image.shape[1:]
        rng = np.random.default_rng([self.seed, 3, epoch, batch])
        y0 = rng.integers(0, ny - self.crop + 1, self.batch_size)
        x0 = rng.integers(0, nx - self.crop + 1, self.batch_size)
        bright = np.zeros(self.batch_size, bool)
        peak = np.zeros((self.batch_size, 2), np.int64)
        if self._peaks is not None:
            brng = np.random.default_rng([self.seed, 5, epoch, batch])
            bright = brng.random(self.batch_size) < self.bright_fraction
            which = np.zeros(self.batch_size, np.int64)
            if self.bright_peaks > 1:
                which = np.random.default_rng([self.seed, 7, epoch, batch]).integers(0, self.bright_peaks,
                                                                                     self.batch_size)
            peak = self._peaks[idx, which]
            quarter = self.crop // 4
            for axis, (origin, size) in enumerate(((y0, ny), (x0, nx))):
                centred = peak[:, axis] - quarter - brng.integers(0, 2 * quarter + 1, self.batch_size)
                origin[bright] = np.clip(centred, 0, size - self.crop)[bright]
        return idx, y0, x0, bright, peak

    def batch(self, epoch: int, batch: int) -> dict[str, np.ndarray]:
        """This process's part of global batch ``batch`` of ``epoch`` (dict of numpy arrays)."""
        placed = self._placement(epoch, batch)
        idx, y0, x0 = (a[self.local] for a in placed[:3])
        out = _gather(self.ds, idx, y0, x0, self.crop)
        if self.core_fraction > 0:
            out["core"] = self._core_masks(epoch, batch, *placed)[self.local]
        return out

    def _core_masks(self, epoch: int, batch: int, idx: np.ndarray, y0: np.ndarray, x0: np.ndarray,
                    bright: np.ndarray, peak: np.ndarray) -> np.ndarray:
        """(B, crop, crop) float32 blocks over the peaks of a ``core_fraction`` of the bright crops."""
        rng = np.random.default_rng([self.seed, 6, epoch, batch])
        b = self.batch_size
        use = bright & (rng.random(b) < self.core_fraction)
        if self.core_shape == "cr":
            return self._cr_cores(np.random.default_rng([self.seed, 8, epoch, batch]), use, idx, y0, x0, peak)
        up, down, left, right = rng.integers(0, self.core_reach + 1, (4, b))  # the peak's distance to each edge
        out = np.zeros((b, self.crop, self.crop), np.float32)
        for i in np.flatnonzero(use):
            _paint_block(out[i], peak[i, 0] - y0[i], peak[i, 1] - x0[i], up[i], down[i], left[i], right[i])
        return out

    def _cr_cores(self, rng: np.random.Generator, use: np.ndarray, idx: np.ndarray,
                  y0: np.ndarray, x0: np.ndarray, peak: np.ndarray) -> np.ndarray:
        """``core_shape="cr"``: other stamps' CR masks, shifted so a CR pixel covers each used crop's peak."""
        b, c = len(use), self.crop
        out = np.zeros((b, c, c), np.float32)
        donors = rng.integers(0, len(self.ds) - 1, b)
        donors += donors >= idx  # another stamp
        picks = rng.random(b)
        for i in np.flatnonzero(use):
            ys, xs = np.nonzero(self.ds.cr[donors[i]])
            if not len(ys):
                out[i, peak[i, 0] - y0[i], peak[i, 1] - x0[i]] = 1.0
                continue
            j = int(picks[i] * len(ys))
            # crop pixel (r, q) <- donor pixel (r + y0 - dy, q + x0 - dx), with (dy, dx) the donor-to-peak shift
            oy, ox = y0[i] - (peak[i, 0] - ys[j]), x0[i] - (peak[i, 1] - xs[j])
            padded = np.pad(self.ds.cr[donors[i]], c)
            out[i] = padded[oy + c:oy + 2 * c, ox + c:ox + 2 * c]
        return out

    def iterate(self, epoch: int, start: int = 0) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """``(batch_index, batch)`` for the batches ``start, start+1, ...`` of ``epoch``."""
        for b in range(start, self.steps_per_epoch):
            yield b, self.batch(epoch, b)


def _brightest_peaks(ds: Dataset, k: int) -> np.ndarray:
    """(n, k, 2) int: (y, x) of each stamp's ``k`` brightest pixels that are neither CR nor ignored.

    With ``k == 1`` the brightest such pixel; with more, the brightest local
    maxima (>= each of the 8 neighbours; outside the stamp counts as lower),
    brightest first, the list filled up with the first where a stamp has fewer.
    """
    valid = np.where(ds.cr | ds.ignore, -np.inf, ds.image)
    n, ny, nx = valid.shape
    if k == 1:
        first = np.argmax(valid.reshape(n, -1), axis=1)
        return np.stack(np.unravel_index(first, (ny, nx)), axis=-1)[:, None]
    pad = np.pad(valid, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    neighbours = np.full_like(valid, -np.inf)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                np.maximum(neighbours, pad[:, 1 + dy:1 + dy + ny, 1 + dx:1 + dx + nx], out=neighbours)
    flat = np.where(valid >= neighbours, valid, -np.inf).reshape(n, -1)
    top = np.argpartition(-flat, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(top, np.argsort(-np.take_along_axis(flat, top, axis=1), axis=1, kind="stable"), axis=1)
    found = np.take_along_axis(flat, order, axis=1) > -np.inf
    order = np.where(found | ~found.any(axis=1, keepdims=True), order, order[:, :1])
    return np.stack(np.unravel_index(order, (ny, nx)), axis=-1)


def eval_batches(ds: Dataset, batch_size: int, crop: int, process_index: int = 0,
                 process_count: int = 1, core_reach: int = 0) -> list[dict[str, np.ndarray]]:
    """The validation set as fixed-shape batches (this process's slices).

    Each stamp's centre ``crop`` × ``crop`` is used; the last batch is padded
    with copies of stamp 0 whose ``weight`` is 0 (and ``ignore`` 1, so
    they add nothing to any sum). Keys as the training batches plus
    ``weight`` (B,) float32. With ``core_reach`` > 0, also ``core`` (B,
    crop, crop) float32: a block over each crop's brightest pixel that is
    neither a CR nor ignored, reaching 0..``core_reach`` px from it on each
    side (fixed per stamp index), which the validation hides alone to score
    hidden source cores (``val_core_mse``).
    """
    _check_sizes(ds, 1, crop, "validation")
    ny, nx = ds.image.shape[1:]
    n = len(ds)
    n_batches = -(-n // batch_size)
    local = _local_slice(batch_size, process_index, process_count)
    out = []
    for b in range(n_batches):
        idx = np.arange(b * batch_size, (b + 1) * batch_size)
        weight = (idx < n).astype(np.float32)
        idx = np.where(idx < n, idx, 0)[local]
        y0 = np.full(len(idx), (ny - crop) // 2)
        x0 = np.full(len(idx), (nx - crop) // 2)
        batch = _gather(ds, idx, y0, x0, crop)
        batch["weight"] = weight[local]
        batch["ignore"] = np.maximum(batch["ignore"], (1 - batch["weight"])[:, None, None])
        if core_reach:
            batch["core"] = _validation_cores(batch, idx, core_reach)
        out.append(batch)
    return out


def _validation_cores(batch: dict[str, np.ndarray], idx: np.ndarray, reach: int) -> np.ndarray:
    """(B, crop, crop) float32 blocks over each crop's brightest valid pixel, sides from ``(9, stamp)``."""
    image = np.where((batch["cr"] > 0) | (batch["ignore"] > 0), -np.inf, batch["image"])
    b, c = image.shape[0], image.shape[1]
    out = np.zeros((b, c, c), np.float32)
    for i in range(b):
        if not np.isfinite(image[i]).any():
            continue
        py, px = np.unravel_index(np.argmax(image[i]), (c, c))
        _paint_block(out[i], py, px, *np.random.default_rng([9, int(idx[i])]).integers(0, reach + 1, 4))
    return out


def _paint_block(mask: np.ndarray, py: int, px: int, up: int, down: int, left: int, right: int) -> None:
    """Set the block of ``mask`` (ny, nx) reaching up/down/left/right px from (py, px), cut at the edges, to 1."""
    mask[max(py - up, 0):py + down + 1, max(px - left, 0):px + right + 1] = 1.0
