"""Atomic, optionally exclusive, file creation: a file appears complete or not at all.

Temporaries are named ``.NAME.p<PID>h<HOST>.<random>.tmp`` beside the final
``NAME``: the creating process id and a short hash of the host name are in
the name, so a later write of the same ``NAME`` removes temporaries that a
killed process (SIGKILL, power loss) left behind (:func:`remove_stale`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator

__all__ = ["atomic_path", "remove_stale"]

#: A temporary of another host (shared file system) is stale after this many seconds.
FOREIGN_STALE_S = 24 * 3600.0


def _host_id() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale(path: str | os.PathLike) -> list[str]:
    """Remove temporaries of ``path`` left by dead processes; returns the removed paths.

    A temporary ``.NAME.p<PID>h<HOST>.<random>.tmp`` is stale when it was
    made on this host by a process that no longer runs, or on another host
    more than :data:`FOREIGN_STALE_S` ago. Temporaries of live processes
    (a concurrent write of the same name) are left alone.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    pattern = re.compile(rf"^\.{re.escape(name)}\.p(\d+)h([0-9a-f]{{6}})\.[^.]+\.tmp$")
    try:
        entries = os.listdir(directory)
    except OSError:
        return []
    removed, host, now = [], _host_id(), time.time()
    for entry in entries:
        m = pattern.match(entry)
        if m is None:
            continue
        full = os.path.join(directory, entry)
        try:
            if m.group(2) == host:
                stale = not _pid_alive(int(m.group(1)))
            else:
                stale = now - os.lstat(full).st_mtime > FOREIGN_STALE_S
            if stale:
                os.unlink(full)
                removed.append(full)
        except OSError:  # removed meanwhile, or not ours to remove
            continue
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, exclusive: bool = False) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success move it to ``path``.

    The temporary file (``.NAME.p<PID>h<HOST>.<random>.tmp`` in the
    destination folder, so the final move is a rename within one file
    system) gets the permissions a plain ``open(path, "w")`` would give. On
    any error, KeyboardInterrupt included, it is removed and ``path`` is
    untouched. Temporaries of ``path`` left by killed processes are removed
    first (:func:`remove_stale`).

    ``exclusive=True`` never replaces an existing ``path``: the file is
    hard-linked into place, which fails with :class:`FileExistsError` if
    ``path`` appeared meanwhile (where the file system has no hard links, an
    existence check followed by a rename). Otherwise ``path`` is replaced
    (``os.replace``).

    Raises
    ------
    FileNotFoundError, PermissionError
        The destination folder does not exist or is not writable (the
        message names the folder).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    remove_stale(path)
    prefix = f".{os.path.basename(path)}.p{os.getpid()}h{_host_id()}."
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=".tmp")
    except FileNotFoundError:
        raise FileNotFoundError(f"output directory {directory!r} does not exist") from None
    except PermissionError:
        raise PermissionError(f"output directory {directory!r} is not writable") from None
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
