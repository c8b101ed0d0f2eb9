"""Clean many FITS files: serially in this process, or one task per file on a Dask cluster.

:func:`clean_files` runs :func:`deepcr_jax.files.clean_fits` over a list of
files and returns one :class:`FileResult` per file (status ``cleaned``,
``skipped`` or ``failed``; CR pixel fraction, seconds, worker, error). A bad
file is reported and the run goes on.

With a ``dask.distributed.Client`` each file is one task (``client.submit``,
``pure=False``, ``retries``) and results arrive through ``as_completed``. A
task reads one file, cleans it, writes the output (atomically, never
replacing another: :func:`~deepcr_jax.fits.write_hdulist`) and returns a
small dict, so a worker holds one file at a time (one thread per worker, or
the ``deepcr_file`` worker resource :func:`local_cluster` declares) and no
array travels back. Each worker process builds the Cleaner once per
settings (:class:`CleanerPlugin` and a worker-local cache) and reuses its
compiled network for every file; :func:`worker_stats` counts it.

A manifest (:class:`deepcr_jax._manifest.Manifest`, JSON lines, fsync'ed as
results arrive) makes a run resumable: rerunning with the same manifest
skips the files it records as done, and outputs that already exist with the
same settings (as ``skip_existing``) are kept, so a killed run (client or
workers) ends with every file done once. Dask is imported only when a client
is given.

Devices: on CPUs, one worker per group of cores (:func:`local_cluster` pins
each worker's XLA threads to its share). On GPUs run one worker per device
(``dask_cuda.LocalCUDACluster``, or ``dask worker ADDRESS --nthreads 1``
started once per GPU with ``CUDA_VISIBLE_DEVICES`` set) and pass its client
or ``--scheduler ADDRESS``; a worker that sees several GPUs shards each
chip's tiles over them.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from deepcr_jax import hst
from deepcr_jax._batch_worker import count_file, format_table, worker_cleaner, worker_stats

__all__ = [
    "FILE_RESOURCE",
    "FileResult",
    "clean_files",
    "format_table",
    "local_cluster",
    "worker_stats",
]

#: The Dask worker resource that holds one file (each task asks for 1).
FILE_RESOURCE = "deepcr_file"
#: Errors that a bad input or output path raises: reported at once, not retried.
_FILE_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, KeyError, IndexError, TypeError)


@dataclasses.dataclass(frozen=True)
class FileResult:
    """What :func:`clean_files` did to one file.

    Attributes
    ----------
    path, output : str
        Input and output file.
    status : {"cleaned", "skipped", "failed"}
    cr_fraction : float or None
        CR pixels over the pixels not ignored, all chips together (None when
        not cleaned now; from the manifest or output header when skipped).
    n_cr, n_pixels : int
        CR pixels flagged and pixels in the science chips (0 when not cleaned).
    seconds : float
        Wall time of the task (0 for files skipped by the manifest).
    worker : str
        Dask worker address, or ``"local"`` for a serial run.
    model : str
        Mask model used (the resolved name with ``model="auto"``).
    error : str or None
        One line: why the file failed.
    note : str or None
        Why it was skipped, or a warning (``model="auto"`` fallback).
    """

    path: str
    output: str
    status: str
    cr_fraction: float | None = None
    n_cr: int = 0
    n_pixels: int = 0
    seconds: float = 0.0
    worker: str = "local"
    model: str = ""
    error: str | None = None
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (what a task returns and the manifest stores)."""
        return dataclasses.asdict(self)

    @classmethod
    def failure(cls, path: str, output: str, model: str, err: BaseException) -> FileResult:
        """A failed file: the error as one line."""
        return cls(path, output, "failed", model=model, error=f"{type(err).__name__}: {_one_line(err)}")


