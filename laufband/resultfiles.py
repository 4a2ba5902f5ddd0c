"""Large results of ``pmap`` and the joblib backend, as files of the state directory.

A result that pickles to more than ``pmap.LARGE_RESULT`` bytes (1 MiB) is written to
``StateDirectory.result_file`` (``results/<workflow number>/<task number>``: no name
or key reaches a path): into a temporary file named after its writer
(``StateDirectory.temporary``), renamed into place, before the transaction
that completes its task. A failed write removes its temporary file and ends in one
:class:`StateError` line; temporary files that a dead writer left are removed by the
next call.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import time
from pathlib import Path

from laufband.errors import StateError
from laufband.liveness import is_alive, pid_namespace
from laufband.store import DIRECTORY_MODE, FILE_MODE, StateDirectory

STALE_TEMPORARY = 3600.0  # seconds untouched: another host's temporary result file is abandoned


def write_file(target: Path, value: bytes) -> None:
    """Write a result file atomically: into a temporary file of this writer, renamed.

    The temporary file is removed if that fails (a full disk).
    """
    for directory in (target.parent.parent, target.parent):  # mkdir(parents=) ignores mode
        directory.mkdir(mode=DIRECTORY_MODE, exist_ok=True)
        if directory.is_symlink():  # planted: we would write outside the state directory
            raise OSError(errno.ELOOP, "a symlink where a directory of results belongs",
                          str(directory))
    temporary = StateDirectory.temporary(target, _writer())
    fd = _create(temporary)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(value)
        temporary.replace(target)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def _create(path: Path) -> int:
    """Create a file for writing, never through a link planted under its name."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        return os.open(path, flags, FILE_MODE)
    except FileExistsError:  # left by a dead writer that had our pid
        path.unlink()
        return os.open(path, flags, FILE_MODE)


# Where our pids can be looked up: pid namespace and host (containers may share a
# host name and a state directory, but not their pids).
_PLACE = ("".join(filter(str.isdigit, pid_namespace())) or "0",
          "".join(c if c.isalnum() or c in "-." else "_" for c in socket.gethostname()))


def _writer() -> str:
    """Return ``<pid>.<pid namespace>.<host>``: who writes a temporary result file.

    So ``remove_stale_temporaries`` can tell whether the writer is gone.
    """
    return f"{os.getpid()}.{_PLACE[0]}.{_PLACE[1]}"


def _temporary_writer(name: str) -> tuple[int, bool] | None:
    """Return the pid of a temporary result file's writer, and whether it is ours.

    Ours: of our place (an older name without place counts as ours). None for files
    that are no temporary result files.
    """
    found = StateDirectory.temporary_writer(name)
    if found is None:
        return None
    target, writer = found
    parts = writer.split(".", 2)
    if not (target.isdigit() and parts[0].isdigit()):
        return None
    return int(parts[0]), len(parts) == 1 or tuple(parts[1:]) == _PLACE


def remove_stale_temporaries(directory: Path) -> None:
    """Remove temporary result files that no writer will finish.

    Those of processes of our host and pid namespace that are gone, and others
    (another host on a shared filesystem, another container) that nobody has touched
    for ``STALE_TEMPORARY`` seconds.
    """
    try:
        entries = list(os.scandir(directory))
    except OSError:  # no results yet
        return
    now = time.time()
    for entry in entries:
        writer = _temporary_writer(entry.name)
        if writer is None:
            continue
        pid, ours = writer
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours to remove
            if ours:
                stale = not is_alive(pid, "")
            else:
                stale = now - entry.stat(follow_symlinks=False).st_mtime > STALE_TEMPORARY
            if stale:
                Path(entry.path).unlink()


def write_error(directory: Path, error: OSError) -> StateError:
    """Return one line for a result file that cannot be written: what is wrong, what to do."""
    if error.errno == errno.ENOSPC:
        what, todo = "the disk is full", "free space"
    elif error.errno == getattr(errno, "EDQUOT", None):
        what, todo = "the disk quota is exceeded", "free space"
    else:
        what = f"result files cannot be written ({error.strerror or error})"
        todo = "fix the directory"
    msg = f"{what} in {directory}: {todo}, then call pmap again; finished items are kept"
    return StateError(msg, path=directory)
