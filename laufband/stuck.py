"""pmap helpers stuck past a timeout: killed, their item failed, replaced.

A helper's own timeout watch interrupts the function it runs (:mod:`laufband.timeouts`)
unless that function holds the GIL in C code: then no thread of the helper runs. So
each helper of a ``pmap`` call with a timeout publishes the deadline of the item it
runs in a small shared file (``running/timeout-<pid>``), and the caller's
:class:`Supervisor` thread reads them::

    helper: before func(item): slot = (task, deadline); after it: slot cleared
    caller, every SUPERVISE_EVERY s: a helper past its deadline + GRACE?
        ─> SIGKILL it; in one transaction fail its task with the TaskTimeoutError
           (stored as the item's outcome) unless it finished meanwhile; start a
           replacement helper; the reapers hand back the rest of what it held
"""

from __future__ import annotations

import contextlib
import mmap
import os
import pickle
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from laufband.errors import StateError, TaskTimeoutError
from laufband.failuretext import short_repr
from laufband.inflight import open_running
from laufband.liveness import HOST
from laufband.options import resolve
from laufband.outcomes import ERROR
from laufband.store import FailureRecord, StateDirectory, Store

if TYPE_CHECKING:
    from laufband.pmapjob import Job
    from laufband.processes import Helpers

GRACE = 1.0  # seconds past its deadline a helper gets to be interrupted by its own watch
SUPERVISE_EVERY = 0.2  # seconds between the caller's looks at its helpers
_SLOT = struct.Struct("<qd")  # task number (-1: none), deadline (time.monotonic())


def _name(pid: int) -> str:
    return f"timeout-{pid}"


class DeadlineSlot:
    """A helper's published deadline (helper side): shared memory, one store per item."""

    def __init__(self, state: StateDirectory | Path) -> None:
        """Create ``running/timeout-<pid>`` for this process (a file of its own)."""
        self._state = StateDirectory.of(state)
        directory = open_running(self._state, create=True)
        try:
            with contextlib.suppress(FileNotFoundError):  # a stale one of a reused pid
                os.unlink(_name(os.getpid()), dir_fd=directory)
            fd = os.open(_name(os.getpid()), os.O_RDWR | os.O_CREAT | os.O_EXCL
                         | getattr(os, "O_NOFOLLOW", 0), 0o600, dir_fd=directory)
        finally:
            os.close(directory)
        try:
            os.ftruncate(fd, _SLOT.size)
            self._map = mmap.mmap(fd, _SLOT.size)
        finally:
            os.close(fd)
        self.clear()

    def start(self, seq: int, deadline: float) -> None:
        """Publish that task ``seq`` runs until ``deadline`` (``time.monotonic()``)."""
        _SLOT.pack_into(self._map, 0, seq, deadline)

    def clear(self) -> None:
        """Publish that no task runs."""
        _SLOT.pack_into(self._map, 0, -1, 0.0)

    def close(self) -> None:
        """Remove the slot (the helper leaves)."""
        self._map.close()
        forget(self._state, os.getpid())


def read_slot(state: StateDirectory, pid: int) -> tuple[int, float] | None:
    """Return the task helper ``pid`` runs and its deadline, or None."""
    try:
        directory = open_running(state)
        try:
            fd = os.open(_name(pid), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0),
                         dir_fd=directory)
        finally:
            os.close(directory)
        with os.fdopen(fd, "rb") as handle:
            data = handle.read(_SLOT.size)
    except (OSError, ValueError):
        return None
    if len(data) != _SLOT.size:
        return None
    seq, deadline = _SLOT.unpack(data)
    return None if seq < 0 else (seq, deadline)


def forget(state: StateDirectory | Path, pid: int) -> None:
    """Remove helper ``pid``'s slot."""
    with contextlib.suppress(OSError, ValueError):
        directory = open_running(StateDirectory.of(state))
        try:
            os.unlink(_name(pid), dir_fd=directory)
        finally:
            os.close(directory)


class Supervisor:
    """The caller's thread that kills, fails and replaces helpers stuck past a timeout.

    Args:
        state: The state directory.
        wf: The workflow's number.
        limit: The timeout in seconds.
        item_of: Maps a task number to its item (for the failure's short repr).
        helpers: Returns the helpers' processes alive now (pid, kill function).
        replace: Starts one helper in place of a killed one.
        max_failed_retries: As the workers' option.
    """

    def __init__(self, state: StateDirectory, wf: int, limit: float, *,
                 item_of: Callable[[int], Any],
                 helpers: Callable[[], list[tuple[int, Callable[[], None]]]],
                 replace: Callable[[], None], max_failed_retries: int) -> None:
        self._state, self._wf, self._limit = state, wf, limit
        self._item_of, self._helpers, self._replace = item_of, helpers, replace
        self._retries = max_failed_retries
        self.killed: set[int] = set()  # pids killed here: their end is no news
        # Held while one look kills and replaces: a helper killed is replaced before
        # anyone waiting for the helpers to end sees it gone (Helpers.wait).
        self.looking = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="laufband-supervisor",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop looking (before the helpers are ended)."""
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(SUPERVISE_EVERY):
            with self.looking:
                self._look()

    def _look(self) -> None:
        """Kill, fail and replace each helper past its deadline and grace."""
        for pid, kill in self._helpers():
            found = read_slot(self._state, pid)
            if found is not None and time.monotonic() > found[1] + GRACE \
                    and not self._stop.is_set():
                with contextlib.suppress(StateError, OSError):
                    self._end(pid, kill, found[0])

    def _end(self, pid: int, kill: Callable[[], None], seq: int) -> None:
        """Kill helper ``pid``, fail task ``seq`` with the timeout, start another."""
        self.killed.add(pid)
        kill()  # waits for it: from here on it writes nothing
        forget(self._state, pid)
        error = TaskTimeoutError(f"the function timed out after {self._limit:g} s"
                                 " (its helper process could not be interrupted and was"
                                 " killed)", task="the function", seconds=self._limit)
        text = f"{type(error).__name__}: {error}"
        store = Store(self._state)
        try:
            with store.transaction() as tx:
                worker = tx.worker_of(self._wf, HOST, pid)
                if worker is not None:
                    failure = FailureRecord(seq, text, "", short_repr(self._item_of(seq)))
                    if tx.fail(self._wf, worker, failure, self._retries) != "running":
                        where = f"a helper (pid {pid}) on {HOST}, killed"
                        outcome = pickle.dumps((error, "", where))
                        tx.store_result_chunk(self._wf, seq, seq,
                                              pickle.dumps([(seq, ERROR, outcome)]))
        finally:
            store.close()
        self._replace()


def supervise(job: Job, helpers: Helpers) -> Supervisor | None:
    """Return a supervisor of ``helpers`` if ``job`` has a timeout (None: no need)."""
    limit = job.timeout
    if limit is None:
        return None
    retries = resolve("max_failed_retries", job.options.get("max_failed_retries"), 0, int)
    item_at = job.item_at()
    return Supervisor(StateDirectory.of(Path(job.path)), job.wf, limit,
                      item_of=lambda seq: item_at(seq)[1], helpers=helpers.alive,
                      replace=helpers.replace, max_failed_retries=retries)
