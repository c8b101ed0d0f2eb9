"""The resumable record of a :func:`deepcr_jax.batch.clean_files` run: one JSON line per file.

A line is appended (and flushed and fsync'ed) as each file's result arrives,
so a run that is killed loses at most the files in flight; the next run with
the same manifest skips the files recorded as done whose output still
exists. A line cut short by a kill is ignored when read. One run at a time
holds the manifest (an exclusive ``flock``); a second run on the same file
is refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, Self

__all__ = ["DONE", "Manifest"]

#: Statuses that mean the file's output exists and is current.
DONE = ("cleaned", "skipped")


class Manifest:
    """An append-only JSONL file of per-file results, opened for one run.

    Parameters
    ----------
    path : str or path-like
        The manifest file; created (with its folder) if missing.

    Raises
    ------
    FileExistsError
        Another run holds the manifest.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        import fcntl

        self.path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        self._fh = open(self.path, "a+b")  # noqa: SIM115 - held for the run, closed by close()
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._fh.close()
            raise FileExistsError(
                f"manifest {self.path!r} is in use by another run (wait for it, or choose another manifest)"
            ) from None
        self.records = self._read()

    def _read(self) -> dict[str, dict[str, Any]]:
        """The last complete record per input (real path); a torn last line is dropped."""
        self._fh.seek(0)
        data = self._fh.read()
        records: dict[str, dict[str, Any]] = {}
        for line in data.split(b"\n"):
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # empty, or cut short by a kill
            if isinstance(rec, dict) and isinstance(rec.get("input"), str):
                records[os.path.realpath(rec["input"])] = rec
        if data and not data.endswith(b"\n"):  # the next line starts on its own line
            self._fh.write(b"\n")
            self._flush()
        return records

    def done(self, path_in: str, path_out: str, settings: Mapping[str, Any]) -> dict[str, Any] | None:
        """The record that makes ``path_in`` done (same output and settings, output present), or None."""
        rec = self.records.get(os.path.realpath(path_in))
        if (
            rec is not None
            and rec.get("status") in DONE
            and rec.get("settings") == dict(settings)
            and rec.get("output") is not None
            and os.path.realpath(rec["output"]) == os.path.realpath(path_out)
            and os.path.isfile(path_out)
        ):
            return rec
        return None

    def append(self, record: Mapping[str, Any]) -> None:
        """Write ``record`` as one line, flushed and fsync'ed before returning."""
        line = json.dumps(dict(record), separators=(",", ":"), allow_nan=False)
        self._fh.write(line.encode() + b"\n")
        self._flush()
        self.records[os.path.realpath(record["input"])] = dict(record)

    def _flush(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        """Release the manifest (the lock goes with the file)."""
        if not self._fh.closed:
            self._fh.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
