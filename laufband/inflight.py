"""What a worker was doing when it died, kept where a reaper finds it afterwards.

A worker claims tasks in batches and writes the finished ones about every 0.2 s, so
the store alone cannot tell, of a dead worker's batch, which tasks finished since
its last flush and which one was running. Each worker therefore keeps its batch and
its position in it in a small memory-mapped file of the state directory
(``StateDirectory.in_flight``: ``running/<worker>``)::

    word 0: position p    2*i: tasks batch[:i] finished, none running
                          2*i + 1: batch[:i] finished, batch[i] running
    word 1: n | flags     how many tasks the batch has; FINAL if a finished body
                          is all a task needs (pmap's also need their result); RUN if
                          the batch is n consecutive tasks
    words 2 .. 2+n-1      the finished tasks not yet written, then the batch, in the
                          order the loop runs it (RUN: word 2 only, the first task)

Moving on to the next task is one store into shared memory (no system call), and
the kernel keeps the page when the process dies, even by SIGKILL, so on the same
host the reaper completes the tasks that finished and counts a kill only for the
one in flight. A reaper on another host may see a stale copy (no shared page cache):
it ignores the record, and the lowest running task counts the kill, so what finished
since the last flush runs again there. Where the file cannot be made or read,
reaping falls back to the same.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat
import struct
from array import array
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import NamedTuple

from laufband.batching import MAX_BATCH
from laufband.store import DIRECTORY_MODE, FILE_MODE, StateDirectory

# Tasks a record holds: a batch, after the finished tasks not yet written (at most
# one batch's worth: the loop writes at once when there are more).
CAPACITY = 2 * MAX_BATCH
FINAL = 1 << 32  # flag in word 1: the finished bodies of the batch are all their tasks need
RUN = 1 << 33  # flag in word 1: the batch is consecutive tasks from the one in word 2
_HEADER = struct.Struct("<qq")
_WORD = struct.Struct("<q")
_SIZE = _HEADER.size + CAPACITY * _WORD.size
# Records of laufband 0.3 before #17 (schema 5) held one batch: a worker of that
# version that died on this host left one of this size, read the same way.
_SIZES = (_SIZE, _HEADER.size + MAX_BATCH * _WORD.size)


class Record(NamedTuple):
    """What a dead worker's record says.

    The tasks of its batch that finished (only those whose finished body is all they
    need), and the one running (None: between tasks).
    """

    finished: list[int]
    running: int | None


# Whoever can write the state directory could plant a symlink or hard link named like
# a record, to make the next worker truncate a file of their choice: ``running/`` is
# opened without following a symlink, records are opened relative to it, never
# through a symlink, and a worker writes only a record file it has just created.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a planted FIFO must not block the open
_UNSAFE = (OSError, ValueError, NotImplementedError)  # no dir_fd here: no record


def open_running(state: StateDirectory, *, create: bool = False) -> int:
    """Open the folder of records; OSError if it is a symlink or no directory."""
    if create:
        with contextlib.suppress(FileExistsError):  # does not follow a symlink either
            state.running.mkdir(DIRECTORY_MODE)
    return os.open(state.running, os.O_RDONLY | _DIRECTORY | _NOFOLLOW)


def _create_record(directory: int, name: str) -> int:
    """Create the record file afresh (O_EXCL: never a file or link found there)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW
    try:
        return os.open(name, flags, FILE_MODE, dir_fd=directory)
    except FileExistsError:  # a dead worker's record, or something planted: unlink
        os.unlink(name, dir_fd=directory)  # removes a link itself, never its target
        return os.open(name, flags, FILE_MODE, dir_fd=directory)


def _map_record(state: StateDirectory, worker: int) -> mmap.mmap | None:
    """Map a new record file of ``worker``; None where none can be made safely."""
    try:
        directory = open_running(state, create=True)
        try:
            fd = _create_record(directory, state.in_flight(worker).name)
        finally:
            os.close(directory)
        try:
            os.ftruncate(fd, _SIZE)  # sparse: only the pages a batch touches are real
            return mmap.mmap(fd, _SIZE)
        finally:
            os.close(fd)
    except _UNSAFE:  # e.g. no shared mmap on this filesystem
        return None


