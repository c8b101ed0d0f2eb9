"""Atomic, optionally exclusive, file creation: a file appears complete or not at all."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

__all__ = ["atomic_path"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, exclusive: bool = False) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success move it to ``path``.

    The temporary file (``.NAME.<random>.tmp`` in the destination folder, so
    the final move is a rename within one file system) gets the permissions
    a plain ``open(path, "w")`` would give. On any error it is removed and
    ``path`` is untouched.

    ``exclusive=True`` never replaces an existing ``path``: the file is
    hard-linked into place, which fails with :class:`FileExistsError` if
    ``path`` appeared meanwhile (where the file system has no hard links, an
    existence check followed by a rename). Otherwise ``path`` is replaced
    (``os.replace``).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        if not exclusive:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise FileExistsError(f"{path!r} already exists") from None
        except OSError:  # no hard links here (some network/FAT file systems)
            if os.path.lexists(path):
                raise FileExistsError(f"{path!r} already exists") from None
            os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