@dataclasses.dataclass(frozen=True)
class _Settings:
    """Everything a task needs besides its two paths (small and picklable)."""

    model: str
    inpaint: str | None
    threshold: float | None
    tile: int | None
    batch: int | None
    overwrite: bool
    skip_existing: bool
    force: bool
    dq_flag: int
    dq_ignore_bits: int
    saturation: float | None
    units: str
    precision: str = "exact"

    @property
    def cleaner_key(self) -> tuple:
        return (self.model, self.inpaint, self.tile, self.batch, self.precision)

    def record(self) -> dict[str, Any]:
        """What a manifest line must match to count as done."""
        return {"model": self.model, "threshold": self.threshold, "inpaint": self.inpaint,
                "precision": self.precision}


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 500 else text[:497] + "..."


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _resolve_model(path_in: str, model: str) -> tuple[str, str | None]:
    """``model``, or with ``"auto"`` the zoo model for the file's INSTRUME/DETECTOR and a warning."""
    if model != "auto":
        return model, None
    from astropy.io import fits

    try:
        header = fits.getheader(path_in, 0)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read the primary header for model='auto': {err}") from None
    return hst.model_for_instrument(header)


def _clean_one(path_in: str, path_out: str, settings: _Settings, worker: str, cleaner=None) -> dict[str, Any]:
    """Clean one file; a bad file gives a ``failed`` dict. Other exceptions propagate (and are retried)."""
    from deepcr_jax.files import clean_fits, made_by_deepcr_jax

    t0 = time.perf_counter()
    out = {"path": path_in, "output": path_out, "worker": worker, "model": settings.model}
    try:
        if _same_file(path_in, path_out):
            raise FileExistsError(f"output {path_out!r} is the input file; inputs are never overwritten")
        if not settings.force and made_by_deepcr_jax(path_in):
            note = "input is a deepcr-jax output already (DCRVERS set); force=True cleans it"
            return FileResult(status="skipped", note=note, **out).as_dict()
        model, note = _resolve_model(path_in, settings.model)
        out["model"] = model
        if cleaner is None:
            cleaner = worker_cleaner(model, settings.inpaint, settings.tile, settings.batch, settings.precision)
        os.makedirs(os.path.dirname(os.path.abspath(path_out)), exist_ok=True)
        kwargs = {
            "model": cleaner,
            "threshold": settings.threshold,
            "dq_flag": settings.dq_flag,
            "dq_ignore_bits": settings.dq_ignore_bits,
            "saturation": settings.saturation,
            "units": settings.units,
        }
        try:
            summary = clean_fits(
                path_in,
                path_out,
                overwrite=settings.overwrite,
                skip_existing=settings.skip_existing,
                **kwargs,
            )
        except FileExistsError:
            if not (settings.skip_existing and os.path.lexists(path_out)):
                raise
            # it appeared while this task cleaned (another attempt of the same file): keep it if current
            summary = clean_fits(path_in, path_out, skip_existing=True, **kwargs)
    except _FILE_ERRORS as err:
        seconds = time.perf_counter() - t0
        error = _one_line(err)
        error = error[len(path_in) + 2 :] if error.startswith(f"{path_in}: ") else error
        return FileResult(status="failed", seconds=seconds, error=error, **out).as_dict()
    finally:
        count_file()
    seconds = time.perf_counter() - t0
    if summary.skipped:
        note = "; ".join(filter(None, [note, "the output exists with these settings"]))
        return FileResult(status="skipped", seconds=seconds, note=note, **out).as_dict()
    pixels = sum(c.shape[0] * c.shape[1] for c in summary.chips)
    usable = sum(c.shape[0] * c.shape[1] - c.n_ignored for c in summary.chips)
    return FileResult(
        status="cleaned",
        cr_fraction=summary.n_cr / usable if usable else 0.0,
        n_cr=summary.n_cr,
        n_pixels=pixels,
        seconds=seconds,
        note=note,
        **out,
    ).as_dict()


def _task(path_in: str, path_out: str, settings: _Settings) -> dict[str, Any]:
    """The Dask task: one file on this worker, with its cached Cleaner."""
    from distributed import get_worker

    return _clean_one(path_in, path_out, settings, get_worker().address)


# --------------------------------------------------------------------------
# the driver