class InFlight:
    """A worker's record of its batch and its position in it.

    ``begin(batch)`` before running a batch; ``mark(2*i + 1)`` as ``batch[i]`` starts
    (~0.15 us: batch[:i] are finished from then on); ``settle(...)`` when no body
    runs any more; ``close()`` once the worker stopped cleanly.
    """

    def __init__(self, state: StateDirectory | Path, worker: int, *, final: bool = True) -> None:
        self._state, self._worker = StateDirectory.of(state), worker
        self._flags = FINAL if final else 0
        self._map = _map_record(self._state, worker)
        self.mark: Callable[[int], None] = (
            _ignore if self._map is None else partial(_WORD.pack_into, self._map, 0))
        self.begin([])

    def begin(self, batch: list[int], finished: list[int] | None = None) -> int:
        """Record a new batch, none of it started, after tasks ``finished`` but not written.

        Return the position of the batch's first task in the record (``mark(2*(offset
        + i) + 1)`` as ``batch[i]`` starts). The position is written first: a death while
        the batch is written finds no more finished than before.
        """
        finished = finished or []
        offset = len(finished)
        if self._map is None:
            return offset
        batch = finished + batch
        if len(batch) > CAPACITY:
            msg = f"a batch of {len(batch)} tasks exceeds the record's {CAPACITY}"
            raise ValueError(msg)
        self.mark(0)
        if batch and batch == list(range(batch[0], batch[0] + len(batch))):  # a run:
            _WORD.pack_into(self._map, _HEADER.size, batch[0])  # its first task says all
            _WORD.pack_into(self._map, _WORD.size, len(batch) | self._flags | RUN)
        else:
            self._map[_HEADER.size: _HEADER.size + len(batch) * _WORD.size] = array("q", batch)
            _WORD.pack_into(self._map, _WORD.size, len(batch) | self._flags)
        self.mark(2 * offset)
        return offset

    def need_results(self) -> None:
        """From now on a finished body is not all a task needs: its saved result is.

        A reaper then completes none of the tasks that finished since the last write
        (they run again, as their results died with the worker).
        """
        if not self._flags & FINAL:
            return
        self._flags &= ~FINAL
        if self._map is not None:  # the batch running now too: one 8-byte store
            word = _WORD.unpack_from(self._map, _WORD.size)[0]
            _WORD.pack_into(self._map, _WORD.size, word & ~FINAL)

    def settle(self, body_finished: bool) -> None:  # noqa: FBT001 - settle(finished) reads well
        """Record that no loop body runs any more; a death from now on counts no kill.

        The task at the position finished (``body_finished``), or did not (it failed,
        or is handed back).
        """
        if self._map is None:
            return
        position = _WORD.unpack_from(self._map, 0)[0]
        if position % 2:
            self.mark(position + 1 if body_finished else position - 1)

    def close(self) -> None:
        """Forget the record: the worker stopped cleanly."""
        if self._map is not None:
            self.mark = _ignore
            self._map.close()
            self._map = None
            forget(self._state, self._worker)


def _ignore(position: int) -> None:
    pass


def read_record(state: StateDirectory | Path, worker: int) -> Record | None:
    """Read what a dead worker's record says.

    None without a usable record: none, not a regular file reached without following a
    symlink, or inconsistent.
    """
    state = StateDirectory.of(state)
    try:
        directory = open_running(state)
        try:
            fd = os.open(state.in_flight(worker).name, os.O_RDONLY | _NOFOLLOW | _NONBLOCK,
                         dir_fd=directory)
        finally:
            os.close(directory)
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            data = handle.read(_SIZE + 1)  # a longer file is no record
    except _UNSAFE:
        return None
    if len(data) not in _SIZES:
        return None
    position, word = _HEADER.unpack_from(data)
    size, final = word & (FINAL - 1), bool(word & FINAL)
    capacity = (len(data) - _HEADER.size) // _WORD.size
    if not 0 <= size <= capacity or not 0 <= position <= 2 * size or word >> 34:
        return None
    if word & RUN:
        first = _WORD.unpack_from(data, _HEADER.size)[0]
        batch = list(range(first, first + size))
    else:
        batch = array("q", data[_HEADER.size: _HEADER.size + size * _WORD.size]).tolist()
    index = position // 2
    running = batch[index] if position % 2 and index < size else None
    return Record(batch[:index] if final else [], running)


def forget(state: StateDirectory | Path, worker: int) -> None:
    """Remove a reaped worker's record (a link itself, never through a symlink)."""
    state = StateDirectory.of(state)
    with contextlib.suppress(*_UNSAFE):
        directory = open_running(state)
        try:
            os.unlink(state.in_flight(worker).name, dir_fd=directory)
        finally:
            os.close(directory)
