"""The task a worker is running, kept where a reaper finds it after the worker dies.

A worker claims tasks in batches and writes the finished ones about every 0.2 s, so
the store alone cannot tell which task of a dead worker's batch was running: the
lowest unfinished one may have completed since the last flush. Each worker therefore
keeps the number of its running task in a small memory-mapped file of the state
directory (``running/<worker>``). Marking a task is a store into shared memory (no
system call), and the kernel keeps the page when the process dies, even by SIGKILL,
so the reaper blames exactly the task in flight, or none when the worker died
between tasks. Where the file cannot be made or read, reaping falls back to the
lowest running task.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat
import struct
from collections.abc import Callable
from functools import partial
from pathlib import Path

IDLE = -1  # between tasks: nothing to blame
UNKNOWN = None  # no record: blame the lowest running task
_SLOT = struct.Struct("<q")
# Whoever can write the state directory could plant a symlink or hard link named like
# a record, to make the next worker truncate a file of their choice: ``running/`` is
# opened without following a symlink, records are opened relative to it, never
# through a symlink, and a worker writes only a record file it has just created.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a planted FIFO must not block the open
_UNSAFE = (OSError, ValueError, NotImplementedError)  # no dir_fd here: no record


def _open_running(state: Path, create: bool = False) -> int:
    """A descriptor of ``state/running``; OSError if it is a symlink or no directory."""
    running = state / "running"
    if create:
        with contextlib.suppress(FileExistsError):  # does not follow a symlink either
            os.mkdir(running, 0o700)
    return os.open(running, os.O_RDONLY | _DIRECTORY | _NOFOLLOW)


def _create_record(directory: int, name: str) -> int:
    """Create the record file afresh (O_EXCL: never a file or link found there)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW
    try:
        return os.open(name, flags, 0o600, dir_fd=directory)
    except FileExistsError:  # a dead worker's record, or something planted: unlink
        os.unlink(name, dir_fd=directory)  # removes a link itself, never its target
        return os.open(name, flags, 0o600, dir_fd=directory)


def _map_record(state: Path, worker: int) -> mmap.mmap | None:
    """Map a new record file of ``worker``; None where none can be made safely."""
    try:
        directory = _open_running(state, create=True)
        try:
            fd = _create_record(directory, str(worker))
        finally:
            os.close(directory)
        try:
            os.ftruncate(fd, _SLOT.size)
            return mmap.mmap(fd, _SLOT.size)
        finally:
            os.close(fd)
    except _UNSAFE:  # e.g. no shared mmap on this filesystem
        return None


class InFlight:
    """A worker's record of its running task; ``mark(seq)`` costs ~0.15 us."""

    def __init__(self, state: Path, worker: int) -> None:
        self._state, self._worker = state, worker
        self._map = _map_record(state, worker)
        self.mark: Callable[[int], None] = (
            _ignore if self._map is None else partial(_SLOT.pack_into, self._map, 0))
        self.mark(IDLE)

    def close(self) -> None:
        """Forget the record: the worker stopped cleanly."""
        if self._map is not None:
            self.mark = _ignore
            self._map.close()
            self._map = None
            forget(self._state, self._worker)


def _ignore(seq: int) -> None:
    pass


def last_task(state: Path, worker: int) -> int | None:
    """The task a dead worker was running, ``IDLE`` if none, ``UNKNOWN`` if no record
    (or none that is a regular file reached without following a symlink)."""
    try:
        directory = _open_running(state)
        try:
            fd = os.open(str(worker), os.O_RDONLY | _NOFOLLOW | _NONBLOCK, dir_fd=directory)
        finally:
            os.close(directory)
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return UNKNOWN
            data = handle.read(_SLOT.size + 1)  # a longer file is no record
    except _UNSAFE:
        return UNKNOWN
    return _SLOT.unpack(data)[0] if len(data) == _SLOT.size else UNKNOWN


def forget(state: Path, worker: int) -> None:
    """Remove a reaped worker's record (a link itself, never through a symlink)."""
    with contextlib.suppress(*_UNSAFE):
        directory = _open_running(state)
        try:
            os.unlink(str(worker), dir_fd=directory)
        finally:
            os.close(directory)
