"""The state lock: who may open a transaction, in what order, and who holds it now.

``state.lock`` is a ``filelock`` lock that guards every transaction. Waiting for it
is built so that a crowd of workers costs no CPU and a stuck holder is named:

- A worker that finds the lock busy lines up on a blocking kernel flock of
  ``state.queue``; only the worker at the head of the line waits for ``state.lock``
  itself, also on a blocking flock (of its own descriptor), and takes it with
  filelock as soon as it is free. Nobody polls. (Soft locks have no flock: they poll
  with backoff.)
- Whoever takes the lock writes who it is (host, pid, rank, since when) into
  ``state.holder``: one ``pwrite`` of a fixed-size record per transaction.
- A watcher thread, started on the first wait, prints one line to stderr when a wait
  has lasted ``LAUFBAND_LOCK_WARNING`` seconds (default 30), naming the holder: a
  process frozen by SIGSTOP or a suspended SLURM job holds it until it is resumed or
  killed, and nothing else can tell the user why every worker stopped.
- ``acquire(patience=...)`` gives up when the same holder has kept the lock that long
  (``laufband status`` answers within seconds instead of blocking behind it).
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from filelock import FileLock, Timeout

from laufband.errors import StateError
from laufband.options import check_seconds, resolve
from laufband.store.layout import DIRECTORY_MODE, FILE_MODE, StateDirectory

if TYPE_CHECKING:
    from filelock import BaseFileLock

POLL_FIRST, POLL_LAST = 0.001, 0.05  # seconds between attempts where we must poll
_NO_FLOCK = {errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK, errno.EINVAL}
HOLDER_SIZE = 512  # bytes of the holder record: one pwrite, never a partial line
_HOLDER_FIELDS = 4  # host, pid, rank, since: tab-separated
WATCH_THREAD = "laufband-lock-watch"
HOST = socket.gethostname()


_waited = [0.0]  # seconds this process spent waiting for state locks, all threads
_waited_lock = threading.Lock()


def lock_waits() -> float:
    """Return the seconds this process has spent waiting for state locks so far.

    A reaper does not count them as a silence of the workers it watches.
    """
    return _waited[0]


class Holder(NamedTuple):
    """Who took the state lock last (the holder, while it is held)."""

    host: str
    pid: int
    rank: str
    since: float  # wall clock of the holder's host

    def describe(self, now: float | None = None) -> str:
        """Describe the holder: ``host h, pid 12 (rank 3), for 41 s`` (a rank if any)."""
        held = max(0.0, (time.time() if now is None else now) - self.since)
        rank = f" (rank {self.rank})" if self.rank else ""
        return f"host {self.host}, pid {self.pid}{rank}, for {held:.0f} s"


def read_holder(path: StateDirectory | Path) -> Holder | None:
    """Return the holder record of a state directory, or None when there is none (yet)."""
    try:
        fd = os.open(StateDirectory.of(path).holder, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        raw = os.pread(fd, HOLDER_SIZE, 0).decode(errors="replace").rstrip()
    finally:
        os.close(fd)
    parts = raw.split("\t")
    if len(parts) != _HOLDER_FIELDS:
        return None
    try:
        return Holder(parts[0], int(parts[1]), parts[2], float(parts[3]))
    except ValueError:
        return None


class StateLock:
    """``state.lock`` of one state directory, for one process (thread-safe)."""

    def __init__(self, path: StateDirectory | Path, *, soft: bool = False,
                 rank: int | None = None) -> None:
        self.state = StateDirectory.of(path)
        self.path = self.state.path
        lock_type: type[BaseFileLock] = FileLock
        if soft:  # imported on demand: ~4 ms that most runs never need
            from filelock import SoftFileLock

            lock_type = SoftFileLock
        # One lock instance per path and process (two on one path in one thread
        # deadlock); thread-local so the heartbeat thread excludes the main thread.
        SHIELD.enter()  # filelock's registry takes locks of its own: no interrupt inside
        try:
            self._lock = lock_type(self.state.state_lock, mode=FILE_MODE, is_singleton=True,
                                   thread_local=True)
        finally:
            SHIELD.leave()
        self._soft = soft or os.name != "posix"
        self._local = threading.local()  # per thread: queue and wait descriptors
        self._shielded = threading.local()  # .on while this thread's attempt is shielded
        self._rank = "" if rank is None else str(rank)
        self._holder_fd = (-1, -1)  # (fd, pid): reopened in a forked child
        self._directory = _identity(self.path)

    def _removed(self) -> bool:
        """Whether the state directory is gone or was replaced since we opened it."""
        try:
            return _identity(self.path) != self._directory
        except OSError:
            return True

    def acquire(self, patience: float | None = None) -> None:
        """Take the lock, waiting in line.

        Raises:
            StateError: With ``patience``, once one holder has kept the lock that many
                seconds (naming it); or the state directory was removed.
        """
        if self._removed():  # filelock would recreate it 0755: not ours to revive
            raise StateError(self._removed_message(), path=self.path)
        try:
            if not self._try():
                self._wait(patience)
            self._check_still_there()
            self._write_holder()
        except BaseException as error:
            self.release()  # whatever happened, nothing stays held
            if isinstance(error, OSError):
                msg = (f"cannot take the state lock {str(self.state.state_lock)!r}"
                       f" ({error.strerror or error}): fix the state directory or pass"
                       " another path=")
                raise StateError(msg, path=self.state.state_lock) from None
            raise

    def _check_still_there(self) -> None:
        """Refuse a directory removed while we waited (filelock made a new one)."""
        if self._removed():
            with contextlib.suppress(OSError):
                self.path.chmod(DIRECTORY_MODE)
            raise StateError(self._removed_message(), path=self.path)

    def _removed_message(self) -> str:
        return (f"state directory {str(self.path)!r} was removed while this process used it:"
                " this worker stops; start the workers again")

    def release(self) -> None:
        """Let the next worker in (if this thread holds the lock: safe in ``finally``).

        An interrupt that arrived meanwhile is raised now.
        """
        try:
            if self._lock.is_locked:
                self._lock.release()
        finally:
            if self._shielded.__dict__.pop("on", False):
                SHIELD.leave()

    def _try(self) -> bool:
        """One attempt; a success stays shielded from interrupts until ``release``."""
        SHIELD.enter()
        self._shielded.on = True
        try:
            self._lock.acquire(timeout=0)
        except BaseException as error:
            del self._shielded.on
            SHIELD.leave()  # may raise an interrupt that came during the attempt
            if isinstance(error, Timeout):
                return False
            raise
        return True

    def _wait(self, patience: float | None) -> None:
        began = time.monotonic()
        try:
            self._wait_in_line(patience)
        finally:
            with _waited_lock:
                _waited[0] += time.monotonic() - began

    def _wait_in_line(self, patience: float | None) -> None:
        if patience is not None:  # a bounded wait names a stuck holder itself
            self._poll(patience)
            return
        with _WATCH.waiting(self.path):
            if self._soft:
                self._poll(None)
                return
            try:
                self._wait_on_flocks()
            except OSError as error:
                if error.errno not in _NO_FLOCK:
                    raise
                self._poll(None)  # a filesystem without flock (filelock falls back too)

    def _wait_on_flocks(self) -> None:
        with self._turn(self._descriptor("queue", self.state.queue)):
            # At the head of the line: sleep until state.lock is free, then take it.
            free = self._descriptor("wait", self.state.state_lock)
            while True:
                with self._turn(free):
                    pass
                if self._try():
                    return

    def _poll(self, patience: float | None) -> None:
        """Poll with backoff (soft locks; or a bounded wait that must be able to stop)."""
        delay, first, since = POLL_FIRST, read_holder(self.path), time.monotonic()
        while not self._try():
            if patience is not None:
                holder = read_holder(self.path)
                if holder != first:
                    first, since = holder, time.monotonic()  # the lock moves: keep waiting
                elif time.monotonic() - since >= patience:
                    raise StateError(stuck_message(self.path, holder), path=self.path)
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, POLL_LAST)

    def _descriptor(self, name: str, file: Path) -> int:
        fd, pid = getattr(self._local, name, (-1, -1))
        if pid != os.getpid():  # new thread, or a forked child: open our own
            fd = os.open(file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
            setattr(self._local, name, (fd, os.getpid()))
        return fd

    @staticmethod
    @contextlib.contextmanager
    def _turn(fd: int) -> Iterator[None]:
        import fcntl

        try:  # unlocked in any case: an interrupt may land right after flock returns
            fcntl.flock(fd, fcntl.LOCK_EX)  # blocks in the kernel: no CPU while waiting
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)  # a no-op when we never got it

    def _write_holder(self) -> None:
        fd, pid = self._holder_fd
        if pid != os.getpid():
            try:
                fd = os.open(self.state.holder, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW,
                             FILE_MODE)
            except OSError:
                fd = -1  # a diagnosis only: never a reason to fail a transaction
            self._holder_fd = fd, os.getpid()
        if fd >= 0:
            record = f"{HOST}\t{os.getpid()}\t{self._rank}\t{time.time():.3f}"
            with contextlib.suppress(OSError):
                os.pwrite(fd, record.encode().ljust(HOLDER_SIZE)[:HOLDER_SIZE], 0)


def _identity(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_dev, info.st_ino


def stuck_message(path: Path, holder: Holder | None) -> str:
    """Return the error for a state lock one holder keeps too long."""
    who = holder.describe() if holder else "a process that left no record"
    return (f"the state lock of {str(path)!r} is held by {who}: that process may be frozen"
            " (SIGSTOP, a suspended SLURM job); resume it (kill -CONT) or end it")


class _Watch:
    """The one daemon thread of a process naming the holder when a wait goes on too long.

    Forked children start afresh (``reset``).
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every wait and thread (in a forked child: none of its parent's runs)."""
        # (thread, state directory) -> monotonic time its wait began
        self._waits: dict[tuple[int, Path], float] = {}
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def waiting(self, path: Path) -> Iterator[None]:
        key = (threading.get_ident(), path)
        with self._changed:
            self._waits[key] = time.monotonic()
            if self._thread is None:
                self._start()
            self._changed.notify()
        try:
            yield
        finally:
            with self._changed:
                self._waits.pop(key, None)

    def _start(self) -> None:
        threshold = check_seconds("lock_warning", resolve("lock_warning", None, 30.0, float))
        self._thread = threading.Thread(target=self._run, args=(threshold,), name=WATCH_THREAD,
                                        daemon=True)
        self._thread.start()

    def _run(self, threshold: float) -> None:
        late: set[tuple[tuple[int, Path], float]] = set()  # waits past the threshold
        named: set[tuple[Path, Holder | None]] = set()  # once per process, not per thread
        with self._changed:
            while True:
                now = time.monotonic()
                waits = set(self._waits.items())
                late &= waits
                for wait in waits - late:
                    if now - wait[1] >= threshold:
                        late.add(wait)
                        path = wait[0][1]
                        holder = read_holder(path)
                        if (path, holder) not in named:
                            named.add((path, holder))
                            _say(path, holder, now - wait[1])
                due = [threshold - (now - began) for _, began in waits - late]
                self._changed.wait(timeout=min(due) if due else None)


_WATCH = _Watch()
if hasattr(os, "register_at_fork"):  # no watcher thread yet, no lock its parent's may hold
    os.register_at_fork(after_in_child=_WATCH.reset)


class _Shield:
    """Keeps a Ctrl-C or SIGTERM from landing while the main thread holds the state lock.

    laufband's own handlers deliver it here: it is raised when the lock is released.
    Waiting for the lock stays interruptible; holding it lasts milliseconds. Without
    this, an interrupt between taking the lock and the ``try`` that releases it leaked
    the lock in a long-lived process (a Jupyter kernel), and every worker then waited.
    """

    def __init__(self) -> None:
        self.depth = 0
        self.pending: BaseException | None = None

    def enter(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self.depth += 1

    def leave(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        self.depth -= 1
        if self.depth == 0 and self.pending is not None:
            pending, self.pending = self.pending, None
            raise pending

    def deliver(self, error: BaseException) -> None:
        """Raise ``error`` now, or when the lock is released if it is held."""
        if self.depth > 0:
            self.pending = self.pending or error
            return
        raise error


SHIELD = _Shield()


def _say(path: Path, holder: Holder | None, waited: float) -> None:
    who = holder.describe() if holder else "a process that left no record"
    line = (f"laufband: waited {waited:.0f} s for the state lock of {str(path)!r}, held by"
            f" {who}; it may be frozen (SIGSTOP, a suspended SLURM job). Still waiting.\n")
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(line)
        sys.stderr.flush()