def _output_paths(paths: Sequence[str], outputs, outdir, suffix: str) -> list[str]:
    from deepcr_jax.files import default_output_path

    if outputs is not None:
        outputs = [os.fspath(o) for o in outputs]
        if len(outputs) != len(paths):
            raise ValueError(f"outputs must have one path per input ({len(paths)}); got {len(outputs)}")
        return outputs
    return [os.fspath(default_output_path(p, suffix=suffix, outdir=outdir)) for p in paths]


def _record(result: FileResult, settings: _Settings) -> dict[str, Any]:
    when = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    return {"input": result.path, **result.as_dict(), "settings": settings.record(), "time": when}


def clean_files(
    paths: Iterable[str | os.PathLike],
    *,
    outdir: str | os.PathLike | None = None,
    suffix: str = "_crmask",
    outputs: Sequence[str | os.PathLike] | None = None,
    model: Any = "ACS-WFC",
    threshold: float | None = None,
    inpaint: str | None = None,
    overwrite: bool = False,
    skip_existing: bool = False,
    force: bool = False,
    client=None,
    manifest: str | os.PathLike | None = None,
    retries: int = 2,
    progress: Callable[[FileResult], None] | None = None,
    tile: int | None = None,
    batch: int | None = None,
    dq_flag: int = hst.DEFAULT_DQ_FLAG,
    dq_ignore_bits: int = hst.DEFAULT_DQ_IGNORE_BITS,
    saturation: float | None = hst.SATURATION_LEVEL,
    units: str = "auto",
    precision: str = "exact",
) -> list[FileResult]:
    """Clean every file of ``paths`` (:func:`~deepcr_jax.files.clean_fits`); one result per file.

    Parameters
    ----------
    paths : iterable of str or path-like
        Input FITS files (e.g. HST ACS/WFC ``_flc.fits``, SCI in electrons).
    outdir, suffix : optional
        Outputs ``<stem><suffix>.fits`` (default ``_crmask``) beside each
        input or in ``outdir`` (:func:`~deepcr_jax.files.default_output_path`).
    outputs : sequence of paths, optional
        One output path per input instead (overrides ``outdir``/``suffix``).
    model : str or path-like, optional
        Zoo mask model, a converted ``.npz`` (on a file system the workers
        see) or ``"auto"`` (per file from INSTRUME/DETECTOR). Without a
        client also a loaded :class:`deepcr_jax.Cleaner`. Default ``"ACS-WFC"``.
    threshold : float in [0, 1], optional
        Default the model's recommended.
    inpaint : str, optional
        ``"medmask"`` or an inpainting zoo model; None: masks only.
    overwrite : bool
        Replace existing outputs.
    skip_existing : bool
        Keep an existing output made by this version with the same model,
        threshold and inpainter (status ``skipped``). Implied with a
        ``manifest`` or a ``client`` once a file has been submitted (a
        retried task finds its own output), unless ``overwrite``.
    force : bool
        Also clean inputs that are deepcr-jax outputs (else skipped).
    client : dask.distributed.Client, optional
        Run one task per file on its cluster; None (default): serially here.
    manifest : str or path-like, optional
        JSONL file appended with one line per file as results arrive; files
        it records as done (same output and settings, output present) are
        skipped without being read, so rerunning resumes.
    retries : int
        Times a task that raised an unexpected error (not a bad file) is
        run again; a worker that dies mid-task is Dask's ``allowed-failures``.
    progress : callable, optional
        Called with each :class:`FileResult` as it arrives (in this process).
    tile, batch : int, optional
        Engine settings (:func:`deepcr_jax.load`).
    precision : {"exact", "bf16", "tf32"}
        Compute preset of every worker's network (:func:`deepcr_jax.load`);
        part of the settings a manifest line must match.
    dq_flag, dq_ignore_bits, saturation, units
        See :func:`~deepcr_jax.files.clean_fits`.

    Returns
    -------
    list of FileResult
        In the order of ``paths``. :func:`format_table` summarises them.

    Raises
    ------
    FileExistsError
        ``manifest`` is held by another run.
    TypeError, ValueError
        A loaded Cleaner with a client; ``outputs`` of the wrong length.
    """
    paths = [os.fspath(p) for p in paths]
    path_outs = _output_paths(paths, outputs, outdir, suffix)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be a non-negative int; got {retries!r}")
    loaded = None
    if hasattr(model, "clean") and not isinstance(model, (str, os.PathLike)):
        if client is not None:
            raise TypeError(
                "with client=, model must be a zoo name or a .npz path (each worker builds its own Cleaner); "
                f"got a {type(model).__name__}"
            )
        loaded, model = model, str(getattr(getattr(model, "params", None), "name", None) or "custom")
    hst.check_dq_flag(dq_flag)
    from deepcr_jax.engine import resolve_precision

    settings = _Settings(
        model=os.fspath(model),
        inpaint=None if inpaint is None else os.fspath(inpaint),
        threshold=None if threshold is None else float(threshold),
        tile=tile,
        batch=batch,
        overwrite=bool(overwrite),
        skip_existing=bool(skip_existing or ((manifest is not None or client is not None) and not overwrite)),
        force=bool(force),
        dq_flag=int(dq_flag),
        dq_ignore_bits=int(dq_ignore_bits),
        saturation=hst.check_saturation(saturation),
        units=units,
        precision=resolve_precision(precision),
    )
    from deepcr_jax._manifest import Manifest

    book = Manifest(manifest) if manifest is not None else None
    results: list[FileResult | None] = [None] * len(paths)

    def finish(i: int, result: FileResult, record: bool = True) -> None:
        results[i] = result
        if book is not None and record:
            book.append(_record(result, settings))
        if progress is not None:
            progress(result)

    try:
        todo = []
        for i, (p, o) in enumerate(zip(paths, path_outs)):
            rec = book.done(p, o, settings.record()) if book is not None else None
            if rec is not None:
                note = f"done in manifest {book.path} ({rec.get('status')} {rec.get('time', '')})".rstrip()
                finish(
                    i,
                    FileResult(
                        p,
                        o,
                        "skipped",
                        cr_fraction=rec.get("cr_fraction"),
                        worker="(manifest)",
                        model=str(rec.get("model", "")),
                        note=note,
                    ),
                    record=False,
                )
            elif not (overwrite or skip_existing or book is not None) and os.path.lexists(o):
                error = (
                    f"output {o!r} already exists; pass overwrite=True to replace it or skip_existing=True"
                )
                finish(i, FileResult(p, o, "failed", model=settings.model, error=error))
            else:
                todo.append(i)
        if client is None:
            _run_serial(todo, paths, path_outs, settings, retries, loaded, finish)
        else:
            from deepcr_jax._dask import run_dask

            run_dask(client, todo, paths, path_outs, settings, retries, finish)
    finally:
        if book is not None:
            book.close()
    return [r for r in results if r is not None]


def _run_serial(todo, paths, path_outs, settings, retries, loaded, finish) -> None:
    for i in todo:
        for attempt in range(retries + 1):
            try:
                result = FileResult(**_clean_one(paths[i], path_outs[i], settings, "local", loaded))
                break
            except Exception as err:  # noqa: BLE001 - an unexpected error: retried, then reported
                if attempt == retries:
                    result = FileResult.failure(paths[i], path_outs[i], settings.model, err)
        finish(i, result)


def local_cluster(
    n_workers: int, *, threads_per_worker: int | None = None, dashboard_address: str | None = ":8787"
):
    """A ``distributed.LocalCluster`` of ``n_workers`` processes for :func:`clean_files` on CPUs.

    Each worker has ``threads_per_worker`` threads (default: its share of the
    cores, ``max(1, cores // n_workers)``) and one :data:`FILE_RESOURCE`
    (one file in memory at a time); its XLA threads are pinned to its share
    of the cores. For GPUs use one worker per device instead (module notes).
    """
    from deepcr_jax._dask import local_cluster as make

    return make(n_workers, threads_per_worker=threads_per_worker, dashboard_address=dashboard_address)
